//! Runs the network drills of issue 19 and prints one Markdown table per drill (medians
//! and ranges over the repetitions). `scripts/netlab.sh` runs it as root.
//!
//! ```text
//! netlab-drills [--reps N] [--only 1,2,3,4,5,7]
//! ```
//!
//! Runs of a row whose figures are set by kernel or library timers of seconds (the
//! defaults) run a few at a time, each in a lab of its own; the others one after another.

use std::time::Duration;

use persistent_connection_netlab::drills::{
    Fault, FlapRun, Run, Settings, dead_address_in_catalog, fault_on_current, flapping_link,
    idle_blackhole, partition_then_heal, secs,
};
use persistent_connection_netlab::peers::{self, Peer};

fn main() {
    let mut reps = 3;
    let mut only: Vec<u32> = vec![1, 2, 3, 4, 5, 7];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|n| n.parse().ok()).expect("--reps N"),
            "--only" => {
                only = args
                    .next()
                    .expect("--only 1,2,...")
                    .split(',')
                    .map(|d| d.parse().expect("a drill number"))
                    .collect()
            }
            other => panic!(
                "unknown argument {other}; usage: netlab-drills [--reps N] [--only 1,2,3,4,5,7]"
            ),
        }
    }
    println!(
        "# Network drills (issue 19): {reps} repetitions per row; load average before: {}\n",
        loadavg()
    );
    let warmup = Duration::from_millis(1500);
    if only.contains(&1) {
        table(
            "Drill 1: black hole of the current server (two live copies elsewhere)",
            &[
                row(
                    "defaults",
                    Settings::Defaults.silent_peer_mechanism(),
                    reps,
                    5,
                    || fault_on_current(Fault::Blackhole, Settings::Defaults, warmup, secs_(40)),
                ),
                row(
                    "recommended",
                    Settings::Recommended.silent_peer_mechanism(),
                    reps,
                    1,
                    || fault_on_current(Fault::Blackhole, Settings::Recommended, warmup, secs_(10)),
                ),
                row(
                    Settings::DefaultsHealth.name(),
                    Settings::DefaultsHealth.silent_peer_mechanism(),
                    reps,
                    1,
                    || {
                        fault_on_current(
                            Fault::Blackhole,
                            Settings::DefaultsHealth,
                            warmup,
                            secs_(20),
                        )
                    },
                ),
                row(
                    Settings::DefaultsHealthFollow.name(),
                    Settings::DefaultsHealthFollow.silent_peer_mechanism(),
                    reps,
                    1,
                    || {
                        fault_on_current(
                            Fault::Blackhole,
                            Settings::DefaultsHealthFollow,
                            warmup,
                            secs_(20),
                        )
                    },
                ),
            ],
        );
    }
    if only.contains(&1) {
        println!(
            "## Drill 1 on an idle connection: black hole of the server in use, no request in flight\n"
        );
        println!("| configuration | runs | to notice, median (range) | closed by |");
        println!("| --- | --- | --- | --- |");
        for settings in [Settings::Defaults, Settings::Recommended] {
            let runs = repeat(reps, 5, || idle_blackhole(settings, secs_(40)));
            let noticed: Vec<_> = runs.iter().map(|(n, _)| *n).collect();
            let mut by: Vec<String> = runs.iter().filter_map(|(_, b)| b.clone()).collect();
            by.sort();
            by.dedup();
            println!(
                "| {} | {} | {} | {} |",
                settings.name(),
                runs.len(),
                range(&noticed),
                by.join(", ")
            );
        }
        println!();
    }
    if only.contains(&2) {
        table(
            "Drill 2: black-holed address first in the catalog (noticed: the failed attempt)",
            &[
                row("defaults", "connect timeout (10 s)", reps, 5, || {
                    dead_address_in_catalog(Settings::Defaults, secs_(30))
                }),
                row("recommended", "connect timeout (1 s)", reps, 1, || {
                    dead_address_in_catalog(Settings::Recommended, secs_(10))
                }),
            ],
        );
    }
    if only.contains(&3) {
        let mut rows = Vec::new();
        for fault in [Fault::Reject, Fault::DropToServer, Fault::DropToClient] {
            for settings in [Settings::Defaults, Settings::Recommended] {
                let mechanism = if fault == Fault::Reject {
                    "reset (the reader)"
                } else {
                    settings.silent_peer_mechanism()
                };
                let (parallel, limit) = match settings {
                    Settings::Defaults => (5, secs_(40)),
                    Settings::Recommended | Settings::DefaultsHealthFollow => (1, secs_(10)),
                    Settings::DefaultsHealth => (1, secs_(20)),
                };
                rows.push(row(
                    &format!("{}, {}", fault.name(), settings.name()),
                    mechanism,
                    reps,
                    parallel,
                    || fault_on_current(fault, settings, warmup, limit),
                ));
            }
        }
        table(
            "Drill 3: reject (RST) and one-way drops of the current server",
            &rows,
        );
    }
    if only.contains(&4) {
        let runs = repeat(reps, 1, || {
            partition_then_heal(Settings::Recommended, warmup, secs_(10))
        });
        let cut: Vec<Run> = runs.iter().map(|(c, _)| c.clone()).collect();
        let healed: Vec<Run> = runs.iter().map(|(_, h)| h.clone()).collect();
        let back = runs
            .iter()
            .filter(|(c, h)| h.served_by == Some(c.faulted))
            .count();
        table(
            "Drill 4: partition of the client from its copy (others reachable), then heal (recommended settings)",
            &[
                summarize("partition", "health check", &cut),
                summarize(
                    &format!(
                        "after heal, next copy rejects: healed copy serves again in {back}/{} runs",
                        runs.len()
                    ),
                    "reset, then the picker's next sweep",
                    &healed,
                ),
            ],
        );
    }
    if only.contains(&5) {
        let runs = repeat(reps, 1, || {
            flapping_link(Settings::Recommended, Duration::from_secs(1), secs_(30))
        });
        flap_table(&runs);
    }
    if only.contains(&7) {
        for (drill, title) in [
            (
                1,
                "Drill 7 (drill 1 for the peers): black hole of the current server",
            ),
            (
                2,
                "Drill 7 (drill 2 for the peers): black-holed address first in the catalog",
            ),
            (
                3,
                "Drill 7 (drill 3 for the peers): reject (RST) of the current server",
            ),
            (
                4,
                "Drill 7 (drill 4 for the peers): partition of the client from its copy",
            ),
        ] {
            let mut rows = Vec::new();
            for peer in Peer::ALL {
                rows.push(row(peer.name(), peer.mechanism(drill), reps, 5, || {
                    peers::drill(peer, drill, warmup, secs_(15))
                }));
            }
            table(title, &rows);
        }
    }
    println!("load average after: {}", loadavg());
}

