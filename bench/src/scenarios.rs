//! The loopback scenarios of issue 6. Each prints one Markdown table on stdout (progress
//! goes to stderr), with this project, the peers and the baseline side by side.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::common::{
    ATTEMPTS, CONNECTS, Catalog, EchoConn, Servers, cpu_seconds, quantile, reset_counters,
    rss_bytes, tcp_connect,
};
use crate::peers::{self, Lib, Mode, Setup};
use crate::server::REPLY_LEN;

/// Scenario sizes; the defaults are the issue's.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Which clients to run.
    pub libs: Vec<Lib>,
    /// Failover trials per library and variant.
    pub trials: usize,
    /// Failover: base retry delay.
    pub failover_delay: Duration,
    /// Failover, second variant: how long the dead server stays listed.
    pub stale: Duration,
    /// Failover: which variants to run.
    pub variants: Vec<Variant>,
    /// Failover: runs per client and variant (order rotated each run); above 1, the table
    /// gives each figure's median and range.
    pub failover_runs: usize,
    /// Failover: how long each trial runs on one server before it is killed.
    pub steady: Duration,
    /// Request period.
    pub every: Duration,
    /// Reply timeout of each request.
    pub req_timeout: Duration,
    /// Bare connect + request samples for the physical baseline.
    pub baseline_samples: usize,
    /// Storm: clients.
    pub storm_clients: usize,
    /// Storm: how long the server stays down.
    pub outage: Duration,
    /// Storm: base retry delay.
    pub storm_delay: Duration,
    /// Storm: runs per client (order rotated each run); above 1, the table gives each
    /// figure's median and range.
    pub storm_runs: usize,
    /// Accept-then-drop: clients.
    pub drop_clients: usize,
    /// Accept-then-drop: run time.
    pub drop_time: Duration,
    /// Accept-then-drop: base retry delay.
    pub drop_delay: Duration,
    /// Memory: idle connections.
    pub conns: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            libs: Lib::ALL.to_vec(),
            trials: 100,
            failover_delay: Duration::from_millis(100),
            stale: Duration::from_millis(1000),
            variants: Variant::ALL.to_vec(),
            failover_runs: 1,
            steady: Duration::from_millis(300),
            every: Duration::from_millis(1),
            req_timeout: Duration::from_millis(10),
            baseline_samples: 1000,
            storm_clients: 2000,
            outage: Duration::from_secs(5),
            storm_delay: Duration::from_secs(1),
            storm_runs: 1,
            drop_clients: 10,
            drop_time: Duration::from_secs(5),
            drop_delay: Duration::from_millis(100),
            conns: 10_000,
        }
    }
}

impl Opts {
    /// Smaller sizes for a smoke run.
    pub fn quick(mut self) -> Opts {
        self.trials = 10;
        self.baseline_samples = 200;
        self.storm_clients = 200;
        self.outage = Duration::from_secs(2);
        self.drop_time = Duration::from_secs(2);
        self.conns = 1000;
        self
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// [`ratio`] with two decimals, for the goals stated to a tenth (≤ 1.1×).
fn ratio2(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}×", x / base)
    } else {
        "–".to_owned()
    }
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.1}×", x / base)
    } else {
        "–".to_owned()
    }
}

/// Connect + one request/response on loopback, no library: the physical limit to quote
/// beside failover. Returns the sorted samples.
pub async fn bare_connect(addr: SocketAddr, samples: usize) -> io::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    let mut buf = [0u8; REPLY_LEN];
    for seq in 0..samples as u64 {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(&seq.to_le_bytes()).await?;
        s.read_exact(&mut buf).await?;
        out.push(t.elapsed());
    }
    out.sort();
    Ok(out)
}

/// The physical limit, printed as a small table; returns its median.
pub async fn baseline(opts: &Opts) -> io::Result<Duration> {
    let mut servers = Servers::spawn().await?;
    let (addr, _) = servers.start("base", "echo", 0).await?;
    let s = bare_connect(addr, opts.baseline_samples).await?;
    servers.quit().await;
    println!(
        "\n### Physical limit: bare `TcpStream::connect` + one request/response ({} samples)\n",
        s.len()
    );
    println!("| p50 ms | p99 ms | max ms |\n| ---: | ---: | ---: |");
    println!(
        "| {} | {} | {} |",
        ms(quantile(&s, 0.5)),
        ms(quantile(&s, 0.99)),
        ms(quantile(&s, 1.0))
    );
    Ok(quantile(&s, 0.5))
}

