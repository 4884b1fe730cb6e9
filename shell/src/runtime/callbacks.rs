//! What the user gives and what `connect` is given: the callbacks behind their panic guard
//! and timeouts, and the connect context (R12). Below the builder (which makes them), the
//! driver (which runs them) and the handle; it needs only the shared state's abort.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::{Callback, Error};
use crate::events::Event;
use crate::guard;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// What an attempt's future yields: the lookup's or the connect's result.
pub(crate) enum AttemptOutput<A, C, E> {
    Address(Result<A, Error<E>>),
    Connect(Result<C, Error<E>>),
}

/// The user's `get_address` and `connect`, behind one allocation. Each call returns one
/// boxed future that includes the timeout (S5) and the panic guard (R13): the user's
/// future is not boxed separately.
pub(crate) trait Attempts<A, C, E>: Send + Sync {
    /// `server` names the persistent connection in a lookup timeout. A handover's lookup
    /// (R15) passes the current connection's address as `avoid`: if the lookup gives it,
    /// `get_address` is asked once more, so that a catalog's picker, which skips the
    /// address it handed out last, names another copy when one is listed.
    fn get_address(
        self: Arc<Self>,
        timeout: Duration,
        server: Arc<str>,
        avoid: Option<A>,
    ) -> BoxFuture<AttemptOutput<A, C, E>>;
    fn connect(
        self: Arc<Self>,
        address: A,
        cx: ConnectContext<E>,
        timeout: Duration,
    ) -> BoxFuture<AttemptOutput<A, C, E>>;
}

struct UserFns<G, K> {
    get_address: G,
    connect: K,
}

impl<A, C, E, G, GF, K, KF> Attempts<A, C, E> for UserFns<G, K>
where
    A: PartialEq + Send + 'static,
    C: Send + 'static,
    E: Send + 'static,
    G: Fn() -> GF + Send + Sync + 'static,
    GF: Future<Output = Result<A, E>> + Send + 'static,
    K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
    KF: Future<Output = Result<C, E>> + Send + 'static,
{
    fn get_address(
        self: Arc<Self>,
        timeout: Duration,
        server: Arc<str>,
        avoid: Option<A>,
    ) -> BoxFuture<AttemptOutput<A, C, E>> {
        guarded_attempt(
            Callback::GetAddress,
            timeout,
            move |after| Error::LookupTimedOut { server, after },
            AttemptOutput::Address,
            move || {
                let first = (self.get_address)();
                async move {
                    match first.await {
                        Ok(a) if avoid.as_ref() == Some(&a) => (self.get_address)().await,
                        other => other,
                    }
                }
            },
        )
    }

    fn connect(
        self: Arc<Self>,
        address: A,
        cx: ConnectContext<E>,
        timeout: Duration,
    ) -> BoxFuture<AttemptOutput<A, C, E>> {
        guarded_attempt(
            Callback::Connect,
            timeout,
            Error::TimedOut,
            AttemptOutput::Connect,
            move || (self.connect)(address, cx),
        )
    }
}

/// `AttemptOutput::Address` or `AttemptOutput::Connect`.
type WrapOutput<T, A, C, E> = fn(Result<T, Error<E>>) -> AttemptOutput<A, C, E>;

/// One boxed future for a user callback: the call and its future run under the panic
/// guard (R13) and the timeout (S5); the result is wrapped as `output`.
fn guarded_attempt<T, A, C, E, F>(
    callback: Callback,
    timeout: Duration,
    timed_out: impl FnOnce(Duration) -> Error<E> + Send + 'static,
    output: WrapOutput<T, A, C, E>,
    call: impl FnOnce() -> F + Send + 'static,
) -> BoxFuture<AttemptOutput<A, C, E>>
where
    T: Send + 'static,
    A: Send + 'static,
    C: Send + 'static,
    E: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    let what = match callback {
        Callback::GetAddress => "get_address",
        Callback::Connect => "connect",
    };
    Box::pin(async move {
        // The call itself runs inside the guard too (R13); so does the drop of the user's
        // future, when it finishes, times out or is cancelled (R8).
        let result = match guard::call(what, call) {
            Ok(fut) => tokio::time::timeout(timeout, guard::run(what, fut)).await,
            Err(panic) => Ok(Err(panic)),
        };
        output(match result {
            Ok(Ok(r)) => r.map_err(Error::User),
            Ok(Err(panic)) => Err(Error::Panicked {
                callback,
                message: panic.message,
            }),
            Err(_elapsed) => Err(timed_out(timeout)),
        })
    })
}

