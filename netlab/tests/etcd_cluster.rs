//! Drill 6 of issue 19: the etcd catalog against a real three-member etcd cluster, one
//! member per lab host (`e0`, `e1`, `e2`), echo servers publishing themselves with
//! `EtcdPublisher::start` on `s0` and `s1`, and a client host whose `EtcdCatalog` lists all
//! three endpoints. Three faults, in one run:
//!
//! 1. **the member the client talks to is killed** (`kill -9`; the catalog asks the member
//!    that answered last, so far the first endpoint, made the leader beforehand so that its
//!    death also costs an election): lookups must go on through the other two;
//! 2. **the member the client talks to now is partitioned** from the other two (a minority:
//!    the client still reaches it; it has no leader, or still believes it has one and its
//!    reads hang): lookups go on through the majority;
//! 3. **quorum is lost** (two members killed), then restored: the catalog fails static
//!    (issue 28 item 11): lookups go on serving the last list etcd vouched for, marked
//!    stale, and none fails; halfway through, the echo server the clients are connected to
//!    (`s0`) dies (its key stays listed, as a crashed copy's does until its lease runs
//!    out), and the clients must reach `s1` while quorum is still lost (measured, for a
//!    catalog of range reads and one with the watch cache). A catalog set not to serve a
//!    stale list (`max_staleness(ZERO)`) fails instead, with a clear error announced once
//!    per round (R4). Once both members are back, lookups are fresh again and list both
//!    keys, and the time that takes is measured.
//!
//! Each phase measures the lookups that failed, those answered with a stale list, the
//! slowest lookup, and the gap: fault to the end of the first lookup listing both copies
//! after the last failed one (zero when none failed); for the restore, the restart to the
//! end of the first fresh lookup listing both. The short pass runs once (`cargo test --workspace --all-features`);
//! `NETLAB_REPS=n` runs it n times and prints a row per run for BENCHMARKS.md. Needs root,
//! `ip`, `nft` and `etcd` (`bash scripts/needs.sh`); fails saying what is missing.

#![cfg(feature = "etcd")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher, etcd_client};
use persistent_connection::catalog::{Catalog, Pick};
use persistent_connection::{Closable, Error, Event, IoError, PersistentConnection, TcpConnection};
use persistent_connection_netlab::{Host, HostRuntime, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "/services/echo/";
const ECHO_PORT: u16 = 7000;
/// The publishers' lease: long enough to ride out the drill's outages (module docs of the
/// catalog: a TTL must outlive every stall).
const TTL: Duration = Duration::from_secs(10);
/// Each etcd request of the catalog and the publishers.
const ETCD_TIMEOUT: Duration = Duration::from_millis(900);
/// How often the probe looks the catalog up.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long each fault is held.
const HOLD: Duration = Duration::from_secs(3);

fn reps() -> usize {
    std::env::var("NETLAB_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

// ---- the cluster -----------------------------------------------------------------------

/// One etcd member in a lab host; `kill -9` on drop.
struct Member {
    name: String,
    host: Host,
    dir: PathBuf,
    cluster: String,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}", self.host.addr(2379))
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let peer = format!("http://{}", self.host.addr(2380));
        let client = self.client_url();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let child = self
            .host
            .command("etcd")
            .arg(format!("--name={}", self.name))
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=drill6")
            // Fast elections, as on a LAN: a leader is noticed gone after 500 ms.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .arg("--log-level=warn")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `etcd` ({e}): install Debian's etcd-server (`bash scripts/needs.sh`)")
            });
        self.child = Some(child);
    }

    /// `kill -9` (`ip netns exec` execs etcd, so the child is etcd itself).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn data_dir(lab: &Lab, name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("{}-{name}", lab.prefix()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("etcd data directory");
    dir
}

