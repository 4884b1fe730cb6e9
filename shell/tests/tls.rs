//! TLS connections (feature `tls`) against real TLS servers: an in-process rustls server
//! with certificates made at test time (the test kit's `certs`, rcgen), and `redis-server` on its TLS port
//! (Debian's build links OpenSSL; `scripts/test.sh` installs it). Real sockets need the
//! real clock: every wait is bounded by a generous guard.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use persistent_connection::conn::tls::rustls::ServerConfig;
use persistent_connection::conn::tls::rustls::pki_types::pem::PemObject;
use persistent_connection::conn::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use persistent_connection::conn::tls::{TlsConnection, TlsConnector, rustls, tokio_rustls};
use persistent_connection::{Closable, Event, IoError, PersistentConnection};
use persistent_connection_testkit::certs;
use persistent_connection_testkit::redis::{RedisServer, Settings, drill};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GUARD: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// A certificate authority's PEM and a server configuration with a certificate it signed
/// for `names`.
fn server_config(names: &[&str]) -> (String, Arc<ServerConfig>) {
    let (ca, cert, key) = certs::make(names);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    (ca, Arc::new(config))
}

#[derive(Clone, Copy, Debug)]
enum Then {
    /// Echo what arrives until the client closes.
    Echo,
    /// Send "bye", close_notify and FIN right after the handshake.
    Close,
    /// Reset the TCP connection (SO_LINGER 0) right after the handshake.
    Reset,
}

