//! A blocking driver of [`persistent_connection_core`]: the same persistent connection as
//! the Tokio crate (address lookup before every attempt, awaited events, jittered retries
//! counted from each attempt's start, prompt close), on `std` threads and `std::net`, with
//! no async runtime at all. It shares no code with the Tokio shell; every decision is the
//! core machine's, and this crate only performs its effects:
//!
//! - one driver thread owns the [`Machine`] and sleeps on a channel until the machine's
//!   next deadline ([`Machine::poll_timeout`]);
//! - `get_address` and `connect` run on a short-lived thread each and send their result
//!   back; `on_event` runs on the driver thread, so the next step waits for it;
//! - one watcher thread per connection blocks in [`Connection::wait_closed`] and reports
//!   the close.
//!
//! The rules (R1–R14) are described in the project's behaviour document,
//! [`persistent_connection_core::behaviour`]. What this driver does differently from the Tokio shell:
//!
//! - A thread cannot be cancelled, so an attempt that `close()` cancels (R8) keeps running
//!   on its own thread until `connect` returns, and that thread closes a connection it
//!   still makes. The driver thread does not wait for it. Give `connect` a timeout (as
//!   [`TcpConnection::connect`] does).
//! - [`close`](PersistentConnection::close) returns once the driver thread has ended, so
//!   whatever `on_event` captured has been dropped; called from `on_event` (on the driver
//!   thread) it starts closing and returns at once.
//! - It offers `connected_timeout`, `current_connection`, `close`, `is_closed`,
//!   `close_when_current_connection_is_closed` and a connect context
//!   ([`PersistentConnection::spawn_with_context`], R12); no
//!   `connected_or_failed_to_connect` (R10) or event stream.
//!
//! ```
//! use std::net::{SocketAddr, TcpListener};
//! use std::time::Duration;
//! use persistent_connection_blocking::{Config, PersistentConnection, RetryPolicy, TcpConnection};
//!
//! let server = TcpListener::bind("127.0.0.1:0").unwrap();
//! let addr = server.local_addr().unwrap();
//! let pc = PersistentConnection::spawn(
//!     Config { seed: 1, retry: RetryPolicy::constant(Duration::from_millis(50)) },
//!     move || Ok::<SocketAddr, std::io::ErrorKind>(addr),
//!     |addr| TcpConnection::connect(addr, Duration::from_secs(5)).map_err(|e| e.kind()),
//!     |event| println!("{event:?}"),
//! );
//! let conn = pc.connected_timeout(Duration::from_secs(10)).expect("connected");
//! assert_eq!(conn.peer_addr(), addr);
//! pc.close(); // returns once the connection is closed and no event handler runs
//! assert!(conn.is_closed());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod tcp;

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use persistent_connection_core::{Config, Jitter, RetryDelay, RetryPolicy};
use persistent_connection_core::{ConnId, Effect, Input, Instant, Machine};
pub use tcp::TcpConnection;

/// A connection the driver can watch and close.
pub trait Connection: Clone + Send + 'static {
    /// Begins closing; [`wait_closed`](Connection::wait_closed) returns soon after.
    fn close(&self);
    /// Blocks until the connection has closed, whichever side closed it.
    fn wait_closed(&self);
}

/// What `connect` is given by [`PersistentConnection::spawn_with_context`] (R12).
pub struct ConnectContext<E> {
    consecutive_unsuccessful_attempts: u32,
    abort: Arc<dyn Fn(E) + Send + Sync>,
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
    /// Unsuccessful attempts since the last successful connect, not counting this one: 0
    /// on the first attempt (R12).
    pub fn consecutive_unsuccessful_attempts(&self) -> u32 {
        self.consecutive_unsuccessful_attempts
    }

    /// Stops the persistent connection for good (R12): no attempt follows, and it counts
    /// as closed from now on. This attempt is not cancelled: what `connect` returns is
    /// still handled (a failure reported, a connection closed) before close finishes.
    /// Calling it again, or after close, changes nothing.
    pub fn abort(&self, error: E) {
        (self.abort)(error)
    }
}

/// Why an attempt failed: the user's error, or a callback that panicked (R13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error<E> {
    /// `get_address` or `connect` returned this error.
    User(E),
    /// `get_address` or `connect` panicked with this message.
    Panicked(String),
}

/// An event as `on_event` sees it.
pub type Event<A, C, E> = persistent_connection_core::Event<A, C, Error<E>>;

type In<A, C, E> = Input<A, C, Error<E>>;

struct Status<C> {
    current: Option<C>,
    closed: bool,
    close_finished: bool,
    /// The driver no longer takes inputs: a helper thread that still has one closes a
    /// connection in it itself.
    driver_gone: bool,
    /// The driver thread has dropped the driver (and with it `on_event`).
    ended: bool,
}

