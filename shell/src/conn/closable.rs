//! The [`Closable`] trait and a generic close signal to make any handle closable.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

/// A connection the persistent connection can watch and close (docs/behaviour.md §1).
///
/// - [`close`](Closable::close) starts closing and resolves when the connection's
///   resources are released. It must be idempotent.
/// - [`is_closed`](Closable::is_closed) is true once closing has begun, by either side.
///   It is called on the hot path of `connected()`, so it should be cheap (an atomic load).
/// - [`close_finished`](Closable::close_finished) resolves when closing is done, without
///   starting it. The persistent connection awaits it on the current connection to learn
///   that the peer went away (R6), so an implementation must notice the peer closing.
///
/// The methods return `impl Future + Send` rather than boxed futures: the driver is generic
/// over the connection type, so no allocation per call is forced on implementors, and an
/// `async fn` in the impl is enough. The price is that the trait is not object-safe, which
/// the persistent connection does not need.
///
/// Ready implementations: [`TcpConnection`](crate::TcpConnection) (a TCP stream that
/// notices the peer closing), [`CloseSignal`] and [`WithCloseSignal`] (any handle plus a
/// close signal).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use persistent_connection::Closable;
///
/// /// A connection that has nothing to release.
/// #[derive(Clone, Default)]
/// struct Dummy(Arc<AtomicBool>);
///
/// impl Closable for Dummy {
///     async fn close(&self) {
///         self.0.store(true, Ordering::SeqCst);
///     }
///     fn is_closed(&self) -> bool {
///         self.0.load(Ordering::SeqCst)
///     }
///     async fn close_finished(&self) {
///         // A real connection would wait for its peer or for `close`.
///         if !self.is_closed() {
///             std::future::pending::<()>().await
///         }
///     }
/// }
/// # tokio_test::block_on(async {
/// let d = Dummy::default();
/// d.close().await;
/// assert!(d.is_closed());
/// d.close_finished().await;
/// # });
/// ```
pub trait Closable {
    /// Starts closing (idempotent) and resolves once the resources are released.
    fn close(&self) -> impl Future<Output = ()> + Send;
    /// True once closing has begun, whichever side began it.
    fn is_closed(&self) -> bool;
    /// Resolves once closing has finished, without starting it.
    fn close_finished(&self) -> impl Future<Output = ()> + Send;

    /// [`close_finished`](Closable::close_finished) without a future, if the type can:
    /// `Some(Poll::Ready(()))` once closing has finished; `Some(Poll::Pending)` otherwise,
    /// after arranging for `cx`'s waker to be woken when it finishes. The default, `None`,
    /// says the type cannot; the persistent connection then awaits `close_finished` in a
    /// boxed future, one allocation per current connection, which this method spares an
    /// idle connection. Implement both or neither consistently: they tell the same thing.
    ///
    /// Several tasks may poll one connection; each must be woken. [`CloseSignal`],
    /// [`WithCloseSignal`] and [`TcpConnection`](crate::TcpConnection) implement it.
    fn poll_close_finished(&self, cx: &mut Context<'_>) -> Option<Poll<()>> {
        let _ = cx;
        None
    }
}

/// The tasks polling a close through [`Closable::poll_close_finished`], for implementors:
/// [`poll`](CloseWakers::poll) in `poll_close_finished`, [`wake_all`](CloseWakers::wake_all)
/// once closing has finished. One inline slot (the usual single watcher, a persistent
/// connection's driver, costs no allocation) and a list for more. A waker stays until the
/// close finishes; a task polling again with the same waker is not added twice.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::task::{Context, Poll};
/// use persistent_connection::conn::CloseWakers;
///
/// #[derive(Default)]
/// struct Conn {
///     finished: AtomicBool,
///     wakers: CloseWakers,
/// }
///
/// impl Conn {
///     fn poll_close_finished(&self, cx: &mut Context<'_>) -> Option<Poll<()>> {
///         Some(self.wakers.poll(cx, || self.finished.load(Ordering::Acquire)))
///     }
///     fn peer_went_away(&self) {
///         self.finished.store(true, Ordering::Release);
///         self.wakers.wake_all();
///     }
/// }
/// # let conn = Conn::default();
/// # let mut cx = Context::from_waker(std::task::Waker::noop());
/// # assert_eq!(conn.poll_close_finished(&mut cx), Some(Poll::Pending));
/// # conn.peer_went_away();
/// # assert_eq!(conn.poll_close_finished(&mut cx), Some(Poll::Ready(())));
/// ```
#[derive(Default)]
pub struct CloseWakers(Mutex<(Option<Waker>, Vec<Waker>)>);

