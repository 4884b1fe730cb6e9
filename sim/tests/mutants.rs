//! Prove the checker bites: each planted bug is caught within the binary's default seed
//! budget, by the invariant it breaks, and its failure shrinks to a short input sequence.

use persistent_connection_sim::checker::Invariant;
use persistent_connection_sim::mutants::Mutant;
use persistent_connection_sim::world::{DEFAULT_SEEDS, RunOptions, replay, run_seed, shrink};

/// Runs seeds 0.. until the mutant is caught; returns the seed and its failure.
fn first_catch(mutant: Mutant) -> (u64, Box<persistent_connection_sim::world::Failure>) {
    let options = RunOptions {
        keep_trace: false,
        mutant: Some(mutant),
        planned: mutant.needs_planned_world(),
    };
    for seed in 0..DEFAULT_SEEDS {
        if let Err(failure) = run_seed(seed, &options) {
            return (seed, failure);
        }
    }
    panic!("{mutant} survived {DEFAULT_SEEDS} seeds: the checker does not bite");
}

fn caught_by(mutant: Mutant, invariant: Invariant) {
    let (seed, failure) = first_catch(mutant);
    assert_eq!(
        failure.violation.invariant, invariant,
        "{mutant} caught at seed {seed} by an unexpected invariant: {}",
        failure.violation
    );
    if invariant == Invariant::I9 {
        // A liveness failure belongs to the world (its clock, its caps), not to a replay
        // of inputs: nothing to shrink.
        return;
    }
    // The failure replays from its recorded inputs alone, and shrinks.
    let inputs = &failure.inputs;
    assert!(replay(&failure.settings, Some(mutant), inputs).is_err());
    let shrunk = shrink(&failure.settings, Some(mutant), inputs, invariant, 2000);
    assert!(shrunk.len() <= inputs.len());
    let v = replay(&failure.settings, Some(mutant), &shrunk).expect_err("shrunk still fails");
    assert_eq!(v.invariant, invariant);
    // The real machine, fed the same inputs, passes.
    replay(&failure.settings, None, &shrunk).expect("the real machine passes the same inputs");
}

#[test]
fn skipping_deduplication_is_caught_by_i2() {
    caught_by(Mutant::SkipDedup, Invariant::I2);
}

#[test]
fn waiting_the_delay_from_the_failure_is_caught_by_i5() {
    caught_by(Mutant::DelayFromFailure, Invariant::I5);
}

#[test]
fn disconnected_during_the_connected_handler_is_caught_by_i3() {
    caught_by(Mutant::EarlyDisconnected, Invariant::I3);
}

#[test]
fn forgetting_to_close_a_late_connection_is_caught_by_i6() {
    caught_by(Mutant::ForgetLateClose, Invariant::I6);
}

#[test]
fn suppressing_a_new_failure_is_caught_by_i2() {
    caught_by(Mutant::SuppressFailure, Invariant::I2);
}

#[test]
fn retrying_early_is_caught_by_i4() {
    caught_by(Mutant::EarlyRetry, Invariant::I4);
}

#[test]
fn finishing_close_late_is_caught_by_i7() {
    caught_by(Mutant::LateCloseFinished, Invariant::I7);
}

#[test]
fn dropping_a_failure_outcome_is_caught_by_i8() {
    caught_by(Mutant::DropFailureOutcome, Invariant::I8);
}

#[test]
fn dropping_the_aborting_attempts_failure_is_caught_by_i7() {
    // Close finishes while the failure is still owed (R12, R8).
    caught_by(Mutant::DropAbortedFailure, Invariant::I7);
}

#[test]
fn a_timer_that_stops_time_is_caught_by_the_liveness_cap() {
    caught_by(Mutant::BusyTimer, Invariant::I9);
}

#[test]
fn retrying_now_twice_in_a_row_is_caught_by_i10() {
    caught_by(Mutant::RetryNowTwice, Invariant::I10);
}

#[test]
fn a_gap_during_a_handover_is_caught_by_i11() {
    caught_by(Mutant::GapInHandover, Invariant::I11);
}

#[test]
fn closing_a_retired_connection_late_is_caught_by_i11() {
    caught_by(Mutant::LateRetiredClose, Invariant::I11);
}

#[test]
fn every_mutant_has_a_test_above() {
    // Adding a mutant without a test here would let it rot.
    assert_eq!(Mutant::ALL.len(), 13);
}