struct Shared<C> {
    status: Mutex<Status<C>>,
    changed: Condvar,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Status<C>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A persistent connection driven by a thread of its own. Cheap to clone; dropping the
/// last clone closes it in the background (R14).
pub struct PersistentConnection<A, C, E> {
    inner: Arc<Handle<A, C, E>>,
}

struct Handle<A, C, E> {
    tx: mpsc::Sender<In<A, C, E>>,
    shared: Arc<Shared<C>>,
    /// The driver thread, which `close()` cannot wait for from inside.
    driver: std::thread::ThreadId,
}

impl<A, C, E> Clone for PersistentConnection<A, C, E> {
    fn clone(&self) -> Self {
        PersistentConnection {
            inner: self.inner.clone(),
        }
    }
}

impl<A, C: Clone, E> fmt::Debug for PersistentConnection<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentConnection")
            .field("is_closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<A, C, E> PersistentConnection<A, C, E>
where
    A: Clone + PartialEq + Send + 'static,
    C: Connection,
    E: Clone + PartialEq + Send + 'static,
{
    /// Starts the driver thread. `get_address` is called before every attempt (on a
    /// thread of its own), `connect` with the address it gave, and `on_event` with every
    /// event, on the driver thread: the next step waits until it returns.
    pub fn spawn<G, K, F>(config: Config, get_address: G, connect: K, on_event: F) -> Self
    where
        G: Fn() -> Result<A, E> + Send + Sync + 'static,
        K: Fn(A) -> Result<C, E> + Send + Sync + 'static,
        F: FnMut(Event<A, C, E>) + Send + 'static,
    {
        Self::spawn_with_context(config, get_address, move |a, _cx| connect(a), on_event)
    }

    /// As [`spawn`](Self::spawn), with a [`ConnectContext`] for `connect` (R12): the
    /// number of consecutive unsuccessful attempts, and `abort(error)`, which stops the
    /// loop for good. As in the original, the attempt that called `abort` runs to its
    /// end: a failure it returns is still reported (`FailedToConnect`, de-duplicated as
    /// usual, `on_event` called), a connection it returns is closed without `Connected`,
    /// and close finishes after that.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use persistent_connection_blocking::{Config, Event, PersistentConnection, RetryPolicy, TcpConnection};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let pc = PersistentConnection::spawn_with_context(
    ///     Config { seed: 1, retry: RetryPolicy::constant(Duration::from_millis(10)) },
    ///     || Ok::<_, &'static str>("127.0.0.1:9".parse().unwrap()),
    ///     |_addr, cx| {
    ///         cx.abort("wrong credentials"); // give up for good
    ///         Err::<TcpConnection, _>("handshake refused")
    ///     },
    ///     move |event: Event<SocketAddr, TcpConnection, &str>| {
    ///         let _ = tx.send(format!("{event:?}"));
    ///     },
    /// );
    /// // The aborting attempt's failure is still reported; nothing follows it.
    /// let failed = rx.iter().find(|e| e.starts_with("FailedToConnect")).unwrap();
    /// assert_eq!(failed, r#"FailedToConnect(User("handshake refused"))"#);
    /// pc.close();
    /// assert!(pc.is_closed());
    /// ```
    pub fn spawn_with_context<G, K, F>(
        config: Config,
        get_address: G,
        connect: K,
        on_event: F,
    ) -> Self
    where
        G: Fn() -> Result<A, E> + Send + Sync + 'static,
        K: Fn(A, &ConnectContext<E>) -> Result<C, E> + Send + Sync + 'static,
        F: FnMut(Event<A, C, E>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                current: None,
                closed: false,
                close_finished: false,
                driver_gone: false,
                ended: false,
            }),
            changed: Condvar::new(),
        });
        let config = Config {
            seed: config.seed,
            retry: RetryPolicy {
                delay: guard_retry_delay(config.retry.delay),
                jitter: config.retry.jitter,
            },
        };
        let driver = Driver {
            machine: Machine::new(config),
            rx,
            tx: tx.clone(),
            shared: shared.clone(),
            get_address: Arc::new(get_address),
            connect: Arc::new(connect),
            on_event,
            origin: std::time::Instant::now(),
            local: VecDeque::new(),
            watched: Vec::new(),
        };
        let ended = Ended(shared.clone());
        let thread = std::thread::spawn(move || {
            // Dropped after the driver, however `run` ends (even by a panic).
            let _ended = ended;
            driver.run();
        });
        PersistentConnection {
            inner: Arc::new(Handle {
                tx,
                shared,
                driver: thread.thread().id(),
            }),
        }
    }
}

impl<A, C: Clone, E> PersistentConnection<A, C, E> {
    /// The current connection, if any (R5, R6).
    pub fn current_connection(&self) -> Option<C> {
        self.inner.shared.lock().current.clone()
    }

