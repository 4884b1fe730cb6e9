//! The persistent-connection state machine (docs/behaviour.md §3).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use crate::retry::{Jitter, RetryPolicy};
use crate::time::Instant;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        pub struct $name(u64);

        impl $name {
            /// The id with this raw number. Ids are issued by the machine; building one by
            /// hand is for drivers that store them and for tests that feed stale or
            /// never-issued ids (which the machine ignores).
            pub const fn from_raw(raw: u64) -> Self {
                $name(raw)
            }

            /// The raw number behind this id.
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}#{}", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// Names one attempt: its [`Effect::GetAddress`], [`Effect::Connect`] and
    /// [`Effect::CancelAttempt`], and the results that answer them.
    AttemptId
);
id_type!(
    /// Names one connection the machine has received, current or stray.
    ConnId
);
id_type!(
    /// Names one emitted event; [`Input::EventHandled`] echoes it.
    EventId
);

/// What the user's `on_event` is told (docs/behaviour.md §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A, C, E> {
    /// A new round of attempts begins (R1).
    AttemptingToConnect,
    /// An address differing from the last one obtained in this round (R3).
    ObtainedAddress(A),
    /// A failure differing from the last one in this round (R4).
    FailedToConnect(E),
    /// A connection was established and is now current (R5).
    Connected(C),
    /// The current connection finished closing (R6).
    Disconnected,
}

impl<A, C, E> Event<A, C, E> {
    /// The event's kind, without its payload.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::AttemptingToConnect => EventKind::AttemptingToConnect,
            Event::ObtainedAddress(_) => EventKind::ObtainedAddress,
            Event::FailedToConnect(_) => EventKind::FailedToConnect,
            Event::Connected(_) => EventKind::Connected,
            Event::Disconnected => EventKind::Disconnected,
        }
    }
}

/// The kind of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// [`Event::AttemptingToConnect`].
    AttemptingToConnect,
    /// [`Event::ObtainedAddress`].
    ObtainedAddress,
    /// [`Event::FailedToConnect`].
    FailedToConnect,
    /// [`Event::Connected`].
    Connected,
    /// [`Event::Disconnected`].
    Disconnected,
}

/// Why `connected_or_failed_to_connect()` (R10) did not yield a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptError<E> {
    /// The attempt failed with this error (not de-duplicated).
    Failed(E),
    /// `abort(error)` was called through the connect context (R12).
    Aborted(E),
    /// The persistent connection is closed (R8, R11).
    Closed,
}

/// Something that happened outside the machine, fed in through [`Machine::handle`].
///
/// Every result names the request it answers; a result for a request that is not
/// outstanding (stale, duplicate, never issued, after close) changes nothing, except that a
/// connection arriving outside its attempt is closed at once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Input<A, C, E> {
    /// `get_address()` for `attempt` finished.
    AddressResult {
        /// The attempt of the [`Effect::GetAddress`] answered.
        attempt: AttemptId,
        /// The address, or why there is none.
        result: Result<A, E>,
    },
    /// `connect(address)` for `attempt` finished.
    ConnectResult {
        /// The attempt of the [`Effect::Connect`] answered.
        attempt: AttemptId,
        /// The connection, or why there is none.
        result: Result<C, E>,
    },
    /// The connection `conn` finished closing, whichever side closed it.
    Closed {
        /// The connection, as named by [`Effect::BecameCurrent`] or [`Effect::CloseConnection`].
        conn: ConnId,
    },
    /// The driver's timer went off. Early, late, duplicate and stale fires are harmless: the
    /// machine compares the input's `now` with its own deadline.
    TimerFired,
    /// The user called `close()` (R8). Idempotent.
    CloseRequested,
    /// The user called `close_when_current_connection_is_closed()` (R11).
    CloseWhenCurrentConnectionIsClosed,
    /// `abort(error)` was called through the connect context (R12): stop as R11, and R10
    /// waiters get [`AttemptError::Aborted`].
    Abort {
        /// The error R10 waiters receive.
        error: E,
    },
    /// `on_event` finished handling the event `event`.
    EventHandled {
        /// The id from [`Effect::Emit`].
        event: EventId,
    },
}

