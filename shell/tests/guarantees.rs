//! The shell's guarantees S1–S6 on top of the rules (docs/behaviour.md), one or more tests
//! per bug of issue 10. Each names the bug it pins; the ones marked "fails before" were run
//! against the shell as it was before the fix and failed (or hung) there.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use persistent_connection::core::EventKind;
use persistent_connection::{AttemptError, Closable, Error, Event, PersistentConnection};

type Conn = WithCloseSignal<u32>;
type Pc = PersistentConnection<u16, Conn, String>;

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("did not finish within an hour of virtual time")
}

/// A persistent connection whose lookups always succeed and whose connects fail with
/// "fail #n" (n counting from 0) until `successes_from`, then succeed with connection n.
fn numbered(retry: Duration, successes_from: u32) -> (Pc, Arc<Mutex<Vec<Conn>>>) {
    let attempts = Arc::new(AtomicU32::new(0));
    let made = Arc::new(Mutex::new(Vec::new()));
    let m = made.clone();
    let pc = PersistentConnection::builder(
        "numbered",
        || async { Ok::<_, String>(1u16) },
        move |_addr, _cx| {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let made = m.clone();
            async move {
                if n < successes_from {
                    Err(format!("fail #{n}"))
                } else {
                    let c = WithCloseSignal::new(n, CloseSignal::new());
                    made.lock().unwrap().push(c.clone());
                    Ok(c)
                }
            }
        },
    )
    .retry_policy(retry)
    .seed(1)
    .build();
    (pc, made)
}

fn failed(n: u32) -> Result<u32, AttemptError<Error<String>>> {
    Err(AttemptError::Failed(Error::User(format!("fail #{n}"))))
}

// ---------------------------------------------------------------- bug 1: exact waiters (S1)

/// Bug 1, fails before: a waiter registered before attempt 0 and polled after 100 failed
/// attempts got failure #84 from a 16-slot broadcast channel.
#[tokio::test(start_paused = true)]
async fn s1_a_late_polled_outcome_waiter_gets_the_first_outcome_after_its_registration() {
    let (pc, _) = numbered(Duration::from_millis(10), u32::MAX);
    let waiter = pc.connected_or_failed_to_connect();
    tokio::time::sleep(Duration::from_millis(1005)).await; // about 100 attempts
    assert_eq!(waiter.await.map(|c| *c), failed(0));
    // A waiter registered now gets the next one, not an old one.
    let later = pc.connected_or_failed_to_connect();
    let Err(AttemptError::Failed(Error::User(e))) = within(later).await else {
        panic!("expected a failure")
    };
    let n: u32 = e.trim_start_matches("fail #").parse().unwrap();
    assert!(n >= 50, "{e}");
    within(pc.close()).await;
}

/// Bug 1, fails before (got #47): with a zero retry delay on a one-thread runtime the
/// driver runs many attempts before the waiter's task is polled again.
#[tokio::test(start_paused = true)]
async fn s1_an_outcome_waiter_awaited_at_once_with_a_zero_retry_delay_gets_attempt_0() {
    let (pc, _) = numbered(Duration::ZERO, u32::MAX);
    assert_eq!(
        pc.connected_or_failed_to_connect().await.map(|c| *c),
        failed(0)
    );
    for _ in 0..50 {
        // And every later waiter gets a failure, never a stale or skipped one (no panic).
        assert!(pc.connected_or_failed_to_connect().await.is_err());
    }
    within(pc.close()).await;
}

/// Bug 1, fails before (returned connection #84, dead): every connection dies 1 ms after it
/// is made; a `connected()` registered before the first gets the first.
#[tokio::test(start_paused = true)]
async fn s1_a_late_polled_connected_waiter_gets_the_first_connection_after_its_registration() {
    let (pc, made) = numbered(Duration::from_millis(10), 0);
    let waiter = pc.connected();
    // Kill each connection shortly after it is made, for about 100 connections.
    let killer = {
        let made = made.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                for c in made.lock().unwrap().iter() {
                    c.signal().mark_closed();
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1005)).await;
    assert!(
        made.lock().unwrap().len() >= 90,
        "{}",
        made.lock().unwrap().len()
    );
    assert_eq!(
        *waiter.await,
        0,
        "the first connection after the call (R9, S1)"
    );
    killer.abort();
    within(pc.close()).await;
}

