//! The `machine_inputs` target's model: an arbitrary configuration, an arbitrary sequence
//! of timed inputs, a driver that feeds them to the machine, and an oracle that checks
//! every step against docs/behaviour.md.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use persistent_connection_core::{
    AttemptError, AttemptId, Config, ConnId, Effect, Event, EventId, HandoverReason,
    HandoverStatus, Input, Instant, Jitter, Machine, RetryDelay, RetryNowReason, RetryPolicy,
    State,
};
use persistent_connection_sim::checker::{Checker, CheckerSettings, Violation};

/// Address, connection and error are all small numbers: few values, so equal ones (the
/// interesting case for de-duplication, R3 and R4) come up often.
pub type M = Machine<u8, u8, u8>;
/// An input of [`M`].
pub type In = Input<u8, u8, u8>;
/// An effect of [`M`].
pub type Eff = Effect<u8, u8, u8>;

/// Longest input sequence fed in one run: bounds the time of one execution.
pub const MAX_STEPS: usize = 2_000;

/// A duration, biased towards the edges: zero, tiny, ordinary, huge, `Duration::MAX`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Span {
    /// No time at all (back-to-back attempts, R7).
    Zero,
    /// Up to 65 µs.
    Nanos(u16),
    /// Up to 65 s, in milliseconds.
    Millis(u16),
    /// Up to 136 years, in seconds.
    Secs(u32),
    /// Any duration at all.
    Any(Duration),
    /// `Duration::MAX`: arithmetic must saturate (R7).
    Max,
}

impl Span {
    /// The duration.
    pub fn get(self) -> Duration {
        match self {
            Span::Zero => Duration::ZERO,
            Span::Nanos(n) => Duration::from_nanos(n.into()),
            Span::Millis(ms) => Duration::from_millis(ms.into()),
            Span::Secs(s) => Duration::from_secs(s.into()),
            Span::Any(d) => d,
            Span::Max => Duration::MAX,
        }
    }
}

/// The retry policy's base delay (R2).
#[derive(Arbitrary, Clone, Debug)]
pub enum DelaySpec {
    /// [`RetryDelay::Constant`].
    Constant(Span),
    /// [`RetryDelay::Exponential`], with any multiplier (NaN, negative and infinite too).
    Exponential {
        /// Delay after zero failures.
        initial: Span,
        /// Growth per failure.
        multiplier: f64,
        /// The cap.
        max: Span,
    },
    /// [`RetryDelay::Custom`]: walks `spans` in order, one per call (R2: one call per
    /// attempt), or indexes them by the number of consecutive failures (R12).
    Custom {
        /// The delays (an empty list means zero).
        spans: Vec<Span>,
        /// Index by failures instead of by call.
        by_failures: bool,
    },
}

/// Everything a machine is configured with.
#[derive(Arbitrary, Clone, Debug)]
pub struct ConfigSpec {
    /// The jitter generator's seed.
    pub seed: u64,
    /// The base delay.
    pub delay: DelaySpec,
    /// Its jitter (percentages above 100 included).
    pub jitter: Jitter,
}

impl ConfigSpec {
    /// The machine's configuration.
    pub fn config(&self) -> Config {
        let delay = match &self.delay {
            DelaySpec::Constant(s) => RetryDelay::Constant(s.get()),
            DelaySpec::Exponential {
                initial,
                multiplier,
                max,
            } => RetryDelay::exponential(initial.get(), *multiplier, max.get()),
            DelaySpec::Custom { spans, by_failures } => {
                let spans: Vec<Duration> = spans.iter().map(|s| s.get()).collect();
                let by_failures = *by_failures;
                let mut calls = 0usize;
                RetryDelay::from_fn(move |failures| {
                    let i = if by_failures {
                        failures as usize
                    } else {
                        calls
                    };
                    calls += 1;
                    custom_at(&spans, i)
                })
            }
        };
        Config {
            seed: self.seed,
            retry: RetryPolicy {
                delay,
                jitter: self.jitter,
            },
        }
    }
}

fn custom_at(spans: &[Duration], i: usize) -> Duration {
    if spans.is_empty() {
        Duration::ZERO
    } else {
        spans[i % spans.len()]
    }
}

/// An id chosen among those the machine has issued (so the fuzzer reaches deep states), or
/// any number at all (stale, future, never issued).
#[derive(Clone, Copy, Debug)]
pub enum Pick {
    /// The latest issued (three times in four).
    Latest,
    /// The `n`-th before the latest (wrapping over those issued).
    Back(u8),
    /// This raw number.
    Raw(u64),
}

impl<'a> Arbitrary<'a> for Pick {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=191 => Pick::Latest,
            192..=239 => Pick::Back(u8::arbitrary(u)?),
            _ => Pick::Raw(u64::arbitrary(u)?),
        })
    }
}

impl Pick {
    /// The raw id, given that ids `0..issued` were issued.
    pub fn resolve(self, issued: u64) -> u64 {
        let latest = issued.saturating_sub(1);
        match self {
            Pick::Latest => latest,
            Pick::Back(n) => latest - u64::from(n) % issued.max(1),
            Pick::Raw(raw) => raw,
        }
    }
}

/// How far the clock moves before the next input. Time never goes back: a driver's clock
/// is monotonic.
#[derive(Clone, Copy, Debug)]
pub enum Advance {
    /// Not at all (half the time).
    None,
    /// By this much (saturating).
    By(Span),
    /// To the machine's timeout, if it has one and it is later than now.
    ToTimeout,
    /// To the end of time.
    ToEnd,
}

