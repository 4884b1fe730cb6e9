//! Property tests whose transitions are world operations (proptest-state-machine), so a
//! failure shrinks to a short sequence of operations. Every step is judged by the
//! [`Checker`]. Failures are kept in `sim/proptest-regressions/` (in git).

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngSeed, TestCaseError, TestError, TestRunner,
};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use persistent_connection_core::{
    AttemptId, ConnId, Effect, EventId, Input, Instant, Jitter, Machine, RetryDelay, RetryPolicy,
};
use persistent_connection_sim::checker::{Checker, CheckerSettings, Violation};
use persistent_connection_sim::mutants::{Mutant, MutantMachine};
use persistent_connection_sim::world::{Addr, Conn, SimError, SimInput, SimMachine};

/// One thing that happens in the world.
#[derive(Clone, Debug)]
enum Op {
    /// The lookup in flight answers (a stale one if none is).
    Lookup(Result<u8, bool>),
    /// The connect in flight answers.
    Connect(Result<(), bool>),
    /// The running `on_event` handler finishes.
    HandleEvent,
    /// The current connection drops (its close finishes).
    PeerClose,
    /// The oldest connection we asked to close finishes closing.
    FinishClose,
    /// Time passes; the retry timer fires if due.
    Advance(u16),
    /// `close()`.
    Close,
    /// `close_when_current_connection_is_closed()` (R11).
    CloseWhenCurrentClosed,
    /// `abort` through the connect context (R12).
    Abort,
    /// A stale or never-issued input.
    Stale(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![
            (0u8..3).prop_map(|a| Op::Lookup(Ok(a))),
            any::<bool>().prop_map(|e| Op::Lookup(Err(e))),
        ],
        4 => prop_oneof![
            Just(Op::Connect(Ok(()))),
            any::<bool>().prop_map(|e| Op::Connect(Err(e))),
        ],
        6 => Just(Op::HandleEvent),
        1 => Just(Op::PeerClose),
        2 => Just(Op::FinishClose),
        3 => (0u16..600).prop_map(Op::Advance),
        1 => Just(Op::Close),
        1 => Just(Op::CloseWhenCurrentClosed),
        1 => Just(Op::Abort),
        1 => any::<u8>().prop_map(Op::Stale),
    ]
}

/// The reference: which retry policy and seed; the world's state lives in the SUT driver,
/// since every operation applies in every state (an inapplicable one becomes stale).
struct Reference;

#[derive(Clone, Debug)]
struct Setup {
    seed: u64,
    policy: u8,
}

impl ReferenceStateMachine for Reference {
    type State = Setup;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Setup> {
        (any::<u64>(), 0u8..4)
            .prop_map(|(seed, policy)| Setup { seed, policy })
            .boxed()
    }

    fn transitions(_: &Setup) -> BoxedStrategy<Op> {
        op().boxed()
    }

    fn apply(state: Setup, _: &Op) -> Setup {
        state
    }
}

fn policy(p: u8) -> RetryPolicy {
    let ms = Duration::from_millis;
    match p {
        0 => RetryPolicy::constant(ms(200)),
        1 => RetryPolicy::constant(ms(200)).non_random(),
        2 => RetryPolicy::grpc(),
        _ => RetryPolicy {
            delay: RetryDelay::constant(Duration::ZERO),
            jitter: Jitter::Percent(30),
        },
    }
}

/// What docs/behaviour.md and the docs say each policy above is, written out without the core's
/// constructors, so a bug in those cannot answer for both the machine and its checker.
fn expected(p: u8) -> CheckerSettings {
    let ms = Duration::from_millis;
    let (jitter, delay) = match p {
        0 => (Jitter::Percent(30), RetryDelay::Constant(ms(200))),
        1 => (Jitter::NonRandom, RetryDelay::Constant(ms(200))),
        // gRPC's connection backoff: 1 s initial, x1.6, 120 s max, +-20%.
        2 => (
            Jitter::Percent(20),
            RetryDelay::Exponential {
                initial: ms(1000),
                multiplier: 1.6,
                max: ms(120_000),
            },
        ),
        _ => (Jitter::Percent(30), RetryDelay::Constant(Duration::ZERO)),
    };
    CheckerSettings {
        jitter,
        delay: Some(delay),
    }
}

