//! What each public type prints with `{:?}` and `{}`. Logs and error messages are part of
//! the interface (users grep them, and `tracing` lines carry them), so each `Debug` and
//! `Display` impl is pinned here: a field dropped or a message emptied fails a test.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use persistent_connection::catalog::{CatalogError, StaticList};
use persistent_connection::conn::{
    CloseSignal, Driven, HealthCheck, HealthChecked, WithCloseSignal,
};
use persistent_connection::{
    Callback, Closable, Error, IoError, Keyed, Lagged, PersistentConnection, TcpConnection,
};

type Pc = PersistentConnection<u16, WithCloseSignal<u8>, String>;

fn builder(name: &'static str) -> persistent_connection::Builder<u16, WithCloseSignal<u8>, String> {
    PersistentConnection::builder(
        name,
        || async { Ok::<_, String>(1u16) },
        |_addr, _cx| async { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) },
    )
}

#[tokio::test(start_paused = true)]
async fn the_builder_prints_its_settings() {
    let b = builder("printed")
        .seed(7)
        .connect_timeout(Duration::from_secs(3))
        .lookup_timeout(Duration::from_secs(2))
        .event_capacity(9);
    let text = format!("{b:?}");
    for part in [
        "Builder {",
        "server_name: \"printed\"",
        "seed: Some(7)",
        "lookup_timeout: 2s",
        "connect_timeout: 3s",
        "event_capacity: 9",
        "retry: ",
        "..",
    ] {
        assert!(text.contains(part), "{part:?} missing in {text}");
    }
    let pc: Pc = b.build();
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_and_connect_context_say_what_they_are() {
    // Read outside `connect`: a panic inside it would count as a failed attempt (R13).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    let pc: Pc = PersistentConnection::builder(
        "ctx",
        || async { Ok::<_, String>(1u16) },
        move |_addr, cx| {
            *seen2.lock().unwrap() = format!("{cx:?}");
            async move { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) }
        },
    )
    .build();
    assert_eq!(
        format!("{:?}", pc.events()),
        "EventStream { capacity: 64, .. }"
    );
    pc.connected().await;
    assert_eq!(
        *seen.lock().unwrap(),
        "ConnectContext { consecutive_unsuccessful_attempts: 0, .. }"
    );
    pc.close().await;
    // A weak handle whose persistent connection is gone prints no name.
    let weak = pc.downgrade();
    drop(pc);
    assert_eq!(format!("{weak:?}"), "WeakPersistentConnection { .. }");
}

#[test]
fn close_signal_prints_its_state() {
    let s = CloseSignal::owned();
    assert_eq!(
        format!("{s:?}"),
        "CloseSignal { state: Open, finish_on_close: false }"
    );
    s.begin_close();
    assert_eq!(
        format!("{s:?}"),
        "CloseSignal { state: Closing, finish_on_close: false }"
    );
    s.mark_closed();
    assert!(format!("{s:?}").contains("state: Closed"));
    assert!(format!("{:?}", CloseSignal::new()).contains("finish_on_close: true"));
}

#[tokio::test(start_paused = true)]
async fn driven_and_health_checked_print_the_connection_and_their_flags() {
    let driven = Driven::spawn(5u8, std::future::pending::<()>());
    assert_eq!(
        format!("{driven:?}"),
        "Driven { conn: 5, closed: false, driver_ended: false }"
    );
    driven.close().await;
    assert!(format!("{driven:?}").contains("closed: true"));

    let conn = WithCloseSignal::new(6u8, CloseSignal::new());
    let checked = HealthChecked::new(
        conn,
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 1),
        |_c| async { Ok::<(), String>(()) },
    );
    let text = format!("{checked:?}");
    assert!(
        text.starts_with("HealthChecked { conn: ") && text.ends_with("closed_by_check: false }"),
        "{text}"
    );
    checked.close().await;
}

