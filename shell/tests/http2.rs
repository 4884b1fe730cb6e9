//! `conn::http2::Http2Connection` against real tonic and hyper servers on 127.0.0.1: tonic's
//! generated client calls through it; close fails the call in flight and releases the
//! socket; a server's graceful shutdown (`GOAWAY`) lets the call in flight finish and the
//! connection then drains and closes; the peer closing or resetting is noticed; an HTTP/2
//! PING keepalive closes a connection whose peer went silent (a proxy that stops
//! forwarding), and nothing else does; a persistent connection over it fails over between
//! two tonic servers.
//!
//! Waits that the code should end by itself are bounded by `HANG` (a generous guard, so a
//! regression fails instead of hanging), never asserted as timings.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use persistent_connection::catalog::{Catalog, Pick, StaticList};
use persistent_connection::conn::http2::{
    Http2Connection, Http2End, Http2Options, PingKeepalive, call_was_not_sent,
};
use persistent_connection::{Closable, IoError, PersistentConnection, TcpConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::body::Body as GrpcBody;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceExt};

/// A bound on waits that must end by themselves: only a hang reaches it.
const HANG: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {HANG:?}"),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Holds every request until `open` turns true, and counts the requests that arrived.
#[derive(Clone)]
struct Gated<S> {
    inner: S,
    open: watch::Receiver<bool>,
    arrived: Arc<watch::Sender<usize>>,
}

impl<S> Service<http::Request<GrpcBody>> for Gated<S>
where
    S: Service<http::Request<GrpcBody>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<GrpcBody>) -> Self::Future {
        let mut inner = self.inner.clone();
        let mut open = self.open.clone();
        self.arrived.send_modify(|n| *n += 1);
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            inner.ready().await?;
            inner.call(req).await
        })
    }
}

/// A tonic server with tonic-health's service behind a gate, on a free port of 127.0.0.1.
struct GrpcServer {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    arrived: watch::Receiver<usize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl GrpcServer {
    /// Answers at once (`gated`: false) or holds every call until `open()`.
    async fn start(gated: bool) -> GrpcServer {
        GrpcServer::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), gated)
    }

    fn start_on(listener: TcpListener, gated: bool) -> GrpcServer {
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (open, open_rx) = watch::channel(!gated);
        let (arrived, arrived_rx) = watch::channel(0);
        let svc = Gated {
            inner: health,
            open: open_rx,
            arrived: Arc::new(arrived),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder().serve_with_incoming_shutdown(
                svc,
                TcpIncoming::from(listener),
                async {
                    let _ = rx.await;
                },
            ),
        );
        GrpcServer {
            addr,
            open,
            arrived: arrived_rx,
            shutdown: Some(tx),
            task,
        }
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    /// Waits until `n` calls have reached the server.
    async fn arrived(&mut self, n: usize) {
        within(
            "calls reaching the server",
            self.arrived.wait_for(|a| *a >= n),
        )
        .await
        .unwrap();
    }

    /// Starts tonic's graceful shutdown (`GOAWAY` on every connection).
    fn shut_down(&mut self) {
        let _ = self.shutdown.take().expect("once").send(());
    }
}

type Conn = Http2Connection<GrpcBody>;

async fn connect(addr: SocketAddr, options: &Http2Options) -> (Conn, TcpConnection) {
    let tcp = TcpConnection::connect(addr).await.unwrap();
    let conn = Http2Connection::handshake(tcp.clone(), options)
        .await
        .unwrap();
    (conn, tcp)
}