impl<'a> Arbitrary<'a> for Advance {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=127 => Advance::None,
            128..=191 => Advance::By(Span::arbitrary(u)?),
            192..=253 => Advance::ToTimeout,
            _ => Advance::ToEnd,
        })
    }
}

/// One input, with its id chosen by [`Pick`] where it has one. Values are small (`0..4`
/// for addresses and errors) so that equal ones, which de-duplication (R3, R4) is about,
/// come up often; [`Op::Raw`] covers the rest.
#[derive(Clone, Debug)]
pub enum Op {
    /// What a well-behaved world would feed next given the machine's state: handle the
    /// pending event, answer the lookup or connect in flight (with `result`), close the
    /// current connection, or fire the timer once its deadline is reached.
    Progress {
        /// The answer to a lookup or a connect.
        result: Result<u8, u8>,
    },
    /// [`Input::AddressResult`].
    Address {
        /// Which attempt.
        attempt: Pick,
        /// The address or the error.
        result: Result<u8, u8>,
    },
    /// [`Input::ConnectResult`].
    Connect {
        /// Which attempt.
        attempt: Pick,
        /// The connection or the error.
        result: Result<u8, u8>,
    },
    /// [`Input::Closed`].
    Closed {
        /// Which connection.
        conn: Pick,
    },
    /// [`Input::EventHandled`].
    Handled {
        /// Which event.
        event: Pick,
    },
    /// [`Input::TimerFired`].
    Timer,
    /// [`Input::CloseRequested`].
    Close,
    /// [`Input::CloseWhenCurrentConnectionIsClosed`].
    CloseWhenCurrent,
    /// [`Input::Abort`].
    Abort(u8),
    /// [`Input::Handover`] (R15): a reason (wrapping) and a grace.
    Handover(u8, Span),
    /// [`Input::CancelHandover`] (R15).
    CancelHandover,
    /// [`Input::RetryNow`] (R16, R17): a reason (wrapping).
    RetryNow(u8),
    /// Any input at all, ids and all, from the core's own `Arbitrary` derive.
    Raw(In),
}

fn small_result(u: &mut Unstructured<'_>) -> arbitrary::Result<Result<u8, u8>> {
    let b = u8::arbitrary(u)?;
    Ok(if b & 0x80 == 0 { Ok(b & 3) } else { Err(b & 3) })
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        // Weighted so that closing (which ends the interesting part of a run) is rare.
        Ok(match u8::arbitrary(u)? {
            0..=99 => Op::Progress {
                result: small_result(u)?,
            },
            100..=129 => Op::Address {
                attempt: Pick::arbitrary(u)?,
                result: small_result(u)?,
            },
            130..=159 => Op::Connect {
                attempt: Pick::arbitrary(u)?,
                result: small_result(u)?,
            },
            160..=189 => Op::Closed {
                conn: Pick::arbitrary(u)?,
            },
            190..=219 => Op::Handled {
                event: Pick::arbitrary(u)?,
            },
            220..=234 => Op::Timer,
            235..=237 => Op::Close,
            238..=240 => Op::CloseWhenCurrent,
            241..=243 => Op::Abort(u8::arbitrary(u)? & 3),
            244..=246 => Op::Handover(u8::arbitrary(u)?, Span::arbitrary(u)?),
            247 => Op::CancelHandover,
            248..=249 => Op::RetryNow(u8::arbitrary(u)?),
            _ => Op::Raw(In::arbitrary(u)?),
        })
    }
}

/// One step: move the clock, then feed an input.
#[derive(Arbitrary, Clone, Debug)]
pub struct Step {
    /// How the clock moves first.
    pub advance: Advance,
    /// What is fed.
    pub op: Op,
}

