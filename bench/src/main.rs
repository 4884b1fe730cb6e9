//! Loopback benchmarks of `persistent-connection` against the crates users would pick
//! instead (`stubborn-io`, `tower`'s `reconnect`) and a hand-rolled loop (issue 6).
//!
//! ```text
//! cargo run --release -p persistent-connection-bench -- all            # issue's sizes
//! cargo run --release -p persistent-connection-bench -- all --quick    # smoke run
//! cargo run --release -p persistent-connection-bench -- failover --trials 200
//! ```
//!
//! Scenarios: `baseline`, `failover` (includes `baseline`), `storm`, `drop`, `memory`,
//! `all`; planned change against a real etcd (issue 26, `bench/src/deploy.rs`; `--trials N`
//! gives the runs: 10, the scale-out 3): `deploy`, `deploy-2s`, `retry-now`, `failback`,
//! `scaleout`. Flags (defaults in parentheses):
//! `--libs ours,stubborn,tower,ours-tower,hand,hand-jitter`,
//! `--trials N` (100), `--delay-ms` (100), `--stale-ms` (1000), `--variants
//! removed,stale,two-copies` (all: the failover variants), `--failover-runs N` (1: above 1,
//! the failover tables give medians and ranges of interleaved runs), `--steady-ms` (300),
//! `--timeout-ms` (10),
//! `--clients N` (2000), `--outage-s` (5), `--storm-delay-ms` (1000), `--storm-runs N` (1:
//! above 1, the storm table gives medians and ranges), `--drop-clients N` (10), `--drop-s`
//! (5), `--drop-delay-ms` (100), `--conns N` (10000), `--quick`.
//!
//! Servers run in a child process (`serve`), so killing one resets its connections and the
//! client's CPU and memory figures exclude them. Only 127.0.0.1 is used; every loop is
//! bounded. Results are Markdown tables on stdout, progress on stderr.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

mod client;
mod common;
mod deploy;
mod ours;
mod peers;
mod scenarios;
mod server;
#[allow(dead_code)] // `SharedAddr` serves the Redis drill, not this binary.
mod stubborn_stream;

use peers::Lib;
use scenarios::{Holder, Opts};

fn usage() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "usage: persistent-connection-bench <all|baseline|failover|storm|drop|memory|deploy|deploy-2s|retry-now|failback|scaleout> [flags] \
         (see the crate docs in bench/src/main.rs)",
    )
}

