//! The etcd catalog and publisher against a real `etcd` (Debian's `etcd-server`), started by
//! each test on free ports of 127.0.0.1 in a temporary directory and killed on drop (the
//! test kit's `etcd::EtcdServer`). Servers
//! are real TCP listeners on 127.0.0.1; the copies that must die by `kill -9` run in child
//! processes (this test binary re-executed), so their leases really stop being renewed.
//!
//! Waits are on the wall clock because etcd is a real external process (its leases expire
//! on its own clock); each is bounded and generous.
//!
//! `cargo test -p persistent-connection --features etcd --test etcd`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher};
use persistent_connection::catalog::{Catalog, CatalogError, Pick};
use persistent_connection::core::Jitter;
use persistent_connection::{Closable, Error, Event, IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::etcd::{EtcdServer, free_ports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Pc = PersistentConnection<SocketAddr, TcpConnection, IoError>;

/// Hang guard on every wait.
const GUARD: Duration = Duration::from_secs(20);
const PREFIX: &str = "/services/echo/";
const TTL: Duration = Duration::from_secs(1);

// ---- the child publisher: a real echo server in its own process ----------------------

const CHILD_ENV: &str = "PC_ETCD_CHILD_PUBLISHER";

/// The child's body: echo server on 127.0.0.1, published under a key with a lease; on end
/// of stdin it withdraws and exits. Returns at once in an ordinary test run.
#[test]
fn etcd_child_publisher_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let endpoint = parts.next().expect("endpoint").to_owned();
    let key = parts.next().expect("key").to_owned();
    let ttl_ms: u64 = parts.next().expect("ttl").parse().expect("ttl ms");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let server = EchoServer::start().await;
        let publisher = EtcdPublisher::publish(
            [&endpoint],
            &key,
            server.addr,
            Duration::from_millis(ttl_ms),
        )
        .await
        .expect("publish");
        println!("PC_ETCD_CHILD_READY {}", server.addr);
        std::io::stdout().flush().expect("flush");
        // Wait for the parent to close stdin (or die).
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().lock().read_to_end(&mut sink);
        })
        .await
        .expect("stdin");
        publisher.withdraw().await.expect("withdraw");
    });
    std::process::exit(0);
}

/// A published echo server in a child process.
struct ChildPublisher {
    child: Option<(Child, ChildStdin)>,
    addr: SocketAddr,
}

impl ChildPublisher {
    fn start(endpoint: &str, key: &str, ttl: Duration) -> ChildPublisher {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args([
                "etcd_child_publisher_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{endpoint}|{key}|{}", ttl.as_millis()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child publisher");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let addr = BufReader::new(stdout)
            .lines()
            .find_map(|line| {
                let line = line.ok()?;
                let (_, addr) = line.split_once("PC_ETCD_CHILD_READY ")?;
                addr.trim().parse::<SocketAddr>().ok()
            })
            .expect("the child publisher did not get ready");
        ChildPublisher {
            child: Some((child, stdin)),
            addr,
        }
    }

    /// `kill -9`: the lease is no longer renewed.
    fn kill9(&mut self) {
        if let Some((mut child, _stdin)) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// Closes its stdin: it withdraws (revokes its lease) and exits.
    fn stop_cleanly(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let status = child.wait().expect("reap");
            assert!(status.success(), "the child publisher failed: {status}");
        }
    }
}

impl Drop for ChildPublisher {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---- helpers ---------------------------------------------------------------------------

/// An in-process echo server on 127.0.0.1 whose connections can be dropped on demand.
struct EchoServer {
    addr: SocketAddr,
    kick: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> EchoServer {
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
        EchoServer { addr, kick, task }
    }

    /// Closes every open connection; the listener stays.
    fn drop_connections(&self) {
        self.kick.notify_waiters();
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
        self.kick.notify_waiters();
    }
}

/// A port of 127.0.0.1 where nothing listens.
fn refused_addr() -> SocketAddr {
    let (port, _) = free_ports();
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Event log as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, needle: &str) -> usize {
        self.entries().iter().filter(|e| e.contains(needle)).count()
    }
}

fn describe(e: &Event<SocketAddr, TcpConnection, IoError>) -> String {
    match e {
        Event::AttemptingToConnect => "AttemptingToConnect".into(),
        Event::ObtainedAddress(a) => format!("ObtainedAddress({a})"),
        Event::FailedToConnect(Error::User(e)) => format!("FailedToConnect({e})"),
        Event::FailedToConnect(e) => format!("FailedToConnect({e:?})"),
        Event::Connected(c) => format!("Connected({})", c.peer_addr()),
        Event::Disconnected => "Disconnected".into(),
        Event::HandedOver { connection, .. } => format!("HandedOver({})", connection.peer_addr()),
    }
}

fn connect_through(catalog: EtcdCatalog, pick: Pick) -> (Pc, Log) {
    let log = Log::default();
    let l = log.clone();
    let pc = PersistentConnection::builder(
        "echo",
        catalog.get_address::<IoError>(pick),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_millis(50))
            .with_jitter(Jitter::NonRandom),
    )
    .seed(12)
    .on_event(move |e| {
        l.0.lock().unwrap().push(describe(&e));
        async {}
    })
    .build();
    (pc, log)
}

/// Polls `f` every 20 ms until it is true; panics after [`GUARD`].
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lists the catalog until `expect` holds of the listing; returns it.
async fn wait_for_listing(
    catalog: &EtcdCatalog,
    what: &str,
    expect: impl Fn(&Result<Vec<SocketAddr>, CatalogError>) -> bool,
) -> Result<Vec<SocketAddr>, CatalogError> {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let listed = catalog.lookup().await;
        if expect(&listed) {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}; last listing {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_etcd() -> EtcdServer {
    tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd")
}

/// A running etcd with one echo server published under `{PREFIX}a`.
struct OneCopy {
    etcd: EtcdServer,
    ep: String,
    server: EchoServer,
    publisher: EtcdPublisher,
}

impl OneCopy {
    async fn start() -> OneCopy {
        let etcd = start_etcd().await;
        let ep = etcd.endpoint();
        let server = EchoServer::start().await;
        let publisher = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), server.addr, TTL)
            .await
            .unwrap();
        OneCopy {
            etcd,
            ep,
            server,
            publisher,
        }
    }
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---- tests -------------------------------------------------------------------------------

#[tokio::test]
async fn lookup_lists_every_published_copy_in_key_order_and_a_withdrawn_one_at_once() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let servers = [
        EchoServer::start().await,
        EchoServer::start().await,
        EchoServer::start().await,
    ];
    let mut publishers = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let key = format!("{PREFIX}copy-{i}");
        publishers.push(
            EtcdPublisher::publish([&ep], key, s.addr, TTL)
                .await
                .unwrap(),
        );
    }
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    let all: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    assert_eq!(catalog.lookup().await.unwrap(), all);

