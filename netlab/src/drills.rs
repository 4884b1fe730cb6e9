//! The network drills of issue 19, run against `persistent-connection` (and, in
//! [`peers`](crate::peers), against the crates users would pick instead): a client host
//! sends a request every [`REQUEST_EVERY`] with a [`REQUEST_TIMEOUT`] to echo servers on
//! other hosts while the lab injects a fault, and each run measures
//!
//! - **noticed**: fault → the client's `Disconnected` event (the connection given up), and
//!   by which mechanism (the configuration's: user timeout, health check, reset);
//! - **gap**: fault → the end of the first request started after the fault that another
//!   copy answered;
//! - **failed**: requests started after the fault that failed (each with an error, none
//!   taking longer than its timeout: [`Run::slowest`] is checked against it), and that
//!   every request issued got an outcome ([`Run::issued`] = ok + failed).
//!
//! The drills' tests (`netlab/tests/drills.rs`) assert bounds on these; the binary
//! `netlab-drills` (run by `scripts/netlab.sh`) prints their tables.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistent_connection::catalog::{Catalog, Pick, StaticList};
use persistent_connection::conn::{HealthCheck, HealthChecked, TcpOptions};
use persistent_connection::{Closable, Error, Event, IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::echo::{self, Be9};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{Host, HostRuntime, Lab};

/// The echo servers' port on every server host.
pub const PORT: u16 = 7000;
/// How often the client sends a request (one at a time: the next starts when the previous
/// ended, at least this long after the previous start).
pub const REQUEST_EVERY: Duration = Duration::from_millis(20);
/// Each request's own timeout (from its start, waiting for a connection included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// A lab with a client host `client` and `servers` hosts `s0`, `s1`, … each running an
/// echo server on [`PORT`] that answers an 8-byte request id with the id and its own index.
pub struct Bed {
    /// The lab (dropped last: see the field order).
    pub client: Host,
    /// The server hosts, in catalog order.
    pub servers: Vec<Host>,
    /// A runtime inside the client host.
    pub client_rt: HostRuntime,
    _server_rts: Vec<HostRuntime>,
    /// The lab; dropped after the runtimes.
    pub lab: Lab,
}

impl Bed {
    /// Builds the lab and starts the echo servers.
    pub fn new(servers: usize) -> Bed {
        let lab = Lab::new();
        let client = lab.host("client");
        let mut hosts = Vec::new();
        let mut rts = Vec::new();
        for i in 0..servers {
            let host = lab.host(&format!("s{i}"));
            let rt = host.runtime();
            let addr = host.addr(PORT);
            let listener = rt.block_on(async move { TcpListener::bind(addr).await.unwrap() });
            rt.spawn(echo::serve::<Be9>(listener, i as u64));
            hosts.push(host);
            rts.push(rt);
        }
        let client_rt = client.runtime_with(2);
        Bed {
            client,
            servers: hosts,
            client_rt,
            _server_rts: rts,
            lab,
        }
    }

    /// The servers' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|h| h.addr(PORT)).collect()
    }
}

/// The drills' echo client: the test kit's `EchoConn` over the library's
/// [`TcpConnection`] (its socket options, its notice of a closed or reset socket, its
/// close), in the lab's format (`Be9`): requests carry an id and a reader task hands each
/// reply to its request, so a health check can share the connection with the traffic (as
/// with Redis or an RPC client).
pub type EchoConn = echo::EchoConn<TcpConnection, Be9>;

/// Request ids, unique in the process (requests on one connection need distinct ids).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One request on `conn`: the index of the server that answered, or why not (no timeout
/// shorter than [`REQUEST_TIMEOUT`]: the caller's).
pub async fn request(conn: &EchoConn) -> Result<u8, String> {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    match conn.request(id, REQUEST_TIMEOUT).await {
        Ok(server) => Ok(server as u8),
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::ConnectionReset => "the connection closed".to_string(),
            std::io::ErrorKind::NotConnected => "not connected".to_string(),
            std::io::ErrorKind::TimedOut => "timed out".to_string(),
            _ => format!("send: {e}"),
        }),
    }
}

