//! The etcd catalog fails static (issue 28 item 11): while etcd is unreachable or without
//! quorum, it keeps serving the last list etcd vouched for, so that a client whose copy
//! dies reaches another listed copy at once instead of waiting for etcd.
//!
//! Against real etcd processes on 127.0.0.1: a single member frozen with `SIGSTOP` (the
//! test kit's `etcd::EtcdServer`), and a three-member cluster with two members killed (a
//! launcher below). The copies are in-process echo servers; "the copy in use dies" is its
//! listener closed and its connections dropped. What is asserted is behaviour: the client
//! reached the other listed copy *while etcd was still stopped*. The time it took is
//! measured on the wall clock and printed (`--nocapture`), not asserted.
//!
//! `cargo test -p persistent-connection --all-features --test etcd_static -- --nocapture`

#![cfg(feature = "etcd")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher};
use persistent_connection::catalog::{Catalog, Pick};
use persistent_connection::core::Jitter;
use persistent_connection::{Closable, IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::etcd::EtcdServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Pc = PersistentConnection<SocketAddr, TcpConnection, IoError>;

/// Hang guard on every wait.
const GUARD: Duration = Duration::from_secs(20);
const PREFIX: &str = "/services/echo/";
/// Long enough that no lease expires during the outages below.
const TTL: Duration = Duration::from_secs(10);
/// The catalog's request timeout: the watch cache is vouched for every half of it.
const ETCD_TIMEOUT: Duration = Duration::from_millis(500);
/// How long etcd stays unreachable (frozen, or without quorum) after the copy dies.
const OUTAGE: Duration = Duration::from_secs(5);

// ---- copies ------------------------------------------------------------------------------

/// An in-process echo server on 127.0.0.1 that can die: its listener closed and its
/// connections dropped.
struct Copy {
    addr: SocketAddr,
    kick: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Copy {
    async fn start() -> Copy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let kick = Arc::new(Notify::new());
        let k = kick.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let k = k.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        tokio::select! {
                            n = stream.read(&mut buf) => match n {
                                Ok(0) | Err(_) => break,
                                Ok(n) => if stream.write_all(&buf[..n]).await.is_err() { break },
                            },
                            _ = k.notified() => break,
                        }
                    }
                });
            }
        });
        Copy { addr, kick, task }
    }

    /// The copy dies: new connects are refused, open connections closed.
    fn kill(&self) {
        self.task.abort();
        self.kick.notify_waiters();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- a three-member cluster on 127.0.0.1 ---------------------------------------------------

/// `n` ports free on 127.0.0.1 right now (all bound at once, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One member of [`Cluster`]; `kill -9` on drop.
struct Member {
    client_port: u16,
    child: Option<Child>,
}

/// Three etcd members on 127.0.0.1, each on its own client and peer port, data in a
/// temporary directory (in `/dev/shm` when there is one); every member killed and the
/// directory removed on drop.
struct Cluster {
    members: Vec<Member>,
    dir: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        let ports = free_ports(6);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("pc-etcd-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let initial: Vec<String> = (0..3)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial = initial.join(",");
        let members = (0..3)
            .map(|i| {
                let (client, peer) = (ports[2 * i], ports[2 * i + 1]);
                let log = std::fs::File::create(dir.join(format!("m{i}.log"))).unwrap();
                let child = Command::new("etcd")
                    .arg(format!("--name=m{i}"))
                    .arg(format!(
                        "--data-dir={}",
                        dir.join(format!("m{i}")).display()
                    ))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster={initial}"))
                    .arg("--initial-cluster-state=new")
                    .arg("--initial-cluster-token=etcd-static")
                    .arg("--heartbeat-interval=50")
                    .arg("--election-timeout=250")
                    .arg("--log-level=warn")
                    .env_remove("ETCDCTL_API")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("cannot run `etcd` ({e}): install Debian's etcd-server")
                    });
                Member {
                    client_port: client,
                    child: Some(child),
                }
            })
            .collect();
        let cluster = Cluster { members, dir };
        let deadline = Instant::now() + GUARD;
        while !cluster.members.iter().all(|m| healthy(m.client_port)) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// `kill -9` member `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /health` on a member's client port answers `"health":"true"` (it has a leader).
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

// ---- the log -----------------------------------------------------------------------------

/// Keeps `(level, message and fields)` of every `tracing` event on this thread (the tests'
/// runtime is current-thread, so spawned tasks log into it too).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<(tracing::Level, String)>>>);

struct Text(String);
impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let guard = tracing::subscriber::set_default(capture.clone());
        (capture, guard)
    }

    /// The events at `level` whose text contains `needle`.
    fn find(&self, level: tracing::Level, needle: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, t)| *l == level && t.contains(needle))
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// Every warning.
    fn warnings(&self) -> Vec<String> {
        self.find(tracing::Level::WARN, "")
    }
}