    // A clean stop revokes the lease: the next lookup no longer lists it.
    let middle = publishers.remove(1);
    assert_eq!(middle.key(), format!("{PREFIX}copy-1"));
    let printed = format!("{middle:?}");
    assert!(
        printed.starts_with("EtcdPublisher { key: \"/services/echo/copy-1\", lease: ")
            && printed.contains(&middle.lease_id().to_string()),
        "{printed}"
    );
    middle.withdraw().await.unwrap();
    assert_eq!(catalog.lookup().await.unwrap(), [all[0], all[2]]);

    // Dropping a publisher inside the runtime revokes too (in the background).
    drop(publishers.remove(0));
    let _listed = wait_for_listing(&catalog, "the dropped copy is gone", |l| {
        l.as_ref().is_ok_and(|l| l == &[all[2]])
    })
    .await;

    // Keys outside the prefix are not listed.
    let other = EtcdPublisher::publish([&ep], "/services/other/x", all[0], TTL)
        .await
        .unwrap();
    assert_eq!(catalog.lookup().await.unwrap(), [all[2]]);
    other.withdraw().await.unwrap();
}

#[tokio::test]
async fn a_killed_copy_disappears_after_its_ttl_and_a_cleanly_stopped_one_at_once() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let (killed, stopped) = tokio::task::spawn_blocking({
        let ep = ep.clone();
        move || {
            (
                ChildPublisher::start(&ep, &format!("{PREFIX}a"), TTL),
                ChildPublisher::start(&ep, &format!("{PREFIX}b"), TTL),
            )
        }
    })
    .await
    .unwrap();
    let (mut killed, mut stopped) = (killed, stopped);
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    assert_eq!(catalog.lookup().await.unwrap(), [killed.addr, stopped.addr]);

    // Clean stop: revoked before the process exits, so gone right after.
    let stopped_addr = stopped.addr;
    tokio::task::spawn_blocking(move || stopped.stop_cleanly())
        .await
        .unwrap();
    assert_eq!(catalog.lookup().await.unwrap(), [killed.addr]);

    // kill -9: still listed right after (the lease is alive) …
    let killed_addr = killed.addr;
    killed.kill9();
    let at_kill = tokio::time::Instant::now();
    assert_eq!(catalog.lookup().await.unwrap(), [killed_addr]);
    // … and gone once its TTL has run out.
    let listed =
        wait_for_listing(&catalog, "the killed copy's lease expires", |l| l.is_err()).await;
    let gone_after = at_kill.elapsed();
    assert!(
        matches!(&listed, Err(CatalogError::Empty { catalog }) if catalog.contains(PREFIX)),
        "{listed:?}"
    );
    assert!(
        gone_after >= Duration::from_millis(500),
        "a killed copy must last until its TTL, gone after {gone_after:?}"
    );
    assert_ne!(stopped_addr, killed_addr);
}