    /// The current connection, or the next one to become current within `timeout` (R9).
    /// `None` on timeout or once closed.
    pub fn connected_timeout(&self, timeout: Duration) -> Option<C> {
        let shared = &self.inner.shared;
        let (status, _) = shared
            .changed
            .wait_timeout_while(shared.lock(), timeout, |s| s.current.is_none() && !s.closed)
            .unwrap_or_else(|e| e.into_inner());
        if status.closed {
            None
        } else {
            status.current.clone()
        }
    }

    /// True once [`close`](Self::close) or R11 has been called, or the driver ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed
    }

    /// Closes (R8): no new attempt, the current connection closed and its `Disconnected`
    /// handled. Blocks until that is done and the driver thread has ended, so that
    /// whatever `on_event` captured has been dropped; idempotent. Called from `on_event`
    /// (on the driver thread, which cannot wait for itself) it starts closing and returns
    /// at once.
    pub fn close(&self) {
        self.inner.request(Input::CloseRequested);
        if std::thread::current().id() == self.inner.driver {
            return;
        }
        let shared = &self.inner.shared;
        let _done = shared
            .changed
            .wait_while(shared.lock(), |s| !s.ended)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Stops reconnecting (R11): the current connection stays up, and no round follows
    /// when it closes. Counts as closed from now on.
    pub fn close_when_current_connection_is_closed(&self) {
        self.inner
            .request(Input::CloseWhenCurrentConnectionIsClosed);
    }
}

impl<A, C, E> Handle<A, C, E> {
    fn request(&self, input: In<A, C, E>) {
        self.shared.lock().closed = true;
        // The driver keeps a sender, so this fails only if its thread has ended, and then
        // `close_finished` is already set.
        let _ = self.tx.send(input);
    }
}

impl<A, C, E> Drop for Handle<A, C, E> {
    fn drop(&mut self) {
        self.request(Input::CloseRequested);
    }
}

struct Driver<A, C: Connection, E, G, K, F> {
    machine: Machine<A, C, Error<E>>,
    rx: mpsc::Receiver<In<A, C, E>>,
    tx: mpsc::Sender<In<A, C, E>>,
    shared: Arc<Shared<C>>,
    get_address: Arc<G>,
    connect: Arc<K>,
    on_event: F,
    origin: std::time::Instant,
    /// Inputs produced while draining effects, fed once the drain is over.
    local: VecDeque<In<A, C, E>>,
    /// Connections with a watcher thread.
    watched: Vec<ConnId>,
}

