//! Worlds with planned changes (`RunOptions::planned`: copies withdrawn, drained,
//! restarted on a new address, added, flapping catalog entries, the user's handover and
//! retry now; docs/behaviour.md R15–R17, I10, I11): the real machine passes, the runs
//! reach every situation of those rules, and they are deterministic (I9). Without the
//! option a seed's world is the one it always was.

use persistent_connection_sim::report::failure_report;
use persistent_connection_sim::world::{Planned, RunOptions, Totals, run_seed};

fn planned(keep_trace: bool) -> RunOptions {
    RunOptions {
        keep_trace,
        mutant: None,
        planned: true,
    }
}

#[test]
fn real_machine_passes_the_first_300_planned_seeds_and_reaches_every_new_situation() {
    let mut totals = Totals::default();
    for seed in 0..300 {
        let report = run_seed(seed, &planned(false))
            .unwrap_or_else(|f| panic!("{}", failure_report(seed, None, &f)));
        assert_eq!(report.totals.closes, 1, "seed {seed}: close finishes once");
        totals.add(&report.totals);
    }
    for (name, n) in totals.coverage.planned_counters() {
        assert!(n > 0, "300 planned seeds never reached: {name}");
    }
}

#[test]
fn a_planned_seed_replayed_gives_the_same_trace() {
    for seed in [0, 5, 77] {
        let a = run_seed(seed, &planned(true)).expect("passes");
        let b = run_seed(seed, &planned(true)).expect("passes");
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert!(
            a.trace.as_deref().is_some_and(|t| t.contains("PLANNED ")),
            "the trace names the planned changes"
        );
    }
}

#[test]
fn the_planned_changes_leave_a_seeds_settings_and_unplanned_trace_alone() {
    for seed in [1, 2, 3] {
        let plain = run_seed(seed, &RunOptions::default()).expect("passes");
        let with = run_seed(seed, &planned(false)).expect("passes");
        assert_eq!(plain.settings, with.settings, "seed {seed}");
        assert!(!plain.trace_hash.to_string().is_empty());
    }
    assert_ne!(Planned::from_seed(1), Planned::from_seed(2));
}
