//! The driver task: runs the core machine on Tokio. It performs effects and feeds their
//! completions back as inputs; it decides nothing (the machine does, behind
//! [`Shared`]'s lock).

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use persistent_connection_core::{
    AttemptId, ConnId, Effect, Event as CoreEvent, EventId, Input, Instant,
};

use crate::builder::{BoxFuture, Callbacks};
use crate::closable::Closable;
use crate::error::{Callback, Error, panic_message};
use crate::handle::ConnectContext;
use crate::shared::{CoreEffect, CoreInput, Shared};

/// Where machine deadlines that do not fit in a Tokio `Instant` go: about 30 years from
/// now. It must be far enough that no real retry delay is cut short (a deadline that does
/// not fit is at least `Instant::MAX - base` away, i.e. centuries), yet fit in a Tokio
/// `Instant` from any `now`, which 30 years always does.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

enum AttemptOutput<A, C, E> {
    Address(Result<A, Error<E>>),
    Connect(Result<C, Error<E>>),
}

type Slot<I, T> = Option<(I, BoxFuture<T>)>;

pub(crate) struct Driver<A, C, E> {
    shared: Arc<Shared<A, C, E>>,
    /// The origin of the machine's clock (set when the task starts).
    base: tokio::time::Instant,
    callbacks: Callbacks<A, C, E>,
    /// The running `on_event` (at most one, I3). `Err` carries a panic's message.
    event: Slot<EventId, Result<(), String>>,
    /// The in-flight `get_address` or `connect` (at most one).
    attempt: Slot<AttemptId, AttemptOutput<A, C, E>>,
    /// The address the attempt in flight connects to, for the failure's log line.
    address: Option<A>,
    /// Close futures and `close_finished` watchers; each yields the connection's id.
    closing: FuturesUnordered<BoxFuture<ConnId>>,
    /// Effects taken from the shared queue, performed in order.
    effects: VecDeque<CoreEffect<A, C, E>>,
    finished: bool,
    seed: u64,
}

/// Polls the future in `slot`, if any; pending forever when empty.
fn poll_slot<I: Copy, T>(slot: &mut Slot<I, T>) -> impl Future<Output = (I, T)> + '_ {
    poll_fn(move |cx| match slot {
        Some((id, fut)) => fut.as_mut().poll(cx).map(|t| (*id, t)),
        None => Poll::Pending,
    })
}

/// Drops a user future without letting a panic in its `Drop` kill the driver (R13).
fn drop_guarded<T>(server: &str, what: &str, value: T) {
    if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(move || drop(value))) {
        tracing::warn!(server = %server, panic = %panic_message(&*p), "dropping the {what} future panicked; ignored");
    }
}

/// Ends everything shared if the driver's future is dropped before close finished: its
/// runtime shut down, or it panicked (S3).
struct DriverGuard<A, C, E>(Arc<Shared<A, C, E>>)
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq;

impl<A, C, E> Drop for DriverGuard<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    fn drop(&mut self) {
        self.0.driver_gone();
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
        Driver {
            shared,
            base: tokio::time::Instant::now(),
            callbacks,
            event: None,
            attempt: None,
            address: None,
            closing: FuturesUnordered::new(),
            effects: VecDeque::new(),
            finished: false,
            seed,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_since_origin(tokio::time::Instant::now().saturating_duration_since(self.base))
    }

    /// The Tokio instant of a machine deadline; far-future deadlines are clamped (R7:
    /// `Duration::MAX` must not panic).
    fn to_tokio(&self, deadline: Instant) -> tokio::time::Instant {
        self.base
            .checked_add(deadline.since_origin())
            .or_else(|| tokio::time::Instant::now().checked_add(FAR_FUTURE))
            .unwrap_or(self.base)
    }