/// An in-process rustls server on 127.0.0.1 that does `then` with every connection.
async fn tls_server(config: Arc<ServerConfig>, then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tcp_ref = socket2::SockRef::from(&tcp);
                if matches!(then, Then::Reset) {
                    tcp_ref.set_linger(Some(Duration::ZERO)).unwrap();
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                match then {
                    Then::Echo => {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Then::Close => {
                        let _ = tls.write_all(b"bye").await;
                        let _ = tls.shutdown().await;
                    }
                    Then::Reset => drop(tls),
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_persistent_tls_connection_carries_bytes_and_closes_cleanly() {
    let (ca, config) = server_config(&["localhost"]);
    let addr = tls_server(config, Then::Echo).await;
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
    let pc = PersistentConnection::builder(
        "tls echo",
        move || async move { Ok::<_, IoError>(addr) },
        move |addr, _cx| {
            let connector = connector.clone();
            async move { connector.connect(addr).await }
        },
    )
    .build();
    let mut conn: TlsConnection = guard("connected", pc.connected()).await;
    assert_eq!(conn.peer_addr(), addr);
    assert!(conn.protocol_version().is_some());
    conn.write_all(b"hello over TLS").await.unwrap();
    let mut echo = [0u8; 14];
    guard("echo", conn.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"hello over TLS");
    guard("close", pc.close()).await;
    assert!(conn.is_closed());
    guard("close finished", conn.close_finished()).await;
    let err = conn.write_all(b"more").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

/// The server closes (close_notify, FIN) or resets right after the handshake; nobody reads
/// the connection, yet it counts as closed, and the persistent connection reconnects (R6).
#[tokio::test]
async fn the_peer_closing_or_resetting_is_noticed_without_reading() {
    for then in [Then::Close, Then::Reset] {
        let (ca, config) = server_config(&["localhost"]);
        let addr = tls_server(config, then).await;
        let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
        let conn = guard("connect", connector.connect(addr)).await.unwrap();
        guard(&format!("{then:?} noticed"), conn.close_finished()).await;
        assert!(conn.is_closed(), "{then:?}");

        let pc = PersistentConnection::builder(
            "tls closing",
            move || async move { Ok::<_, IoError>(addr) },
            move |addr, _cx| {
                let connector = connector.clone();
                async move { connector.connect(addr).await }
            },
        )
        .retry_policy(Duration::from_millis(10))
        .build();
        let first = guard("first", pc.connected()).await;
        guard("first closes", first.close_finished()).await;
        let stats = pc.stats();
        guard("a new connection after the first closed", async {
            while pc.stats().connections < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(stats.connections >= 1, "{then:?}: {stats:?}");
        assert!(pc.stats().disconnections >= 1, "{then:?}");
        guard("close", pc.close()).await;
    }
}

/// A certificate that does not verify fails the attempt at once with an error that names
/// the address, the server name and the cause — never a hang (the handshake timeout is a
/// minute here); repeated identical failures are announced once per round (R4).
#[tokio::test]
async fn a_certificate_that_does_not_verify_is_a_clear_prompt_deduplicated_failure() {
    let (_ca, config) = server_config(&["localhost"]);
    let addr = tls_server(config, Then::Echo).await;
    let (other_ca, _) = server_config(&["localhost"]);

    // Signed by an authority the client does not trust.
    let untrusting = TlsConnector::from_pem_roots(other_ca.as_bytes(), "localhost")
        .unwrap()
        .handshake_timeout(Duration::from_secs(60));
    let started = Instant::now();
    let err = guard("handshake", untrusting.connect(addr))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let expected =
        format!("TLS handshake with {addr} (server name \"localhost\"): invalid peer certificate");
    assert!(err.message().starts_with(&expected), "{err}");
    assert!(err.message().contains("UnknownIssuer"), "{err}");

    // Trusted, but not for this name.
    let (ca, config) = server_config(&["localhost"]);
    let named = tls_server(config, Then::Echo).await;
    let other_name = TlsConnector::from_pem_roots(ca.as_bytes(), "cache.example").unwrap();
    let err = guard("handshake", other_name.connect(named))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("server name \"cache.example\"")
            && err.message().contains("not valid for name"),
        "{err}"
    );

    // In a persistent connection: one FailedToConnect for the repeated cause.
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    let pc = PersistentConnection::builder(
        "untrusted",
        move || async move { Ok::<_, IoError>(addr) },
        move |addr, _cx| {
            let connector = untrusting.clone();
            async move { connector.connect(addr).await }
        },
    )
    .retry_policy(Duration::from_millis(10))
    .connect_timeout(Duration::from_secs(60))
    .on_event(move |event| {
        if let Event::FailedToConnect(e) = &event {
            seen.lock().unwrap().push(e.to_string());
        }
        async {}
    })
    .build();
    guard("five failed attempts", async {
        while pc.stats().failures < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    guard("close", pc.close()).await;
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with(&expected), "{failures:?}");
    assert!(pc.stats().deduplicated_failures >= 4, "{:?}", pc.stats());
}

/// Equality of handshake failures compares their cause: the same failure twice is equal
/// (one `FailedToConnect` per round, R4), another cause at the same address is not.
#[tokio::test]
async fn handshake_failures_are_equal_exactly_when_their_cause_is() {
    let (ca, config) = server_config(&["localhost"]);
    let addr = tls_server(config, Then::Echo).await;
    let (other_ca, _) = server_config(&["localhost"]);
    let untrusted = TlsConnector::from_pem_roots(other_ca.as_bytes(), "localhost").unwrap();
    let misnamed = TlsConnector::from_pem_roots(ca.as_bytes(), "cache.example").unwrap();
    let a1 = guard("handshake", untrusted.connect(addr))
        .await
        .unwrap_err();
    let a2 = guard("handshake", untrusted.connect(addr))
        .await
        .unwrap_err();
    let b = guard("handshake", misnamed.connect(addr))
        .await
        .unwrap_err();
    assert_eq!(a1, a2);
    assert_ne!(a1, b);
}

/// Closing never waits for a peer that does not read, even with a write blocked on it.
#[tokio::test]
async fn close_does_not_wait_for_a_peer_that_does_not_read() {
    let (ca, config) = server_config(&["localhost"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (accepted, held) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let _ = accepted.send(());
        // Holds the connection and never reads.
        std::future::pending::<()>().await;
        drop(tls);
    });
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
    let conn = guard("connect", connector.connect(addr)).await.unwrap();
    guard("accepted", held).await.unwrap();
    let mut writer = conn.clone();
    let blocked = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = writer.write_all(&chunk).await {
                return e;
            }
        }
    });
    // Let the socket buffers fill up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !blocked.is_finished(),
        "the peer never reads: the writer must be blocked"
    );
    guard("close", conn.close()).await;
    assert!(conn.is_closed());
    let err = guard("the blocked write gives up", blocked).await.unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");
}

/// The two steps are told apart: a refused TCP connect, and a server that accepts TCP but
/// never answers the handshake (the handshake timeout, named).
#[tokio::test]
async fn errors_say_whether_tcp_or_the_handshake_failed() {
    let (ca, _) = server_config(&["localhost"]);
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost")
        .unwrap()
        .handshake_timeout(Duration::from_millis(200));

    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = gone.local_addr().unwrap();
    drop(gone);
    let err = guard("refused", connector.connect(refused))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        err.message()
            .starts_with(&format!("TCP connect to {refused}: ")),
        "{err}"
    );

    // Accepts (in the kernel's queue) and never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let err = guard("silent", connector.connect(addr)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(
        err.message(),
        format!("TLS handshake with {addr} (server name \"localhost\") timed out after 200ms")
    );
    drop(silent);

    let bad_name = TlsConnector::from_pem_roots(ca.as_bytes(), "not a name!").unwrap_err();
    assert_eq!(bad_name.kind(), std::io::ErrorKind::InvalidInput);
}

/// `redis-server` on its TLS port only: the Redis example's drill over TLS (kill -9 with
/// the catalog updated at once and late, SIGSTOP caught by the health check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_drill_runs_over_tls_against_redis_server() {
    let ms = Duration::from_millis;
    let settings = Settings {
        hold: ms(200),
        catalog_lag: ms(100),
        ping_timeout: ms(300),
        health: persistent_connection::conn::HealthCheck::new(ms(100), ms(300), 2),
        verbose: false,
        tls: true,
        ..Settings::example()
    };
    let report = guard("the TLS drill", drill(&settings))
        .await
        .expect("the drill ran (redis-server with TLS: Debian's redis-server package)");
    println!("{}\n{}", report.events.join("\n"), report.summary());
    assert_eq!(report.faults.len(), 3, "{}", report.summary());
    assert!(report.closed_by_health_check >= 1, "{}", report.summary());
    assert!(report.pings_ok > 0);
}

