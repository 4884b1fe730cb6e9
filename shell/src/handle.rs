//! The public handle: waiters, queries and close.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::{broadcast, mpsc, watch};

use crate::builder::Builder;
use crate::closable::Closable;
use crate::{AttemptError, Error, Event};

/// What a handle asks of the driver task.
#[derive(Debug)]
pub(crate) enum Command<E> {
    Close,
    CloseWhenCurrentConnectionIsClosed,
    Abort(E),
}

/// The outcome of an attempt, as `connected_or_failed_to_connect()` returns it (R10).
pub type AttemptOutcome<C, E> = Result<C, AttemptError<Error<E>>>;

/// State shared by the handles and the driver task. It holds nothing that keeps the driver
/// alive: the driver ends when every [`PersistentConnection`] (holder of the command
/// sender) is gone (R14).
pub(crate) struct Shared<A, C, E> {
    pub(crate) server_name: Arc<str>,
    /// The current connection (R5, R6). Read lock-free and allocation-free.
    pub(crate) current: ArcSwapOption<C>,
    /// `close()` was called, or the machine counts as closed (R8, R11, R12).
    pub(crate) closed: AtomicBool,
    /// Close has finished (R8).
    pub(crate) close_finished: watch::Sender<bool>,
    /// Every connection that becomes current, for `connected()` waiters (R9).
    pub(crate) became_current: broadcast::Sender<C>,
    /// Every attempt outcome, for `connected_or_failed_to_connect()` waiters (R10).
    pub(crate) outcomes: broadcast::Sender<AttemptOutcome<C, E>>,
    /// Every event, for observers. Created by the first `events()` call, so a connection
    /// nobody observes does not pay for the channel's buffer (about 4 KiB at the default
    /// capacity) nor for cloning each event into it.
    pub(crate) events: OnceLock<broadcast::Sender<Event<A, C, E>>>,
    /// The capacity of `events` once created.
    pub(crate) event_capacity: usize,
}

