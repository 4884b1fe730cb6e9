//! The reconnect storm: deterministic, checked, and its server model holds its bounds.

use std::process::Command;
use std::time::Duration;

use persistent_connection_sim::storm::{Policy, StormConfig, run_storm, svg, table};

fn small() -> StormConfig {
    StormConfig {
        clients: 300,
        outage: Duration::from_secs(5),
        base: Duration::from_secs(1),
        check: true,
        ..StormConfig::default()
    }
}

#[test]
fn every_policy_brings_every_client_back_with_every_machine_step_checked() {
    let config = small();
    for policy in Policy::ALL {
        let r = run_storm(&config, policy).unwrap_or_else(|v| panic!("{policy}: {v}"));
        assert_eq!(r.reconnected, 300, "{policy}");
        assert!(r.time_to[2].is_some(), "{policy}: 100 % never reached");
        assert!(r.time_to[0] <= r.time_to[1] && r.time_to[1] <= r.time_to[2]);
        assert_eq!(
            r.machine_steps > 0,
            policy.is_machine(),
            "{policy}: machines only for this project's policies"
        );
        // Nobody gets in while the server is down.
        assert_eq!(r.refused, r.attempts - 300, "{policy}: one success each");
    }
}

#[test]
fn the_same_seed_gives_the_same_table_and_picture_and_another_seed_differs() {
    let config = StormConfig {
        check: false,
        ..small()
    };
    let run = |c: &StormConfig| -> Vec<_> {
        Policy::ALL
            .iter()
            .map(|&p| run_storm(c, p).expect("passes"))
            .collect()
    };
    let a = run(&config);
    let b = run(&config);
    assert_eq!(a, b);
    assert_eq!(table(&config, &a), table(&config, &b));
    assert_eq!(svg(&config, &a), svg(&config, &b));
    let other = StormConfig { seed: 1, ..config };
    let c = run_storm(&other, Policy::Constant).expect("passes");
    assert_ne!(c, a[0], "the seed drives the jitter");
}

// Issue 22: the linear time axis spent its width on the slowest policy's recovery. A third
// panel puts the recovery on a log axis of the time since the restart, one line and one
// 99 % mark per policy.
#[test]
fn the_picture_shows_each_recovery_on_a_log_axis_with_its_99_percent_point() {
    let config = StormConfig {
        check: false,
        ..small()
    };
    let results: Vec<_> = Policy::ALL
        .iter()
        .map(|&p| run_storm(&config, p).expect("passes"))
        .collect();
    let picture = svg(&config, &results);
    assert!(picture.contains("seconds since the server came back (log scale)"));
    // Three panels of one line per policy.
    assert_eq!(picture.matches("<polyline").count(), 3 * Policy::ALL.len());
    for r in &results {
        let t99 = r.time_to[1].expect("everyone is back in the small storm");
        let mark = format!(
            "{}: 99 % back {:.1} s after the restart",
            r.policy,
            t99.as_secs_f64()
        );
        assert!(picture.contains(&mark), "{mark}");
    }
}

#[test]
fn the_policies_keep_their_shapes() {
    let config = StormConfig {
        check: false,
        ..small()
    };
    let per_client = |p: Policy| {
        let r = run_storm(&config, p).expect("passes");
        r.outage_attempts as f64 / 300.0
    };
    // The loop: at once after the reset, then once per base delay (0, 1, 2, 3, 4, 5 s):
    // the restart comes 5 s after the *last* reset, so the attempt at 5 s is refused too.
    // (The last clients reset, whose drift of a round trip per attempt takes them past the
    // restart, get in at the sixth.)
    let lockstep = per_client(Policy::Loop);
    assert!((5.9..=6.0).contains(&lockstep), "{lockstep}");
    // stubborn-io sleeps 1 s, then 2 s: attempts at about 1 s and 3 s; the next at about
    // 7 s is after the restart.
    assert_eq!(per_client(Policy::Stubborn), 2.0);
    // This project: at once, then every 0.7–1.3 s.
    let constant = per_client(Policy::Constant);
    assert!((4.8..6.2).contains(&constant), "{constant}");
    let lockstep = run_storm(&config, Policy::Loop).expect("passes");
    let t99 = lockstep.time_to[1].expect("back").as_secs_f64();
    assert!(
        (0.97..1.0).contains(&t99),
        "the loop's next wave, a base delay later: {t99}"
    );
    // Exponential ×2 from 1 s: 0, ~1, ~3 s.
    let exponential = per_client(Policy::Exponential);
    assert!((2.0..=4.0).contains(&exponential), "{exponential}");
    // Without jitter the loop comes back in one wave; the jitter spreads this project's.
    let lockstep = run_storm(&config, Policy::Loop).expect("passes");
    let jittered = run_storm(&config, Policy::Constant).expect("passes");
    // (Nearly) all 300 within one 100 ms window: the wave is as wide as the kill, 20 ms.
    assert!(
        lockstep.peak_accepts_per_s >= 2900,
        "{}",
        lockstep.peak_accepts_per_s
    );
    assert!(jittered.peak_accepts_per_s < lockstep.peak_accepts_per_s / 2);
}

