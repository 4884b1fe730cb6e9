//! The simulator's command line.
//!
//! ```text
//! persistent-connection-sim [--seeds N] [--first-seed F] [--mutant NAME] [--planned]
//! persistent-connection-sim --seed S [--trace] [--timeline FILE.svg] [--mutant NAME] [--planned]
//! persistent-connection-sim storm [--clients N] [--outage D] [--accept-rate R] [--backlog B]
//!     [--rtt D] [--kill-time D] [--delay D] [--policies a,b,..] [--seed S] [--check]
//!     [--out FILE.svg] [--threads T]
//! ```
//!
//! `storm` runs a reconnect storm (see the library's `storm` module): the table goes to
//! stdout and the picture to `--out` (default `storm.svg`), both the same for the same
//! arguments; wall time and memory per client go to stderr. `--threads` is 1 to 64
//! (default 2); `--out` is opened before the storm runs, so an unwritable file is said at
//! once (exit code 2). Durations are seconds (`5`, `0.5`) or carry a unit (`500ms`,
//! `100us`).
//!
//! `--seeds N` runs seeds `F..F+N` (default 2000 from 0) and replays every 64th seed to
//! check its trace hash (I9); a range whose last seed would pass `u64::MAX` is refused, not
//! wrapped. `--seed S` runs one seed twice (and refuses `--seeds`/`--first-seed` beside
//! it), prints its world settings, totals and trace hash; with `--trace`, its full trace
//! goes to stdout, identical on every run. With `--timeline FILE.svg`, the run is also
//! drawn over virtual time (attempts, connections, events, close and any violation: see
//! the library's `timeline` module), passing or failing. Wall-clock figures go to stderr.
//! On a failure: the seed, the violation, the trace's tail, the shrunk input sequence and
//! the command that reproduces it; exit code 1.
//!
//! `--planned` adds the planned changes of a service's life to every world (copies
//! withdrawn, drained and restarted on a new address, added, catalog entries that flap, the
//! user's handover and retry now: docs/behaviour.md R15–R17, I10, I11); without it a seed's
//! world and trace are what they always were. A mutant that bends handover or retry now
//! turns it on.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant as WallClock;

use persistent_connection_sim::mutants::Mutant;
use persistent_connection_sim::report::{failure_report, reproduce_command, settings_text};
use persistent_connection_sim::storm::{
    Policy, StormConfig, bytes_per_client, run_storm_with, svg, table,
};
use persistent_connection_sim::timeline::record_seed;
use persistent_connection_sim::world::{DEFAULT_SEEDS, RunOptions, Totals, run_seed};

const USAGE: &str = "usage: persistent-connection-sim [--seeds N] [--first-seed F] [--mutant NAME] [--planned]
       persistent-connection-sim --seed S [--trace] [--timeline FILE.svg] [--mutant NAME] [--planned]
       persistent-connection-sim storm [--clients N] [--outage D] [--accept-rate R]
           [--backlog B] [--rtt D] [--kill-time D] [--delay D] [--policies a,b,..]
           [--seed S] [--check] [--out FILE.svg] [--threads T]
policies: constant, exponential, grpc, loop, stubborn (default: all)
durations: seconds (5, 0.5) or with a unit (500ms, 100us, 2s)
mutants: skip-dedup, delay-from-failure, early-disconnected, forget-late-close,
         suppress-failure, early-retry, late-close-finished, drop-failure-outcome,
         drop-aborted-failure, busy-timer, retry-now-twice, gap-in-handover,
         late-retired-close (these three turn --planned on)";

/// Every this many seeds is run twice to compare trace hashes (I9).
const DETERMINISM_EVERY: u64 = 64;

struct Args {
    seeds: u64,
    first_seed: u64,
    /// Whether `--seeds` or `--first-seed` was given (refused beside `--seed`).
    range_given: bool,
    seed: Option<u64>,
    trace: bool,
    timeline: Option<String>,
    mutant: Option<Mutant>,
    planned: bool,
}