struct FailoverResult {
    gaps: Vec<Duration>,
    failed: usize,
}

/// How the catalog treats the dead server during a failover trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Removed from the catalog at once: only the live copy is listed.
    Removed,
    /// Still listed for `--stale-ms`, then removed.
    Stale,
    /// Both copies stay listed for the whole trial (the dead one refuses connects); this
    /// project picks with the library's picker, which skips the copy it handed out last;
    /// the others pick one listed copy at random per attempt, as in the other variants.
    TwoCopies,
}

impl Variant {
    /// All of them, in table order.
    pub const ALL: [Variant; 3] = [Variant::Removed, Variant::Stale, Variant::TwoCopies];

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Variant> {
        match s {
            "removed" => Some(Variant::Removed),
            "stale" => Some(Variant::Stale),
            "two-copies" => Some(Variant::TwoCopies),
            _ => None,
        }
    }

    fn name(self, opts: &Opts) -> String {
        match self {
            Variant::Removed => "dead server removed from the catalog at once".to_owned(),
            Variant::Stale => format!("dead server still listed for {} ms", ms(opts.stale)),
            Variant::TwoCopies => {
                "both copies stay listed (this project: the library's picker)".to_owned()
            }
        }
    }
}

/// Failover, one table per variant.
pub async fn failover(opts: &Opts, base_p50: Duration) -> io::Result<()> {
    let runs = opts.failover_runs.max(1);
    for &variant in &opts.variants {
        let mut rows: Vec<(Lib, Vec<FailoverResult>)> =
            opts.libs.iter().map(|&l| (l, Vec::new())).collect();
        for run in 0..runs {
            // Each run starts one client later, so no client always goes first or last.
            for k in 0..rows.len() {
                let i = (run + k) % rows.len();
                let lib = rows[i].0;
                eprintln!(
                    "failover ({}) {} (run {} of {runs})…",
                    variant.name(opts),
                    lib.name(),
                    run + 1
                );
                let r = failover_one(opts, lib, variant).await?;
                rows[i].1.push(r);
            }
        }
        println!(
            "\n### Failover, {}: gap from kill to the first reply from the other server\n",
            variant.name(opts)
        );
        println!(
            "base delay {} ms, a request every {} ms (reply timeout {} ms; a request whose \
             reply the reset lost is resent at once), {} trials; ratio = p50 / bare \
             connect+request p50 ({} ms) measured in the same run{}\n",
            ms(opts.failover_delay),
            ms(opts.every),
            ms(opts.req_timeout),
            opts.trials,
            ms(base_p50),
            if runs > 1 {
                format!(
                    ". Each figure is the median of {runs} runs (clients interleaved, the \
                     order rotated each run), its range in brackets"
                )
            } else {
                String::new()
            }
        );
        println!(
            "| client | p50 ms | p99 ms | max ms | p50 ratio | trials without failover (10 s) |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (lib, rs) in rows {
            let q =
                |q: f64| Spread::of(rs.iter().map(|r| quantile(&r.gaps, q).as_secs_f64() * 1e3));
            let p50 = q(0.5);
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                lib.name(),
                p50.show(runs, 3),
                q(0.99).show(runs, 3),
                q(1.0).show(runs, 3),
                ratio(p50.median / 1e3, base_p50.as_secs_f64()),
                rs.iter().map(|r| r.failed).sum::<usize>()
            );
        }
    }
    Ok(())
}

