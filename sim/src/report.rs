//! Human-readable reports: world settings, failures, reproduction commands.

use std::fmt::Write;

use crate::mutants::Mutant;
use crate::world::{Failure, RunOptions, Settings, replay, run_seed, shrink};

/// The command that replays `seed` (with `mutant`, if any, and the planned changes if
/// `planned`).
pub fn reproduce_command(seed: u64, mutant: Option<Mutant>, planned: bool) -> String {
    let m = mutant.map_or(String::new(), |m| format!(" --mutant {m}"));
    let p = if planned { " --planned" } else { "" };
    format!("cargo run --release -p persistent-connection-sim -- --seed {seed}{m}{p}")
}

/// The world settings, a few lines.
pub fn settings_text(s: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "SEED={} world settings:", s.seed);
    let _ = writeln!(out, "  retry policy: {:?}, jitter {:?}", s.policy, s.jitter);
    let _ = writeln!(
        out,
        "  servers: {}, catalog changes every ~{:?}, server up/down ~{:?}",
        s.servers, s.catalog_change_every, s.server_flaps
    );
    let _ = writeln!(out, "  lookup: {:?}", s.lookup);
    let _ = writeln!(
        out,
        "  connect: {:?}, late connections {}%",
        s.connect, s.late_conn_pct
    );
    let _ = writeln!(
        out,
        "  connections: {}% short (<= {:?}), else <= {:?}; close takes <= {:?}",
        s.short_conn_pct, s.short_life_max, s.long_life_max, s.close_max
    );
    let _ = writeln!(
        out,
        "  handlers take <= {:?}; close() at {:?}, R11 at {:?}, abort {}% of connects, stale inputs every ~{:?}",
        s.handler_max, s.close_at, s.r11_at, s.abort_pct, s.noise_every
    );
    let _ = writeln!(
        out,
        "  active phase: {:?} or {} steps, then close()",
        s.horizon, s.active_steps
    );
    out
}

/// Everything a failing seed should tell: the seed, the violation, the world settings,
/// the trace's tail (from a replay of the seed with its trace kept), the input sequence
/// shrunk by delta debugging, and the exact commands that reproduce it.
pub fn failure_report(seed: u64, mutant: Option<Mutant>, failure: &Failure) -> String {
    let mut out = String::new();
    let v = &failure.violation;
    let planned = failure.planned.is_some();
    let _ = writeln!(out, "FAILED seed={seed}: {v}");
    out.push_str(&settings_text(&failure.settings));
    if let Some(p) = &failure.planned {
        let _ = writeln!(out, "  planned changes: {p:?}");
    }
    // Replay with the trace kept (same seed, same trace) to show its tail.
    let rerun = run_seed(
        seed,
        &RunOptions {
            keep_trace: true,
            mutant,
            planned,
        },
    );
    if let Err(f) = rerun
        && let Some(text) = &f.trace
    {
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        let _ = writeln!(
            out,
            "trace, last {} of {} lines:",
            lines.len() - from,
            lines.len()
        );
        for l in &lines[from..] {
            let _ = writeln!(out, "  {l}");
        }
    }
    if replay(&failure.settings, mutant, &failure.inputs).is_err() {
        let shrunk = shrink(
            &failure.settings,
            mutant,
            &failure.inputs,
            v.invariant,
            4000,
        );
        let _ = writeln!(
            out,
            "shrunk input sequence ({} of {} inputs; replayed on a fresh machine it still breaks {:?}):",
            shrunk.len(),
            failure.inputs.len(),
            v.invariant
        );
        let from = shrunk.len().saturating_sub(60);
        if from > 0 {
            let _ = writeln!(out, "  ... {from} earlier inputs left out");
        }
        for (t, input) in &shrunk[from..] {
            let _ = writeln!(out, "  t={:?} {input:?}", t.since_origin());
        }
        if let Err(sv) = replay(&failure.settings, mutant, &shrunk) {
            let _ = writeln!(out, "  -> {sv}");
        }
    } else {
        let _ = writeln!(
            out,
            "the {} inputs alone do not reproduce it: a liveness failure of the world (its clock, its step caps); replay the seed",
            failure.inputs.len()
        );
    }
    let _ = writeln!(
        out,
        "reproduce: {}",
        reproduce_command(seed, mutant, planned)
    );
    let _ = writeln!(
        out,
        "full trace: {} --trace",
        reproduce_command(seed, mutant, planned)
    );
    out
}
