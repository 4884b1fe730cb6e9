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