/// Asks `endpoint` for its status: `(its member id, the leader it knows)`, or why not.
async fn status(endpoint: String) -> Result<(u64, u64), String> {
    let ask = async {
        let mut c = etcd_client::Client::connect([endpoint], None).await?;
        let s = c.status().await?;
        Ok::<_, etcd_client::Error>((s.header().map_or(0, |h| h.member_id()), s.leader()))
    };
    match tokio::time::timeout(Duration::from_millis(500), ask).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Waits until every running member reports the same leader, one of the running ones;
/// returns the leader's index.
fn wait_for_leader(rt: &HostRuntime, members: &[Member], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let urls: Vec<(usize, String)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.child.is_some())
            .map(|(i, m)| (i, m.client_url()))
            .collect();
        let answers = rt.block_on(async move {
            let mut out = Vec::new();
            for (i, url) in urls {
                out.push((i, status(url).await));
            }
            out
        });
        let ok: Vec<(usize, u64, u64)> = answers
            .iter()
            .filter_map(|(i, r)| r.as_ref().ok().map(|(id, leader)| (*i, *id, *leader)))
            .collect();
        if ok.len() == answers.len() && !ok.is_empty() {
            let leader = ok[0].2;
            if leader != 0
                && ok.iter().all(|(_, _, l)| *l == leader)
                && let Some((i, _, _)) = ok.iter().find(|(_, id, _)| *id == leader)
            {
                return *i;
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = members
                .iter()
                .map(|m| format!("--- {}:\n{}", m.name, m.log()))
                .collect();
            panic!(
                "no agreed leader within {within:?}: {answers:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes member `target` the leader (etcd's move-leader, asked of the current leader) and
/// waits until every member agrees.
fn move_leader_to(rt: &HostRuntime, members: &[Member], target: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = wait_for_leader(rt, members, Duration::from_secs(20));
        if leader == target {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leadership did not move to {target}"
        );
        let from = members[leader].client_url();
        let to = members[target].client_url();
        let moved = rt.block_on(async move {
            let (target_id, _) = status(to).await?;
            let mut c = etcd_client::Client::connect([from], None)
                .await
                .map_err(|e| e.to_string())?;
            c.move_leader(target_id).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        });
        if let Err(e) = moved {
            eprintln!("drill 6: move-leader: {e}; retrying");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- servers, client and probe -----------------------------------------------------------

/// An echo server on `ECHO_PORT`, published with `EtcdPublisher::start`.
struct Server {
    publisher: Arc<EtcdPublisher>,
    accept: tokio::task::JoinHandle<()>,
    kick: Arc<tokio::sync::Notify>,
}

impl Server {
    /// The echo server dies (its listener closed, its connections dropped); its publisher
    /// keeps its key, as a crashed copy's stays listed until its lease runs out.
    fn kill(&self) {
        self.accept.abort();
        self.kick.notify_waiters();
    }
}

/// An echo server on `ECHO_PORT` that publishes itself with `EtcdPublisher::start`.
fn start_server(rt: &HostRuntime, host: &Host, endpoints: Vec<String>) -> Server {
    let addr = host.addr(ECHO_PORT);
    let key = format!("{PREFIX}{}", host.name());
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let kick = Arc::new(tokio::sync::Notify::new());
        let k = kick.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let k = k.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        tokio::select! {
                            n = s.read(&mut buf) => match n {
                                Ok(n) if n > 0 => {
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                                _ => break,
                            },
                            _ = k.notified() => break,
                        }
                    }
                });
            }
        });
        let options = EtcdOptions::new(endpoints).timeout(ETCD_TIMEOUT);
        Server {
            publisher: Arc::new(EtcdPublisher::start(options, key, addr, TTL)),
            accept,
            kick,
        }
    })
}

/// One lookup of the probe: when it started, and what it listed (or its error).
#[derive(Clone, Debug)]
struct Probe {
    at: Instant,
    took: Duration,
    listed: Result<Vec<SocketAddr>, String>,
    /// The catalog said it served a stale list (`staleness()` after the lookup).
    stale: bool,
}

type Pc = PersistentConnection<SocketAddr, TcpConnection, IoError>;

