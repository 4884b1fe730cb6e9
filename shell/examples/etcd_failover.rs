//! Failover through a real etcd: starts `etcd` on 127.0.0.1 (free ports, a temporary data
//! directory), three echo servers in child processes that publish themselves under
//! `/services/echo/` with a lease, and a persistent connection that looks the service up in
//! etcd before every attempt. A schedule then kills a server with `kill -9` (its lease
//! expires after the TTL), stops one cleanly (its lease is revoked at once), restarts
//! them, and stops etcd itself for a while (lookups fail, the loop goes on, and it recovers
//! once etcd is back). Every event is printed with its time, and every failover with its
//! gap: from the moment the server we were talking to went away until the first echo
//! reply from another one. It ends by itself after about 25 seconds.
//!
//! ```text
//! cargo run -p persistent-connection --features etcd --example etcd_failover
//! ```
//!
//! `--trials N` measures instead: N failovers for each of: the in-process catalog, etcd
//! with the server killed, etcd with the server stopped cleanly, and etcd killed with a
//! picker that forgets what it tried; then etcd's lookup latency. It prints medians and
//! p99s (BENCHMARKS.md has the figures).
//!
//! Needs the `etcd` binary (Debian's `etcd-server`; `bash scripts/needs.sh` installs it),
//! which the test kit's `etcd::EtcdServer` starts and stops (`testkit/src/etcd.rs`): copied
//! into a project of its own, the example needs `persistent-connection` (feature `etcd`),
//! `tokio` and that test kit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdPublisher};
use persistent_connection::catalog::{Catalog, CatalogError, Pick, Picker};
use persistent_connection::{Closable, IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::etcd::EtcdServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const PREFIX: &str = "/services/echo/";
/// The servers' lease TTL: a killed server stays listed this long.
const TTL: Duration = Duration::from_secs(2);
/// The persistent connection's base retry delay (jittered ±30%).
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// How long one etcd lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);

type Pc = PersistentConnection<SocketAddr, TcpConnection, IoError>;

// ---- the server, run as a child process: `etcd_failover --serve NAME ENDPOINT PREFIX` ----

async fn serve(name: String, endpoint: String, prefix: String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let publisher = EtcdPublisher::publish([&endpoint], format!("{prefix}{name}"), addr, TTL)
        .await
        .expect("publish in etcd");
    println!("READY {addr}");
    std::io::stdout().flush().expect("stdout");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut sink);
    });
    let accept = async {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(name.clone(), stream));
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = accept => {}
    }
    // A clean stop: revoke the lease, so the catalog stops listing us at once.
    let _ = publisher.withdraw().await;
}

