//! Edges that tests elsewhere do not pin (issue 15's survivors that a user can see): a
//! `Duration::MAX` retry delay on a runtime that has run for a while, what
//! `CloseSignal::is_close_finished` says before and after, and what the handle's `Debug`
//! prints (logs are part of the interface), and R4 with `Keyed` errors.

use std::time::Duration;

use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use persistent_connection::{Closable, PersistentConnection, State};

/// R7: a `Duration::MAX` delay must not overflow. The deadline does not fit in Tokio's
/// clock, so it is placed about 30 years ahead — far enough that no real delay is cut
/// short, which a smaller clamp would do (the timer would fire at once, again and again).
#[tokio::test(start_paused = true)]
async fn a_max_retry_delay_after_a_long_uptime_waits_about_thirty_years() {
    tokio::time::sleep(Duration::from_secs(1000 * 24 * 3600)).await; // the runtime has run a while
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "max",
        || async { Err::<u16, _>("down".to_owned()) },
        |_addr, _cx| async { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) },
    )
    .retry_policy(Duration::MAX)
    .build();
    let _ = pc.connected_or_failed_to_connect().await;
    tokio::task::yield_now().await;
    let now = tokio::time::Instant::now();
    match pc.state() {
        State::WaitingToRetry { next_attempt } => {
            let ahead = next_attempt - now;
            let year = Duration::from_secs(365 * 24 * 3600);
            assert!(ahead >= 29 * year && ahead <= 31 * year, "{ahead:?}");
        }
        other => panic!("expected to wait, got {other:?}"),
    }
    // An hour later nothing has happened: one attempt, and close is prompt.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(pc.stats().attempts, 1);
    tokio::time::timeout(Duration::from_secs(1), pc.close())
        .await
        .expect("close is prompt");
}

#[tokio::test]
async fn close_signal_reports_close_finished_only_once_finished() {
    let signal = CloseSignal::owned();
    assert!(!signal.is_close_finished() && !signal.is_closed());
    signal.begin_close();
    assert!(signal.is_closed() && !signal.is_close_finished());
    signal.mark_closed();
    assert!(signal.is_close_finished());
    let at_once = CloseSignal::new();
    at_once.close().await;
    assert!(at_once.is_close_finished());
}

#[tokio::test(start_paused = true)]
async fn the_handle_debug_names_the_server_and_its_state() {
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "debugged",
        || async { Ok::<_, String>(1u16) },
        |_addr, _cx| async { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) },
    )
    .build();
    pc.connected().await;
    let text = format!("{pc:?}");
    assert!(text.starts_with("PersistentConnection"), "{text}");
    assert!(text.contains("server_name: \"debugged\""), "{text}");
    assert!(
        text.contains("is_closed: false") && text.contains("connected: true"),
        "{text}"
    );
    pc.close().await;
    let text = format!("{pc:?}");
    assert!(
        text.contains("is_closed: true")
            && text.contains("is_close_finished: true")
            && text.contains("connected: false"),
        "{text}"
    );
    let weak = format!("{:?}", pc.downgrade());
    assert!(weak.contains("debugged"), "{weak}");
}

/// `EventStream::recv` is `next()` without the import: the events in order, then `None`
/// once close has finished (S4).
#[tokio::test(start_paused = true)]
async fn event_stream_recv_gives_each_event_then_ends_after_close() {
    use persistent_connection::Event;
    let mut builder = PersistentConnection::builder(
        "recv",
        || async { Ok::<_, String>(3u16) },
        |_addr, _cx| async { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) },
    );
    let mut events = builder.events();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = builder.build();
    pc.connected().await;
    pc.close().await;
    let mut seen = Vec::new();
    while let Some(e) = events.recv().await {
        seen.push(match e.expect("no lag") {
            Event::AttemptingToConnect => "attempting".to_owned(),
            Event::ObtainedAddress(a) => format!("address {a}"),
            Event::Connected(_) => "connected".to_owned(),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        seen[..3],
        ["attempting", "address 3", "connected"],
        "{seen:?}"
    );
    assert!(events.recv().await.is_none(), "stays ended");
}

/// R14: an upgraded weak handle counts as a strong one, and once the last strong handle is
/// gone a weak one cannot bring the persistent connection back, even while its close is
/// still under way.
#[tokio::test(start_paused = true)]
async fn r14_a_weak_handle_upgrades_only_while_a_strong_one_exists() {
    let signal = CloseSignal::owned(); // its close finishes only when marked closed
    let s2 = signal.clone();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "weak",
        || async { Ok::<_, String>(1u16) },
        move |_addr, _cx| {
            let s = s2.clone();
            async move { Ok(WithCloseSignal::new(0u8, s)) }
        },
    )
    .build();
    pc.connected().await;
    let weak = pc.downgrade();
    let up = weak.upgrade().expect("a strong handle exists");
    drop(pc);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !up.is_closed() && !signal.is_closed(),
        "the upgraded handle holds it"
    );
    drop(up);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        signal.is_closed(),
        "the last handle's drop began the close (R14)"
    );
    assert!(!signal.is_close_finished(), "and it is still under way");
    assert!(
        weak.upgrade().is_none(),
        "no strong handle is left to upgrade from"
    );
    signal.mark_closed();
}