/// A client that does not trust redis-server's certificate gets a handshake failure that
/// says so, promptly.
#[tokio::test]
async fn redis_server_with_a_certificate_the_client_does_not_trust_fails_the_handshake() {
    let server = RedisServer::start_with(true)
        .await
        .expect("redis-server with TLS (Debian's redis-server package)");
    let (other_ca, _) = server_config(&["localhost"]);
    let connector = TlsConnector::from_pem_roots(other_ca.as_bytes(), "localhost").unwrap();
    let err = guard("handshake", connector.connect(server.addr))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with(&format!(
            "TLS handshake with {} (server name \"localhost\"): invalid peer certificate",
            server.addr
        )),
        "{err}"
    );
    // The trusted connector talks to it.
    let mut conn = guard("connect", certs::connector().connect(server.addr))
        .await
        .unwrap();
    conn.write_all(b"PING\r\n").await.unwrap();
    let mut pong = [0u8; 7];
    guard("PONG", conn.read_exact(&mut pong)).await.unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    conn.close().await;
}

/// What a one-connection server saw: every byte until the end of the stream, or the error
/// that ended it (a FIN without `close_notify` is `UnexpectedEof`).
type Seen = std::io::Result<Vec<u8>>;

/// An in-process rustls server for one connection: after the handshake it reads to the
/// end of the stream and reports what it saw; if the end was clean (close_notify), it
/// answers "bye" and closes its side (close_notify, FIN).
async fn one_connection_server(
    config: Arc<ServerConfig>,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (report, seen) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut got = Vec::new();
        let read = tls.read_to_end(&mut got).await.map(|_| got);
        let clean_end = read.is_ok();
        let _ = report.send(read);
        if clean_end {
            let _ = tls.write_all(b"bye").await;
            let _ = tls.shutdown().await;
        }
    });
    (addr, seen)
}

/// A connector for `server_config`'s authority, offering `alpn`.
fn connector_with_alpn(ca: &str, alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let mut config = (*persistent_connection::conn::tls::client_config(roots)).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::new(Arc::new(config), "localhost").unwrap()
}

/// `{:?}` of the connector names the server name, the TCP options and the handshake
/// timeout; `{:?}` of a connection names both ends and whether it is closed, as
/// `TcpConnection` does.
#[tokio::test]
async fn the_connector_and_a_connection_print_what_they_are() {
    let (ca, config) = server_config(&["localhost"]);
    let addr = tls_server(config, Then::Echo).await;
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost")
        .unwrap()
        .handshake_timeout(Duration::from_millis(1500));
    assert_eq!(
        format!("{connector:?}"),
        format!(
            "TlsConnector {{ server_name: DnsName(\"localhost\"), tcp: {:?}, \
             handshake_timeout: 1.5s, .. }}",
            persistent_connection::conn::TcpOptions::new()
        )
    );

    let conn = guard("connect", connector.connect(addr)).await.unwrap();
    assert!(!conn.is_closed(), "a fresh connection is open");
    assert_eq!(
        format!("{conn:?}"),
        format!(
            "TlsConnection {{ local: {}, peer: {addr}, closed: false }}",
            conn.local_addr()
        )
    );
    guard("close", conn.close()).await;
    assert!(conn.is_closed());
    assert!(format!("{conn:?}").ends_with("closed: true }"));
}