/// A whole fuzz case: a configuration, then steps for as long as the bytes last (each
/// byte counts, no length prefix or continuation flags).
#[derive(Clone, Debug)]
pub struct Case {
    /// The machine's configuration.
    pub config: ConfigSpec,
    /// The inputs, in order (at most [`MAX_STEPS`]).
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let config = ConfigSpec::arbitrary(u)?;
        let mut steps = Vec::new();
        while !u.is_empty() && steps.len() < MAX_STEPS {
            steps.push(Step::arbitrary(u)?);
        }
        Ok(Case { config, steps })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// Something that watches a run: the [`Oracle`] here, the simulator's checker. Generic
/// over the machine's types: `machine_inputs` uses small numbers (`u8`), `world_ops` the
/// simulator's world's types.
pub trait Observer<A = u8, C = u8, E = u8> {
    /// `input` is about to be fed at `now` to `m` (in the state before it).
    fn on_input(&mut self, now: Instant, input: &Input<A, C, E>, m: &Machine<A, C, E>);
    /// `m` produced `effect` at `now`.
    fn on_effect(&mut self, now: Instant, effect: &Effect<A, C, E>);
    /// All effects of the step at `now` are drained.
    fn after_step(&mut self, now: Instant, m: &Machine<A, C, E>);
}

/// Runs `case` on a fresh machine, telling `observer` everything, and returns every effect
/// with its time (for the determinism check, I9).
pub fn run(case: &Case, observer: &mut impl Observer) -> Vec<(Instant, Eff)> {
    run_mutated(case, observer, Some)
}

/// [`run`], with every effect passed through `mutate` before the observer sees it: a
/// deliberately wrong machine, to show that the checks catch it (`tests/harness.rs`).
/// `None` drops the effect.
pub fn run_mutated(
    case: &Case,
    observer: &mut impl Observer,
    mut mutate: impl FnMut(Eff) -> Option<Eff>,
) -> Vec<(Instant, Eff)> {
    let mut m = M::new(case.config.config());
    let mut now = Instant::ZERO;
    let mut trace = Vec::new();
    let mut issued = Issued::default();
    drain(&mut m, now, observer, &mut trace, &mut issued, &mut mutate);
    observer.after_step(now, &m);
    for step in &case.steps {
        now = match step.advance {
            Advance::None => now,
            Advance::By(span) => now.saturating_add(span.get()),
            Advance::ToTimeout => m.poll_timeout().map_or(now, |t| t.max(now)),
            Advance::ToEnd => Instant::MAX,
        };
        let input = match &step.op {
            Op::Progress { result } => match m.state() {
                State::HandlingEvent(_) => Input::EventHandled {
                    event: EventId::from_raw(issued.events.saturating_sub(1)),
                },
                State::Resolving(attempt) => Input::AddressResult {
                    attempt,
                    result: *result,
                },
                State::Connecting(attempt) => Input::ConnectResult {
                    attempt,
                    result: *result,
                },
                // R15: a handover's lookup or connect in flight is answered first.
                State::Connected => match (
                    m.handover().and_then(|h| h.attempt),
                    issued.outstanding,
                    m.current_conn_id(),
                ) {
                    (Some(a), Some((b, false)), _) if a == b => Input::AddressResult {
                        attempt: a,
                        result: *result,
                    },
                    (Some(a), Some((b, true)), _) if a == b => Input::ConnectResult {
                        attempt: a,
                        result: *result,
                    },
                    (_, _, Some(conn)) => Input::Closed { conn },
                    _ => Input::TimerFired,
                },
                State::Closing => match m.lingering_connections().first() {
                    Some(conn) => Input::Closed { conn: *conn },
                    None => match m.current_conn_id() {
                        Some(conn) => Input::Closed { conn },
                        None => Input::TimerFired,
                    },
                },
                State::WaitingToRetry | State::WaitingToReconnect => {
                    now = m.poll_timeout().map_or(now, |t| t.max(now));
                    Input::TimerFired
                }
                State::Closed => Input::TimerFired,
            },
            Op::Address { attempt, result } => Input::AddressResult {
                attempt: AttemptId::from_raw(attempt.resolve(issued.attempts)),
                result: *result,
            },
            Op::Connect { attempt, result } => Input::ConnectResult {
                attempt: AttemptId::from_raw(attempt.resolve(issued.attempts)),
                result: *result,
            },
            Op::Closed { conn } => Input::Closed {
                conn: ConnId::from_raw(conn.resolve(issued.conns)),
            },
            Op::Handled { event } => Input::EventHandled {
                event: EventId::from_raw(event.resolve(issued.events)),
            },
            Op::Timer => Input::TimerFired,
            Op::Close => Input::CloseRequested,
            Op::CloseWhenCurrent => Input::CloseWhenCurrentConnectionIsClosed,
            Op::Abort(e) => Input::Abort { error: *e },
            Op::Handover(r, grace) => Input::Handover {
                reason: HANDOVER_REASONS[usize::from(*r) % HANDOVER_REASONS.len()],
                grace: grace.get(),
            },
            Op::CancelHandover => Input::CancelHandover,
            Op::RetryNow(r) => Input::RetryNow {
                reason: RETRY_REASONS[usize::from(*r) % RETRY_REASONS.len()],
            },
            Op::Raw(input) => input.clone(),
        };
        observer.on_input(now, &input, &m);
        match &input {
            Input::AddressResult { attempt, .. }
                if issued.outstanding == Some((*attempt, false)) =>
            {
                issued.outstanding = None
            }
            Input::ConnectResult { attempt, .. }
                if issued.outstanding == Some((*attempt, true)) =>
            {
                issued.outstanding = None
            }
            _ => {}
        }
        m.handle(now, input);
        drain(&mut m, now, observer, &mut trace, &mut issued, &mut mutate);
        observer.after_step(now, &m);
    }
    trace
}

const HANDOVER_REASONS: [HandoverReason; 5] = [
    HandoverReason::User,
    HandoverReason::Drain,
    HandoverReason::MaxAge,
    HandoverReason::Withdrawn,
    HandoverReason::FailBack,
];
const RETRY_REASONS: [RetryNowReason; 3] = [
    RetryNowReason::User,
    RetryNowReason::NewCopy,
    RetryNowReason::AnotherCopy,
];

/// How many ids of each kind the machine has issued (they are sequential from 0), and the
/// lookup or connect it waits for (`true`: a connect).
#[derive(Default)]
struct Issued {
    attempts: u64,
    conns: u64,
    events: u64,
    outstanding: Option<(AttemptId, bool)>,
}

fn drain(
    m: &mut M,
    now: Instant,
    observer: &mut impl Observer,
    trace: &mut Vec<(Instant, Eff)>,
    issued: &mut Issued,
    mutate: &mut impl FnMut(Eff) -> Option<Eff>,
) {
    while let Some(e) = m.poll_effect() {
        let Some(e) = mutate(e) else { continue };
        match &e {
            Effect::GetAddress { attempt } => {
                issued.attempts = issued.attempts.max(attempt.raw() + 1);
                issued.outstanding = Some((*attempt, false));
            }
            Effect::Connect { attempt, .. } => issued.outstanding = Some((*attempt, true)),
            Effect::CancelAttempt { attempt }
                if issued.outstanding.is_some_and(|(a, _)| a == *attempt) =>
            {
                issued.outstanding = None;
            }
            Effect::BecameCurrent { conn, .. } | Effect::CloseConnection { conn, .. } => {
                issued.conns = issued.conns.max(conn.raw() + 1)
            }
            Effect::Emit { id, .. } => issued.events = issued.events.max(id.raw() + 1),
            _ => {}
        }
        observer.on_effect(now, &e);
        trace.push((now, e));
    }
}

/// Where the event grammar (I1) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grammar {
    /// Next: `AttemptingToConnect`.
    RoundStart,
    /// In a round: `ObtainedAddress`, `FailedToConnect` or `Connected` may come.
    InRound,
    /// After `Connected`: only `HandedOver` (R15) or `Disconnected` may come.
    Connected,
}

