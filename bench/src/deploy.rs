//! Planned change (issue 26): rolling deploys, retry now, fail back and scale-out against a
//! real `etcd` on 127.0.0.1 (the test kit's `EtcdServer`), with request/reply servers run as
//! tasks of this process that stop gracefully (stop accepting, answer the request being
//! read, then close).
//!
//! - `deploy`: three copies published through `EtcdPublisher`; each in turn (the copy our
//!   client is on first) is drained (`drain(1 s)`: withdraw, wait), stopped gracefully,
//!   started again on a new port and published, then an interval passes. Two clients run
//!   through the same deploy at once: ours (`with_catalog(EtcdCatalog, Pick::RoundRobin)`,
//!   nothing tuned) and a hand-rolled loop (look up, connect, reconnect at once when the
//!   connection is closed or a request fails). Each sends one request every 10 ms with a
//!   200 ms deadline on its current connection; failed requests and the longest gap
//!   between replies are counted over the whole deploy.
//! - `retry-now`: one listed copy, down; the client (retry delay 10 s) has failed and waits;
//!   a live copy is published; time until its first reply.
//! - `failback`: `Pick::InOrder`, copies A and B; A drained, stopped, restarted on a new
//!   port and published under its key; time from the publish until the current connection
//!   is on A again, and failed requests.
//! - `scaleout`: 100 persistent connections with `max_connection_age(30 s)` on 2 copies;
//!   2 more copies published; how many each copy holds 45 s later, failed requests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdPublisher};
use persistent_connection::catalog::{Catalog, Pick};
use persistent_connection::{IoError, PersistentConnection, RetryPolicy};
use persistent_connection_testkit::echo::{Le16, REQUEST_LEN, Wire};
use persistent_connection_testkit::etcd::EtcdServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use persistent_connection::TcpConnection;
use persistent_connection_testkit::echo::EchoConn;