/// The ALPN protocol the server chose is the one reported; none without ALPN.
#[tokio::test]
async fn the_negotiated_alpn_protocol_is_reported() {
    let (ca, config) = server_config(&["localhost"]);
    let mut with_alpn = (*config).clone();
    with_alpn.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let addr = tls_server(Arc::new(with_alpn), Then::Echo).await;

    let h2 = guard("connect", connector_with_alpn(&ca, &[b"h2"]).connect(addr))
        .await
        .unwrap();
    assert_eq!(h2.alpn_protocol(), Some(b"h2".to_vec()));
    let http1 = connector_with_alpn(&ca, &[b"http/1.1"]);
    let http1 = guard("connect", http1.connect(addr)).await.unwrap();
    assert_eq!(http1.alpn_protocol(), Some(b"http/1.1".to_vec()));
    let none = guard("connect", connector_with_alpn(&ca, &[]).connect(addr))
        .await
        .unwrap();
    assert_eq!(none.alpn_protocol(), None);
    for conn in [h2, http1, none] {
        guard("close", conn.close()).await;
    }
}

/// `close` ends the TLS stream cleanly: the server reads everything, then `close_notify`
/// (a clean end of stream, not `UnexpectedEof` as for a bare FIN).
#[tokio::test]
async fn close_sends_close_notify() {
    let (ca, config) = server_config(&["localhost"]);
    let (addr, seen) = one_connection_server(config).await;
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
    let mut conn = guard("connect", connector.connect(addr)).await.unwrap();
    conn.write_all(b"last words").await.unwrap();
    guard("close", conn.close()).await;
    let seen = guard("the server's read", seen).await.unwrap();
    assert_eq!(seen.unwrap(), b"last words");
}

/// `shutdown` sends `close_notify` and a FIN and closes only the writing side: the server
/// sees a clean end of stream and can still answer.
#[tokio::test]
async fn shutdown_ends_the_writing_side_cleanly_and_the_reply_still_arrives() {
    let (ca, config) = server_config(&["localhost"]);
    let (addr, seen) = one_connection_server(config).await;
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
    let mut conn = guard("connect", connector.connect(addr)).await.unwrap();
    conn.write_all(b"request").await.unwrap();
    guard("shutdown", conn.shutdown()).await.unwrap();
    let seen = guard("the server's read to the end", seen).await.unwrap();
    assert_eq!(seen.unwrap(), b"request");
    let mut reply = Vec::new();
    guard("the reply", conn.read_to_end(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, b"bye");
    guard("close", conn.close()).await;
}

/// Writes that the socket could not take yet wait in the TLS layer; `flush` sends them,
/// waiting until the peer reads. Here the server reads only after the client wrote until
/// a write was refused (socket buffers and the TLS buffer full): every byte arrives once
/// `flush` has returned.
#[tokio::test]
async fn flush_sends_what_the_tls_layer_still_holds() {
    let (ca, config) = server_config(&["localhost"]);
    let connector = TlsConnector::from_pem_roots(ca.as_bytes(), "localhost").unwrap();
    // The total is only known once the client is blocked; the server learns it then.
    let (total_tx, total_rx) = tokio::sync::oneshot::channel::<usize>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (report, seen) = tokio::sync::oneshot::channel::<Seen>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let total = total_rx.await.unwrap();
        let mut got = vec![0u8; total];
        let read = tls.read_exact(&mut got).await.map(|_| got);
        let _ = report.send(read);
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest).await;
    });

    let conn = guard("connect", connector.connect(addr)).await.unwrap();
    let mut writer = conn.clone();
    // Byte i of the stream is i % 251.
    let pattern: Vec<u8> = (0..64 * 1024 + 251).map(|i| (i % 251) as u8).collect();
    let mut total = 0;
    // Until a write is refused: the peer does not read yet.
    while let Some(n) = writer
        .write(&pattern[total % 251..total % 251 + 64 * 1024])
        .now_or_never()
    {
        total += n.unwrap();
        assert!(total < 1 << 30, "the socket never filled up");
    }
    let flushing = tokio::spawn(async move { writer.flush().await });
    total_tx.send(total).unwrap();
    guard("flush", flushing).await.unwrap().unwrap();
    let seen = guard("the server read every byte", seen).await.unwrap();
    let seen = seen.unwrap();
    assert_eq!(seen.len(), total);
    assert!(seen.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    guard("close", conn.close()).await;
}
