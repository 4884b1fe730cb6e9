//! The static-list and DNS catalogs (no cargo feature needed): picking policies through a
//! real persistent connection over real TCP on 127.0.0.1, on Tokio's paused clock; DNS on
//! `localhost` only.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::catalog::{Catalog, CatalogError, Dns, IpFamily, Pick, StaticList};
use persistent_connection::core::Jitter;
use persistent_connection::{Closable, Error, Event, IoError, PersistentConnection, TcpConnection};
use tokio::net::TcpListener;

/// Hang guard (paused clock: it only fires if nothing else can happen).
const GUARD: Duration = Duration::from_secs(60);

type Log = Arc<Mutex<Vec<String>>>;

async fn listener() -> (SocketAddr, TcpListener) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    (l.local_addr().unwrap(), l)
}

/// A port of 127.0.0.1 where nothing listens (bound, then released).
async fn refused() -> SocketAddr {
    listener().await.0
}

/// Accepts and holds connections until the task is aborted.
fn serve(l: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    })
}

fn describe(e: &Event<SocketAddr, TcpConnection, IoError>) -> String {
    match e {
        Event::AttemptingToConnect => "Attempting".into(),
        Event::ObtainedAddress(a) => format!("Obtained({})", a.port()),
        Event::FailedToConnect(Error::User(e)) => format!("Failed({:?})", e.kind()),
        Event::FailedToConnect(e) => format!("Failed({e})"),
        Event::Connected(c) => format!("Connected({})", c.peer_addr().port()),
        Event::Disconnected => "Disconnected".into(),
        Event::HandedOver { connection, reason } => {
            format!(
                "HandedOver({}, {})",
                connection.peer_addr().port(),
                reason.as_str()
            )
        }
    }
}

fn build<K: Catalog<Address = SocketAddr>>(
    catalog: K,
    pick: Pick,
) -> (
    PersistentConnection<SocketAddr, TcpConnection, IoError>,
    Log,
) {
    let log: Log = Arc::default();
    let l = log.clone();
    let pc = PersistentConnection::builder(
        "catalog",
        catalog.get_address::<IoError>(pick),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_millis(100))
            .with_jitter(Jitter::NonRandom),
    )
    .seed(5)
    .on_event(move |e| {
        l.lock().unwrap().push(describe(&e));
        async {}
    })
    .build();
    (pc, log)
}

async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("hang guard")
}