#[tokio::test]
async fn a_persistent_connection_fails_over_between_published_copies() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = EchoServer::start().await;
    let b = EchoServer::start().await;
    // The first key lists a copy that died without withdrawing (its address refuses).
    let dead = refused_addr();
    let _pa = EtcdPublisher::publish([&ep], format!("{PREFIX}0-dead"), dead, TTL)
        .await
        .unwrap();
    let _pb = EtcdPublisher::publish([&ep], format!("{PREFIX}1-a"), a.addr, TTL)
        .await
        .unwrap();
    let pb = EtcdPublisher::publish([&ep], format!("{PREFIX}2-b"), b.addr, TTL)
        .await
        .unwrap();
    let (pc, log) = connect_through(EtcdCatalog::new([&ep], PREFIX), Pick::InOrder);

    // In order: the dead copy is refused, and the next attempt goes to another copy.
    let first = guard("connected to a", pc.connected()).await;
    assert_eq!(first.peer_addr(), a.addr);
    wait_until("Connected is logged", || log.count("Connected") == 1).await;
    assert_eq!(
        &log.entries()[..5],
        [
            "AttemptingToConnect".to_owned(),
            format!("ObtainedAddress({dead})"),
            log.entries()[2].clone(),
            format!("ObtainedAddress({})", a.addr),
            format!("Connected({})", a.addr),
        ]
    );
    assert!(
        log.entries()[2].starts_with("FailedToConnect("),
        "{:?}",
        log.entries()
    );

    // a's connections drop: the picker moves on to b (not tried yet in this sweep).
    a.drop_connections();
    guard("first closed", first.close_finished()).await;
    let second = guard("connected to b", pc.connected()).await;
    assert_eq!(second.peer_addr(), b.addr);
    second.send(b"ping").await.unwrap();
    assert_eq!(second.recv().await.unwrap(), b"ping");

    // b stops cleanly and its connections drop: a new sweep, skipping b: dead, then a.
    pb.withdraw().await.unwrap();
    b.drop_connections();
    guard("second closed", second.close_finished()).await;
    let third = guard("connected to a again", pc.connected()).await;
    assert_eq!(third.peer_addr(), a.addr);
    pc.close().await;
}

#[tokio::test]
async fn etcd_not_running_at_start_is_a_failed_attempt_until_it_starts() {
    let (client_port, peer_port) = free_ports();
    let ep = format!("http://127.0.0.1:{client_port}");
    let catalog = EtcdCatalog::new([&ep], PREFIX).lookup_timeout(Duration::from_millis(500));
    let (pc, log) = connect_through(catalog, Pick::InOrder);

    // Lookups fail, each a failed attempt, announced once while the failure repeats.
    wait_until("two lookups have failed", || {
        log.count("ObtainedAddress") == 0 && log.entries().len() >= 2
    })
    .await;
    let failure = pc.connected_or_failed_to_connect().await.unwrap_err();
    let text = format!("{failure:?}");
    assert!(text.contains("etcd prefix"), "{text}");
    println!("lookup failure while etcd is down: {text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.count("FailedToConnect"), 1, "{:?}", log.entries());
    assert!(!pc.is_closed());

    // etcd comes up and a server publishes itself: the connection is made.
    let etcd = tokio::task::spawn_blocking(move || EtcdServer::start_on(client_port, peer_port))
        .await
        .unwrap();
    let server = EchoServer::start().await;
    let _p = EtcdPublisher::publish([etcd.endpoint()], format!("{PREFIX}a"), server.addr, TTL)
        .await
        .unwrap();
    let conn = guard("connected once etcd is up", pc.connected()).await;
    assert_eq!(conn.peer_addr(), server.addr);
    pc.close().await;
}

#[tokio::test]
async fn etcd_killed_mid_run_leaves_the_connection_up_and_lookups_recover_when_it_is_back() {
    let OneCopy {
        mut etcd,
        ep,
        server,
        publisher,
    } = OneCopy::start().await;
    let catalog = EtcdCatalog::new([&ep], PREFIX).lookup_timeout(Duration::from_millis(500));
    let (pc, log) = connect_through(catalog.clone(), Pick::InOrder);
    let conn = guard("connected", pc.connected()).await;

    // etcd dies: the established connection is not affected.
    etcd.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!conn.is_closed());
    conn.send(b"still here").await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), b"still here");

    // The connection drops: the catalog fails static. Its first lookup finds etcd down and
    // serves the last list etcd vouched for, so the client reconnects to the server while
    // etcd is still down; the catalog says it is stale.
    let before = log.entries().len();
    server.drop_connections();
    guard("closed", conn.close_finished()).await;
    let again = guard("reconnected while etcd is down", pc.connected()).await;
    assert_eq!(again.peer_addr(), server.addr);
    assert!(!etcd.is_running());
    assert!(catalog.staleness().is_some());
    let after: Vec<String> = log.entries()[before..].to_vec();
    assert_eq!(
        after
            .iter()
            .filter(|e| e.starts_with("FailedToConnect"))
            .count(),
        0,
        "{after:?}"
    );

    // etcd is back (same data): the next lookup reads it, and the list is fresh again.
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    let _listed = wait_for_listing(&catalog, "etcd answers again", |l| {
        l.as_ref().is_ok_and(|l| l == &[server.addr])
    })
    .await;
    wait_until("the catalog is fresh again", || {
        catalog.staleness().is_none()
    })
    .await;
    pc.close().await;
    publisher.withdraw().await.unwrap();
}

#[tokio::test]
async fn an_empty_prefix_is_a_clear_failure() {
    let etcd = start_etcd().await;
    let catalog = EtcdCatalog::new([etcd.endpoint()], "/nothing/here/");
    let e = catalog.lookup().await.unwrap_err();
    assert_eq!(
        e,
        CatalogError::Empty {
            catalog: format!("etcd prefix \"/nothing/here/\" at {}", etcd.endpoint())
        }
    );
    let (pc, _log) = connect_through(catalog, Pick::InOrder);
    let failure = pc.connected_or_failed_to_connect().await.unwrap_err();
    assert!(
        format!("{failure:?}").contains("no address listed in etcd prefix"),
        "{failure:?}"
    );
    pc.close().await;
}