/// Abandoned waiters (say `connected()` under a timeout, in a loop, while the service is
/// down) are pruned: their futures resolve nothing and cost nothing once dropped.
#[tokio::test(start_paused = true)]
async fn s1_abandoned_waiters_do_not_disturb_later_ones() {
    let (pc, _) = numbered(Duration::from_millis(10), 5);
    for _ in 0..10_000 {
        drop(pc.connected());
        drop(pc.connected_or_failed_to_connect());
    }
    let waiter = pc.connected_or_failed_to_connect();
    assert_eq!(within(waiter).await.map(|c| *c), failed(0));
    assert_eq!(*within(pc.connected()).await, 5);
    within(pc.close()).await;
}

// ---------------------------------------------------------------- bug 2: no lost wake-up (S2)

/// Bug 2, fails before (hung waiters within a few iterations): one thread creates R10
/// waiters while another calls R11 on a persistent connection that is not connected. Every
/// waiter must resolve, and every waiter created after R11 returned gets `Err(Closed)` at
/// once. A real two-thread race, repeated; the loom model in `src/shared.rs` covers every
/// interleaving of the same protocol.
#[test]
fn s2_waiters_created_while_r11_closes_all_resolve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..200 {
        let pc: Pc = rt.block_on(async {
            PersistentConnection::builder(
                "race",
                || async { Ok::<_, String>(1u16) },
                |_addr, _cx| async { std::future::pending::<Result<Conn, String>>().await },
            )
            .build()
        });
        let pc2 = pc.clone();
        let creator = std::thread::spawn(move || {
            let mut waiters = Vec::new();
            for _ in 0..200 {
                waiters.push(pc2.connected_or_failed_to_connect());
            }
            waiters
        });
        std::thread::yield_now();
        pc.close_when_current_connection_is_closed();
        assert!(
            pc.is_closed(),
            "R11 when not connected closes before it returns (S2)"
        );
        let late = pc.connected_or_failed_to_connect().now_or_never();
        assert!(
            matches!(late, Some(Err(AttemptError::Closed))),
            "a waiter after close resolves at once: {late:?}"
        );
        let waiters = creator.join().unwrap();
        rt.block_on(async {
            for w in waiters {
                let r = tokio::time::timeout(Duration::from_secs(10), w)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: a waiter hung (S2)"));
                assert!(matches!(r, Err(AttemptError::Closed)), "{r:?}");
            }
            tokio::time::timeout(Duration::from_secs(10), pc.close_finished())
                .await
                .expect("close finished");
        });
    }
}

// ---------------------------------------------------------------- bug 3: is_closed at once

/// Bug 3, fails before: `is_closed()` turned true only when the driver task ran.
#[tokio::test(start_paused = true)]
async fn s2_is_closed_is_true_when_r11_returns_if_not_connected() {
    let (pc, _) = numbered(Duration::from_secs(10), u32::MAX);
    pc.close_when_current_connection_is_closed();
    assert!(pc.is_closed());
    assert!(matches!(
        pc.connected_or_failed_to_connect().now_or_never(),
        Some(Err(AttemptError::Closed))
    ));
    within(pc.close_finished()).await;
}

/// Bug 3, fails before: after `abort` from inside `connect`, `is_closed()` lagged.
#[tokio::test(start_paused = true)]
async fn s2_is_closed_is_true_when_abort_returns() {
    let weak = Arc::new(Mutex::new(
        None::<persistent_connection::WeakPersistentConnection<u16, Conn, String>>,
    ));
    let seen = Arc::new(Mutex::new(None::<bool>));
    let (w, s) = (weak.clone(), seen.clone());
    let pc: Pc = PersistentConnection::builder(
        "abort",
        || async { Ok::<_, String>(1u16) },
        move |_addr, cx| {
            let (w, s) = (w.clone(), s.clone());
            async move {
                cx.abort("stop".to_owned());
                let pc = w.lock().unwrap().as_ref().and_then(|w| w.upgrade());
                *s.lock().unwrap() = pc.map(|pc| pc.is_closed());
                Err("stopped".to_owned())
            }
        },
    )
    .build();
    *weak.lock().unwrap() = Some(pc.downgrade());
    let outcome = pc.connected_or_failed_to_connect();
    assert_eq!(
        within(outcome).await.map(|c| *c),
        Err(AttemptError::Aborted(Error::User("stop".to_owned())))
    );
    within(pc.close_finished()).await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "is_closed() right after abort()"
    );
}

// ---------------------------------------------------------------- bug 4: no dead connection