// ---- the client --------------------------------------------------------------------------

fn connect_through(catalog: EtcdCatalog) -> Pc {
    PersistentConnection::builder(
        "echo",
        catalog.get_address::<IoError>(Pick::InOrder),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    // Short, so that what the gap measures is the catalog, not the retry delay.
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_millis(10))
            .with_jitter(Jitter::NonRandom),
    )
    .build()
}

/// Polls `f` every 5 ms until it is true; panics after [`GUARD`].
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two copies `a` and `b` published under [`PREFIX`], and a client connected to `a`
/// through `catalog` (`a` is listed first: `Pick::InOrder`).
async fn connected_to_a(catalog: &EtcdCatalog, a: &Copy, b: &Copy) -> Pc {
    let listed = tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(l) = catalog.lookup().await
                && l.len() == 2
            {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the catalog lists both copies");
    assert_eq!(listed, [a.addr, b.addr]);
    let pc = connect_through(catalog.clone());
    let conn = tokio::time::timeout(GUARD, pc.connected())
        .await
        .expect("connected");
    assert_eq!(conn.peer_addr(), a.addr);
    // Older than the retry delay: R6 starts the next round at once when it closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    pc
}

/// The copy in use (`a`) dies while etcd is unreachable: does the client reach `b` before
/// `OUTAGE` has passed (etcd still unreachable)? Returns how long it took, if it did.
async fn failover_during_outage(pc: &Pc, a: &Copy, b: &Copy) -> Option<Duration> {
    let killed = Instant::now();
    a.kill();
    tokio::time::timeout(OUTAGE, async {
        loop {
            let conn = pc.connected().await;
            if conn.peer_addr() == b.addr {
                return killed.elapsed();
            }
            conn.close_finished().await;
        }
    })
    .await
    .ok()
}

async fn publish(ep: &[String], name: &str, copy: &Copy) -> EtcdPublisher {
    let options = EtcdOptions::new(ep).timeout(ETCD_TIMEOUT);
    EtcdPublisher::publish_with(options, format!("{PREFIX}{name}"), copy.addr, TTL)
        .await
        .unwrap()
}

// ---- tests -------------------------------------------------------------------------------

/// etcd frozen (`SIGSTOP`): the watch cache drops out of sync within about half a request
/// timeout (its check fails), and it keeps serving the last list: the client whose copy
/// dies during the freeze reaches the other listed copy while etcd is still frozen. The
/// outage is said once in the log (and its end once), and `staleness()` shows it.
#[tokio::test]
async fn a_frozen_etcd_still_lists_the_last_known_copies_from_the_watch_cache() {
    let (capture, _guard) = Capture::install();
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let ep = vec![etcd.endpoint()];
    let (a, b) = (Copy::start().await, Copy::start().await);
    let _pa = publish(&ep, "a", &a).await;
    let _pb = publish(&ep, "b", &b).await;
    let catalog = EtcdCatalog::new(&ep, PREFIX)
        .lookup_timeout(ETCD_TIMEOUT)
        .watch_cache();
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;
    let pc = connected_to_a(&catalog, &a, &b).await;
    assert_eq!(catalog.staleness(), None);

    etcd.pause();
    let frozen = Instant::now();
    // The cache's check fails: it is no longer vouched for, and says it is stale.
    wait_until("the cache is out of sync", || {
        !catalog.watch_cache_in_sync()
    })
    .await;
    println!(
        "watch cache out of sync {:?} into the freeze",
        frozen.elapsed()
    );
    assert!(catalog.staleness().is_some());
    let reached = failover_during_outage(&pc, &a, &b).await;
    // Let the watch try to resync a few times while etcd stays frozen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still_frozen = frozen.elapsed();
    etcd.resume();
    println!("frozen etcd, watch cache: copy in use killed -> connected to the other: {reached:?}");
    assert!(
        reached.is_some(),
        "the client did not reach the live listed copy while etcd was frozen"
    );
    wait_until("fresh again after the freeze", || {
        catalog.watch_cache_in_sync() && catalog.staleness().is_none()
    })
    .await;

    // Said once: one warning for the outage (not one per resync), which calls the watch a
    // watch, not a lookup; one line when etcd answers again.
    let warnings = capture.warnings();
    let outage: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("etcd cannot answer"))
        .collect();
    assert_eq!(outage.len(), 1, "frozen {still_frozen:?}: {warnings:#?}");
    assert!(outage[0].contains("the etcd watch broke"), "{}", outage[0]);
    assert!(!outage[0].contains("lookup"), "{}", outage[0]);
    assert!(
        !capture
            .find(tracing::Level::DEBUG, "etcd still cannot answer")
            .is_empty(),
        "the watch's later failures go to debug"
    );
    assert_eq!(
        capture
            .find(tracing::Level::INFO, "etcd answers again")
            .len(),
        1
    );
    pc.close().await;
}