fn secs_(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `n` runs of `f`, `parallel` at a time (each in a lab of its own).
fn repeat<T: Send>(n: usize, parallel: usize, f: impl Fn() -> T + Sync) -> Vec<T> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = parallel.min(n - out.len()).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..batch).map(|_| s.spawn(&f)).collect();
            for h in handles {
                out.push(h.join().expect("a drill run panicked"));
            }
        });
    }
    out
}

fn row(
    name: &str,
    mechanism: &str,
    reps: usize,
    parallel: usize,
    f: impl Fn() -> Run + Sync,
) -> String {
    let runs = repeat(reps, parallel, f);
    summarize(name, mechanism, &runs)
}

fn range(xs: &[Option<Duration>]) -> String {
    let mut v: Vec<Option<Duration>> = xs.to_vec();
    v.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    if v.is_empty() {
        return "-".into();
    }
    format!(
        "{} ({}–{})",
        secs(v[v.len() / 2]),
        secs(v[0]),
        secs(v[v.len() - 1])
    )
}

fn summarize(name: &str, mechanism: &str, runs: &[Run]) -> String {
    let noticed: Vec<_> = runs.iter().map(|r| r.noticed).collect();
    let gap: Vec<_> = runs.iter().map(|r| r.gap).collect();
    let mut failed: Vec<usize> = runs.iter().map(|r| r.failed).collect();
    failed.sort();
    let slowest = runs.iter().map(|r| r.slowest).max().unwrap_or_default();
    let other = runs
        .iter()
        .filter(|r| r.served_by.is_some() && r.served_by != Some(r.faulted))
        .count();
    let by_check = runs
        .iter()
        .filter(|r| r.closed_by.as_deref() == Some("closed by the health check"))
        .count();
    let by_conn = runs
        .iter()
        .filter(|r| r.closed_by.as_deref() == Some("closed by the connection"))
        .count();
    let mechanism = if by_check + by_conn > 0 {
        format!("{mechanism} (closed: {by_check} by the health check, {by_conn} by the connection)")
    } else {
        mechanism.to_string()
    };
    format!(
        "| {name} | {} | {mechanism} | {} | {} | {} (max {}) | {} ms | {other}/{} |",
        runs.len(),
        range(&noticed),
        range(&gap),
        failed.get(failed.len() / 2).copied().unwrap_or(0),
        failed.last().copied().unwrap_or(0),
        slowest.as_millis(),
        runs.len(),
    )
}

fn table(title: &str, rows: &[String]) {
    println!("## {title}\n");
    println!(
        "| configuration | runs | noticed by | to notice, median (range) | service gap, median (range) | failed requests, median (max) | slowest request | served by another copy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
    println!();
}

fn flap_table(runs: &[FlapRun]) {
    println!(
        "## Drill 5: flapping link (client cut from every copy 1 s on / 1 s off, {} s; recommended settings)\n",
        runs.first().map_or(0, |r| r.flapping.as_secs())
    );
    println!(
        "| run | events | Disconnected | repeated failures in a round (R4) | requests (failed) | slowest request | tasks before/after | client sockets before/after | process RSS KiB before/after | service back |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} ({}) | {} ms | {}/{} | {}/{} | {}/{} | {} |",
            i + 1,
            r.events,
            r.disconnections,
            r.repeated_failures,
            r.requests,
            r.failed,
            r.slowest.as_millis(),
            r.tasks.0,
            r.tasks.1,
            r.sockets.0,
            r.sockets.1,
            r.rss_kib.0,
            r.rss_kib.1,
            if r.recovered { "yes" } else { "no" }
        );
    }
    println!();
}
