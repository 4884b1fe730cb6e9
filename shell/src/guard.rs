//! The one panic guard of the crate (R13 everywhere).
//!
//! Every task this crate spawns runs user code: the driver runs `get_address`, `connect`,
//! `on_event` and the connections' `Closable` futures; the health check task runs the
//! user's check; [`Driven`](crate::conn::Driven) runs the client's driver future; the etcd
//! publisher and watch run the etcd client. The rule for all of them: **user code that
//! panics, in a poll or in a drop, is a failure that is reported, never a hang and never
//! a silent stop of the task.** This module is the one place that implements it; a task
//! must not call `catch_unwind` itself.
//!
//! - [`Guarded`] wraps a future: each poll runs under `catch_unwind`; when the future
//!   finishes or panics, it is dropped at once, under `catch_unwind` too; a guarded future
//!   dropped while still pending (a lost `select!` branch, a cancelled attempt, a task
//!   shut down) drops the inner one under `catch_unwind` as well. Its output is
//!   `Result<T, Panic>`: the caller decides what a panic means (a failed attempt, a failed
//!   check, an ended driver) and reports it. A panic in a drop after the future finished,
//!   or in the drop of a pending future, has no caller left to tell: it is logged at warn
//!   with the guard's label and, in a persistent connection's driver task, its server name
//!   (the `server` field; see [`ServerScope`]).
//! - [`call`] runs a synchronous user call (a callback that builds a future) the same way.
//! - [`drop_guarded`] drops any user value, logging a panic instead of unwinding.
//!
//! How to use it in a new task:
//!
//! ```ignore
//! tokio::spawn(async move {
//!     match Guarded::boxed("etcd watch", user_or_client_future).await {
//!         Ok(v) => { /* normal end */ }
//!         Err(panic) => tracing::warn!(%panic, "the etcd watch panicked"), // + report it
//!     }
//!     // code here always runs: mark closed, wake waiters, ...
//! });
//! ```
//!
//! A [`Guarded`] needs an `Unpin` future (the crate's futures are boxed already;
//! [`Guarded::boxed`] boxes one that is not), so it needs no pin projection.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::error::panic_message;

/// A panic caught by the guard: the label of the guarded code and the panic's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Panic {
    /// What panicked, as labelled by the guard ("health check", "connection driver", ...).
    pub(crate) what: &'static str,
    /// The panic's message (its `&str` or `String` payload).
    pub(crate) message: String,
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} panicked: {}", self.what, self.message)
    }
}

impl Panic {
    fn new(what: &'static str, payload: &(dyn std::any::Any + Send)) -> Panic {
        Panic {
            what,
            message: panic_message(payload),
        }
    }
}

thread_local! {
    /// The server name of the persistent connection whose driver runs on this thread now,
    /// if any: what the guard's log lines name besides the task.
    static SERVER: Cell<Option<Arc<str>>> = const { Cell::new(None) };
}

/// While it lives, the guard's log lines on this thread name `server`: the driver holds
/// one for each poll (and for its drop), so that a panic in the drop of user code it runs
/// is logged with the persistent connection it belongs to. Restores the previous name when
/// dropped (scopes nest).
#[must_use = "the name applies while the scope lives"]
pub(crate) struct ServerScope {
    previous: Option<Arc<str>>,
}

impl ServerScope {
    /// Names `server` in the guard's log lines until the scope drops.
    pub(crate) fn enter(server: Arc<str>) -> ServerScope {
        ServerScope {
            previous: SERVER.with(|s| s.replace(Some(server))),
        }
    }
}

impl Drop for ServerScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SERVER.with(|s| s.set(previous));
    }
}

/// The server named by the current [`ServerScope`], if any.
fn current_server() -> Option<Arc<str>> {
    SERVER.with(|s| {
        let server = s.take();
        s.set(server.clone());
        server
    })
}

/// Logs a panic in the drop of user code, which has no caller left to tell.
fn warn_drop_panicked(what: &'static str, panic: &Panic) {
    match current_server() {
        Some(server) => tracing::warn!(
            server = %server,
            what,
            panic = %panic.message,
            "dropping {what} panicked; ignored"
        ),
        None => tracing::warn!(what, panic = %panic.message, "dropping {what} panicked; ignored"),
    }
}

/// Runs `f` (user code) and turns a panic into `Err(Panic)`.
pub(crate) fn call<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, Panic> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| Panic::new(what, &*p))
}

/// Drops `value` (which holds user code); a panic in its `Drop` is logged at warn and goes
/// no further. Returns the panic, if any, for callers that report it otherwise.
pub(crate) fn drop_guarded<T>(what: &'static str, value: T) -> Option<Panic> {
    match call(what, move || drop(value)) {
        Ok(()) => None,
        Err(panic) => {
            warn_drop_panicked(what, &panic);
            Some(panic)
        }
    }
}

/// Runs `fut` as [`Guarded`] does, without boxing it: for a future that is not `Unpin`.
/// The future lives in a pinned slot of the returned future (once: an `async fn` would keep
/// its argument and the slot, twice the size, issue 21); it is polled under the guard and
/// dropped in place under the guard, when it finishes or panics, and also when the
/// returned future is dropped while pending.
pub(crate) fn run<F: Future>(what: &'static str, fut: F) -> Run<F> {
    Run {
        slot: Some(fut),
        what,
    }
}

