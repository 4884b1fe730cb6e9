//! `tracing` events for every state change, failures at warn level (issue 3), checked with
//! a minimal capturing subscriber on the paused clock.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::PersistentConnection;
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Keeps `(level, message and fields)` of every event.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(Level, String)>>>);

struct Text(String);
impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// A capture installed as this thread's subscriber until the guard drops.
    fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let guard = tracing::subscriber::set_default(capture.clone());
        (capture, guard)
    }

    fn at(&self, level: Level) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, t)| t.clone())
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn state_changes_are_traced_and_failures_are_warnings() {
    let (capture, _guard) = Capture::install();
    let attempts = Arc::new(Mutex::new(0));
    let signal = CloseSignal::new();
    let s2 = signal.clone();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "logged",
        move || {
            let attempts = attempts.clone();
            async move {
                let mut n = attempts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    Err("catalog down".to_owned())
                } else {
                    Ok(9)
                }
            }
        },
        move |_addr, _cx| {
            let s = s2.clone();
            async move { Ok(WithCloseSignal::new(1, s)) }
        },
    )
    .on_event(|e| async move {
        if matches!(e, persistent_connection::Event::Connected(_)) {
            panic!("handler bug");
        }
    })
    .retry_policy(Duration::from_millis(10))
    .build();
    pc.connected().await;
    signal.mark_closed(); // the peer goes away
    tokio::time::sleep(Duration::from_millis(1)).await;
    pc.close().await;

    let info = capture.at(Level::INFO).join("\n");
    let warn = capture.at(Level::WARN).join("\n");
    for what in [
        "AttemptingToConnect",
        "ObtainedAddress(9)",
        "Connected",
        "close finished",
    ] {
        assert!(info.contains(what), "no info event with {what}:\n{info}");
    }
    assert!(
        info.contains("server=logged"),
        "events name the server:\n{info}"
    );
    for what in [
        "failed to connect",
        "catalog down",
        "disconnected",
        "on_event panicked",
        "handler bug",
    ] {
        assert!(warn.contains(what), "no warning with {what}:\n{warn}");
    }
    assert!(
        !info.contains("catalog down"),
        "failures are not at info:\n{info}"
    );
}

/// Issue 10: the failure line names the address the attempt used (so "refused by A" and
/// "refused by B" read differently); issue 14: failure and disconnection lines say when the
/// next attempt begins.
#[tokio::test(start_paused = true)]
async fn failure_lines_name_the_address_and_the_next_attempt() {
    let (capture, _guard) = Capture::install();
    let attempts = Arc::new(Mutex::new(0u32));
    let signal = CloseSignal::new();
    let s2 = signal.clone();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "addressed",
        || async { Ok(4242u16) },
        move |_addr, _cx| {
            let attempts = attempts.clone();
            let s = s2.clone();
            async move {
                let mut n = attempts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    Err("refused".to_owned())
                } else {
                    Ok(WithCloseSignal::new(1, s))
                }
            }
        },
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_secs(3))
            .with_jitter(persistent_connection::core::Jitter::NonRandom),
    )
    .build();
    pc.connected().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal.mark_closed(); // one second into a 3 s retry delay (R6)
    tokio::time::sleep(Duration::from_millis(1)).await;
    let warn = capture.at(Level::WARN).join("\n");
    assert!(
        warn.contains("address=4242") && warn.contains("error=User(\"refused\")"),
        "{warn}"
    );
    assert!(warn.contains("next_attempt_in=3s"), "{warn}");
    // The connection came from the attempt at t = 3 s and died at t = 4 s: the next
    // attempt waits for that attempt's timer, at t = 6 s.
    assert!(
        warn.lines()
            .any(|l| l.contains("message=disconnected") && l.contains("next_attempt_in=2s")),
        "{warn}"
    );
    pc.close().await;
}

/// R13: a user future that panics when it is dropped does not kill the driver. Close
/// cancels a connect whose future panics in `Drop`; the panic is logged at warn and ignored,
/// and the close finishes as usual.
#[tokio::test(start_paused = true)]
async fn a_connect_future_that_panics_when_cancelled_is_logged_and_ignored() {
    struct PanicOnDrop;
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("dropped a connect future");
        }
    }
    let (capture, _guard) = Capture::install();
    let started = Arc::new(tokio::sync::Notify::new());
    let started2 = started.clone();
    let pc: PersistentConnection<u16, WithCloseSignal<u8>, String> = PersistentConnection::builder(
        "dropped",
        || async { Ok(1u16) },
        move |_addr, _cx| {
            let started = started2.clone();
            async move {
                let _bomb = PanicOnDrop;
                started.notify_one();
                std::future::pending::<Result<WithCloseSignal<u8>, String>>().await
            }
        },
    )
    .build();
    started.notified().await;
    tokio::time::timeout(Duration::from_secs(5), pc.close())
        .await
        .expect("close finishes");
    // The driver went on after the panic: it emitted nothing more, finished the close
    // itself, and said what happened.
    let warn = capture.at(Level::WARN).join("\n");
    assert!(
        warn.contains("dropping connect panicked; ignored")
            && warn.contains("dropped a connect future"),
        "{warn}\n{:?}",
        capture.0.lock().unwrap()
    );
    assert!(
        matches!(pc.state(), persistent_connection::State::Closed),
        "{:?}",
        pc.state()
    );
    // The driver finished the close itself: the drop guard's "driver task ended before close
    // finished" error (S3) is for a runtime that shuts down, not for a close.
    let errors = capture.at(Level::ERROR);
    assert!(errors.is_empty(), "{errors:?}");
}
