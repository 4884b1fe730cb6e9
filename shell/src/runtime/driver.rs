//! The driver task: runs the core machine on Tokio. It performs effects and feeds their
//! completions back as inputs; it decides nothing (the machine does, behind
//! [`Shared`]'s lock).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use persistent_connection_core::{
    AttemptId, ConnId, Effect, Event as CoreEvent, EventId, Input, Instant,
};

use crate::conn::closable::Closable;
use crate::guard;
use crate::runtime::callbacks::AbortTarget;
use crate::runtime::callbacks::{AttemptOutput, BoxFuture, Callbacks, ConnectContext};
use crate::runtime::shared::{CoreEffect, CoreInput, Shared};
use futures_util::FutureExt as _;

type Slot<I, T> = Option<(I, BoxFuture<T>)>;

/// How many steps the driver takes in one poll before it yields to the other tasks of its
/// thread: with a zero retry delay (R7 allows it) and callbacks that finish at once, there
/// is always a next step, and the task must not starve its neighbours.
const STEPS_PER_POLL: u32 = 64;

/// The driver task: a hand-written future rather than an `async fn` with `select!`, so an
/// idle connection's task holds only what it uses (no timer while connected, no buffers,
/// no space for futures of branches that are not running).
pub(crate) struct Driver<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    shared: Arc<Shared<A, C, E>>,
    /// The origin of the machine's clock: Tokio's clock at the first poll.
    base: Option<tokio::time::Instant>,
    callbacks: Callbacks<A, C, E>,
    /// What connect contexts' `abort` reaches.
    abort: Weak<dyn AbortTarget<E>>,
    /// The running `on_event` (at most one, I3). `Err` carries a panic's message.
    event: Slot<EventId, Result<(), String>>,
    /// The in-flight `get_address` or `connect` (at most one).
    attempt: Slot<AttemptId, AttemptOutput<A, C, E>>,
    /// The address the attempt in flight connects to, for the failure's log line.
    address: Option<A>,
    /// The current connection's `close_finished` (R6).
    watch: Option<BoxFuture<ConnId>>,
    /// Other connections' closes (R8): a stray, or the current one when close asks.
    closing: Vec<BoxFuture<ConnId>>,
    /// The retry timer, allocated only while the machine waits for it.
    timer: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
    finished: bool,
    seed: u64,
}

// Every future the driver holds is boxed; nothing in it is structurally pinned.
impl<A, C, E> Unpin for Driver<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
}

impl<A, C, E> Drop for Driver<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    /// If the task is dropped before close finished (its runtime shut down, or it
    /// panicked), nothing may hang on it (S3). What it still holds, the user's futures
    /// among them, is dropped under its server's name, as in a poll: a panic in one of
    /// their drops is logged naming the connection.
    fn drop(&mut self) {
        self.shared.driver_gone();
        let _server = guard::ServerScope::enter(self.shared.server_name.clone());
        self.event = None;
        self.attempt = None;
        self.watch = None;
        self.closing = Vec::new();
    }
}