#[test]
fn a_full_backlog_refuses_and_the_accept_rate_bounds_recovery() {
    // 5,000 clients, backlog 100, 1,000 accepts/s: no more than backlog + rate·t can be
    // connected t seconds after the restart.
    let config = StormConfig {
        clients: 5000,
        outage: Duration::from_secs(2),
        accept_rate: 1000,
        backlog: 100,
        base: Duration::from_millis(500),
        check: false,
        ..StormConfig::default()
    };
    for policy in [Policy::Constant, Policy::Loop] {
        let r = run_storm(&config, policy).expect("passes");
        assert_eq!(r.reconnected, 5000, "{policy}");
        assert!(r.refused_after_restart > 0, "{policy}: the backlog filled");
        let t100 = r.time_to[2].expect("everyone back").as_secs_f64();
        assert!(t100 >= (5000.0 - 100.0) / 1000.0, "{policy}: {t100} s");
        assert!(
            r.peak_accepts_per_s <= 1000 + 10,
            "{policy}: {}",
            r.peak_accepts_per_s
        );
    }
}

#[test]
fn bad_storm_parameters_get_a_clear_error() {
    for (config, message) in [
        (
            StormConfig {
                clients: 0,
                ..StormConfig::default()
            },
            "--clients",
        ),
        (
            StormConfig {
                accept_rate: 0,
                ..StormConfig::default()
            },
            "--accept-rate",
        ),
        (
            StormConfig {
                rtt: Duration::ZERO,
                ..StormConfig::default()
            },
            "--rtt",
        ),
    ] {
        let e = config.validate().expect_err("rejected");
        assert!(e.contains(message), "{e}");
    }
}

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_persistent-connection-sim"))
        .args(args)
        .output()
        .expect("the simulator runs")
}

#[test]
fn the_storm_command_prints_its_table_and_writes_its_picture() {
    let dir = std::env::temp_dir().join(format!("storm-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("storm.svg");
    let out = out.to_str().unwrap();
    let args = [
        "storm",
        "--clients",
        "200",
        "--outage",
        "2",
        "--delay",
        "500ms",
        "--seed",
        "3",
        "--out",
        out,
    ];
    let a = sim(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let picture = std::fs::read_to_string(out).unwrap();
    let b = sim(&args);
    assert_eq!(a.stdout, b.stdout, "same arguments, same table");
    assert_eq!(
        picture,
        std::fs::read_to_string(out).unwrap(),
        "same picture"
    );
    let stdout = String::from_utf8_lossy(&a.stdout);
    for p in Policy::ALL {
        assert!(stdout.contains(&format!("| {p} |")), "{stdout}");
    }
    assert!(picture.starts_with("<svg") && picture.contains("<polyline"));
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(stderr.contains("every machine step checked"), "{stderr}");
    assert!(stderr.contains("bytes by size_of"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();

    let bad = sim(&["storm", "--policies", "constant,nope"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown policy \"nope\""));
    let bad = sim(&["storm", "--outage", "soon"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a duration"));
}

#[test]
fn a_thread_count_out_of_range_is_refused() {
    // Issue 28 item 12: `--threads 0` silently became 1 (and 65 silently became 64).
    for n in ["0", "65"] {
        let out = sim(&["storm", "--clients", "10", "--threads", n]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--threads {n}: {stderr}");
        assert!(out.stdout.is_empty(), "--threads {n}");
        assert!(
            stderr.contains(&format!("--threads must be 1 to 64, not {n}")),
            "{stderr}"
        );
    }
}

#[test]
fn an_unwritable_picture_file_is_refused_before_the_storm_runs() {
    // Issue 28 item 12: a bad `--out` was found only after the whole storm ran (the table
    // already printed). A missing folder is unwritable even for root.
    let dir = std::env::temp_dir().join(format!("storm-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("no-such-folder").join("storm.svg");
    for out_path in [missing.to_str().unwrap(), dir.to_str().unwrap()] {
        let out = sim(&["storm", "--clients", "10", "--out", out_path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{out_path}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "no table: the storm did not run\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&format!("--out: cannot write {out_path}")),
            "{stderr}"
        );
        assert!(!stderr.contains("wall:"), "{stderr}");
    }
    assert!(!missing.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