impl fmt::Debug for CloseWakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseWakers").finish_non_exhaustive()
    }
}

impl CloseWakers {
    /// No task waiting.
    pub fn new() -> CloseWakers {
        CloseWakers::default()
    }

    /// Ready if `finished()`, read under the lock that [`wake_all`](Self::wake_all) takes,
    /// so a close finishing meanwhile is not missed; else `cx`'s waker is kept.
    pub fn poll(&self, cx: &mut Context<'_>, finished: impl Fn() -> bool) -> Poll<()> {
        let mut wakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if finished() {
            return Poll::Ready(());
        }
        let (one, more) = &mut *wakers;
        let waker = cx.waker();
        match one {
            Some(w) if w.will_wake(waker) => {}
            None => *one = Some(waker.clone()),
            Some(_) if more.iter().any(|w| w.will_wake(waker)) => {}
            Some(_) => more.push(waker.clone()),
        }
        Poll::Pending
    }

    /// Wakes and forgets every waiting task; call it once the close has finished (after
    /// what `poll`'s `finished` reads has turned true).
    pub fn wake_all(&self) {
        let (one, more) = {
            let mut wakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
            (wakers.0.take(), std::mem::take(&mut wakers.1))
        };
        one.into_iter().chain(more).for_each(Waker::wake);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignalState {
    Open,
    Closing,
    Closed,
}

struct SignalInner {
    closed: AtomicBool,
    state: watch::Sender<SignalState>,
    finish_on_close: bool,
    /// Tasks polling for the close to finish (`poll_close_finished`).
    wakers: CloseWakers,
}

/// A shared close signal: `open → closing → closed`, with waiters for each step. Cheap to
/// clone; all clones share the state.
///
/// It is [`Closable`] by itself, and [`WithCloseSignal`] attaches one to any handle. Two
/// flavours:
///
/// - [`CloseSignal::new`]: [`close`](Closable::close) finishes at once. For handles with
///   nothing to tear down (or whose `Drop` does it). Whoever notices the peer going away
///   calls [`mark_closed`](CloseSignal::mark_closed).
/// - [`CloseSignal::owned`]: `close` only *requests* closing; the task that owns the
///   resource waits for [`closing`](CloseSignal::closing), releases it and calls
///   `mark_closed`. `close` resolves then.
///
/// ```
/// use persistent_connection::conn::CloseSignal;
/// use persistent_connection::Closable;
///
/// # tokio_test::block_on(async {
/// let signal = CloseSignal::owned();
/// let owner = signal.clone();
/// // The task that owns the resource: it ends when asked to, or when the peer goes away.
/// let task = tokio::spawn(async move {
///     owner.closing().await;
///     // ... release the resource ...
///     owner.mark_closed();
/// });
/// signal.close().await; // requests, then waits for the owner
/// assert!(signal.is_closed() && signal.is_close_finished());
/// task.await.unwrap();
/// # });
/// ```
#[derive(Clone)]
pub struct CloseSignal {
    inner: Arc<SignalInner>,
}

impl fmt::Debug for CloseSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseSignal")
            .field("state", &*self.inner.state.borrow())
            .field("finish_on_close", &self.inner.finish_on_close)
            .finish()
    }
}

impl Default for CloseSignal {
    fn default() -> Self {
        CloseSignal::new()
    }
}

impl CloseSignal {
    fn with(finish_on_close: bool) -> CloseSignal {
        CloseSignal {
            inner: Arc::new(SignalInner {
                closed: AtomicBool::new(false),
                state: watch::Sender::new(SignalState::Open),
                finish_on_close,
                wakers: CloseWakers::default(),
            }),
        }
    }

    /// A signal whose `close()` finishes at once.
    pub fn new() -> CloseSignal {
        CloseSignal::with(true)
    }

    /// A signal whose `close()` waits for an owner to call
    /// [`mark_closed`](CloseSignal::mark_closed).
    pub fn owned() -> CloseSignal {
        CloseSignal::with(false)
    }

