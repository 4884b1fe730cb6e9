//! Model tests of the handle/driver protocol (`shared.rs`) under every interleaving, with
//! `loom`:
//!
//! ```sh
//! RUSTFLAGS="--cfg pc_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p persistent-connection --lib --release loom
//! ```

use std::sync::Arc;

use loom::thread;
use persistent_connection_core::{Config, RetryPolicy};

use super::shared::*;
use std::sync::atomic::Ordering;

use persistent_connection_core::{AttemptError, Effect, Input, Instant, Machine};

use crate::conn::closable::{CloseSignal, WithCloseSignal};
use crate::error::Error;
use crate::runtime::sync::{Mutex, lock};

pub(crate) type C = WithCloseSignal<u32>;
pub(crate) type S = Shared<u16, C, String>;

pub(crate) fn shared() -> Arc<S> {
    let machine = Machine::new(Config {
        seed: 1,
        retry: RetryPolicy::constant(std::time::Duration::from_secs(1)),
    });
    Arc::new(Shared::new("model".into(), machine, None, 1))
}

/// Takes the queued effects, as the driver does.
fn take(s: &S) -> Vec<CoreEffect<u16, C, String>> {
    std::iter::from_fn(|| s.pop_io()).collect()
}

/// Drives a new persistent connection (single-threaded, before the model's threads
/// start) until its first `connect` is in flight; returns that attempt.
fn connecting(s: &S) -> persistent_connection_core::AttemptId {
    let Some(Effect::Emit { id, .. }) = take(s).pop() else {
        panic!("R1")
    };
    s.feed(Instant::ZERO, Input::EventHandled { event: id });
    let attempt = take(s)
        .iter()
        .find_map(|e| match e {
            Effect::GetAddress { attempt } => Some(*attempt),
            _ => None,
        })
        .unwrap();
    s.feed(
        Instant::ZERO,
        Input::AddressResult {
            attempt,
            result: Ok(1),
        },
    );
    let Some(Effect::Emit { id, .. }) = take(s).pop() else {
        panic!("R3")
    };
    s.feed(Instant::ZERO, Input::EventHandled { event: id });
    assert!(matches!(take(s).as_slice(), [Effect::Connect { .. }]));
    attempt
}

/// Plays the driver until it has nothing left to do: handles every event, reports every
/// close, and finishes the close as the real driver does once nothing is left to close.
pub(crate) fn play_driver(s: &S) {
    while let Some(effect) = s.pop_io() {
        match effect {
            Effect::Emit { id, .. } => s.feed(Instant::ZERO, Input::EventHandled { event: id }),
            Effect::CloseConnection { conn, .. } => s.feed(Instant::ZERO, Input::Closed { conn }),
            Effect::CloseFinished => s.finish_close(),
            _ => {}
        }
    }
}

fn conn(n: u32) -> C {
    WithCloseSignal::new(n, CloseSignal::new())
}

/// Bug 2 (S2): an R10 waiter created while a handle's R11 closes a persistent
/// connection that is not connected resolves, with `Err(Closed)`.
#[test]
fn loom_r10_waiter_concurrent_with_r11_resolves() {
    loom::model(|| {
        let s = shared();
        connecting(&s);
        let s2 = s.clone();
        let handle = thread::spawn(move || {
            s2.feed_from_handle(Input::CloseWhenCurrentConnectionIsClosed);
            assert!(s2.is_closed(), "closed before R11 returns");
        });
        let w = s.wait_outcome();
        let r = loom::future::block_on(w);
        assert!(matches!(r, Err(AttemptError::Closed)));
        handle.join().unwrap();
    });
}

