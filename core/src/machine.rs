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
    /// A handover (R15) succeeded: `connection`, made beside the previous current connection,
    /// is now current in its place. The previous one is retired: no longer current, closed
    /// once its grace period ends, and no `Disconnected` follows for it. To a handler this is
    /// `Connected` for the new connection (do here what `Connected` does for a new one), and
    /// `reason` says why the connection was replaced.
    HandedOver {
        /// The new current connection.
        connection: C,
        /// Why the previous one was replaced.
        reason: HandoverReason,
    },
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
            Event::HandedOver { .. } => EventKind::HandedOver,
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
    /// [`Event::HandedOver`].
    HandedOver,
}

/// Why a handover (R15) was asked for: carried by [`Input::Handover`] and
/// [`Event::HandedOver`], for events, statistics, logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum HandoverReason {
    /// The user asked for it (`handover()`).
    User,
    /// The server said it is draining (a protocol's own signal: GOAWAY, lame-duck mode).
    Drain,
    /// The current connection reached its maximum age.
    MaxAge,
    /// The catalog no longer lists the copy the current connection goes to.
    Withdrawn,
    /// A copy preferred to the current one is listed again.
    FailBack,
}

impl HandoverReason {
    /// A short lowercase name, fit for a metrics label: `user`, `drain`, `max_age`,
    /// `withdrawn`, `fail_back`.
    pub const fn as_str(self) -> &'static str {
        match self {
            HandoverReason::User => "user",
            HandoverReason::Drain => "drain",
            HandoverReason::MaxAge => "max_age",
            HandoverReason::Withdrawn => "withdrawn",
            HandoverReason::FailBack => "fail_back",
        }
    }
}

impl fmt::Display for HandoverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandoverReason::User => "asked by the user",
            HandoverReason::Drain => "the server is draining",
            HandoverReason::MaxAge => "the connection reached its maximum age",
            HandoverReason::Withdrawn => "the copy was withdrawn from the catalog",
            HandoverReason::FailBack => "a preferred copy is listed again",
        })
    }
}

/// Why a wait between attempts should end now (R16, R17): carried by [`Input::RetryNow`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum RetryNowReason {
    /// The user asked for it (`retry_now()`).
    User,
    /// The catalog lists a copy not yet tried in this round.
    NewCopy,
    /// A connection was lost and the catalog lists a copy other than the one lost (R17).
    AnotherCopy,
}

impl RetryNowReason {
    /// A short lowercase name, fit for a metrics label: `user`, `new_copy`, `another_copy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryNowReason::User => "user",
            RetryNowReason::NewCopy => "new_copy",
            RetryNowReason::AnotherCopy => "another_copy",
        }
    }
}

impl fmt::Display for RetryNowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetryNowReason::User => "asked by the user",
            RetryNowReason::NewCopy => "a copy not yet tried is listed",
            RetryNowReason::AnotherCopy => "a copy other than the one lost is listed",
        })
    }
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
    /// Replace the current connection by a new one, made beside it (R15): make before break.
    /// Nothing when not connected, after close or after R11. While a handover is pending,
    /// a new one replaces its reason and grace.
    Handover {
        /// Why; carried by the [`Event::HandedOver`] that ends a successful handover.
        reason: HandoverReason,
        /// How long the replaced connection stays open once it is no longer current, so
        /// that calls in flight on it may finish; then the machine asks to close it.
        grace: Duration,
    },
    /// The cause of the pending handover no longer holds (a withdrawn copy is listed again,
    /// say): the handover ends; its attempt in flight, if any, is cancelled
    /// ([`Effect::CancelAttempt`]). Nothing when no handover is pending.
    CancelHandover,
    /// End a wait between attempts now (R16, R17), within the bound of I10. Kept until the
    /// next wait when none is under way (an attempt or a handler is running); nothing while
    /// connected with no handover pending.
    RetryNow {
        /// Why; reported by [`Machine::attempt_began_by_retry_now`].
        reason: RetryNowReason,
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
    ///
    /// While a connection is current, this is a handover's lookup (R15;
    /// [`Machine::handover`] names the attempt and the connection it replaces): ask the
    /// catalog for a copy other than the current connection's.
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
    ///
    /// If another connection was current, this is a handover (R15) and the swap is atomic:
    /// `connection` replaces it at once. The old one is *retired*: no longer current, but
    /// keep watching it and feed [`Input::Closed`] for it when it finishes closing; no
    /// [`Effect::NoLongerCurrent`] comes for it, and the machine asks to close it
    /// ([`Effect::CloseConnection`]) when its grace period ends.
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
    /// Connected, no event handler running. A handover (R15) may be under way beside the
    /// current connection: see [`Machine::handover`].
    Connected,
    /// Close requested; waiting for connections to finish closing.
    Closing,
    /// Close finished (R8). Final.
    Closed,
}