/// The client configurations the drills compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settings {
    /// Everything default: `TcpConnection::connect` (TCP_USER_TIMEOUT 20 s, keepalive),
    /// no health check, retry delay 10 s, connect timeout 10 s.
    Defaults,
    /// The recommended settings for fast failover (the shell's docs, "Noticing
    /// failures"): a health check every 100 ms with a 200 ms timeout, closing after 2
    /// failures; retry delay 500 ms; connect timeout 1 s; `TCP_USER_TIMEOUT` 5 s.
    Recommended,
    /// The defaults plus the recommended health check ([`Settings::HEALTH`]), the client
    /// following its catalog (`Builder::follow` with the `StaticList` it looks up, as
    /// `PersistentConnection::with_catalog` sets up), so that a connection that died
    /// young does not wait out the retry delay while another copy is listed (R17).
    DefaultsHealthFollow,
    /// [`Settings::DefaultsHealthFollow`] without following the catalog (the control: a
    /// connection that died young waits out the rest of its retry delay, R6).
    DefaultsHealth,
}

impl Settings {
    /// The health check of the recommended settings.
    pub const HEALTH: HealthCheck = HealthCheck {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        failures: 2,
    };

    /// Name for the tables.
    pub fn name(self) -> &'static str {
        match self {
            Settings::Defaults => "defaults",
            Settings::Recommended => "recommended",
            Settings::DefaultsHealthFollow => "defaults + health check, following the catalog",
            Settings::DefaultsHealth => "defaults + health check, not following the catalog",
        }
    }

    /// What notices a silent peer with these settings.
    pub fn silent_peer_mechanism(self) -> &'static str {
        match self {
            Settings::Defaults => "TCP_USER_TIMEOUT (20 s)",
            Settings::Recommended | Settings::DefaultsHealthFollow | Settings::DefaultsHealth => {
                "health check (2 x 100 ms + 200 ms)"
            }
        }
    }
}

/// What happened to the client, with times since the drill's start.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Every event: when, and a short description.
    pub events: Vec<(Duration, String)>,
    /// Every request: start, duration, the answering server's index or the error.
    pub requests: Vec<(Duration, Duration, Result<u8, String>)>,
}

/// The client of a drill: a persistent connection to the bed's servers.
pub type Client = PersistentConnection<SocketAddr, HealthChecked<EchoConn>, IoError>;

/// A persistent connection (built inside the client host) to `addrs` in order with
/// `settings`; its events go to `log` (times from `t0`).
pub fn client(
    bed: &Bed,
    addrs: Vec<SocketAddr>,
    settings: Settings,
    log: Arc<Mutex<Log>>,
    t0: Instant,
) -> Client {
    bed.client_rt.block_on(async move {
        let options = match settings {
            Settings::Defaults | Settings::DefaultsHealthFollow | Settings::DefaultsHealth => {
                TcpOptions::new()
            }
            Settings::Recommended => TcpOptions::new().user_timeout(Duration::from_secs(5)),
        };
        let health = match settings {
            Settings::Defaults => None,
            Settings::Recommended | Settings::DefaultsHealthFollow | Settings::DefaultsHealth => {
                Some(Settings::HEALTH)
            }
        };
        let catalog = StaticList::new(addrs);
        let builder = PersistentConnection::builder(
            "echo",
            catalog.clone().get_address::<IoError>(Pick::InOrder),
            move |addr: SocketAddr, _cx| async move {
                let tcp = TcpConnection::connect_with(addr, &options).await?;
                let echo = EchoConn::new(tcp);
                // Without a health check: a check that never runs (interval ~forever).
                let check = health.unwrap_or(HealthCheck::new(
                    Duration::from_secs(1 << 40),
                    Duration::from_secs(1),
                    1,
                ));
                Ok(HealthChecked::new(echo, check, |c: EchoConn| async move {
                    request(&c).await.map(|_| ())
                }))
            },
        )
        .on_event(
            move |e: Event<SocketAddr, HealthChecked<EchoConn>, IoError>| {
                let at = t0.elapsed();
                let text = match &e {
                    Event::AttemptingToConnect => "attempting".to_string(),
                    Event::ObtainedAddress(a) => format!("address {a}"),
                    Event::FailedToConnect(Error::TimedOut(d)) => {
                        format!("failed: timed out ({d:?})")
                    }
                    Event::FailedToConnect(e) => format!("failed: {e}"),
                    Event::Connected(c) => format!("connected {}", c.handle().peer_addr()),
                    Event::Disconnected => "disconnected".to_string(),
                    Event::HandedOver { connection, reason } => {
                        format!(
                            "handed over to {} ({reason})",
                            connection.handle().peer_addr()
                        )
                    }
                };
                log.lock().unwrap().events.push((at, text));
                if let Event::Connected(c) = e {
                    // Which mechanism closed it: the health check, or the connection
                    // itself (end of file, reset, TCP_USER_TIMEOUT, keepalive).
                    let log = log.clone();
                    tokio::spawn(async move {
                        c.close_finished().await;
                        let by = if c.closed_by_health_check() {
                            "closed by the health check"
                        } else {
                            "closed by the connection"
                        };
                        log.lock()
                            .unwrap()
                            .events
                            .push((t0.elapsed(), by.to_string()));
                    });
                }
                async {}
            },
        );
        let builder = match settings {
            Settings::Defaults | Settings::DefaultsHealth => builder,
            Settings::Recommended => builder
                .retry_policy(Duration::from_millis(500))
                .connect_timeout(Duration::from_secs(1)),
            // What `PersistentConnection::with_catalog` sets up.
            Settings::DefaultsHealthFollow => builder.follow(catalog, Pick::InOrder),
        };
        builder.build()
    })
}