/// `on_event` with its panic guard; `Err` carries a panic's message.
pub(crate) type OnEventFn<A, C, E> =
    Arc<dyn Fn(Event<A, C, E>) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// The user's callbacks and the settings the driver needs.
pub(crate) struct Callbacks<A, C, E> {
    pub(crate) attempts: Arc<dyn Attempts<A, C, E>>,
    /// `None` when the user set none: events are then handled at once, without a future.
    pub(crate) on_event: Option<OnEventFn<A, C, E>>,
    pub(crate) lookup_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

impl<A, C, E> Callbacks<A, C, E>
where
    A: PartialEq + Send + 'static,
    C: Send + 'static,
    E: Send + 'static,
{
    /// The user's `get_address` and `connect`, without `on_event`, with these timeouts.
    pub(crate) fn new<G, GF, K, KF>(
        get_address: G,
        connect: K,
        lookup_timeout: Duration,
        connect_timeout: Duration,
    ) -> Self
    where
        G: Fn() -> GF + Send + Sync + 'static,
        GF: Future<Output = Result<A, E>> + Send + 'static,
        K: Fn(A, ConnectContext<E>) -> KF + Send + Sync + 'static,
        KF: Future<Output = Result<C, E>> + Send + 'static,
    {
        Callbacks {
            attempts: Arc::new(UserFns {
                get_address,
                connect,
            }),
            on_event: None,
            lookup_timeout,
            connect_timeout,
        }
    }
}

/// What `connect` is told about its attempt (R12).
///
/// ```
/// use persistent_connection::conn::CloseSignal;
/// use persistent_connection::{AttemptError, Error, PersistentConnection};
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
/// .retry_policy(std::time::Duration::from_millis(10))
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
    /// The shared state, weakly (a context kept beyond its attempt keeps nothing alive,
    /// R14), behind a trait so that the context needs only `E`.
    pub(crate) abort: Weak<dyn AbortTarget<E>>,
}

impl<E> Clone for ConnectContext<E> {
    fn clone(&self) -> Self {
        ConnectContext {
            consecutive_unsuccessful_attempts: self.consecutive_unsuccessful_attempts,
            abort: self.abort.clone(),
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

    /// Stop as [`close_when_current_connection_is_closed`](crate::PersistentConnection::close_when_current_connection_is_closed)
    /// does, and give `error` to pending
    /// [`connected_or_failed_to_connect`](crate::PersistentConnection::connected_or_failed_to_connect)
    /// waiters as `Err(Aborted(Error::User(error)))`. The persistent connection counts as
    /// closed before this returns (S2). This attempt is not cancelled: as in the original,
    /// it runs to its end and what it returns is still reported (R12). A failure is an
    /// ordinary `FailedToConnect` event (de-duplicated, its handler awaited); a connection
    /// it still returns is closed, never made current, without `Connected`. Close finishes
    /// after that.
    ///
    /// ```
    /// use persistent_connection::conn::CloseSignal;
    /// use persistent_connection::{AttemptError, Error, Event, PersistentConnection};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let mut builder = PersistentConnection::builder(
    ///     "aborting",
    ///     || async { Ok::<_, String>(1u16) },
    ///     |_port, cx| async move {
    ///         cx.abort("wrong credentials".to_owned()); // give up for good
    ///         Err::<CloseSignal, _>("handshake refused".to_owned())
    ///     },
    /// );
    /// let events = builder.events();
    /// let pc = builder.build();
    /// assert_eq!(
    ///     pc.connected_or_failed_to_connect().await.unwrap_err(),
    ///     AttemptError::Aborted(Error::User("wrong credentials".to_owned()))
    /// );
    /// pc.close_finished().await;
    /// // The aborting attempt's failure was still reported.
    /// use futures_util::StreamExt;
    /// let last = events.map(|e| e.unwrap()).collect::<Vec<_>>().await.pop();
    /// assert!(matches!(last, Some(Event::FailedToConnect(Error::User(e))) if e == "handshake refused"));
    /// # }
    /// ```
    pub fn abort(&self, error: E) {
        if let Some(target) = self.abort.upgrade() {
            target.abort(error);
        }
    }
}

/// What [`ConnectContext::abort`](crate::ConnectContext::abort) reaches: the shared state,
/// seen through `E` only.
pub(crate) trait AbortTarget<E>: Send + Sync {
    fn abort(&self, error: E);
}