async fn failover_one(opts: &Opts, lib: Lib, variant: Variant) -> io::Result<FailoverResult> {
    let stale = match variant {
        Variant::Removed => None,
        Variant::Stale => Some(opts.stale),
        // Past the give-up time: never removed during a trial.
        Variant::TwoCopies => Some(Duration::from_secs(3600)),
    };
    let mut servers = Servers::spawn().await?;
    let (addr_a, id_a) = servers.start("a", "echo", 0).await?;
    let (addr_b, id_b) = servers.start("b", "echo", 0).await?;
    let mut ids = [id_a, id_b];
    let addrs = [addr_a, addr_b];
    let names = ["a", "b"];
    let catalog = Catalog::new(&addrs);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = peers::spawn(
        lib,
        Setup {
            catalog: catalog.clone(),
            delay: opts.failover_delay,
            stop: stop_rx,
            seed: 1,
            picker: variant == Variant::TwoCopies,
        },
        Mode::Requests {
            every: opts.every,
            timeout: opts.req_timeout,
            sink: tx,
        },
    );
    let mut result = FailoverResult {
        gaps: Vec::new(),
        failed: 0,
    };
    let give_up = Duration::from_secs(10);
    for _trial in 0..opts.trials {
        // Run on one server for `steady`, then find which one answers.
        tokio::time::sleep(opts.steady).await;
        let mut last = None;
        while let Ok(m) = rx.try_recv() {
            last = Some(m);
        }
        let current = match last {
            Some((at, server)) if at.elapsed() < Duration::from_millis(100) => server,
            _ => {
                // Not answering (should not happen): wait for any reply, bounded.
                match tokio::time::timeout(give_up, rx.recv()).await {
                    Ok(Some((_, server))) => server,
                    _ => {
                        result.failed += 1;
                        continue;
                    }
                }
            }
        };
        let Some(dead) = ids.iter().position(|id| *id == current) else {
            // A reply from a server generation already replaced: not a trial.
            eprintln!("  trial skipped: reply from a replaced server");
            continue;
        };
        let other = ids[1 - dead];
        let t0 = Instant::now();
        if stale.is_none() {
            catalog.remove(addrs[dead]);
        }
        servers.kill(names[dead]).await?;
        let mut removed = stale.is_none();
        let remove_at = tokio::time::Instant::from_std(t0 + stale.unwrap_or_default());
        let deadline = tokio::time::Instant::from_std(t0 + give_up);
        let gap = loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some((at, server)) if server == other && at > t0 => break Some(at - t0),
                    Some(_) => {}
                    None => break None,
                },
                _ = tokio::time::sleep_until(remove_at), if !removed => {
                    catalog.remove(addrs[dead]);
                    removed = true;
                }
                _ = tokio::time::sleep_until(deadline) => break None,
            }
        };
        match gap {
            Some(g) => result.gaps.push(g),
            None => result.failed += 1,
        }
        // Bring the dead server back on its port and list both again.
        let (_, new_id) = servers
            .start(names[dead], "echo", addrs[dead].port())
            .await?;
        ids[dead] = new_id;
        catalog.set(&addrs);
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), client).await;
    servers.quit().await;
    result.gaps.sort();
    Ok(result)
}

/// The reconnect storm.
pub async fn storm(opts: &Opts) -> io::Result<()> {
    let n = opts.storm_clients;
    let runs = opts.storm_runs.max(1);
    let mut rows: Vec<(Lib, Vec<StormResult>)> =
        opts.libs.iter().map(|&l| (l, Vec::new())).collect();
    for run in 0..runs {
        // Each run starts one client later, so no client always goes first or last.
        for k in 0..rows.len() {
            let i = (run + k) % rows.len();
            let lib = rows[i].0;
            eprintln!("storm {} (run {} of {runs})…", lib.name(), run + 1);
            let r = storm_one(opts, lib).await?;
            rows[i].1.push(r);
        }
    }
    println!(
        "\n### Reconnect storm: {n} clients, server down {} s, base delay {} ms\n",
        opts.outage.as_secs_f64(),
        ms(opts.storm_delay)
    );
    println!(
        "Attempts: `TcpStream::connect` calls while the server is down (including the \
         reconnect right after the reset). CPU: client process, user+system, from the kill \
         until 99 % are back. Peak accepts: most accepts in any 100 ms window after the \
         restart, per second. Ratios against the hand-rolled loop, and (the columns marked \
         \"jit.\") against the same loop with ±30 % jitter, the fair peer (issue 21).{}\n",
        if runs > 1 {
            format!(
                " Each figure is the median of {runs} runs (clients interleaved, the order \
                 rotated each run), its range in brackets; ratios are of medians."
            )
        } else {
            String::new()
        }
    );
    println!(
        "| client | attempts/s during outage | ratio | client CPU s | ratio | ratio jit. | peak accepts/s | ratio jit. | time to 99 % reconnected, s | clients back within 60 s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let summaries: Vec<(Lib, StormSummary)> = rows
        .iter()
        .map(|(l, rs)| (*l, StormSummary::of(rs)))
        .collect();
    let base = summaries
        .iter()
        .find(|(l, _)| *l == Lib::Hand)
        .map(|(_, s)| (s.attempts_per_s.median, s.cpu.median));
    let jittered = summaries
        .iter()
        .find(|(l, _)| *l == Lib::HandJitter)
        .map(|(_, s)| (s.cpu.median, s.peak_accepts.median));
    for (lib, s) in &summaries {
        let (ba, bc) = base.unwrap_or((f64::NAN, f64::NAN));
        let (jc, jp) = jittered.unwrap_or((f64::NAN, f64::NAN));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            lib.name(),
            s.attempts_per_s.show(runs, 0),
            ratio(s.attempts_per_s.median, ba),
            s.cpu.show(runs, 2),
            ratio(s.cpu.median, bc),
            ratio2(s.cpu.median, jc),
            s.peak_accepts.show(runs, 0),
            ratio2(s.peak_accepts.median, jp),
            s.t99
                .as_ref()
                .map_or("not reached".to_owned(), |t| t.show(runs, 2)),
            s.back.show(runs, 0),
        );
    }
    Ok(())
}