/// What the step being checked was fed, as far as the oracle cares.
#[derive(Debug)]
struct StepInput<A, C, E> {
    /// A connection was handed in (`ConnectResult` with `Ok`).
    connection: Option<C>,
    /// An address result for the attempt being resolved: `Ok(a)` or `Err(e)`.
    accepted_address: Option<Result<A, E>>,
    /// A connect failure for the attempt being connected.
    accepted_connect_error: Option<E>,
    /// The current connection finished closing.
    current_closed: bool,
    /// `close()` was asked.
    close_requested: bool,
    /// The failure of the attempt that was in flight when `abort` came (R12): reported
    /// after close as the original does.
    aborted_failure: Option<E>,
    /// The pending handover before the step (R15).
    handover: Option<HandoverStatus>,
    /// The connection handed in was kept by the machine: it answers the attempt carried
    /// on into a new round while that round's first handlers run (R15).
    parked_now: bool,
}

/// What the step being checked produced.
impl<A, C, E> Default for StepInput<A, C, E> {
    fn default() -> Self {
        StepInput {
            connection: None,
            accepted_address: None,
            accepted_connect_error: None,
            current_closed: false,
            close_requested: false,
            aborted_failure: None,
            handover: None,
            parked_now: false,
        }
    }
}

#[derive(Debug)]
struct StepOutput<A, C, E> {
    new_conns: usize,
    emitted: Vec<Event<A, C, E>>,
    no_longer_current: bool,
    /// A connection kept earlier (R15) was made current or closed in this step.
    delivered_parked: usize,
    /// Retired connections asked to close before their grace ended (only close may).
    early_retired_closes: usize,
    /// An attempt began: whether before the previous deadline, whether as a handover right
    /// after the attempt that made the current connection, whether a retry now came since
    /// the attempt before it (I10).
    started: Option<(bool, bool, bool)>,
}

impl<A, C, E> Default for StepOutput<A, C, E> {
    fn default() -> Self {
        StepOutput {
            new_conns: 0,
            emitted: Vec::new(),
            no_longer_current: false,
            delivered_parked: 0,
            early_retired_closes: 0,
            started: None,
        }
    }
}

/// The harness's own checker: the rules that can be checked from inputs and effects alone,
/// independently of the simulator.
#[derive(Debug)]
pub struct Oracle<A = u8, C = u8, E = u8> {
    delay: DelaySpec,
    jitter: Jitter,
    grammar: Grammar,
    last_address: Option<A>,
    last_failure: Option<E>,
    unhandled: Option<EventId>,
    next_event: u64,
    next_attempt: u64,
    next_conn: u64,
    /// Consecutive failed attempts since the last success (R12).
    failures: u32,
    /// Start and deadline of the latest attempt's retry timer (I4).
    last_timer: Option<(Instant, Instant)>,
    /// The address fed for the attempt being resolved, awaiting its `Connect`.
    address_for: Option<(AttemptId, A)>,
    current: Option<(ConnId, C)>,
    /// Connections announced and not yet finished closing (current or not) (I6).
    open: BTreeSet<ConnId>,
    /// Connections the machine asked to close (at most once each, I6).
    close_asked: BTreeSet<ConnId>,
    /// `is_closed()` after the previous step (R8).
    was_closed: bool,
    close_finished: bool,
    step_in: StepInput<A, C, E>,
    step_out: StepOutput<A, C, E>,
    /// The lookup or connect the machine waits for (`true`: a connect).
    outstanding: Option<(AttemptId, bool)>,
    /// Connections retired by a handover, not yet asked to close, with their grace
    /// deadline (R15).
    retired: Vec<(ConnId, Instant)>,
    /// A connection kept by the machine for the attempt carried on (R15).
    parked: Option<C>,
    /// The latest attempt made the current connection (R15, I10 (a)).
    latest_made_current: bool,
    /// A retry now came since the latest attempt began (I10 (b)).
    retry_now_since_start: bool,
    /// The latest attempt began by retry now (I10 (b)).
    latest_by_retry_now: bool,
}

