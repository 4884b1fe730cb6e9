//! The simulator's command line.
//!
//! ```text
//! persistent-connection-sim [--seeds N] [--first-seed F] [--mutant NAME]
//! persistent-connection-sim --seed S [--trace] [--mutant NAME]
//! ```
//!
//! `--seeds N` runs seeds `F..F+N` (default 2000 from 0) and replays every 64th seed to
//! check its trace hash (I9). `--seed S` runs one seed twice, prints its world settings,
//! totals and trace hash; with `--trace`, its full trace goes to stdout, identical on every
//! run. Wall-clock figures go to stderr. On a failure: the seed, the violation, the trace's
//! tail, the shrunk input sequence and the command that reproduces it; exit code 1.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant as WallClock;

use persistent_connection_sim::mutants::Mutant;
use persistent_connection_sim::report::{failure_report, reproduce_command, settings_text};
use persistent_connection_sim::world::{DEFAULT_SEEDS, RunOptions, Totals, run_seed};

const USAGE: &str = "usage: persistent-connection-sim [--seeds N] [--first-seed F] [--mutant NAME]
       persistent-connection-sim --seed S [--trace] [--mutant NAME]
mutants: skip-dedup, delay-from-failure, early-disconnected, forget-late-close,
         suppress-failure, early-retry, late-close-finished, drop-failure-outcome, busy-timer";

/// Every this many seeds is run twice to compare trace hashes (I9).
const DETERMINISM_EVERY: u64 = 64;

struct Args {
    seeds: u64,
    first_seed: u64,
    seed: Option<u64>,
    trace: bool,
    mutant: Option<Mutant>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: DEFAULT_SEEDS,
        first_seed: 0,
        seed: None,
        trace: false,
        mutant: None,
    };
    let mut it = std::env::args().skip(1);
    let number = |name: &str, v: Option<String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{name}: {v:?} is not a whole number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => args.seeds = number("--seeds", it.next())?,
            "--first-seed" => args.first_seed = number("--first-seed", it.next())?,
            "--seed" => args.seed = Some(number("--seed", it.next())?),
            "--trace" => args.trace = true,
            "--mutant" => {
                let v = it.next().ok_or("--mutant needs a name")?;
                args.mutant = Some(v.parse()?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.trace && args.seed.is_none() {
        return Err("--trace needs --seed S".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match args.seed {
        Some(seed) => one_seed(seed, &args),
        None => many_seeds(&args),
    }
}

fn print_totals(t: &Totals) {
    println!(
        "totals: steps {}, events {}, attempts {}, connections {}, late connections {}, connection closes {}, closes {}, simulated time {:.1} s",
        t.steps,
        t.events,
        t.attempts,
        t.connections,
        t.late_connections,
        t.conn_closes,
        t.closes,
        t.sim_time.as_secs_f64()
    );
    let coverage: Vec<String> = t
        .coverage
        .counters()
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!("coverage: {}", coverage.join(", "));
}

fn one_seed(seed: u64, args: &Args) -> ExitCode {
    let options = RunOptions {
        keep_trace: args.trace,
        mutant: args.mutant,
    };
    let start = WallClock::now();
    let first = run_seed(seed, &options);
    let wall = start.elapsed();
    match first {
        Ok(report) => {
            if let Some(text) = &report.trace {
                print!("{text}");
            }
            let again = run_seed(seed, &options);
            print!("{}", settings_text(&report.settings));
            print_totals(&report.totals);
            println!("trace hash: {:016x}", report.trace_hash);
            match again {
                Ok(r2) if r2.trace_hash == report.trace_hash => {
                    println!("determinism (I9): replay gives the same trace hash");
                }
                Ok(r2) => {
                    println!(
                        "FAILED seed={seed}: I9 (determinism) replay hash {:016x} differs",
                        r2.trace_hash
                    );
                    return ExitCode::FAILURE;
                }
                Err(f) => {
                    println!(
                        "FAILED seed={seed}: I9 (determinism) replay failed: {}",
                        f.violation
                    );
                    return ExitCode::FAILURE;
                }
            }
            eprintln!(
                "wall: {:.3} ms, {:.0} simulated steps/s",
                wall.as_secs_f64() * 1e3,
                report.totals.steps as f64 / wall.as_secs_f64().max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if let Some(text) = &failure.trace {
                print!("{text}");
            }
            print!("{}", failure_report(seed, args.mutant, &failure));
            ExitCode::FAILURE
        }
    }
}

fn many_seeds(args: &Args) -> ExitCode {
    let options = RunOptions {
        keep_trace: false,
        mutant: args.mutant,
    };
    let mutant = args
        .mutant
        .map_or(String::new(), |m| format!(", mutant {m}"));
    println!(
        "simulating seeds {}..{}{mutant}",
        args.first_seed,
        args.first_seed.saturating_add(args.seeds)
    );
    let mut totals = Totals::default();
    let start = WallClock::now();
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        match run_seed(seed, &options) {
            Ok(report) => {
                totals.add(&report.totals);
                if (seed - args.first_seed).is_multiple_of(DETERMINISM_EVERY) {
                    match run_seed(seed, &options) {
                        Ok(again) if again.trace_hash == report.trace_hash => {}
                        _ => {
                            println!(
                                "FAILED seed={seed}: I9 (determinism): a replay's trace differs"
                            );
                            println!("reproduce: {}", reproduce_command(seed, args.mutant));
                            return ExitCode::FAILURE;
                        }
                    }
                }
            }
            Err(failure) => {
                print!("{}", failure_report(seed, args.mutant, &failure));
                return ExitCode::FAILURE;
            }
        }
    }
    let wall = start.elapsed();
    println!("passed: {} seeds, all invariants held", args.seeds);
    print_totals(&totals);
    eprintln!(
        "wall: {:.3} s, {:.0} simulated steps/s",
        wall.as_secs_f64(),
        totals.steps as f64 / wall.as_secs_f64().max(1e-9)
    );
    ExitCode::SUCCESS
}
