//! The driver task: runs the core machine on Tokio. It performs effects and feeds their
//! completions back as inputs; it decides nothing (the machine does, behind
//! [`Shared`]'s lock).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use persistent_connection_core::{ConnId, Effect, Event as CoreEvent, Input};

use crate::conn::closable::Closable;
use crate::guard;
use crate::runtime::callbacks::AbortTarget;
use crate::runtime::callbacks::{AttemptOutput, BoxFuture, Callbacks, ConnectContext};
use crate::runtime::driver_state::{Busy, Driver, Watch};
use crate::runtime::shared::{CoreEffect, Shared};
use futures_util::FutureExt as _;

/// How many steps the driver takes in one poll before it yields to the other tasks of its
/// thread: with a zero retry delay (R7 allows it) and callbacks that finish at once, there
/// is always a next step, and the task must not starve its neighbours.
const STEPS_PER_POLL: u32 = 64;

/// The driver task's future: the shared state and nothing else. The driver's own state
/// ([`Driver`]) lives in the same allocation as the shared state (`Shared::driver`), so an
/// idle connection's task cell is Tokio's header and one pointer (issue 25).
pub(crate) struct Task<A, C, E>(Arc<Shared<A, C, E>>)
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq;

impl<A, C, E> Task<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    /// The task that drives `shared` with `driver`.
    pub(crate) fn new(shared: Arc<Shared<A, C, E>>, driver: Driver<A, C, E>) -> Self {
        *shared.driver_state() = Some(driver);
        Task(shared)
    }
}

impl<A, C, E> Drop for Task<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    /// If the task is dropped before close finished (its runtime shut down, or it
    /// panicked), nothing may hang on it (S3). The driver's state (the user's callbacks
    /// and futures) goes with the task, not with the last handle, dropped under its
    /// server's name, as in a poll: a panic in one of their drops is logged naming the
    /// connection.
    fn drop(&mut self) {
        self.0.driver_gone();
        let _server = guard::ServerScope::enter(self.0.server_name.clone());
        let state = self.0.driver_state().take();
        guard::drop_guarded("the driver's state", state);
    }
}