/// A tiny world answering what the machine asks, checked at every step.
struct Driver {
    machine: Box<dyn SimMachine<Addr, Conn, SimError>>,
    checker: Checker<Addr, Conn, SimError>,
    now: Instant,
    lookup: Option<AttemptId>,
    connect: Option<(AttemptId, Addr)>,
    handler: Option<EventId>,
    current: Option<ConnId>,
    closing: VecDeque<ConnId>,
    next_conn: u32,
    last_attempt: AttemptId,
}

impl Driver {
    fn new(setup: &Setup, mutant: Option<Mutant>) -> Result<Driver, Violation> {
        let config = persistent_connection_core::Config {
            seed: setup.seed,
            retry: policy(setup.policy),
        };
        let settings = expected(setup.policy);
        let machine = Machine::new(config);
        let machine: Box<dyn SimMachine<Addr, Conn, SimError>> = match mutant {
            None => Box::new(machine),
            Some(m) => Box::new(MutantMachine::new(m, machine)),
        };
        let mut d = Driver {
            machine,
            checker: Checker::new(settings),
            now: Instant::ZERO,
            lookup: None,
            connect: None,
            handler: None,
            current: None,
            closing: VecDeque::new(),
            next_conn: 0,
            last_attempt: AttemptId::from_raw(0),
        };
        d.drain()?;
        Ok(d)
    }

    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(effect) = self.machine.poll_effect() {
            self.checker.on_effect(self.now, &effect)?;
            match effect {
                Effect::Emit { id, .. } => self.handler = Some(id),
                Effect::GetAddress { attempt } => {
                    self.lookup = Some(attempt);
                    self.last_attempt = attempt;
                }
                Effect::Connect {
                    attempt, address, ..
                } => self.connect = Some((attempt, address)),
                Effect::CancelAttempt { .. } => {
                    self.lookup = None;
                    self.connect = None;
                }
                Effect::BecameCurrent { conn, .. } => self.current = Some(conn),
                Effect::NoLongerCurrent { .. } => self.current = None,
                Effect::CloseConnection { conn, .. } if !self.closing.contains(&conn) => {
                    self.closing.push_back(conn);
                }
                _ => {}
            }
        }
        self.checker.after_step(self.now, &*self.machine)
    }

    fn feed(&mut self, input: SimInput) -> Result<(), Violation> {
        self.checker.on_input(self.now, &input)?;
        self.machine.handle(self.now, input);
        self.drain()
    }

    fn conn(&mut self, server: Addr) -> Conn {
        self.next_conn += 1;
        Conn {
            id: self.next_conn,
            server,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        let stale = AttemptId::from_raw(self.last_attempt.raw().wrapping_sub(1));
        let input = match op {
            Op::Lookup(r) => Input::AddressResult {
                attempt: self.lookup.take().unwrap_or(stale),
                result: match r {
                    Ok(a) => Ok(Addr(*a)),
                    Err(true) => Err(SimError::NoSuchHost),
                    Err(false) => Err(SimError::LookupTimedOut),
                },
            },
            Op::Connect(r) => {
                let (attempt, server) = self.connect.take().unwrap_or((stale, Addr(9)));
                let result = match r {
                    Ok(()) => Ok(self.conn(server)),
                    Err(true) => Err(SimError::Refused(server)),
                    Err(false) => Err(SimError::Reset),
                };
                Input::ConnectResult { attempt, result }
            }
            Op::HandleEvent => Input::EventHandled {
                event: self.handler.take().unwrap_or(EventId::from_raw(77)),
            },
            Op::PeerClose => match self.current {
                Some(conn) => {
                    self.closing.retain(|c| *c != conn);
                    Input::Closed { conn }
                }
                None => Input::TimerFired,
            },
            Op::FinishClose => match self.closing.pop_front() {
                Some(conn) => Input::Closed { conn },
                None => Input::TimerFired,
            },
            Op::Advance(millis) => {
                self.now = self.now + Duration::from_millis(u64::from(*millis));
                Input::TimerFired
            }
            Op::Close => Input::CloseRequested,
            Op::CloseWhenCurrentClosed => Input::CloseWhenCurrentConnectionIsClosed,
            Op::Abort => Input::Abort {
                error: SimError::Aborted,
            },
            Op::Stale(k) => match k % 4 {
                0 => Input::EventHandled {
                    event: EventId::from_raw(u64::from(*k)),
                },
                1 => Input::Closed {
                    conn: ConnId::from_raw(u64::from(*k)),
                },
                2 => Input::ConnectResult {
                    attempt: AttemptId::from_raw(u64::from(*k)),
                    result: Ok(self.conn(Addr(1))),
                },
                _ => Input::AddressResult {
                    attempt: stale,
                    result: Ok(Addr(*k % 3)),
                },
            },
        };
        self.feed(input)
    }
}

