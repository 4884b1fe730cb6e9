//! `EtcdPublisher::drain_until` (issue 26 point 4) against a real `etcd` on 127.0.0.1 (the
//! test kit's `etcd::EtcdServer`): the key is withdrawn at once (a watching client's
//! `changed()` resolves, its lookup no longer lists the copy), then the drain waits until
//! the server says it is idle, or until the grace period ends. The echo servers count their
//! open connections, which is what the server's idle condition watches.
//!
//! Waits are on the wall clock (etcd is a real process), each bounded by a guard.
//!
//! `cargo test -p persistent-connection --all-features --test etcd_drain -- --nocapture`

#![cfg(feature = "etcd")]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use persistent_connection::catalog::etcd::{Drained, EtcdCatalog, EtcdPublisher, PublishOperation};
use persistent_connection::catalog::{Catalog, Pick};
use persistent_connection::core::Jitter;
use persistent_connection::{Closable, IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::etcd::EtcdServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Hang guard on every wait.
const GUARD: Duration = Duration::from_secs(20);
const PREFIX: &str = "/services/echo/";
const TTL: Duration = Duration::from_secs(10);

/// An echo server on 127.0.0.1 that counts its open connections.
struct Server {
    addr: SocketAddr,
    open: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (count, open) = watch::channel(0usize);
        let count = Arc::new(count);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.send_modify(|n| *n += 1);
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    count.send_modify(|n| *n -= 1);
                });
            }
        });
        Server { addr, open, task }
    }

    /// The server's idle condition: resolves when no connection is open.
    fn idle(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut open = self.open.clone();
        async move {
            let _ = open.wait_for(|n| *n == 0).await;
        }
    }

    fn open(&self) -> usize {
        *self.open.borrow()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn start_etcd() -> EtcdServer {
    tokio::task::spawn_blocking(EtcdServer::start)
        .await
        .expect("start etcd")
}

/// A copy drained while a client is connected to it: the key goes at once (the client's
/// catalog sees the change and lists only the other copy); the client moves (here: it
/// closes its connection when `changed()` resolves, standing in for the make-before-break
/// handover that is being built) and reconnects to the other copy; the server's count of
/// open connections reaches 0 and the drain ends `Idle`, long before its grace.
#[tokio::test]
async fn a_drain_withdraws_at_once_and_ends_when_the_clients_have_moved() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let (a, b) = (Server::start().await, Server::start().await);
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    let _pb = EtcdPublisher::publish([&ep], format!("{PREFIX}b"), b.addr, TTL)
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr, b.addr]);
    let pc = PersistentConnection::builder(
        "echo",
        catalog.clone().get_address::<IoError>(Pick::InOrder),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_millis(10))
            .with_jitter(Jitter::NonRandom),
    )
    .build();
    let conn = guard("connected", pc.connected()).await;
    assert_eq!(conn.peer_addr(), a.addr);
    assert_eq!(a.open(), 1);
    // The catalog's watch runs and is in sync before the drain.
    let changed = catalog.changed();
    tokio::pin!(changed);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut changed)
            .await
            .is_err()
    );
    assert!(catalog.watch_cache_in_sync());

    let grace = Duration::from_secs(15);
    let started = Instant::now();
    let drain = tokio::spawn(pa.drain_until(grace, a.idle()));
    // The client learns of the withdrawal from its catalog's watch, and moves.
    guard("changed() after the withdrawal", &mut changed).await;
    let seen = started.elapsed();
    assert_eq!(catalog.lookup().await.unwrap(), [b.addr]);
    assert!(!drain.is_finished(), "the drain waits for the clients");
    conn.close().await;
    let moved = guard("the drain ends", drain).await.unwrap();
    let drained_after = started.elapsed();
    println!(
        "drain: the client's catalog saw the withdrawal after {seen:?}; the drain ended {moved:?} after {drained_after:?} (grace {grace:?})"
    );
    assert_eq!(moved, Ok(Drained::Idle));
    assert_eq!(a.open(), 0);
    let again = guard("connected to b", pc.connected()).await;
    assert_eq!(again.peer_addr(), b.addr);
    pc.close().await;
}

/// With clients that do not move, the drain ends when its grace does (the key is gone at
/// once all the same); `drain` is `drain_until` with no idle condition.
#[tokio::test]
async fn a_drain_ends_with_its_grace_when_the_clients_stay() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = Server::start().await;
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    let catalog = EtcdCatalog::new([&ep], PREFIX);
    assert_eq!(catalog.lookup().await.unwrap(), [a.addr]);
    let stays = tokio::net::TcpStream::connect(a.addr).await.unwrap();
    let grace = Duration::from_millis(300);
    let drained = guard("drain_until", pa.drain_until(grace, a.idle())).await;
    assert_eq!(drained, Ok(Drained::GraceEnded));
    assert!(catalog.lookup().await.is_err(), "withdrawn");
    assert_eq!(a.open(), 1);
    drop(stays);

    let b = Server::start().await;
    let pb = EtcdPublisher::publish([&ep], format!("{PREFIX}b"), b.addr, TTL)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        guard("drain", pb.drain(grace)).await,
        Ok(Drained::GraceEnded)
    );
    assert!(started.elapsed() >= grace);
    assert!(catalog.lookup().await.is_err(), "withdrawn");
}

/// A drain whose withdrawal cannot reach etcd fails at once, saying it was a withdraw (the
/// key then lasts until its TTL).
#[tokio::test]
async fn a_drain_that_cannot_withdraw_fails_without_waiting() {
    let mut etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let a = Server::start().await;
    let pa = EtcdPublisher::publish([&ep], format!("{PREFIX}a"), a.addr, TTL)
        .await
        .unwrap();
    etcd.stop();
    let e = guard("drain", pa.drain(Duration::from_secs(3600)))
        .await
        .unwrap_err();
    assert_eq!(e.operation(), PublishOperation::Withdraw);
}
