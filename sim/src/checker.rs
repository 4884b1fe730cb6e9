//! The invariant checker: docs/behaviour.md §5's I1–I8, I10 and I11 judged from the trace
//! alone.
//!
//! [`Checker`] watches what a driver feeds a machine ([`Checker::on_input`]) and what the
//! machine answers ([`Checker::on_effect`]), then looks at the machine's queries once the
//! step's effects are drained ([`Checker::after_step`]). It needs no world: it keeps a
//! shadow of what docs/behaviour.md requires given the inputs actually received — which requests are
//! outstanding, which event handler runs, which connections are open, what the round has
//! already reported — and fails on the first effect docs/behaviour.md forbids or the first step that
//! leaves out an effect docs/behaviour.md requires. It is correct for *arbitrary* input sequences
//! (stale, duplicate and never-issued ids, results after close, `Closed` for any
//! connection, time steps of any size), so fuzz targets can use it as well as the
//! simulator. I9 (determinism) needs two runs; see [`crate::trace`].
//!
//! After the first [`Violation`] the checker's shadow is no longer meaningful: stop there.
//!
//! ```
//! use core::time::Duration;
//! use persistent_connection_core::{Config, Input, Instant, Machine, RetryPolicy};
//! use persistent_connection_sim::checker::{Checker, CheckerSettings};
//!
//! let policy = RetryPolicy::constant(Duration::from_secs(1));
//! let mut checker: Checker<u16, u32, &str> = Checker::new(CheckerSettings::for_policy(&policy));
//! let mut m: Machine<u16, u32, &str> = Machine::new(Config { seed: 3, retry: policy });
//! // The construction step: `AttemptingToConnect` is due (R1).
//! let mut ids = Vec::new();
//! while let Some(effect) = m.poll_effect() {
//!     if let persistent_connection_core::Effect::Emit { id, .. } = &effect {
//!         ids.push(*id);
//!     }
//!     checker.on_effect(Instant::ZERO, &effect).unwrap();
//! }
//! checker.after_step(Instant::ZERO, &m).unwrap();
//! // Every later step: input, effects, queries.
//! let input = Input::EventHandled { event: ids[0] };
//! checker.on_input(Instant::ZERO, &input).unwrap();
//! m.handle(Instant::ZERO, input);
//! while let Some(effect) = m.poll_effect() {
//!     checker.on_effect(Instant::ZERO, &effect).unwrap();
//! }
//! checker.after_step(Instant::ZERO, &m).unwrap();
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use persistent_connection_core::{
    AttemptError, AttemptId, ConnId, Effect, Event, EventId, EventKind, HandoverReason, Input,
    Instant, Jitter, Machine, RetryDelay, RetryPolicy, State,
};

/// The invariants of docs/behaviour.md §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// Event grammar; at most one `Connected` per round.
    I1,
    /// De-duplication, both ways: no repeat, nothing different suppressed.
    I2,
    /// One event at a time.
    I3,
    /// Throttle: attempt starts a jittered delay apart, delays within bounds.
    I4,
    /// Immediacy: an attempt begins as soon as the rules allow.
    I5,
    /// No leaks: every connection closed exactly once or still current.
    I6,
    /// Close: finishes exactly once, promptly, nothing emitted after.
    I7,
    /// Waiters: `connected()`, `connected_or_failed_to_connect()`, the current connection.
    I8,
    /// Determinism: a replayed seed reproduces its trace. Also used for liveness failures
    /// of the simulated world (a step cap breached, a close that never finishes).
    I9,
    /// Early starts are bounded: before the previous attempt's deadline only a handover
    /// right after a connection was made (R15) or retry now, never twice in a row (R16).
    I10,
    /// Handover: one current connection at a time, swapped in one step, the retired one
    /// closed within its grace (R15).
    I11,
}

impl Invariant {
    /// A short description, as in docs/behaviour.md §5.
    pub fn describe(self) -> &'static str {
        match self {
            Invariant::I1 => "event grammar",
            Invariant::I2 => "de-duplication",
            Invariant::I3 => "one event at a time",
            Invariant::I4 => "throttle",
            Invariant::I5 => "immediacy",
            Invariant::I6 => "no leaks",
            Invariant::I7 => "close",
            Invariant::I8 => "waiters",
            Invariant::I9 => "determinism and liveness",
            Invariant::I10 => "early starts bounded",
            Invariant::I11 => "handover",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.describe())
    }
}

/// A broken invariant: which one, at which step and time, and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant broken.
    pub invariant: Invariant,
    /// The step it broke at: 0 is the machine's construction, then one per input.
    pub step: u64,
    /// The time of that step.
    pub now: Instant,
    /// What happened, with the rule it breaks.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated at step {} (t={:?}): {}",
            self.invariant,
            self.step,
            self.now.since_origin(),
            self.message
        )
    }
}

impl std::error::Error for Violation {}

/// The machine's queries that the checker compares with its shadow after every step.
/// Implemented by [`Machine`]; wrappers (the simulator's mutants) implement it too.
pub trait MachineView {
    /// [`Machine::is_closed`].
    fn is_closed(&self) -> bool;
    /// [`Machine::is_close_finished`].
    fn is_close_finished(&self) -> bool;
    /// [`Machine::current_conn_id`].
    fn current_conn_id(&self) -> Option<ConnId>;
    /// [`Machine::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// [`Machine::state`], for messages.
    fn state(&self) -> State;
    /// [`Machine::consecutive_unsuccessful_attempts`] (R12). `None`, the default, skips the
    /// check.
    fn consecutive_unsuccessful_attempts(&self) -> Option<u32> {
        None
    }
    /// [`Machine::lingering_connections`]: the connections asked to close, besides the
    /// current one, whose close has not finished. `None`, the default, skips the check.
    fn lingering_connections(&self) -> Option<&[ConnId]> {
        None
    }
    /// [`Machine::current_connection`], as `Some(None)` when there is none and
    /// `Some(Some(h))` with `h` the FNV-1a hash of its `Debug` text. `None`, the default,
    /// skips the check.
    fn current_connection_hash(&self) -> Option<Option<u64>> {
        None
    }
    /// [`Machine::handover`]: `Some(None)` when no handover is pending, `Some(Some((from,
    /// attempt)))` with the connection it replaces and its attempt in flight. `None`, the
    /// default, skips the check.
    fn handover_state(&self) -> Option<Option<(ConnId, Option<AttemptId>)>> {
        None
    }
}

impl<A, C: fmt::Debug, E> MachineView for Machine<A, C, E> {
    fn is_closed(&self) -> bool {
        Machine::is_closed(self)
    }
    fn is_close_finished(&self) -> bool {
        Machine::is_close_finished(self)
    }
    fn current_conn_id(&self) -> Option<ConnId> {
        Machine::current_conn_id(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Machine::poll_timeout(self)
    }
    fn state(&self) -> State {
        Machine::state(self)
    }
    fn consecutive_unsuccessful_attempts(&self) -> Option<u32> {
        Some(Machine::consecutive_unsuccessful_attempts(self))
    }
    fn lingering_connections(&self) -> Option<&[ConnId]> {
        Some(Machine::lingering_connections(self))
    }
    fn current_connection_hash(&self) -> Option<Option<u64>> {
        Some(Machine::current_connection(self).map(debug_hash))
    }
    fn handover_state(&self) -> Option<Option<(ConnId, Option<AttemptId>)>> {
        Some(Machine::handover(self).map(|h| (h.from, h.attempt)))
    }
}

/// What the checker knows of the machine's retry policy (I4).
#[derive(Debug)]
pub struct CheckerSettings {
    /// The machine's jitter: every delay must lie within `base ± percent·base`
    /// (`NonRandom`: exactly `base`).
    pub jitter: Jitter,
    /// A twin of the machine's base-delay policy, asked once per attempt start with the
    /// number of consecutive unsuccessful attempts: each `StartTimer`'s `base` must equal
    /// its answer. `None` checks only the jitter bounds around the reported base.
    pub delay: Option<RetryDelay>,
}

impl CheckerSettings {
    /// Settings for a machine built with `policy`. `Constant` and `Exponential` delays are
    /// twinned exactly; a `Custom` delay (a closure) cannot be copied, so only the jitter
    /// bounds are checked — use [`CheckerSettings::with_delay`] to pass a twin closure.
    pub fn for_policy(policy: &RetryPolicy) -> CheckerSettings {
        let delay = match &policy.delay {
            RetryDelay::Constant(d) => Some(RetryDelay::Constant(*d)),
            RetryDelay::Exponential {
                initial,
                multiplier,
                max,
            } => Some(RetryDelay::Exponential {
                initial: *initial,
                multiplier: *multiplier,
                max: *max,
            }),
            RetryDelay::Custom(_) => None,
        };
        CheckerSettings {
            jitter: policy.jitter,
            delay,
        }
    }

    /// Only the jitter bounds are checked, around whatever base the machine reports.
    pub fn jitter_only(jitter: Jitter) -> CheckerSettings {
        CheckerSettings {
            jitter,
            delay: None,
        }
    }