/// The request period and deadline of the deploy's clients.
const PERIOD: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_millis(200);
/// The publisher's lease TTL (as `EtcdPublisher`'s docs show).
const TTL: Duration = Duration::from_secs(10);
/// The drain's grace.
const GRACE: Duration = Duration::from_secs(1);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Our client's connection: the echo client over the library's `TcpConnection` (its peer
/// address tells which copy a connection is on).
type Conn = EchoConn<TcpConnection>;

type Pc = PersistentConnection<SocketAddr, Conn, IoError>;

async fn connect(addr: SocketAddr) -> Result<Conn, IoError> {
    TcpConnection::connect(addr).await.map(EchoConn::new)
}

fn peer(c: &Conn) -> SocketAddr {
    c.handle().peer_addr()
}

/// A request/reply server (the benchmark's `Le16` format) on 127.0.0.1 as a task.
struct Replica {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start() -> io::Result<Replica> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let counter = open.clone();
        let mut accept_stop = stopped.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = accept_stop.changed() => break,
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let counter = counter.clone();
                        let stop = stopped.clone();
                        tokio::spawn(async move {
                            serve(stream, id, stop).await;
                            counter.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                }
            }
        });
        Ok(Replica {
            addr,
            open,
            stop,
            task,
        })
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Graceful stop: no more accepts, every connection answers the request it is reading
    /// and is closed (FIN). Waits (bounded) until they are.
    async fn stop(self) {
        let Replica {
            open, stop, task, ..
        } = self;
        let _ = stop.send(true);
        let _ = task.await;
        for _ in 0..2000 {
            if open.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn serve(mut stream: TcpStream, id: u64, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut req = [0u8; REQUEST_LEN];
    let mut filled = 0;
    let mut stopping = *stop.borrow();
    loop {
        if stopping && filled == 0 {
            break;
        }
        tokio::select! {
            _ = stop.changed(), if !stopping => stopping = true,
            r = stream.read(&mut req[filled..]) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                if filled == REQUEST_LEN {
                    filled = 0;
                    let reply = Le16::reply(req, id);
                    if stream.write_all(&reply[..<Le16 as Wire>::REPLY_LEN]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn start_etcd() -> io::Result<EtcdServer> {
    tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .map_err(io::Error::other)
}

fn pub_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Our client with the catalog's defaults: `with_catalog`, nothing tuned.
fn ours(ep: &str, prefix: &str, pick: Pick) -> Pc {
    PersistentConnection::with_catalog(
        "deploy",
        EtcdCatalog::new([ep], prefix),
        pick,
        |addr: SocketAddr, _cx| connect(addr),
    )
    .build()
}

/// What a client saw: failed requests, the longest gap between replies, replies.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    failed: u64,
    gap: Duration,
    replies: u64,
}

struct Tally {
    last: Instant,
    seen: Seen,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            last: Instant::now(),
            seen: Seen::default(),
        }
    }
    fn reply(&mut self) {
        let now = Instant::now();
        self.seen.gap = self.seen.gap.max(now - self.last);
        self.last = now;
        self.seen.replies += 1;
    }
    fn done(mut self) -> Seen {
        self.seen.gap = self.seen.gap.max(self.last.elapsed());
        self.seen
    }
}

/// Ours: one request every 10 ms on the current connection (waiting for one if there is
/// none), within the deadline.
async fn drive_ours(pc: Pc, mut stop: watch::Receiver<bool>) -> Seen {
    let mut tally = Tally::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let call = async {
            let conn = pc.connected().await;
            conn.request(seq, DEADLINE).await
        };
        match tokio::time::timeout(DEADLINE, call).await {
            Ok(Ok(_)) => tally.reply(),
            _ => tally.seen.failed += 1,
        }
    }
    tally.done()
}

/// The hand-rolled loop: look up (a fresh etcd read) and connect to a listed copy at
/// random; reconnect at once when the connection is closed or a request fails.
async fn drive_hand(catalog: EtcdCatalog, mut stop: watch::Receiver<bool>, seed: u64) -> Seen {
    let mut tally = Tally::new();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut x = seed | 1;
    let mut conn: Option<EchoConn> = None;
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let started = tokio::time::Instant::now();
        let result = loop {
            if conn.as_ref().is_none_or(|c| c.is_closed()) {
                conn = None;
                let listed =
                    match tokio::time::timeout_at(started + DEADLINE, catalog.lookup()).await {
                        Ok(Ok(l)) if !l.is_empty() => l,
                        _ => break Err(()),
                    };
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let addr = listed[(x % listed.len() as u64) as usize];
                match tokio::time::timeout_at(started + DEADLINE, EchoConn::connect(addr)).await {
                    Ok(Ok(c)) => conn = Some(c),
                    _ => break Err(()),
                }
            }
            let c = conn.as_ref().expect("connected");
            let left = (started + DEADLINE).saturating_duration_since(tokio::time::Instant::now());
            match c.request(seq, left).await {
                Ok(_) => break Ok(()),
                // Closed under the request: reconnect at once and send it again within
                // the deadline.
                Err(_) if !left.is_zero() => {
                    conn = None;
                    if tokio::time::Instant::now() >= started + DEADLINE {
                        break Err(());
                    }
                }
                Err(_) => break Err(()),
            }
        };
        match result {
            Ok(()) => tally.reply(),
            Err(()) => tally.seen.failed += 1,
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
    tally.done()
}

fn median_range<T: Copy + Ord>(v: &[T]) -> (T, T, T) {
    let mut s = v.to_vec();
    s.sort();
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// One rolling deploy; returns (ours, hand, our stats' handovers, disconnections).
async fn one_deploy(
    ep: &str,
    prefix: &str,
    interval: Duration,
    seed: u64,
) -> io::Result<(Seen, Seen, u64, u64)> {
    let mut copies = Vec::new();
    let mut pubs = Vec::new();
    for i in 0..3 {
        let c = Replica::start().await?;
        pubs.push(Some(
            EtcdPublisher::publish([ep], format!("{prefix}c{i}"), c.addr, TTL)
                .await
                .map_err(pub_err)?,
        ));
        copies.push(c);
    }
    let pc = ours(ep, prefix, Pick::RoundRobin);
    let first = tokio::time::timeout(Duration::from_secs(10), pc.connected())
        .await
        .map_err(|_| io::Error::other("ours never connected"))?;
    let first = peer(&first);
    let hand_catalog = EtcdCatalog::new([ep], prefix);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ours_task = tokio::spawn(drive_ours(pc.clone(), stop_rx.clone()));
    let hand_task = tokio::spawn(drive_hand(hand_catalog, stop_rx, seed));
    // Steady state before the deploy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own = copies.iter().position(|c| c.addr == first).unwrap_or(0);
    let order: Vec<usize> = std::iter::once(own)
        .chain((0..3).filter(|i| *i != own))
        .collect();
    let mut copies: Vec<Option<Replica>> = copies.into_iter().map(Some).collect();
    for &i in &order {
        let publisher = pubs[i].take().expect("published");
        publisher.drain(GRACE).await.map_err(pub_err)?;
        copies[i].take().expect("running").stop().await;
        let c = Replica::start().await?;
        pubs[i] = Some(
            EtcdPublisher::publish([ep], format!("{prefix}c{i}"), c.addr, TTL)
                .await
                .map_err(pub_err)?,
        );
        copies[i] = Some(c);
        tokio::time::sleep(interval).await;
    }
    let _ = stop_tx.send(true);
    let o = ours_task.await.map_err(io::Error::other)?;
    let h = hand_task.await.map_err(io::Error::other)?;
    let stats = pc.stats();
    let _ = tokio::time::timeout(Duration::from_secs(10), pc.close()).await;
    for p in pubs.into_iter().flatten() {
        let _ = p.withdraw().await;
    }
    for c in copies.into_iter().flatten() {
        c.stop().await;
    }
    Ok((o, h, stats.handovers, stats.disconnections))
}

/// The rolling-deploy table: `runs` runs, each interval in turn within a run.
pub async fn deploy(runs: usize, intervals: &[Duration]) -> io::Result<()> {
    let etcd = start_etcd().await?;
    let ep = etcd.endpoint();
    eprintln!("deploy: load average before {}", loadavg());
    let mut results: Vec<Vec<(Seen, Seen, u64, u64)>> = vec![Vec::new(); intervals.len()];
    for run in 0..runs {
        for (k, interval) in intervals.iter().enumerate() {
            let prefix = format!("/bench/deploy/r{run}i{k}/");
            let r = one_deploy(&ep, &prefix, *interval, 0x9E37_79B9 + run as u64).await?;
            eprintln!(
                "run {run} interval {interval:?}: ours failed {} gap {} ms (handovers {}, disconnections {}); hand failed {} gap {} ms; load {}",
                r.0.failed,
                fmt_ms(r.0.gap),
                r.2,
                r.3,
                r.1.failed,
                fmt_ms(r.1.gap),
                loadavg()
            );
            results[k].push(r);
        }
    }
    println!(
        "\n### Rolling deploy ({runs} runs, median [range]; load average at the end {})\n",
        loadavg()
    );
    println!(
        "| client | interval | failed requests | longest gap without a reply (ms) | handovers | disconnections |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for (k, interval) in intervals.iter().enumerate() {
        let r = &results[k];
        for (name, pick) in [
            ("ours, defaults (`with_catalog`, RoundRobin)", 0),
            ("hand-rolled loop", 1),
        ] {
            let seen: Vec<Seen> = r
                .iter()
                .map(|x| if pick == 0 { x.0 } else { x.1 })
                .collect();
            let f = median_range(&seen.iter().map(|s| s.failed).collect::<Vec<_>>());
            let g = median_range(&seen.iter().map(|s| s.gap).collect::<Vec<_>>());
            let (h, d) = if pick == 0 {
                let h = median_range(&r.iter().map(|x| x.2).collect::<Vec<_>>());
                let d = median_range(&r.iter().map(|x| x.3).collect::<Vec<_>>());
                (
                    format!("{} [{}–{}]", h.0, h.1, h.2),
                    format!("{} [{}–{}]", d.0, d.1, d.2),
                )
            } else {
                ("—".into(), "—".into())
            };
            println!(
                "| {name} | {} s | {} [{}–{}] | {} [{}–{}] | {h} | {d} |",
                interval.as_secs(),
                f.0,
                f.1,
                f.2,
                fmt_ms(g.0),
                fmt_ms(g.1),
                fmt_ms(g.2)
            );
        }
    }
    drop(etcd);
    Ok(())
}

/// Retry now: one listed copy, down; once the client has failed and waits out its 10 s
/// delay, a live copy is published. Milliseconds from the start of the publish to the
/// first reply.
pub async fn retry_now(runs: usize) -> io::Result<()> {
    let etcd = start_etcd().await?;
    let ep = etcd.endpoint();
    let mut times = Vec::new();
    for run in 0..runs {
        let prefix = format!("/bench/retry-now/r{run}/");
        // A port nothing listens on.
        let dead = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            l.local_addr()?
        };
        let pd = EtcdPublisher::publish([&ep], format!("{prefix}dead"), dead, TTL)
            .await
            .map_err(pub_err)?;
        let pc: Pc = PersistentConnection::with_catalog(
            "retry-now",
            EtcdCatalog::new([&ep], prefix.as_str()),
            Pick::RoundRobin,
            |addr: SocketAddr, _cx| connect(addr),
        )
        .retry_policy(RetryPolicy::constant(Duration::from_secs(10)).non_random())
        .build();
        for _ in 0..5000 {
            if pc.stats().failures >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Well into the wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let failures_before = pc.stats().failures;
        let live = Replica::start().await?;
        let t0 = Instant::now();
        let pl = EtcdPublisher::publish([&ep], format!("{prefix}live"), live.addr, TTL)
            .await
            .map_err(pub_err)?;
        let published = t0.elapsed();
        let served = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                let c = pc.connected().await;
                if c.request(1, DEADLINE).await.is_ok() {
                    break;
                }
            }
        })
        .await;
        let took = t0.elapsed();
        let s = pc.stats();
        eprintln!(
            "retry-now run {run}: served after {} ms (publish took {} ms; {:?}); failures before {failures_before}, retries_now {}",
            fmt_ms(took),
            fmt_ms(published),
            served.is_ok(),
            s.retries_now
        );
        times.push(took);
        let _ = tokio::time::timeout(Duration::from_secs(10), pc.close()).await;
        let _ = pd.withdraw().await;
        let _ = pl.withdraw().await;
        live.stop().await;
    }
    let m = median_range(&times);
    println!(
        "\n### Retry now ({runs} runs; load average {})\n",
        loadavg()
    );
    println!("| what | median [range] (ms) | each run (ms) |");
    println!("| --- | ---: | --- |");
    println!(
        "| from the start of the publish of a live copy to its first reply, the client waiting out a 10 s delay | {} [{}–{}] | {} |",
        fmt_ms(m.0),
        fmt_ms(m.1),
        fmt_ms(m.2),
        times
            .iter()
            .map(|t| fmt_ms(*t))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Fail back: `Pick::InOrder`, A preferred; A drained, stopped, restarted on a new port
/// and published under its key; time from the start of that publish until the current
/// connection is on A, and the failed requests of a client sending every 10 ms.
pub async fn failback(runs: usize) -> io::Result<()> {
    let etcd = start_etcd().await?;
    let ep = etcd.endpoint();
    let mut rows = Vec::new();
    for run in 0..runs {
        let prefix = format!("/bench/failback/r{run}/");
        let a = Replica::start().await?;
        let a_addr = a.addr;
        let b = Replica::start().await?;
        let pa = EtcdPublisher::publish([&ep], format!("{prefix}a"), a.addr, TTL)
            .await
            .map_err(pub_err)?;
        let pb = EtcdPublisher::publish([&ep], format!("{prefix}b"), b.addr, TTL)
            .await
            .map_err(pub_err)?;
        let pc = ours(&ep, &prefix, Pick::InOrder);
        let first = tokio::time::timeout(Duration::from_secs(10), pc.connected())
            .await
            .map_err(|_| io::Error::other("never connected"))?;
        let first = peer(&first);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(drive_ours(pc.clone(), stop_rx));
        tokio::time::sleep(Duration::from_millis(300)).await;
        pa.drain(GRACE).await.map_err(pub_err)?;
        let moved = pc.current_connection().map(|c| peer(&c));
        a.stop().await;
        let a2 = Replica::start().await?;
        let t0 = Instant::now();
        let pa2 = EtcdPublisher::publish([&ep], format!("{prefix}a"), a2.addr, TTL)
            .await
            .map_err(pub_err)?;
        let mut back = None;
        for _ in 0..20_000 {
            if pc.current_connection().map(|c| peer(&c)) == Some(a2.addr) {
                back = Some(t0.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = stop_tx.send(true);
        let seen = task.await.map_err(io::Error::other)?;
        let s = pc.stats();
        eprintln!(
            "failback run {run}: first on A {}; after the drain on B {}; back on A after {:?}; failed {}, gap {} ms; handovers {}, disconnections {}; B holds {}",
            first == a_addr,
            moved == Some(b.addr),
            back,
            seen.failed,
            fmt_ms(seen.gap),
            s.handovers,
            s.disconnections,
            b.open()
        );
        rows.push((back, seen));
        let _ = tokio::time::timeout(Duration::from_secs(10), pc.close()).await;
        let _ = pa2.withdraw().await;
        let _ = pb.withdraw().await;
        a2.stop().await;
        b.stop().await;
    }
    let backs: Vec<Duration> = rows.iter().filter_map(|r| r.0).collect();
    let failed = median_range(&rows.iter().map(|r| r.1.failed).collect::<Vec<_>>());
    let gaps = median_range(&rows.iter().map(|r| r.1.gap).collect::<Vec<_>>());
    println!(
        "\n### Fail back ({runs} runs; load average {})\n",
        loadavg()
    );
    println!(
        "| back on A (ms after the publish started), median [range] | runs back on A | failed requests | longest gap (ms) |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    let b = if backs.is_empty() {
        "—".to_owned()
    } else {
        let m = median_range(&backs);
        format!("{} [{}–{}]", fmt_ms(m.0), fmt_ms(m.1), fmt_ms(m.2))
    };
    println!(
        "| {b} | {}/{runs} | {} [{}–{}] | {} [{}–{}] |",
        backs.len(),
        failed.0,
        failed.1,
        failed.2,
        fmt_ms(gaps.0),
        fmt_ms(gaps.1),
        fmt_ms(gaps.2)
    );
    Ok(())
}

/// Scale-out: 100 persistent connections (`max_connection_age(30 s)`, `Pick::Random`, each
/// sending a request every 100 ms) on 2 copies; 2 more published; each copy's open
/// connections 45 s later.
pub async fn scaleout(runs: usize, clients: usize) -> io::Result<()> {
    let etcd = start_etcd().await?;
    let ep = etcd.endpoint();
    let mut rows = Vec::new();
    for run in 0..runs {
        let prefix = format!("/bench/scaleout/r{run}/");
        let mut copies = Vec::new();
        let mut pubs = Vec::new();
        for i in 0..2 {
            let c = Replica::start().await?;
            pubs.push(
                EtcdPublisher::publish([&ep], format!("{prefix}c{i}"), c.addr, TTL)
                    .await
                    .map_err(pub_err)?,
            );
            copies.push(c);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut pcs = Vec::new();
        let mut tasks = Vec::new();
        for k in 0..clients {
            let pc: Pc = PersistentConnection::with_catalog(
                "scaleout",
                EtcdCatalog::new([&ep], prefix.as_str()),
                Pick::Random {
                    seed: (run * 1000 + k) as u64,
                },
                |addr: SocketAddr, _cx| connect(addr),
            )
            .max_connection_age(Duration::from_secs(30))
            .seed((run * 1000 + k) as u64)
            .build();
            let mut stop = stop_rx.clone();
            let p = pc.clone();
            tasks.push(tokio::spawn(async move {
                // Failed requests before the first reply (the start: a first connect through a
                // fresh etcd client) and after it.
                let (mut at_start, mut failed) = (0u64, 0u64);
                let mut replied = false;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut seq = 0;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    seq += 1;
                    let call = async {
                        let c = p.connected().await;
                        c.request(seq, DEADLINE).await
                    };
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(DEADLINE, call).await;
                    if matches!(outcome, Ok(Ok(_))) {
                        replied = true;
                    } else {
                        if replied {
                            failed += 1;
                        } else {
                            at_start += 1;
                        }
                        // What failed, for the record (stderr).
                        let what = match outcome {
                            Err(_) => "deadline".to_owned(),
                            Ok(Err(e)) => e.to_string(),
                            Ok(Ok(_)) => unreachable!(),
                        };
                        let s = p.stats();
                        eprintln!(
                            "scaleout client {k}: request {seq} failed after {} ms: {what} (handovers {}, disconnections {}; load {})",
                            fmt_ms(started.elapsed()),
                            s.handovers,
                            s.disconnections,
                            loadavg()
                        );
                    }
                }
                (at_start, failed)
            }));
            pcs.push(pc);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before: Vec<usize> = copies.iter().map(Replica::open).collect();
        for i in 2..4 {
            let c = Replica::start().await?;
            pubs.push(
                EtcdPublisher::publish([&ep], format!("{prefix}c{i}"), c.addr, TTL)
                    .await
                    .map_err(pub_err)?,
            );
            copies.push(c);
        }
        let mut at = Vec::new();
        for s in [15u64, 30, 45] {
            tokio::time::sleep(Duration::from_secs(15)).await;
            // What each copy holds as a current connection, seen from the clients (a
            // retired connection in its grace is not counted); the servers' open counts
            // beside it on stderr.
            let now: Vec<usize> = copies
                .iter()
                .map(|c| {
                    pcs.iter()
                        .filter(|p| p.current_connection().map(|x| peer(&x)) == Some(c.addr))
                        .count()
                })
                .collect();
            let open: Vec<usize> = copies.iter().map(Replica::open).collect();
            eprintln!(
                "scaleout run {run}: {s} s after: current {now:?}, open at the servers {open:?} (load {})",
                loadavg()
            );
            at.push(now);
        }
        let _ = stop_tx.send(true);
        let (mut at_start, mut failed) = (0, 0);
        for t in tasks {
            let (s, f) = t.await.map_err(io::Error::other)?;
            at_start += s;
            failed += f;
        }
        let handovers: u64 = pcs.iter().map(|p| p.stats().handovers).sum();
        let disconnections: u64 = pcs.iter().map(|p| p.stats().disconnections).sum();
        for p in &pcs {
            let _ = tokio::time::timeout(Duration::from_secs(10), p.close()).await;
        }
        for p in pubs {
            let _ = p.withdraw().await;
        }
        for c in copies {
            c.stop().await;
        }
        eprintln!(
            "scaleout run {run}: before {before:?}, failed {failed} (and {at_start} before the first reply), handovers {handovers}, disconnections {disconnections}"
        );
        rows.push((before, at, failed, at_start, handovers, disconnections));
    }
    println!(
        "\n### Scale-out 2 → 4 copies, {clients} connections, `max_connection_age(30 s)` ({runs} runs; load average {})\n",
        loadavg()
    );
    println!(
        "| run | before (2 copies) | 15 s after | 30 s after | 45 s after | failed requests | failed before a client's first reply | handovers | disconnections |"
    );
    println!("| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: |");
    let j = |v: &Vec<usize>| {
        v.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    for (run, (before, at, failed, at_start, h, d)) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {failed} | {at_start} | {h} | {d} |",
            run + 1,
            j(before),
            j(&at[0]),
            j(&at[1]),
            j(&at[2])
        );
    }
    Ok(())
}