/// A command for the driver, drained with [`Machine::poll_effect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect<A, C, E> {
    /// Call `on_event(event)`; when it finishes (or panics), feed
    /// [`Input::EventHandled`] with `id`. No other event is emitted meanwhile (I3).
    Emit {
        /// Echo this in [`Input::EventHandled`].
        id: EventId,
        /// The event.
        event: Event<A, C, E>,
    },
    /// An attempt began and its retry timer started (R2): the next attempt may not begin
    /// before `deadline`. Informational: drivers that sleep on [`Machine::poll_timeout`]
    /// need not act on it.
    StartTimer {
        /// The attempt.
        attempt: AttemptId,
        /// The base delay from the retry policy.
        base: Duration,
        /// The jittered delay (R7).
        delay: Duration,
        /// `now + delay`, saturating.
        deadline: Instant,
    },
    /// Call `get_address()`, then feed [`Input::AddressResult`] for `attempt`.
    GetAddress {
        /// Echo this in the result.
        attempt: AttemptId,
    },
    /// Call `connect(address)`, then feed [`Input::ConnectResult`] for `attempt`.
    Connect {
        /// Echo this in the result.
        attempt: AttemptId,
        /// Where to connect.
        address: A,
        /// For the connect context (R12): 0 on the first attempt, reset by a success.
        consecutive_unsuccessful_attempts: u32,
    },
    /// Drop the in-flight `get_address` or `connect` of `attempt` (R8). If a connection
    /// still arrives for it, feed it in: the machine will ask for it to be closed.
    CancelAttempt {
        /// The attempt to cancel.
        attempt: AttemptId,
    },
    /// `connection` is now the current connection (R5): publish it, resolve `connected()`
    /// waiters, and feed [`Input::Closed`] with `conn` once its close finishes, whoever
    /// closes it.
    BecameCurrent {
        /// Its id.
        conn: ConnId,
        /// The connection.
        connection: C,
    },
    /// The current connection `conn` finished closing and is no longer current (R6).
    NoLongerCurrent {
        /// Its id.
        conn: ConnId,
    },
    /// Close `connection` and feed [`Input::Closed`] with `conn` when that finishes.
    CloseConnection {
        /// Its id.
        conn: ConnId,
        /// The connection.
        connection: C,
    },
    /// Resolve all pending `connected_or_failed_to_connect()` waiters (R10) with this.
    AttemptOutcome(Result<C, AttemptError<E>>),
    /// Close has finished (R8): resolve `close()` and `close_finished()`. Emitted exactly
    /// once; nothing but [`Effect::CloseConnection`] for a stray late connection follows.
    CloseFinished,
}

/// How a machine is set up.
#[derive(Debug, Default)]
pub struct Config {
    /// Seed of the ChaCha generator behind the jitter (R7). Same seed, same inputs: same
    /// effects.
    pub seed: u64,
    /// Base delay and jitter of the retry timer.
    pub retry: RetryPolicy,
}

/// A coarse view of what the machine is doing, for diagnostics and simulators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// An event handler is running.
    HandlingEvent(EventKind),
    /// `get_address` is in flight.
    Resolving(AttemptId),
    /// `connect` is in flight.
    Connecting(AttemptId),
    /// Waiting for the retry timer before the next attempt of the round (R4).
    WaitingToRetry,
    /// Waiting for the retry timer before a new round (R6).
    WaitingToReconnect,
    /// Connected, nothing else going on.
    Connected,
    /// Close requested; waiting for connections to finish closing.
    Closing,
    /// Close finished (R8). Final.
    Closed,
}

/// What to do once the running event handler finishes.
#[derive(Debug)]
enum Then<A> {
    BeginAttempt,
    Connect { attempt: AttemptId, address: A },
    AfterFailure,
    AfterConnected,
    AfterDisconnected,
}

#[derive(Debug)]
enum Phase<A> {
    Handling {
        event: EventId,
        kind: EventKind,
        then: Then<A>,
    },
    Resolving(AttemptId),
    Connecting(AttemptId),
    WaitingToRetry,
    WaitingToReconnect,
    Connected,
    Closing,
    Closed,
}

struct Current<C> {
    id: ConnId,
    connection: C,
    close_requested: bool,
}