#[tokio::test]
async fn a_malformed_value_is_an_error_naming_its_key_and_is_skipped_beside_good_ones() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    client
        .put(format!("{PREFIX}bad"), "not-an-address", None)
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    let e = catalog.lookup().await.unwrap_err();
    match &e {
        CatalogError::Malformed { key, value, .. } => {
            assert_eq!(key, &format!("{PREFIX}bad"));
            assert_eq!(value, "not-an-address");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert!(e.to_string().contains("/services/echo/bad"), "{e}");
    assert_eq!(IoError::from(e).kind(), std::io::ErrorKind::InvalidData);

    // Beside a good value, the bad one is skipped.
    let server = EchoServer::start().await;
    client
        .put(format!("{PREFIX}good"), server.addr.to_string(), None)
        .await
        .unwrap();
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);
    let (pc, _log) = connect_through(catalog, Pick::InOrder);
    let conn = guard("connected", pc.connected()).await;
    assert_eq!(conn.peer_addr(), server.addr);
    pc.close().await;
}

#[tokio::test]
async fn a_lease_expiring_while_connected_leaves_the_connection_up() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let server = EchoServer::start().await;
    // A lease nobody renews.
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    let lease = client.lease_grant(1, None).await.unwrap().id();
    client
        .put(
            format!("{PREFIX}a"),
            server.addr.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    let (pc, log) = connect_through(catalog.clone(), Pick::InOrder);
    let conn = guard("connected", pc.connected()).await;

    let _listed = wait_for_listing(&catalog, "the lease expires", |l| l.is_err()).await;
    // The catalog no longer lists the server, but the connection is untouched.
    assert!(!conn.is_closed());
    assert_eq!(
        pc.current_connection().map(|c| c.local_addr()),
        Some(conn.local_addr())
    );
    conn.send(b"hello").await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), b"hello");
    assert_eq!(log.count("Disconnected"), 0);
    pc.close().await;
}

#[tokio::test]
async fn a_publisher_publishes_again_when_its_lease_is_revoked_behind_its_back() {
    let OneCopy {
        etcd: _etcd,
        ep,
        server,
        publisher,
    } = OneCopy::start().await;
    let first_lease = publisher.lease_id();
    // Revoke once the renewal stream is open and has renewed (every third of the TTL), so
    // the publisher learns of it from a renewal answered with a TTL of 0 — not only from a
    // stream that fails to open, which a revocation racing the first renewal would test.
    tokio::time::sleep(TTL * 2 / 3 + Duration::from_millis(100)).await;
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    client.lease_revoke(first_lease).await.unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    assert!(catalog.lookup().await.is_err());
    let _listed = wait_for_listing(&catalog, "the publisher registers again", |l| {
        l.as_ref().is_ok_and(|l| l == &[server.addr])
    })
    .await;
    assert_ne!(publisher.lease_id(), first_lease);
    publisher.withdraw().await.unwrap();
    assert!(catalog.lookup().await.is_err());
}

#[tokio::test]
async fn a_hung_etcd_is_a_lookup_timeout_not_a_hang() {
    let OneCopy {
        etcd,
        ep,
        server,
        publisher,
    } = OneCopy::start().await;
    // Without fail static (a list etcd has not just vouched for is never served), so that
    // the lookup's own failure shows.
    let catalog = EtcdCatalog::new([&ep], PREFIX)
        .lookup_timeout(Duration::from_millis(300))
        .max_staleness(Duration::ZERO);
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);

    // SIGSTOP: etcd's socket still accepts (the kernel queues) but nothing answers.
    etcd.pause();
    let started = tokio::time::Instant::now();
    let e = guard("lookup returns", catalog.lookup()).await.unwrap_err();
    // The one member is named (issue 28 item 11).
    assert_eq!(
        e,
        CatalogError::TimedOut {
            catalog: format!("etcd prefix {PREFIX:?} at {ep}"),
            after: Duration::from_millis(300)
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    etcd.resume();
    let _listed = wait_for_listing(&catalog, "lookups work again", |l| l.is_ok()).await;
    publisher.withdraw().await.unwrap();
}

#[tokio::test]
async fn a_watch_cache_follows_puts_and_deletes() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = EchoServer::start().await;
    let b = EchoServer::start().await;
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX).watch_cache();
    assert!(!catalog.watch_cache_in_sync());
    // The first lookup reads etcd and starts the watch.
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;

    let pb = EtcdPublisher::publish([&ep], format!("{PREFIX}b"), b.addr, TTL)
        .await
        .unwrap();
    let _listed = wait_for_listing(&catalog, "the cache sees b", |l| {
        l.as_ref().is_ok_and(|l| l == &[a.addr, b.addr])
    })
    .await;
    pa.withdraw().await.unwrap();
    let _listed = wait_for_listing(&catalog, "the cache sees a withdrawn", |l| {
        l.as_ref().is_ok_and(|l| l == &[b.addr])
    })
    .await;
    assert!(catalog.watch_cache_in_sync());

    // A malformed value reaches the cache as it would a range read.
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    pb.withdraw().await.unwrap();
    client
        .put(format!("{PREFIX}bad"), "nonsense", None)
        .await
        .unwrap();
    let listed = wait_for_listing(&catalog, "the cache sees the bad value", |l| {
        matches!(l, Err(CatalogError::Malformed { .. }))
    })
    .await;
    assert!(format!("{listed:?}").contains("/services/echo/bad"));
}

