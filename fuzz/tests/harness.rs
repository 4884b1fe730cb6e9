//! The harness itself is tested: random cases reach deep states (so fuzzing is not stuck
//! at the surface), and the oracle does fail on a broken history (so a quiet fuzz run
//! means something).

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use persistent_connection_core::{Effect, Event, EventId, Input, Instant, Jitter, Machine};
use persistent_connection_fuzz::machine::{
    Case, ConfigSpec, DelaySpec, Eff, Observer, Oracle, Span, check, run,
};

/// Counts what a run reached.
#[derive(Default)]
struct Reach {
    connected: usize,
    disconnected: usize,
    close_finished: usize,
    strays: usize,
}

impl<A, C, E> Observer<A, C, E> for Reach {
    fn on_input(&mut self, _: Instant, _: &Input<A, C, E>, _: &Machine<A, C, E>) {}
    fn on_effect(&mut self, _: Instant, e: &Effect<A, C, E>) {
        match e {
            Effect::Emit {
                event: Event::Connected(_),
                ..
            } => self.connected += 1,
            Effect::Emit {
                event: Event::Disconnected,
                ..
            } => self.disconnected += 1,
            Effect::CloseFinished => self.close_finished += 1,
            Effect::CloseConnection { .. } => self.strays += 1,
            _ => {}
        }
    }
    fn after_step(&mut self, _: Instant, _: &Machine<A, C, E>) {}
}

/// xorshift64*: a fixed byte stream, no OS randomness.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_cases_pass_the_oracle_and_reach_connected_disconnected_and_close() {
    let mut reach = Reach::default();
    for seed in 0..300 {
        let data = bytes(seed, 4096);
        let case = Case::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        check(&case);
        run(&case, &mut reach);
    }
    assert!(reach.connected > 0, "no run connected");
    assert!(reach.disconnected > 0, "no run disconnected");
    assert!(reach.close_finished > 0, "no run finished closing");
    assert!(reach.strays > 0, "no run closed a connection");
}

fn oracle() -> Oracle {
    Oracle::new(&ConfigSpec {
        seed: 0,
        delay: DelaySpec::Constant(Span::Secs(1)),
        jitter: Jitter::NonRandom,
    })
}

fn emit(id: u64, event: Event<u8, u8, u8>) -> Eff {
    Effect::Emit {
        id: EventId::from_raw(id),
        event,
    }
}

#[test]
#[should_panic(expected = "I3")]
fn oracle_rejects_an_event_while_another_is_unhandled() {
    let mut o = oracle();
    o.on_effect(Instant::ZERO, &emit(0, Event::AttemptingToConnect));
    o.on_effect(Instant::ZERO, &emit(1, Event::ObtainedAddress(1)));
}

#[test]
#[should_panic(expected = "I1")]
fn oracle_rejects_an_event_out_of_grammar() {
    let mut o = oracle();
    o.on_effect(Instant::ZERO, &emit(0, Event::Disconnected));
}

#[test]
#[should_panic(expected = "R2")]
fn oracle_rejects_a_wrong_base_delay() {
    let mut o = oracle();
    o.on_effect(
        Instant::ZERO,
        &Effect::StartTimer {
            attempt: persistent_connection_core::AttemptId::from_raw(0),
            base: Duration::from_secs(2),
            delay: Duration::from_secs(2),
            deadline: Instant::ZERO + Duration::from_secs(2),
        },
    );
}

#[test]
#[should_panic(expected = "I7")]
fn oracle_rejects_close_finishing_twice() {
    let mut o = oracle();
    o.on_effect(Instant::ZERO, &Effect::CloseFinished);
    o.on_effect(Instant::ZERO, &Effect::CloseFinished);
}