impl<A, C, E> Oracle<A, C, E>
where
    A: Clone + PartialEq + Debug,
    C: Clone + PartialEq + Debug,
    E: Clone + PartialEq + Debug,
{
    /// An oracle for a machine configured by `config`.
    pub fn new(config: &ConfigSpec) -> Self {
        Oracle {
            delay: config.delay.clone(),
            jitter: config.jitter,
            grammar: Grammar::RoundStart,
            last_address: None,
            last_failure: None,
            unhandled: None,
            next_event: 0,
            next_attempt: 0,
            next_conn: 0,
            failures: 0,
            last_timer: None,
            address_for: None,
            current: None,
            open: BTreeSet::new(),
            close_asked: BTreeSet::new(),
            was_closed: false,
            close_finished: false,
            step_in: StepInput::default(),
            step_out: StepOutput::default(),
            outstanding: None,
            retired: Vec::new(),
            parked: None,
            latest_made_current: false,
            retry_now_since_start: false,
            latest_by_retry_now: false,
        }
    }

    fn on_emit(&mut self, id: EventId, event: &Event<A, C, E>) {
        assert!(
            !self.close_finished,
            "R8/I7: {event:?} emitted after CloseFinished"
        );
        assert!(
            self.unhandled.is_none(),
            "I3: {event:?} emitted while {:?} is unhandled",
            self.unhandled
        );
        assert_eq!(id.raw(), self.next_event, "event ids are sequential");
        self.next_event += 1;
        self.unhandled = Some(id);
        self.step_out.emitted.push(event.clone());
        if self.was_closed {
            let aborted_failure = matches!(
                (event, &self.step_in.aborted_failure),
                (Event::FailedToConnect(e), Some(f)) if e == f
            );
            assert!(
                matches!(event, Event::Disconnected) || aborted_failure,
                "R8: only Disconnected (or the failure of the attempt that aborted, R12) may \
                 follow close(), got {event:?}"
            );
        }
        match (self.grammar, event) {
            (Grammar::RoundStart, Event::AttemptingToConnect) => {
                self.grammar = Grammar::InRound;
                self.last_address = None;
                self.last_failure = None;
            }
            (Grammar::InRound, Event::ObtainedAddress(a)) => {
                assert_ne!(
                    self.last_address.as_ref(),
                    Some(a),
                    "I2: ObtainedAddress repeated"
                );
                self.last_address = Some(a.clone());
            }
            (Grammar::InRound, Event::FailedToConnect(e)) => {
                assert_ne!(
                    self.last_failure.as_ref(),
                    Some(e),
                    "I2: FailedToConnect repeated"
                );
                self.last_failure = Some(e.clone());
            }
            (Grammar::InRound, Event::Connected(c)) => {
                assert_eq!(
                    self.current.as_ref().map(|(_, c)| c),
                    Some(c),
                    "R5: Connected(c) before c became current"
                );
                self.grammar = Grammar::Connected;
            }
            (Grammar::Connected, Event::Disconnected) => self.grammar = Grammar::RoundStart,
            // R15: the new current connection, made beside the old one.
            (Grammar::Connected, Event::HandedOver { connection, .. }) => assert_eq!(
                self.current.as_ref().map(|(_, c)| c),
                Some(connection),
                "R15: HandedOver(c) before c became current"
            ),
            (g, e) => panic!("I1: {e:?} out of grammar at {g:?}"),
        }
    }

    /// R12: the aborting attempt's failure counts (no `AttemptOutcome` says so: waiters
    /// were answered by the abort) and may be announced.
    fn on_aborted_failure(&mut self, e: &E) {
        self.failures = self.failures.saturating_add(1);
        self.step_in.aborted_failure = Some(e.clone());
    }

    fn check_timer(&mut self, now: Instant, attempt: AttemptId, base: Duration, delay: Duration) {
        // R2: the policy is asked once per attempt, with the failure count (R12).
        match &self.delay {
            DelaySpec::Constant(s) => assert_eq!(base, s.get(), "R2: constant base delay"),
            DelaySpec::Exponential { max, .. } => {
                assert!(base <= max.get(), "R2: exponential base above its cap")
            }
            DelaySpec::Custom { spans, by_failures } => {
                let spans: Vec<Duration> = spans.iter().map(|s| s.get()).collect();
                let i = if *by_failures {
                    self.failures as usize
                } else {
                    attempt.raw() as usize
                };
                assert_eq!(base, custom_at(&spans, i), "R2/R12: custom base delay");
            }
        }
        // R7, I4: the jittered delay lies within `b ± p·b`.
        let b = base.as_nanos();
        let d = delay.as_nanos();
        match self.jitter {
            Jitter::NonRandom => assert_eq!(delay, base, "R7: NonRandom changed the delay"),
            Jitter::Percent(p) => {
                let span = b * u128::from(p.min(100)) / 100;
                assert!(
                    d >= b - span,
                    "R7: delay {delay:?} below base {base:?} - {p}%"
                );
                assert!(
                    d <= b + span || delay == Duration::MAX,
                    "R7: delay {delay:?} above base {base:?} + {p}%"
                );
            }
        }
        // I4, I10: an attempt starts no earlier than the previous attempt's deadline, but
        // for a handover right after the attempt that made the current connection (R15)
        // and for retry now (R16, not twice in a row: checked once the step is done).
        let early = self.last_timer.is_some_and(|(_, deadline)| now < deadline);
        let handover_after_success = self.current.is_some() && self.latest_made_current;
        if let Some((start, deadline)) = self.last_timer {
            assert!(
                !early || handover_after_success || self.retry_now_since_start,
                "I4/I10: attempt at {now:?} before the previous deadline {deadline:?} (started {start:?}), neither a handover right after a connection nor retry now"
            );
        }
        self.step_out.started = Some((early, handover_after_success, self.retry_now_since_start));
        self.latest_made_current = false;
        self.retry_now_since_start = false;
        self.last_timer = Some((now, now.saturating_add(delay)));
    }
}