/// etcd killed: the watch breaks, and the watch cache fails static: lookups go on serving
/// the last list (at once, not after a request timeout), the catalog says how stale it is,
/// and once the list is older than `max_staleness` lookups fail. etcd back: in sync and
/// fresh again.
#[tokio::test]
async fn a_watch_cache_serves_its_last_list_while_etcd_is_down_for_at_most_max_staleness() {
    let mut etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = EchoServer::start().await;
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    let bound = Duration::from_millis(1500);
    let catalog = EtcdCatalog::new([&ep], PREFIX)
        .lookup_timeout(Duration::from_millis(300))
        .max_staleness(bound)
        .watch_cache();
    assert_eq!(catalog.max_staleness_bound(), bound);
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;
    assert_eq!(catalog.staleness(), None);

    etcd.stop();
    wait_until("the watch breaks", || !catalog.watch_cache_in_sync()).await;
    let broke = tokio::time::Instant::now();
    assert!(catalog.staleness().is_some());
    // The last list, served at once while it is younger than the bound.
    let mut served = 0;
    while catalog.staleness().is_some_and(|s| s < bound / 2) {
        let started = tokio::time::Instant::now();
        assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
        // Not after waiting for etcd, which takes the 300 ms request timeout.
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "a stale answer is local: {:?}",
            started.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 0);
    // Older than the bound: lookups read etcd, and fail.
    let _listed =
        wait_for_listing(&catalog, "lookups fail past max_staleness", |l| l.is_err()).await;
    assert!(
        catalog.staleness().is_some_and(|s| s >= bound),
        "{:?} after the watch broke {:?} ago",
        catalog.staleness(),
        broke.elapsed()
    );

    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart();
        etcd
    })
    .await
    .unwrap();
    let _listed = wait_for_listing(&catalog, "lookups work again", |l| {
        l.as_ref().is_ok_and(|l| l == &[a.addr])
    })
    .await;
    wait_until("the cache is in sync again", || {
        catalog.watch_cache_in_sync()
    })
    .await;
    assert_eq!(catalog.staleness(), None);
    pa.withdraw().await.unwrap();
    drop(etcd);
}

/// `changed()` (issue 26 point 2): resolves when the listed set changes, from the catalog's
/// etcd watch (started by the first `changed()`, also without the watch cache): a copy
/// withdrawn (its lease revoked), a copy published, a lease that expires. It stays pending
/// while nothing changes. The time from the withdrawal to the wake-up is printed.
#[tokio::test]
async fn changed_resolves_when_a_copy_is_withdrawn_published_or_its_lease_expires() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = EchoServer::start().await;
    let b = EchoServer::start().await;
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    let _pb = EtcdPublisher::publish([&ep], format!("{PREFIX}b"), b.addr, TTL)
        .await
        .unwrap();
    // The default mode: lookups are range reads; changed() runs the watch beside them.
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    // The first list is a change (from nothing known).
    let first = catalog.changed();
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr, b.addr]);
    guard("changed() after the first list", first).await;
    let changed = catalog.changed();
    tokio::pin!(changed);
    // Nothing changes: it stays pending (its first poll starts the watch, which syncs to
    // the list the lookup read).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut changed)
            .await
            .is_err(),
        "changed() resolved while nothing changed"
    );
    assert!(catalog.watch_cache_in_sync(), "the watch runs");

    // The copy is withdrawn (its lease revoked): changed() resolves, the lookup agrees.
    let withdrawn = tokio::time::Instant::now();
    pa.withdraw().await.unwrap();
    guard("changed() after a withdrawal", &mut changed).await;
    println!(
        "withdrawn -> changed() resolved after {:?}",
        withdrawn.elapsed()
    );
    assert_eq!(catalog.lookup().await.unwrap(), [b.addr]);

    // A copy published under a lease nobody renews: resolves when it is listed, and again
    // when the lease expires.
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    let lease = client.lease_grant(1, None).await.unwrap().id();
    let published = catalog.changed();
    client
        .put(
            format!("{PREFIX}c"),
            a.addr.to_string(),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    guard("changed() after a put", published).await;
    assert_eq!(catalog.lookup().await.unwrap(), [b.addr, a.addr]);
    let expired = catalog.changed();
    guard("changed() after the lease expires", expired).await;
    assert_eq!(catalog.lookup().await.unwrap(), [b.addr]);

    // The same with the watch cache.
    let cached = EtcdCatalog::new([&ep], PREFIX).watch_cache();
    assert_eq!(cached.lookup().await.unwrap(), [b.addr]);
    wait_until("in sync", || cached.watch_cache_in_sync()).await;
    let changed = cached.changed();
    drop(_pb);
    guard("changed() after a dropped publisher", changed).await;
    assert!(matches!(
        cached.lookup().await,
        Err(CatalogError::Empty { .. })
    ));
}