    /// Check every base delay against `twin`, which must answer as the machine's policy
    /// does when asked the same questions in the same order.
    pub fn with_delay(mut self, twin: RetryDelay) -> CheckerSettings {
        self.delay = Some(twin);
        self
    }
}

/// An effect the current step owes, derived from the input and the rules.
#[derive(Debug)]
enum Expect<A, E> {
    EmitAttempting,
    EmitObtained(A),
    EmitFailed(E),
    EmitConnected,
    EmitDisconnected,
    StartTimer,
    GetAddress(AttemptId),
    Connect(AttemptId, A),
    Cancel(AttemptId),
    CloseCurrent(ConnId),
    CloseStray,
    BecameCurrent,
    NoLongerCurrent(ConnId),
    OutcomeOk,
    OutcomeFailed(E),
    OutcomeAborted(E),
    OutcomeClosed,
    /// R15: the handover's lookup, right after its timer.
    GetAddressHandover(AttemptId),
    /// R15: the handover's connection becomes current in place of this one.
    BecameCurrentReplacing(ConnId),
    /// R15: the handover's event.
    EmitHandedOver(HandoverReason),
    /// R15: a retired connection's grace ended (or close came): it is asked to close.
    CloseRetired(ConnId),
}

impl<A, E> Expect<A, E> {
    /// The invariant broken when this effect is missing at the end of its step.
    fn invariant_if_missing(&self) -> Invariant {
        match self {
            Expect::EmitAttempting
            | Expect::StartTimer
            | Expect::GetAddress(_)
            | Expect::GetAddressHandover(_)
            | Expect::Connect(..) => Invariant::I5,
            Expect::BecameCurrentReplacing(_)
            | Expect::EmitHandedOver(_)
            | Expect::CloseRetired(_) => Invariant::I11,
            Expect::EmitObtained(_) | Expect::EmitFailed(_) => Invariant::I2,
            Expect::EmitConnected | Expect::EmitDisconnected => Invariant::I1,
            Expect::Cancel(_) | Expect::CloseCurrent(_) => Invariant::I7,
            Expect::CloseStray => Invariant::I6,
            Expect::BecameCurrent
            | Expect::NoLongerCurrent(_)
            | Expect::OutcomeOk
            | Expect::OutcomeFailed(_)
            | Expect::OutcomeAborted(_)
            | Expect::OutcomeClosed => Invariant::I8,
        }
    }

    fn why(&self) -> &'static str {
        match self {
            Expect::EmitAttempting => "a new round must begin once the retry timer allows (R1, R6)",
            Expect::EmitObtained(_) => "a new address must be reported (R3)",
            Expect::EmitFailed(_) => "a new failure must be reported (R4)",
            Expect::EmitConnected => "a connection must be reported (R5)",
            Expect::EmitDisconnected => "the current connection's end must be reported (R6)",
            Expect::StartTimer => "an attempt must begin as soon as the rules allow (R2, R4)",
            Expect::GetAddress(_) => "an attempt asks for the address right after its timer (R2)",
            Expect::Connect(..) => "an obtained address must be connected to (R3)",
            Expect::Cancel(_) => "close cancels the attempt in flight (R8)",
            Expect::CloseCurrent(_) => "close closes the current connection (R8)",
            Expect::CloseStray => "a connection outside its attempt must be closed at once (R8)",
            Expect::BecameCurrent => "a connection becomes current at once (R5, R9)",
            Expect::NoLongerCurrent(_) => "a closed connection stops being current (R6)",
            Expect::OutcomeOk => "R10 waiters get the connection",
            Expect::OutcomeFailed(_) => "R10 waiters get the failure",
            Expect::OutcomeAborted(_) => "R10 waiters get the abort error (R12)",
            Expect::OutcomeClosed => "R10 waiters get Closed once closed",
            Expect::GetAddressHandover(_) => {
                "a handover's attempt asks for the address right after its timer (R2, R15)"
            }
            Expect::BecameCurrentReplacing(_) => {
                "a handover's connection replaces the current one at once, in one step (R15)"
            }
            Expect::EmitHandedOver(_) => "a successful handover is reported (R15)",
            Expect::CloseRetired(_) => {
                "a retired connection is closed when its grace ends, or at close (R15)"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Lookup,
    Connect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Retry,
    Reconnect,
}

#[derive(Clone, Copy, Debug)]
struct AttemptInfo {
    id: AttemptId,
    deadline: Instant,
}

/// A pending handover (R15), as the trace shows it.
#[derive(Debug)]
struct ShadowHandover<A> {
    reason: HandoverReason,
    grace: Duration,
    from: ConnId,
    /// Its attempt in flight and what it waits for.
    attempt: Option<(AttemptId, Op)>,
    /// The address its lookup gave.
    address: Option<A>,
}

/// A handover attempt that carries on as the new round's first (R15), while the round's
/// first events are handled.
#[derive(Debug)]
struct ShadowCarried<A, E> {
    attempt: AttemptId,
    address: Option<A>,
    /// `AttemptingToConnect` was called for.
    round_begun: bool,
    /// `ObtainedAddress(address)` was called for.
    announced: bool,
    parked: Option<ShadowParked<A, E>>,
}

/// The carried attempt's result, kept while a handler runs.
#[derive(Debug)]
enum ShadowParked<A, E> {
    Address(Result<A, E>),
    /// A connection, by the `Debug` hash of what was handed in.
    ConnectOk(u64),
    ConnectErr(E),
}

#[derive(Debug)]
struct Round<A, E> {
    last_address: Option<A>,
    last_failure: Option<E>,
    connected: bool,
    disconnected: bool,
}

/// How often the checker saw the situations that make the rules interesting: a seed budget
/// that never reaches one of them proves nothing about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// An address equal to the round's previous one, not reported (R3).
    pub deduplicated_addresses: u64,
    /// A failure equal to the round's previous one, not reported (R4).
    pub deduplicated_failures: u64,
    /// A failure handled after its attempt's retry timer fired: next attempt at once (R4).
    pub immediate_retries: u64,
    /// A wait for the retry timer, after a failure or a disconnection (R4, R6).
    pub timer_waits: u64,
    /// The current connection closed while its `Connected` handler ran (R6).
    pub closed_during_connected_handler: u64,
    /// `close()` with an attempt in flight (R8).
    pub closes_cancelling_an_attempt: u64,
    /// `close()` while an event handler ran (R8).
    pub closes_during_a_handler: u64,
    /// `close()` with a current connection (R8).
    pub closes_while_connected: u64,
    /// R11 while connected: the connection stays up, no new round follows.
    pub stops_after_current: u64,
    /// `abort` through the connect context (R12).
    pub aborts: u64,
    /// Failures of the attempt in flight when `abort` came, reported as the original does
    /// (R12).
    pub aborted_attempt_failures: u64,
    /// Connections arriving outside their attempt, closed at once (R8).
    pub late_connections: u64,
    /// Inputs answering nothing outstanding (stale, duplicate, never issued).
    pub stale_inputs: u64,
    /// Successful handovers (R15).
    pub handovers: u64,
    /// Handovers that began at once after the attempt that made the connection, before
    /// its retry deadline (R15, I10 (a)).
    pub early_handovers: u64,
    /// Failed handover attempts, the current connection still serving (R15).
    pub handover_failures: u64,
    /// Handovers cancelled: `CancelHandover`, R11, `abort` or close (R15).
    pub handovers_cancelled: u64,
    /// Handover attempts carried on as a new round after the current connection died (R15).
    pub carried_attempts: u64,
    /// Retired connections closed by the machine when their grace ended or at close (R15).
    pub retired_closed: u64,
    /// Retired connections that closed by themselves during their grace (R15).
    pub retired_closed_early: u64,
    /// Waits ended by retry now (R16, R17).
    pub retries_now: u64,
    /// Retries now refused by the bound (I10).
    pub retries_now_refused: u64,
}

impl Coverage {
    /// Adds another run's counts.
    pub fn add(&mut self, o: &Coverage) {
        self.deduplicated_addresses += o.deduplicated_addresses;
        self.deduplicated_failures += o.deduplicated_failures;
        self.immediate_retries += o.immediate_retries;
        self.timer_waits += o.timer_waits;
        self.closed_during_connected_handler += o.closed_during_connected_handler;
        self.closes_cancelling_an_attempt += o.closes_cancelling_an_attempt;
        self.closes_during_a_handler += o.closes_during_a_handler;
        self.closes_while_connected += o.closes_while_connected;
        self.stops_after_current += o.stops_after_current;
        self.aborts += o.aborts;
        self.aborted_attempt_failures += o.aborted_attempt_failures;
        self.late_connections += o.late_connections;
        self.stale_inputs += o.stale_inputs;
        self.handovers += o.handovers;
        self.early_handovers += o.early_handovers;
        self.handover_failures += o.handover_failures;
        self.handovers_cancelled += o.handovers_cancelled;
        self.carried_attempts += o.carried_attempts;
        self.retired_closed += o.retired_closed;
        self.retired_closed_early += o.retired_closed_early;
        self.retries_now += o.retries_now;
        self.retries_now_refused += o.retries_now_refused;
    }