pin_project_lite::pin_project! {
    /// [`run`]'s future. Resolves to `Ok(output)`, or `Err(Panic)` if a poll panicked;
    /// polled again after it resolved, it stays pending.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Run<F> {
        #[pin]
        slot: Option<F>,
        what: &'static str,
    }

    impl<F> PinnedDrop for Run<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            drop_in_slot(this.what, this.slot);
        }
    }
}

/// Drops the future in its pinned slot, in place, under the guard.
fn drop_in_slot<F>(what: &'static str, mut slot: Pin<&mut Option<F>>) {
    if slot.is_some()
        && let Err(panic) = call(what, || slot.set(None))
    {
        warn_drop_panicked(what, &panic);
    }
}

impl<F: Future> Future for Run<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let what = *this.what;
        let Some(fut) = this.slot.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        let output = match call(what, || fut.poll(cx)) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(panic) => Err(panic),
        };
        // Finished or panicked: the future goes now, under the guard.
        drop_in_slot(what, this.slot);
        Poll::Ready(output)
    }
}

/// A future whose polls and drop cannot unwind into the task that runs it: see the
/// module's documentation. Resolves to `Ok(output)`, or `Err(Panic)` if a poll panicked.
/// Polled again after it resolved, it stays pending.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Guarded<F> {
    fut: Option<F>,
    what: &'static str,
}

impl<F> fmt::Debug for Guarded<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("what", &self.what)
            .field("running", &self.fut.is_some())
            .finish()
    }
}

impl<F: Future + Unpin> Guarded<F> {
    /// Guards `fut`, labelled `what` in logs and in [`Panic`].
    pub(crate) fn new(what: &'static str, fut: F) -> Self {
        Guarded {
            fut: Some(fut),
            what,
        }
    }
}

impl<T> Guarded<Pin<Box<dyn Future<Output = T> + Send>>> {
    /// Boxes `fut` and guards it.
    pub(crate) fn boxed(what: &'static str, fut: impl Future<Output = T> + Send + 'static) -> Self {
        Guarded::new(what, Box::pin(fut))
    }
}

impl<F: Future + Unpin> Future for Guarded<F> {
    type Output = Result<F::Output, Panic>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Pending;
        };
        let result = match call(what, || Pin::new(fut).poll(cx)) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(panic) => Err(panic),
        };
        // Finished or panicked: the inner future goes now, under the guard.
        if let Some(fut) = self.fut.take() {
            drop_guarded(what, fut);
        }
        Poll::Ready(result)
    }
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            drop_guarded(self.what, fut);
        }
    }
}

#[cfg(all(test, not(pc_loom)))]
mod tests {
    use super::*;

    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("boom in drop");
        }
    }

    // Issue 21: as an `async fn`, `run` kept its argument and the pinned slot it moved
    // it into, so a guarded future was twice the user's (the driver's boxed close watcher
    // held three copies: 688 B per idle connection instead of about 250).
    #[test]
    fn run_holds_the_future_once() {
        let big = [0u8; 512];
        let fut = async move {
            tokio::task::yield_now().await;
            big.len()
        };
        let user = std::mem::size_of_val(&fut);
        let guarded = run("test future", fut);
        assert!(
            std::mem::size_of_val(&guarded) <= user + 32,
            "guarded {} B for a {user} B future",
            std::mem::size_of_val(&guarded)
        );
    }

    #[tokio::test]
    async fn a_panicking_poll_is_an_error() {
        let r = Guarded::boxed("test future", async {
            panic!("boom");
        })
        .await;
        let p: Result<(), Panic> = r;
        assert_eq!(
            p.unwrap_err(),
            Panic {
                what: "test future",
                message: "boom".into()
            }
        );
    }

    /// Ready at once with 7; its drop panics.
    struct ReadyThenPanicsOnDrop(#[allow(dead_code)] PanicsOnDrop);
    impl Future for ReadyThenPanicsOnDrop {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            Poll::Ready(7)
        }
    }

    #[tokio::test]
    async fn a_panicking_drop_after_the_output_keeps_the_output() {
        let r = Guarded::boxed("test future", ReadyThenPanicsOnDrop(PanicsOnDrop)).await;
        assert_eq!(r.unwrap(), 7);
    }

    #[tokio::test]
    async fn run_guards_polls_and_drops_without_boxing() {
        let r: Result<(), Panic> = run("inline", async { panic!("boom") }).await;
        assert_eq!(r.unwrap_err().message, "boom");
        assert_eq!(
            run("inline", ReadyThenPanicsOnDrop(PanicsOnDrop)).await,
            Ok(7)
        );
        // Dropped while pending: the inner future's drop panics, caught.
        let held = PanicsOnDrop;
        let mut pending = Box::pin(run("inline", async move {
            let _keep = &held;
            std::future::pending::<()>().await;
        }));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(pending.as_mut().poll(&mut cx).is_pending());
        drop(pending);
    }

    #[tokio::test]
    async fn dropping_a_pending_future_whose_drop_panics_does_not_unwind() {
        let held = PanicsOnDrop;
        let g = Guarded::boxed("test future", async move {
            let _keep = &held;
            std::future::pending::<()>().await;
        });
        drop(g);
        assert!(drop_guarded("value", PanicsOnDrop).is_some());
        assert_eq!(call("call", || 3).unwrap(), 3);
    }
}