#[test]
fn random_world_cases_pass_every_check_and_reach_connections_and_close() {
    use persistent_connection_fuzz::world_ops::{WorldCase, check_world, run_world};
    let mut reach = Reach::default();
    let mut connections = 0;
    for seed in 0..300 {
        let data = bytes(seed ^ 0xABCD, 2048);
        let case = WorldCase::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        check_world(&case);
        connections += run_world(&case, &mut reach).totals().connections;
    }
    assert!(connections > 0, "no connection handed in");
    assert!(reach.connected > 0, "no run connected");
    assert!(reach.disconnected > 0, "no run disconnected");
    assert_eq!(
        reach.close_finished, 300,
        "every run ends with close finished"
    );
}

/// Random cases run against a machine whose effects `mutate` tampers with; true if the
/// simulator's checker flagged one of them (its panic message is printed).
fn checker_catches(mutate: impl Fn(Eff) -> Option<Eff>) -> bool {
    use persistent_connection_fuzz::machine::{SimChecker, run_mutated};
    (0..300).any(|seed| {
        let data = bytes(seed, 4096);
        let case = Case::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_mutated(&case, &mut SimChecker::new(&case.config), &mutate)
        }))
        .is_err()
    })
}

#[test]
fn the_checker_catches_a_machine_that_forgets_to_close_stray_connections() {
    let caught = checker_catches(|e| match e {
        Effect::CloseConnection { .. } => None,
        e => Some(e),
    });
    assert!(caught);
}

#[test]
fn the_checker_catches_a_machine_that_loses_disconnected() {
    let caught = checker_catches(|e| match e {
        Effect::Emit {
            event: Event::Disconnected,
            ..
        } => None,
        e => Some(e),
    });
    assert!(caught);
}

#[test]
fn the_checker_catches_a_machine_that_shortens_its_retry_delay() {
    let caught = checker_catches(|e| match e {
        Effect::StartTimer {
            attempt,
            base,
            delay,
            deadline,
        } if delay > Duration::ZERO => Some(Effect::StartTimer {
            attempt,
            base,
            delay: delay / 2,
            deadline,
        }),
        e => Some(e),
    });
    assert!(caught);
}

/// Counts the handovers and retries now (R15, R16) a run reached.
#[derive(Default)]
struct ReachPlanned {
    handed_over: usize,
    retries_now: u32,
}

impl<A, C, E> Observer<A, C, E> for ReachPlanned {
    fn on_input(&mut self, _: Instant, _: &Input<A, C, E>, _: &Machine<A, C, E>) {}
    fn on_effect(&mut self, _: Instant, e: &Effect<A, C, E>) {
        if let Effect::Emit {
            event: Event::HandedOver { .. },
            ..
        } = e
        {
            self.handed_over += 1;
        }
    }
    fn after_step(&mut self, _: Instant, m: &Machine<A, C, E>) {
        self.retries_now = self.retries_now.max(m.counters().retries_now);
    }
}

#[test]
fn random_cases_reach_handovers_and_retries_now() {
    let (mut handed_over, mut retries_now) = (0, 0);
    for seed in 0..300 {
        let data = bytes(seed ^ 0x4841, 4096);
        let case = Case::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        check(&case);
        let mut reach = ReachPlanned::default();
        run(&case, &mut reach);
        handed_over += reach.handed_over;
        retries_now += reach.retries_now;
    }
    assert!(handed_over > 0, "no handover succeeded");
    assert!(retries_now > 0, "no retry now ended a wait");
}

#[test]
fn random_world_cases_with_planned_changes_pass_and_reach_handovers() {
    use persistent_connection_fuzz::world_ops::{WorldCase, check_world, run_world};
    let mut handed_over = 0;
    for seed in 0..300 {
        // Op bytes 254 and 255 are the planned changes: make them common.
        let data: Vec<u8> = bytes(seed ^ 0x504c, 2048)
            .into_iter()
            .enumerate()
            .map(|(i, b)| if i % 7 == 3 { 254 | (b & 1) } else { b })
            .collect();
        let case = WorldCase::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        check_world(&case);
        let mut reach = ReachPlanned::default();
        run_world(&case, &mut reach);
        handed_over += reach.handed_over;
    }
    assert!(handed_over > 0, "no handover succeeded in the world");
}