async fn health_check(conn: Conn) -> Result<i32, tonic::Status> {
    HealthClient::new(conn)
        .check(HealthCheckRequest::default())
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn tonic_s_generated_client_calls_through_it() {
    let server = GrpcServer::start(false).await;
    let (conn, _tcp) = connect(server.addr, &Http2Options::new()).await;

    // `new`: the connection's origin completes the path-only URI tonic sends.
    assert_eq!(
        health_check(conn.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    // `with_origin`, as with any tonic transport.
    let mut client =
        HealthClient::with_origin(conn.clone(), "http://health.example".parse().unwrap());
    let answer = client.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    // Many calls at once on the one connection (HTTP/2 streams).
    let calls: Vec<_> = (0..20)
        .map(|_| tokio::spawn(health_check(conn.clone())))
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), ServingStatus::Serving as i32);
    }
    assert!(!conn.is_closed() && !conn.is_draining() && conn.end().is_none());
    let shown = format!("{conn:?}");
    assert!(
        shown.contains("http://localhost") && shown.contains("closed: false"),
        "{shown}"
    );

    conn.close().await;
    assert!(conn.is_closed() && conn.is_close_finished() && !conn.is_draining());
    assert_eq!(conn.end(), Some(Http2End::Closed));
    let after = health_check(conn.clone()).await.unwrap_err();
    assert_ne!(after.code(), tonic::Code::Ok);
}