/// A pending handover (R15), as [`Machine::handover`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandoverStatus {
    /// Why (the latest [`Input::Handover`]'s reason).
    pub reason: HandoverReason,
    /// How long the replaced connection stays open once no longer current.
    pub grace: Duration,
    /// The connection it replaces: the current one.
    pub from: ConnId,
    /// The handover's attempt in flight (its lookup or its connect), if one is. `None`
    /// while it waits for the retry timer, or for the current connection's `Connected` or
    /// `HandedOver` handler to return.
    pub attempt: Option<AttemptId>,
    /// Handover attempts of this handover that failed so far.
    pub failures: u32,
}

/// Totals since the machine was made, for a driver's statistics and metrics
/// ([`Machine::counters`]). They saturate at `u32::MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Successful handovers (R15): each emitted one [`Event::HandedOver`].
    pub handovers: u32,
    /// Handover attempts that failed (R15). They emit no event.
    pub handover_failures: u32,
    /// Handovers that ended without success and without the current connection going away:
    /// [`Input::CancelHandover`], R11, `abort` or close.
    pub handovers_cancelled: u32,
    /// Waits ended early by [`Input::RetryNow`] (R16).
    pub retries_now: u32,
    /// [`Input::RetryNow`] requests refused by the bound of I10: the attempt before had
    /// itself begun by retry now, so its wait runs its course.
    pub retries_now_refused: u32,
}

/// What to do once the running event handler finishes.
#[derive(Debug)]
enum Then<A> {
    BeginAttempt,
    Connect {
        attempt: AttemptId,
        address: A,
    },
    AfterFailure,
    AfterConnected,
    AfterDisconnected,
    /// R15: the current connection went away while a handover attempt was in flight; that
    /// attempt ([`Side::carried`]) carries on as the first attempt of the new round.
    CarryOn,
}

/// A handover attempt carried on as the first attempt of a new round (R15), while the
/// round's first events are handled.
#[derive(Debug)]
struct Carried<A, C, E> {
    attempt: AttemptId,
    /// The address it connects to, once its lookup gave one.
    address: Option<A>,
    /// `AttemptingToConnect` was emitted for it.
    round_begun: bool,
    /// `ObtainedAddress(address)` was emitted for it.
    announced: bool,
    /// Its result, if it arrived while a handler ran.
    parked: Option<Parked<A, C, E>>,
}

#[derive(Debug)]
enum Parked<A, C, E> {
    Address(Result<A, E>),
    Connect(Result<C, E>),
}

/// The machine's side of a pending handover (R15).
#[derive(Debug)]
struct Handover<A> {
    reason: HandoverReason,
    grace: Duration,
    from: ConnId,
    stage: Stage<A>,
    failures: u32,
}

#[derive(Debug)]
enum Stage<A> {
    /// Waiting for the retry timer, or for the current connection's handler to return.
    Pending,
    Resolving(AttemptId),
    Connecting(AttemptId, A),
}

/// A connection replaced by a handover, open until `deadline` (R15).
struct Retired<C> {
    id: ConnId,
    connection: C,
    deadline: Instant,
}