impl<A, C, E> Driver<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new(callbacks: Callbacks<A, C, E>, seed: u64) -> Self {
        Driver {
            callbacks,
            watch: None,
            // The machine starts by attempting to connect.
            busy: Some(Box::default()),
            seed,
            started: false,
        }
    }

    fn busy(&mut self) -> &mut Busy<A, C, E> {
        self.busy.get_or_insert_with(Box::default)
    }

    /// How long until the next attempt may begin (R4, R6), for the log lines.
    fn next_attempt_in(shared: &Shared<A, C, E>) -> Duration {
        shared.next_attempt_at().map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    /// Polls the current connection's close; its id once closed (or its `Closable` impl
    /// panicked, which counts as closed, R13).
    fn poll_watch(&mut self, server: &Arc<str>, cx: &mut Context<'_>) -> Poll<ConnId> {
        let Some(watch) = &mut self.watch else {
            return Poll::Pending;
        };
        if let Watch::Polled { conn, connection } = watch {
            match guard::call(CLOSABLE, || connection.poll_close_finished(cx)) {
                Ok(Some(Poll::Pending)) => return Poll::Pending,
                Ok(Some(Poll::Ready(()))) => {
                    let conn = *conn;
                    let watch = self.watch.take();
                    guard::drop_guarded(CLOSABLE, watch);
                    return Poll::Ready(conn);
                }
                Err(panic) => {
                    let conn = *conn;
                    closable_panicked(server, conn, &panic.message);
                    let watch = self.watch.take();
                    guard::drop_guarded(CLOSABLE, watch);
                    return Poll::Ready(conn);
                }
                // The type cannot: await its future instead, from now on.
                Ok(None) => {
                    let Some(Watch::Polled { conn, connection }) = self.watch.take() else {
                        unreachable!()
                    };
                    self.watch = Some(Watch::Boxed(watch_future(server, conn, connection)));
                }
            }
        }
        let Some(Watch::Boxed(fut)) = &mut self.watch else {
            return Poll::Pending;
        };
        let conn = ready!(fut.as_mut().poll(cx));
        self.watch = None;
        Poll::Ready(conn)
    }

    /// One step: the first completion found (in the order of the old `biased` select:
    /// queued effects, the event handler, the attempt, connection closes, the timer) is fed
    /// to the machine. `Ok(true)` if a step was taken, `Ok(false)` if everything waits,
    /// `Err(())` once the task is done.
    fn step(&mut self, shared: &Arc<Shared<A, C, E>>, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut performed = false;
        while let Some(effect) = shared.pop_io() {
            self.perform(shared, effect);
            performed = true;
        }
        // R8: close finishes once nothing of ours is left. A connection the machine closes
        // after it said so (an attempt's result the driver had taken just before `close()`
        // cancelled the attempt, which the machine closes as a stray) is closed first.
        if let Some(busy) = &self.busy
            && busy.finished
            && busy.closing.is_empty()
        {
            shared.finish_close();
            return Err(());
        }
        if performed {
            return Ok(true);
        }
        if let Some(busy) = &mut self.busy {
            if let Some((id, fut)) = &mut busy.event
                && let Poll::Ready(r) = fut.as_mut().poll(cx)
            {
                let id = *id;
                busy.event = None;
                if let Err(message) = r {
                    tracing::warn!(
                        server = %shared.server_name,
                        panic = %message,
                        "on_event panicked; the event counts as handled"
                    );
                }
                shared.feed_now(Input::EventHandled { event: id });
                return Ok(true);
            }
            if let Some((attempt, fut)) = &mut busy.attempt
                && let Poll::Ready(out) = fut.as_mut().poll(cx)
            {
                let attempt = *attempt;
                busy.attempt = None;
                let input = match out {
                    AttemptOutput::Address(result) => Input::AddressResult { attempt, result },
                    AttemptOutput::Connect(result) => Input::ConnectResult { attempt, result },
                };
                shared.feed_now(input);
                return Ok(true);
            }
        }
        if let Poll::Ready(conn) = self.poll_watch(&shared.server_name, cx) {
            shared.feed_now(Input::Closed { conn });
            return Ok(true);
        }
        if let Some(busy) = &mut self.busy {
            for i in 0..busy.closing.len() {
                if let Poll::Ready(conn) = busy.closing[i].as_mut().poll(cx) {
                    drop(busy.closing.swap_remove(i));
                    if busy.closing.is_empty() {
                        busy.closing = Vec::new();
                    }
                    shared.feed_now(Input::Closed { conn });
                    return Ok(true);
                }
            }
        }
        let Some((deadline, connected_idle)) = shared.park(cx.waker()) else {
            return Ok(true); // an effect was queued meanwhile
        };
        match deadline {
            // Connected and idle: nothing but the connection's close to wait for, so the
            // busy state (with the timer) goes, unless something is still in flight.
            None if connected_idle && self.busy.as_ref().is_some_and(|b| b.is_idle()) => {
                self.busy = None;
            }
            None => {}
            Some((d, at)) => {
                let busy = self.busy();
                match &mut busy.timer {
                    Some((armed, _)) if *armed == d => {}
                    Some((armed, sleep)) => {
                        *armed = d;
                        sleep.as_mut().reset(at);
                    }
                    None => busy.timer = Some((d, Box::pin(tokio::time::sleep_until(at)))),
                }
                if let Some((_, sleep)) = &mut busy.timer
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    busy.timer = None;
                    shared.feed_now(Input::TimerFired);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn perform(&mut self, shared: &Arc<Shared<A, C, E>>, effect: CoreEffect<A, C, E>) {
        let server = &shared.server_name;
        match effect {
            Effect::Emit { id, event } => {
                let address = self.busy.as_ref().and_then(|b| b.address.as_ref());
                match &event {
                    // Field values are evaluated only when the line is enabled: no lock
                    // for `next_attempt_in` when nobody logs.
                    CoreEvent::FailedToConnect(e) => match address {
                        Some(a) => {
                            tracing::warn!(server = %server, address = ?a, error = ?e, next_attempt_in = ?Self::next_attempt_in(shared), "failed to connect")
                        }
                        None => {
                            tracing::warn!(server = %server, error = ?e, next_attempt_in = ?Self::next_attempt_in(shared), "failed to connect")
                        }
                    },
                    CoreEvent::HandedOver { reason, .. } => {
                        tracing::info!(server = %server, reason = reason.as_str(), address = ?address, "handed over to a new connection")
                    }
                    CoreEvent::Disconnected => {
                        tracing::warn!(server = %server, next_attempt_in = ?Self::next_attempt_in(shared), "disconnected")
                    }
                    other => tracing::info!(server = %server, event = ?other, "event"),
                }
                match &self.callbacks.on_event {
                    // No handler: the event is handled at once, without a future.
                    None => shared.feed_now(Input::EventHandled { event: id }),
                    Some(on_event) => {
                        let fut = on_event(event);
                        self.busy().event = Some((id, fut));
                    }
                }
            }
            Effect::GetAddress { attempt } => {
                let fut = self.callbacks.attempts.clone().get_address(
                    self.callbacks.lookup_timeout,
                    server.clone(),
                    // R15: a handover's lookup is for another copy than the current.
                    shared.handover_lookup_avoids(),
                );
                let busy = self.busy();
                busy.address = None;
                busy.attempt = Some((attempt, fut));
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                tracing::debug!(server = %server, %attempt, ?address, "connecting");
                let cx = ConnectContext {
                    consecutive_unsuccessful_attempts,
                    abort: Arc::downgrade(shared) as Weak<dyn AbortTarget<E>>,
                };
                self.busy().address = Some(address.clone());
                let fut = self.callbacks.attempts.clone().connect(
                    address,
                    cx,
                    self.callbacks.connect_timeout,
                );
                self.busy().attempt = Some((attempt, fut));
            }
            Effect::CancelAttempt { attempt } => {
                if let Some(busy) = &mut self.busy
                    && busy.attempt.as_ref().is_some_and(|(a, _)| *a == attempt)
                {
                    tracing::debug!(server = %server, %attempt, "attempt cancelled");
                    // Its user future is dropped under the guard (`guard::run`).
                    let cancelled = busy.attempt.take();
                    guard::drop_guarded("the cancelled attempt", cancelled);
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                tracing::debug!(server = %server, %conn, "connection is current");
                shared.set_current_address(self.busy.as_ref().and_then(|b| b.address.clone()));
                let watch = Watch::Polled { conn, connection };
                if let Some(old) = self.watch.replace(watch) {
                    // Not expected (the machine has one current connection at a time);
                    // keep watching the old one as a close.
                    let old = match old {
                        Watch::Polled { conn, connection } => {
                            watch_future(server, conn, connection)
                        }
                        Watch::Boxed(fut) => fut,
                    };
                    self.busy().closing.push(old);
                }
            }
            Effect::CloseConnection { conn, connection } => {
                tracing::debug!(server = %server, %conn, "closing connection");
                let fut = guarded(
                    server.clone(),
                    conn,
                    async move { connection.close().await },
                );
                self.busy().closing.push(fut);
            }
            // Finished in `step` once nothing is left to close.
            Effect::CloseFinished => self.busy().finished = true,
            // Performed under the shared lock (see `Shared::absorb`); never queued.
            Effect::StartTimer { .. }
            | Effect::NoLongerCurrent { .. }
            | Effect::AttemptOutcome(_) => {}
        }
    }

    /// Runs the driver for one poll of its task.
    fn poll(&mut self, shared: &Arc<Shared<A, C, E>>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.started {
            self.started = true;
            shared.set_base(tokio::time::Instant::now());
            tracing::debug!(server = %shared.server_name, seed = self.seed, "persistent connection started");
        }
        for _ in 0..STEPS_PER_POLL {
            match self.step(shared, cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(()) => {
                    tracing::debug!(server = %shared.server_name, "driver task ends");
                    // Drop what is left (watchers of connections that a sloppy `Closable`
                    // never reports closed) before the task ends.
                    guard::drop_guarded(CLOSABLE, self.watch.take());
                    guard::drop_guarded(CLOSABLE, self.busy.take());
                    return Poll::Ready(());
                }
            }
        }
        // Still busy: yield to the thread's other tasks, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<A, C, E> Future for Task<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &self.0;
        // A panic in the drop of user code is logged naming this connection.
        let _server = guard::ServerScope::enter(shared.server_name.clone());
        let mut state = shared.driver_state();
        let Some(driver) = state.as_mut() else {
            return Poll::Ready(());
        };
        let poll = driver.poll(shared, cx);
        if poll.is_ready() {
            // The callbacks go when the task ends, as they did with the task's own state.
            let driver = state.take();
            drop(state);
            guard::drop_guarded("the driver's state", driver);
        }
        poll
    }
}

/// The guard's label for the user's `Closable` impl.
const CLOSABLE: &str = "Closable impl";

fn closable_panicked(server: &str, conn: ConnId, message: &str) {
    tracing::warn!(server = %server, %conn, panic = %message, "Closable impl panicked; the connection counts as closed");
}

/// `connection`'s `close_finished` as a future yielding `conn`, for a type without
/// `poll_close_finished` (or one being replaced as current).
fn watch_future<C>(server: &Arc<str>, conn: ConnId, connection: C) -> BoxFuture<ConnId>
where
    C: Closable + Send + Sync + 'static,
{
    guarded(server.clone(), conn, async move {
        connection.close_finished().await
    })
}

/// A connection's `close` or `close_finished`, yielding its id. A panic in it (the user's
/// `Closable` impl) is logged and counts as closed, so it can neither kill the driver nor
/// wedge `close()` (R13).
fn guarded(
    server: Arc<str>,
    conn: ConnId,
    fut: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<ConnId> {
    // A combinator, not an `async` block: the block would keep `fut` and the guarded
    // future that awaits it, each in its own slot (issue 21: 688 B per idle connection).
    Box::pin(guard::run(CLOSABLE, fut).map(move |r| {
        if let Err(panic) = r {
            closable_panicked(&server, conn, &panic.message);
        }
        conn
    }))
}
