//! The public handle: waiters, queries and close.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};

use persistent_connection_core::Input;

use crate::conn::closable::Closable;
use crate::error::AttemptOutcome;
use crate::events::EventStream;
use crate::runtime::shared::Shared;
use crate::status::{State, Stats};

/// A persistent connection: a handle on the driver task that keeps a connection to a
/// service alive (docs/behaviour.md R1–R14).
///
/// Build one with [`PersistentConnection::builder`]. Handles are cheap to clone (two
/// reference counts); when the last one is dropped, the persistent connection closes in the
/// background as [`close`](PersistentConnection::close) would (R14). A
/// [`WeakPersistentConnection`] does not keep it alive.
///
/// Type parameters: `A` the address, `C` the connection ([`Closable`]), `E` the user's
/// error; events and failures carry [`Error<E>`](crate::Error).
///
/// Two things to avoid inside `on_event`, `get_address` and `connect`: holding a strong
/// handle (it would keep the persistent connection alive forever; capture a
/// [`downgrade`](PersistentConnection::downgrade)d one), and *awaiting* `close()` from
/// `on_event` (close waits for the running handler; calling it without awaiting is fine,
/// as the call alone starts closing).
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::CloseSignal;
/// use persistent_connection::{Event, PersistentConnection};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pc = PersistentConnection::builder(
///     "echo",
///     || async { Ok::<_, String>("127.0.0.1:7") },
///     |_addr, _cx| async { Ok(CloseSignal::new()) },
/// )
/// .on_event(|event| async move { println!("{event:?}") })
/// .retry_policy(Duration::from_secs(1))
/// .build();
/// let conn = pc.connected().await;
/// assert!(pc.current_connection().is_some());
/// pc.close().await;
/// assert!(pc.is_closed() && pc.current_connection().is_none());
/// # drop(conn);
/// # }
/// ```
pub struct PersistentConnection<A, C, E> {
    pub(crate) shared: Arc<Shared<A, C, E>>,
}

