//! The driver task: runs the core machine on Tokio. It performs effects and feeds their
//! completions back as inputs; it decides nothing (STYLE: "the shell decides nothing").

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use persistent_connection_core::{
    AttemptId, ConnId, Effect, Event as CoreEvent, EventId, Input, Instant, Machine,
};
use tokio::sync::mpsc;

use crate::builder::{BoxFuture, Callbacks};
use crate::closable::Closable;
use crate::error::{Callback, Error, panic_message};
use crate::handle::{Command, ConnectContext, Shared};

/// About 30 years: where deadlines that do not fit in a Tokio `Instant` go.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

enum AttemptOutput<A, C, E> {
    Address(Result<A, Error<E>>),
    Connect(Result<C, Error<E>>),
}

type Slot<I, T> = Option<(I, BoxFuture<T>)>;

pub(crate) struct Driver<A, C, E> {
    machine: Machine<A, C, Error<E>>,
    /// The origin of the machine's clock (set when the task starts).
    base: tokio::time::Instant,
    shared: Arc<Shared<A, C, E>>,
    callbacks: Callbacks<A, C, E>,
    commands: mpsc::UnboundedReceiver<Command<E>>,
    /// For connect contexts; weak so that they do not keep the driver alive (R14).
    weak_commands: mpsc::WeakUnboundedSender<Command<E>>,
    commands_open: bool,
    /// The running `on_event` (at most one, I3). `Err` carries a panic's message.
    event: Slot<EventId, Result<(), String>>,
    /// The in-flight `get_address` or `connect` (at most one).
    attempt: Slot<AttemptId, AttemptOutput<A, C, E>>,
    /// Close futures and `close_finished` watchers; each yields the connection's id.
    closing: FuturesUnordered<BoxFuture<ConnId>>,
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

impl<A, C, E> Driver<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    C: Closable + Clone + fmt::Debug + Send + Sync + 'static,
    E: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    pub(crate) fn new(
        machine: Machine<A, C, Error<E>>,
        shared: Arc<Shared<A, C, E>>,
        callbacks: Callbacks<A, C, E>,
        commands: mpsc::UnboundedReceiver<Command<E>>,
        weak_commands: mpsc::WeakUnboundedSender<Command<E>>,
        seed: u64,
    ) -> Self {
        Driver {
            machine,
            base: tokio::time::Instant::now(),
            shared,
            callbacks,
            commands,
            weak_commands,
            commands_open: true,
            event: None,
            attempt: None,
            closing: FuturesUnordered::new(),
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

    /// The loop: one `select!` over commands, the running event handler, the in-flight
    /// attempt, connection closes and the retry timer. Ends once close has finished.
    pub(crate) async fn run(mut self) {
        self.base = tokio::time::Instant::now();
        tracing::debug!(server = %self.shared.server_name, seed = self.seed, "persistent connection started");
        self.drain();
        let sleep = tokio::time::sleep_until(self.base);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        // After close finished, the machine may still ask to close a connection that
        // arrived for a cancelled attempt (an `abort` from `connect` that then returned one):
        // the task stays until the machine has seen that close finish, so no socket outlives
        // it (R14), and `close()` resolves only then (R8). Other watchers still pending then
        // (say a `close_finished` that a `Closable` impl never resolves after a local close)
        // are dropped with the task.
        while !(self.finished && self.machine.lingering_connections().is_empty()) {
            // Cooperate with Tokio's budget: with a zero retry delay (R7 allows it) and
            // callbacks that finish at once, a branch below is ready on every turn and the
            // task would never yield to the other tasks of its thread.
            tokio::task::coop::consume_budget().await;
            let deadline = self.machine.poll_timeout();
            if deadline != armed {
                if let Some(d) = deadline {
                    sleep.as_mut().reset(self.to_tokio(d));
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                cmd = self.commands.recv(), if self.commands_open => self.on_command(cmd),
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
                    // A command sent while the attempt ran (notably `abort` from `connect`
                    // itself) goes in first, as it happened first.
                    while self.commands_open {
                        match self.commands.try_recv() {
                            Ok(cmd) => self.on_command(Some(cmd)),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => self.on_command(None),
                        }
                    }
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
                // Every handle is gone and the machine waits for nothing we can deliver.
                // The machine never gets here (closing always waits on a watcher); should it
                // ever, end rather than panic or hang.
                else => {
                    tracing::error!(server = %self.shared.server_name, state = ?self.machine.state(), "driver has nothing left to wait for; ending");
                    break;
                }
            }
        }
        // R8: no connection of ours is open, no attempt is in flight, no handler runs.
        tracing::info!(server = %self.shared.server_name, "close finished");
        self.shared.close_finished.send_replace(true);
    }

    fn on_command(&mut self, cmd: Option<Command<E>>) {
        let input = match cmd {
            Some(Command::Close) => {
                tracing::debug!(server = %self.shared.server_name, "close requested");
                Input::CloseRequested
            }
            Some(Command::CloseWhenCurrentConnectionIsClosed) => {
                Input::CloseWhenCurrentConnectionIsClosed
            }
            Some(Command::Abort(e)) => Input::Abort {
                error: Error::User(e),
            },
            None => {
                // R14: the last handle is gone; close in the background.
                self.commands_open = false;
                tracing::debug!(server = %self.shared.server_name, "last handle dropped; closing");
                self.shared.closed.store(true, Ordering::Release);
                Input::CloseRequested
            }
        };
        self.feed(input);
    }

    fn feed(&mut self, input: Input<A, C, Error<E>>) {
        let now = self.now();
        self.machine.handle(now, input);
        self.drain();
    }

    /// Performs every pending effect.
    fn drain(&mut self) {
        let server = self.shared.server_name.clone();
        while let Some(effect) = self.machine.poll_effect() {
            match effect {
                Effect::Emit { id, event } => {
                    match &event {
                        CoreEvent::FailedToConnect(e) => {
                            tracing::warn!(server = %server, error = ?e, "failed to connect")
                        }
                        CoreEvent::Disconnected => {
                            tracing::warn!(server = %server, "disconnected")
                        }
                        other => tracing::info!(server = %server, event = ?other, "event"),
                    }
                    if let Some(observers) = self.shared.events.get() {
                        let _ = observers.send(event.clone());
                    }
                    let on_event = self.callbacks.on_event.clone();
                    let fut = AssertUnwindSafe(async move { on_event(event).await })
                        .catch_unwind()
                        .map(|r| r.map_err(|p| panic_message(&*p)));
                    self.event = Some((id, Box::pin(fut)));
                }
                Effect::StartTimer {
                    attempt,
                    base,
                    delay,
                    ..
                } => {
                    tracing::debug!(server = %server, %attempt, ?base, ?delay, "attempt begins; retry timer started");
                }
                Effect::GetAddress { attempt } => {
                    let get_address = self.callbacks.get_address.clone();
                    let fut = AssertUnwindSafe(async move { get_address().await })
                        .catch_unwind()
                        .map(|r| {
                            AttemptOutput::Address(match r {
                                Ok(r) => r.map_err(Error::User),
                                Err(p) => Err(Error::Panicked {
                                    callback: Callback::GetAddress,
                                    message: panic_message(&*p),
                                }),
                            })
                        });
                    self.attempt = Some((attempt, Box::pin(fut)));
                }
                Effect::Connect {
                    attempt,
                    address,
                    consecutive_unsuccessful_attempts,
                } => {
                    tracing::debug!(server = %server, %attempt, ?address, "connecting");
                    let connect = self.callbacks.connect.clone();
                    let cx = ConnectContext {
                        consecutive_unsuccessful_attempts,
                        commands: self.weak_commands.clone(),
                    };
                    let timeout = self.callbacks.connect_timeout;
                    let fut = AssertUnwindSafe(async move {
                        let fut = connect(address, cx);
                        match timeout {
                            None => fut.await.map_err(Error::User),
                            Some(d) => match tokio::time::timeout(d, fut).await {
                                Ok(r) => r.map_err(Error::User),
                                Err(_) => Err(Error::TimedOut(d)),
                            },
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
                        self.attempt = None;
                    }
                }
                Effect::BecameCurrent { conn, connection } => {
                    tracing::debug!(server = %server, %conn, "connection is current");
                    self.shared
                        .current
                        .store(Some(Arc::new(connection.clone())));
                    let _ = self.shared.became_current.send(connection.clone());
                    self.closing.push(guarded(server.clone(), conn, async move {
                        connection.close_finished().await
                    }));
                }
                Effect::NoLongerCurrent { conn } => {
                    tracing::debug!(server = %server, %conn, "connection is no longer current");
                    self.shared.current.store(None);
                }
                Effect::CloseConnection { conn, connection } => {
                    tracing::debug!(server = %server, %conn, "closing connection");
                    self.closing.push(guarded(server.clone(), conn, async move {
                        connection.close().await
                    }));
                }
                Effect::AttemptOutcome(outcome) => {
                    let _ = self.shared.outcomes.send(outcome);
                }
                Effect::CloseFinished => {
                    // `close()` resolves when the loop ends: at once, unless a stray
                    // connection is still being closed (see `run`).
                    self.finished = true;
                    self.shared.closed.store(true, Ordering::Release);
                }
            }
        }
        if self.machine.is_closed() {
            self.shared.closed.store(true, Ordering::Release);
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