/// Sends requests on `pc` until `stop` fires, logging each.
pub fn start_requests(
    bed: &Bed,
    pc: Client,
    log: Arc<Mutex<Log>>,
    t0: Instant,
) -> oneshot::Sender<()> {
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    bed.client_rt.spawn(async move {
        loop {
            let start = Instant::now();
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let conn = pc.connected().await;
                request(&conn).await
            })
            .await
            .unwrap_or_else(|_| Err("timed out".to_string()));
            log.lock()
                .unwrap()
                .requests
                .push((start - t0, start.elapsed(), outcome));
            let next = start + REQUEST_EVERY;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = &mut stop_rx => break,
            }
        }
        pc.close().await;
    });
    stop_tx
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Fault → `Disconnected` (None: not within the run).
    pub noticed: Option<Duration>,
    /// Fault → the end of the first request started after it that a copy other than the
    /// faulted one answered (None: none).
    pub gap: Option<Duration>,
    /// Requests started after the fault that failed.
    pub failed: usize,
    /// Requests started after the fault.
    pub issued: usize,
    /// The longest request (none may exceed [`REQUEST_TIMEOUT`] by more than scheduling).
    pub slowest: Duration,
    /// The server that answered the first successful request after the fault (from
    /// another copy than the faulted one).
    pub served_by: Option<u8>,
    /// The server the fault was put on (the one serving when it was chosen).
    pub faulted: u8,
    /// Every event of the run, in seconds from the fault (negative: before it).
    pub events: Vec<(f64, String)>,
    /// What closed the faulted connection, as measured: "closed by the health check" or
    /// "closed by the connection" (end of file, reset, user timeout, keepalive).
    pub closed_by: Option<String>,
}

impl Run {
    /// Reads the figures from `log` for a fault on server `faulted` that started at
    /// `fault` (since the drill's start; the rule change takes a few ms more).
    pub fn from_log(log: &Log, fault: Duration, faulted: u8) -> Run {
        let after: Vec<_> = log
            .requests
            .iter()
            .filter(|(start, _, _)| *start >= fault)
            .collect();
        let first_ok = after
            .iter()
            .find(|(_, _, r)| matches!(r, Ok(i) if *i != faulted));
        Run {
            noticed: log
                .events
                .iter()
                .find(|(at, e)| *at >= fault && e == "disconnected")
                .map(|(at, _)| *at - fault),
            gap: first_ok.map(|(start, took, _)| *start + *took - fault),
            failed: after.iter().filter(|(_, _, r)| r.is_err()).count(),
            issued: after.len(),
            slowest: log
                .requests
                .iter()
                .map(|(_, took, _)| *took)
                .max()
                .unwrap_or_default(),
            served_by: first_ok.and_then(|(_, _, r)| r.as_ref().ok().copied()),
            faulted,
            closed_by: log
                .events
                .iter()
                .find(|(at, e)| *at >= fault && e.starts_with("closed by"))
                .map(|(_, e)| e.clone()),
            events: log
                .events
                .iter()
                .map(|(at, e)| (at.as_secs_f64() - fault.as_secs_f64(), e.clone()))
                .collect(),
        }
    }

    /// Whether an event starting with `prefix` happened after the fault.
    pub fn after_fault(&self, prefix: &str) -> bool {
        self.events
            .iter()
            .any(|(at, e)| *at >= 0.0 && e.starts_with(prefix))
    }
}