/// A persistent connection: a handle on the driver task that keeps a connection to a
/// service alive (docs/behaviour.md R1–R14).
///
/// Build one with [`PersistentConnection::builder`]. Handles are cheap to clone (two
/// reference counts); when the last one is dropped, the persistent connection closes in the
/// background as [`close`](PersistentConnection::close) would (R14). A
/// [`WeakPersistentConnection`] does not keep it alive.
///
/// Type parameters: `A` the address, `C` the connection ([`Closable`]), `E` the user's
/// error; events and failures carry [`Error<E>`].
///
/// Two things to avoid inside `on_event`, `get_address` and `connect`: holding a strong
/// handle (it would keep the persistent connection alive forever; capture a
/// [`downgrade`](PersistentConnection::downgrade)d one), and *awaiting* `close()` from
/// `on_event` (close waits for the running handler; calling it without awaiting is fine,
/// as the call alone starts closing).
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{CloseSignal, Event, PersistentConnection};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pc = PersistentConnection::builder(
///     "echo",
///     || async { Ok::<_, String>("127.0.0.1:7") },
///     |_addr, _cx| async { Ok(CloseSignal::new()) },
/// )
/// .on_event(|event| async move { println!("{event:?}") })
/// .retry_delay(Duration::from_secs(1))
/// .build();
/// let conn = pc.connected().await;
/// assert!(pc.current_connection().is_some());
/// pc.close().await;
/// assert!(pc.is_closed() && pc.current_connection().is_none());
/// # drop(conn);
/// # }
/// ```
pub struct PersistentConnection<A, C, E> {
    pub(crate) commands: mpsc::UnboundedSender<Command<E>>,
    pub(crate) shared: Arc<Shared<A, C, E>>,
}

impl<A, C, E> Clone for PersistentConnection<A, C, E> {
    fn clone(&self) -> Self {
        PersistentConnection {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, E> fmt::Debug for PersistentConnection<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentConnection")
            .field("server_name", &self.shared.server_name)
            .field("is_closed", &self.shared.closed.load(Ordering::Acquire))
            .field("connected", &self.shared.current.load().is_some())
            .finish()
    }
}

impl<A, C, E> PersistentConnection<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    /// A builder with the original's defaults: no `on_event`, `retry_delay` a constant 10 s
    /// jittered ±30%, a seed from OS randomness, no connect timeout.
    ///
    /// `get_address` is called before every attempt; `connect(address, context)` makes a
    /// connection (see [`ConnectContext`]). Both futures may fail with `E`, may panic (the
    /// attempt then fails with [`Error::Panicked`], R13) and are dropped when close cancels
    /// the attempt (R8).
    pub fn builder<G, GF, K, KF>(
        server_name: impl Into<Arc<str>>,
        get_address: G,
        connect: K,
    ) -> Builder<A, C, E>
    where
        G: Fn() -> GF + Send + Sync + 'static,
        GF: Future<Output = Result<A, E>> + Send + 'static,
        K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
        KF: Future<Output = Result<C, E>> + Send + 'static,
    {
        Builder::new(server_name.into(), get_address, connect)
    }
}

impl<A, C, E> PersistentConnection<A, C, E>
where
    A: Clone + Send + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + Send + 'static,
{
    /// The current connection if there is one and it is not closed. Lock-free and
    /// allocation-free (an `arc-swap` load and a clone of `C`).
    fn live_current(&self) -> Option<C> {
        let guard = self.shared.current.load();
        match guard.as_deref() {
            Some(c) if !c.is_closed() => Some(c.clone()),
            _ => None,
        }
    }

    /// The current connection, if any (R5, R6). Lock-free and allocation-free: an
    /// `arc-swap` load and a clone of `C`.
    pub fn current_connection(&self) -> Option<C> {
        self.shared.current.load().as_deref().cloned()
    }

    /// Calls `f` with the current connection, if any, without cloning it: the hottest
    /// path. Lock-free, allocation-free, and free of shared writes (an `arc-swap` load
    /// only), so readers on many threads do not slow each other down, where
    /// [`current_connection`](Self::current_connection)'s clone of `C` writes `C`'s shared
    /// reference count (see `BENCHMARKS.md`, hot paths). `f` should be short: the
    /// connection it sees stays alive until `f` returns, even if it is replaced meanwhile.
    ///
    /// ```
    /// use persistent_connection::{Closable, CloseSignal, PersistentConnection};
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
        f(self.shared.current.load().as_deref())
    }

    /// R9: resolves at once with the current connection if there is one and it is not
    /// `is_closed()`; otherwise with the next connection to become current. After close it
    /// never resolves (as in the original); use
    /// [`connected_or_failed_to_connect`](PersistentConnection::connected_or_failed_to_connect)
    /// to observe close.
    ///
    /// The waiter is registered when this is called, not when the future is first polled.
    /// When connected, the call takes no lock shared with the driver and allocates nothing.
    pub fn connected(&self) -> impl Future<Output = C> + Send + 'static {
        let (ready, rx) = match self.live_current() {
            Some(c) => (Some(c), None),
            None => {
                // Subscribe first, then check again: a connection that became current in
                // between is seen by one or the other.
                let rx = self.shared.became_current.subscribe();
                (self.live_current(), Some(rx))
            }
        };
        async move {
            if let Some(c) = ready {
                return c;
            }
            let Some(mut rx) = rx else {
                return std::future::pending().await;
            };
            loop {
                match rx.recv().await {
                    Ok(c) => return c,
                    // Missed some: the next retained one still became current after the call.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }

    /// R10: `Ok(c)` at once if connected; `Err(Closed)` at once if closed; otherwise the
    /// next attempt's outcome: `Ok(c)`, `Err(Failed(e))` (not de-duplicated),
    /// `Err(Aborted(e))` after [`ConnectContext::abort`], or `Err(Closed)` when closed.
    ///
    /// The waiter is registered when this is called.
    pub fn connected_or_failed_to_connect(
        &self,
    ) -> impl Future<Output = AttemptOutcome<C, E>> + Send + 'static {
        let mut ready = None;
        let mut rx = None;
        if self.is_closed() {
            ready = Some(Err(AttemptError::Closed));
        } else if let Some(c) = self.live_current() {
            ready = Some(Ok(c));
        } else {
            rx = Some(self.shared.outcomes.subscribe());
            // Subscribed: now a check cannot miss what happens next.
            if self.is_closed() {
                ready = Some(Err(AttemptError::Closed));
            } else if let Some(c) = self.live_current() {
                ready = Some(Ok(c));
            }
        }
        async move {
            if let Some(r) = ready {
                return r;
            }
            let Some(mut rx) = rx else {
                return Err(AttemptError::Closed);
            };
            loop {
                match rx.recv().await {
                    Ok(r) => return r,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Err(AttemptError::Closed),
                }
            }
        }
    }

    /// Starts closing (R8) and resolves once no connection of ours is open, no attempt is
    /// in flight and no event handler runs. Idempotent; [`is_closed`](Self::is_closed) is
    /// true as soon as this is called, even if the future is never polled.
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.closed.store(true, Ordering::Release);
        // A send error means the driver is gone, which it only is after close finished.
        let _ = self.commands.send(Command::Close);
        self.close_finished()
    }

    /// True once [`close`](Self::close) was called, or once the persistent connection
    /// counts as closed after
    /// [`close_when_current_connection_is_closed`](Self::close_when_current_connection_is_closed)
    /// or [`ConnectContext::abort`] (as soon as the driver has processed them).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Resolves when close has finished (R8), without starting it.
    pub fn close_finished(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.close_finished.subscribe();
        async move {
            // The sender lives in `Shared`, which the driver sets before it exits; an error
            // would mean it is gone, and with it everything the close waits for.
            let _ = rx.wait_for(|finished| *finished).await;
        }
    }

    /// R11: stop reconnecting. If connected, the current connection stays up and no new
    /// round starts after it closes; if not, this closes now. Either way the persistent
    /// connection then counts as closed.
    pub fn close_when_current_connection_is_closed(&self) {
        let _ = self
            .commands
            .send(Command::CloseWhenCurrentConnectionIsClosed);
    }

    /// A stream of every event, for observers besides `on_event`. Only events emitted after
    /// this call are received. A receiver that falls behind by more than the builder's
    /// [`event_capacity`](Builder::event_capacity) gets `RecvError::Lagged` and skips
    /// ahead; observers never hold up the persistent connection.
    ///
    /// ```
    /// use persistent_connection::{CloseSignal, Event, PersistentConnection};
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
    /// assert!(matches!(events.recv().await.unwrap(), Event::AttemptingToConnect));
    /// assert!(matches!(events.recv().await.unwrap(), Event::ObtainedAddress(80)));
    /// assert!(matches!(events.recv().await.unwrap(), Event::Connected(_)));
    /// # }
    /// ```
    pub fn events(&self) -> broadcast::Receiver<Event<A, C, E>> {
        self.shared
            .events
            .get_or_init(|| broadcast::Sender::new(self.shared.event_capacity))
            .subscribe()
    }

    /// The name given at creation (used in logs).
    pub fn server_name(&self) -> &str {
        &self.shared.server_name
    }

    /// A handle that does not keep the persistent connection alive (R14), e.g. for use
    /// inside `on_event` or `connect`.
    pub fn downgrade(&self) -> WeakPersistentConnection<A, C, E> {
        WeakPersistentConnection {
            commands: self.commands.downgrade(),
            shared: self.shared.clone(),
        }
    }
}

/// A handle that does not keep the persistent connection alive; see
/// [`PersistentConnection::downgrade`].
pub struct WeakPersistentConnection<A, C, E> {
    commands: mpsc::WeakUnboundedSender<Command<E>>,
    shared: Arc<Shared<A, C, E>>,
}

impl<A, C, E> Clone for WeakPersistentConnection<A, C, E> {
    fn clone(&self) -> Self {
        WeakPersistentConnection {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<A, C, E> fmt::Debug for WeakPersistentConnection<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakPersistentConnection")
            .field("server_name", &self.shared.server_name)
            .finish_non_exhaustive()
    }
}

impl<A, C, E> WeakPersistentConnection<A, C, E> {
    /// A full handle, if some other handle still exists.
    pub fn upgrade(&self) -> Option<PersistentConnection<A, C, E>> {
        Some(PersistentConnection {
            commands: self.commands.upgrade()?,
            shared: self.shared.clone(),
        })
    }
}

/// What `connect` is told about its attempt (R12).
///
/// ```
/// use persistent_connection::{AttemptError, CloseSignal, Error, PersistentConnection};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let pc = PersistentConnection::builder(
///     "picky",
///     || async { Ok::<_, String>("10.0.0.1:1") },
///     |_addr, cx| async move {
///         if cx.consecutive_unsuccessful_attempts() >= 2 {
///             cx.abort("giving up".to_owned()); // stop for good (R12)
///         }
///         Err::<CloseSignal, _>("refused".to_owned())
///     },
/// )
/// .retry_delay(std::time::Duration::from_millis(10))
/// .build();
/// let mut outcomes = Vec::new();
/// loop {
///     match pc.connected_or_failed_to_connect().await {
///         Err(AttemptError::Closed) => break,
///         other => outcomes.push(other.map(|_| ())),
///     }
/// }
/// assert_eq!(
///     outcomes,
///     [
///         Err(AttemptError::Failed(Error::User("refused".to_owned()))),
///         Err(AttemptError::Failed(Error::User("refused".to_owned()))),
///         Err(AttemptError::Aborted(Error::User("giving up".to_owned()))),
///     ]
/// );
/// assert!(pc.is_closed());
/// # }
/// ```
pub struct ConnectContext<E> {
    pub(crate) consecutive_unsuccessful_attempts: u32,
    pub(crate) commands: mpsc::WeakUnboundedSender<Command<E>>,
}

impl<E> Clone for ConnectContext<E> {
    fn clone(&self) -> Self {
        ConnectContext {
            consecutive_unsuccessful_attempts: self.consecutive_unsuccessful_attempts,
            commands: self.commands.clone(),
        }
    }
}

impl<E> fmt::Debug for ConnectContext<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectContext")
            .field(
                "consecutive_unsuccessful_attempts",
                &self.consecutive_unsuccessful_attempts,
            )
            .finish_non_exhaustive()
    }
}

impl<E> ConnectContext<E> {
    /// Unsuccessful attempts since the last successful connect: 0 on the first attempt.
    pub fn consecutive_unsuccessful_attempts(&self) -> u32 {
        self.consecutive_unsuccessful_attempts
    }

    /// Stop as [`close_when_current_connection_is_closed`](PersistentConnection::close_when_current_connection_is_closed)
    /// does, and give `error` to pending
    /// [`connected_or_failed_to_connect`](PersistentConnection::connected_or_failed_to_connect)
    /// waiters as `Err(Aborted(Error::User(error)))`. This attempt is cancelled; its
    /// result, if `connect` still returns one, is ignored (a connection is closed).
    pub fn abort(&self, error: E) {
        if let Some(commands) = self.commands.upgrade() {
            let _ = commands.send(Command::Abort(error));
        }
    }
}