/// What the client host runs: the connection kept through the catalog (which must be left
/// alone until its server dies in phase 3), the same through a catalog with the watch
/// cache, a third one whose connects always fail through a catalog that never serves a
/// stale list (so that it looks the catalog up on every attempt, and its `FailedToConnect`
/// events show how catalog failures are announced), and probes that look the catalog up
/// every 50 ms.
struct Client {
    pc: Pc,
    cached_pc: Pc,
    probe_pc: Pc,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    main_events: Arc<Mutex<Vec<String>>>,
    probes: Arc<Mutex<Vec<Probe>>>,
    /// The same probe through a catalog with `watch_cache()`.
    cached: Arc<Mutex<Vec<Probe>>>,
}

fn start_client(rt: &HostRuntime, endpoints: Vec<String>) -> Client {
    rt.block_on(async move {
        let options = EtcdOptions::new(endpoints).timeout(ETCD_TIMEOUT);
        let main_events = Arc::new(Mutex::new(Vec::new()));
        let echo = |catalog: EtcdCatalog, events: Arc<Mutex<Vec<String>>>| {
            PersistentConnection::builder(
                "echo",
                catalog.get_address::<IoError>(Pick::InOrder),
                |addr: SocketAddr, _cx| TcpConnection::connect(addr),
            )
            .retry_policy(Duration::from_millis(100))
            .on_event(move |e| {
                events.lock().unwrap().push(match &e {
                    Event::Connected(c) => format!("Connected({})", c.peer_addr()),
                    other => format!("{other:?}").chars().take(60).collect(),
                });
                async {}
            })
            .build()
        };
        let pc = echo(
            EtcdCatalog::with_options(options.clone(), PREFIX),
            main_events.clone(),
        );
        let cached_pc = echo(
            EtcdCatalog::with_options(options.clone(), PREFIX).watch_cache(),
            main_events.clone(),
        );
        let failures = Arc::new(Mutex::new(Vec::new()));
        let f = failures.clone();
        let probe_pc = PersistentConnection::builder(
            "probe",
            EtcdCatalog::with_options(options.clone(), PREFIX)
                .max_staleness(Duration::ZERO)
                .get_address::<IoError>(Pick::InOrder),
            |_addr: SocketAddr, _cx| async {
                Err::<TcpConnection, _>(IoError::new(
                    std::io::ErrorKind::Other,
                    "probe: never connects",
                ))
            },
        )
        .retry_policy(Duration::from_millis(100))
        .on_event(move |e| {
            if let Event::FailedToConnect(e) = &e {
                let text = match e {
                    Error::User(e) => e.to_string(),
                    other => format!("{other:?}"),
                };
                f.lock().unwrap().push((Instant::now(), text));
            }
            async {}
        })
        .build();
        let probes = Arc::new(Mutex::new(Vec::new()));
        let p = probes.clone();
        tokio::spawn(probe(EtcdCatalog::with_options(options.clone(), PREFIX), p));
        let cached = Arc::new(Mutex::new(Vec::new()));
        let c = cached.clone();
        tokio::spawn(probe(
            EtcdCatalog::with_options(options, PREFIX).watch_cache(),
            c,
        ));
        Client {
            pc,
            cached_pc,
            probe_pc,
            failures,
            main_events,
            probes,
            cached,
        }
    })
}