impl<A, C, E> Clone for PersistentConnection<A, C, E> {
    fn clone(&self) -> Self {
        self.shared.add_handle();
        PersistentConnection {
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, E> Drop for PersistentConnection<A, C, E> {
    /// The last strong handle's drop closes in the background (R14).
    fn drop(&mut self) {
        self.shared.drop_handle();
    }
}

impl<A, C, E> fmt::Debug for PersistentConnection<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentConnection")
            .field("server_name", &self.shared.server_name)
            .field("is_closed", &self.shared.is_closed())
            .field("is_close_finished", &self.shared.is_finished())
            .field("connected", &self.shared.has_current())
            .finish_non_exhaustive()
    }
}

impl<A, C, E> PersistentConnection<A, C, E>
where
    A: Clone + PartialEq + Send + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + 'static,
{
    /// The current connection (R5, R6), unless it is closed or being closed: `None` once
    /// its own `is_closed()` is true or once [`close`](Self::close) was called (S1).
    /// Lock-free and allocation-free: an `arc-swap` load and a clone of `C`.
    pub fn current_connection(&self) -> Option<C> {
        self.shared.live_current()
    }

    /// Calls `f` with the current connection, if any, without cloning it: the hottest
    /// path. Lock-free, allocation-free, and free of shared writes (an `arc-swap` load
    /// only), so readers on many threads do not slow each other down, where
    /// [`current_connection`](Self::current_connection)'s clone of `C` writes `C`'s shared
    /// reference count (see `BENCHMARKS.md`, hot paths). `f` should be short: the
    /// connection it sees stays alive until `f` returns, even if it is replaced meanwhile.
    ///
    /// ```
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::{Closable, PersistentConnection};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pc = PersistentConnection::builder(
    ///     "lend",
    ///     || async { Ok::<_, String>(80u16) },
    ///     |_port, _cx| async { Ok(CloseSignal::new()) },
    /// )
    /// .build();
    /// assert!(!pc.with_current_connection(|c| c.is_some()) || pc.current_connection().is_some());
    /// pc.connected().await;
    /// assert_eq!(pc.with_current_connection(|c| c.map(|c| c.is_closed())), Some(false));
    /// # }
    /// ```
    pub fn with_current_connection<R>(&self, f: impl FnOnce(Option<&C>) -> R) -> R {
        self.shared.with_live_current(f)
    }

    /// R9: resolves at once with the current connection if there is one and it is neither
    /// closed nor being closed; otherwise with the next connection to become current —
    /// exactly the first one after this call, however late the future is polled (S1).
    /// After [`close`](Self::close) it never resolves (as in the original); use
    /// [`connected_or_failed_to_connect`](PersistentConnection::connected_or_failed_to_connect)
    /// to observe close.
    ///
    /// The waiter is registered when this is called, not when the future is first polled.
    /// The future owns what it needs: it does not borrow the handle (S6). When connected,
    /// the call takes no lock shared with the driver and allocates nothing.
    pub fn connected(&self) -> impl Future<Output = C> + Send + 'static + use<A, C, E> {
        let waiter = self.shared.wait_connected();
        async move {
            match waiter {
                Ok(c) => c,
                Err(Some(wait)) => wait.await,
                Err(None) => std::future::pending().await,
            }
        }
    }

    /// R10: `Ok(c)` at once if connected; `Err(Closed)` at once if closed (also after
    /// [`close_when_current_connection_is_closed`](Self::close_when_current_connection_is_closed)
    /// while the connection stays up: no attempt will end any more); otherwise the
    /// outcome of the next attempt to end after this call, exactly (S1): `Ok(c)`,
    /// `Err(Failed(e))` (not de-duplicated), `Err(Aborted(e))` after
    /// [`ConnectContext::abort`](crate::ConnectContext::abort), or `Err(Closed)` when closed.
    ///
    /// The waiter is registered when this is called; the future does not borrow the
    /// handle (S6).
    pub fn connected_or_failed_to_connect(
        &self,
    ) -> impl Future<Output = AttemptOutcome<C, E>> + Send + 'static + use<A, C, E> {
        self.shared.wait_outcome()
    }

    /// Starts closing (R8) and resolves once no connection of ours is open, no attempt is
    /// in flight and no event handler runs. Idempotent; [`is_closed`](Self::is_closed) is
    /// true before this returns, even if the future is never polled (S2).
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static + use<A, C, E> {
        self.shared.feed_from_handle(Input::CloseRequested);
        self.close_finished()
    }