/// A failed lookup says which catalog failed and why, down to the root cause, once: the
/// text is what users read in the `FailedToConnect` log line, and it must be the same on
/// every repeat so that R4 reports a repeated failure once.
#[tokio::test]
async fn a_lookup_failure_names_the_catalog_and_its_root_cause_once() {
    let (client_port, _) = free_ports();
    let catalog = EtcdCatalog::new([format!("http://127.0.0.1:{client_port}")], PREFIX)
        .lookup_timeout(Duration::from_secs(5));
    let first = catalog.lookup().await.unwrap_err();
    let CatalogError::Lookup {
        catalog: name,
        message,
    } = &first
    else {
        panic!("expected a lookup error, got {first:?}");
    };
    // With one member, the error names it (issue 28 item 11).
    assert_eq!(
        name,
        &format!("etcd prefix {PREFIX:?} at http://127.0.0.1:{client_port}")
    );
    assert_eq!(
        message.matches("Connection refused").count(),
        1,
        "the root cause, once: {message}"
    );
    assert!(message.len() > "Connection refused".len(), "{message}");
    let second = catalog.lookup().await.unwrap_err();
    assert_eq!(first, second, "a repeated failure reads the same (R4)");
}

/// What a catalog says about itself: its prefix, and its settings when printed.
#[test]
fn a_catalog_shows_its_prefix_and_settings() {
    let catalog = EtcdCatalog::new(["http://127.0.0.1:2379"], PREFIX)
        .lookup_timeout(Duration::from_millis(750))
        .watch_cache();
    assert_eq!(catalog.prefix(), PREFIX);
    let text = format!("{catalog:?}");
    for part in [
        "EtcdCatalog",
        "http://127.0.0.1:2379",
        "/services/echo/",
        "750ms",
        "watch_cache: true",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
}

/// The watch cache's task stops when the last clone of the catalog is dropped: no task (and
/// no watch on etcd) outlives the catalog.
#[tokio::test]
async fn the_watch_cache_task_stops_when_the_last_clone_is_dropped() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = alive();
    // Inside a runtime, the watch task starts with the catalog.
    let catalog = EtcdCatalog::new([&ep], PREFIX).watch_cache();
    let clone = catalog.clone();
    let _ = catalog.lookup().await; // starts the watch task
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;
    let with_task = alive();
    assert!(with_task > before, "{before} -> {with_task}");
    drop(catalog);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(clone.watch_cache_in_sync(), "a clone keeps the task");
    drop(clone);
    wait_until("the watch task and its client are gone", || {
        alive() <= before
    })
    .await;
}

/// The watch starts right after the revision the cache was read at: a history compacted up
/// to that revision (as etcd's auto-compaction does) must not keep the cache out of sync.
#[tokio::test]
async fn a_watch_cache_syncs_over_a_compacted_history() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = EchoServer::start().await;
    let mut client = etcd_client::Client::connect([&ep], None).await.unwrap();
    client
        .put(format!("{PREFIX}a"), a.addr.to_string(), None)
        .await
        .unwrap();
    let revision = client
        .put(format!("{PREFIX}a"), a.addr.to_string(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX).watch_cache();
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
    wait_until("the cache is in sync", || catalog.watch_cache_in_sync()).await;
    // And it stays in sync: a watch started inside the compacted history would be
    // cancelled by etcd, over and over, leaving lookups to range reads.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(catalog.watch_cache_in_sync(), "the cache fell out of sync");
    }
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
}

/// A healthy publisher keeps its one lease alive: over three TTLs its key is listed at every
/// look, under the same lease (renewals every third of the TTL, none treated as a loss).
#[tokio::test]
async fn a_publisher_keeps_its_key_and_its_lease_while_etcd_is_healthy() {
    let OneCopy {
        etcd: _etcd,
        ep,
        server,
        publisher,
    } = OneCopy::start().await;
    let lease = publisher.lease_id();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    let until = tokio::time::Instant::now() + 3 * TTL + TTL / 2;
    while tokio::time::Instant::now() < until {
        assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publisher.lease_id(), lease, "the lease was never replaced");
    publisher.withdraw().await.unwrap();
}

// ---- issue 20 point 3: the catalog as a new user meets it ---------------------------------

/// Keeps `(level, message and fields)` of every `tracing` event on this thread.
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
    /// A capture installed as this thread's subscriber until the guard drops (the tests'
    /// runtime is current-thread, so spawned tasks log into it too).
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
}

/// A prefix without its trailing slash lists only the keys of its own service, not those of
/// a service whose name starts the same (`/services/echo` is not `/services/echo-admin/`).
#[tokio::test]
async fn a_prefix_without_a_trailing_slash_lists_only_its_own_service() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let echo = EchoServer::start().await;
    let admin = EchoServer::start().await;
    let _pe = EtcdPublisher::publish([&ep], "/services/echo/a", echo.addr, TTL)
        .await
        .unwrap();
    let _pa = EtcdPublisher::publish([&ep], "/services/echo-admin/a", admin.addr, TTL)
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], "/services/echo");
    assert_eq!(catalog.prefix(), "/services/echo/");
    assert_eq!(catalog.lookup().await.unwrap(), [echo.addr]);
}

/// A publisher's failure says what failed: publishing (or withdrawing) a key, not a lookup.
#[tokio::test]
async fn a_publish_failure_says_publish_not_lookup() {
    let ep = format!("http://{}", refused_addr());
    let e = EtcdPublisher::publish([&ep], "/services/echo/a", refused_addr(), TTL)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("lookup"), "{text}");
    assert!(
        text.starts_with("etcd publish of key \"/services/echo/a\" failed: "),
        "{text}"
    );
    assert!(text.contains("Connection refused"), "{text}");
}