impl<A, C, E, G, K, F> Driver<A, C, E, G, K, F>
where
    A: Clone + PartialEq + Send + 'static,
    C: Connection,
    E: Clone + PartialEq + Send + 'static,
    G: Fn() -> Result<A, E> + Send + Sync + 'static,
    K: Fn(A, &ConnectContext<E>) -> Result<C, E> + Send + Sync + 'static,
    F: FnMut(Event<A, C, E>) + Send + 'static,
{
    fn now(&self) -> Instant {
        Instant::from_since_origin(self.origin.elapsed())
    }

    fn run(mut self) {
        loop {
            while let Some(effect) = self.machine.poll_effect() {
                self.perform(effect);
            }
            let input = if let Some(input) = self.local.pop_front() {
                input
            } else if self.machine.is_close_finished() {
                // Nothing of ours is open. A cancelled attempt's thread may still run: it
                // closes what it still makes itself (`helper`).
                return;
            } else {
                let msg = match self.machine.poll_timeout() {
                    Some(deadline) => {
                        let wait = deadline.saturating_duration_since(self.now());
                        match self.rx.recv_timeout(wait) {
                            Ok(msg) => Some(msg),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    None => match self.rx.recv() {
                        Ok(msg) => Some(msg),
                        Err(_) => return,
                    },
                };
                match msg {
                    None => Input::TimerFired,
                    Some(input) => {
                        if let Input::Closed { conn } = &input {
                            self.watched.retain(|c| c != conn);
                        }
                        input
                    }
                }
            };
            let now = self.now();
            self.machine.handle(now, input);
        }
    }

    fn perform(&mut self, effect: Effect<A, C, Error<E>>) {
        match effect {
            Effect::Emit { id, event } => {
                // A panic counts as handled (R13).
                let _ = catch_unwind(AssertUnwindSafe(|| (self.on_event)(event)));
                self.local.push_back(Input::EventHandled { event: id });
            }
            Effect::GetAddress { attempt } => {
                let get_address = self.get_address.clone();
                self.helper(move || Input::AddressResult {
                    attempt,
                    result: guarded(|| get_address()),
                });
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                let connect = self.connect.clone();
                let cx = ConnectContext {
                    consecutive_unsuccessful_attempts,
                    abort: self.abort_fn(),
                };
                self.helper(move || Input::ConnectResult {
                    attempt,
                    result: guarded(|| connect(address, &cx)),
                });
            }
            Effect::BecameCurrent { conn, connection } => {
                self.shared.lock().current = Some(connection.clone());
                self.shared.changed.notify_all();
                self.watch(conn, connection);
            }
            Effect::NoLongerCurrent { .. } => self.shared.lock().current = None,
            Effect::CloseConnection { conn, connection } => {
                // A panicking `close` must not kill the driver thread (R13); the watcher
                // reports the close as usual.
                let _ = catch_unwind(AssertUnwindSafe(|| connection.close()));
                self.watch(conn, connection);
            }
            Effect::CloseFinished => {
                let mut status = self.shared.lock();
                status.closed = true;
                status.close_finished = true;
                drop(status);
                self.shared.changed.notify_all();
            }
            // The timer is `poll_timeout`; a cancelled attempt's thread runs to its end and
            // a connection it still makes is closed (R8); R10 waiters are not offered.
            Effect::StartTimer { .. } | Effect::CancelAttempt { .. } => {}
            Effect::AttemptOutcome(_) => {}
        }
    }

    /// What a connect context's `abort` does: closed at once for the handle (as R11),
    /// and the machine told, before the attempt's own result (one channel, in order).
    fn abort_fn(&self) -> Arc<dyn Fn(E) + Send + Sync> {
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        Arc::new(move |error: E| {
            shared.lock().closed = true;
            shared.changed.notify_all();
            let _ = tx.send(Input::Abort {
                error: Error::User(error),
            });
        })
    }

    /// Runs `f` on a thread of its own; its result comes back as an input. If the driver
    /// has ended meanwhile (close finished while a cancelled attempt ran), a connection
    /// the attempt still made is closed here, as the machine would have (R8).
    fn helper(&mut self, f: impl FnOnce() -> In<A, C, E> + Send + 'static) {
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            let input = f();
            // Sent under the lock under which the driver says it is gone and takes what
            // is left in the channel: nothing sent is ever left unread.
            let status = shared.lock();
            if !status.driver_gone {
                let _ = tx.send(input);
                return;
            }
            drop(status);
            close_made(input);
        });
    }

    /// Reports `conn`'s close once it happens (one watcher per connection).
    fn watch(&mut self, conn: ConnId, connection: C) {
        if !self.watched.contains(&conn) {
            self.watched.push(conn);
            self.helper(move || {
                // A panic in `wait_closed` counts as closed (R13): the thread still reports,
                // so that nothing waits for it forever.
                let _ = catch_unwind(AssertUnwindSafe(|| connection.wait_closed()));
                Input::Closed { conn }
            });
        }
    }
}

/// Marks the driver thread's end, once the driver (and `on_event`) has been dropped.
struct Ended<C>(Arc<Shared<C>>);

impl<C> Drop for Ended<C> {
    fn drop(&mut self) {
        let mut status = self.0.lock();
        status.current = None;
        status.closed = true;
        status.close_finished = true;
        status.ended = true;
        drop(status);
        self.0.changed.notify_all();
    }
}

impl<A, C: Connection, E, G, K, F> Drop for Driver<A, C, E, G, K, F> {
    /// However the driver ends (even by a panic), waiters return, and helper threads
    /// still running close what they make themselves; a connection already sent is
    /// closed here.
    fn drop(&mut self) {
        let mut status = self.shared.lock();
        status.current = None;
        status.closed = true;
        status.close_finished = true;
        status.driver_gone = true;
        let left: Vec<_> = self.rx.try_iter().collect();
        drop(status);
        self.shared.changed.notify_all();
        left.into_iter().for_each(close_made);
    }
}

/// Closes the connection a late attempt made, if it made one (R8); a panicking `close`
/// is ignored, as in the driver (R13).
fn close_made<A, C: Connection, E>(input: In<A, C, E>) {
    if let Input::ConnectResult {
        result: Ok(connection),
        ..
    } = input
    {
        let _ = catch_unwind(AssertUnwindSafe(|| connection.close()));
    }
}

/// R13: a custom retry delay that panics must not kill the driver thread; that attempt
/// uses the default delay, as in the Tokio shell.
fn guard_retry_delay(delay: RetryDelay) -> RetryDelay {
    match delay {
        RetryDelay::Custom(mut f) => RetryDelay::from_fn(move |failures| {
            catch_unwind(AssertUnwindSafe(|| f(failures))).unwrap_or(RetryDelay::DEFAULT)
        }),
        other => other,
    }
}

/// Calls a user callback; a panic becomes [`Error::Panicked`] (R13).
fn guarded<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, Error<E>> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(Error::User),
        Err(payload) => Err(Error::Panicked(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into()),
        )),
    }
}