    /// True once [`close`](Self::close),
    /// [`close_when_current_connection_is_closed`](Self::close_when_current_connection_is_closed)
    /// (R11) or [`ConnectContext::abort`](crate::ConnectContext::abort) was called — already
    /// when the call returns (S2), connected or not — or once its driver task is gone (S3).
    /// After R11 or an abort while connected, the connection stays up and current
    /// ([`current_connection`](Self::current_connection), [`state`](Self::state) says
    /// `Connected`) until it goes away; it is the last one.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Resolves when close has finished (R8), without starting it; also when the driver
    /// task has died (S3). Does not borrow the handle (S6).
    pub fn close_finished(&self) -> impl Future<Output = ()> + Send + 'static + use<A, C, E> {
        let wait = self.shared.wait_finished();
        async move {
            if let Some(wait) = wait {
                wait.await;
            }
        }
    }

    /// Replace the current connection by a new one made beside it (R15, make before
    /// break): the catalog is looked up for another copy, a connection made to it, and only
    /// then does it become current, in place of the old one, which stays open for the
    /// builder's [`handover_grace`](crate::Builder::handover_grace) so that calls in flight
    /// may finish. `reason` is carried by the `HandedOver` event, the logs and the
    /// metrics; use [`HandoverReason::Drain`](crate::core::HandoverReason::Drain) when the
    /// server said it is draining (HTTP/2's GOAWAY, a lame-duck notice), `User` otherwise.
    /// A failed attempt leaves the current connection serving and is retried on the retry
    /// policy until it succeeds or [`cancel_handover`](Self::cancel_handover). Nothing when
    /// not connected or closed.
    pub fn handover(&self, reason: crate::core::HandoverReason) {
        let grace = self.shared.handover_grace();
        self.shared
            .feed_now_from_handle(Input::Handover { reason, grace });
    }

    /// Ends a pending handover whose cause no longer holds (R15); its attempt in flight is
    /// cancelled. Nothing when none is pending.
    pub fn cancel_handover(&self) {
        self.shared.feed_now_from_handle(Input::CancelHandover);
    }

    /// Ends a wait between attempts now (R16): "reconnect now", e.g. when you know the
    /// service is back. Bounded (I10): an attempt that began this way is followed by a full
    /// retry delay, so calling it in a loop cannot make the loop busy. Nothing while
    /// connected or after close.
    pub fn retry_now(&self) {
        self.shared.feed_now_from_handle(Input::RetryNow {
            reason: crate::core::RetryNowReason::User,
        });
    }

    /// R11: stop reconnecting. If connected, the current connection stays up and no new
    /// round starts after it closes; if not, this closes now. Either way the persistent
    /// connection counts as closed before this returns: [`is_closed`](Self::is_closed) is
    /// true and a new
    /// [`connected_or_failed_to_connect`](Self::connected_or_failed_to_connect) gets
    /// `Err(Closed)` at once, while [`current_connection`](Self::current_connection)
    /// still gives the connection that stays up.
    pub fn close_when_current_connection_is_closed(&self) {
        self.shared
            .feed_from_handle(Input::CloseWhenCurrentConnectionIsClosed);
    }

    /// A [`Stream`](futures_util::Stream) of every event from now on, for observers
    /// besides `on_event` (S4): each event as the driver hands it to `on_event`, in order.
    /// An observer that falls behind by more than the builder's
    /// [`event_capacity`](crate::Builder::event_capacity) gets `Err(Lagged(n))` with the number of
    /// events it missed, and observers never hold up the persistent connection. The stream
    /// ends after the last event, once close has finished. To see every event from the
    /// first, subscribe on the builder with [`Builder::events`](crate::Builder::events).
    ///
    /// ```
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::{Event, PersistentConnection};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pc = PersistentConnection::builder(
    ///     "observed",
    ///     || async { Ok::<_, String>(80u16) },
    ///     |_port, _cx| async { Ok(CloseSignal::new()) },
    /// )
    /// .build();
    /// let mut events = pc.events();
    /// pc.connected().await;
    /// // The driver had not started yet on this one-thread runtime: nothing was missed.
    /// assert!(matches!(events.recv().await, Some(Ok(Event::AttemptingToConnect))));
    /// assert!(matches!(events.recv().await, Some(Ok(Event::ObtainedAddress(80)))));
    /// assert!(matches!(events.recv().await, Some(Ok(Event::Connected(_)))));
    /// pc.close().await;
    /// assert!(matches!(events.recv().await, Some(Ok(Event::Disconnected))));
    /// assert!(events.recv().await.is_none(), "ends once close has finished");
    /// # }
    /// ```
    pub fn events(&self) -> EventStream<A, C, E> {
        let (rx, capacity) = self.shared.subscribe();
        EventStream::new(rx, capacity)
    }

    /// What the persistent connection is doing now: connecting, waiting to retry until a
    /// given instant, connected, closing or closed — the machine's own state, read under
    /// the shared lock.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::{PersistentConnection, State};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let pc = PersistentConnection::builder(
    ///     "down",
    ///     || async { Err::<u16, _>("catalog down".to_owned()) },
    ///     |_port, _cx| async { Ok(CloseSignal::new()) },
    /// )
    /// .retry_policy(persistent_connection::RetryPolicy::constant(Duration::from_secs(2)).non_random())
    /// .build();
    /// let start = tokio::time::Instant::now();
    /// let _ = pc.connected_or_failed_to_connect().await;
    /// tokio::task::yield_now().await; // the FailedToConnect handler returns
    /// assert_eq!(pc.state(), State::WaitingToRetry { next_attempt: start + Duration::from_secs(2) });
    /// assert_eq!(pc.consecutive_unsuccessful_attempts(), 1);
    /// assert_eq!((pc.stats().attempts, pc.stats().failures), (1, 1));
    /// pc.close().await;
    /// assert_eq!(pc.state(), State::Closed);
    /// # }
    /// ```
    pub fn state(&self) -> State {
        self.shared.state()
    }

    /// Unsuccessful attempts since the last successful connect (what the connect context
    /// tells, R12).
    pub fn consecutive_unsuccessful_attempts(&self) -> u32 {
        self.shared.consecutive_unsuccessful_attempts()
    }

    /// Counters since creation — attempts, failures, de-duplicated failures, connections
    /// and disconnections — read without a lock.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// The name given at creation (used in logs).
    pub fn server_name(&self) -> &str {
        &self.shared.server_name
    }

    /// A handle that does not keep the persistent connection alive (R14), e.g. for use
    /// inside `on_event` or `connect`.
    pub fn downgrade(&self) -> WeakPersistentConnection<A, C, E> {
        WeakPersistentConnection {
            shared: Arc::downgrade(&self.shared),
        }
    }
}

