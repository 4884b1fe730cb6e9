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
use persistent_connection::catalog::connector::CatalogConnector;
use persistent_connection::catalog::{Pick, StaticList};

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
        .copy_timeout(Duration::from_millis(100));
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

/// The options of a connected socket, read back from the kernel: `TCP_NODELAY`, keepalive
/// (idle, interval, probes) when on, `TCP_USER_TIMEOUT` when set.
type ReadBack = (bool, Option<(Duration, Duration, u32)>, Option<Duration>);

fn read_back(stream: &tokio::net::TcpStream) -> ReadBack {
    let s = socket2::SockRef::from(stream);
    let keepalive = s.keepalive().unwrap().then(|| {
        (
            s.tcp_keepalive_time().unwrap(),
            s.tcp_keepalive_interval().unwrap(),
            s.tcp_keepalive_retries().unwrap(),
        )
    });
    (
        s.tcp_nodelay().unwrap(),
        keepalive,
        s.tcp_user_timeout().unwrap(),
    )
}

/// What `TcpOptions::apply` sets, read back from a plain connected stream.
async fn applied(addr: SocketAddr, options: &persistent_connection::conn::TcpOptions) -> ReadBack {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    options.apply(&stream).unwrap();
    read_back(&stream)
}

/// Issue 27 point 3: the connector's sockets get the crate's TCP defaults (keepalive and
/// `TCP_USER_TIMEOUT`, which notice a black-holed copy), not `TCP_NODELAY` alone.
#[tokio::test]
async fn the_connector_sets_the_crates_tcp_defaults() {
    use persistent_connection::conn::{DEFAULT_KEEPALIVE, TcpOptions};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connector = CatalogConnector::new(StaticList::new([addr]), Pick::InOrder);
    let stream = connector.connect().await.unwrap();
    let got = read_back(stream.inner());
    assert_eq!(got, applied(addr, &TcpOptions::new()).await);
    // Those defaults: keepalive on as DEFAULT_KEEPALIVE says, a user timeout set.
    let k = DEFAULT_KEEPALIVE;
    assert_eq!(got.1, Some((k.idle, k.interval, k.retries)), "{got:?}");
    assert!(got.2.is_some(), "no TCP_USER_TIMEOUT: {got:?}");
    assert!(got.0, "TCP_NODELAY");
}

/// Options given with `tcp_options` are the ones set, local address included.
#[tokio::test]
async fn the_connector_sets_the_options_it_is_given() {
    use persistent_connection::conn::{Keepalive, TcpOptions};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connector = CatalogConnector::new(StaticList::new([addr]), Pick::InOrder);
    let short = TcpOptions::new()
        .keepalive(Keepalive::new(
            Duration::from_secs(3),
            Duration::from_secs(1),
            2,
        ))
        .user_timeout(Duration::from_millis(1500))
        .local_addr("127.0.0.2:0".parse().unwrap());
    let off = TcpOptions::new()
        .nodelay(false)
        .no_keepalive()
        .user_timeout(Duration::ZERO);
    for options in [short, off] {
        let stream = connector
            .clone()
            .tcp_options(options)
            .connect()
            .await
            .unwrap();
        let got = read_back(stream.inner());
        assert_eq!(got, applied(addr, &options).await, "{options:?}");
        if let Some(local) = options.bound_local_addr() {
            assert_eq!(stream.inner().local_addr().unwrap().ip(), local.ip());
        }
    }
    let got = read_back(
        connector
            .tcp_options(short)
            .connect()
            .await
            .unwrap()
            .inner(),
    );
    assert_eq!(
        got,
        (
            true,
            Some((Duration::from_secs(3), Duration::from_secs(1), 2)),
            Some(Duration::from_millis(1500))
        )
    );
}

/// `{:?}` shows the copy and lookup timeouts and the TCP options.
#[test]
fn the_connector_prints_its_copy_timeout_and_options() {
    let connector = CatalogConnector::new(StaticList::<SocketAddr>::new([]), Pick::InOrder)
        .copy_timeout(Duration::from_millis(250));
    let printed = format!("{connector:?}");
    assert!(
        printed.starts_with(
            "CatalogConnector { copy_timeout: 250ms, lookup_timeout: 10s, tcp_options: TcpOptions {"
        ),
        "{printed}"
    );
}

/// A catalog whose lookup never answers (a registry that hangs).
struct Hung;

impl persistent_connection::catalog::Catalog for Hung {
    type Address = SocketAddr;
    fn lookup(
        &self,
    ) -> impl Future<Output = Result<Vec<SocketAddr>, persistent_connection::catalog::CatalogError>> + Send
    {
        std::future::pending()
    }
}

/// Issue 28 item 10: the catalog lookup itself is bounded, by default and as set; the error
/// is a timeout naming the catalog and the bound.
#[tokio::test(start_paused = true)]
async fn a_hung_catalog_lookup_times_out() {
    let never = Duration::from_secs(3600);
    let connector = CatalogConnector::new(Hung, Pick::InOrder);
    let err = tokio::time::timeout(never, connector.connect())
        .await
        .expect("the lookup is bounded by default")
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "lookup in the catalog Hung timed out after {:?}",
            persistent_connection::DEFAULT_LOOKUP_TIMEOUT
        )
    );

    let connector = connector.lookup_timeout(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(never, connector.connect())
        .await
        .expect("bounded as set")
        .unwrap_err();
    assert_eq!(
        err.message(),
        "lookup in the catalog Hung timed out after 300ms"
    );
    // The virtual clock moved by the bound exactly.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}
