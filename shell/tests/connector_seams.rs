//! The catalog connector's seams (issue 28 items 7 and 10, issue 27 point 3): concurrent
//! calls, the bound on the catalog lookup, and the socket options of what it connects.
//! Real sockets on 127.0.0.1 under Tokio's paused clock: a silent copy is a listener whose
//! accept queue is full (Linux drops the SYNs), so only the connector's own timeouts end a
//! connect to it, and those run on the virtual clock.
#![cfg(feature = "connector")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::servers::FullBacklog;
use persistent_connection::catalog::{Pick, StaticList};
use persistent_connection::connector::CatalogConnector;

/// Issue 28 item 7: two calls 50 ms apart (hyper opens one connection per concurrent
/// request) over a silent copy and a live one, listed in that order. The second call goes
/// to the live copy at once; the first, once its silent copy times out, must try the live
/// copy too, not the silent one again because the shared picker started a new sweep.
#[tokio::test(start_paused = true)]
async fn concurrent_calls_each_try_every_listed_copy() {
    let silent = FullBacklog::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    let connector = CatalogConnector::new(StaticList::new([silent.addr(), live]), Pick::InOrder);

    let first = tokio::spawn(connector.connect());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn(connector.connect());

    let second = second.await.unwrap().expect("the second call connects");
    assert_eq!(second.inner().peer_addr().unwrap(), live);
    let first = first
        .await
        .unwrap()
        .expect("the first call tries the live copy after the silent one");
    assert_eq!(first.inner().peer_addr().unwrap(), live);
    drop(silent);
}

/// One call still tries each listed copy at most once, whatever other calls do meanwhile:
/// with two silent copies, a call fails after trying both, once each.
#[tokio::test(start_paused = true)]
async fn a_call_tries_each_copy_once_even_while_others_pick() {
    let (a, b) = (FullBacklog::start(), FullBacklog::start());
    let connector = CatalogConnector::new(StaticList::new([a.addr(), b.addr()]), Pick::InOrder)
        .connect_timeout(Duration::from_millis(100));
    let calls: Vec<_> = (0..3).map(|_| tokio::spawn(connector.connect())).collect();
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(
            err.message()
                .starts_with("no listed copy accepted (2 tried); last: connect to "),
            "{err}"
        );
    }
    drop((a, b));
}

/// Spreading still goes through the shared picker: sequential calls over two live copies
/// take turns (round robin), as before.
#[tokio::test(start_paused = true)]
async fn sequential_calls_still_take_turns() {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b): (SocketAddr, SocketAddr) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let connector = CatalogConnector::new(StaticList::new([a, b]), Pick::RoundRobin);
    let mut peers = Vec::new();
    for _ in 0..4 {
        let s = connector.connect().await.unwrap();
        peers.push(s.inner().peer_addr().unwrap());
    }
    assert_eq!(peers, [a, b, a, b]);
}