/// A withdraw that cannot reach etcd says it was a withdraw.
#[tokio::test]
async fn a_withdraw_failure_says_withdraw() {
    let OneCopy {
        mut etcd,
        ep: _,
        server: _server,
        publisher,
    } = OneCopy::start().await;
    etcd.stop();
    let e = publisher.withdraw().await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("etcd withdraw of key \"/services/echo/a\" "),
        "{text}"
    );
    assert!(!text.contains("lookup"), "{text}");
}

/// The builder's lookup timeout shorter than the catalog's: the builder cuts the lookup
/// short. The catalog notices, says so in the log naming itself and both settings, and
/// starts its client afresh (as its own timeout would have).
#[tokio::test]
async fn a_builder_timeout_below_the_catalogs_is_named_in_the_log() {
    let (capture, _guard) = Capture::install();
    let OneCopy {
        etcd,
        ep,
        server: _server,
        publisher: _publisher,
    } = OneCopy::start().await;
    let catalog = EtcdCatalog::new([&ep], PREFIX).lookup_timeout(Duration::from_secs(5));
    assert_eq!(catalog.lookup().await.unwrap().len(), 1);
    etcd.pause();
    let pc = PersistentConnection::builder(
        "echo",
        catalog.get_address::<IoError>(Pick::InOrder),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .lookup_timeout(Duration::from_millis(300))
    .retry_policy(Duration::from_millis(50))
    .build();
    let failure = guard("the builder's timeout", pc.connected_or_failed_to_connect())
        .await
        .unwrap_err();
    assert!(
        format!("{failure:?}").contains("LookupTimedOut"),
        "{failure:?}"
    );
    wait_until("the catalog says it was cut short", || {
        !capture
            .find(tracing::Level::WARN, "etcd prefix \"/services/echo/\"")
            .iter()
            .filter(|t| t.contains("lookup_timeout") && t.contains("5s"))
            .collect::<Vec<_>>()
            .is_empty()
    })
    .await;
    // Said once while it repeats (every attempt is cut short), not once per attempt.
    wait_until("several attempts", || pc.stats().attempts >= 4).await;
    assert_eq!(
        capture.find(tracing::Level::WARN, "lookup cancelled").len(),
        1
    );
    assert!(
        !capture
            .find(tracing::Level::DEBUG, "lookup cancelled")
            .is_empty()
    );
    etcd.resume();
    pc.close().await;
}

/// The watch cache syncs as soon as it is asked for inside a runtime, before any lookup.
#[tokio::test]
async fn a_watch_cache_syncs_before_the_first_lookup() {
    let OneCopy {
        etcd: _etcd,
        ep,
        server: _server,
        publisher: _publisher,
    } = OneCopy::start().await;
    let catalog = EtcdCatalog::new([&ep], PREFIX).watch_cache();
    wait_until("the cache is in sync without a lookup", || {
        catalog.watch_cache_in_sync()
    })
    .await;
}

/// The recommended error of a real client, `Keyed<RedisError, String>`, takes catalog
/// failures directly: `get_address::<Keyed<RedisError, String>>` with no wrapper closure,
/// the failure names the catalog, and a repeated one is announced once (R4, by its key).
#[tokio::test]
async fn the_recommended_keyed_error_takes_catalog_failures_directly() {
    type Failure = persistent_connection::Keyed<redis::RedisError, String>;
    let catalog = EtcdCatalog::new([format!("http://{}", refused_addr())], PREFIX)
        .lookup_timeout(Duration::from_millis(500));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f = failures.clone();
    let pc = PersistentConnection::builder(
        "redis",
        catalog.get_address::<Failure>(Pick::InOrder),
        |addr: SocketAddr, _cx| async move {
            TcpConnection::connect(addr).await.map_err(|e| {
                let e = redis::RedisError::from(std::io::Error::new(e.kind(), e.to_string()));
                Failure::new(e, |e| e.to_string())
            })
        },
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_millis(20))
            .with_jitter(Jitter::NonRandom),
    )
    .on_event(move |e| {
        if let Event::FailedToConnect(e) = &e {
            f.lock().unwrap().push(e.to_string());
        }
        async {}
    })
    .build();
    let failure = guard("a failed lookup", pc.connected_or_failed_to_connect())
        .await
        .unwrap_err();
    let text = format!("{failure:?}");
    assert!(text.contains("etcd prefix"), "{text}");
    wait_until("several attempts", || pc.stats().attempts >= 4).await;
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("etcd prefix"), "{failures:?}");
    pc.close().await;
}