#[test]
fn errors_say_what_failed() {
    assert_eq!(Callback::GetAddress.to_string(), "get_address");
    assert_eq!(Callback::Connect.to_string(), "connect");
    let panicked: Error<IoError> = Error::Panicked {
        callback: Callback::GetAddress,
        message: "boom".into(),
    };
    assert_eq!(panicked.to_string(), "get_address panicked: boom");
    assert!(panicked.source().is_none());
    let lookup: Error<String> = Error::LookupTimedOut {
        server: "echo".into(),
        after: Duration::from_millis(250),
    };
    assert_eq!(
        lookup.to_string(),
        "address lookup for echo timed out after 250ms"
    );
    let user: Error<IoError> = Error::User(IoError::new(io::ErrorKind::Other, "refused"));
    assert_eq!(user.to_string(), "refused");
    assert_eq!(
        user.source().map(|s| s.to_string()).as_deref(),
        Some("refused")
    );

    let io = IoError::new(io::ErrorKind::ConnectionRefused, "refused by 127.0.0.1:1");
    assert_eq!(io.to_string(), "refused by 127.0.0.1:1");
    assert_eq!(io.message(), "refused by 127.0.0.1:1");
    let back = io::Error::from(io.clone());
    assert_eq!(back.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(back.to_string(), "refused by 127.0.0.1:1");

    let keyed = Keyed::new(io.clone(), IoError::kind);
    assert_eq!(keyed.to_string(), "refused by 127.0.0.1:1");
    let text = format!("{keyed:?}");
    assert!(
        text.starts_with("Keyed { error: IoError {") && text.ends_with("key: ConnectionRefused }"),
        "{text}"
    );
    assert!(keyed.source().is_none());
    // A keyed error whose error has a source passes it on.
    let wrapped = Keyed::new(user.clone(), |_| ());
    assert_eq!(
        wrapped.source().map(|s| s.to_string()).as_deref(),
        Some("refused")
    );
    assert_eq!(user.user().map(IoError::message), Some("refused"));
    assert_eq!(panicked.user(), None);

    assert_eq!(
        Lagged(3).to_string(),
        "the observer fell behind and missed 3 events"
    );
}

#[test]
fn catalog_errors_and_lists_print_what_they_hold() {
    let list = StaticList::new([1u16, 2]);
    assert_eq!(format!("{list:?}"), "StaticList([1, 2])");
    assert_eq!(*list.addresses(), [1, 2]);
    let cases = [
        (
            CatalogError::Empty {
                catalog: "a static list".into(),
            },
            "no address listed in a static list",
            io::ErrorKind::NotFound,
        ),
        (
            CatalogError::TimedOut {
                catalog: "dns".into(),
                after: Duration::from_secs(2),
            },
            "lookup in dns timed out after 2s",
            io::ErrorKind::TimedOut,
        ),
        (
            CatalogError::Lookup {
                catalog: "dns".into(),
                message: "no such host".into(),
            },
            "lookup in dns failed: no such host",
            io::ErrorKind::Other,
        ),
        (
            CatalogError::Malformed {
                key: "/svc/a".into(),
                value: "x".into(),
                reason: "bad".into(),
            },
            "malformed address under key \"/svc/a\": \"x\" (bad)",
            io::ErrorKind::InvalidData,
        ),
    ];
    for (error, text, kind) in cases {
        assert_eq!(error.to_string(), text);
        assert_eq!(error.kind(), kind);
        let io = IoError::from(error);
        assert_eq!((io.kind(), io.message()), (kind, text));
    }
}

#[tokio::test]
async fn a_tcp_connection_prints_both_ends_and_whether_it_is_closed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = TcpConnection::connect(addr).await.unwrap();
    let (_server_side, _) = listener.accept().await.unwrap();
    let text = format!("{conn:?}");
    assert_eq!(
        text,
        format!(
            "TcpConnection {{ local: {}, peer: {addr}, closed: false }}",
            conn.local_addr()
        )
    );
    conn.close().await;
    assert!(format!("{conn:?}").ends_with("closed: true }"));
}