/// Bug 4, fails before: `connected()` right after `close()` returned the connection being
/// torn down.
#[tokio::test(start_paused = true)]
async fn s1_connected_after_close_does_not_hand_out_the_closing_connection() {
    let (pc, _) = numbered(Duration::from_secs(1), 0);
    within(pc.connected()).await;
    let closing = pc.close();
    assert!(
        pc.connected().now_or_never().is_none(),
        "R9: never resolves after close"
    );
    assert!(pc.current_connection().is_none());
    assert!(!pc.with_current_connection(|c| c.is_some()));
    within(closing).await;
}

/// Bug 4, fails before: `current_connection()` right after the connection's
/// `close_finished()` resolved still returned it, closed.
#[tokio::test(start_paused = true)]
async fn s1_current_connection_is_none_once_the_connection_has_closed() {
    let (pc, made) = numbered(Duration::from_secs(1), 0);
    let c = within(pc.connected()).await;
    c.signal().mark_closed(); // the peer goes away
    c.close_finished().await;
    assert!(
        pc.current_connection().is_none(),
        "a closed connection handed out"
    );
    // connected() now waits for the next one, which comes after the retry delay.
    let next = within(pc.connected()).await;
    assert_eq!((*next, made.lock().unwrap().len()), (1, 2));
    within(pc.close()).await;
}

// ---------------------------------------------------------------- bug 5: dead driver (S3)

/// Bug 5, fails before (hung): the runtime the connection was built on shuts down.
#[test]
fn s3_a_shut_down_runtime_resolves_close_and_waiters() {
    let home = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pc: Pc = PersistentConnection::builder(
        "orphan",
        || async { Ok::<_, String>(1u16) },
        |_addr, _cx| async { std::future::pending::<Result<Conn, String>>().await },
    )
    .build_on(home.handle());
    home.block_on(tokio::task::yield_now()); // the driver starts its attempt
    let waiter = pc.connected_or_failed_to_connect();
    drop(home); // shuts the runtime down: the driver task is dropped
    assert!(pc.is_closed(), "S3: counts as closed");
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        let r = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("R10 waiter hung");
        assert!(matches!(r, Err(AttemptError::Closed)), "{r:?}");
        tokio::time::timeout(Duration::from_secs(10), pc.close())
            .await
            .expect("close() hung");
        tokio::time::timeout(Duration::from_secs(10), pc.close_finished())
            .await
            .expect("close_finished() hung");
    });
}

/// A connect future that panics when dropped.
struct PanicOnDrop;

impl Future for PanicOnDrop {
    type Output = Result<Conn, String>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Pending
    }
}

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("connect future panics in Drop");
    }
}

/// Bug 5, fails before (hung): close cancels a connect whose future panics in `Drop`.
#[tokio::test(start_paused = true)]
async fn s3_a_connect_future_panicking_in_drop_does_not_wedge_close() {
    let pc: Pc = PersistentConnection::builder(
        "drop-panic",
        || async { Ok::<_, String>(1u16) },
        |_addr, _cx| PanicOnDrop,
    )
    .connect_timeout(Duration::MAX)
    .build();
    tokio::time::sleep(Duration::from_millis(10)).await; // connect is in flight
    let waiter = pc.connected_or_failed_to_connect();
    within(pc.close()).await;
    assert!(matches!(within(waiter).await, Err(AttemptError::Closed)));
    assert!(pc.is_closed());
}

/// R8: close finishes only once no attempt is in flight, so when `close()` returns the
/// cancelled connect's future (and whatever it holds: a half-made socket) is gone. Found by
/// issue 15's mutants: `close()` used to resolve as soon as the machine said so, before the
/// driver had dropped the future it cancelled; this test failed there.
#[tokio::test(start_paused = true)]
async fn r8_close_returns_only_after_the_cancelled_connect_future_is_dropped() {
    struct DropFlag(Arc<AtomicU32>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicU32::new(0));
    let d2 = dropped.clone();
    let pc: Pc = PersistentConnection::builder(
        "cancelled",
        || async { Ok::<_, String>(1u16) },
        move |_addr, _cx| {
            let flag = DropFlag(d2.clone());
            async move {
                let _flag = flag;
                std::future::pending::<Result<Conn, String>>().await
            }
        },
    )
    .connect_timeout(Duration::MAX)
    .build();
    tokio::time::sleep(Duration::from_millis(10)).await; // connect is in flight
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    within(pc.close()).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "close() returned first");
}

