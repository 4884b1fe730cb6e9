//! The catalog connector (feature `connector`) under a real hyper client and real hyper
//! servers on 127.0.0.1: the `hyper_failover` example's drill (the test kit's `http`), shorter, and the
//! connector's own errors. Real sockets need the real clock: every wait is bounded by a
//! generous guard.

use std::net::SocketAddr;
use std::time::Duration;

use persistent_connection::catalog::connector::CatalogConnector;
use persistent_connection::catalog::{Pick, StaticList};
use persistent_connection_testkit::http as drill;
use tower::ServiceExt;

const GUARD: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

fn refused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// hyper's pool reconnects through the connector: each kill of the copy that answers is
/// followed by replies from the other copy, with the same static catalog throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hyper_client_fails_over_between_two_servers_through_the_catalog() {
    let settings = drill::Settings {
        kills: 3,
        every: Duration::from_millis(10),
        hold: Duration::from_millis(50),
        verbose: false,
    };
    let failovers = guard("the drill", drill::drill(settings))
        .await
        .expect("the drill ran");
    println!("{failovers:#?}");
    assert_eq!(failovers.len(), 3);
    for f in &failovers {
        assert_ne!(f.answered_by, f.killed, "{f:?}");
        assert!(["A", "B"].contains(&f.answered_by.as_str()), "{f:?}");
    }
    // The copies take turns: A, then B, then A again was killed.
    let killed: Vec<_> = failovers.iter().map(|f| f.killed).collect();
    assert_ne!(killed[0], killed[1]);
    assert_eq!(killed[0], killed[2]);
}

/// One call tries each listed copy at most once, skipping those that refuse; when none
/// accepts, the error says how many were tried and the last one's failure.
#[tokio::test]
async fn the_connector_skips_refusing_copies_and_says_when_none_accepts() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap();
    let (r1, r2) = (refused_addr(), refused_addr());

    let connector = CatalogConnector::new(StaticList::new([r1, r2, live]), Pick::InOrder);
    let uri: http::Uri = "http://service/".parse().unwrap();
    let stream = guard("connect", connector.clone().oneshot(uri.clone()))
        .await
        .unwrap();
    assert_eq!(stream.inner().peer_addr().unwrap(), live);

    let none = CatalogConnector::new(StaticList::new([r1, r2]), Pick::InOrder);
    let err = guard("connect", none.oneshot(uri.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        err.message()
            .starts_with("no listed copy accepted (2 tried); last: connect to "),
        "{err}"
    );

    let empty = CatalogConnector::new(StaticList::<SocketAddr>::new([]), Pick::InOrder);
    let err = guard("connect", empty.oneshot(uri)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(err.message(), "no address listed in a static list");
}

/// New connections go to the copies in turn (round robin), so a client's pool spreads
/// over the listed copies.
#[tokio::test]
async fn new_connections_take_turns_over_the_listed_copies() {
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    let connector = CatalogConnector::new(StaticList::new([a, b]), Pick::RoundRobin);
    let mut peers = Vec::new();
    for _ in 0..4 {
        let s = guard("connect", connector.connect()).await.unwrap();
        peers.push(s.inner().peer_addr().unwrap());
    }
    assert_eq!(peers, [a, b, a, b]);
}

/// An HTTP/2 server answering every request with its name; aborting its task closes the
/// listener and every connection it accepted.
async fn http2_server(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        name,
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

/// tonic's `Channel` (which reconnects by itself, to one endpoint) over the connector: when
/// the copy it talks to dies, its next connection goes to the other listed copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_channel_fails_over_through_the_catalog() {
    use http_body_util::BodyExt;
    use tonic::transport::Endpoint;

    let (a, server_a) = http2_server("A").await;
    let (b, server_b) = http2_server("B").await;
    let connector = CatalogConnector::new(StaticList::new([a, b]), Pick::InOrder);
    let channel = Endpoint::from_static("http://service").connect_with_connector_lazy(connector);
    let get = |channel: tonic::transport::Channel| async move {
        let request = http::Request::builder()
            .uri("http://service/")
            .body(tonic::body::Body::empty())
            .unwrap();
        let reply = channel.oneshot(request).await.map_err(|e| e.to_string())?;
        let body = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>(String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(
        guard("first", get(channel.clone())).await.as_deref(),
        Ok("A")
    );
    server_a.abort();
    let died = std::time::Instant::now();
    let mut failed = 0;
    let by = guard("a reply from the other copy", async {
        loop {
            match get(channel.clone()).await {
                Ok(by) if by == "B" => return by,
                Ok(_) => {}
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    println!(
        "tonic: B answered {:?} after A died ({failed} failed)",
        died.elapsed()
    );
    assert_eq!(by, "B");
    server_b.abort();
}

/// `{:?}` shows the copy timeout.
#[test]
fn the_connector_prints_its_copy_timeout() {
    let connector = CatalogConnector::new(StaticList::new([refused_addr()]), Pick::InOrder);
    assert!(
        format!("{connector:?}").starts_with("CatalogConnector { copy_timeout: 2s, "),
        "{connector:?}"
    );
    let connector = connector.copy_timeout(Duration::from_millis(250));
    assert!(
        format!("{connector:?}").starts_with("CatalogConnector { copy_timeout: 250ms, "),
        "{connector:?}"
    );
}