struct RealMachine;

impl StateMachineTest for RealMachine {
    type SystemUnderTest = Driver;
    type Reference = Reference;

    fn init_test(setup: &Setup) -> Driver {
        Driver::new(setup, None).unwrap_or_else(|v| panic!("{v}"))
    }

    fn apply(mut driver: Driver, _: &Setup, op: Op) -> Driver {
        if let Err(v) = driver.apply(&op) {
            panic!("{op:?}: {v}");
        }
        driver
    }
}

prop_state_machine! {
    #![proptest_config(Config {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/state_machine.txt"),
        ))),
        .. Config::default()
    })]

    /// The real machine passes the checker on any sequence of world operations.
    #[test]
    fn real_machine_keeps_every_invariant(sequential 1..120 => RealMachine);
}

/// With a planted bug, proptest finds a failing sequence and shrinks it to a short one.
fn shrinks_to_a_short_sequence(mutant: Mutant) -> Vec<Op> {
    let mut runner = TestRunner::new(Config {
        cases: 2000,
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        // A fixed seed: how short the shrunk sequence gets depends on the failing case
        // proptest happens to find first, so a random seed made this test flaky (9
        // operations on one CI run). `PC_SHRINK_SEED` overrides it to try others.
        rng_seed: RngSeed::Fixed(
            std::env::var("PC_SHRINK_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
        ..Config::default()
    });
    let strategy = Reference::sequential_strategy(1..120);
    let result = runner.run(&strategy, |(setup, ops, seen)| {
        let mut d =
            Driver::new(&setup, Some(mutant)).map_err(|v| TestCaseError::fail(v.to_string()))?;
        for op in &ops {
            // Tell the shrinker which transitions ran (as `test_sequential` does).
            if let Some(seen) = &seen {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            d.apply(op)
                .map_err(|v| TestCaseError::fail(v.to_string()))?;
        }
        Ok(())
    });
    match result {
        Err(TestError::Fail(why, (_, ops, _))) => {
            eprintln!(
                "{mutant}: shrunk to {} operations: {ops:?}\n  {why}",
                ops.len()
            );
            ops
        }
        other => panic!("{mutant} not caught by the property test: {other:?}"),
    }
}

#[test]
fn skip_dedup_shrinks_to_a_few_operations() {
    let ops = shrinks_to_a_short_sequence(Mutant::SkipDedup);
    // Shortest: handle AttemptingToConnect, fail, handle FailedToConnect, (advance,) fail again.
    assert!(ops.len() <= 8, "{ops:?}");
}

#[test]
fn delay_from_failure_shrinks_to_a_few_operations() {
    let ops = shrinks_to_a_short_sequence(Mutant::DelayFromFailure);
    assert!(ops.len() <= 8, "{ops:?}");
}