    /// The loop: one `select!` over effects queued by handles, the running event handler,
    /// the in-flight attempt, connection closes and the retry timer. Ends once close has
    /// finished.
    pub(crate) async fn run(mut self) {
        let _guard = DriverGuard(self.shared.clone());
        self.base = tokio::time::Instant::now();
        tracing::debug!(server = %self.shared.server_name, seed = self.seed, "persistent connection started");
        let sleep = tokio::time::sleep_until(self.base);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = self.perform_queued();
            if self.finished {
                break;
            }
            // Cooperate with Tokio's budget: with a zero retry delay (R7 allows it) and
            // callbacks that finish at once, a branch below is ready on every turn and the
            // task would never yield to the other tasks of its thread.
            tokio::task::coop::consume_budget().await;
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(self.to_tokio(d));
                }
                armed = deadline;
            }
            let shared = self.shared.clone();
            tokio::select! {
                biased;
                () = poll_fn(|cx| shared.poll_io(cx)) => {}
                (id, r) = poll_slot(&mut self.event), if self.event.is_some() => {
                    self.event = None;
                    if let Err(message) = r {
                        tracing::warn!(
                            server = %self.shared.server_name,
                            panic = %message,
                            "on_event panicked; the event counts as handled"
                        );
                    }
                    self.feed(Input::EventHandled { event: id });
                }
                (attempt, out) = poll_slot(&mut self.attempt), if self.attempt.is_some() => {
                    self.attempt = None;
                    let input = match out {
                        AttemptOutput::Address(result) => Input::AddressResult { attempt, result },
                        AttemptOutput::Connect(result) => Input::ConnectResult { attempt, result },
                    };
                    self.feed(input);
                }
                Some(conn) = self.closing.next(), if !self.closing.is_empty() => {
                    self.feed(Input::Closed { conn });
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.feed(Input::TimerFired);
                }
            }
        }
        tracing::debug!(server = %self.shared.server_name, "driver task ends");
    }

    fn feed(&mut self, input: CoreInput<A, C, E>) {
        let now = self.now();
        self.shared.feed(now, input);
    }

    /// Performs every queued effect; returns the machine's retry deadline.
    fn perform_queued(&mut self) -> Option<Instant> {
        loop {
            let deadline = self.shared.take_io(&mut self.effects);
            if self.effects.is_empty() {
                return deadline;
            }
            while let Some(effect) = self.effects.pop_front() {
                self.perform(effect);
            }
        }
    }

    fn perform(&mut self, effect: CoreEffect<A, C, E>) {
        let server = &self.shared.server_name;
        match effect {
            Effect::Emit { id, event } => {
                match &event {
                    CoreEvent::FailedToConnect(e) => match &self.address {
                        Some(a) => {
                            tracing::warn!(server = %server, address = ?a, error = ?e, "failed to connect")
                        }
                        None => tracing::warn!(server = %server, error = ?e, "failed to connect"),
                    },
                    CoreEvent::Disconnected => tracing::warn!(server = %server, "disconnected"),
                    other => tracing::info!(server = %server, event = ?other, "event"),
                }
                let on_event = self.callbacks.on_event.clone();
                let fut = AssertUnwindSafe(async move { on_event(event).await })
                    .catch_unwind()
                    .map(|r| r.map_err(|p| panic_message(&*p)));
                self.event = Some((id, Box::pin(fut)));
            }
            Effect::GetAddress { attempt } => {
                self.address = None;
                let get_address = self.callbacks.get_address.clone();
                let timeout = self.callbacks.lookup_timeout;
                let fut = AssertUnwindSafe(async move {
                    let fut = get_address();
                    match tokio::time::timeout(timeout, fut).await {
                        Ok(r) => r.map_err(Error::User),
                        Err(_) => Err(Error::LookupTimedOut(timeout)),
                    }
                })
                .catch_unwind()
                .map(|r| {
                    AttemptOutput::Address(r.unwrap_or_else(|p| {
                        Err(Error::Panicked {
                            callback: Callback::GetAddress,
                            message: panic_message(&*p),
                        })
                    }))
                });
                self.attempt = Some((attempt, Box::pin(fut)));
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                tracing::debug!(server = %server, %attempt, ?address, "connecting");
                self.address = Some(address.clone());
                let connect = self.callbacks.connect.clone();
                let cx = ConnectContext {
                    consecutive_unsuccessful_attempts,
                    abort: self.callbacks.abort.clone(),
                };
                let timeout = self.callbacks.connect_timeout;
                let fut = AssertUnwindSafe(async move {
                    let fut = connect(address, cx);
                    match tokio::time::timeout(timeout, fut).await {
                        Ok(r) => r.map_err(Error::User),
                        Err(_) => Err(Error::TimedOut(timeout)),
                    }
                })
                .catch_unwind()
                .map(|r| {
                    AttemptOutput::Connect(r.unwrap_or_else(|p| {
                        Err(Error::Panicked {
                            callback: Callback::Connect,
                            message: panic_message(&*p),
                        })
                    }))
                });
                self.attempt = Some((attempt, Box::pin(fut)));
            }
            Effect::CancelAttempt { attempt } => {
                if self.attempt.as_ref().is_some_and(|(a, _)| *a == attempt) {
                    tracing::debug!(server = %server, %attempt, "attempt cancelled");
                    let cancelled = self.attempt.take();
                    drop_guarded(server, "cancelled attempt's", cancelled);
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                tracing::debug!(server = %server, %conn, "connection is current");
                self.closing.push(guarded(server.clone(), conn, async move {
                    connection.close_finished().await
                }));
            }
            Effect::CloseConnection { conn, connection } => {
                tracing::debug!(server = %server, %conn, "closing connection");
                self.closing.push(guarded(server.clone(), conn, async move {
                    connection.close().await
                }));
            }
            Effect::CloseFinished => self.finished = true,
            // Performed under the shared lock (see `Shared::absorb`); never queued.
            Effect::StartTimer { .. }
            | Effect::NoLongerCurrent { .. }
            | Effect::AttemptOutcome(_) => {}
        }
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
    Box::pin(AssertUnwindSafe(fut).catch_unwind().map(move |r| {
        if let Err(p) = r {
            tracing::warn!(server = %server, %conn, panic = %panic_message(&*p), "Closable impl panicked; the connection counts as closed");
        }
        conn
    }))
}