/// A handle that does not keep the persistent connection alive; see
/// [`PersistentConnection::downgrade`].
pub struct WeakPersistentConnection<A, C, E> {
    shared: Weak<Shared<A, C, E>>,
}

impl<A, C, E> Clone for WeakPersistentConnection<A, C, E> {
    fn clone(&self) -> Self {
        WeakPersistentConnection {
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, E> fmt::Debug for WeakPersistentConnection<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("WeakPersistentConnection");
        if let Some(shared) = self.shared.upgrade() {
            d.field("server_name", &shared.server_name);
        }
        d.finish_non_exhaustive()
    }
}

impl<A, C, E> WeakPersistentConnection<A, C, E> {
    /// A full handle, if some other strong handle still exists.
    pub fn upgrade(&self) -> Option<PersistentConnection<A, C, E>> {
        let shared = self.shared.upgrade()?;
        // The handle is built only once the count was taken: `then_some(handle)` would
        // build it either way, and its drop would give back a count never taken (issue 28
        // item 6: the count went from 0 to usize::MAX, and the next upgrade revived a
        // closed connection).
        if shared.try_add_handle() {
            Some(PersistentConnection { shared })
        } else {
            None
        }
    }
}

/// Loom model of the handle count (R14) under every interleaving; see `runtime/loom.rs`.
#[cfg(all(test, pc_loom))]
mod loom_tests {
    use loom::thread;

    use super::PersistentConnection;
    use crate::runtime::loom::{play_driver, shared};

    /// Issue 28 item 6: a weak handle's `upgrade` racing the last strong handle's drop either
    /// gets a handle (whose own drop is then the last) or not, and never takes a count that is
    /// not there: once both are done no upgrade succeeds, however often it is asked, and the
    /// close of R14 is requested. (With `then_some` in `upgrade`, a refused upgrade gave back
    /// a count it never took, and the next one revived the closed connection.)
    #[test]
    fn loom_upgrade_racing_the_last_drop_never_revives_it() {
        loom::model(|| {
            let s = shared();
            let pc = PersistentConnection { shared: s.clone() };
            let weak = pc.downgrade();
            let dropping = thread::spawn(move || drop(pc));
            let first = weak.upgrade();
            let second = weak.upgrade();
            assert!(
                first.is_some() || second.is_none(),
                "revived after the last drop"
            );
            drop((first, second));
            dropping.join().unwrap();
            for _ in 0..2 {
                assert!(weak.upgrade().is_none(), "revived after the last drop");
            }
            play_driver(&s);
            assert!(s.is_closed(), "R14: the last drop closes");
        });
    }
}