#[tokio::test]
async fn close_fails_the_call_in_flight_at_once_and_releases_the_socket() {
    // The server never answers: its handler waits for a gate that stays shut.
    let mut server = GrpcServer::start(true).await;
    let (conn, tcp) = connect(server.addr, &Http2Options::new()).await;
    let call = tokio::spawn(health_check(conn.clone()));
    server.arrived(1).await;
    assert!(!call.is_finished());

    within("close", conn.close()).await;
    // Closing is no GOAWAY.
    assert!(!within("the GOAWAY signal", conn.goaway()).await);
    // The call failed because of the close (the server never answered).
    let failed = within("the call in flight", call)
        .await
        .unwrap()
        .unwrap_err();
    assert_ne!(failed.code(), tonic::Code::Ok, "{failed:?}");
    assert!(!call_was_not_sent(&failed), "it was sent: {failed:?}");
    assert_eq!(conn.end(), Some(Http2End::Closed));
    // The stream under it is closed too, whatever clones of it hyper held.
    assert!(tcp.is_closed());
    within("the TCP connection's close", tcp.close_finished()).await;
    // tonic's graceful shutdown waits for every connection to close: it ends, so the
    // server saw this one go although its handler never answered.
    server.shut_down();
    within("the server's graceful shutdown", server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dropping_every_handle_releases_the_socket() {
    let server = GrpcServer::start(false).await;
    let (conn, tcp) = connect(server.addr, &Http2Options::new()).await;
    assert_eq!(
        health_check(conn.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    drop(conn);
    // No task of hyper's keeps the socket: the stream under it closes by itself.
    within("the stream's close", tcp.close_finished()).await;
}

#[tokio::test]
async fn goaway_lets_the_call_in_flight_finish_then_the_connection_closes() {
    let mut server = GrpcServer::start(true).await;
    let (conn, tcp) = connect(server.addr, &Http2Options::new()).await;
    let call = tokio::spawn(health_check(conn.clone()));
    server.arrived(1).await;

    // Graceful shutdown: GOAWAY. The connection stops taking calls at once…
    server.shut_down();
    within("draining", conn.draining()).await;
    assert!(within("the GOAWAY signal", conn.goaway()).await);
    assert!(conn.is_closed() && conn.is_draining());
    assert_eq!(conn.end(), Some(Http2End::GoAway { error_code: 0 }));
    let err = conn
        .clone()
        .oneshot(http::Request::new(GrpcBody::empty()))
        .await
        .unwrap_err();
    assert!(err.is_not_sent(), "a draining connection takes no new call");
    assert_eq!(err.end(), Some(&Http2End::GoAway { error_code: 0 }));
    assert_eq!(
        err.to_string(),
        "the HTTP/2 connection takes no new calls (the server sent GOAWAY (NO_ERROR 0x0)); \
         the call was not sent"
    );
    // Through tonic: a status whose source says the call was not sent.
    let status = health_check(conn.clone()).await.unwrap_err();
    assert!(call_was_not_sent(&status), "{status:?}");
    // …while the call in flight goes on: it is answered once the handler answers.
    assert!(!call.is_finished() && !tcp.is_closed());
    server.open();
    let answer = within("the call in flight", call).await.unwrap();
    assert_eq!(answer.unwrap(), ServingStatus::Serving as i32);
    // Then the connection finishes by itself and releases the socket.
    within("close_finished", conn.close_finished()).await;
    assert!(!conn.is_draining() && tcp.is_closed());
    assert_eq!(conn.end(), Some(Http2End::GoAway { error_code: 0 }));
    within("the server", server.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_idle_connection_closes_on_goaway() {
    let mut server = GrpcServer::start(false).await;
    let (conn, tcp) = connect(server.addr, &Http2Options::new()).await;
    assert_eq!(
        health_check(conn.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    server.shut_down();
    within("close_finished", conn.close_finished()).await;
    assert!(conn.is_closed() && tcp.is_closed());
    assert_eq!(conn.end(), Some(Http2End::GoAway { error_code: 0 }));
    within("the server", server.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_server_killed_with_a_call_in_flight_fails_it_and_is_noticed() {
    let mut server = GrpcServer::start(true).await;
    let proxy = Proxy::start(server.addr).await;
    let (conn, tcp) = connect(proxy.addr, &Http2Options::new()).await;
    let call = tokio::spawn(health_check(conn.clone()));
    server.arrived(1).await;
    // Every socket closes at once, as when the server process is killed.
    proxy.kill.send_replace(true);
    assert!(
        !within("the GOAWAY signal", conn.goaway()).await,
        "a kill is no GOAWAY"
    );
    let failed = within("the call in flight", call)
        .await
        .unwrap()
        .unwrap_err();
    assert_ne!(failed.code(), tonic::Code::Ok);
    within("close_finished", conn.close_finished()).await;
    assert!(conn.is_closed() && tcp.is_closed());
    assert!(
        matches!(
            conn.end(),
            Some(Http2End::Failed(_) | Http2End::TransportClosed)
        ),
        "{:?}",
        conn.end()
    );
}

#[tokio::test]
async fn a_reset_is_noticed() {
    // A peer that reads the client's preface, then resets (SO_LINGER 0).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reset_now, reset) = oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut preface = [0u8; 24];
        s.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let _ = reset.await;
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let (conn, _tcp) = connect(addr, &Http2Options::new()).await;
    assert!(!conn.is_closed());
    reset_now.send(()).unwrap();
    within("close_finished", conn.close_finished()).await;
    assert!(conn.is_closed());
    assert!(conn.end().is_some() && conn.end() != Some(Http2End::Closed));
    peer.await.unwrap();
}

/// A server that reads the request and resets the connection, after sending its
/// `SETTINGS` (`speaks`) or before sending anything (a server shutting down resets the
/// connections it has not begun HTTP/2 on).
async fn resetting_server(speaks: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        if speaks {
            // An empty SETTINGS frame: the server's preface.
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        }
        // The client's preface (24 bytes), its SETTINGS and the request's HEADERS: wait
        // for a HEADERS frame (type 1) to arrive.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed first");
            seen.extend_from_slice(&buf[..n]);
            let mut at = 24;
            let mut headers = false;
            while seen.len() >= at + 9 {
                let len = (usize::from(seen[at]) << 16)
                    | (usize::from(seen[at + 1]) << 8)
                    | usize::from(seen[at + 2]);
                headers |= seen[at + 3] == 1;
                at += 9 + len;
            }
            if headers {
                break;
            }
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    addr
}

#[tokio::test]
async fn a_call_on_a_connection_the_server_never_spoke_on_counts_as_not_sent() {
    let (conn, _tcp) = connect(resetting_server(false).await, &Http2Options::new()).await;
    let failed = within("the call", health_check(conn.clone()))
        .await
        .unwrap_err();
    assert!(call_was_not_sent(&failed), "{failed:?}");
    assert!(
        failed.message().contains("the server sent nothing"),
        "{failed:?}"
    );
    within("close_finished", conn.close_finished()).await;

    // The same after the server's preface: the server may have begun the call.
    let (conn, _tcp) = connect(resetting_server(true).await, &Http2Options::new()).await;
    let failed = within("the call", health_check(conn.clone()))
        .await
        .unwrap_err();
    assert!(!call_was_not_sent(&failed), "{failed:?}");
    within("close_finished", conn.close_finished()).await;
}

#[tokio::test]
async fn a_failed_handshake_closes_the_stream_and_names_the_step() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tcp = TcpConnection::connect(addr).await.unwrap();
    tcp.close().await; // nothing can go out on it any more
    let err = Http2Connection::<GrpcBody>::handshake(tcp.clone(), &Http2Options::new())
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("HTTP/2 handshake"), "{err}");
    assert!(tcp.is_closed());
}

/// A TCP proxy in front of a server: forwards both ways; `freeze` makes it stop reading and
/// writing while it keeps both sockets open (a peer gone silent: a hung host, a black hole
/// whose kernel still acknowledges); `kill` closes every socket and the listener at once
/// (what the kernel does when the server process is killed).
struct Proxy {
    addr: SocketAddr,
    freeze: watch::Sender<bool>,
    kill: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (freeze, frozen) = watch::channel(false);
        let (kill, killed) = watch::channel(false);
        let mut stop = killed.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.wait_for(|k| *k) => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { return };
                let server = TcpStream::connect(target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pipe(cr, sw, frozen.clone(), killed.clone()));
                tokio::spawn(pipe(sr, cw, frozen.clone(), killed.clone()));
            }
        });
        Proxy { addr, freeze, kill }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    mut killed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            () = async { let _ = killed.wait_for(|k| *k).await; } => return,
            () = async { let _ = frozen.wait_for(|f| *f).await; } => break,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
        }
    }
    // Silent: hold both halves open, never read or write again, until killed.
    let _ = killed.wait_for(|k| *k).await;
    drop((from, to));
}

#[tokio::test]
async fn a_ping_keepalive_closes_a_connection_whose_peer_went_silent() {
    let server = GrpcServer::start(false).await;
    let proxy = Proxy::start(server.addr).await;
    let keepalive = PingKeepalive::new(Duration::from_millis(100), Duration::from_secs(1));
    let (pinged, _tcp) = connect(proxy.addr, &Http2Options::new().keepalive(keepalive)).await;
    // The control: the same path, no keepalive.
    let (unpinged, _tcp2) = connect(proxy.addr, &Http2Options::new()).await;
    assert_eq!(
        health_check(pinged.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health_check(unpinged.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    // Idle and answered: several PINGs go out and come back; nothing closes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!pinged.is_closed(), "{:?}", pinged.end());

    proxy.freeze.send_replace(true);
    within("the keepalive's close", pinged.close_finished()).await;
    match pinged.end() {
        Some(Http2End::Failed(e)) => assert!(e.contains("keep-alive"), "{e}"),
        other => panic!("closed by {other:?}, not the keepalive"),
    }
    // Nothing but the PINGs noticed: the connection without them is still open.
    assert!(!unpinged.is_closed(), "{:?}", unpinged.end());
    unpinged.close().await;
    proxy.kill.send_replace(true);
}

#[tokio::test]
async fn plain_hyper_requests_go_through_it() {
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let svc =
            hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let reply = format!("{} {}", req.method(), req.uri());
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(reply))))
            });
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let tcp = TcpConnection::connect(addr).await.unwrap();
    let options = Http2Options::new().origin("https://api.example".parse().unwrap());
    let mut conn: Http2Connection<Empty<Bytes>> =
        Http2Connection::handshake(tcp, &options).await.unwrap();
    // A path-only URI gets the origin; a full one is sent as it is.
    for (uri, seen) in [
        ("/a?b=c", "GET https://api.example/a?b=c"),
        ("http://other.example/x", "GET http://other.example/x"),
    ] {
        let req = http::Request::get(uri).body(Empty::new()).unwrap();
        let resp = conn.ready().await.unwrap().call(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, seen);
    }
    conn.close().await;
    let req = http::Request::get("/").body(Empty::new()).unwrap();
    let err = conn.ready().await.unwrap().call(req).await.unwrap_err();
    assert!(err.is_not_sent() && err.hyper_error().is_none(), "{err}");
    assert_eq!(err.end(), Some(&Http2End::Closed));
}

#[tokio::test]
async fn a_persistent_connection_over_it_fails_over_between_tonic_servers() {
    let a = GrpcServer::start(false).await;
    let b = GrpcServer::start(false).await;
    let catalog = StaticList::new([a.addr, b.addr]);
    let pc = PersistentConnection::builder(
        "health",
        catalog.get_address::<IoError>(Pick::InOrder),
        |addr: SocketAddr, _cx| async move {
            let tcp = TcpConnection::connect(addr).await?;
            Http2Connection::<GrpcBody>::handshake(tcp, &Http2Options::new()).await
        },
    )
    .retry_policy(Duration::from_millis(20))
    .build();
    let first = within("connected", pc.connected()).await;
    assert_eq!(
        health_check(first.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );
    // Kill the copy in use (A, listed first): the next call goes to B.
    a.task.abort();
    within("the old connection's close", first.close_finished()).await;
    let mut answered = false;
    for _ in 0..100 {
        let conn = within("connected", pc.connected()).await;
        if health_check(conn).await.is_ok() {
            answered = true;
            break;
        }
    }
    // A is gone, so B answered.
    assert!(answered);
    assert_eq!(pc.stats().connections, 2);
    pc.close().await;
    drop(b);
}

#[tokio::test]
async fn it_runs_over_tls_with_alpn_h2() {
    use std::sync::Arc;

    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use persistent_connection::conn::tls::rustls::pki_types::pem::PemObject;
    use persistent_connection::conn::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use persistent_connection::conn::tls::rustls::{RootCertStore, ServerConfig, crypto};
    use persistent_connection::conn::tls::{TlsConnector, client_config, tokio_rustls};

    // A hyper HTTP/2 server behind rustls, offering ALPN h2, with certificates made now.
    let (ca, cert, key) = persistent_connection_testkit::certs::make(&["localhost"]);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut server_config =
        ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    server_config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (requests, mut seen) = watch::channel(0usize);
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(s).await.unwrap();
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            requests.send_modify(|n| *n += 1);
            async move {
                if req.uri().path() == "/hang" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("over TLS"))))
            }
        });
        let _ = http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    });

    // The client offers h2, as an HTTP/2 client over TLS must.
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut config = (*client_config(roots)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = TlsConnector::new(Arc::new(config), "localhost")
        .unwrap()
        .connect(addr)
        .await
        .unwrap();
    assert_eq!(tls.alpn_protocol().as_deref(), Some(&b"h2"[..]));
    let options = Http2Options::new().origin("https://localhost".parse().unwrap());
    let conn: Http2Connection<Empty<Bytes>> = Http2Connection::handshake(tls.clone(), &options)
        .await
        .unwrap();
    let req = http::Request::get("/").body(Empty::new()).unwrap();
    let resp = conn.clone().oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "over TLS");

    // A call the server never answers fails on close; the TLS connection is closed.
    let req = http::Request::get("/hang").body(Empty::new()).unwrap();
    let call = tokio::spawn(conn.clone().oneshot(req));
    within(
        "the request reaching the server",
        seen.wait_for(|n| *n == 2),
    )
    .await
    .unwrap();
    within("close", conn.close()).await;
    let err = within("the call in flight", call)
        .await
        .unwrap()
        .unwrap_err();
    assert!(!err.is_not_sent() && err.hyper_error().is_some(), "{err}");
    assert!(tls.is_closed());
    within("the TLS connection's close", tls.close_finished()).await;
}