/// Bug 2 with abort from the attempt (the driver's side) and a waiter on another
/// thread: the waiter gets the abort error or `Closed`, never hangs.
#[test]
fn loom_r10_waiter_concurrent_with_abort_resolves() {
    loom::model(|| {
        let s = shared();
        let attempt = connecting(&s);
        let s2 = s.clone();
        let driver = thread::spawn(move || {
            s2.feed_from_handle(Input::Abort {
                error: Error::User("stop".into()),
            });
            s2.feed(
                Instant::ZERO,
                Input::ConnectResult {
                    attempt,
                    result: Err(Error::User("stopped".into())),
                },
            );
            play_driver(&s2);
        });
        let r = loom::future::block_on(s.wait_outcome());
        assert!(
            matches!(
                &r,
                Err(AttemptError::Aborted(Error::User(e))) if e == "stop"
            ) || matches!(r, Err(AttemptError::Closed)),
            "{r:?}"
        );
        driver.join().unwrap();
        assert!(s.is_finished());
    });
}

/// S1: a `connected()` waiter racing with the connection becoming current gets that
/// connection, whichever goes first; and a `close_finished()` waiter racing with close
/// resolves.
#[test]
fn loom_connected_and_close_finished_waiters_race_with_the_driver() {
    loom::model(|| {
        let s = shared();
        let attempt = connecting(&s);
        let s2 = s.clone();
        let driver = thread::spawn(move || {
            s2.feed(
                Instant::ZERO,
                Input::ConnectResult {
                    attempt,
                    result: Ok(conn(5)),
                },
            );
            s2.feed_from_handle(Input::CloseRequested);
            play_driver(&s2);
        });
        let c = match s.wait_connected() {
            Ok(c) => Some(c),
            Err(Some(w)) => Some(loom::future::block_on(w)),
            // Close came first: `connected()` never resolves after close (R9).
            Err(None) => None,
        };
        if let Some(c) = c {
            assert_eq!(*c, 5);
        }
        if let Some(w) = s.wait_finished() {
            loom::future::block_on(w);
        }
        driver.join().unwrap();
        assert!(s.is_finished());
    });
}

/// S3: the driver dies while a waiter registers: the waiter resolves.
#[test]
fn loom_waiters_resolve_when_the_driver_dies() {
    loom::model(|| {
        let s = shared();
        connecting(&s);
        let s2 = s.clone();
        let dying = thread::spawn(move || s2.driver_gone());
        let r = loom::future::block_on(s.wait_outcome());
        assert!(matches!(r, Err(AttemptError::Closed)));
        if let Some(w) = s.wait_finished() {
            loom::future::block_on(w);
        }
        dying.join().unwrap();
        assert!(s.is_closed());
    });
}

/// The protocol before issue 10, reduced to its ordering: the driver published
/// `Err(Closed)` to the current subscribers, then stored the closed flag; a waiter
/// checked the flag, subscribed, checked again. The model finds the lost wake-up that
/// `loom_r10_waiter_concurrent_with_r11_resolves` rules out for today's protocol.
#[test]
#[should_panic(expected = "lost wake-up")]
fn loom_finds_the_lost_wakeup_of_the_old_protocol() {
    use crate::runtime::sync::AtomicU8;
    use crate::runtime::waiters::{Slot, Wait};
    struct Old {
        closed: AtomicU8,
        subscribers: Mutex<Vec<Arc<Slot<()>>>>,
    }
    loom::model(|| {
        let old = Arc::new(Old {
            closed: AtomicU8::new(0),
            subscribers: Mutex::new(Vec::new()),
        });
        let o2 = old.clone();
        let driver = thread::spawn(move || {
            for s in lock(&o2.subscribers).drain(..) {
                s.fill(());
            }
            o2.closed.store(1, Ordering::Release);
        });
        let mut waiting = None;
        if old.closed.load(Ordering::Acquire) == 0 {
            let slot = Slot::new();
            lock(&old.subscribers).push(slot.clone());
            if old.closed.load(Ordering::Acquire) == 0 {
                waiting = Some(Wait::new(slot));
            }
        }
        driver.join().unwrap();
        // Everything has happened: a waiter that still waits would wait forever.
        if let Some(wait) = waiting {
            use futures_util::FutureExt;
            assert!(
                wait.now_or_never().is_some(),
                "lost wake-up: the waiter hangs"
            );
        }
    });
}