#[test]
#[should_panic(expected = "I11")]
fn oracle_rejects_a_second_current_connection_without_a_handover() {
    let mut o = oracle();
    let m: Machine<u8, u8, u8> = Machine::new(
        ConfigSpec {
            seed: 0,
            delay: DelaySpec::Constant(Span::Secs(1)),
            jitter: Jitter::NonRandom,
        }
        .config(),
    );
    let connected = Input::ConnectResult {
        attempt: persistent_connection_core::AttemptId::from_raw(0),
        result: Ok(1),
    };
    let became = |conn: u64| Effect::BecameCurrent {
        conn: persistent_connection_core::ConnId::from_raw(conn),
        connection: 1,
    };
    o.on_input(Instant::ZERO, &connected, &m);
    o.on_effect(Instant::ZERO, &became(0));
    o.on_input(Instant::ZERO, &connected, &m);
    o.on_effect(Instant::ZERO, &became(1));
}

#[test]
#[should_panic(expected = "I1")]
fn oracle_rejects_handed_over_outside_a_connection() {
    let mut o = oracle();
    o.on_effect(Instant::ZERO, &emit(0, Event::AttemptingToConnect));
    o.on_input(
        Instant::ZERO,
        &Input::EventHandled {
            event: EventId::from_raw(0),
        },
        &Machine::new(
            ConfigSpec {
                seed: 0,
                delay: DelaySpec::Constant(Span::Secs(1)),
                jitter: Jitter::NonRandom,
            }
            .config(),
        ),
    );
    o.on_effect(
        Instant::ZERO,
        &emit(
            1,
            Event::HandedOver {
                connection: 1,
                reason: persistent_connection_core::HandoverReason::User,
            },
        ),
    );
}

/// Issue 28 item 9: an abort through a context kept from an earlier attempt while the
/// `ObtainedAddress` handler runs stops the loop when the handler returns, without
/// connecting. The oracle and the simulator's checker both accept that, and both reject a
/// machine that connects after it, as the original would.
#[test]
fn abort_during_the_obtained_address_handler_oracle_and_checker_agree() {
    use persistent_connection_fuzz::machine::{Advance, Op, SimChecker, Step, run_mutated};
    let config = ConfigSpec {
        seed: 0,
        delay: DelaySpec::Constant(Span::Secs(1)),
        jitter: Jitter::NonRandom,
    };
    let step = |op| Step {
        advance: Advance::None,
        op,
    };
    let case = Case {
        config: config.clone(),
        steps: vec![
            step(Op::Progress { result: Ok(1) }), // AttemptingToConnect handled
            step(Op::Progress { result: Ok(1) }), // the address: ObtainedAddress(1)
            step(Op::Abort(3)),                   // a kept context aborts
            step(Op::Progress { result: Ok(1) }), // the handler returns: close finishes
        ],
    };
    check(&case);
    let effects = run(&case, &mut Reach::default());
    assert!(matches!(effects.last(), Some((_, Effect::CloseFinished))));
    assert!(
        !effects
            .iter()
            .any(|(_, e)| matches!(e, Effect::Connect { .. })),
        "{effects:?}"
    );
    // A machine that connects after the handler instead.
    let connects = |e: Eff| match e {
        Effect::CloseFinished => Some(Effect::Connect {
            attempt: persistent_connection_core::AttemptId::from_raw(0),
            address: 1,
            consecutive_unsuccessful_attempts: 0,
        }),
        e => Some(e),
    };
    for checker in [true, false] {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if checker {
                run_mutated(&case, &mut SimChecker::new(&config), connects);
            } else {
                run_mutated(&case, &mut Oracle::new(&config), connects);
            }
        }))
        .is_err();
        assert!(
            caught,
            "checker {checker}: a connect after the abort passed"
        );
    }
}