impl<A, C, E> Driver<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared<A, C, E>>,
        callbacks: Callbacks<A, C, E>,
        seed: u64,
    ) -> Self {
        let abort: Weak<dyn AbortTarget<E>> = Arc::downgrade(&shared) as Weak<dyn AbortTarget<E>>;
        Driver {
            shared,
            base: None,
            callbacks,
            abort,
            event: None,
            attempt: None,
            address: None,
            watch: None,
            closing: Vec::new(),
            timer: None,
            finished: false,
            seed,
        }
    }

    fn base(&self) -> tokio::time::Instant {
        self.base.unwrap_or_else(tokio::time::Instant::now)
    }

    fn now(&self) -> Instant {
        Instant::from_since_origin(
            tokio::time::Instant::now().saturating_duration_since(self.base()),
        )
    }

    /// How long until the next attempt may begin (R4, R6), for the log lines.
    fn next_attempt_in(&self) -> Duration {
        self.shared.next_attempt_at().map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(tokio::time::Instant::now())
        })
    }

    fn feed(&mut self, input: CoreInput<A, C, E>) {
        let now = self.now();
        self.shared.feed(now, input);
    }

    /// One step: the first completion found (in the order of the old `biased` select:
    /// queued effects, the event handler, the attempt, connection closes, the timer) is fed
    /// to the machine. `Ok(true)` if a step was taken, `Ok(false)` if everything waits,
    /// `Err(())` once the task is done.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        let mut performed = false;
        while let Some(effect) = self.shared.pop_io() {
            self.perform(effect);
            performed = true;
        }
        // R8: close finishes once nothing of ours is left. A connection the machine closes
        // after it said so (an attempt's result the driver had taken just before `close()`
        // cancelled the attempt, which the machine closes as a stray) is closed first.
        if self.finished && self.closing.is_empty() {
            self.shared.finish_close();
            return Err(());
        }
        if performed {
            return Ok(true);
        }
        if let Some((id, fut)) = &mut self.event
            && let Poll::Ready(r) = fut.as_mut().poll(cx)
        {
            let id = *id;
            self.event = None;
            if let Err(message) = r {
                tracing::warn!(
                    server = %self.shared.server_name,
                    panic = %message,
                    "on_event panicked; the event counts as handled"
                );
            }
            self.feed(Input::EventHandled { event: id });
            return Ok(true);
        }
        if let Some((attempt, fut)) = &mut self.attempt
            && let Poll::Ready(out) = fut.as_mut().poll(cx)
        {
            let attempt = *attempt;
            self.attempt = None;
            let input = match out {
                AttemptOutput::Address(result) => Input::AddressResult { attempt, result },
                AttemptOutput::Connect(result) => Input::ConnectResult { attempt, result },
            };
            self.feed(input);
            return Ok(true);
        }
        if let Some(fut) = &mut self.watch
            && let Poll::Ready(conn) = fut.as_mut().poll(cx)
        {
            self.watch = None;
            self.feed(Input::Closed { conn });
            return Ok(true);
        }
        for i in 0..self.closing.len() {
            if let Poll::Ready(conn) = self.closing[i].as_mut().poll(cx) {
                drop(self.closing.swap_remove(i));
                if self.closing.is_empty() {
                    self.closing = Vec::new();
                }
                self.feed(Input::Closed { conn });
                return Ok(true);
            }
        }
        let Some((deadline, connected_idle)) = self.shared.park(cx.waker()) else {
            return Ok(true); // an effect was queued meanwhile
        };
        match deadline {
            // Kept for the next wait (one allocation per connection cycle, not per
            // attempt); freed while connected, when nothing will wait on it for a while.
            None if connected_idle => self.timer = None,
            None => {}
            Some(d) => {
                let at = crate::runtime::shared::to_tokio(self.base(), d);
                match &mut self.timer {
                    Some((armed, _)) if *armed == d => {}
                    Some((armed, sleep)) => {
                        *armed = d;
                        sleep.as_mut().reset(at);
                    }
                    None => self.timer = Some((d, Box::pin(tokio::time::sleep_until(at)))),
                }
                if let Some((_, sleep)) = &mut self.timer
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    self.timer = None;
                    self.feed(Input::TimerFired);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn perform(&mut self, effect: CoreEffect<A, C, E>) {
        let server = &self.shared.server_name;
        match effect {
            Effect::Emit { id, event } => {
                match &event {
                    // Field values are evaluated only when the line is enabled: no lock
                    // for `next_attempt_in` when nobody logs.
                    CoreEvent::FailedToConnect(e) => match &self.address {
                        Some(a) => {
                            tracing::warn!(server = %server, address = ?a, error = ?e, next_attempt_in = ?self.next_attempt_in(), "failed to connect")
                        }
                        None => {
                            tracing::warn!(server = %server, error = ?e, next_attempt_in = ?self.next_attempt_in(), "failed to connect")
                        }
                    },
                    CoreEvent::HandedOver { reason, .. } => {
                        tracing::info!(server = %server, reason = reason.as_str(), address = ?self.address, "handed over to a new connection")
                    }
                    CoreEvent::Disconnected => {
                        tracing::warn!(server = %server, next_attempt_in = ?self.next_attempt_in(), "disconnected")
                    }
                    other => tracing::info!(server = %server, event = ?other, "event"),
                }
                match &self.callbacks.on_event {
                    // No handler: the event is handled at once, without a future.
                    None => self.feed(Input::EventHandled { event: id }),
                    Some(on_event) => self.event = Some((id, on_event(event))),
                }
            }
            Effect::GetAddress { attempt } => {
                self.address = None;
                let fut = self.callbacks.attempts.clone().get_address(
                    self.callbacks.lookup_timeout,
                    server.clone(),
                    // R15: a handover's lookup is for another copy than the current.
                    self.shared.handover_lookup_avoids(),
                );
                self.attempt = Some((attempt, fut));
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                tracing::debug!(server = %server, %attempt, ?address, "connecting");
                self.address = Some(address.clone());
                let cx = ConnectContext {
                    consecutive_unsuccessful_attempts,
                    abort: self.abort.clone(),
                };
                let fut = self.callbacks.attempts.clone().connect(
                    address,
                    cx,
                    self.callbacks.connect_timeout,
                );
                self.attempt = Some((attempt, fut));
            }
            Effect::CancelAttempt { attempt } => {
                if self.attempt.as_ref().is_some_and(|(a, _)| *a == attempt) {
                    tracing::debug!(server = %server, %attempt, "attempt cancelled");
                    // Its user future is dropped under the guard (`guard::run`).
                    let cancelled = self.attempt.take();
                    guard::drop_guarded("the cancelled attempt", cancelled);
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                tracing::debug!(server = %server, %conn, "connection is current");
                self.shared.set_current_address(self.address.clone());
                let watch = guarded(server.clone(), conn, async move {
                    connection.close_finished().await
                });
                if let Some(old) = self.watch.replace(watch) {
                    // Not expected (the machine has one current connection at a time);
                    // keep watching the old one as a close.
                    self.closing.push(old);
                }
            }
            Effect::CloseConnection { conn, connection } => {
                tracing::debug!(server = %server, %conn, "closing connection");
                self.closing.push(guarded(server.clone(), conn, async move {
                    connection.close().await
                }));
            }
            // Finished in `step` once nothing is left to close.
            Effect::CloseFinished => self.finished = true,
            // Performed under the shared lock (see `Shared::absorb`); never queued.
            Effect::StartTimer { .. }
            | Effect::NoLongerCurrent { .. }
            | Effect::AttemptOutcome(_) => {}
        }
    }
}

impl<A, C, E> Future for Driver<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // A panic in the drop of user code is logged naming this connection.
        let _server = guard::ServerScope::enter(this.shared.server_name.clone());
        if this.base.is_none() {
            let base = tokio::time::Instant::now();
            this.base = Some(base);
            this.shared.set_base(base);
            tracing::debug!(server = %this.shared.server_name, seed = this.seed, "persistent connection started");
        }
        for _ in 0..STEPS_PER_POLL {
            match this.step(cx) {
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
                Err(()) => {
                    tracing::debug!(server = %this.shared.server_name, "driver task ends");
                    // Drop what is left (watchers of connections that a sloppy `Closable`
                    // never reports closed) before the task ends.
                    this.watch = None;
                    this.closing = Vec::new();
                    return Poll::Ready(());
                }
            }
        }
        // Still busy: yield to the thread's other tasks, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
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
    Box::pin(guard::run("Closable impl", fut).map(move |r| {
        if let Err(panic) = r {
            tracing::warn!(server = %server, %conn, panic = %panic.message, "Closable impl panicked; the connection counts as closed");
        }
        conn
    }))
}