/// The sans-IO persistent connection: every rule of docs/behaviour.md R1–R14 that is a decision.
///
/// Feed inputs with [`handle`](Machine::handle); after each one, drain
/// [`poll_effect`](Machine::poll_effect) until it returns `None` and re-read
/// [`poll_timeout`](Machine::poll_timeout). See the crate docs for the loop.
pub struct Machine<A, C, E> {
    retry: RetryPolicy,
    /// The jitter's generator (R7), boxed so that [`Machine::release_buffers`] can free its
    /// 256-byte block buffer while the machine idles; `seed` and `rng_pos` bring it back
    /// at the same point of the same stream.
    rng: Option<Box<ChaCha8Rng>>,
    seed: u64,
    rng_pos: u128,
    phase: Phase<A>,
    effects: VecDeque<Effect<A, C, E>>,
    /// Deadline of the retry timer of the latest attempt (R2).
    retry_deadline: Instant,
    next_attempt: u64,
    next_conn: u64,
    next_event: u64,
    consecutive_failures: u32,
    /// De-duplication state of the round (R3, R4).
    last_address: Option<A>,
    last_failure: Option<E>,
    current: Option<Current<C>>,
    /// The current connection closed while its `Connected` handler ran (R6).
    disconnect_pending: bool,
    /// R11 was asked while connected.
    stop_after_current: bool,
    /// `close()` or its equivalent happened (R8).
    closed: bool,
    /// Stray connections being closed, not current (R8).
    lingering: Vec<ConnId>,
}

impl<A, C, E> fmt::Debug for Machine<A, C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("state", &self.state())
            .field("closed", &self.closed)
            .field("retry_deadline", &self.retry_deadline)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("current", &self.current.as_ref().map(|c| c.id))
            .field("lingering", &self.lingering)
            .field("pending_effects", &self.effects.len())
            .finish_non_exhaustive()
    }
}

impl<A, C, E> Machine<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    /// A new machine. It has already emitted `AttemptingToConnect` (R1): drain its effects.
    pub fn new(config: Config) -> Self {
        let mut m = Machine {
            retry: config.retry,
            rng: None,
            seed: config.seed,
            rng_pos: 0,
            phase: Phase::Closing, // replaced just below
            effects: VecDeque::with_capacity(8),
            retry_deadline: Instant::ZERO,
            next_attempt: 0,
            next_conn: 0,
            next_event: 0,
            consecutive_failures: 0,
            last_address: None,
            last_failure: None,
            current: None,
            disconnect_pending: false,
            stop_after_current: false,
            closed: false,
            lingering: Vec::new(),
        };
        m.begin_round();
        m
    }

    /// Feed one input that happened at `now`. Never panics, whatever the input and state.
    /// Afterwards, drain [`poll_effect`](Machine::poll_effect).
    pub fn handle(&mut self, now: Instant, input: Input<A, C, E>) {
        match input {
            Input::AddressResult { attempt, result } => match self.phase {
                // The attempt in flight when `abort` came (R12) ended: a failure is
                // reported as the original does; an address is not connected to.
                Phase::Resolving(a) if a == attempt && self.closed => match result {
                    Ok(_) => {
                        self.phase = Phase::Closing;
                        self.check_finished();
                    }
                    Err(e) => self.on_aborted_failure(e),
                },
                Phase::Resolving(a) if a == attempt => match result {
                    Ok(address) => self.on_address(attempt, address),
                    Err(e) => self.on_failure(now, e),
                },
                _ => {}
            },
            Input::ConnectResult { attempt, result } => match (&self.phase, result) {
                // The attempt that aborted (R12) ended. As in the original, a failure is
                // still reported (R4); a connection it still made is closed like any stray
                // one, without `Connected`, before close finishes (I6).
                (Phase::Connecting(a), result) if *a == attempt && self.closed => match result {
                    Ok(c) => {
                        self.phase = Phase::Closing;
                        self.close_stray(c);
                        self.check_finished();
                    }
                    Err(e) => self.on_aborted_failure(e),
                },
                (Phase::Connecting(a), Ok(c)) if *a == attempt => self.on_connected(c),
                (Phase::Connecting(a), Err(e)) if *a == attempt => self.on_failure(now, e),
                // A connection outside its attempt (cancelled, stale, duplicate): close it.
                (_, Ok(c)) => self.close_stray(c),
                (_, Err(_)) => {}
            },
            Input::Closed { conn } => self.on_closed(conn),
            Input::TimerFired => {}
            Input::CloseRequested => self.close(),
            Input::CloseWhenCurrentConnectionIsClosed => self.close_when_current_closed(),
            Input::Abort { error } => {
                if !self.closed {
                    self.effects
                        .push_back(Effect::AttemptOutcome(Err(AttemptError::Aborted(error))));
                    self.abort();
                }
            }
            Input::EventHandled { event } => match &self.phase {
                Phase::Handling { event: e, .. } if *e == event => {
                    let Phase::Handling { then, .. } =
                        core::mem::replace(&mut self.phase, Phase::Closing)
                    else {
                        unreachable!("matched just above")
                    };
                    self.continue_with(now, then);
                }
                _ => {}
            },
        }
        self.check_timer(now);
    }
}