fn bad(msg: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn main() -> io::Result<()> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut command: Option<String> = None;
    let mut rest: Vec<String> = Vec::new();
    let mut opts = Opts::default();
    let mut quick = false;
    let mut explicit: Vec<&'static str> = Vec::new();
    while let Some(arg) = parser.next().map_err(bad)? {
        let num = |p: &mut lexopt::Parser| -> io::Result<u64> {
            p.value().map_err(bad)?.parse::<u64>().map_err(bad)
        };
        match arg {
            Value(v) if command.is_none() => command = Some(v.string().map_err(bad)?),
            Value(v) => rest.push(v.string().map_err(bad)?),
            Long("quick") => quick = true,
            Long("bench") => {} // passed by `cargo bench`
            Long("libs") => {
                let v: String = parser.value().map_err(bad)?.string().map_err(bad)?;
                opts.libs = v
                    .split(',')
                    .map(|s| Lib::parse(s).ok_or_else(|| bad(format!("unknown library {s:?}"))))
                    .collect::<io::Result<_>>()?;
            }
            Long("trials") => {
                opts.trials = num(&mut parser)? as usize;
                explicit.push("trials");
            }
            Long("variants") => {
                let v: String = parser.value().map_err(bad)?.string().map_err(bad)?;
                opts.variants = v
                    .split(',')
                    .map(|s| {
                        scenarios::Variant::parse(s)
                            .ok_or_else(|| bad(format!("unknown failover variant {s:?}")))
                    })
                    .collect::<io::Result<_>>()?;
            }
            Long("failover-runs") => {
                opts.failover_runs = num(&mut parser)?.clamp(1, 100) as usize;
            }
            Long("delay-ms") => opts.failover_delay = Duration::from_millis(num(&mut parser)?),
            Long("stale-ms") => opts.stale = Duration::from_millis(num(&mut parser)?),
            Long("steady-ms") => opts.steady = Duration::from_millis(num(&mut parser)?),
            Long("timeout-ms") => opts.req_timeout = Duration::from_millis(num(&mut parser)?),
            Long("clients") => {
                opts.storm_clients = num(&mut parser)? as usize;
                explicit.push("clients");
            }
            Long("outage-s") => {
                opts.outage = Duration::from_secs(num(&mut parser)?);
                explicit.push("outage");
            }
            Long("storm-delay-ms") => opts.storm_delay = Duration::from_millis(num(&mut parser)?),
            Long("storm-runs") => opts.storm_runs = num(&mut parser)?.clamp(1, 100) as usize,
            Long("drop-clients") => opts.drop_clients = num(&mut parser)? as usize,
            Long("drop-s") => {
                opts.drop_time = Duration::from_secs(num(&mut parser)?);
                explicit.push("drop");
            }
            Long("drop-delay-ms") => opts.drop_delay = Duration::from_millis(num(&mut parser)?),
            Long("conns") => {
                opts.conns = num(&mut parser)? as usize;
                explicit.push("conns");
            }
            _ => return Err(bad(arg.unexpected())),
        }
    }
    if quick {
        // `--quick` shrinks what was not set explicitly.
        let q = opts.clone().quick();
        if !explicit.contains(&"trials") {
            opts.trials = q.trials;
            opts.baseline_samples = q.baseline_samples;
        }
        if !explicit.contains(&"clients") {
            opts.storm_clients = q.storm_clients;
        }
        if !explicit.contains(&"outage") {
            opts.outage = q.outage;
        }
        if !explicit.contains(&"drop") {
            opts.drop_time = q.drop_time;
        }
        if !explicit.contains(&"conns") {
            opts.conns = q.conns;
        }
    }
    // The planned-change scenarios run 10 times unless `--trials` says otherwise (the
    // scale-out, about a minute a run, 3 times).
    let runs = |default: usize| {
        if explicit.contains(&"trials") {
            opts.trials.clamp(1, 100)
        } else {
            default
        }
    };
    let (runs10, runs3) = (runs(10), runs(3));
    let command = command.ok_or_else(usage)?;
    if command == "serve" {
        return server::serve();
    }
    // 10,000 connections need more than the usual 1,024 descriptors.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("could not raise the open-files limit: {e}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command.as_str() {
            "memory-child" => {
                let [holder, conns, addr] = rest.as_slice() else {
                    return Err(usage());
                };
                let holder = Holder::parse(holder).ok_or_else(usage)?;
                let conns: usize = conns.parse().map_err(bad)?;
                let addr: SocketAddr = addr.parse().map_err(bad)?;
                if !addr.ip().is_loopback() {
                    return Err(bad("loopback addresses only"));
                }
                scenarios::memory_child(holder, conns, addr).await
            }
            "baseline" => scenarios::baseline(&opts).await.map(drop),
            "failover" => {
                let base = scenarios::baseline(&opts).await?;
                scenarios::failover(&opts, base).await
            }
            "storm" => scenarios::storm(&opts).await,
            // Planned change (issue 26), against a real etcd.
            "deploy" => {
                let intervals = [Duration::from_secs(2), Duration::from_secs(8)];
                deploy::deploy(runs10, &intervals).await
            }
            "deploy-2s" => deploy::deploy(runs10, &[Duration::from_secs(2)]).await,
            "retry-now" => deploy::retry_now(runs10).await,
            "failback" => deploy::failback(runs10).await,
            "scaleout" => deploy::scaleout(runs3, 100).await,
            "drop" => scenarios::accept_drop(&opts).await,
            "memory" => scenarios::memory(&opts).await,
            "all" => {
                eprintln!("options: {opts:?}");
                let base = scenarios::baseline(&opts).await?;
                scenarios::failover(&opts, base).await?;
                scenarios::storm(&opts).await?;
                scenarios::accept_drop(&opts).await?;
                scenarios::memory(&opts).await
            }
            _ => Err(usage()),
        }
    })
}