/// The server that answered the last successful request started before `before`.
pub fn current_server(log: &Log, before: Duration) -> Option<u8> {
    log.requests
        .iter()
        .rev()
        .filter(|(start, _, _)| *start < before)
        .find_map(|(_, _, r)| r.as_ref().ok().copied())
}

/// Waits (on the calling thread) until `done(log)` or `limit` since `since`.
pub fn wait_until(
    log: &Arc<Mutex<Log>>,
    since: Instant,
    limit: Duration,
    done: impl Fn(&Log) -> bool,
) {
    while since.elapsed() < limit && !done(&log.lock().unwrap()) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether some request started at or after `from` was answered by a server other than
/// `not` (any server: `None`).
pub fn served_since(log: &Log, from: Duration, not: Option<u8>) -> bool {
    log.requests
        .iter()
        .any(|(start, _, r)| *start >= from && matches!(r, Ok(i) if Some(*i) != not))
}

/// The faults of drills 1 and 3 on the current server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Drill 1: every packet between the client and its server is dropped.
    Blackhole,
    /// Drill 3: the server's host rejects the client (TCP reset).
    Reject,
    /// Drill 3: packets from the client to its server are dropped.
    DropToServer,
    /// Drill 3: packets from the server to the client are dropped.
    DropToClient,
    /// Drill 4: the client is partitioned from its server (the other copies reachable),
    /// then healed; the figures are the partition's.
    Partition,
}

impl Fault {
    /// Name for the tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Blackhole => "black hole",
            Fault::Reject => "reject (RST)",
            Fault::DropToServer => "drop client -> server",
            Fault::DropToClient => "drop server -> client",
            Fault::Partition => "partition",
        }
    }
}

/// Drills 1, 3 (and the first half of 4): a client using `s0` of three copies; after
/// `warmup`, `fault` between the client and `s0`; the run lasts until service is back
/// from another copy plus a little, at most `limit` after the fault.
pub fn fault_on_current(
    fault: Fault,
    settings: Settings,
    warmup: Duration,
    limit: Duration,
) -> Run {
    let bed = Bed::new(3);
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let pc = client(&bed, bed.addrs(), settings, log.clone(), t0);
    let stop = start_requests(&bed, pc, log.clone(), t0);
    wait_until(&log, t0, Duration::from_secs(10), |l| {
        served_since(l, Duration::ZERO, None)
    });
    std::thread::sleep(warmup);
    // The fault goes on the server in use now (a loaded machine may have moved the
    // client already: a health check that timed out). Times count from the start of the
    // rule change (it takes a few ms, one `nft` run per namespace changed).
    let current = current_server(&log.lock().unwrap(), t0.elapsed()).unwrap_or(0);
    let (client, s0) = (&bed.client, &bed.servers[current as usize]);
    let at = t0.elapsed();
    let id = match fault {
        Fault::Blackhole => bed.lab.blackhole(client, s0),
        Fault::Reject => bed.lab.reject(client, s0),
        Fault::DropToServer => bed.lab.drop_one_way(client, s0),
        Fault::DropToClient => bed.lab.drop_one_way(s0, client),
        Fault::Partition => bed.lab.partition(&[client], &[s0]),
    };
    let since = Instant::now();
    wait_until(&log, since, limit, |l| served_since(l, at, Some(current)));
    std::thread::sleep(Duration::from_millis(300));
    bed.lab.lift(id);
    let _ = stop.send(());
    std::thread::sleep(Duration::from_millis(50));
    let log = log.lock().unwrap().clone();
    Run::from_log(&log, at, current)
}

/// Drill 1 on an idle connection: the client connects and sends nothing; the copy in use
/// is black-holed; the time to `Disconnected` (keepalive probes, bounded by the user
/// timeout) and what closed it. `None`: not within `limit`.
pub fn idle_blackhole(settings: Settings, limit: Duration) -> (Option<Duration>, Option<String>) {
    let bed = Bed::new(2);
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let pc = client(&bed, bed.addrs(), settings, log.clone(), t0);
    let conn = bed.client_rt.block_on({
        let pc = pc.clone();
        async move { pc.connected().await }
    });
    let current = bed
        .servers
        .iter()
        .position(|h| h.ip() == conn.handle().peer_addr().ip())
        .expect("connected to a server of the bed");
    drop(conn);
    let at = t0.elapsed();
    let _hole = bed.lab.blackhole(&bed.client, &bed.servers[current]);
    let noticed = |l: &Log| {
        l.events
            .iter()
            .any(|(t, e)| *t >= at && e.starts_with("closed by"))
    };
    wait_until(&log, Instant::now(), limit, noticed);
    bed.client_rt.block_on(async move { pc.close().await });
    let log = log.lock().unwrap().clone();
    let closed = log
        .events
        .iter()
        .find(|(t, e)| *t >= at && e.starts_with("closed by"));
    (closed.map(|(t, _)| *t - at), closed.map(|(_, e)| e.clone()))
}