impl Args {
    /// The run options of every seed.
    fn options(&self, keep_trace: bool) -> RunOptions {
        RunOptions {
            keep_trace,
            mutant: self.mutant,
            planned: self.planned || self.mutant.is_some_and(Mutant::needs_planned_world),
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seeds: DEFAULT_SEEDS,
        first_seed: 0,
        range_given: false,
        seed: None,
        trace: false,
        timeline: None,
        mutant: None,
        planned: false,
    };
    let mut it = std::env::args().skip(1);
    let number = |name: &str, v: Option<String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{name}: {v:?} is not a whole number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => {
                args.seeds = number("--seeds", it.next())?;
                args.range_given = true;
            }
            "--first-seed" => {
                args.first_seed = number("--first-seed", it.next())?;
                args.range_given = true;
            }
            "--seed" => args.seed = Some(number("--seed", it.next())?),
            "--trace" => args.trace = true,
            "--planned" => args.planned = true,
            "--timeline" => {
                args.timeline = Some(it.next().ok_or("--timeline needs a file name")?);
            }
            "--mutant" => {
                let v = it.next().ok_or("--mutant needs a name")?;
                args.mutant = Some(v.parse()?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.seed.is_some() && args.range_given {
        return Err("--seed S runs one seed: leave out --seeds and --first-seed".into());
    }
    // The range is F..F+N: its last seed, F+N-1, must be a seed (at most u64::MAX).
    if args.seeds > 0 && args.first_seed.checked_add(args.seeds - 1).is_none() {
        return Err(format!(
            "--first-seed {} --seeds {}: the range goes past the last seed, {}; at most {} seeds from {}",
            args.first_seed,
            args.seeds,
            u64::MAX,
            u128::from(u64::MAX - args.first_seed) + 1,
            args.first_seed
        ));
    }
    if args.trace && args.seed.is_none() {
        return Err("--trace needs --seed S".into());
    }
    if args.timeline.is_some() && args.seed.is_none() {
        return Err("--timeline needs --seed S".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("storm") {
        return match parse_storm_args() {
            Ok(a) => storm(&a),
            Err(e) => {
                if !e.is_empty() {
                    eprintln!("error: {e}");
                }
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        };
    }
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
    if t.coverage.handovers + t.coverage.retries_now + t.coverage.handover_failures > 0 {
        let planned: Vec<String> = t
            .coverage
            .planned_counters()
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        println!("planned changes: {}", planned.join(", "));
    }
}

/// Draws seed `seed`'s run into `path` (the run is repeated: a seed fixes everything).
fn write_timeline(seed: u64, options: &RunOptions, path: &str) -> Result<(), String> {
    let (result, timeline) = record_seed(seed, options);
    let mutant = options
        .mutant
        .map_or(String::new(), |m| format!(", mutant {m}"));
    let verdict = match &result {
        Ok(_) => "passed".to_owned(),
        Err(f) => format!("FAILED: {}", f.violation.invariant),
    };
    let title = format!("persistent-connection-sim --seed {seed}{mutant}: {verdict}");
    std::fs::write(path, timeline.svg(&title)).map_err(|e| format!("cannot write {path}: {e}"))?;
    eprintln!("timeline in {path}");
    Ok(())
}

fn one_seed(seed: u64, args: &Args) -> ExitCode {
    let options = args.options(args.trace);
    if let Some(path) = &args.timeline {
        let draw = args.options(false);
        if let Err(e) = write_timeline(seed, &draw, path) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
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
    let options = args.options(false);
    let mutant = args
        .mutant
        .map_or(String::new(), |m| format!(", mutant {m}"));
    let mutant = if options.planned {
        format!("{mutant}, planned changes")
    } else {
        mutant
    };
    // The range was checked when parsing: every seed of it is at most u64::MAX, though
    // its end (one past the last) may not be.
    println!(
        "simulating seeds {}..{}{mutant}",
        args.first_seed,
        u128::from(args.first_seed) + u128::from(args.seeds)
    );
    let mut totals = Totals::default();
    let start = WallClock::now();
    for i in 0..args.seeds {
        let seed = args.first_seed + i;
        match run_seed(seed, &options) {
            Ok(report) => {
                totals.add(&report.totals);
                if i.is_multiple_of(DETERMINISM_EVERY) {
                    match run_seed(seed, &options) {
                        Ok(again) if again.trace_hash == report.trace_hash => {}
                        _ => {
                            println!(
                                "FAILED seed={seed}: I9 (determinism): a replay's trace differs"
                            );
                            println!(
                                "reproduce: {}",
                                reproduce_command(seed, args.mutant, options.planned)
                            );
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

struct StormArgs {
    config: StormConfig,
    policies: Vec<Policy>,
    out: String,
    threads: usize,
}

fn duration(name: &str, v: Option<String>) -> Result<std::time::Duration, String> {
    let v = v.ok_or_else(|| format!("{name} needs a value"))?;
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v.as_str(), 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .and_then(|x| std::time::Duration::try_from_secs_f64(x * scale).ok())
        .ok_or_else(|| format!("{name}: {v:?} is not a duration (say 5, 0.5, 500ms or 100us)"))
}

fn parse_storm_args() -> Result<StormArgs, String> {
    let mut a = StormArgs {
        config: StormConfig::default(),
        policies: Policy::ALL.to_vec(),
        out: "storm.svg".to_owned(),
        threads: 2,
    };
    let mut check = None;
    let mut it = std::env::args().skip(2);
    let number = |name: &str, v: Option<String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.replace(['_', ','], "")
            .parse()
            .map_err(|_| format!("{name}: {v:?} is not a whole number"))
    };
    let small = |name: &str, n: u64| -> Result<u32, String> {
        u32::try_from(n).map_err(|_| format!("{name}: {n} is too large"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--clients" => a.config.clients = small("--clients", number("--clients", it.next())?)?,
            "--outage" => a.config.outage = duration("--outage", it.next())?,
            "--accept-rate" => {
                a.config.accept_rate = small("--accept-rate", number("--accept-rate", it.next())?)?
            }
            "--backlog" => a.config.backlog = small("--backlog", number("--backlog", it.next())?)?,
            "--rtt" => a.config.rtt = duration("--rtt", it.next())?,
            "--kill-time" => a.config.kill_time = duration("--kill-time", it.next())?,
            "--delay" => a.config.base = duration("--delay", it.next())?,
            "--seed" => a.config.seed = number("--seed", it.next())?,
            "--check" => check = Some(true),
            "--no-check" => check = Some(false),
            "--out" => a.out = it.next().ok_or("--out needs a file name")?,
            "--threads" => {
                let n = number("--threads", it.next())?;
                if !(1..=64).contains(&n) {
                    return Err(format!("--threads must be 1 to 64, not {n}"));
                }
                a.threads = n as usize;
            }
            "--seeds" | "--first-seed" => {
                return Err(format!(
                    "storm: {arg} is for runs of simulator seeds; a storm takes one --seed S"
                ));
            }
            "--policies" => {
                let v = it.next().ok_or("--policies needs a list")?;
                a.policies = v
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<Vec<Policy>, String>>()?;
                if a.policies.is_empty() {
                    return Err("--policies: name at least one".into());
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("storm: unknown argument {other:?}")),
        }
    }
    // The invariant checker is on for small runs unless told otherwise.
    a.config.check = check.unwrap_or(a.config.clients <= 1000);
    a.config.validate()?;
    Ok(a)
}

/// Resident memory of this process, from `/proc/self/status` (Linux), in bytes.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn storm(a: &StormArgs) -> ExitCode {
    // The picture's file is opened before the storm runs, so that an unwritable `--out`
    // is said at once, not after the run; it is emptied only when the picture is ready,
    // and removed again if this run created it and the storm failed.
    let existed = std::path::Path::new(&a.out).exists();
    let mut picture = match std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&a.out)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --out: cannot write {}: {e}", a.out);
            return ExitCode::from(2);
        }
    };
    let give_up = || {
        if !existed {
            let _ = std::fs::remove_file(&a.out);
        }
        ExitCode::FAILURE
    };
    let start = WallClock::now();
    // Policies run on `--threads` threads (default 2, one per core of the reference
    // machine); resident memory per client is only measured on one thread.
    let threads = a.threads.min(a.policies.len()).max(1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Longest first (the lockstep loop is the slowest to simulate at scale), so that the
    // threads finish together; the table keeps the order asked for.
    let mut order: Vec<usize> = (0..a.policies.len()).collect();
    order.sort_by_key(|&i| match a.policies[i] {
        Policy::Loop => 0,
        Policy::Constant => 1,
        Policy::Grpc => 2,
        Policy::Exponential => 3,
        Policy::Stubborn => 4,
    });
    let slots: Vec<std::sync::Mutex<Option<String>>> = a
        .policies
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let results: Vec<std::sync::Mutex<Option<_>>> = a
        .policies
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else {
                        break;
                    };
                    let policy = a.policies[i];
                    let t = WallClock::now();
                    let before = rss_bytes();
                    let mut during = None;
                    let r = run_storm_with(&a.config, policy, || during = rss_bytes());
                    let n = f64::from(a.config.clients);
                    let rss = match (threads, before, during) {
                        (1, Some(b), Some(d)) => format!(
                            "{:.0} bytes of RSS after setup",
                            d.saturating_sub(b) as f64 / n
                        ),
                        _ => "RSS per client: run with --threads 1".to_owned(),
                    };
                    let steps = r.as_ref().map_or(0, |r| r.machine_steps);
                    *slots[i].lock().expect("not poisoned") = Some(format!(
                        "{policy}: wall {:.2} s, {steps} machine steps, memory per client: {} bytes by size_of, {rss}",
                        t.elapsed().as_secs_f64(),
                        bytes_per_client(policy),
                    ));
                    *results[i].lock().expect("not poisoned") = Some(r);
                }
            });
        }
    });
    let mut done = Vec::new();
    for (slot, r) in slots.into_iter().zip(results) {
        if let Some(line) = slot.into_inner().expect("not poisoned") {
            eprintln!("{line}");
        }
        match r.into_inner().expect("not poisoned") {
            Some(Ok(r)) => done.push(r),
            Some(Err(v)) => {
                println!("FAILED storm: {v}");
                return give_up();
            }
            None => return give_up(),
        }
    }
    print!("{}", table(&a.config, &done));
    let written = picture.set_len(0).and_then(|()| {
        use std::io::Write as _;
        picture.write_all(svg(&a.config, &done).as_bytes())
    });
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", a.out);
        return ExitCode::FAILURE;
    }
    eprintln!(
        "wall: {:.2} s for {} policies on {threads} threads; picture in {}{}",
        start.elapsed().as_secs_f64(),
        done.len(),
        a.out,
        if a.config.check {
            "; every machine step checked (I1-I8)"
        } else {
            ""
        }
    );
    ExitCode::SUCCESS
}