/// A server that starts before etcd: `EtcdPublisher::start` keeps trying (its failure logged
/// once at warn while it repeats, not once per try) and publishes as soon as etcd is up.
#[tokio::test]
async fn a_started_publisher_keeps_trying_until_etcd_is_up() {
    let (capture, _guard) = Capture::install();
    let (client_port, peer_port) = free_ports();
    let ep = format!("http://127.0.0.1:{client_port}");
    let server = EchoServer::start().await;
    let options = EtcdOptions::new([&ep]).timeout(Duration::from_millis(300));
    let publisher = EtcdPublisher::start(options, format!("{PREFIX}a"), server.addr, TTL);
    wait_until("a failed try is logged", || {
        !capture
            .find(
                tracing::Level::WARN,
                "etcd publish of key \"/services/echo/a\"",
            )
            .is_empty()
    })
    .await;
    // Several tries (one every third of the 1 s TTL), still unpublished.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!publisher.is_published());
    assert_eq!(publisher.lease_id(), 0);
    let warned = capture
        .find(tracing::Level::WARN, "etcd publish of key")
        .len();
    let repeats = capture
        .find(tracing::Level::DEBUG, "etcd publish of key")
        .len();
    assert!(repeats >= 1, "the repeats go to debug");
    assert!(
        warned <= 2,
        "one warning while the failure repeats: {warned}"
    );

    let etcd = tokio::task::spawn_blocking(move || EtcdServer::start_on(client_port, peer_port))
        .await
        .unwrap();
    guard("published once etcd is up", publisher.wait_published()).await;
    assert!(publisher.is_published());
    let published = capture.find(tracing::Level::INFO, "published in etcd");
    assert!(
        published.iter().any(|t| !t.contains("failed_tries=0")),
        "{published:?}"
    );
    let catalog = EtcdCatalog::new([etcd.endpoint()], PREFIX);
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);
    publisher.withdraw().await.unwrap();
    assert!(matches!(
        catalog.lookup().await,
        Err(CatalogError::Empty { .. })
    ));
}

/// A cluster with authentication on: the catalog and the publisher log in with the user
/// and password of their options; without them, the lookup fails naming the catalog.
#[tokio::test]
async fn user_and_password_reach_a_cluster_with_authentication() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let mut root = etcd_client::Client::connect([&ep], None).await.unwrap();
    root.user_add("root", "root-pw", None).await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.auth_enable().await.unwrap();

    let server = EchoServer::start().await;
    let options = EtcdOptions::new([&ep]).user("root", "root-pw");
    let printed = format!("{options:?}");
    assert!(
        printed.contains("root") && !printed.contains("root-pw"),
        "{printed}"
    );
    let publisher =
        EtcdPublisher::publish_with(options.clone(), format!("{PREFIX}a"), server.addr, TTL)
            .await
            .unwrap();
    let catalog = EtcdCatalog::with_options(options, PREFIX);
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);

    let anonymous = EtcdCatalog::new([&ep], PREFIX).lookup().await.unwrap_err();
    assert!(
        matches!(&anonymous, CatalogError::Lookup { catalog, .. } if catalog.contains(PREFIX)),
        "{anonymous:?}"
    );
    let wrong = EtcdCatalog::with_options(EtcdOptions::new([&ep]).user("root", "nope"), PREFIX)
        .lookup()
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains("authentication failed"),
        "{wrong}"
    );
    publisher.withdraw().await.unwrap();
}

/// With several endpoints, a lookup goes on to the next member when one refuses or hangs
/// (each try within the timeout divided by the number of members); when every member
/// fails, one error lists each member's answer in endpoint order, the same on a repeat (R4).
#[tokio::test]
async fn a_lookup_goes_on_to_the_next_member_and_a_failure_of_all_lists_each() {
    let OneCopy {
        etcd: live,
        ep,
        server,
        publisher: _publisher,
    } = OneCopy::start().await;
    let hung = start_etcd().await;
    let refused = format!("http://{}", refused_addr());
    // (The "hung" etcd is another cluster, empty: only ever asked while it is paused.)
    let catalog = EtcdCatalog::new([&refused, &ep, &hung.endpoint()], PREFIX)
        .lookup_timeout(Duration::from_millis(1500));
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);

    // The member that answered is asked first: the refused one before it costs nothing now.
    hung.pause();
    let started = tokio::time::Instant::now();
    assert_eq!(catalog.lookup().await.unwrap(), [server.addr]);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );

    // A fresh catalog meets the refused and the hung member first: one try each.
    // (Without fail static: the failure of every member must show, not the last list.)
    let fresh = EtcdCatalog::new([&refused, &hung.endpoint(), &ep], PREFIX)
        .lookup_timeout(Duration::from_millis(1500))
        .max_staleness(Duration::ZERO);
    let started = tokio::time::Instant::now();
    assert_eq!(fresh.lookup().await.unwrap(), [server.addr]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(490) && took < Duration::from_millis(1490),
        "{took:?}"
    );

    // Every member down or hung: one error naming each, in endpoint order, stable.
    let mut live = live;
    live.stop();
    // (The first lookup may meet the killed member's open connection: a transport error.)
    let _ = fresh.lookup().await.unwrap_err();
    let first = fresh.lookup().await.unwrap_err();
    let CatalogError::Lookup { catalog, message } = &first else {
        panic!("expected a lookup error, got {first:?}");
    };
    assert_eq!(catalog, &format!("etcd prefix {PREFIX:?}"));
    let hung_ep = hung.endpoint();
    let at = |needle: &str| {
        message
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} missing from {message}"))
    };
    assert!(message.starts_with("no member answered ("), "{message}");
    assert!(
        at(&refused) < at(&hung_ep) && at(&hung_ep) < at(&ep),
        "{message}"
    );
    assert!(message.contains("timed out after 500ms"), "{message}");
    assert_eq!(
        message.matches("Connection refused").count(),
        2,
        "{message}"
    );
    assert_eq!(fresh.lookup().await.unwrap_err(), first, "stable (R4)");
    hung.resume();
}