    /// The situations of handover and retry now (R15–R17, I10, I11), each with its name:
    /// reached by worlds with planned changes, zero in the others.
    pub fn planned_counters(&self) -> [(&'static str, u64); 9] {
        [
            ("handovers (R15)", self.handovers),
            ("early handovers (R15, I10)", self.early_handovers),
            ("failed handover attempts", self.handover_failures),
            ("handovers cancelled", self.handovers_cancelled),
            ("handover attempts carried on", self.carried_attempts),
            ("retired connections closed", self.retired_closed),
            (
                "retired connections closed early",
                self.retired_closed_early,
            ),
            ("retries now (R16)", self.retries_now),
            ("retries now refused (I10)", self.retries_now_refused),
        ]
    }

    /// Each counter with its name.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        [
            ("deduplicated addresses", self.deduplicated_addresses),
            ("deduplicated failures", self.deduplicated_failures),
            ("immediate retries", self.immediate_retries),
            ("timer waits", self.timer_waits),
            (
                "closed during Connected handler",
                self.closed_during_connected_handler,
            ),
            (
                "closes cancelling an attempt",
                self.closes_cancelling_an_attempt,
            ),
            ("closes during a handler", self.closes_during_a_handler),
            ("closes while connected", self.closes_while_connected),
            ("stops after current (R11)", self.stops_after_current),
            ("aborts (R12)", self.aborts),
            (
                "aborted attempts' failures (R12)",
                self.aborted_attempt_failures,
            ),
            ("late connections", self.late_connections),
            ("stale inputs", self.stale_inputs),
        ]
    }
}

/// Checks a machine's trace against the invariants I1–I8, step by step.
///
/// Call [`on_effect`](Checker::on_effect) for each effect of the construction step and
/// then [`after_step`](Checker::after_step); for every later step call
/// [`on_input`](Checker::on_input) with the input (before or after feeding it — the
/// checker only reads it), [`on_effect`](Checker::on_effect) for each effect drained, then
/// [`after_step`](Checker::after_step) with the machine. Each returns the first violation.
pub struct Checker<A, C, E> {
    jitter: Jitter,
    twin: Option<RetryDelay>,
    step: u64,
    now: Instant,
    expects: Vec<Expect<A, E>>,
    handler: Option<(EventId, EventKind)>,
    round: Option<Round<A, E>>,
    inflight: Option<(AttemptId, Op)>,
    waiting: Option<Wait>,
    last_attempt: Option<AttemptInfo>,
    pending_connect: Option<(AttemptId, A)>,
    failures: u32,
    current: Option<ConnId>,
    disconnect_pending: bool,
    stop_after_current: bool,
    closed: bool,
    finished: bool,
    strays: BTreeSet<ConnId>,
    /// The same set as a bitmap by raw id, so that comparing it with the machine's
    /// `lingering_connections()` after every step costs one probe per entry, not a tree
    /// search (a long fuzz input can pile up hundreds of strays).
    stray_bits: Vec<u64>,
    /// Scratch bitmap for [`same_set`], all zero between uses.
    seen_bits: Vec<u64>,
    close_requested: BTreeSet<ConnId>,
    conns_issued: BTreeSet<ConnId>,
    attempts_issued: BTreeSet<AttemptId>,
    events_issued: BTreeSet<EventId>,
    coverage: Coverage,
    just_waiting: bool,
    /// The `Debug` hash of the connection this step's input delivered: what
    /// `BecameCurrent`, `AttemptOutcome(Ok)`, `Connected` or a stray's `CloseConnection`
    /// must carry. Compared within the step only (a connection's `Debug` may change later).
    step_conn: Option<u64>,
    /// The `Debug` hash of the connection that became current in this step.
    became_current: Option<u64>,
    /// The pending handover (R15).
    handover: Option<ShadowHandover<A>>,
    /// Its attempt's `StartTimer` is owed or was seen; its `GetAddress` not yet.
    handover_starting: bool,
    /// The handover attempt carried on into a new round (R15).
    carried: Option<ShadowCarried<A, E>>,
    /// Retired connections not yet asked to close, with their grace deadline and whether
    /// their close is owed by this step (R15).
    retired: Vec<(ConnId, Instant, bool)>,
    /// The latest attempt made the current connection (R15, I10 (a)).
    latest_made_current: bool,
    /// The latest attempt began before its predecessor's deadline by retry now (I10 (b)).
    latest_by_retry_now: bool,
    /// A retry now kept for the next wait (R16).
    retry_now_kept: bool,
    /// A retry now ended the wait: the next start may be early (R16).
    retry_now_armed: bool,
    /// A retry now came since the latest attempt began (to name I10 in a failure).
    retry_now_seen: bool,
    _conn: PhantomData<fn() -> C>,
}

impl<A, C, E> fmt::Debug for Checker<A, C, E>
where
    A: fmt::Debug,
    E: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checker")
            .field("step", &self.step)
            .field("handler", &self.handler)
            .field("inflight", &self.inflight)
            .field("waiting", &self.waiting)
            .field("current", &self.current)
            .field("closed", &self.closed)
            .field("finished", &self.finished)
            .field("strays", &self.strays)
            .finish_non_exhaustive()
    }
}