/// A figure over several runs: median and range.
#[derive(Clone, Debug, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = match v.len() {
            0 => f64::NAN,
            len if len % 2 == 1 => v[mid],
            _ => (v[mid - 1] + v[mid]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median`, or `median [min–max]` over several runs.
    fn show(&self, runs: usize, decimals: usize) -> String {
        if runs > 1 {
            format!(
                "{:.d$} [{:.d$}–{:.d$}]",
                self.median,
                self.min,
                self.max,
                d = decimals
            )
        } else {
            format!("{:.d$}", self.median, d = decimals)
        }
    }
}

/// One client's storm figures over its runs.
struct StormSummary {
    attempts_per_s: Spread,
    cpu: Spread,
    peak_accepts: Spread,
    /// `None` when a run did not reach 99 %.
    t99: Option<Spread>,
    back: Spread,
}

impl StormSummary {
    fn of(runs: &[StormResult]) -> StormSummary {
        let t99: Option<Vec<f64>> = runs
            .iter()
            .map(|r| r.t99.map(|t| t.as_secs_f64()))
            .collect();
        StormSummary {
            attempts_per_s: Spread::of(runs.iter().map(|r| r.attempts_per_s)),
            cpu: Spread::of(runs.iter().map(|r| r.cpu)),
            peak_accepts: Spread::of(runs.iter().map(|r| r.peak_accepts as f64)),
            t99: t99.map(Spread::of),
            back: Spread::of(runs.iter().map(|r| r.back as f64)),
        }
    }
}

#[derive(Clone)]
struct StormResult {
    attempts_per_s: f64,
    cpu: f64,
    peak_accepts: u64,
    t99: Option<Duration>,
    back: u64,
}

async fn wait_connects(at_least: u64, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if CONNECTS.load(Ordering::Relaxed) >= at_least {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn storm_one(opts: &Opts, lib: Lib) -> io::Result<StormResult> {
    let n = opts.storm_clients as u64;
    let mut servers = Servers::spawn().await?;
    let (addr, _) = servers.start("s", "echo", 0).await?;
    let catalog = Catalog::new(&[addr]);
    reset_counters();
    let (stop_tx, stop_rx) = watch::channel(false);
    let clients: Vec<_> = (0..n)
        .map(|i| {
            peers::spawn(
                lib,
                Setup {
                    catalog: catalog.clone(),
                    delay: opts.storm_delay,
                    stop: stop_rx.clone(),
                    seed: i,
                    picker: false,
                },
                Mode::Idle,
            )
        })
        .collect();
    if wait_connects(n, Duration::from_secs(60)).await.is_none() {
        eprintln!(
            "  only {} of {n} connected at first",
            CONNECTS.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a0 = ATTEMPTS.load(Ordering::Relaxed);
    let cpu0 = cpu_seconds();
    servers.kill("s").await?;
    tokio::time::sleep(opts.outage).await;
    let a1 = ATTEMPTS.load(Ordering::Relaxed);
    let c1 = CONNECTS.load(Ordering::Relaxed);
    servers.start("s", "echo", addr.port()).await?;
    let t99 = wait_connects(c1 + (n * 99).div_ceil(100), Duration::from_secs(60)).await;
    let cpu = cpu_seconds() - cpu0;
    let _ = wait_connects(c1 + n, Duration::from_secs(5)).await;
    let back = (CONNECTS.load(Ordering::Relaxed) - c1).min(n);
    let (_, peak) = servers.stats("s").await?;
    stop_tx.send_replace(true);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    servers.quit().await;
    Ok(StormResult {
        attempts_per_s: (a1 - a0) as f64 / opts.outage.as_secs_f64(),
        cpu,
        peak_accepts: peak,
        t99,
        back,
    })
}

/// Accept-then-drop server.
pub async fn accept_drop(opts: &Opts) -> io::Result<()> {
    let mut rows = Vec::new();
    for &lib in &opts.libs {
        eprintln!("accept-then-drop {}…", lib.name());
        let mut servers = Servers::spawn().await?;
        let (addr, _) = servers.start("d", "drop", 0).await?;
        let catalog = Catalog::new(&[addr]);
        reset_counters();
        let (stop_tx, stop_rx) = watch::channel(false);
        let cpu0 = cpu_seconds();
        let clients: Vec<_> = (0..opts.drop_clients as u64)
            .map(|i| {
                peers::spawn(
                    lib,
                    Setup {
                        catalog: catalog.clone(),
                        delay: opts.drop_delay,
                        stop: stop_rx.clone(),
                        seed: i,
                        picker: false,
                    },
                    Mode::Idle,
                )
            })
            .collect();
        tokio::time::sleep(opts.drop_time).await;
        let attempts = ATTEMPTS.load(Ordering::Relaxed);
        let cpu = cpu_seconds() - cpu0;
        stop_tx.send_replace(true);
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
        }
        servers.quit().await;
        let per_client = attempts as f64 / opts.drop_clients as f64 / opts.drop_time.as_secs_f64();
        rows.push((lib, per_client, cpu));
    }
    let cap = 1.0 / opts.drop_delay.as_secs_f64();
    println!(
        "\n### Accept-then-drop server: {} clients for {} s, base delay {} ms\n",
        opts.drop_clients,
        opts.drop_time.as_secs_f64(),
        ms(opts.drop_delay)
    );
    println!(
        "Attempts per second per client; a delay counted from each attempt's start caps it \
         at 1/base = {cap:.1}/s on average. Ratio against that cap.\n"
    );
    println!("| client | attempts/s per client | ratio to 1/base | client CPU s |");
    println!("| --- | ---: | ---: | ---: |");
    for (lib, r, cpu) in rows {
        println!("| {} | {r:.1} | {} | {cpu:.2} |", lib.name(), ratio(r, cap));
    }
    Ok(())
}

/// What the memory child holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A `TcpStream` in a `Vec`: the sockets themselves.
    Bare,
    /// An `EchoConn` (socket and its reader task) in a `Vec`.
    Conn,
    /// A persistent client of this library.
    Lib(Lib),
    /// This project with `event_capacity(1)`: shows what the `events()` buffer costs.
    OursSmallEvents,
}

impl Holder {
    fn arg(self) -> &'static str {
        match self {
            Holder::Bare => "bare",
            Holder::Conn => "conn",
            Holder::Lib(Lib::Ours) => "ours",
            Holder::Lib(Lib::Stubborn) => "stubborn",
            Holder::Lib(Lib::Tower) => "tower",
            Holder::Lib(Lib::OursTower) => "ours-tower",
            Holder::Lib(Lib::Hand) => "hand",
            Holder::Lib(Lib::HandJitter) => "hand-jitter",
            Holder::OursSmallEvents => "ours-cap1",
        }
    }

    /// Parses [`Holder::arg`].
    pub fn parse(s: &str) -> Option<Holder> {
        match s {
            "bare" => Some(Holder::Bare),
            "conn" => Some(Holder::Conn),
            "ours-cap1" => Some(Holder::OursSmallEvents),
            other => Lib::parse(other).map(Holder::Lib),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Holder::Bare => "bare `TcpStream` in a `Vec` (baseline)",
            Holder::Conn => "socket + reader task, no reconnection",
            Holder::Lib(l) => l.name(),
            Holder::OursSmallEvents => "persistent-connection, `event_capacity(1)`",
        }
    }
}

/// Memory per idle persistent connection: one child process per holder, so each starts
/// from a fresh heap.
pub async fn memory(opts: &Opts) -> io::Result<()> {
    let mut servers = Servers::spawn().await?;
    let (addr, _) = servers.start("m", "echo", 0).await?;
    let mut holders = vec![Holder::Bare, Holder::Conn];
    holders.extend(opts.libs.iter().map(|l| Holder::Lib(*l)));
    if opts.libs.contains(&Lib::Ours) {
        holders.push(Holder::OursSmallEvents);
    }
    let mut rows = Vec::new();
    for h in holders {
        eprintln!("memory {}…", h.name());
        let out = tokio::process::Command::new(std::env::current_exe()?)
            .args([
                "memory-child",
                h.arg(),
                &opts.conns.to_string(),
                &addr.to_string(),
            ])
            .kill_on_drop(true)
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if nums.len() != 3 {
            eprintln!(
                "  memory child failed: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            continue;
        }
        rows.push((h, nums[0], nums[1], nums[2]));
        // Let the server side settle (the child's connections are gone).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    servers.quit().await;
    let bare = rows
        .iter()
        .find(|r| r.0 == Holder::Bare)
        .map(|r| (r.2.saturating_sub(r.1)) as f64 / r.3.max(1) as f64);
    println!(
        "\n### Memory: resident memory per idle connection at {} connections\n",
        opts.conns
    );
    println!(
        "Client process RSS after all connected (and 2 s idle) minus RSS before, divided by \
         the connections; one fresh process per row. \"Beyond sockets\" subtracts the bare \
         `TcpStream` row measured in the same run. (Kernel socket buffers are not in RSS.)\n"
    );
    println!("| client | connected | KiB per connection | beyond sockets, KiB | ratio to bare |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (h, before, after, connected) in rows {
        let per = after.saturating_sub(before) as f64 / connected.max(1) as f64;
        let beyond = bare.map_or(f64::NAN, |b| per - b);
        println!(
            "| {} | {connected} | {:.2} | {:.2} | {} |",
            h.name(),
            per / 1024.0,
            beyond / 1024.0,
            ratio(per, bare.unwrap_or(f64::NAN))
        );
    }
    Ok(())
}

/// The child side of [`memory`]: prints `RSS_BEFORE RSS_AFTER CONNECTED`.
pub async fn memory_child(holder: Holder, conns: usize, addr: SocketAddr) -> io::Result<()> {
    let catalog = Catalog::new(&[addr]);
    reset_counters();
    let before = rss_bytes();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut bare = Vec::new();
    let mut echo = Vec::new();
    let mut clients = Vec::new();
    match holder {
        Holder::Bare => {
            for _ in 0..conns {
                bare.push(tcp_connect(addr).await?);
            }
        }
        Holder::Conn => {
            for _ in 0..conns {
                echo.push(EchoConn::connect(addr).await?);
            }
        }
        Holder::Lib(_) | Holder::OursSmallEvents => {
            for i in 0..conns as u64 {
                let setup = Setup {
                    catalog: catalog.clone(),
                    delay: Duration::from_secs(1),
                    stop: stop_rx.clone(),
                    seed: i,
                    picker: false,
                };
                clients.push(match holder {
                    Holder::Lib(lib) => peers::spawn(lib, setup, Mode::Idle),
                    _ => tokio::spawn(crate::ours::run_with(setup, Mode::Idle, Some(1))),
                });
            }
        }
    }
    let _ = wait_connects(conns as u64, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_bytes();
    let connected = CONNECTS.load(Ordering::Relaxed);
    println!("{before} {after} {connected}");
    stop_tx.send_replace(true);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
    for c in &echo {
        c.close().await;
    }
    drop(bare);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn spread_gives_the_median_and_the_range() {
        let odd = Spread::of([15_480.0, 10_780.0, 13_200.0]);
        assert_eq!(
            (odd.median, odd.min, odd.max),
            (13_200.0, 10_780.0, 15_480.0)
        );
        let even = Spread::of([4.0, 1.0, 3.0, 2.0]);
        assert_eq!(even.median, 2.5);
        assert_eq!(even.show(4, 1), "2.5 [1.0–4.0]");
        assert_eq!(even.show(1, 0), "2");
        assert!(Spread::of([]).median.is_nan());
    }
}