// ---------------------------------------------------------------- bugs 6, 7: events (S4)

/// Bug 6: the observers' stream ends after the last event of a closed connection.
#[tokio::test(start_paused = true)]
async fn s4_the_event_stream_ends_after_close() {
    let (pc, _) = numbered(Duration::from_secs(1), 0);
    let mut events = pc.events();
    within(pc.connected()).await;
    within(pc.close()).await;
    let mut kinds = Vec::new();
    while let Some(e) = within(events.next()).await {
        kinds.push(e.unwrap().kind());
    }
    assert_eq!(kinds.last(), Some(&EventKind::Disconnected));
    // One made after close is empty.
    assert!(within(pc.events().next()).await.is_none());
}

/// Bug 7, failed 5 in 200 before (missed `AttemptingToConnect`): a subscriber set up on
/// the builder, before the driver starts, sees every event from the first, on a
/// multi-thread runtime.
#[test]
fn s4_a_builder_subscriber_sees_every_event_from_the_first() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..200 {
            let mut builder = PersistentConnection::builder(
                "observed",
                || async { Ok::<_, String>(1u16) },
                |_addr, _cx| async { Ok(WithCloseSignal::new(0u32, CloseSignal::new())) },
            );
            let mut events = builder.events();
            let pc = builder.build();
            pc.connected().await;
            pc.close().await;
            let mut kinds = Vec::new();
            while let Some(e) = events.next().await {
                kinds.push(e.unwrap().kind());
            }
            assert_eq!(
                kinds,
                [
                    EventKind::AttemptingToConnect,
                    EventKind::ObtainedAddress,
                    EventKind::Connected,
                    EventKind::Disconnected
                ]
            );
        }
    });
}

/// A lagging observer is told how many events it missed, never silently.
#[tokio::test(start_paused = true)]
async fn s4_a_lagging_observer_is_told_how_many_it_missed() {
    let attempts = Arc::new(AtomicU32::new(0));
    let mut builder: persistent_connection::Builder<u16, Conn, String> =
        PersistentConnection::builder(
            "lag",
            move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move { Err(format!("down #{n}")) }
            },
            |_addr, _cx| async { Ok(WithCloseSignal::new(0u32, CloseSignal::new())) },
        )
        .retry_policy(
            persistent_connection::RetryPolicy::from(Duration::from_millis(10))
                .with_jitter(persistent_connection::core::Jitter::NonRandom),
        )
        .event_capacity(4);
    let mut events = builder.events();
    let pc = builder.build();
    tokio::time::sleep(Duration::from_millis(105)).await; // 1 + 11 events
    match events.next().await {
        Some(Err(persistent_connection::Lagged(n))) => assert_eq!(n, 8),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert!(matches!(
        events.next().await,
        Some(Ok(Event::FailedToConnect(_)))
    ));
    within(pc.close()).await;
}

// ---------------------------------------------------------------- bug 8: 'static futures (S6)

// Bug 8, did not compile before (E0597: `pc` does not live long enough): each future is
// returned from a function that owns the handle.
fn owned_connected(pc: Pc) -> impl Future<Output = Conn> + Send + 'static {
    pc.connected()
}
fn owned_outcome(
    pc: Pc,
) -> impl Future<Output = persistent_connection::AttemptOutcome<Conn, String>> + Send + 'static {
    pc.connected_or_failed_to_connect()
}
fn owned_close(pc: Pc) -> impl Future<Output = ()> + Send + 'static {
    pc.close()
}
fn owned_close_finished(pc: Pc) -> impl Future<Output = ()> + Send + 'static {
    pc.close_finished()
}
fn owned_closing(signal: CloseSignal) -> impl Future<Output = ()> + Send + 'static {
    signal.closing()
}

#[tokio::test(start_paused = true)]
async fn s6_the_handle_futures_do_not_borrow_the_handle() {
    let (pc, _) = numbered(Duration::from_secs(1), 0);
    let c = within(owned_connected(pc.clone())).await;
    assert_eq!(*c, 0);
    assert!(within(owned_outcome(pc.clone())).await.is_ok());
    let finished = owned_close_finished(pc.clone());
    within(owned_close(pc.clone())).await;
    within(finished).await;
    within(owned_closing(c.signal().clone())).await;
}

// ---------------------------------------------------------------- bug 9: abort then a connection