/// Handover state (R15), boxed so that a machine that never hands over pays one pointer for
/// it. Once made it is kept, so that handovers allocate nothing in steady state;
/// [`Machine::release_buffers`] frees it when it holds nothing.
struct Side<A, C, E> {
    handover: Option<Handover<A>>,
    /// The handover attempt carried on into a new round, while `Then::CarryOn` runs.
    carried: Option<Carried<A, C, E>>,
    retiring: Vec<Retired<C>>,
}

impl<A, C, E> Side<A, C, E> {
    fn is_empty(&self) -> bool {
        self.handover.is_none() && self.carried.is_none() && self.retiring.is_empty()
    }
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

/// The sans-IO persistent connection: every rule of docs/behaviour.md R1–R17 that is a decision.
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
    /// The pending handover, the attempt it carried on and the retired connections (R15).
    side: Option<Box<Side<A, C, E>>>,
    /// The latest attempt made the current connection (R15: a handover may begin at once).
    latest_made_current: bool,
    /// A retry now that came while no wait was under way, kept for the next one (R16).
    retry_now_kept: Option<RetryNowReason>,
    /// A retry now that ended a wait; the attempt it lets begin takes it (R16).
    retry_now_armed: Option<RetryNowReason>,
    /// The latest attempt began before its predecessor's retry deadline by retry now (I10).
    latest_by_retry_now: Option<RetryNowReason>,
    counters: Counters,
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
            .field("handover", &self.handover())
            .field("retiring", &self.retiring().len())
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
            side: None,
            latest_made_current: false,
            retry_now_kept: None,
            retry_now_armed: None,
            latest_by_retry_now: None,
            counters: Counters::default(),
        };
        m.begin_round();
        m
    }

    /// Feed one input that happened at `now`. Never panics, whatever the input and state.
    /// Afterwards, drain [`poll_effect`](Machine::poll_effect).
    pub fn handle(&mut self, now: Instant, input: Input<A, C, E>) {
        match input {
            Input::AddressResult { attempt, result } => {
                if self.handover_attempt(attempt, false) {
                    self.on_handover_address(now, attempt, result);
                } else if let Some(c) = self.carried(attempt, false) {
                    c.parked = Some(Parked::Address(result));
                } else {
                    self.on_address_result(now, attempt, result);
                }
            }
            Input::ConnectResult { attempt, result } => {
                if self.handover_attempt(attempt, true) {
                    self.on_handover_connect(now, result);
                } else if let Some(c) = self.carried(attempt, true) {
                    c.parked = Some(Parked::Connect(result));
                } else {
                    self.on_connect_result(now, attempt, result);
                }
            }
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
            Input::Handover { reason, grace } => self.request_handover(reason, grace),
            Input::CancelHandover => {
                if self.cancel_handover() {
                    // Connected with nothing pending: a kept retry now has nothing to end.
                    self.retry_now_kept = None;
                }
            }
            Input::RetryNow { reason } => {
                // Kept for the wait under way (taken by `check_timer` just below) or for the
                // next one. Connected with no handover pending, no wait can follow.
                if !self.closed && (self.current.is_none() || self.hand().is_some()) {
                    self.retry_now_kept = Some(reason);
                }
            }
        }
        self.check_timer(now);
    }

    fn on_address_result(&mut self, now: Instant, attempt: AttemptId, result: Result<A, E>) {
        match self.phase {
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
        }
    }

    fn on_connect_result(&mut self, now: Instant, attempt: AttemptId, result: Result<C, E>) {
        match (&self.phase, result) {
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
        }
    }
}

impl<A, C, E> Machine<A, C, E> {
    /// The next command for the driver, or `None` when all are drained. Call it until
    /// `None` after every [`handle`](Machine::handle) (and after [`new`](Machine::new)).
    pub fn poll_effect(&mut self) -> Option<Effect<A, C, E>> {
        self.effects.pop_front()
    }