impl<A, C, E> Machine<A, C, E> {
    /// The next command for the driver, or `None` when all are drained. Call it until
    /// `None` after every [`handle`](Machine::handle) (and after [`new`](Machine::new)).
    pub fn poll_effect(&mut self) -> Option<Effect<A, C, E>> {
        self.effects.pop_front()
    }

    /// When the driver should feed [`Input::TimerFired`]: the retry deadline, if the machine
    /// is waiting for it. `None` while nothing waits on the timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::WaitingToRetry | Phase::WaitingToReconnect => Some(self.retry_deadline),
            _ => None,
        }
    }

    /// True once close was requested or became inevitable (R8, R11).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True once [`Effect::CloseFinished`] was emitted.
    pub fn is_close_finished(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The current connection (R5, R6): set when a connect succeeds, cleared when it
    /// finishes closing.
    pub fn current_connection(&self) -> Option<&C> {
        self.current.as_ref().map(|c| &c.connection)
    }

    /// The current connection's id, if any.
    pub fn current_conn_id(&self) -> Option<ConnId> {
        self.current.as_ref().map(|c| c.id)
    }

    /// The jitter's generator, brought back at its stream position if it was released.
    fn rng(&mut self) -> &mut ChaCha8Rng {
        let (seed, pos) = (self.seed, self.rng_pos);
        self.rng.get_or_insert_with(|| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_word_pos(pos);
            Box::new(rng)
        })
    }

    /// Frees the effect queue's buffer, the jitter generator's block buffer and other spare
    /// capacity. For drivers that keep many idle machines: call it when the machine waits
    /// for nothing but its connection ([`State::Connected`]); the next steps allocate them
    /// again. It changes no decision: the delays that follow are the same either way.
    pub fn release_buffers(&mut self) {
        if self.effects.is_empty() {
            self.effects = VecDeque::new();
        }
        if self.lingering.is_empty() {
            self.lingering = Vec::new();
        }
        // The generator's 304 bytes; the next attempt rebuilds it where it left off, so the
        // delays are the same as if it had been kept (R7, I9).
        if let Some(rng) = self.rng.take() {
            self.rng_pos = rng.get_word_pos();
        }
    }

    /// The deadline of the latest attempt's retry timer (R2): the next attempt begins no
    /// earlier. `None` before the first attempt.
    pub fn retry_deadline(&self) -> Option<Instant> {
        (self.next_attempt > 0).then_some(self.retry_deadline)
    }

    /// Unsuccessful attempts since the last successful connect (R12).
    pub fn consecutive_unsuccessful_attempts(&self) -> u32 {
        self.consecutive_failures
    }

    /// Connections the machine asked to close that have not finished closing yet, besides
    /// the current one.
    pub fn lingering_connections(&self) -> &[ConnId] {
        &self.lingering
    }

    /// What the machine is doing now.
    pub fn state(&self) -> State {
        match &self.phase {
            Phase::Handling { kind, .. } => State::HandlingEvent(*kind),
            Phase::Resolving(a) => State::Resolving(*a),
            Phase::Connecting(a) => State::Connecting(*a),
            Phase::WaitingToRetry => State::WaitingToRetry,
            Phase::WaitingToReconnect => State::WaitingToReconnect,
            Phase::Connected => State::Connected,
            Phase::Closing => State::Closing,
            Phase::Closed => State::Closed,
        }
    }
}