/// etcd frozen, the catalog in its default mode (a range read per lookup): the first lookup
/// after the copy dies waits for its request timeout, then serves the last list; the
/// lookups after it serve it at once while a range read in the background looks for etcd.
#[tokio::test]
async fn a_frozen_etcd_still_lists_the_last_known_copies_from_range_reads() {
    let (capture, _guard) = Capture::install();
    let etcd = tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .unwrap();
    let ep = vec![etcd.endpoint()];
    let (a, b) = (Copy::start().await, Copy::start().await);
    let _pa = publish(&ep, "a", &a).await;
    let _pb = publish(&ep, "b", &b).await;
    let catalog = EtcdCatalog::new(&ep, PREFIX).lookup_timeout(ETCD_TIMEOUT);
    let pc = connected_to_a(&catalog, &a, &b).await;

    etcd.pause();
    let reached = failover_during_outage(&pc, &a, &b).await;
    assert!(catalog.staleness().is_some());
    // Later lookups are answered at once.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(catalog.lookup().await.unwrap(), [a.addr, b.addr]);
        // Not after waiting for etcd, which takes the request timeout.
        assert!(started.elapsed() < ETCD_TIMEOUT, "{:?}", started.elapsed());
        tokio::time::sleep(ETCD_TIMEOUT).await;
    }
    etcd.resume();
    println!("frozen etcd, range reads: copy in use killed -> connected to the other: {reached:?}");
    assert!(
        reached.is_some(),
        "the client did not reach the live listed copy while etcd was frozen"
    );
    wait_until("fresh again after the freeze", || {
        catalog.staleness().is_none()
    })
    .await;
    let outage = capture.find(tracing::Level::WARN, "etcd cannot answer");
    assert_eq!(outage.len(), 1, "{:#?}", capture.0.lock().unwrap());
    assert!(outage[0].contains("timed out"), "{}", outage[0]);
    pc.close().await;
}

/// A three-member cluster loses quorum (two members killed): the survivor answers "no
/// leader" to every request, the watch cache's check fails, and the catalog keeps serving
/// the last list: the client whose copy dies reaches the other listed copy while quorum is
/// still lost (a catalog that never listed anything fails meanwhile).
#[tokio::test]
async fn a_cluster_without_quorum_still_lists_the_last_known_copies() {
    let (capture, _guard) = Capture::install();
    let mut cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let ep = cluster.endpoints();
    let (a, b) = (Copy::start().await, Copy::start().await);
    let _pa = publish(&ep, "a", &a).await;
    let _pb = publish(&ep, "b", &b).await;
    let catalog = EtcdCatalog::new(&ep, PREFIX)
        .lookup_timeout(ETCD_TIMEOUT)
        .watch_cache();
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;
    let pc = connected_to_a(&catalog, &a, &b).await;

    cluster.kill(0);
    cluster.kill(1);
    let lost = Instant::now();
    wait_until("the cache is out of sync", || {
        !catalog.watch_cache_in_sync()
    })
    .await;
    println!(
        "watch cache out of sync {:?} after quorum was lost",
        lost.elapsed()
    );
    let reached = failover_during_outage(&pc, &a, &b).await;
    println!("quorum lost, watch cache: copy in use killed -> connected to the other: {reached:?}");
    // Quorum is lost indeed: a catalog that never listed anything has nothing to serve.
    let never = EtcdCatalog::new(&ep, PREFIX).lookup_timeout(ETCD_TIMEOUT);
    let e = never.lookup().await.unwrap_err();
    println!("a new catalog meanwhile: {e}");
    assert!(catalog.staleness().is_some());
    assert!(
        reached.is_some(),
        "the client did not reach the live listed copy while quorum was lost"
    );
    // Once for the catalog in use (the new catalog says it has nothing to serve).
    let outage = capture.find(tracing::Level::WARN, "serving the last list");
    assert_eq!(outage.len(), 1, "{outage:#?}");
    pc.close().await;
}
