//! Observable state (issue 14): `state()`, `consecutive_unsuccessful_attempts()` and the
//! counters of `stats()`, on the paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use persistent_connection::core::{EventKind, Jitter};
use persistent_connection::{PersistentConnection, State};
use tokio::time::Instant;

type Conn = WithCloseSignal<u32>;

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn state_follows_the_machine_through_failures_a_connection_and_close() {
    let attempts = Arc::new(AtomicU32::new(0));
    let made = Arc::new(Mutex::new(Vec::<Conn>::new()));
    let (a, m) = (attempts.clone(), made.clone());
    let slow_disconnect = Arc::new(AtomicU32::new(0));
    let sd = slow_disconnect.clone();
    let pc: PersistentConnection<u16, Conn, String> = PersistentConnection::builder(
        "observed",
        || async { Ok(1u16) },
        move |_addr, _cx| {
            let n = a.fetch_add(1, Ordering::SeqCst);
            let m = m.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if n < 3 {
                    Err("refused".to_owned())
                } else {
                    let c = WithCloseSignal::new(n, CloseSignal::new());
                    m.lock().unwrap().push(c.clone());
                    Ok(c)
                }
            }
        },
    )
    .on_event(move |e| {
        let slow = e.kind() == EventKind::Disconnected && sd.load(Ordering::SeqCst) == 1;
        async move {
            if slow {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    })
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_secs(1))
            .with_jitter(Jitter::NonRandom),
    )
    .build();
    let start = Instant::now();
    assert_eq!(pc.state(), State::Connecting);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(pc.state(), State::Connecting, "connect in flight");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        pc.state(),
        State::WaitingToRetry {
            next_attempt: start + Duration::from_secs(1)
        }
    );
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 1.15 s: attempt 2 failed
    assert_eq!(
        pc.state(),
        State::WaitingToRetry {
            next_attempt: start + Duration::from_secs(2)
        }
    );
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 2);
    let conn = pc.connected().await; // t = 3.1 s
    settle().await;
    assert_eq!(pc.state(), State::Connected);
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 0);
    let stats = pc.stats();
    assert_eq!(
        (
            stats.attempts,
            stats.failures,
            stats.deduplicated_failures,
            stats.connections,
            stats.disconnections
        ),
        (4, 3, 2, 1, 0),
        "{stats:?}"
    );
    // The connection dies: Disconnected, then a new round after the timer of attempt 4
    // (started at t = 3 s, fires at t = 4 s).
    tokio::time::sleep(Duration::from_millis(200)).await; // t = 3.3 s
    conn.signal().mark_closed();
    settle().await;
    assert_eq!(
        pc.state(),
        State::WaitingToRetry {
            next_attempt: start + Duration::from_secs(4)
        }
    );
    assert_eq!(pc.stats().disconnections, 1);
    let conn = pc.connected().await;
    // Close while the Disconnected handler is slow: Closing until it returns.
    slow_disconnect.store(1, Ordering::SeqCst);
    let closing = pc.close();
    settle().await;
    assert_eq!(pc.state(), State::Closing);
    assert!(conn.is_closed_now());
    closing.await;
    assert_eq!(pc.state(), State::Closed);
    let stats = pc.stats();
    assert_eq!(
        (stats.connections, stats.disconnections),
        (2, 2),
        "{stats:?}"
    );
}

trait IsClosedNow {
    fn is_closed_now(&self) -> bool;
}
impl IsClosedNow for Conn {
    fn is_closed_now(&self) -> bool {
        persistent_connection::Closable::is_closed(self)
    }
}