impl<A, C, E> Checker<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug,
    C: Clone + fmt::Debug,
    E: Clone + PartialEq + fmt::Debug,
{
    /// A checker for a machine that has just been built (step 0 owes
    /// `AttemptingToConnect`, R1).
    pub fn new(settings: CheckerSettings) -> Self {
        Checker {
            jitter: settings.jitter,
            twin: settings.delay,
            step: 0,
            now: Instant::ZERO,
            expects: vec![Expect::EmitAttempting],
            handler: None,
            round: None,
            inflight: None,
            waiting: None,
            last_attempt: None,
            pending_connect: None,
            failures: 0,
            current: None,
            disconnect_pending: false,
            stop_after_current: false,
            closed: false,
            finished: false,
            strays: BTreeSet::new(),
            stray_bits: Vec::new(),
            seen_bits: Vec::new(),
            close_requested: BTreeSet::new(),
            conns_issued: BTreeSet::new(),
            attempts_issued: BTreeSet::new(),
            events_issued: BTreeSet::new(),
            coverage: Coverage::default(),
            just_waiting: false,
            step_conn: None,
            became_current: None,
            handover: None,
            handover_starting: false,
            carried: None,
            retired: Vec::new(),
            latest_made_current: false,
            latest_by_retry_now: false,
            retry_now_kept: false,
            retry_now_armed: false,
            retry_now_seen: false,
            _conn: PhantomData,
        }
    }

    /// What the checked trace went through so far.
    pub fn coverage(&self) -> &Coverage {
        &self.coverage
    }

    /// The number of the step being checked (0 is the construction).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// True once the checker has seen `CloseFinished`.
    pub fn is_close_finished(&self) -> bool {
        self.finished
    }

    /// True once the checker expects the machine to count as closed (R8, R11).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Connections the machine has been asked to close (or that are current) and whose
    /// `Closed` input has not arrived: what a world still owes the machine.
    pub fn open_connections(&self) -> usize {
        self.strays.len() + usize::from(self.current.is_some()) + self.retired.len()
    }

    fn fail(&self, invariant: Invariant, message: String) -> Result<(), Violation> {
        Err(Violation {
            invariant,
            step: self.step,
            now: self.now,
            message,
        })
    }

    fn take_expect(&mut self, matches: impl Fn(&Expect<A, E>) -> bool) -> bool {
        if let Some(i) = self.expects.iter().position(matches) {
            self.expects.remove(i);
            true
        } else {
            false
        }
    }

    /// A new input, at `now`, starts a step. Call it once per input, before its effects.
    pub fn on_input(&mut self, now: Instant, input: &Input<A, C, E>) -> Result<(), Violation> {
        self.step += 1;
        self.now = now;
        self.expects.clear();
        self.just_waiting = false;
        self.became_current = None;
        self.step_conn = match input {
            Input::ConnectResult { result: Ok(c), .. } => Some(debug_hash(c)),
            _ => None,
        };
        let stale = match input {
            Input::AddressResult { attempt, .. } => {
                self.inflight != Some((*attempt, Op::Lookup))
                    && self.handover_attempt() != Some((*attempt, Op::Lookup))
                    && !self.carried_awaits(*attempt, Op::Lookup)
            }
            Input::ConnectResult {
                attempt,
                result: Err(_),
            } => {
                self.inflight != Some((*attempt, Op::Connect))
                    && self.handover_attempt() != Some((*attempt, Op::Connect))
                    && !self.carried_awaits(*attempt, Op::Connect)
            }
            Input::Closed { conn } => {
                self.current != Some(*conn)
                    && !self.strays.contains(conn)
                    && !self.retired.iter().any(|r| r.0 == *conn)
            }
            Input::EventHandled { event } => self.handler.map(|h| h.0) != Some(*event),
            _ => false,
        };
        if stale {
            self.coverage.stale_inputs += 1;
        }
        match input {
            Input::AddressResult { attempt, result } => {
                if self.inflight == Some((*attempt, Op::Lookup)) {
                    self.inflight = None;
                    if self.closed {
                        // The attempt that aborted (R12) ended: its failure is reported as
                        // any failure (R4), as the original does; an address is not
                        // connected to.
                        if let Err(e) = result {
                            self.on_aborted_failure(e);
                        }
                        return self.settled(now);
                    }
                    match result {
                        Ok(address) => self.on_address(*attempt, address),
                        Err(e) => self.on_failure(e),
                    }
                } else if self.handover_attempt() == Some((*attempt, Op::Lookup)) {
                    // R15: the handover's lookup: no event; its address is connected to.
                    match result {
                        Ok(address) => {
                            self.expects
                                .push(Expect::Connect(*attempt, address.clone()));
                            if let Some(h) = &mut self.handover {
                                h.attempt = Some((*attempt, Op::Connect));
                                h.address = Some(address.clone());
                            }
                        }
                        Err(_) => self.on_handover_failure(),
                    }
                } else if self.carried_awaits(*attempt, Op::Lookup)
                    && let Some(c) = &mut self.carried
                {
                    // R15: kept until the new round's first handlers return.
                    c.parked = Some(ShadowParked::Address(result.clone()));
                }
            }
            Input::ConnectResult { attempt, result } => {
                let ours = self.inflight == Some((*attempt, Op::Connect));
                if !ours && self.handover_attempt() == Some((*attempt, Op::Connect)) {
                    match result {
                        Ok(_) => self.on_handed_over(now),
                        Err(_) => self.on_handover_failure(),
                    }
                    return self.settled(now);
                }
                if !ours
                    && self.carried_awaits(*attempt, Op::Connect)
                    && let Some(c) = &mut self.carried
                {
                    c.parked = Some(match result {
                        Ok(conn) => ShadowParked::ConnectOk(debug_hash(conn)),
                        Err(e) => ShadowParked::ConnectErr(e.clone()),
                    });
                    return self.settled(now);
                }
                match result {
                    // The attempt that aborted (R12) ended; a connection it made is a stray
                    // to close before close finishes (I6).
                    Ok(_) if ours && self.closed => {
                        self.inflight = None;
                        self.coverage.late_connections += 1;
                        self.expects.push(Expect::CloseStray)
                    }
                    // Its failure is reported (R12 as in the original, R4).
                    Err(e) if ours && self.closed => {
                        self.inflight = None;
                        self.on_aborted_failure(e);
                    }
                    Ok(_) if ours => {
                        self.inflight = None;
                        self.on_connected();
                    }
                    Ok(_) => {
                        self.coverage.late_connections += 1;
                        self.expects.push(Expect::CloseStray)
                    }
                    Err(e) if ours => {
                        self.inflight = None;
                        self.on_failure(e);
                    }
                    Err(_) => {}
                }
            }
            Input::Closed { conn } => {
                if self.current == Some(*conn) {
                    self.current = None;
                    self.expects.push(Expect::NoLongerCurrent(*conn));
                    if self.stop_after_current && !self.closed {
                        self.mark_closed();
                    }
                    // R15: a handover waiting for its timer ends with the connection it was
                    // to replace; one whose attempt is in flight carries on.
                    let handover = self.handover.take();
                    self.handover_starting = false;
                    let in_flight = handover
                        .and_then(|h| h.attempt.map(|(attempt, op)| (attempt, op, h.address)));
                    match self.handler {
                        Some((_, EventKind::Connected | EventKind::HandedOver)) => {
                            if matches!(self.handler, Some((_, EventKind::Connected))) {
                                self.coverage.closed_during_connected_handler += 1;
                            }
                            self.disconnect_pending = true;
                            // No handover attempt begins while that handler runs; should
                            // one be in flight, it is cancelled rather than lost.
                            if let Some((attempt, _, _)) = in_flight {
                                self.expects.push(Expect::Cancel(attempt));
                            }
                        }
                        Some((_, kind)) => {
                            // No other handler runs while a connection is current; the
                            // machine's own effects said otherwise.
                            return self.fail(
                                Invariant::I1,
                                format!("{kind:?} handler running while {conn} was current"),
                            );
                        }
                        None => {
                            self.expects.push(Expect::EmitDisconnected);
                            if let Some((attempt, op, address)) = in_flight {
                                self.coverage.carried_attempts += 1;
                                self.carried = Some(ShadowCarried {
                                    attempt,
                                    address: if op == Op::Connect { address } else { None },
                                    round_begun: false,
                                    announced: false,
                                    parked: None,
                                });
                            }
                        }
                    }
                } else if self.strays.remove(conn) {
                    set_bit(&mut self.stray_bits, *conn, false);
                    // One of ours finished closing; close may now finish (checked later).
                } else if let Some(i) = self.retired.iter().position(|r| r.0 == *conn) {
                    // R15: a retired connection closed during its grace: nothing to report.
                    self.retired.remove(i);
                    self.coverage.retired_closed_early += 1;
                }
            }
            Input::TimerFired => {}
            Input::CloseRequested => self.close(),
            Input::CloseWhenCurrentConnectionIsClosed => self.close_when_current_closed(),
            Input::Abort { error } => {
                if !self.closed {
                    self.coverage.aborts += 1;
                    self.expects.push(Expect::OutcomeAborted(error.clone()));
                    if self.current.is_none() && self.inflight.is_some() {
                        // R12: `abort` comes from inside the attempt, which is awaited,
                        // not cancelled; the persistent connection is closed at once.
                        self.mark_closed();
                        self.waiting = None;
                    } else {
                        self.close_when_current_closed();
                    }
                }
            }
            Input::EventHandled { event } => {
                if let Some((id, kind)) = self.handler
                    && id == *event
                {
                    self.handler = None;
                    self.after_handler(kind);
                }
            }
            Input::Handover { reason, grace } => {
                // R15: only while connected and not stopping.
                if !self.closed
                    && !self.stop_after_current
                    && let Some(from) = self.current
                {
                    match &mut self.handover {
                        Some(h) => {
                            h.reason = *reason;
                            h.grace = *grace;
                        }
                        None => {
                            self.handover = Some(ShadowHandover {
                                reason: *reason,
                                grace: *grace,
                                from,
                                attempt: None,
                                address: None,
                            })
                        }
                    }
                }
            }
            Input::CancelHandover => {
                if self.cancel_handover() {
                    self.retry_now_kept = false;
                }
            }
            Input::RetryNow { .. } => {
                // R16: kept for the wait under way (taken in `settle`) or the next one.
                if !self.closed && (self.current.is_none() || self.handover.is_some()) {
                    self.retry_now_kept = true;
                    self.retry_now_seen = true;
                }
            }
        }
        self.settled(now)
    }

    /// The handover's attempt in flight and what it waits for (R15).
    fn handover_attempt(&self) -> Option<(AttemptId, Op)> {
        self.handover.as_ref().and_then(|h| h.attempt)
    }

    /// Whether the carried attempt (R15) waits for this kind of result and has none yet.
    fn carried_awaits(&self, attempt: AttemptId, op: Op) -> bool {
        self.carried.as_ref().is_some_and(|c| {
            c.attempt == attempt && c.parked.is_none() && c.address.is_some() == (op == Op::Connect)
        })
    }

    /// R3: an address for the attempt in flight (or the carried one, R15).
    fn on_address(&mut self, attempt: AttemptId, address: &A) {
        let repeat = self.round.as_ref().and_then(|r| r.last_address.as_ref()) == Some(address);
        if repeat {
            self.coverage.deduplicated_addresses += 1;
            self.expects.push(Expect::Connect(attempt, address.clone()));
        } else {
            self.pending_connect = Some((attempt, address.clone()));
            self.expects.push(Expect::EmitObtained(address.clone()));
        }
    }

    /// R5: the attempt in flight made a connection.
    fn on_connected(&mut self) {
        self.failures = 0;
        self.latest_made_current = true;
        self.retry_now_kept = false;
        self.expects.push(Expect::BecameCurrent);
        self.expects.push(Expect::OutcomeOk);
        self.expects.push(Expect::EmitConnected);
    }

    /// R15: the handover's connection replaces the current one; the old one is retired.
    fn on_handed_over(&mut self, now: Instant) {
        let Some(h) = self.handover.take() else {
            return;
        };
        self.coverage.handovers += 1;
        self.failures = 0;
        self.latest_made_current = true;
        self.retry_now_kept = false;
        if let Some(old) = self.current {
            self.expects.push(Expect::BecameCurrentReplacing(old));
            self.retired.push((old, now.saturating_add(h.grace), false));
        }
        self.expects.push(Expect::EmitHandedOver(h.reason));
    }

    /// R15: a failed handover attempt: counted (R12), silent, retried on its timer.
    fn on_handover_failure(&mut self) {
        self.coverage.handover_failures += 1;
        self.failures = self.failures.saturating_add(1);
        if let Some(h) = &mut self.handover {
            h.attempt = None;
            h.address = None;
        }
    }

    /// R15: the pending handover ends without success; its attempt in flight is cancelled.
    fn cancel_handover(&mut self) -> bool {
        let Some(h) = self.handover.take() else {
            return false;
        };
        self.handover_starting = false;
        self.coverage.handovers_cancelled += 1;
        if let Some((attempt, _)) = h.attempt {
            self.expects.push(Expect::Cancel(attempt));
        }
        true
    }

    /// The persistent connection counts as closed (R8, R11, R12): R10 waiters are told,
    /// retired connections are closed at once (R15), a kept retry now is dropped.
    fn mark_closed(&mut self) {
        self.closed = true;
        self.expects.push(Expect::OutcomeClosed);
        self.retry_now_kept = false;
        self.retry_now_armed = false;
        for i in 0..self.retired.len() {
            if !self.retired[i].2 {
                self.retired[i].2 = true;
                self.expects.push(Expect::CloseRetired(self.retired[i].0));
            }
        }
    }

    /// R15: the carried attempt's next step, once the handler before it returned.
    fn carry_on(&mut self) {
        let Some(mut c) = self.carried.take() else {
            return;
        };
        if !c.round_begun {
            c.round_begun = true;
            self.expects.push(Expect::EmitAttempting);
            self.carried = Some(c);
            return;
        }
        if !c.announced
            && let Some(address) = &c.address
        {
            c.announced = true;
            self.expects.push(Expect::EmitObtained(address.clone()));
            self.carried = Some(c);
            return;
        }
        match c.parked {
            Some(ShadowParked::Address(Ok(address))) => self.on_address(c.attempt, &address),
            Some(ShadowParked::Address(Err(e)) | ShadowParked::ConnectErr(e)) => {
                self.on_failure(&e)
            }
            Some(ShadowParked::ConnectOk(hash)) => {
                self.step_conn = Some(hash);
                self.on_connected();
            }
            None => {
                let op = if c.address.is_some() {
                    Op::Connect
                } else {
                    Op::Lookup
                };
                self.inflight = Some((c.attempt, op));
            }
        }
    }

    fn settled(&mut self, now: Instant) -> Result<(), Violation> {
        self.settle(now);
        Ok(())
    }

    fn on_failure(&mut self, e: &E) {
        self.failures = self.failures.saturating_add(1);
        self.expects.push(Expect::OutcomeFailed(e.clone()));
        let repeat = self.round.as_ref().and_then(|r| r.last_failure.as_ref()) == Some(e);
        if repeat {
            self.coverage.deduplicated_failures += 1;
            self.waiting = Some(Wait::Retry);
            self.just_waiting = true;
        } else {
            self.expects.push(Expect::EmitFailed(e.clone()));
        }
    }

    /// R12: the failure of the attempt in flight when `abort` came: counted and
    /// de-duplicated as any failure (R4), its `FailedToConnect` awaited before close
    /// finishes. R10 waiters were answered by the abort already.
    fn on_aborted_failure(&mut self, e: &E) {
        self.failures = self.failures.saturating_add(1);
        self.coverage.aborted_attempt_failures += 1;
        let repeat = self.round.as_ref().and_then(|r| r.last_failure.as_ref()) == Some(e);
        if repeat {
            self.coverage.deduplicated_failures += 1;
        } else {
            self.expects.push(Expect::EmitFailed(e.clone()));
        }
    }

    fn after_handler(&mut self, kind: EventKind) {
        match kind {
            // R6 (and R15: a handover asked meanwhile may begin, in `settle`).
            EventKind::Connected | EventKind::HandedOver => {
                if self.disconnect_pending {
                    self.disconnect_pending = false;
                    self.expects.push(Expect::EmitDisconnected);
                }
            }
            _ if self.closed => {}
            // R15: the carried attempt's round goes on without waiting.
            _ if self.carried.is_some() => self.carry_on(),
            EventKind::AttemptingToConnect => self.expects.push(Expect::StartTimer),
            EventKind::ObtainedAddress => {
                if let Some((attempt, address)) = self.pending_connect.take() {
                    self.expects.push(Expect::Connect(attempt, address));
                }
            }
            EventKind::FailedToConnect => {
                self.waiting = Some(Wait::Retry);
                self.just_waiting = true;
            }
            EventKind::Disconnected => {
                self.waiting = Some(Wait::Reconnect);
                self.just_waiting = true;
            }
        }
    }

    /// R15: a pending handover waits for its timer (connected, no handler running, no
    /// attempt of it in flight or starting).
    fn handover_waiting(&self) -> bool {
        !self.closed
            && !self.handover_starting
            && self.handler.is_none()
            && self.current.is_some()
            && self.handover.as_ref().is_some_and(|h| h.attempt.is_none())
    }

    /// R4, R6, I5: once waiting and the timer has fired, the next step is due now; R16:
    /// so is it when retry now ends the wait; R15: a retired connection whose grace ended
    /// is owed its close.
    fn settle(&mut self, now: Instant) {
        for i in 0..self.retired.len() {
            if !self.retired[i].2 && self.retired[i].1 <= now {
                self.retired[i].2 = true;
                self.expects.push(Expect::CloseRetired(self.retired[i].0));
            }
        }
        if self.closed {
            self.waiting = None;
            return;
        }
        let deadline = self.last_attempt.map_or(Instant::ZERO, |a| a.deadline);
        if self.just_waiting {
            if now < deadline {
                self.coverage.timer_waits += 1;
            } else if self.waiting == Some(Wait::Retry) {
                self.coverage.immediate_retries += 1;
            }
        }
        let handover_waiting = self.handover_waiting();
        if (self.waiting.is_some() || handover_waiting) && now < deadline && self.retry_now_kept {
            self.retry_now_kept = false;
            // I10 (b): never two attempts in a row by retry now.
            if self.latest_by_retry_now {
                self.coverage.retries_now_refused += 1;
            } else {
                self.coverage.retries_now += 1;
                self.retry_now_armed = true;
            }
        }
        let due = now >= deadline || self.retry_now_armed;
        if let Some(wait) = self.waiting
            && due
        {
            self.waiting = None;
            self.expects.push(match wait {
                Wait::Retry => Expect::StartTimer,
                Wait::Reconnect => Expect::EmitAttempting,
            });
        } else if handover_waiting && (due || self.latest_made_current) {
            // R15: at once after the attempt that made the connection, else on its timer.
            self.handover_starting = true;
            self.expects.push(Expect::StartTimer);
        }
    }

    /// The connection an effect carries is the one this step's input delivered.
    fn check_conn(&self, c: &C, what: &str) -> Result<(), Violation> {
        match self.step_conn {
            Some(h) if h != debug_hash(c) => self.fail(
                Invariant::I8,
                format!("{what} carries {c:?}, not the connection connect just returned"),
            ),
            _ => Ok(()),
        }
    }

    /// R8.
    fn close(&mut self) {
        if self.closed {
            // Only an attempt that aborted (R12) can still be in flight: close cancels it.
            if let Some((attempt, _)) = self.inflight.take() {
                self.coverage.closes_cancelling_an_attempt += 1;
                self.expects.push(Expect::Cancel(attempt));
            }
            return;
        }
        self.mark_closed();
        if self.handler.is_some() {
            self.coverage.closes_during_a_handler += 1;
        }
        if self.current.is_some() {
            self.coverage.closes_while_connected += 1;
        }
        if let Some((attempt, _)) = self.inflight.take() {
            self.coverage.closes_cancelling_an_attempt += 1;
            self.expects.push(Expect::Cancel(attempt));
        }
        self.waiting = None;
        // R15: a carried attempt is cancelled like any attempt in progress, and a
        // connection it already gave is closed; a pending handover ends.
        if let Some(c) = self.carried.take() {
            self.coverage.closes_cancelling_an_attempt += 1;
            self.expects.push(Expect::Cancel(c.attempt));
            if let Some(ShadowParked::ConnectOk(hash)) = c.parked {
                self.step_conn = Some(hash);
                self.coverage.late_connections += 1;
                self.expects.push(Expect::CloseStray);
            }
        }
        self.cancel_handover();
        if let Some(conn) = self.current
            && !self.close_requested.contains(&conn)
        {
            self.expects.push(Expect::CloseCurrent(conn));
        }
    }

    /// R11.
    fn close_when_current_closed(&mut self) {
        if self.closed {
            return;
        }
        if self.current.is_some() {
            if !self.stop_after_current {
                self.coverage.stops_after_current += 1;
            }
            self.stop_after_current = true;
            // R15: no new connection after R11.
            self.cancel_handover();
        } else {
            self.close();
        }
    }

    /// One effect the machine produced in the current step, in order.
    pub fn on_effect(&mut self, now: Instant, effect: &Effect<A, C, E>) -> Result<(), Violation> {
        self.now = now;
        match effect {
            Effect::Emit { id, event } => self.on_emit(*id, event),
            Effect::StartTimer {
                attempt,
                base,
                delay,
                deadline,
            } => self.on_start_timer(now, *attempt, *base, *delay, *deadline),
            Effect::GetAddress { attempt } => {
                if self.take_expect(|x| matches!(x, Expect::GetAddress(a) if a == attempt)) {
                    self.inflight = Some((*attempt, Op::Lookup));
                    Ok(())
                } else if self
                    .take_expect(|x| matches!(x, Expect::GetAddressHandover(a) if a == attempt))
                {
                    self.handover_starting = false;
                    if let Some(h) = &mut self.handover {
                        h.attempt = Some((*attempt, Op::Lookup));
                    }
                    Ok(())
                } else {
                    self.fail(
                        Invariant::I4,
                        format!(
                            "GetAddress for {attempt} without its own StartTimer just before (R2)"
                        ),
                    )
                }
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                if !self.take_expect(
                    |x| matches!(x, Expect::Connect(a, addr) if a == attempt && addr == address),
                ) {
                    let invariant = if self.closed {
                        Invariant::I7
                    } else {
                        Invariant::I5
                    };
                    return self.fail(
                        invariant,
                        format!(
                            "Connect {{ {attempt}, {address:?} }} not called for: connect only to \
                             the address just obtained for the attempt in flight, once its \
                             event (if any) is handled (R3, R8)"
                        ),
                    );
                }
                if *consecutive_unsuccessful_attempts != self.failures {
                    return self.fail(
                        Invariant::I8,
                        format!(
                            "connect context says {consecutive_unsuccessful_attempts} consecutive \
                             unsuccessful attempts, the trace shows {} (R12)",
                            self.failures
                        ),
                    );
                }
                // R15: the handover's connect is not the round's attempt in flight.
                if self.handover_attempt() != Some((*attempt, Op::Connect)) {
                    self.inflight = Some((*attempt, Op::Connect));
                }
                Ok(())
            }
            Effect::CancelAttempt { attempt } => {
                if self.take_expect(|x| matches!(x, Expect::Cancel(a) if a == attempt)) {
                    Ok(())
                } else if self.carried.as_ref().is_some_and(|c| c.attempt == *attempt) {
                    self.fail(
                        Invariant::I11,
                        format!("CancelAttempt for {attempt}: a handover attempt in flight when the current connection went away carries on as the new round's first (R15)"),
                    )
                } else {
                    self.fail(
                        Invariant::I7,
                        format!(
                            "CancelAttempt for {attempt}, which is not in flight at a close (R8)"
                        ),
                    )
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                let replacing = self.current.and_then(|old| {
                    self.take_expect(
                        |x| matches!(x, Expect::BecameCurrentReplacing(c) if *c == old),
                    )
                    .then_some(old)
                });
                if replacing.is_none() {
                    if let Some(old) = self.current {
                        return self.fail(
                            Invariant::I11,
                            format!("{conn} became current while {old} still is, outside a successful handover (R15): two current connections"),
                        );
                    }
                    if !self.take_expect(|x| matches!(x, Expect::BecameCurrent)) {
                        return self.fail(
                            Invariant::I8,
                            format!("{conn} became current without a successful connect for the attempt in flight (R5)"),
                        );
                    }
                }
                if !self.conns_issued.insert(*conn) {
                    return self.fail(Invariant::I6, format!("{conn} issued twice"));
                }
                self.check_conn(connection, "BecameCurrent (R5)")?;
                self.became_current = Some(debug_hash(connection));
                self.current = Some(*conn);
                Ok(())
            }
            Effect::NoLongerCurrent { conn } => {
                if self.take_expect(|x| matches!(x, Expect::NoLongerCurrent(c) if c == conn)) {
                    Ok(())
                } else if self
                    .expects
                    .iter()
                    .any(|x| matches!(x, Expect::BecameCurrentReplacing(c) if c == conn))
                {
                    self.fail(
                        Invariant::I11,
                        format!("NoLongerCurrent for {conn} during a successful handover: an instant without a current connection, or a retired connection reported as ended (R15)"),
                    )
                } else {
                    self.fail(
                        Invariant::I8,
                        format!("NoLongerCurrent for {conn}, which did not just finish closing as the current connection (R6)"),
                    )
                }
            }
            Effect::CloseConnection { conn, connection } => {
                if self.close_requested.contains(conn) {
                    return self.fail(Invariant::I6, format!("{conn} asked to close twice"));
                }
                if self.take_expect(|x| matches!(x, Expect::CloseCurrent(c) if c == conn)) {
                    self.close_requested.insert(*conn);
                    Ok(())
                } else if self.take_expect(|x| matches!(x, Expect::CloseRetired(c) if c == conn)) {
                    // R15: the retired connection's grace ended (or close came).
                    self.retired.retain(|r| r.0 != *conn);
                    self.coverage.retired_closed += 1;
                    self.close_requested.insert(*conn);
                    self.strays.insert(*conn);
                    set_bit(&mut self.stray_bits, *conn, true);
                    Ok(())
                } else if self.take_expect(|x| matches!(x, Expect::CloseStray)) {
                    self.check_conn(connection, "the late connection's CloseConnection (R8)")?;
                    if !self.conns_issued.insert(*conn) {
                        return self.fail(
                            Invariant::I6,
                            format!("stray connection given the id {conn}, already issued"),
                        );
                    }
                    self.close_requested.insert(*conn);
                    self.strays.insert(*conn);
                    set_bit(&mut self.stray_bits, *conn, true);
                    Ok(())
                } else if self.retired.iter().any(|r| r.0 == *conn) {
                    self.fail(
                        Invariant::I11,
                        format!(
                            "CloseConnection for the retired {conn} before its grace ended (R15)"
                        ),
                    )
                } else {
                    self.fail(
                        Invariant::I6,
                        format!("CloseConnection for {conn}, not called for: only close() closes the current connection, and only a connection outside its attempt is closed at once (R8)"),
                    )
                }
            }
            Effect::AttemptOutcome(outcome) => {
                let ok = match outcome {
                    Ok(c) => {
                        self.check_conn(c, "AttemptOutcome(Ok) (R10)")?;
                        self.take_expect(|x| matches!(x, Expect::OutcomeOk))
                    }
                    Err(AttemptError::Failed(e)) => {
                        self.take_expect(|x| matches!(x, Expect::OutcomeFailed(f) if f == e))
                    }
                    Err(AttemptError::Aborted(e)) => {
                        self.take_expect(|x| matches!(x, Expect::OutcomeAborted(f) if f == e))
                    }
                    Err(AttemptError::Closed) => {
                        self.take_expect(|x| matches!(x, Expect::OutcomeClosed))
                    }
                };
                if ok {
                    Ok(())
                } else {
                    self.fail(
                        Invariant::I8,
                        format!(
                            "AttemptOutcome({outcome:?}) does not answer this step's input (R10)"
                        ),
                    )
                }
            }
            Effect::CloseFinished => self.on_close_finished(),
        }
    }

    fn on_emit(&mut self, id: EventId, event: &Event<A, C, E>) -> Result<(), Violation> {
        let kind = event.kind();
        if self.finished {
            return self.fail(
                Invariant::I7,
                format!("{event:?} emitted after close finished (R8)"),
            );
        }
        if let Some((other, other_kind)) = self.handler {
            return self.fail(
                Invariant::I3,
                format!("{event:?} emitted while {other_kind:?} ({other}) is unhandled"),
            );
        }
        if !self.events_issued.insert(id) {
            return self.fail(Invariant::I3, format!("event id {id} issued twice"));
        }
        // I1: the grammar, judged on the events alone.
        let grammatical = match (&self.round, kind) {
            (None, k) => k == EventKind::AttemptingToConnect,
            (Some(r), EventKind::AttemptingToConnect) => !r.connected || r.disconnected,
            (Some(r), EventKind::ObtainedAddress | EventKind::FailedToConnect) => !r.connected,
            (Some(r), EventKind::Connected) => !r.connected,
            (Some(r), EventKind::Disconnected | EventKind::HandedOver) => {
                r.connected && !r.disconnected
            }
        };
        if !grammatical {
            return self.fail(
                Invariant::I1,
                format!("{event:?} breaks the grammar AttemptingToConnect (ObtainedAddress | FailedToConnect)* [Connected HandedOver* Disconnected]"),
            );
        }
        // Was it called for?
        let expected = match event {
            Event::AttemptingToConnect => self.take_expect(|x| matches!(x, Expect::EmitAttempting)),
            Event::ObtainedAddress(a) => {
                self.take_expect(|x| matches!(x, Expect::EmitObtained(b) if b == a))
            }
            Event::FailedToConnect(e) => {
                self.take_expect(|x| matches!(x, Expect::EmitFailed(f) if f == e))
            }
            Event::Connected(c) => {
                self.check_conn(c, "Connected (R5)")?;
                self.take_expect(|x| matches!(x, Expect::EmitConnected))
            }
            Event::Disconnected => self.take_expect(|x| matches!(x, Expect::EmitDisconnected)),
            Event::HandedOver { connection, reason } => {
                self.check_conn(connection, "HandedOver (R15)")?;
                self.take_expect(|x| matches!(x, Expect::EmitHandedOver(r) if r == reason))
            }
        };
        if !expected {
            let round = self.round.as_ref();
            let (invariant, why) = match event {
                Event::ObtainedAddress(a)
                    if round.and_then(|r| r.last_address.as_ref()) == Some(a) =>
                {
                    (Invariant::I2, "repeats the round's previous address (R3)")
                }
                Event::FailedToConnect(e)
                    if round.and_then(|r| r.last_failure.as_ref()) == Some(e) =>
                {
                    (Invariant::I2, "repeats the round's previous failure (R4)")
                }
                Event::AttemptingToConnect if self.closed => {
                    (Invariant::I7, "a round begins after close (R8)")
                }
                Event::AttemptingToConnect => (
                    Invariant::I4,
                    "a new round begins before the rules allow: after Disconnected is handled and the retry timer has fired (R6)",
                ),
                Event::Disconnected => (
                    Invariant::I1,
                    "Disconnected without the current connection having finished closing, or before its Connected handler finished (R6)",
                ),
                Event::HandedOver { .. } => (
                    Invariant::I11,
                    "without a handover's connect having just succeeded, or with another reason (R15)",
                ),
                _ => (
                    Invariant::I1,
                    "not called for by this step's input (R3, R4, R5)",
                ),
            };
            return self.fail(invariant, format!("{event:?} {why}"));
        }
        if matches!(kind, EventKind::Connected | EventKind::HandedOver) && self.current.is_none() {
            return self.fail(
                Invariant::I8,
                "Connected emitted before the connection became current (R5)".to_string(),
            );
        }
        match event {
            Event::AttemptingToConnect => {
                self.round = Some(Round {
                    last_address: None,
                    last_failure: None,
                    connected: false,
                    disconnected: false,
                })
            }
            Event::ObtainedAddress(a) => {
                if let Some(r) = &mut self.round {
                    r.last_address = Some(a.clone());
                }
            }
            Event::FailedToConnect(e) => {
                if let Some(r) = &mut self.round {
                    r.last_failure = Some(e.clone());
                }
            }
            Event::Connected(_) => {
                if let Some(r) = &mut self.round {
                    r.connected = true;
                }
            }
            Event::Disconnected => {
                if let Some(r) = &mut self.round {
                    r.disconnected = true;
                }
            }
            Event::HandedOver { .. } => {}
        }
        self.handler = Some((id, kind));
        Ok(())
    }

    fn on_start_timer(
        &mut self,
        now: Instant,
        attempt: AttemptId,
        base: Duration,
        delay: Duration,
        deadline: Instant,
    ) -> Result<(), Violation> {
        if self.closed {
            return self.fail(
                Invariant::I7,
                format!("attempt {attempt} began after close (R8)"),
            );
        }
        let handover = self.handover_starting;
        let early = self.last_attempt.is_some_and(|prev| now < prev.deadline);
        if let Some(prev) = self.last_attempt
            && early
            && !self.retry_now_armed
            && !(handover && self.latest_made_current)
        {
            // I10: only a handover right after a connection was made (R15), or retry now
            // not twice in a row (R16), begins before the previous deadline.
            let invariant = if self.retry_now_seen || handover {
                Invariant::I10
            } else {
                Invariant::I4
            };
            return self.fail(
                invariant,
                format!(
                    "attempt {attempt} began at {:?}, before the previous attempt {}'s retry timer fires at {:?} (R2, R4; R15, R16: I10)",
                    now.since_origin(),
                    prev.id,
                    prev.deadline.since_origin()
                ),
            );
        }
        if !self.take_expect(|x| matches!(x, Expect::StartTimer)) {
            if let Some(Expect::EmitFailed(e)) = self
                .expects
                .iter()
                .find(|x| matches!(x, Expect::EmitFailed(_)))
            {
                return self.fail(
                    Invariant::I2,
                    format!("FailedToConnect({e:?}) differs from the round's previous failure but was not reported before attempt {attempt} began (R4)"),
                );
            }
            return self.fail(
                Invariant::I4,
                format!("attempt {attempt} began when no attempt may: mid-round only after a failure is handled, first of a round only after AttemptingToConnect is handled (R1, R2, R4)"),
            );
        }
        if !self.attempts_issued.insert(attempt) {
            return self.fail(Invariant::I4, format!("attempt id {attempt} issued twice"));
        }
        if let Some(twin) = &mut self.twin {
            let want = twin.base_delay(self.failures);
            if want != base {
                return self.fail(
                    Invariant::I4,
                    format!(
                        "base delay {base:?} for attempt {attempt}, the policy gives {want:?} after {} consecutive failures (R2)",
                        self.failures
                    ),
                );
            }
        }
        if !within_jitter(self.jitter, base, delay) {
            return self.fail(
                Invariant::I4,
                format!(
                    "delay {delay:?} is outside {:?} of base {base:?} (R7)",
                    self.jitter
                ),
            );
        }
        if deadline != now.saturating_add(delay) {
            return self.fail(
                Invariant::I4,
                format!(
                    "deadline {:?} is not the attempt's start {:?} plus its delay {delay:?} (R2)",
                    deadline.since_origin(),
                    now.since_origin()
                ),
            );
        }
        self.last_attempt = Some(AttemptInfo {
            id: attempt,
            deadline,
        });
        if early && handover && !self.retry_now_armed {
            self.coverage.early_handovers += 1;
        }
        self.latest_by_retry_now = early && self.retry_now_armed;
        self.retry_now_armed = false;
        self.retry_now_kept = false;
        self.retry_now_seen = false;
        self.latest_made_current = false;
        self.expects.push(if handover {
            Expect::GetAddressHandover(attempt)
        } else {
            Expect::GetAddress(attempt)
        });
        Ok(())
    }

    fn on_close_finished(&mut self) -> Result<(), Violation> {
        if self.finished {
            return self.fail(Invariant::I7, "CloseFinished emitted twice".to_string());
        }
        let why = if !self.closed {
            Some("close was not requested (R8, R11)".to_string())
        } else if let Some((id, kind)) = self.handler {
            Some(format!("the {kind:?} handler ({id}) is still running (R8)"))
        } else if let Some((attempt, _)) = self.inflight {
            Some(format!("attempt {attempt} is in flight (R8)"))
        } else if let Some(conn) = self.current {
            Some(format!("{conn} is current and open (R8)"))
        } else if let Some(conn) = self.strays.iter().next() {
            Some(format!("{conn} has not finished closing (R8)"))
        } else if let Some((conn, ..)) = self.retired.first() {
            Some(format!("the retired {conn} is still open (R8, R15)"))
        } else if let Some(c) = &self.carried {
            Some(format!(
                "the carried attempt {} is in flight (R8, R15)",
                c.attempt
            ))
        } else if self.expects.iter().any(|x| {
            matches!(
                x,
                Expect::EmitDisconnected
                    | Expect::EmitConnected
                    | Expect::EmitAttempting
                    | Expect::EmitFailed(_)
            )
        }) {
            Some("an event is still owed (R8)".to_string())
        } else {
            None
        };
        match why {
            Some(why) => self.fail(Invariant::I7, format!("CloseFinished while {why}")),
            None => {
                self.finished = true;
                Ok(())
            }
        }
    }

    /// The step's effects are drained: check what is owed and the machine's queries.
    pub fn after_step(
        &mut self,
        now: Instant,
        view: &(impl MachineView + ?Sized),
    ) -> Result<(), Violation> {
        self.now = now;
        if let Some(missing) = self.expects.first() {
            let message = format!("missing effect: {}: {missing:?}", missing.why());
            // I10: a retry now that ended the wait must make the next step begin now.
            let invariant = if self.retry_now_armed
                && matches!(missing, Expect::StartTimer | Expect::EmitAttempting)
            {
                Invariant::I10
            } else {
                missing.invariant_if_missing()
            };
            return self.fail(invariant, message);
        }
        if self.closed
            && !self.finished
            && self.handler.is_none()
            && self.inflight.is_none()
            && self.current.is_none()
            && self.strays.is_empty()
        {
            return self.fail(
                Invariant::I7,
                "close did not finish though nothing is open, in flight or running (R8)"
                    .to_string(),
            );
        }
        if view.is_closed() != self.closed {
            return self.fail(
                Invariant::I7,
                format!(
                    "is_closed() is {}, docs/behaviour.md says {} (R8, R11)",
                    view.is_closed(),
                    self.closed
                ),
            );
        }
        if view.is_close_finished() != self.finished {
            return self.fail(
                Invariant::I7,
                format!(
                    "is_close_finished() is {}, the trace says {}",
                    view.is_close_finished(),
                    self.finished
                ),
            );
        }
        if view.current_conn_id() != self.current {
            return self.fail(
                Invariant::I8,
                format!(
                    "current connection is {:?}, the trace says {:?} (R5, R6, R9)",
                    view.current_conn_id(),
                    self.current
                ),
            );
        }
        if let Some(n) = view.consecutive_unsuccessful_attempts()
            && n != self.failures
        {
            return self.fail(
                Invariant::I8,
                format!(
                    "consecutive_unsuccessful_attempts() is {n}, the trace shows {} (R12)",
                    self.failures
                ),
            );
        }
        if let Some(lingering) = view.lingering_connections()
            && (lingering.len() != self.strays.len()
                || !same_set(lingering, &self.stray_bits, &mut self.seen_bits))
        {
            return self.fail(
                Invariant::I6,
                format!(
                    "lingering_connections() is {lingering:?}, the trace shows {:?} still closing",
                    self.strays
                ),
            );
        }
        if let Some(hash) = view.current_connection_hash() {
            let ok = match (hash, self.became_current) {
                (Some(h), Some(want)) => h == want,
                (h, _) => h.is_some() == self.current.is_some(),
            };
            if !ok {
                return self.fail(
                    Invariant::I8,
                    format!(
                        "current_connection() disagrees with the trace's current connection {:?} (R5, R6, R9)",
                        self.current
                    ),
                );
            }
        }
        if self.finished
            && let Some(t) = view.poll_timeout()
        {
            return self.fail(
                Invariant::I6,
                format!("close finished but poll_timeout() still asks for a timer at {t:?}"),
            );
        }
        if let Some(state) = view.handover_state() {
            let shadow = self
                .handover
                .as_ref()
                .map(|h| (h.from, h.attempt.map(|(a, _)| a)));
            if state != shadow {
                return self.fail(
                    Invariant::I11,
                    format!("handover() is {state:?}, the trace says {shadow:?} (R15)"),
                );
            }
        }
        if let Some(grace) = self.retired.iter().map(|r| r.1).min() {
            match view.poll_timeout() {
                Some(t) if t <= grace => {}
                other => {
                    return self.fail(
                        Invariant::I11,
                        format!(
                            "a retired connection's grace ends at {:?} but poll_timeout() is {other:?}: a driver sleeping on it would close it late (R15)",
                            grace.since_origin()
                        ),
                    );
                }
            }
        }
        if self.waiting.is_some() || self.handover_waiting() {
            let deadline = self.last_attempt.map_or(Instant::ZERO, |a| a.deadline);
            match view.poll_timeout() {
                Some(t) if t <= deadline => {}
                other => {
                    return self.fail(
                        Invariant::I5,
                        format!(
                            "waiting for the retry timer at {:?} but poll_timeout() is {other:?} (state {:?}): a driver sleeping on it would idle past the deadline",
                            deadline.since_origin(),
                            view.state()
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A [`Machine`] driven under a [`Checker`]: every step is checked as it happens.
///
/// The simplest way to check arbitrary input sequences (fuzz targets, property tests).
///
/// ```
/// use core::time::Duration;
/// use persistent_connection_core::{Config, Effect, Input, Instant, RetryPolicy};
/// use persistent_connection_sim::checker::CheckedMachine;
///
/// let config = Config { seed: 1, retry: RetryPolicy::constant(Duration::from_secs(1)) };
/// let mut m: CheckedMachine<u16, u32, &str> = CheckedMachine::new(config).unwrap();
/// let Some(Effect::Emit { id, .. }) = m.effects().first().cloned() else { panic!() };
/// // Never-issued ids and stray results are fine: the machine ignores them.
/// m.handle(Instant::ZERO, Input::Closed { conn: persistent_connection_core::ConnId::from_raw(9) }).unwrap();
/// m.handle(Instant::ZERO, Input::EventHandled { event: id }).unwrap();
/// assert!(matches!(m.effects()[1], Effect::GetAddress { .. }));
/// ```
pub struct CheckedMachine<A, C, E> {
    machine: Machine<A, C, E>,
    checker: Checker<A, C, E>,
    effects: Vec<Effect<A, C, E>>,
    now: Instant,
}

impl<A, C, E> fmt::Debug for CheckedMachine<A, C, E>
where
    A: fmt::Debug,
    E: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedMachine")
            .field("machine", &self.machine)
            .field("checker", &self.checker)
            .finish_non_exhaustive()
    }
}

impl<A, C, E> CheckedMachine<A, C, E>
where
    A: Clone + PartialEq + fmt::Debug,
    C: Clone + fmt::Debug,
    E: Clone + PartialEq + fmt::Debug,
{
    /// Builds the machine at time zero and checks its construction step. The checker's
    /// settings come from `config.retry` ([`CheckerSettings::for_policy`]).
    pub fn new(config: persistent_connection_core::Config) -> Result<Self, Violation> {
        let settings = CheckerSettings::for_policy(&config.retry);
        let machine = Machine::new(config);
        let mut m = CheckedMachine {
            machine,
            checker: Checker::new(settings),
            effects: Vec::new(),
            now: Instant::ZERO,
        };
        m.drain()?;
        Ok(m)
    }

    fn drain(&mut self) -> Result<(), Violation> {
        self.effects.clear();
        while let Some(effect) = self.machine.poll_effect() {
            self.checker.on_effect(self.now, &effect)?;
            self.effects.push(effect);
        }
        self.checker.after_step(self.now, &self.machine)
    }

    /// Feeds `input` at `now` and checks the step. On success, [`effects`](Self::effects)
    /// holds the step's effects.
    pub fn handle(&mut self, now: Instant, input: Input<A, C, E>) -> Result<(), Violation> {
        self.now = now;
        self.checker.on_input(now, &input)?;
        self.machine.handle(now, input);
        self.drain()
    }

    /// The effects of the last step, in order.
    pub fn effects(&self) -> &[Effect<A, C, E>] {
        &self.effects
    }

    /// The machine, for its queries.
    pub fn machine(&self) -> &Machine<A, C, E> {
        &self.machine
    }

    /// The checker.
    pub fn checker(&self) -> &Checker<A, C, E> {
        &self.checker
    }
}

/// Sets or clears `conn`'s bit (ids are issued in sequence, so the map stays small; an id
/// too large for memory is left out and then never found, which the caller reports).
fn set_bit(bits: &mut Vec<u64>, conn: ConnId, on: bool) {
    let Ok(i) = usize::try_from(conn.raw() / 64) else {
        return;
    };
    if i >= bits.len() {
        if !on || i > 1 << 24 {
            return;
        }
        bits.resize(i + 1, 0);
    }
    let mask = 1u64 << (conn.raw() % 64);
    if on {
        bits[i] |= mask;
    } else {
        bits[i] &= !mask;
    }
}

/// Whether `list` (as long as the set, checked by the caller) holds each member of the
/// set `bits` exactly once: every entry is a member and none repeats. `seen` is scratch
/// space, left all zero.
fn same_set(list: &[ConnId], bits: &[u64], seen: &mut Vec<u64>) -> bool {
    let mut ok = true;
    let mut marked = 0;
    for &c in list {
        if !bit(bits, c) || bit(seen, c) {
            ok = false;
            break;
        }
        set_bit(seen, c, true);
        marked += 1;
    }
    for &c in &list[..marked] {
        set_bit(seen, c, false);
    }
    ok
}

fn bit(bits: &[u64], conn: ConnId) -> bool {
    usize::try_from(conn.raw() / 64)
        .ok()
        .and_then(|i| bits.get(i))
        .is_some_and(|w| w & (1u64 << (conn.raw() % 64)) != 0)
}

/// FNV-1a of `x`'s `Debug` text, without allocating.
fn debug_hash(x: &impl fmt::Debug) -> u64 {
    use fmt::Write;
    let mut h = crate::trace::Fnv1a::new();
    let _ = write!(h, "{x:?}");
    h.finish()
}

/// R7: is `delay` within `jitter` of `base`? Bounds rounded outwards to the nanosecond.
fn within_jitter(jitter: Jitter, base: Duration, delay: Duration) -> bool {
    let percent = match jitter {
        Jitter::NonRandom => return delay == base,
        Jitter::Percent(p) => u128::from(p.min(100)),
    };
    let b = base.as_nanos();
    let span = (b * percent).div_ceil(100);
    let d = delay.as_nanos();
    let hi = b + span;
    d >= b - span && (d <= hi || delay == Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use persistent_connection_core::Event;

    /// A hand-written trace, no machine: the checker judges what it is shown.
    struct View {
        closed: bool,
        finished: bool,
        current: Option<ConnId>,
        timeout: Option<Instant>,
    }

    impl MachineView for View {
        fn is_closed(&self) -> bool {
            self.closed
        }
        fn is_close_finished(&self) -> bool {
            self.finished
        }
        fn current_conn_id(&self) -> Option<ConnId> {
            self.current
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.timeout
        }
        fn state(&self) -> State {
            State::Connected
        }
    }

    type C = Checker<u8, u8, u8>;
    type Fx = Effect<u8, u8, u8>;
    const T0: Instant = Instant::ZERO;
    const IDLE: View = View {
        closed: false,
        finished: false,
        current: None,
        timeout: None,
    };

    fn checker() -> C {
        Checker::new(CheckerSettings::for_policy(&RetryPolicy::constant(
            Duration::from_secs(10),
        )))
    }

    fn emit(id: u64, event: Event<u8, u8, u8>) -> Fx {
        Effect::Emit {
            id: EventId::from_raw(id),
            event,
        }
    }

    fn timer(attempt: u64, delay_ms: u64, now: Instant) -> Fx {
        let delay = Duration::from_millis(delay_ms);
        Effect::StartTimer {
            attempt: AttemptId::from_raw(attempt),
            base: Duration::from_secs(10),
            delay,
            deadline: now + delay,
        }
    }

    /// Construction, then `AttemptingToConnect` handled and attempt 0 begun.
    fn started() -> C {
        let mut c = checker();
        c.on_effect(T0, &emit(0, Event::AttemptingToConnect))
            .unwrap();
        c.after_step(T0, &IDLE).unwrap();
        c.on_input(
            T0,
            &Input::EventHandled {
                event: EventId::from_raw(0),
            },
        )
        .unwrap();
        c.on_effect(T0, &timer(0, 10_000, T0)).unwrap();
        c.on_effect(
            T0,
            &Effect::GetAddress {
                attempt: AttemptId::from_raw(0),
            },
        )
        .unwrap();
        c.after_step(T0, &IDLE).unwrap();
        c
    }

    #[test]
    fn a_missing_attempting_to_connect_breaks_i5_at_construction() {
        let v = checker().after_step(T0, &IDLE).unwrap_err();
        assert_eq!((v.invariant, v.step), (Invariant::I5, 0));
    }

    #[test]
    fn an_event_while_another_is_unhandled_breaks_i3() {
        let mut c = checker();
        c.on_effect(T0, &emit(0, Event::AttemptingToConnect))
            .unwrap();
        let v = c
            .on_effect(T0, &emit(1, Event::FailedToConnect(1)))
            .unwrap_err();
        assert_eq!(v.invariant, Invariant::I3);
    }

    #[test]
    fn a_delay_outside_the_jitter_breaks_i4() {
        let mut c = checker();
        c.on_effect(T0, &emit(0, Event::AttemptingToConnect))
            .unwrap();
        c.after_step(T0, &IDLE).unwrap();
        c.on_input(
            T0,
            &Input::EventHandled {
                event: EventId::from_raw(0),
            },
        )
        .unwrap();
        let v = c.on_effect(T0, &timer(0, 13_001, T0)).unwrap_err();
        assert_eq!(v.invariant, Invariant::I4);
    }

    #[test]
    fn a_connection_other_than_the_one_delivered_breaks_i8() {
        let mut c = started();
        let attempt = AttemptId::from_raw(0);
        c.on_input(
            T0,
            &Input::AddressResult {
                attempt,
                result: Ok(5),
            },
        )
        .unwrap();
        c.on_effect(T0, &emit(1, Event::ObtainedAddress(5)))
            .unwrap();
        c.after_step(T0, &IDLE).unwrap();
        c.on_input(
            T0,
            &Input::EventHandled {
                event: EventId::from_raw(1),
            },
        )
        .unwrap();
        c.on_effect(
            T0,
            &Effect::Connect {
                attempt,
                address: 5,
                consecutive_unsuccessful_attempts: 0,
            },
        )
        .unwrap();
        c.after_step(T0, &IDLE).unwrap();
        c.on_input(
            T0,
            &Input::ConnectResult {
                attempt,
                result: Ok(7),
            },
        )
        .unwrap();
        let v = c
            .on_effect(
                T0,
                &Effect::BecameCurrent {
                    conn: ConnId::from_raw(0),
                    connection: 8,
                },
            )
            .unwrap_err();
        assert_eq!(v.invariant, Invariant::I8);
    }

    #[test]
    fn stale_and_never_issued_inputs_owe_nothing() {
        let mut c = started();
        for input in [
            Input::EventHandled {
                event: EventId::from_raw(99),
            },
            Input::Closed {
                conn: ConnId::from_raw(3),
            },
            Input::AddressResult {
                attempt: AttemptId::from_raw(4),
                result: Ok(1),
            },
            Input::ConnectResult {
                attempt: AttemptId::from_raw(0),
                result: Err(2),
            },
            Input::TimerFired,
        ] {
            c.on_input(T0, &input).unwrap();
            c.after_step(T0, &IDLE).unwrap();
        }
        assert_eq!(c.coverage().stale_inputs, 4);
    }

    #[test]
    fn a_stray_connection_left_open_breaks_i6() {
        let mut c = started();
        c.on_input(
            T0,
            &Input::ConnectResult {
                attempt: AttemptId::from_raw(9),
                result: Ok(1),
            },
        )
        .unwrap();
        let v = c.after_step(T0, &IDLE).unwrap_err();
        assert_eq!(v.invariant, Invariant::I6);
    }

    #[test]
    fn close_must_cancel_the_attempt_and_finish_at_once() {
        let mut c = started();
        c.on_input(T0, &Input::CloseRequested).unwrap();
        c.on_effect(T0, &Effect::AttemptOutcome(Err(AttemptError::Closed)))
            .unwrap();
        let closed = View {
            closed: true,
            ..IDLE
        };
        // Neither the cancel nor CloseFinished: the cancel is owed first.
        let v = c.after_step(T0, &closed).unwrap_err();
        assert_eq!(v.invariant, Invariant::I7);
        assert!(v.message.contains("Cancel"), "{v}");
    }

    #[test]
    fn a_timer_asked_for_after_close_finished_breaks_i6() {
        let mut c = started();
        c.on_input(T0, &Input::CloseRequested).unwrap();
        for e in [
            Effect::AttemptOutcome(Err(AttemptError::Closed)),
            Effect::CancelAttempt {
                attempt: AttemptId::from_raw(0),
            },
            Effect::CloseFinished,
        ] {
            c.on_effect(T0, &e).unwrap();
        }
        let v = c
            .after_step(
                T0,
                &View {
                    closed: true,
                    finished: true,
                    current: None,
                    timeout: Some(T0),
                },
            )
            .unwrap_err();
        assert_eq!(v.invariant, Invariant::I6);
    }

    #[test]
    fn jitter_bounds_are_inclusive_and_saturate() {
        let b = Duration::from_secs(10);
        let j = Jitter::Percent(30);
        assert!(within_jitter(j, b, Duration::from_secs(7)));
        assert!(within_jitter(j, b, Duration::from_secs(13)));
        assert!(!within_jitter(j, b, Duration::from_millis(6999)));
        assert!(!within_jitter(j, b, Duration::from_millis(13001)));
        assert!(within_jitter(j, Duration::MAX, Duration::MAX));
        assert!(within_jitter(Jitter::NonRandom, b, b));
        assert!(!within_jitter(
            Jitter::NonRandom,
            b,
            Duration::from_secs(11)
        ));
    }
}