#[tokio::test(start_paused = true)]
async fn a_refused_copy_is_followed_by_another_listed_copy_not_the_same_one() {
    let dead = refused().await;
    let (live, l) = listener().await;
    let _server = serve(l);
    let (pc, log) = build(StaticList::new([dead, live]), Pick::InOrder);
    let conn = guard(pc.connected()).await;
    assert_eq!(conn.peer_addr(), live);
    tokio::task::yield_now().await;
    assert_eq!(
        log.lock().unwrap()[..5],
        [
            "Attempting".to_owned(),
            format!("Obtained({})", dead.port()),
            "Failed(ConnectionRefused)".to_owned(),
            format!("Obtained({})", live.port()),
            format!("Connected({})", live.port()),
        ]
    );
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn every_copy_refusing_alternates_addresses_and_announces_the_failure_once() {
    let a = refused().await;
    let b = refused().await;
    let c = refused().await;
    let (pc, log) = build(StaticList::new([a, b, c]), Pick::RoundRobin);
    // Seven attempts: a b c a b c a.
    for _ in 0..7 {
        let outcome = guard(pc.connected_or_failed_to_connect()).await;
        assert!(outcome.is_err());
    }
    pc.close().await;
    let log = log.lock().unwrap().clone();
    let obtained: Vec<&str> = log
        .iter()
        .filter(|e| e.starts_with("Obtained"))
        .map(String::as_str)
        .collect();
    let port = |x: SocketAddr| format!("Obtained({})", x.port());
    let expect = [
        port(a),
        port(b),
        port(c),
        port(a),
        port(b),
        port(c),
        port(a),
    ];
    assert_eq!(obtained[..7], expect);
    // R4: TcpConnection's errors name the address, so consecutive refusals from different
    // copies differ and each is announced, right after its own address.
    for i in 0..7 {
        assert!(log[1 + 2 * i].starts_with("Obtained"), "{log:?}");
        assert_eq!(log[2 + 2 * i], "Failed(ConnectionRefused)", "{log:?}");
    }
    assert_eq!(log.iter().filter(|e| *e == "Attempting").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_single_listed_address_is_announced_once_per_round() {
    let dead = refused().await;
    let (pc, log) = build(StaticList::new([dead]), Pick::RoundRobin);
    for _ in 0..4 {
        assert!(guard(pc.connected_or_failed_to_connect()).await.is_err());
    }
    pc.close().await;
    let log = log.lock().unwrap().clone();
    // R3: the same address again in the round is not announced again.
    assert_eq!(
        log[..3],
        [
            "Attempting".to_owned(),
            format!("Obtained({})", dead.port()),
            "Failed(ConnectionRefused)".to_owned()
        ]
    );
    assert_eq!(log.iter().filter(|e| e.starts_with("Obtained")).count(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_a_disconnect_the_next_round_tries_another_copy_first() {
    let (a, la) = listener().await;
    let (b, lb) = listener().await;
    let server_a = serve(la);
    let _server_b = serve(lb);
    let (pc, _log) = build(StaticList::new([a, b]), Pick::InOrder);
    let first = guard(pc.connected()).await;
    assert_eq!(first.peer_addr(), a);
    // a dies (its held sockets are dropped): the next round starts with b, not a.
    server_a.abort();
    guard(first.close_finished()).await;
    let second = guard(pc.connected()).await;
    assert_eq!(second.peer_addr(), b);
    pc.close().await;
}

#[tokio::test(start_paused = true)]
async fn random_pick_with_one_seed_gives_the_same_order_of_copies() {
    async fn order(seed: u64, addrs: &[SocketAddr]) -> Vec<String> {
        let (pc, log) = build(StaticList::new(addrs.to_vec()), Pick::Random { seed });
        for _ in 0..6 {
            assert!(guard(pc.connected_or_failed_to_connect()).await.is_err());
        }
        pc.close().await;
        let log = log.lock().unwrap().clone();
        log.into_iter()
            .filter(|e| e.starts_with("Obtained"))
            .take(6)
            .collect()
    }
    let addrs = [refused().await, refused().await, refused().await];
    let one = order(99, &addrs).await;
    assert_eq!(one, order(99, &addrs).await);
    assert_eq!(one.len(), 6);
    let mut first_sweep = one[..3].to_vec();
    first_sweep.sort();
    first_sweep.dedup();
    assert_eq!(first_sweep.len(), 3, "each copy once per sweep: {one:?}");
}

#[tokio::test]
async fn an_empty_static_list_is_a_clear_failure() {
    let (pc, _log) = build(StaticList::<SocketAddr>::new([]), Pick::InOrder);
    let e = guard(pc.connected_or_failed_to_connect())
        .await
        .unwrap_err();
    let text = format!("{e:?}");
    assert!(
        text.contains("no address listed in a static list"),
        "{text}"
    );
    assert!(text.contains("NotFound"), "{text}");
    pc.close().await;
}

#[tokio::test]
async fn dns_resolves_localhost_before_every_attempt() {
    let dns = Dns::new("localhost", 4321);
    let all = dns.lookup().await.unwrap();
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|a| a.port() == 4321 && a.ip().is_loopback()),
        "{all:?}"
    );
    let v4 = Dns::new("localhost", 4321)
        .family(IpFamily::V4)
        .lookup()
        .await
        .unwrap();
    assert_eq!(v4, [SocketAddr::from((Ipv4Addr::LOCALHOST, 4321))]);
    if let Ok(v6) = Dns::new("localhost", 4321)
        .family(IpFamily::V6)
        .lookup()
        .await
    {
        assert!(v6.iter().all(SocketAddr::is_ipv6));
    }
}

#[tokio::test]
async fn a_dns_catalog_connects_to_the_named_host() {
    let (addr, l) = listener().await;
    let _server = serve(l);
    let dns = Dns::new("localhost", addr.port()).family(IpFamily::V4);
    let (pc, _log) = build(dns, Pick::RoundRobin);
    let conn = guard(pc.connected()).await;
    assert_eq!(conn.peer_addr(), addr);
    pc.close().await;
}

#[tokio::test]
async fn an_ip_literal_resolves_to_itself() {
    let listed = Dns::new("127.0.0.1", 80).lookup().await.unwrap();
    assert_eq!(listed, [SocketAddr::from((Ipv4Addr::LOCALHOST, 80))]);
}

#[tokio::test]
async fn a_family_with_no_record_is_an_empty_catalog() {
    // An IPv4 literal has no AAAA record.
    let e = Dns::new("127.0.0.1", 80)
        .family(IpFamily::V6)
        .lookup()
        .await
        .unwrap_err();
    assert_eq!(
        e,
        CatalogError::Empty {
            catalog: "DNS name \"127.0.0.1\"".into()
        }
    );
}