/// Answers each line `L` with `<name> L`.
async fn echo(name: String, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = AsyncBufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{name} {line}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// A server child process, from the parent's side.
struct Server {
    name: String,
    child: Option<(Child, ChildStdin)>,
    addr: SocketAddr,
}

impl Server {
    fn start(name: &str, endpoint: &str, prefix: &str) -> Server {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["--serve", name, endpoint, prefix])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a server");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read READY");
        let addr = line
            .strip_prefix("READY ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("server {name} did not start: {line:?}"));
        Server {
            name: name.to_owned(),
            child: Some((child, stdin)),
            addr,
        }
    }

    fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no revoke; the lease expires after the TTL.
    fn kill9(&mut self) {
        if let Some((mut child, _stdin)) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Closes its stdin: it revokes its lease and exits.
    fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_server(name: &str, endpoint: &str, prefix: &str) -> Server {
    let (name, endpoint, prefix) = (name.to_owned(), endpoint.to_owned(), prefix.to_owned());
    tokio::task::spawn_blocking(move || Server::start(&name, &endpoint, &prefix))
        .await
        .expect("start a server")
}

/// Sends one request over `conn` and waits for its reply; returns the replying server.
async fn request(conn: &TcpConnection, n: u64) -> Option<String> {
    conn.send(format!("req {n}\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let read = async {
        while !buf.contains(&b'\n') {
            buf.extend_from_slice(&conn.recv().await?);
        }
        Some(())
    };
    tokio::time::timeout(REPLY_TIMEOUT, read).await.ok()??;
    let line = String::from_utf8_lossy(&buf).lines().next()?.to_owned();
    let (server, rest) = line.split_once(' ')?;
    (rest == format!("req {n}")).then(|| server.to_owned())
}

/// The persistent connection of the demo and of the trials.
fn connect<G, GF>(get_address: G, seed: u64, verbose: Option<Instant>) -> Pc
where
    G: Fn() -> GF + Send + Sync + 'static,
    GF: std::future::Future<Output = Result<SocketAddr, IoError>> + Send + 'static,
{
    PersistentConnection::builder("echo", get_address, |addr: SocketAddr, _cx| {
        TcpConnection::connect(addr)
    })
    .retry_policy(RETRY_DELAY)
    .seed(seed)
    .connect_timeout(Duration::from_secs(1))
    .on_event(move |event| {
        if let Some(start) = verbose {
            println!(
                "{:>7.3}s  {}",
                start.elapsed().as_secs_f64(),
                event.to_string()
            );
        }
        async {}
    })
    .build()
}

// ---- the demo --------------------------------------------------------------------------

/// What the client saw: the replying server of the last reply, and pending failovers.
#[derive(Default)]
struct Watch {
    last_server: Option<String>,
    /// (when the server went away, which one, why)
    pending: Option<(Instant, String, &'static str)>,
    gaps: Vec<(&'static str, Duration)>,
    replies: u64,
    unanswered: u64,
}

async fn client(pc: Pc, start: Instant, watch: Arc<Mutex<Watch>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tick.tick().await;
        let Some(conn) = pc.current_connection().filter(|c| !c.is_closed()) else {
            continue;
        };
        n += 1;
        let reply = request(&conn, n).await;
        let mut w = watch.lock().unwrap();
        let Some(server) = reply else {
            w.unanswered += 1;
            continue;
        };
        w.replies += 1;
        if let Some((at, dead, why)) = w.pending.clone()
            && server != dead
        {
            let gap = at.elapsed();
            println!(
                "{:>7.3}s  >> first reply from {server} after {dead} {why}: failover gap {:.0} ms",
                start.elapsed().as_secs_f64(),
                gap.as_secs_f64() * 1000.0
            );
            w.gaps.push((why, gap));
            w.pending = None;
        }
        w.last_server = Some(server);
    }
}

async fn demo() {
    let start = Instant::now();
    let say = |what: String| println!("{:>7.3}s  -- {what}", start.elapsed().as_secs_f64());
    let mut etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd");
    let ep = etcd.endpoint();
    say(format!(
        "etcd up at {ep} (data in {})",
        etcd.dir().display()
    ));
    let mut servers = Vec::new();
    for name in ["A", "B", "C"] {
        let s = start_server(name, &ep, PREFIX).await;
        say(format!(
            "server {} on {} published under {PREFIX}{}",
            s.name, s.addr, s.name
        ));
        servers.push(s);
    }
    let catalog = EtcdCatalog::new([&ep], PREFIX).lookup_timeout(LOOKUP_TIMEOUT);
    let pc = connect(
        catalog.clone().get_address(Pick::Random { seed: 1 }),
        1,
        Some(start),
    );
    let watch = Arc::new(Mutex::new(Watch::default()));
    let client_task = tokio::spawn(client(pc.clone(), start, watch.clone()));

    enum Step {
        KillCurrent,
        StopCurrent,
        RestartDown,
        StopEtcd,
        StartEtcd,
        Listing,
    }
    let schedule = [
        (2.0, Step::KillCurrent),
        (3.0, Step::Listing),
        (5.0, Step::Listing),
        (6.0, Step::StopCurrent),
        (6.2, Step::Listing),
        (9.0, Step::RestartDown),
        (11.0, Step::StopEtcd),
        (12.0, Step::KillCurrent),
        (16.0, Step::StartEtcd),
        (16.8, Step::Listing),
        (19.0, Step::KillCurrent),
        (21.0, Step::RestartDown),
        (22.0, Step::Listing),
    ];
    let current = |pc: &Pc, servers: &[Server]| {
        let peer = pc.current_connection().map(|c| c.peer_addr());
        servers
            .iter()
            .position(|s| s.is_up() && Some(s.addr) == peer)
    };
    for (at, step) in schedule {
        tokio::time::sleep_until(start + Duration::from_secs_f64(at)).await;
        match step {
            Step::KillCurrent | Step::StopCurrent => {
                let Some(i) = current(&pc, &servers) else {
                    say("not connected; nothing to stop".into());
                    continue;
                };
                let s = &mut servers[i];
                let why = if matches!(step, Step::KillCurrent) {
                    say(format!(
                        "kill -9 {} (current; its lease expires after {TTL:?})",
                        s.name
                    ));
                    s.kill9();
                    "was killed"
                } else {
                    say(format!(
                        "stop {} cleanly (current; its lease is revoked)",
                        s.name
                    ));
                    tokio::task::block_in_place(|| s.stop());
                    "stopped"
                };
                watch.lock().unwrap().pending = Some((Instant::now(), s.name.clone(), why));
            }
            Step::RestartDown => {
                if !etcd.is_running() {
                    continue;
                }
                for s in &mut servers {
                    if !s.is_up() {
                        *s = start_server(&s.name, &ep, PREFIX).await;
                        say(format!("restarted {} on {}", s.name, s.addr));
                    }
                }
            }
            Step::StopEtcd => {
                etcd.stop();
                say("etcd killed: lookups fail until it is back; the connection stays".into());
            }
            Step::StartEtcd => {
                etcd = tokio::task::spawn_blocking(move || {
                    etcd.restart();
                    etcd
                })
                .await
                .expect("restart etcd");
                say("etcd is back (same data directory)".into());
            }
            Step::Listing => match catalog.lookup().await {
                Ok(listed) => say(format!("etcd lists {listed:?}")),
                Err(e) => say(format!("etcd lookup: {e}")),
            },
        }
    }
    tokio::time::sleep_until(start + Duration::from_secs(24)).await;
    say("close".into());
    pc.close().await;
    client_task.abort();
    let w = watch.lock().unwrap();
    println!("\n== summary");
    println!(
        "replies: {}, unanswered requests: {}",
        w.replies, w.unanswered
    );
    for (why, gap) in &w.gaps {
        println!(
            "failover after a server {why}: {:.0} ms",
            gap.as_secs_f64() * 1000.0
        );
    }
    if let Some((_, dead, why)) = &w.pending {
        println!("no reply from another server after {dead} {why} (still pending at close)");
    }
    drop(w);
    for s in &mut servers {
        tokio::task::block_in_place(|| s.stop());
    }
    say("done".into());
}

// ---- the trials (figures for BENCHMARKS.md) ----------------------------------------------

/// The in-process catalog: a shared list; a server is removed from it the instant it is
/// stopped, so its gap is the floor that etcd's is compared with.
#[derive(Clone, Default)]
struct InProcess(Arc<Mutex<Vec<SocketAddr>>>);

impl Catalog for InProcess {
    type Address = SocketAddr;
    fn lookup(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<SocketAddr>, CatalogError>> + Send {
        let listed = self.0.lock().unwrap().clone();
        async move { Ok(listed) }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    InProcess,
    EtcdKill,
    EtcdStop,
    /// etcd with the watch cache, server killed.
    EtcdKillCached,
    /// etcd, server killed, and a picker made afresh for every lookup (random, no memory of
    /// what was tried): what a hand-written `get_address` over etcd would do.
    EtcdKillForgetful,
}

/// One failover: two servers, connect, then take the current one away; the time from
/// that until the first echo reply from the other.
async fn trial(mode: Mode, ep: &str, n: u64) -> Duration {
    let prefix = format!("/trials/{n}/");
    let mut servers = vec![
        start_server("X", ep, &prefix).await,
        start_server("Y", ep, &prefix).await,
    ];
    let in_process = InProcess::default();
    in_process
        .0
        .lock()
        .unwrap()
        .extend(servers.iter().map(|s| s.addr));
    let catalog = EtcdCatalog::new([ep], prefix.clone()).lookup_timeout(LOOKUP_TIMEOUT);
    let pc = match mode {
        Mode::InProcess => connect(
            in_process.clone().get_address(Pick::Random { seed: n }),
            n,
            None,
        ),
        Mode::EtcdKill | Mode::EtcdStop => {
            connect(catalog.get_address(Pick::Random { seed: n }), n, None)
        }
        Mode::EtcdKillCached => {
            let cached = catalog.watch_cache();
            // Let the watch sync, so that lookups are local reads.
            let _ = cached.lookup().await;
            while !cached.watch_cache_in_sync() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            connect(cached.get_address(Pick::Random { seed: n }), n, None)
        }
        Mode::EtcdKillForgetful => {
            let seeds = Arc::new(AtomicU64::new(n * 1000));
            connect(
                move || {
                    let catalog = catalog.clone();
                    let seed = seeds.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let listed = catalog.lookup().await?;
                        Picker::new(Pick::Random { seed })
                            .pick(&listed)
                            .ok_or_else(|| IoError::new(std::io::ErrorKind::NotFound, "empty"))
                    }
                },
                n,
                None,
            )
        }
    };
    let conn = pc.connected().await;
    assert!(request(&conn, 0).await.is_some(), "first request");
    // A connection that has lived longer than the retry delay (+30% jitter): R6 then starts
    // the next round at once, so the gap is detection, lookup, connect and one request.
    tokio::time::sleep(RETRY_DELAY * 2).await;
    let dead = conn.peer_addr();
    let i = servers
        .iter()
        .position(|s| s.addr == dead)
        .expect("a server");
    let t0 = Instant::now();
    match mode {
        Mode::InProcess => {
            in_process.0.lock().unwrap().retain(|a| *a != dead);
            servers[i].kill9();
        }
        Mode::EtcdKill | Mode::EtcdKillCached | Mode::EtcdKillForgetful => servers[i].kill9(),
        Mode::EtcdStop => tokio::task::block_in_place(|| servers[i].stop()),
    }
    let mut k = 1;
    let gap = loop {
        let c = pc.connected().await;
        if c.peer_addr() == dead {
            c.close_finished().await;
            continue;
        }
        k += 1;
        if request(&c, k).await.is_some() {
            break t0.elapsed();
        }
    };
    pc.close().await;
    for s in &mut servers {
        tokio::task::block_in_place(|| s.stop());
    }
    gap
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn trials(n: u64) {
    println!("load average at start: {}", loadavg());
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd");
    let ep = etcd.endpoint();
    let modes = [
        Mode::InProcess,
        Mode::EtcdKill,
        Mode::EtcdStop,
        Mode::EtcdKillCached,
        Mode::EtcdKillForgetful,
    ];
    let mut gaps: Vec<Vec<Duration>> = vec![Vec::new(); modes.len()];
    // Interleaved, so that a slow moment of the machine hits every mode alike.
    for t in 0..n {
        for (m, mode) in modes.iter().enumerate() {
            let gap = trial(*mode, &ep, t * 10 + m as u64).await;
            gaps[m].push(gap);
        }
    }
    println!(
        "\nfailover gap over {n} trials each (ms; kill or stop -> first echo reply from the other server)"
    );
    println!("| catalog, how the server went away | p50 | p99 | max | p50 vs in-process |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let base = {
        let mut g = gaps[0].clone();
        g.sort();
        percentile(&g, 0.5)
    };
    for (m, mode) in modes.iter().enumerate() {
        let mut g = gaps[m].clone();
        g.sort();
        let p50 = percentile(&g, 0.5);
        println!(
            "| {mode:?} | {} | {} | {} | {:.2}× |",
            ms(p50),
            ms(percentile(&g, 0.99)),
            ms(*g.last().expect("a trial")),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }

    // Lookup latency: etcd (one range read) vs the in-process list, 3 copies listed.
    let prefix = "/latency/";
    let mut pubs = Vec::new();
    for i in 0..3 {
        pubs.push(
            EtcdPublisher::publish(
                [&ep],
                format!("{prefix}{i}"),
                SocketAddr::from(([127, 0, 0, 1], 7000 + i)),
                TTL,
            )
            .await
            .expect("publish"),
        );
    }
    let catalog = EtcdCatalog::new([&ep], prefix);
    let cached = EtcdCatalog::new([&ep], prefix).watch_cache();
    let _ = cached.lookup().await;
    while !cached.watch_cache_in_sync() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_process = InProcess::default();
    *in_process.0.lock().unwrap() = catalog.lookup().await.expect("lookup");
    let lookups = 2000;
    let mut etcd_lat = Vec::new();
    let mut cached_lat = Vec::new();
    let mut local_lat = Vec::new();
    for _ in 0..lookups {
        let t = Instant::now();
        assert_eq!(catalog.lookup().await.expect("lookup").len(), 3);
        etcd_lat.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(cached.lookup().await.expect("lookup").len(), 3);
        cached_lat.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(in_process.lookup().await.expect("lookup").len(), 3);
        local_lat.push(t.elapsed());
    }
    assert!(
        cached.watch_cache_in_sync(),
        "the watch cache is still in sync after the run"
    );
    etcd_lat.sort();
    cached_lat.sort();
    local_lat.sort();
    println!("\nlookup latency over {lookups} lookups each, interleaved (µs), 3 copies listed");
    println!("| catalog | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    for (name, l) in [
        ("etcd range read", &etcd_lat),
        ("etcd watch cache", &cached_lat),
        ("in-process list", &local_lat),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            percentile(l, 0.5).as_secs_f64() * 1e6,
            percentile(l, 0.99).as_secs_f64() * 1e6
        );
    }
    for p in pubs {
        let _ = p.withdraw().await;
    }
    println!("\nload average at end: {}", loadavg());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("--serve") => {
            let [_, name, endpoint, prefix] = <[String; 4]>::try_from(args)
                .expect("usage: etcd_failover --serve NAME ENDPOINT PREFIX");
            runtime.block_on(serve(name, endpoint, prefix));
        }
        Some("--trials") => {
            let n = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .expect("usage: etcd_failover --trials N");
            runtime.block_on(trials(n));
        }
        None => runtime.block_on(demo()),
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: etcd_failover [--trials N]");
            std::process::exit(2);
        }
    }
}