impl<A, C, E> Observer<A, C, E> for Oracle<A, C, E>
where
    A: Clone + PartialEq + Debug,
    C: Clone + PartialEq + Debug,
    E: Clone + PartialEq + Debug,
{
    fn on_input(&mut self, _now: Instant, input: &Input<A, C, E>, m: &Machine<A, C, E>) {
        self.step_in = StepInput::default();
        self.step_out = StepOutput::default();
        self.step_in.handover = m.handover();
        let handover_attempt = self.step_in.handover.and_then(|h| h.attempt);
        let state = m.state();
        match input {
            Input::AddressResult { attempt, result } => {
                // The first answer to the lookup the machine waits for is the one it takes
                // (an ordinary attempt's, a handover's, or the carried attempt's, R15).
                if self.outstanding == Some((*attempt, false)) {
                    self.outstanding = None;
                    if let Ok(a) = result {
                        self.address_for = Some((*attempt, a.clone()));
                    } else if handover_attempt == Some(*attempt) {
                        // R15: a failed handover attempt counts, silently (R12).
                        self.failures = self.failures.saturating_add(1);
                    }
                }
                if state == State::Resolving(*attempt) && !self.was_closed {
                    self.step_in.accepted_address = Some(result.clone());
                } else if state == State::Resolving(*attempt)
                    && let Err(e) = result
                {
                    // After close only an attempt that aborted (R12) is still in flight:
                    // its address is not announced, its failure is (R4).
                    self.on_aborted_failure(e);
                    self.step_in.accepted_address = Some(Err(e.clone()));
                }
            }
            Input::ConnectResult { attempt, result } => {
                let awaited = self.outstanding == Some((*attempt, true));
                if awaited {
                    self.outstanding = None;
                }
                match result {
                    Ok(c) => {
                        self.step_in.connection = Some(c.clone());
                        // R15: the carried attempt's connection, kept while its round's
                        // first handlers run (no ordinary connect is awaited during one).
                        if awaited && matches!(state, State::HandlingEvent(_)) {
                            self.parked = Some(c.clone());
                            self.step_in.parked_now = true;
                        }
                    }
                    Err(e) => {
                        if awaited && handover_attempt == Some(*attempt) {
                            self.failures = self.failures.saturating_add(1);
                        }
                        if state == State::Connecting(*attempt) {
                            if self.was_closed {
                                self.on_aborted_failure(e);
                            }
                            self.step_in.accepted_connect_error = Some(e.clone());
                        }
                    }
                }
            }
            Input::Closed { conn } => {
                if self.current.as_ref().is_some_and(|(id, _)| id == conn) {
                    self.step_in.current_closed = true;
                }
                self.open.remove(conn);
                self.retired.retain(|(c, _)| c != conn);
            }
            Input::EventHandled { event } => {
                if self.unhandled == Some(*event) {
                    self.unhandled = None;
                }
            }
            Input::CloseRequested => self.step_in.close_requested = true,
            Input::RetryNow { .. } => self.retry_now_since_start = true,
            Input::TimerFired
            | Input::CloseWhenCurrentConnectionIsClosed
            | Input::Abort { .. }
            | Input::Handover { .. }
            | Input::CancelHandover => {}
        }
    }

    fn on_effect(&mut self, now: Instant, effect: &Effect<A, C, E>) {
        if self.close_finished {
            assert!(
                matches!(
                    effect,
                    Effect::CloseConnection { .. } | Effect::CloseFinished
                ),
                "R8: {effect:?} after CloseFinished"
            );
        }
        match effect {
            Effect::Emit { id, event } => self.on_emit(*id, event),
            Effect::StartTimer {
                attempt,
                base,
                delay,
                deadline,
            } => {
                assert!(
                    !self.was_closed,
                    "R8: attempt {attempt} began after close()"
                );
                assert_eq!(
                    attempt.raw(),
                    self.next_attempt,
                    "attempt ids are sequential"
                );
                assert_eq!(
                    *deadline,
                    now.saturating_add(*delay),
                    "R2: deadline = now + delay"
                );
                self.check_timer(now, *attempt, *base, *delay);
            }
            Effect::GetAddress { attempt } => {
                assert!(!self.was_closed, "R8: lookup after close()");
                assert_eq!(
                    attempt.raw(),
                    self.next_attempt,
                    "R2: lookup after its timer"
                );
                self.next_attempt += 1;
                self.outstanding = Some((*attempt, false));
            }
            Effect::Connect {
                attempt,
                address,
                consecutive_unsuccessful_attempts,
            } => {
                assert!(!self.was_closed, "R8: connect after close()");
                assert_eq!(
                    self.address_for.take(),
                    Some((*attempt, address.clone())),
                    "R3: connect to the address obtained by its attempt"
                );
                assert_eq!(
                    *consecutive_unsuccessful_attempts, self.failures,
                    "R12: consecutive_unsuccessful_attempts"
                );
                self.outstanding = Some((*attempt, true));
            }
            Effect::CancelAttempt { attempt } => {
                assert!(
                    attempt.raw() < self.next_attempt,
                    "cancel of an unknown attempt"
                );
                if self.outstanding.is_some_and(|(a, _)| a == *attempt) {
                    self.outstanding = None;
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                if let Some((old, _)) = &self.current {
                    // R15, I11: only a handover's connection replaces a current one, in
                    // one step; the old one is retired until its grace ends.
                    let h = self
                        .step_in
                        .handover
                        .expect("I11: two current connections, and no handover pending");
                    assert!(h.attempt.is_some(), "I11: handover without its attempt");
                    assert_eq!(h.from, *old, "I11: a handover replaces the current one");
                    self.retired.push((*old, now.saturating_add(h.grace)));
                }
                assert_eq!(conn.raw(), self.next_conn, "connection ids are sequential");
                let handed = !self.step_in.parked_now
                    && self.step_in.connection.as_ref() == Some(connection);
                let from_parked = !handed && self.parked.as_ref() == Some(connection);
                assert!(
                    handed || from_parked,
                    "R5: current connection not the one handed in"
                );
                if from_parked {
                    self.parked = None;
                    self.step_out.delivered_parked += 1;
                } else {
                    self.step_out.new_conns += 1;
                }
                self.failures = 0;
                self.latest_made_current = true;
                self.next_conn += 1;
                self.current = Some((*conn, connection.clone()));
                self.open.insert(*conn);
            }
            Effect::NoLongerCurrent { conn } => {
                assert!(
                    self.step_in.current_closed,
                    "R6: NoLongerCurrent without its close"
                );
                assert_eq!(
                    self.current.as_ref().map(|(id, _)| *id),
                    Some(*conn),
                    "R6: wrong conn"
                );
                self.current = None;
                self.step_out.no_longer_current = true;
            }
            Effect::CloseConnection { conn, .. } => {
                if conn.raw() == self.next_conn {
                    // A stray connection, closed at once (R8, docs/behaviour.md §3), or the
                    // connection kept for a carried attempt that close cancelled (R15).
                    if self.step_in.connection.is_some() && !self.step_in.parked_now {
                        self.step_out.new_conns += 1;
                    } else {
                        assert!(
                            self.parked.take().is_some(),
                            "stray close without a connection"
                        );
                        self.step_out.delivered_parked += 1;
                    }
                    self.next_conn += 1;
                    self.open.insert(*conn);
                } else if let Some(i) = self.retired.iter().position(|(c, _)| c == conn) {
                    // R15: a retired connection, asked to close when its grace ends (or at
                    // close, checked once the step is done).
                    let (_, deadline) = self.retired.remove(i);
                    if now < deadline {
                        self.step_out.early_retired_closes += 1;
                    }
                } else {
                    assert!(
                        self.current.as_ref().is_some_and(|(id, _)| id == conn),
                        "R8: close asked for {conn}, which is not current"
                    );
                }
                assert!(self.close_asked.insert(*conn), "I6: {conn} closed twice");
            }
            Effect::AttemptOutcome(outcome) => match outcome {
                Ok(_) => self.failures = 0,
                Err(AttemptError::Failed(_)) => self.failures = self.failures.saturating_add(1),
                Err(AttemptError::Aborted(_) | AttemptError::Closed) => {}
            },
            Effect::CloseFinished => {
                assert!(!self.close_finished, "I7: CloseFinished twice");
                assert!(
                    self.unhandled.is_none(),
                    "R8: close finished during a handler"
                );
                assert!(
                    self.open.is_empty(),
                    "I6: close finished with {:?} open",
                    self.open
                );
                self.close_finished = true;
            }
        }
    }

    fn after_step(&mut self, now: Instant, m: &Machine<A, C, E>) {
        let inp = std::mem::take(&mut self.step_in);
        let out = std::mem::take(&mut self.step_out);
        // I6: every connection handed in is either current or asked to close, at once
        // (but one kept for the carried attempt, R15, which is when its handlers return).
        let expected_new = usize::from(inp.connection.is_some() && !inp.parked_now);
        assert_eq!(
            out.new_conns, expected_new,
            "I6: connection neither current nor closed"
        );
        // R6: the current connection's close is acknowledged in the same step.
        assert_eq!(
            inp.current_closed, out.no_longer_current,
            "R6: NoLongerCurrent"
        );
        // I2, second half: nothing that differs from the previous one is suppressed.
        if let Some(Ok(a)) = &inp.accepted_address
            && !matches!(out.emitted.first(), Some(Event::ObtainedAddress(x)) if x == a)
        {
            assert_eq!(
                self.last_address.as_ref(),
                Some(a),
                "I2: new address {a:?} not announced"
            );
        }
        if let Some(e) = inp
            .accepted_connect_error
            .or(inp.accepted_address.and_then(Result::err))
            && !matches!(out.emitted.first(), Some(Event::FailedToConnect(x)) if *x == e)
        {
            assert_eq!(
                self.last_failure.as_ref(),
                Some(&e),
                "I2: new failure {e:?} not announced"
            );
        }
        // R8: close is sticky.
        if inp.close_requested {
            assert!(m.is_closed(), "R8: is_closed() false after close()");
        }
        assert!(
            !self.was_closed || m.is_closed(),
            "R8: is_closed() went back to false"
        );
        self.was_closed = m.is_closed();
        // The machine's queries agree with what it said.
        assert_eq!(
            m.current_conn_id(),
            self.current.as_ref().map(|(id, _)| *id),
            "current_conn_id"
        );
        assert_eq!(
            m.current_connection(),
            self.current.as_ref().map(|(_, c)| c)
        );
        assert_eq!(
            m.consecutive_unsuccessful_attempts(),
            self.failures,
            "R12 query"
        );
        assert_eq!(
            m.is_close_finished(),
            self.close_finished,
            "is_close_finished"
        );
        let state = m.state();
        assert_eq!(
            matches!(state, State::HandlingEvent(_)),
            self.unhandled.is_some(),
            "state {state:?} vs unhandled event {:?}",
            self.unhandled
        );
        // R15, I11: a retired connection is asked to close by its grace deadline, before
        // only by close.
        if out.early_retired_closes > 0 {
            assert!(
                m.is_closed(),
                "I11: a retired connection closed before its grace"
            );
        }
        if let Some((conn, deadline)) = self.retired.iter().min_by_key(|r| r.1) {
            assert!(
                now < *deadline,
                "I11: retired {conn} not closed at its grace deadline {deadline:?}"
            );
            assert!(
                m.poll_timeout().is_some_and(|t| t <= *deadline),
                "I11: poll_timeout() {:?} would wake the driver after {conn}'s grace",
                m.poll_timeout()
            );
        }
        // I10: an attempt begun early by retry now never follows another.
        if let Some((early, handover_after_success, retry_now)) = out.started {
            let by_retry_now = m.attempt_began_by_retry_now().is_some();
            assert!(
                !by_retry_now || (early && retry_now),
                "I10: attempt_began_by_retry_now() without an early start asked by retry now"
            );
            assert!(
                !early || handover_after_success || by_retry_now,
                "I10: an early start that is neither a handover after a success nor retry now"
            );
            assert!(
                !(by_retry_now && self.latest_by_retry_now),
                "I10: two attempts in a row began early by retry now"
            );
            self.latest_by_retry_now = by_retry_now;
        }
        // I5: nothing waits on a deadline that has already passed.
        let handover_waiting =
            state == State::Connected && m.handover().is_some_and(|h| h.attempt.is_none());
        if let Some(t) = m.poll_timeout() {
            assert!(
                t > now,
                "I5: timeout {t:?} not after now {now:?} in {state:?}"
            );
            assert!(
                matches!(state, State::WaitingToRetry | State::WaitingToReconnect)
                    || handover_waiting
                    || !self.retired.is_empty(),
                "poll_timeout in {state:?}"
            );
        }
        if handover_waiting {
            assert!(
                m.poll_timeout().is_some(),
                "R15: a pending handover without a timer"
            );
        }
        match state {
            State::WaitingToRetry | State::WaitingToReconnect => {
                assert!(m.poll_timeout().is_some(), "{state:?} without a timeout")
            }
            State::Resolving(a) | State::Connecting(a) => {
                assert_eq!(
                    a.raw() + 1,
                    self.next_attempt,
                    "{state:?} not the latest attempt"
                )
            }
            State::Connected => assert!(self.current.is_some(), "Connected without current"),
            _ => {}
        }
        // R8, I7: close finishes as soon as nothing holds it up (an attempt that aborted,
        // R12, is awaited: it is about to return).
        if m.is_closed()
            && self.unhandled.is_none()
            && self.open.is_empty()
            && !matches!(state, State::Resolving(_) | State::Connecting(_))
        {
            assert!(
                self.close_finished,
                "I7: close not finished though nothing is pending"
            );
        }
        // Nothing wedges: an open machine is always waiting on something.
        if !m.is_closed() {
            assert!(
                self.unhandled.is_some()
                    || m.poll_timeout().is_some()
                    || matches!(state, State::Resolving(_) | State::Connecting(_))
                    || self.current.is_some(),
                "wedged in {state:?}"
            );
        }
    }
}

/// An observer borrowed.
impl<A, C, E, T: Observer<A, C, E> + ?Sized> Observer<A, C, E> for &mut T {
    fn on_input(&mut self, now: Instant, input: &Input<A, C, E>, m: &Machine<A, C, E>) {
        (**self).on_input(now, input, m);
    }
    fn on_effect(&mut self, now: Instant, effect: &Effect<A, C, E>) {
        (**self).on_effect(now, effect);
    }
    fn after_step(&mut self, now: Instant, m: &Machine<A, C, E>) {
        (**self).after_step(now, m);
    }
}

/// Two observers at once.
impl<A, C, E, X: Observer<A, C, E>, Y: Observer<A, C, E>> Observer<A, C, E> for (X, Y) {
    fn on_input(&mut self, now: Instant, input: &Input<A, C, E>, m: &Machine<A, C, E>) {
        self.0.on_input(now, input, m);
        self.1.on_input(now, input, m);
    }
    fn on_effect(&mut self, now: Instant, effect: &Effect<A, C, E>) {
        self.0.on_effect(now, effect);
        self.1.on_effect(now, effect);
    }
    fn after_step(&mut self, now: Instant, m: &Machine<A, C, E>) {
        self.0.after_step(now, m);
        self.1.after_step(now, m);
    }
}

/// Watches nothing (for the determinism replay).
#[derive(Debug)]
pub struct Nothing;

impl<A, C, E> Observer<A, C, E> for Nothing {
    fn on_input(&mut self, _: Instant, _: &Input<A, C, E>, _: &Machine<A, C, E>) {}
    fn on_effect(&mut self, _: Instant, _: &Effect<A, C, E>) {}
    fn after_step(&mut self, _: Instant, _: &Machine<A, C, E>) {}
}

/// The simulator's invariant checker (I1–I8), panicking on its first violation.
#[derive(Debug)]
pub struct SimChecker(pub Checker<u8, u8, u8>);

impl SimChecker {
    /// A checker for a machine configured by `config`, with an exact twin of its base-delay
    /// policy (a fresh copy of the same closure for custom delays).
    pub fn new(config: &ConfigSpec) -> SimChecker {
        let settings =
            CheckerSettings::jitter_only(config.jitter).with_delay(config.config().retry.delay);
        SimChecker(Checker::new(settings))
    }
}

fn or_panic(r: Result<(), Violation>) {
    if let Err(v) = r {
        panic!("checker: {v}");
    }
}

impl Observer for SimChecker {
    fn on_input(&mut self, now: Instant, input: &In, _: &M) {
        or_panic(self.0.on_input(now, input));
    }
    fn on_effect(&mut self, now: Instant, effect: &Eff) {
        or_panic(self.0.on_effect(now, effect));
    }
    fn after_step(&mut self, now: Instant, m: &M) {
        or_panic(self.0.after_step(now, m));
    }
}

/// Runs `case` under the simulator's [`Checker`] and the [`Oracle`], then once more, and
/// checks that both runs gave the same effects at the same times (I9).
pub fn check(case: &Case) {
    let first = run(
        case,
        &mut (SimChecker::new(&case.config), Oracle::new(&case.config)),
    );
    let second = run(case, &mut Nothing);
    assert!(
        first == second,
        "I9: same seed and inputs gave different effects"
    );
}
