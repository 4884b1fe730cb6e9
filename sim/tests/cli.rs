//! The binary: `--seed S --trace` prints the same stdout on every run (wall-clock figures
//! go to stderr); a failure prints the seed, the shrunk sequence and the command.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_persistent-connection-sim"))
        .args(args)
        .output()
        .expect("the simulator runs")
}

#[test]
fn a_traced_seed_prints_identical_stdout_on_every_run() {
    let a = sim(&["--seed", "42", "--trace"]);
    let b = sim(&["--seed", "42", "--trace"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stdout));
    assert_eq!(a.stdout, b.stdout);
    let out = String::from_utf8_lossy(&a.stdout);
    assert!(out.starts_with("SEED=42 "), "{out}");
    assert!(out.contains("     0 "), "the construction step is traced");
    assert!(out.contains("totals: steps "));
    assert!(out.contains("trace hash: "));
    assert!(out.contains("determinism (I9): replay gives the same trace hash"));
    assert!(String::from_utf8_lossy(&a.stderr).contains("simulated steps/s"));
}

#[test]
fn a_run_of_seeds_prints_totals_and_throughput() {
    let out = sim(&["--seeds", "20", "--first-seed", "100"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("simulating seeds 100..120"), "{stdout}");
    assert!(stdout.contains("passed: 20 seeds"));
    assert!(stdout.contains("coverage: "));
}

#[test]
fn a_failure_prints_seed_shrunk_sequence_and_the_command() {
    let out = sim(&["--seeds", "50", "--mutant", "skip-dedup"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED seed="), "{stdout}");
    assert!(stdout.contains("I2 (de-duplication)"));
    assert!(stdout.contains("shrunk input sequence ("));
    assert!(
        stdout.contains("reproduce: cargo run --release -p persistent-connection-sim -- --seed ")
    );
    assert!(stdout.contains("--mutant skip-dedup"));
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = sim(&["--seeds", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--seeds: \"many\" is not a whole number"),
        "{stderr}"
    );
    let out = sim(&["--mutant", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mutant"));
    let out = sim(&["--trace"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trace needs --seed S"));
}

#[test]
fn a_seed_range_past_the_last_seed_is_refused_and_the_last_seed_runs() {
    // Issue 28 item 12: this printed "passed: 5 seeds" after 0 steps.
    let out = sim(&["--seeds", "5", "--first-seed", "18446744073709551615"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("passed"), "{stdout}");
    assert!(
        stderr.contains("goes past the last seed, 18446744073709551615"),
        "{stderr}"
    );
    assert!(stderr.contains("at most 1 seeds from"), "{stderr}");

    // The last seed itself is in range, and is run.
    let out = sim(&["--seeds", "1", "--first-seed", "18446744073709551615"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("simulating seeds 18446744073709551615..18446744073709551616"),
        "{stdout}"
    );
    assert!(stdout.contains("passed: 1 seeds"), "{stdout}");
    assert!(!stdout.contains("steps 0,"), "{stdout}");
}

#[test]
fn one_seed_with_a_seed_range_is_refused() {
    // `--seed S` runs one seed; a range asked for beside it was silently ignored.
    for args in [
        &["--seed", "3", "--seeds", "5"][..],
        &["--seed", "3", "--first-seed", "9"][..],
        &["--first-seed", "9", "--seed", "3"][..],
    ] {
        let out = sim(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.contains("--seed S runs one seed: leave out --seeds and --first-seed"),
            "{args:?}: {stderr}"
        );
    }
    // A storm takes one --seed too, and says why it will not take a range.
    let out = sim(&["storm", "--seed", "3", "--seeds", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("storm: --seeds is for runs of simulator seeds; a storm takes one --seed S"),
        "{stderr}"
    );
}