/// Bug 9 (the core's part fails before in core/tests/rules.rs): `connect` aborts and still
/// returns a connection; close finishes only after that connection is closed (I6).
#[tokio::test(start_paused = true)]
async fn r12_a_connection_returned_after_abort_is_closed_before_close_finishes() {
    let made = Arc::new(Mutex::new(None::<Conn>));
    let m = made.clone();
    let pc: Pc = PersistentConnection::builder(
        "abort-then-ok",
        || async { Ok::<_, String>(1u16) },
        move |_addr, cx| {
            let m = m.clone();
            async move {
                cx.abort("enough".to_owned());
                tokio::time::sleep(Duration::from_millis(50)).await;
                let c = WithCloseSignal::new(7u32, CloseSignal::owned());
                *m.lock().unwrap() = Some(c.clone());
                Ok(c)
            }
        },
    )
    .build();
    let finished = pc.close_finished();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let c = made.lock().unwrap().clone().expect("connect returned");
    assert!(c.is_closed(), "closed at once, never current");
    assert!(pc.current_connection().is_none());
    assert!(
        finished.now_or_never().is_none(),
        "close waits for that close (I6)"
    );
    c.signal().mark_closed();
    within(pc.close_finished()).await;
}

// ---------------------------------------------------------------- bug 10: lookup timeout (S5)

/// Bug 10, fails before (hung): a lookup that never answers is a failed attempt after the
/// lookup timeout, and reconnecting goes on.
#[tokio::test(start_paused = true)]
async fn s5_a_hung_lookup_times_out_and_the_next_attempt_goes_on() {
    let lookups = Arc::new(AtomicU32::new(0));
    let pc: Pc = PersistentConnection::builder(
        "hung-lookup",
        move || {
            let n = lookups.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, String>(1u16)
            }
        },
        |_addr, _cx| async { Ok(WithCloseSignal::new(3u32, CloseSignal::new())) },
    )
    .retry_policy(Duration::from_millis(100))
    .build();
    let start = tokio::time::Instant::now();
    let first = pc.connected_or_failed_to_connect();
    assert_eq!(
        within(first).await.map(|c| *c),
        Err(AttemptError::Failed(Error::LookupTimedOut {
            server: "hung-lookup".into(),
            after: persistent_connection::DEFAULT_LOOKUP_TIMEOUT
        }))
    );
    assert_eq!(
        start.elapsed(),
        persistent_connection::DEFAULT_LOOKUP_TIMEOUT
    );
    assert_eq!(*within(pc.connected()).await, 3);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn s5_the_lookup_timeout_is_configurable_and_max_means_none() {
    let pc: Pc = PersistentConnection::builder(
        "slow-lookup",
        || async {
            tokio::time::sleep(Duration::from_secs(1800)).await;
            Ok::<_, String>(1u16)
        },
        |_addr, _cx| async { Ok(WithCloseSignal::new(3u32, CloseSignal::new())) },
    )
    .lookup_timeout(Duration::MAX)
    .build();
    assert_eq!(*within(pc.connected()).await, 3);
    within(pc.close()).await;
    let pc: Pc =
        PersistentConnection::builder("short-lookup", std::future::pending, |_addr, _cx| async {
            Ok(WithCloseSignal::new(3u32, CloseSignal::new()))
        })
        .lookup_timeout(Duration::from_millis(5))
        .build();
    assert_eq!(
        within(pc.connected_or_failed_to_connect())
            .await
            .map(|c| *c),
        Err(AttemptError::Failed(Error::LookupTimedOut {
            server: "short-lookup".into(),
            after: Duration::from_millis(5)
        }))
    );
    within(pc.close()).await;
}

/// A waiter polled first in one task and then awaited in another is woken in the second:
/// the slot keeps the waker of the latest poll, not the first.
#[tokio::test(start_paused = true)]
async fn a_waiter_moved_to_another_task_is_woken_there() {
    let (pc, _made) = numbered(Duration::from_secs(1), 1); // attempt 0 fails, 1 connects
    let _ = within(pc.connected_or_failed_to_connect()).await; // waiting to retry now
    let mut waiter = Box::pin(pc.connected());
    // Polled once with a waker that wakes nobody (a task that then hands the future on).
    let noop = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&noop);
    assert!(waiter.as_mut().poll(&mut cx).is_pending());
    let other = tokio::spawn(async move { *waiter.await });
    let n = within(other).await.unwrap();
    assert_eq!(n, 1, "the second attempt's connection");
    within(pc.close()).await;
}