/// Drill 2: the catalog lists first a copy whose host is gone (isolated: its SYNs
/// unanswered), then two live ones. The client starts with the dead copy; the connect
/// timeout ends that attempt and the round moves on. The "fault" is the client's start.
pub fn dead_address_in_catalog(settings: Settings, limit: Duration) -> Run {
    let bed = Bed::new(3);
    let _gone = bed.lab.isolate(&bed.servers[0]);
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let pc = client(&bed, bed.addrs(), settings, log.clone(), t0);
    let stop = start_requests(&bed, pc, log.clone(), t0);
    wait_until(&log, t0, limit, |l| served_since(l, Duration::ZERO, None));
    std::thread::sleep(Duration::from_millis(200));
    let _ = stop.send(());
    std::thread::sleep(Duration::from_millis(50));
    let log = log.lock().unwrap().clone();
    let mut run = Run::from_log(&log, Duration::ZERO, 0);
    // No connection was faulted: the only close is the drill's own at the end.
    run.closed_by = None;
    // "Noticed": the failed attempt on the dead copy.
    run.noticed = log
        .events
        .iter()
        .find(|(_, e)| e.starts_with("failed"))
        .map(|(at, _)| *at);
    run
}

/// Drill 4 in full: the partition of [`fault_on_current`] (of the copy in use, say `s0`),
/// then heal, then the client's new copy `s1` rejects it: the next pick is the healed
/// `s0`, which must serve again on a new connection. Returns the partition's run and the heal's (fault = the reject on `s1`).
pub fn partition_then_heal(settings: Settings, warmup: Duration, limit: Duration) -> (Run, Run) {
    // Two copies, so that after s1 the picker's next sweep comes back to s0.
    let bed = Bed::new(2);
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let pc = client(&bed, bed.addrs(), settings, log.clone(), t0);
    let stop = start_requests(&bed, pc, log.clone(), t0);
    wait_until(&log, t0, Duration::from_secs(10), |l| {
        served_since(l, Duration::ZERO, None)
    });
    std::thread::sleep(warmup);
    let current = current_server(&log.lock().unwrap(), t0.elapsed()).unwrap_or(0) as usize;
    let (client, s0, s1) = (
        &bed.client,
        &bed.servers[current],
        &bed.servers[1 - current],
    );
    let cut_at = t0.elapsed();
    let cut = bed.lab.partition(&[client], &[s0]);
    wait_until(&log, Instant::now(), limit, |l| {
        served_since(l, cut_at, Some(current as u8))
    });
    bed.lab.lift(cut);
    // Let the connection to s1 age past the retry delay (R6), then break it.
    std::thread::sleep(warmup);
    let reject_at = t0.elapsed();
    let reject = bed.lab.reject(client, s1);
    let other = 1 - current as u8;
    wait_until(&log, Instant::now(), limit, |l| {
        served_since(l, reject_at, Some(other))
    });
    std::thread::sleep(Duration::from_millis(200));
    bed.lab.lift(reject);
    let _ = stop.send(());
    std::thread::sleep(Duration::from_millis(50));
    let log = log.lock().unwrap().clone();
    let mut partition = Run::from_log(&log, cut_at, current as u8);
    let reject_after = (reject_at - cut_at).as_secs_f64();
    partition.events.retain(|(at, _)| *at < reject_after);
    (partition, Run::from_log(&log, reject_at, other))
}