    /// When the driver should feed [`Input::TimerFired`]: the earliest of the retry
    /// deadline, if the machine is waiting for it (R4, R6, or a pending handover's next
    /// attempt, R15), and the end of a retired connection's grace (R15). `None` while
    /// nothing waits on a timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.waiting().then_some(self.retry_deadline);
        let grace = self.retiring().iter().map(|r| r.deadline).min();
        match (retry, grace) {
            (Some(r), Some(g)) => Some(r.min(g)),
            (r, g) => r.or(g),
        }
    }

    fn hand(&self) -> Option<&Handover<A>> {
        self.side.as_ref().and_then(|s| s.handover.as_ref())
    }

    fn hand_mut(&mut self) -> Option<&mut Handover<A>> {
        self.side.as_mut().and_then(|s| s.handover.as_mut())
    }

    fn retiring(&self) -> &[Retired<C>] {
        self.side.as_ref().map_or(&[], |s| &s.retiring)
    }

    /// Waiting for the retry timer: before the next attempt (R4), a new round (R6) or a
    /// pending handover's next attempt (R15).
    fn waiting(&self) -> bool {
        match self.phase {
            Phase::WaitingToRetry | Phase::WaitingToReconnect => true,
            Phase::Connected => self
                .hand()
                .is_some_and(|h| matches!(h.stage, Stage::Pending)),
            _ => false,
        }
    }

    /// The pending handover (R15), if any: why, the connection it replaces, its attempt in
    /// flight. An [`Effect::GetAddress`] or [`Effect::Connect`] for that attempt is the
    /// handover's: the catalog should pick a copy other than the current connection's.
    pub fn handover(&self) -> Option<HandoverStatus> {
        self.hand().map(|h| HandoverStatus {
            reason: h.reason,
            grace: h.grace,
            from: h.from,
            attempt: match h.stage {
                Stage::Pending => None,
                Stage::Resolving(a) | Stage::Connecting(a, _) => Some(a),
            },
            failures: h.failures,
        })
    }

    /// Connections replaced by a handover (R15) that are still open and not yet asked to
    /// close, with the end of their grace period.
    pub fn retired_connections(&self) -> impl Iterator<Item = (ConnId, Instant)> + '_ {
        self.retiring().iter().map(|r| (r.id, r.deadline))
    }

    /// Why the latest attempt began before the retry timer of the attempt before it had
    /// fired, if retry now (R16, R17) made it begin; `None` if it began on its timer (or as a
    /// handover right after a connection was made, R15).
    pub fn attempt_began_by_retry_now(&self) -> Option<RetryNowReason> {
        self.latest_by_retry_now
    }

    /// Totals of handovers and retries now since the machine was made.
    pub fn counters(&self) -> Counters {
        self.counters
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
        if self.side.as_ref().is_some_and(|s| s.is_empty()) {
            self.side = None;
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
    /// the current one (retired connections once their grace ended, R15, included).
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
        let attempt = self.start_attempt(now);
        self.phase = Phase::Resolving(attempt);
    }

    /// R2 for an ordinary attempt and a handover's (R15): the retry timer, then the lookup.
    fn start_attempt(&mut self, now: Instant) -> AttemptId {
        // I10: whether it begins before the previous attempt's timer fired, by retry now.
        let early = now < self.retry_deadline;
        self.latest_by_retry_now = self.retry_now_armed.take().filter(|_| early);
        self.retry_now_kept = None;
        self.latest_made_current = false;
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
        attempt
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
        self.latest_made_current = true;
        self.retry_now_kept = None;
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

    /// R6, the end of stray connections (R8) and of retired ones (R15).
    fn on_closed(&mut self, conn: ConnId) {
        if self.current.as_ref().is_some_and(|c| c.id == conn) {
            self.current = None;
            self.effects.push_back(Effect::NoLongerCurrent { conn });
            if self.stop_after_current {
                self.mark_closed();
            }
            // R15: a handover waiting for its timer ends with the connection it was to
            // replace; one whose attempt is in flight carries on as the new round's first.
            let carried = self.take_handover().and_then(|h| match h.stage {
                Stage::Pending => None,
                Stage::Resolving(attempt) => Some((attempt, None)),
                Stage::Connecting(attempt, address) => Some((attempt, Some(address))),
            });
            match (&self.phase, carried) {
                (Phase::Connected, None) => self.emit(Event::Disconnected, Then::AfterDisconnected),
                (Phase::Connected, Some((attempt, address))) => {
                    self.side().carried = Some(Carried {
                        attempt,
                        address,
                        round_begun: false,
                        announced: false,
                        parked: None,
                    });
                    self.emit(Event::Disconnected, Then::CarryOn);
                }
                // The `Connected` (or `HandedOver`) handler is still running: `Disconnected`
                // waits for it (R6). No handover attempt begins while it runs, so none is
                // in flight; should one be, it is cancelled rather than lost.
                (_, carried) => {
                    if let Some((attempt, _)) = carried {
                        self.effects.push_back(Effect::CancelAttempt { attempt });
                    }
                    self.disconnect_pending = true;
                }
            }
        } else if let Some(i) = self.lingering.iter().position(|c| *c == conn) {
            self.lingering.swap_remove(i);
            self.check_finished();
        } else if let Some(side) = &mut self.side
            && let Some(i) = side.retiring.iter().position(|r| r.id == conn)
        {
            // A retired connection closed before its grace ended (R15): nothing to report.
            side.retiring.remove(i);
        }
    }

    fn continue_with(&mut self, now: Instant, then: Then<A>) {
        match then {
            Then::AfterConnected => {
                if self.disconnect_pending {
                    self.disconnect_pending = false;
                    self.emit(Event::Disconnected, Then::AfterDisconnected);
                } else {
                    // A handover asked for while the handler ran begins now or waits for
                    // its timer (`check_timer`).
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
            Then::CarryOn => {
                if let Some(carried) = self.side.as_mut().and_then(|s| s.carried.take()) {
                    self.carry_on(now, carried);
                }
            }
        }
    }

    /// R15: the handover attempt in flight when the current connection went away is the new
    /// round's first attempt, without waiting: `AttemptingToConnect`, then
    /// `ObtainedAddress` once its address is known, then what it gives, as R3–R5 say.
    fn carry_on(&mut self, now: Instant, mut c: Carried<A, C, E>) {
        if !c.round_begun {
            c.round_begun = true;
            self.last_address = None;
            self.last_failure = None;
            self.side().carried = Some(c);
            self.emit(Event::AttemptingToConnect, Then::CarryOn);
            return;
        }
        if !c.announced
            && let Some(address) = &c.address
        {
            c.announced = true;
            self.last_address = Some(address.clone());
            let event = Event::ObtainedAddress(address.clone());
            self.side().carried = Some(c);
            self.emit(event, Then::CarryOn);
            return;
        }
        match c.parked {
            Some(Parked::Address(Ok(address))) => self.on_address(c.attempt, address),
            Some(Parked::Address(Err(e)) | Parked::Connect(Err(e))) => self.on_failure(now, e),
            Some(Parked::Connect(Ok(connection))) => self.on_connected(connection),
            None if c.address.is_some() => self.phase = Phase::Connecting(c.attempt),
            None => self.phase = Phase::Resolving(c.attempt),
        }
    }

    /// The carried attempt (R15) `attempt`, if a result of this kind (`connect`: a connect's,
    /// else a lookup's) is the one it awaits and none arrived yet.
    fn carried(&mut self, attempt: AttemptId, connect: bool) -> Option<&mut Carried<A, C, E>> {
        if !matches!(
            self.phase,
            Phase::Handling {
                then: Then::CarryOn,
                ..
            }
        ) {
            return None;
        }
        self.side
            .as_mut()
            .and_then(|s| s.carried.as_mut())
            .filter(|c| {
                c.attempt == attempt && c.address.is_some() == connect && c.parked.is_none()
            })
    }

    /// R4, R6: go on at once if the attempt's retry timer has fired, else wait for it.
    fn wait_for_timer(&mut self, now: Instant, waiting: Phase<A>) {
        self.phase = waiting;
        self.check_timer(now);
    }

    /// The end of every step: retired connections whose grace ended are closed (R15); a
    /// wait ends when its retry timer fired (R4, R6, R15) or when retry now ends it (R16).
    fn check_timer(&mut self, now: Instant) {
        self.expire_retired(now);
        if !self.waiting() {
            return;
        }
        if now < self.retry_deadline
            && let Some(reason) = self.retry_now_kept.take()
        {
            // I10: no two attempts in a row begin early by retry now.
            if self.latest_by_retry_now.is_some() {
                self.counters.retries_now_refused =
                    self.counters.retries_now_refused.saturating_add(1);
            } else {
                self.counters.retries_now = self.counters.retries_now.saturating_add(1);
                self.retry_now_armed = Some(reason);
            }
        }
        let go = now >= self.retry_deadline
            || self.retry_now_armed.is_some()
            // R15: a handover begins at once after the attempt that made the connection.
            || (self.latest_made_current && matches!(self.phase, Phase::Connected));
        if !go {
            return;
        }
        match self.phase {
            Phase::WaitingToRetry => self.begin_attempt(now),
            Phase::WaitingToReconnect => self.begin_round(),
            Phase::Connected => {
                let attempt = self.start_attempt(now);
                if let Some(h) = self.hand_mut() {
                    h.stage = Stage::Resolving(attempt);
                }
            }
            _ => {}
        }
    }

    /// R15: ask to close the retired connections whose grace has ended.
    fn expire_retired(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(side) = &mut self.side
            && i < side.retiring.len()
        {
            if side.retiring[i].deadline <= now {
                let r = side.retiring.remove(i);
                self.close_retired(r);
            } else {
                i += 1;
            }
        }
    }

    fn close_retired(&mut self, r: Retired<C>) {
        self.lingering.push(r.id);
        self.effects.push_back(Effect::CloseConnection {
            conn: r.id,
            connection: r.connection,
        });
    }

    // ---- handover (R15) ----

    /// R15: a handover is asked for. Only while connected and not stopping.
    fn request_handover(&mut self, reason: HandoverReason, grace: Duration) {
        if self.closed || self.stop_after_current {
            return;
        }
        let Some(from) = self.current.as_ref().map(|c| c.id) else {
            return;
        };
        match self.hand_mut() {
            Some(h) => {
                h.reason = reason;
                h.grace = grace;
            }
            None => {
                self.side().handover = Some(Handover {
                    reason,
                    grace,
                    from,
                    stage: Stage::Pending,
                    failures: 0,
                })
            }
        }
        // `check_timer`, at the end of the step, begins its attempt when it may.
    }

    /// Is `attempt` the handover's attempt in flight, at its connect (`connect`) or its
    /// lookup?
    fn handover_attempt(&self, attempt: AttemptId, connect: bool) -> bool {
        self.hand().is_some_and(|h| match h.stage {
            Stage::Resolving(a) => !connect && a == attempt,
            Stage::Connecting(a, _) => connect && a == attempt,
            Stage::Pending => false,
        })
    }

    /// R15: the handover's lookup answered. No `ObtainedAddress`: the round's events are
    /// not the handover's.
    fn on_handover_address(&mut self, now: Instant, attempt: AttemptId, result: Result<A, E>) {
        match result {
            Ok(address) => {
                self.effects.push_back(Effect::Connect {
                    attempt,
                    address: address.clone(),
                    consecutive_unsuccessful_attempts: self.consecutive_failures,
                });
                if let Some(h) = self.hand_mut() {
                    h.stage = Stage::Connecting(attempt, address);
                }
            }
            Err(_) => self.on_handover_failure(now),
        }
    }

    fn on_handover_connect(&mut self, now: Instant, result: Result<C, E>) {
        match result {
            Ok(connection) => self.on_handed_over(now, connection),
            Err(_) => self.on_handover_failure(now),
        }
    }

    /// R15: a failed handover attempt leaves the current connection serving; the next one
    /// begins when its retry timer fires (`check_timer`). No event, no R10 outcome.
    fn on_handover_failure(&mut self, _now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.counters.handover_failures = self.counters.handover_failures.saturating_add(1);
        if let Some(h) = self.hand_mut() {
            h.failures = h.failures.saturating_add(1);
            h.stage = Stage::Pending;
        }
    }

    /// R15: the new connection replaces the current one in one step; the old one is
    /// retired until its grace ends.
    fn on_handed_over(&mut self, now: Instant, connection: C) {
        let Some(h) = self.take_handover() else {
            return;
        };
        self.consecutive_failures = 0;
        self.latest_made_current = true;
        self.retry_now_kept = None;
        self.counters.handovers = self.counters.handovers.saturating_add(1);
        let id = self.new_conn_id();
        let old = self.current.replace(Current {
            id,
            connection: connection.clone(),
            close_requested: false,
        });
        self.effects.push_back(Effect::BecameCurrent {
            conn: id,
            connection: connection.clone(),
        });
        if let Some(old) = old {
            self.side().retiring.push(Retired {
                id: old.id,
                connection: old.connection,
                deadline: now.saturating_add(h.grace),
            });
        }
        self.emit(
            Event::HandedOver {
                connection,
                reason: h.reason,
            },
            Then::AfterConnected,
        );
    }

    /// Ends the pending handover without success (R15): its attempt in flight is cancelled.
    /// Returns whether there was one.
    fn cancel_handover(&mut self) -> bool {
        let Some(h) = self.take_handover() else {
            return false;
        };
        self.counters.handovers_cancelled = self.counters.handovers_cancelled.saturating_add(1);
        if let Stage::Resolving(attempt) | Stage::Connecting(attempt, _) = h.stage {
            self.effects.push_back(Effect::CancelAttempt { attempt });
        }
        true
    }

    fn side(&mut self) -> &mut Side<A, C, E> {
        self.side.get_or_insert_with(|| {
            Box::new(Side {
                handover: None,
                carried: None,
                retiring: Vec::new(),
            })
        })
    }

    fn take_handover(&mut self) -> Option<Handover<A>> {
        self.side.as_mut().and_then(|s| s.handover.take())
    }

    fn mark_closed(&mut self) {
        if !self.closed {
            self.closed = true;
            self.effects
                .push_back(Effect::AttemptOutcome(Err(AttemptError::Closed)));
            self.retry_now_kept = None;
            self.retry_now_armed = None;
            // R15: retired connections are closed at once; close does not wait out a grace.
            while let Some(side) = &mut self.side
                && !side.retiring.is_empty()
            {
                let r = side.retiring.remove(0);
                self.close_retired(r);
            }
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
        // R15: a handover attempt carried on into the new round is cancelled like any
        // attempt in progress, and a connection it already gave is closed.
        if let Phase::Handling { then, .. } = &mut self.phase
            && matches!(then, Then::CarryOn)
            && let Some(c) = {
                *then = Then::AfterFailure;
                self.side.as_mut().and_then(|s| s.carried.take())
            }
        {
            self.effects
                .push_back(Effect::CancelAttempt { attempt: c.attempt });
            if let Some(Parked::Connect(Ok(connection))) = c.parked {
                self.close_stray(connection);
            }
        }
        self.cancel_handover();
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
    /// `CloseFinished` (I6). A `close()` meanwhile cancels it. While connected, a pending
    /// handover is cancelled as R11 does (R15): a handover attempt's failure is never an
    /// event, so nothing R12 would report is lost.
    fn abort(&mut self) {
        match self.phase {
            Phase::Resolving(_) | Phase::Connecting(_) if self.current.is_none() => {
                self.mark_closed();
            }
            _ => self.close_when_current_closed(),
        }
    }

    /// R11. A pending handover (R15) ends: no new connection is made after R11.
    fn close_when_current_closed(&mut self) {
        if self.closed {
            return;
        }
        if self.current.is_some() {
            self.stop_after_current = true;
            self.cancel_handover();
        } else {
            self.close();
        }
    }

    fn check_finished(&mut self) {
        if matches!(self.phase, Phase::Closing)
            && self.current.is_none()
            && self.lingering.is_empty()
            && self.retiring().is_empty()
        {
            self.phase = Phase::Closed;
            self.effects.push_back(Effect::CloseFinished);
        }
    }
}