/// R4 with [`Keyed`](persistent_connection::Keyed) errors: failures are the same when their
/// keys are, whatever their messages. Connect fails with "refused (1st)", "refused (2nd)"
/// (same key: reported once), then "reset" (another key: reported), then "refused (3rd)"
/// (differs from the previous failure: reported again).
#[tokio::test(start_paused = true)]
async fn keyed_failures_are_the_same_when_their_keys_are() {
    use persistent_connection::{Error, Event, Keyed};
    use std::sync::{Arc, Mutex};
    type Failure = Keyed<String, &'static str>;
    let script = Arc::new(Mutex::new(vec![
        ("refused (1st)", "refused"),
        ("refused (2nd)", "refused"),
        ("reset", "reset"),
        ("refused (3rd)", "refused"),
    ]));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, Failure> =
        PersistentConnection::builder(
            "keyed",
            || async { Ok(1u16) },
            move |_addr, _cx| {
                let script = script.clone();
                async move {
                    let next = {
                        let mut s = script.lock().unwrap();
                        (!s.is_empty()).then(|| s.remove(0))
                    };
                    match next {
                        Some((message, key)) => Err(Keyed::with_key(message.to_owned(), key)),
                        None => std::future::pending().await,
                    }
                }
            },
        )
        .on_event(move |e| {
            if let Event::FailedToConnect(Error::User(f)) = e {
                seen2.lock().unwrap().push(f.error().clone());
            }
            async {}
        })
        .retry_policy(Duration::from_millis(10))
        .build();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pc.stats().attempts, 5);
    assert_eq!(
        *seen.lock().unwrap(),
        ["refused (1st)", "reset", "refused (3rd)"]
    );
    pc.close().await;
}

/// S4: an observer `n` events behind, `n` beyond the capacity, is told it missed exactly
/// `n - capacity` and then reads the newest `capacity` events, whether or not the capacity
/// is a power of two (Tokio's broadcast channel rounds it up).
#[tokio::test(start_paused = true)]
async fn an_observer_lags_by_exactly_what_exceeds_the_event_capacity() {
    use futures_util::FutureExt;
    use persistent_connection::core::Jitter;
    use persistent_connection::{Event, Lagged};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    for capacity in [3usize, 4, 5] {
        // 7 distinct lookup failures, then an address: AttemptingToConnect, 7 ×
        // FailedToConnect, ObtainedAddress, Connected = 10 events.
        let calls = Arc::new(AtomicU32::new(0));
        let mut builder = PersistentConnection::builder(
            "lagging",
            move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 7 {
                        Err(format!("e{n}"))
                    } else {
                        Ok(80u16)
                    }
                }
            },
            |_addr, _cx| async { Ok(WithCloseSignal::new(0u8, CloseSignal::new())) },
        )
        .retry_policy(
            persistent_connection::RetryPolicy::from(Duration::ZERO).with_jitter(Jitter::NonRandom),
        )
        .event_capacity(capacity);
        let mut events = builder.events();
        let pc = builder.build();
        pc.connected().await;
        let mut read = Vec::new();
        while let Some(Some(e)) = events.recv().now_or_never() {
            read.push(match e {
                Err(Lagged(n)) => format!("Lagged({n})"),
                Ok(Event::FailedToConnect(e)) => format!("Failed({e})"),
                Ok(e) => format!("{:?}", e.kind()),
            });
        }
        let newest = ["Failed(e6)", "ObtainedAddress", "Connected"];
        let mut expected = vec![format!("Lagged({})", 10 - capacity)];
        let older = ["Failed(e5)", "Failed(e4)"];
        expected.extend(older[..capacity - 3].iter().rev().map(|s| s.to_string()));
        expected.extend(newest.iter().map(|s| s.to_string()));
        assert_eq!(read, expected, "capacity {capacity}");
        pc.close().await;
    }
}