/// Drill 5's figures.
#[derive(Clone, Debug)]
pub struct FlapRun {
    /// How long the link flapped.
    pub flapping: Duration,
    /// Events during the flapping.
    pub events: usize,
    /// `Disconnected` events during the flapping.
    pub disconnections: usize,
    /// Two consecutive identical failures within a round (R4 broken) — must be 0.
    pub repeated_failures: usize,
    /// Requests during the flapping, and how many failed.
    pub requests: usize,
    /// Of which failed.
    pub failed: usize,
    /// The longest request.
    pub slowest: Duration,
    /// Tasks alive in the client's runtime before the client and after it closed.
    pub tasks: (usize, usize),
    /// TCP sockets with a file descriptor (an inode) in the client host, before the client
    /// and after it closed: a leaked socket stays (closed ones the kernel still finishes,
    /// FIN_WAIT or TIME_WAIT without a descriptor, do not count). Per host, so labs
    /// running beside it do not blur it.
    pub sockets: (usize, usize),
    /// The same count while connected, before the flapping (at least 1: the count sees
    /// the client's connection).
    pub sockets_connected: usize,
    /// Resident memory (KiB) of the whole process before and after (other drills running
    /// in the same process blur it).
    pub rss_kib: (u64, u64),
    /// Whether service came back after the flapping stopped.
    pub recovered: bool,
}

/// TCP sockets that have a file descriptor in `host` (`/proc/thread-self/net/tcp` read
/// from a thread inside it: inode not 0).
pub fn sockets_in(host: &Host) -> usize {
    host.thread(|| {
        ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .map(|t| {
                t.lines()
                    .skip(1)
                    .filter(|l| l.split_whitespace().nth(9).is_some_and(|i| i != "0"))
                    .count()
            })
            .sum()
    })
    .join()
    .expect("reading the host's sockets")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Drill 5: the client's link to every server flaps (black hole on for `period`, off for
/// `period`) for `flapping`; then it stops and service must come back.
pub fn flapping_link(settings: Settings, period: Duration, flapping: Duration) -> FlapRun {
    let bed = Bed::new(2);
    let tasks = |bed: &Bed| bed.client_rt.handle().metrics().num_alive_tasks();
    let before = (tasks(&bed), sockets_in(&bed.client), rss_kib());
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let pc = client(&bed, bed.addrs(), settings, log.clone(), t0);
    let stop = start_requests(&bed, pc, log.clone(), t0);
    wait_until(&log, t0, Duration::from_secs(10), |l| {
        served_since(l, Duration::ZERO, None)
    });
    let sockets_connected = sockets_in(&bed.client);
    let servers: Vec<&Host> = bed.servers.iter().collect();
    let flap = bed.lab.flap_partition(&[&bed.client], &servers, period);
    let from = t0.elapsed();
    std::thread::sleep(flapping);
    bed.lab.lift(flap);
    let until = t0.elapsed();
    wait_until(&log, Instant::now(), Duration::from_secs(30), |l| {
        served_since(l, until, None)
    });
    let recovered = served_since(&log.lock().unwrap(), until, None);
    let _ = stop.send(());
    // The request task closes the client; its tasks end with it.
    let closing = Instant::now();
    while tasks(&bed) > before.0 && closing.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = (tasks(&bed), sockets_in(&bed.client), rss_kib());
    let log = log.lock().unwrap().clone();
    let during: Vec<_> = log
        .events
        .iter()
        .filter(|(at, _)| *at >= from && *at < until)
        .collect();
    let mut repeated = 0;
    let mut last_failure: Option<&str> = None;
    for (_, e) in &during {
        if e.starts_with("failed") {
            if last_failure == Some(e.as_str()) {
                repeated += 1;
            }
            last_failure = Some(e.as_str());
        } else if e == "attempting" || e.starts_with("connected") {
            last_failure = None;
        }
    }
    let reqs: Vec<_> = log
        .requests
        .iter()
        .filter(|(s, _, _)| *s >= from && *s < until)
        .collect();
    FlapRun {
        flapping,
        events: during.len(),
        disconnections: during.iter().filter(|(_, e)| e == "disconnected").count(),
        repeated_failures: repeated,
        requests: reqs.len(),
        failed: reqs.iter().filter(|(_, _, r)| r.is_err()).count(),
        slowest: log
            .requests
            .iter()
            .map(|(_, t, _)| *t)
            .max()
            .unwrap_or_default(),
        tasks: (before.0, after.0),
        sockets: (before.1, after.1),
        sockets_connected,
        rss_kib: (before.2, after.2),
        recovered,
    }
}

/// The median of `xs` (None counts as larger than any value); None if empty.
pub fn median(mut xs: Vec<Option<Duration>>) -> Option<Duration> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| match (a, b) {
        (Some(a), Some(b)) => a.cmp(b),
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Greater,
        (_, None) => std::cmp::Ordering::Less,
    });
    xs[xs.len() / 2]
}

/// Seconds with two decimals, or `never`.
pub fn secs(d: Option<Duration>) -> String {
    d.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
}