/// Looks `catalog` up every [`PROBE_EVERY`], recording each outcome.
async fn probe(catalog: EtcdCatalog, into: Arc<Mutex<Vec<Probe>>>) {
    loop {
        let at = Instant::now();
        let listed = catalog.lookup().await.map_err(|e| e.to_string());
        into.lock().unwrap().push(Probe {
            at,
            took: at.elapsed(),
            listed,
            stale: catalog.staleness().is_some(),
        });
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

impl Client {
    fn probes_since(&self, t: Instant) -> Vec<Probe> {
        self.probes
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.at >= t)
            .cloned()
            .collect()
    }

    /// Waits until a lookup started after `t` lists every one of `want` (and, if `fresh`,
    /// is not stale); returns when it finished, measured from `t`.
    fn wait_listing(
        &self,
        t: Instant,
        want: &[SocketAddr],
        fresh: bool,
        within: Duration,
    ) -> Duration {
        let deadline = t + within;
        loop {
            let done = self.probes_since(t).into_iter().find(|p| {
                (!fresh || !p.stale)
                    && p.listed
                        .as_ref()
                        .is_ok_and(|l| want.iter().all(|a| l.contains(a)))
            });
            if let Some(p) = done {
                return (p.at + p.took) - t;
            }
            assert!(
                Instant::now() < deadline,
                "no lookup listed {want:?} within {within:?} of the fault; lookups since: {:#?}",
                summarise(&self.probes_since(t))
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The distinct outcomes of `probes`, with their counts, in order of first appearance.
fn summarise(probes: &[Probe]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for p in probes {
        let text = match &p.listed {
            Ok(l) if p.stale => format!("stale {l:?}"),
            Ok(l) => format!("ok {l:?}"),
            Err(e) => e.clone(),
        };
        match out.iter_mut().find(|(t, _)| *t == text) {
            Some((_, n)) => *n += 1,
            None => out.push((text, 1)),
        }
    }
    out
}

/// One phase's figures.
#[derive(Debug)]
struct Phase {
    what: &'static str,
    lookups: usize,
    failed: usize,
    /// Lookups answered with the last list while etcd could not vouch for it.
    stale: usize,
    /// Fault (or restore) to the first lookup listing both copies; none for the outage.
    gap: Option<Duration>,
    slowest: Duration,
    /// `FailedToConnect` events of the probe connection naming the catalog (outage only).
    announced: Option<usize>,
    /// How long after the fault the watch-cache catalog said it served a stale list
    /// (outage only).
    cache_stale_after: Option<Duration>,
    /// The server in use killed while quorum is lost: how long until each client (range
    /// reads, watch cache) was connected to the other copy (outage only).
    failover: Option<(Duration, Duration)>,
}

/// The lookups started in `[from, to)`. The gap: `from` to the end of the first lookup
/// that listed the copies after the last failed one (zero if none failed).
fn phase(client: &Client, what: &'static str, from: Instant, to: Instant) -> Phase {
    let probes: Vec<Probe> = client
        .probes_since(from)
        .into_iter()
        .filter(|p| p.at < to)
        .collect();
    let last_failure = probes.iter().rposition(|p| p.listed.is_err());
    let gap = match last_failure {
        None => Some(Duration::ZERO),
        Some(i) => probes[i + 1..]
            .iter()
            .find(|p| p.listed.is_ok())
            .map(|p| (p.at + p.took) - from),
    };
    Phase {
        what,
        lookups: probes.len(),
        failed: probes.iter().filter(|p| p.listed.is_err()).count(),
        stale: probes
            .iter()
            .filter(|p| p.stale && p.listed.is_ok())
            .count(),
        gap,
        slowest: probes.iter().map(|p| p.took).max().unwrap_or_default(),
        announced: None,
        cache_stale_after: None,
        failover: None,
    }
}

// ---- the drill ---------------------------------------------------------------------------

fn drill() -> Vec<Phase> {
    let lab = Lab::new();
    let hosts: Vec<Host> = ["e0", "e1", "e2"].iter().map(|n| lab.host(n)).collect();
    let servers: Vec<Host> = ["s0", "s1"].iter().map(|n| lab.host(n)).collect();
    let client_host = lab.host("client");
    let cluster = hosts
        .iter()
        .map(|h| format!("{}=http://{}", h.name(), h.addr(2380)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<Member> = hosts
        .iter()
        .map(|h| Member {
            name: h.name().to_owned(),
            host: h.clone(),
            dir: data_dir(&lab, h.name()),
            cluster: cluster.clone(),
            child: None,
        })
        .collect();
    for m in &mut members {
        m.start();
    }
    let endpoints: Vec<String> = members.iter().map(Member::client_url).collect();
    let rt = client_host.runtime_with(2);
    wait_for_leader(&rt, &members, Duration::from_secs(20));

    let server_rts: Vec<HostRuntime> = servers.iter().map(|h| h.runtime()).collect();
    let echo_servers: Vec<Server> = servers
        .iter()
        .zip(&server_rts)
        .map(|(h, srt)| start_server(srt, h, endpoints.clone()))
        .collect();
    let copies: Vec<SocketAddr> = servers.iter().map(|h| h.addr(ECHO_PORT)).collect();
    // Both copies listed before the clients start, so that both connect to the first
    // listed (`Pick::InOrder`): s0.
    let catalog = EtcdCatalog::with_options(EtcdOptions::new(endpoints.clone()), PREFIX);
    let want = copies.clone();
    rt.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while catalog.lookup().await.ok() != Some(want.clone()) {
            assert!(Instant::now() < deadline, "the copies were not published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let client = start_client(&rt, endpoints.clone());
    let t0 = Instant::now();
    client.wait_listing(t0, &copies, true, Duration::from_secs(20));
    let (pc, cached_pc) = (client.pc.clone(), client.cached_pc.clone());
    let (conn, cached_conn) = rt.block_on(async move {
        let within = Duration::from_secs(10);
        let conn = tokio::time::timeout(within, pc.connected()).await;
        let cached = tokio::time::timeout(within, cached_pc.connected()).await;
        (
            conn.expect("connected through the catalog"),
            cached.expect("connected through the watch-cache catalog"),
        )
    });
    // Both on s0, the first listed (`Pick::InOrder`).
    assert_eq!(conn.peer_addr(), copies[0]);
    assert_eq!(cached_conn.peer_addr(), copies[0]);
    let conn_local = (conn.local_addr(), cached_conn.local_addr());
    let mut phases = Vec::new();

    // 1. The member the client talks to is killed: every catalog of the client asks the
    //    member that answered last, so far the first endpoint, e0. Made the leader first,
    //    so that its death also costs an election (the worst case).
    move_leader_to(&rt, &members, 0);
    let t = Instant::now();
    members[0].kill();
    client.wait_listing(t, &copies, true, Duration::from_secs(10));
    std::thread::sleep(HOLD);
    phases.push(phase(
        &client,
        "kill -9 the member the client talks to (the leader)",
        t,
        Instant::now(),
    ));
    members[0].start();
    wait_for_leader(&rt, &members, Duration::from_secs(20));

    // 2. The member the client talks to now (e1, the next endpoint after e0 failed) is
    //    partitioned from the other two; the client still reaches it.
    let minority = 1;
    let majority: Vec<&Host> = (0..3)
        .filter(|&i| i != minority)
        .map(|i| &hosts[i])
        .collect();
    let t = Instant::now();
    let cut = lab.partition(&[&hosts[minority]], &majority);
    client.wait_listing(t, &copies, true, Duration::from_secs(10));
    std::thread::sleep(HOLD);
    phases.push(phase(
        &client,
        "partition it (a minority) from the other two",
        t,
        Instant::now(),
    ));
    lab.lift(cut);
    wait_for_leader(&rt, &members, Duration::from_secs(20));

    // The connections in use were left alone through phases 1 and 2.
    let still = (
        client.pc.current_connection().map(|c| c.local_addr()),
        client
            .cached_pc
            .current_connection()
            .map(|c| c.local_addr()),
    );
    assert_eq!(
        still,
        (Some(conn_local.0), Some(conn_local.1)),
        "a connection was replaced"
    );
    let events = client.main_events.lock().unwrap().clone();
    assert!(
        !events.iter().any(|e| e.starts_with("Disconnected")),
        "{events:?}"
    );

    // 3. Quorum lost: two members killed. Halfway through, s0 (the copy both clients use)
    //    dies: they must reach s1 from the last list while quorum is still lost. Then both
    //    members are restarted.
    let leader = wait_for_leader(&rt, &members, Duration::from_secs(10));
    let second = (leader + 1) % 3;
    let before_failures = client.failures.lock().unwrap().len();
    let t_lost = Instant::now();
    members[leader].kill();
    members[second].kill();
    std::thread::sleep(HOLD / 2);
    let killed = Instant::now();
    echo_servers[0].kill();
    let (pc, cached_pc) = (client.pc.clone(), client.cached_pc.clone());
    let other = copies[1];
    let (reached, reached_cached) = rt.block_on(async move {
        let on_other = |pc: Pc| async move {
            loop {
                let c = pc.connected().await;
                if c.peer_addr() == other {
                    return killed.elapsed();
                }
                c.close_finished().await;
            }
        };
        let rest = HOLD / 2;
        tokio::join!(
            tokio::time::timeout(rest, on_other(pc)),
            tokio::time::timeout(rest, on_other(cached_pc)),
        )
    });
    std::thread::sleep((t_lost + HOLD).saturating_duration_since(Instant::now()));
    // The watch cache: how long after quorum was lost it said its list was stale.
    let cache_stale_after: Option<Duration> = client
        .cached
        .lock()
        .unwrap()
        .iter()
        .find(|p| p.at >= t_lost && p.stale)
        .map(|p| (p.at + p.took) - t_lost);
    let mut lost = phase(
        &client,
        "quorum lost (two members killed)",
        t_lost,
        Instant::now(),
    );
    lost.cache_stale_after = cache_stale_after;
    let during: Vec<(Instant, String)> =
        client.failures.lock().unwrap()[before_failures..].to_vec();
    let attempts = client.probe_pc.stats().attempts;
    let t_back = Instant::now();
    members[leader].start();
    members[second].start();
    let back = client.wait_listing(t_back, &copies, true, Duration::from_secs(30));
    let mut restored = phase(
        &client,
        "quorum restored: keys listed again",
        t_back,
        Instant::now(),
    );
    // Here the gap is the restart to the first fresh listing (the lookups before it served
    // the last list, or waited for the members).
    restored.gap = Some(back);
    phases.push(restored);

    for p in phases
        .iter()
        .take(2)
        .chain([&lost])
        .chain(phases.iter().skip(2))
    {
        println!("drill 6: {p:?}");
    }
    println!(
        "drill 6: s0 killed {:?} after quorum was lost; on s1 after {reached:?} (range reads), {reached_cached:?} (watch cache)",
        killed - t_lost
    );
    println!(
        "drill 6: catalog failures announced while quorum was lost (max_staleness(ZERO)): {during:#?}"
    );
    // ---- assertions -------------------------------------------------------------------
    // Quorum lost: the catalog failed static. No lookup failed; after the first second
    // (once every catalog has noticed), every one served the last list, marked stale.
    let held: Vec<Probe> = client
        .probes_since(t_lost)
        .into_iter()
        .filter(|p| p.at < t_back)
        .collect();
    assert!(!held.is_empty());
    for p in &held {
        assert!(
            p.listed.as_ref().is_ok_and(|l| l == &copies),
            "a lookup without quorum did not serve the last list: {p:?}"
        );
        if p.at >= t_lost + Duration::from_secs(1) {
            assert!(p.stale, "not marked stale: {p:?}");
        }
    }
    let cached_held: Vec<Probe> = client
        .cached
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.at >= t_lost && p.at < t_back)
        .cloned()
        .collect();
    assert!(
        cached_held
            .iter()
            .all(|p| p.listed.as_ref().is_ok_and(|l| l == &copies)),
        "the watch cache failed a lookup without quorum: {:#?}",
        summarise(&cached_held)
    );
    // The watch cache notices within about one request timeout (its check every half
    // request timeout fails).
    assert!(
        cache_stale_after.is_some_and(|d| d <= ETCD_TIMEOUT + Duration::from_millis(600)),
        "the watch cache said stale {cache_stale_after:?} after quorum was lost"
    );
    // The copy in use died while quorum was lost: both clients reached the other listed
    // copy while quorum was still lost (within the rest of the hold; the members are
    // restarted only after it).
    assert!(
        reached.is_ok() && reached_cached.is_ok(),
        "not on the other copy while quorum was lost: {reached:?} {reached_cached:?}"
    );
    lost.failover = Some((
        reached.unwrap_or_default(),
        reached_cached.unwrap_or_default(),
    ));
    // A catalog that never serves a stale list fails instead, with a clear error,
    // de-duplicated: the probe connection's attempts went on (about 30 in 3 s), but the
    // failure was announced only when it changed, not per attempt. It changes a few times
    // while the cluster notices: the surviving member first believes it still has a
    // leader (its read hangs: "timed out"), then says "no leader"; a member killed
    // mid-request reads "transport error" once before "connection refused".
    let catalog_failures: Vec<&String> = during
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.contains("etcd prefix"))
        .collect();
    lost.announced = Some(catalog_failures.len());
    assert!(
        !catalog_failures.is_empty() && catalog_failures.len() <= 5,
        "catalog failures announced while quorum was lost ({attempts} attempts so far): {catalog_failures:#?}"
    );
    for e in &catalog_failures {
        assert!(
            e.contains("no leader") || e.contains("refused") || e.contains("timed out"),
            "{e}"
        );
    }
    // Lookups went on through the other members in phases 1 and 2: none failed (the
    // election's lookups served the last list), and every one is fresh again within 3 s
    // of the fault.
    for p in &phases[..2] {
        assert!(p.gap.is_some_and(|g| g <= Duration::from_secs(3)), "{p:?}");
        assert!(p.failed < p.lookups / 2, "{p:?}");
    }
    assert!(
        phases[2].gap.is_some_and(|g| g <= Duration::from_secs(20)),
        "{:?}",
        phases[2]
    );
    for s in echo_servers.iter() {
        assert!(s.publisher.is_published());
    }
    let mut all = phases;
    all.insert(2, lost);
    drop(echo_servers);
    drop(client);
    drop(server_rts);
    drop(rt);
    drop(members);
    all
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn ms_fine(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

/// Runs the drill `NETLAB_REPS` times (default 1) and prints its table (rows start with
/// `|`, which `scripts/netlab.sh` keeps): per phase, over the runs, the median and worst
/// gap, the lookups that failed of those made, the slowest lookup, and for the outage how
/// many times the catalog failure was announced.
#[test]
fn drill6_three_member_etcd_cluster() {
    let runs = reps();
    let all: Vec<Vec<Phase>> = (0..runs).map(|_| drill()).collect();
    println!();
    println!(
        "Drill 6, a three-member etcd cluster: {runs} run(s); lookups every 50 ms, each bounded by 900 ms (300 ms per member)"
    );
    println!();
    println!(
        "| phase | gap, median (worst) | lookups failed / stale / made | slowest lookup | catalog failure announced (R4), `max_staleness(ZERO)` |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for i in 0..all[0].len() {
        let rows: Vec<&Phase> = all.iter().map(|run| &run[i]).collect();
        let gaps: Vec<Duration> = rows.iter().filter_map(|p| p.gap).collect();
        let gap = format!(
            "{} ({})",
            ms(median(gaps.clone())),
            ms(gaps.iter().copied().max().unwrap_or_default())
        );
        let failed: usize = rows.iter().map(|p| p.failed).sum();
        let stale: usize = rows.iter().map(|p| p.stale).sum();
        let made: usize = rows.iter().map(|p| p.lookups).sum();
        let slowest = rows.iter().map(|p| p.slowest).max().unwrap_or_default();
        let announced = match rows.iter().filter_map(|p| p.announced).max() {
            Some(worst) => format!("at most {worst} times in 3 s"),
            None => "—".to_owned(),
        };
        println!(
            "| {} | {gap} | {failed} / {stale} / {made} | {} | {announced} |",
            rows[0].what,
            ms(slowest)
        );
    }
    let failovers: Vec<(Duration, Duration)> =
        all.iter().flatten().filter_map(|p| p.failover).collect();
    let stale_after: Vec<Duration> = all
        .iter()
        .flatten()
        .filter_map(|p| p.cache_stale_after)
        .collect();
    println!();
    println!(
        "Drill 6: the copy in use killed 1.5 s after quorum was lost: on the other copy after {} median ({} worst) through range reads, {} ({} worst) through the watch cache; the watch cache said stale {} median ({} worst) after the fault",
        ms_fine(median(failovers.iter().map(|f| f.0).collect())),
        ms_fine(failovers.iter().map(|f| f.0).max().unwrap_or_default()),
        ms_fine(median(failovers.iter().map(|f| f.1).collect())),
        ms_fine(failovers.iter().map(|f| f.1).max().unwrap_or_default()),
        ms(median(stale_after.clone())),
        ms(stale_after.iter().copied().max().unwrap_or_default())
    );
}