impl<A, C, E> Machine<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    // ---- transitions ----

    fn emit(&mut self, event: Event<A, C, E>, then: Then<A>) {
        let id = EventId(self.next_event);
        self.next_event += 1;
        self.phase = Phase::Handling {
            event: id,
            kind: event.kind(),
            then,
        };
        self.effects.push_back(Effect::Emit { id, event });
    }

    fn new_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// R1: a round starts with `AttemptingToConnect` and a clean de-duplication slate.
    fn begin_round(&mut self) {
        self.last_address = None;
        self.last_failure = None;
        self.emit(Event::AttemptingToConnect, Then::BeginAttempt);
    }

    /// R2: start the retry timer, then ask for the address.
    fn begin_attempt(&mut self, now: Instant) {
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        let base = self.retry.delay.base_delay(self.consecutive_failures);
        let delay = match self.retry.jitter {
            // No draw, so no generator needed.
            Jitter::NonRandom => base,
            jitter => jitter.apply(base, self.rng()),
        };
        let deadline = now.saturating_add(delay);
        self.retry_deadline = deadline;
        self.effects.push_back(Effect::StartTimer {
            attempt,
            base,
            delay,
            deadline,
        });
        self.effects.push_back(Effect::GetAddress { attempt });
        self.phase = Phase::Resolving(attempt);
    }

    /// R3.
    fn on_address(&mut self, attempt: AttemptId, address: A) {
        if self.last_address.as_ref() == Some(&address) {
            self.connect(attempt, address);
        } else {
            self.last_address = Some(address.clone());
            self.emit(
                Event::ObtainedAddress(address.clone()),
                Then::Connect { attempt, address },
            );
        }
    }

    fn connect(&mut self, attempt: AttemptId, address: A) {
        self.effects.push_back(Effect::Connect {
            attempt,
            address,
            consecutive_unsuccessful_attempts: self.consecutive_failures,
        });
        self.phase = Phase::Connecting(attempt);
    }

    /// R4 (and R10's failure outcome).
    fn on_failure(&mut self, now: Instant, error: E) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.effects
            .push_back(Effect::AttemptOutcome(Err(AttemptError::Failed(
                error.clone(),
            ))));
        if self.last_failure.as_ref() == Some(&error) {
            self.wait_for_timer(now, Phase::WaitingToRetry);
        } else {
            self.last_failure = Some(error.clone());
            self.emit(Event::FailedToConnect(error), Then::AfterFailure);
        }
    }

    /// R12: the failure of the attempt in flight when `abort` came. Reported as any
    /// failure (R4: counted, de-duplicated, its handler awaited); then close finishes.
    /// R10 waiters already have their answer (the abort's error, then `Closed`).
    fn on_aborted_failure(&mut self, error: E) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.last_failure.as_ref() == Some(&error) {
            self.phase = Phase::Closing;
            self.check_finished();
        } else {
            self.last_failure = Some(error.clone());
            // The handler's continuation sees `closed` and finishes close.
            self.emit(Event::FailedToConnect(error), Then::AfterFailure);
        }
    }

    /// R5.
    fn on_connected(&mut self, connection: C) {
        self.consecutive_failures = 0;
        let id = self.new_conn_id();
        self.current = Some(Current {
            id,
            connection: connection.clone(),
            close_requested: false,
        });
        self.effects.push_back(Effect::BecameCurrent {
            conn: id,
            connection: connection.clone(),
        });
        self.effects
            .push_back(Effect::AttemptOutcome(Ok(connection.clone())));
        self.emit(Event::Connected(connection), Then::AfterConnected);
    }

    /// R6, and the end of stray connections (R8).
    fn on_closed(&mut self, conn: ConnId) {
        if self.current.as_ref().is_some_and(|c| c.id == conn) {
            self.current = None;
            self.effects.push_back(Effect::NoLongerCurrent { conn });
            if self.stop_after_current {
                self.mark_closed();
            }
            match self.phase {
                Phase::Connected => self.emit(Event::Disconnected, Then::AfterDisconnected),
                // The `Connected` handler is still running: `Disconnected` waits for it (R6).
                _ => self.disconnect_pending = true,
            }
        } else if let Some(i) = self.lingering.iter().position(|c| *c == conn) {
            self.lingering.swap_remove(i);
            self.check_finished();
        }
    }

    fn continue_with(&mut self, now: Instant, then: Then<A>) {
        match then {
            Then::AfterConnected => {
                if self.disconnect_pending {
                    self.disconnect_pending = false;
                    self.emit(Event::Disconnected, Then::AfterDisconnected);
                } else {
                    self.phase = Phase::Connected;
                }
            }
            _ if self.closed => {
                self.phase = Phase::Closing;
                self.check_finished();
            }
            Then::BeginAttempt => self.begin_attempt(now),
            Then::Connect { attempt, address } => self.connect(attempt, address),
            Then::AfterFailure => self.wait_for_timer(now, Phase::WaitingToRetry),
            Then::AfterDisconnected => self.wait_for_timer(now, Phase::WaitingToReconnect),
        }
    }

    /// R4, R6: go on at once if the attempt's retry timer has fired, else wait for it.
    fn wait_for_timer(&mut self, now: Instant, waiting: Phase<A>) {
        self.phase = waiting;
        self.check_timer(now);
    }

    fn check_timer(&mut self, now: Instant) {
        if now < self.retry_deadline {
            return;
        }
        match self.phase {
            Phase::WaitingToRetry => self.begin_attempt(now),
            Phase::WaitingToReconnect => self.begin_round(),
            _ => {}
        }
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.effects
                .push_back(Effect::AttemptOutcome(Err(AttemptError::Closed)));
        }
    }

    /// A connection outside its attempt (cancelled, aborted, stale, duplicate): close it
    /// (R8, I6).
    fn close_stray(&mut self, connection: C) {
        let conn = self.new_conn_id();
        self.lingering.push(conn);
        self.effects
            .push_back(Effect::CloseConnection { conn, connection });
    }

    /// R8.
    fn close(&mut self) {
        if self.closed {
            // An attempt that aborted (R12) is still finishing: `close()` does not wait
            // for it.
            if let Phase::Resolving(attempt) | Phase::Connecting(attempt) = self.phase {
                self.effects.push_back(Effect::CancelAttempt { attempt });
                self.phase = Phase::Closing;
                self.check_finished();
            }
            return;
        }
        self.mark_closed();
        match self.phase {
            Phase::Resolving(attempt) | Phase::Connecting(attempt) => {
                self.effects.push_back(Effect::CancelAttempt { attempt });
                self.phase = Phase::Closing;
            }
            Phase::WaitingToRetry | Phase::WaitingToReconnect => self.phase = Phase::Closing,
            // A running handler finishes first; its continuation sees `closed`.
            // `Connected` waits for the connection's close.
            Phase::Handling { .. } | Phase::Connected | Phase::Closing | Phase::Closed => {}
        }
        if let Some(current) = &mut self.current
            && !current.close_requested
        {
            current.close_requested = true;
            self.effects.push_back(Effect::CloseConnection {
                conn: current.id,
                connection: current.connection.clone(),
            });
        }
        self.check_finished();
    }

    /// R12: stop as R11. `abort` is called from inside an attempt, so an attempt in flight
    /// is not cancelled: as in the original, it runs to its end and what it returns is
    /// still reported: a failure as `FailedToConnect` (R4), a connection closed without
    /// `Connected`, before close finishes, so that nothing of ours is open after
    /// `CloseFinished` (I6). A `close()` meanwhile cancels it.
    fn abort(&mut self) {
        match self.phase {
            Phase::Resolving(_) | Phase::Connecting(_) if self.current.is_none() => {
                self.mark_closed();
            }
            _ => self.close_when_current_closed(),
        }
    }

    /// R11.
    fn close_when_current_closed(&mut self) {
        if self.closed {
            return;
        }
        if self.current.is_some() {
            self.stop_after_current = true;
        } else {
            self.close();
        }
    }

    fn check_finished(&mut self) {
        if matches!(self.phase, Phase::Closing)
            && self.current.is_none()
            && self.lingering.is_empty()
        {
            self.phase = Phase::Closed;
            self.effects.push_back(Effect::CloseFinished);
        }
    }
}