    /// Marks closing as begun (idempotent): [`is_closed`](Closable::is_closed) becomes
    /// true and [`closing`](CloseSignal::closing) waiters resolve.
    pub fn begin_close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.state.send_if_modified(|s| {
            if *s == SignalState::Open {
                *s = SignalState::Closing;
                true
            } else {
                false
            }
        });
    }

    /// Marks closing as finished (idempotent; implies begun): `close()` and
    /// `close_finished()` resolve. Call it when the peer goes away, or once the owner has
    /// released the resource.
    pub fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let finished_now = self.inner.state.send_if_modified(|s| {
            if *s == SignalState::Closed {
                false
            } else {
                *s = SignalState::Closed;
                true
            }
        });
        if finished_now {
            self.inner.wakers.wake_all();
        }
    }

    /// True once closing has finished.
    pub fn is_close_finished(&self) -> bool {
        *self.inner.state.borrow() == SignalState::Closed
    }

    /// Resolves once closing has begun (by [`begin_close`](CloseSignal::begin_close),
    /// `close()` or [`mark_closed`](CloseSignal::mark_closed)).
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut rx = self.inner.state.subscribe();
        async move {
            // The sender lives in `inner`, which `rx` does not keep alive; an error means
            // every clone is gone, and nobody can close it any more.
            if rx.wait_for(|s| *s != SignalState::Open).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn finished(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut rx = self.inner.state.subscribe();
        async move {
            if rx.wait_for(|s| *s == SignalState::Closed).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Closable for CloseSignal {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.begin_close();
        if self.inner.finish_on_close {
            self.mark_closed();
        }
        self.finished()
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.finished()
    }

    fn poll_close_finished(&self, cx: &mut Context<'_>) -> Option<Poll<()>> {
        Some(self.inner.wakers.poll(cx, || self.is_close_finished()))
    }
}

/// Any handle `T` made [`Closable`] by a [`CloseSignal`]: cheap to clone when `T` is, and
/// dereferences to `T`.
///
/// ```
/// use persistent_connection::conn::{CloseSignal, WithCloseSignal};
/// use persistent_connection::Closable;
///
/// # tokio_test::block_on(async {
/// let signal = CloseSignal::new();
/// let conn = WithCloseSignal::new(String::from("a session"), signal.clone());
/// assert_eq!(conn.len(), 9); // Deref to the handle
/// assert!(!conn.is_closed());
/// signal.mark_closed(); // e.g. the peer went away
/// conn.close_finished().await;
/// assert!(conn.is_closed());
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct WithCloseSignal<T> {
    value: T,
    signal: CloseSignal,
}

impl<T> WithCloseSignal<T> {
    /// Attaches `signal` to `value`.
    pub fn new(value: T, signal: CloseSignal) -> WithCloseSignal<T> {
        WithCloseSignal { value, signal }
    }

    /// The handle.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// The close signal.
    pub fn signal(&self) -> &CloseSignal {
        &self.signal
    }
}

impl<T> Deref for WithCloseSignal<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Sync> Closable for WithCloseSignal<T> {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.signal.close()
    }

    fn is_closed(&self) -> bool {
        self.signal.is_closed()
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.signal.close_finished()
    }

    fn poll_close_finished(&self, cx: &mut Context<'_>) -> Option<Poll<()>> {
        self.signal.poll_close_finished(cx)
    }
}

#[cfg(all(test, not(pc_loom)))]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    /// Waits for `signal`'s close through `poll_close_finished`, as the driver does.
    fn polled(signal: &CloseSignal) -> tokio::task::JoinHandle<()> {
        let signal = signal.clone();
        tokio::spawn(async move {
            poll_fn(|cx| signal.poll_close_finished(cx).expect("pollable")).await;
        })
    }

    /// Every task that polls a close is woken when it finishes (issue 25: the driver
    /// watches the current connection so), not only the first or the last to poll.
    #[tokio::test(start_paused = true)]
    async fn every_task_polling_a_close_is_woken_once_it_finishes() {
        let signal = CloseSignal::owned();
        let (a, b) = (polled(&signal), polled(&signal));
        tokio::task::yield_now().await;
        signal.begin_close();
        tokio::task::yield_now().await;
        assert!(
            !a.is_finished() && !b.is_finished(),
            "closing has not finished"
        );
        signal.mark_closed();
        for task in [a, b] {
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .expect("woken")
                .unwrap();
        }
        // Already finished: ready at once, nothing kept.
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(signal.poll_close_finished(&mut cx), Some(Poll::Ready(())));
    }

    /// A type that does not implement it says so, and the driver falls back to its future.
    #[test]
    fn the_default_is_none() {
        struct Plain;
        impl Closable for Plain {
            async fn close(&self) {}
            fn is_closed(&self) -> bool {
                false
            }
            async fn close_finished(&self) {}
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(Plain.poll_close_finished(&mut cx), None);
    }
}
