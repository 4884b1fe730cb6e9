//! TLS failures that must read the same on every try (R4: two failures are equal exactly
//! when their cause is), through `TlsConnector` and through the etcd catalog over TLS
//! (issue 28 items 1, 2 and 8), against real TLS servers: an in-process rustls server and
//! a real `etcd`.
//!
//! The certificates whose validity is wrong are fixed texts below (made once with rcgen):
//! one expired in 2021 and one valid only from the year 9000, both for `localhost` and
//! 127.0.0.1, signed by an authority valid from 2020 to 9999. An expired certificate stays
//! expired, so the fixtures never go stale.
//!
//! Real sockets need the real clock: every wait is bounded by a generous guard.
#![cfg(feature = "tls")]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use persistent_connection::conn::tls::rustls::pki_types::pem::PemObject;
use persistent_connection::conn::tls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, UnixTime,
};
use persistent_connection::conn::tls::rustls::time_provider::TimeProvider;
use persistent_connection::conn::tls::rustls::{
    self, ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use persistent_connection::conn::tls::{TlsConnector, tokio_rustls};
use persistent_connection::{Closable, Event, IoError, PersistentConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The authority that signed the two certificates below (valid 2020-01-01 to 9999-12-31).
const VALIDITY_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBmTCCAT6gAwIBAgIUCJG/EZd+R8Zg+RFx3ZIwbd2JdrowCgYIKoZIzj0EAwIw
MTEvMC0GA1UEAwwmcGVyc2lzdGVudC1jb25uZWN0aW9uIHZhbGlkaXR5IHRlc3Qg
Q0EwIBcNMjAwMTAxMDAwMDAwWhgPOTk5OTEyMzEwMDAwMDBaMDExLzAtBgNVBAMM
JnBlcnNpc3RlbnQtY29ubmVjdGlvbiB2YWxpZGl0eSB0ZXN0IENBMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEqjQWYcYaMd0ml99aPSgRXazCeLbaDm76j0UHEfDu
ldm2W6DcKyGsUxtyIkZ7gzvxZ5VDFINLIDKL7vECW4cFsKMyMDAwHQYDVR0OBBYE
FMmINjG5TwvlsVaoueayxC4ZDb7EMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0E
AwIDSQAwRgIhAI1IAeXiUjzE+qYgZ/2eQDX2qeuzq2Pnv/U3Qq9DUPsxAiEAieJg
F6bjpH0+1SwDf3zATzQT+5uBSxx/LxCn5W9raII=
-----END CERTIFICATE-----
";

/// For `localhost` and 127.0.0.1, valid from 2020-01-01 to 2021-01-01.
const EXPIRED_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBcjCCARigAwIBAgIUYmkr4Yb+1yJAgByb/Tdg7xu8LdkwCgYIKoZIzj0EAwIw
MTEvMC0GA1UEAwwmcGVyc2lzdGVudC1jb25uZWN0aW9uIHZhbGlkaXR5IHRlc3Qg
Q0EwHhcNMjAwMTAxMDAwMDAwWhcNMjEwMTAxMDAwMDAwWjAhMR8wHQYDVQQDDBZy
Y2dlbiBzZWxmIHNpZ25lZCBjZXJ0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
C2TewSrp/zKye2KKLF8ZxWQAywyxTWbtaFPO3XyvBmbEFrTFM5DXD/KX3x2QpmU/
6D8w7WQ96Z7MKC7J2GI9QqMeMBwwGgYDVR0RBBMwEYIJbG9jYWxob3N0hwR/AAAB
MAoGCCqGSM49BAMCA0gAMEUCIADqyWqKzFGQqEadsxyPyaCskD3bn+6K4Jw3iZAa
U8McAiEApfIZjgUJuVDNlXEquKDZ+RzR00PhFVmqZYqrbQ1ybIQ=
-----END CERTIFICATE-----
";

const EXPIRED_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZn1xOGCsr9hiin5+
YgHNjVqcCUWT5TBahY19by9rzPOhRANCAAQLZN7BKun/MrJ7YoosXxnFZADLDLFN
Zu1oU87dfK8GZsQWtMUzkNcP8pffHZCmZT/oPzDtZD3pnswoLsnYYj1C
-----END PRIVATE KEY-----
";

/// For `localhost` and 127.0.0.1, valid from 9000-01-01 to 9999-12-31.
const NOT_YET_VALID_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBdjCCARygAwIBAgIUFmqyGwcsGB2FC8HswP9uSt7YapMwCgYIKoZIzj0EAwIw
MTEvMC0GA1UEAwwmcGVyc2lzdGVudC1jb25uZWN0aW9uIHZhbGlkaXR5IHRlc3Qg
Q0EwIhgPOTAwMDAxMDEwMDAwMDBaGA85OTk5MTIzMTAwMDAwMFowITEfMB0GA1UE
AwwWcmNnZW4gc2VsZiBzaWduZWQgY2VydDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABAEcg6kJNBbreH9CyWW26Z+2NgiiCkZGIR53pY0ZX9Ge8Q0upB4xYYaU1Gja
/UCKLCb5uvOvZH3kGGifKGpukcajHjAcMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcE
fwAAATAKBggqhkjOPQQDAgNIADBFAiAqcnnbcOQspNWaiIUv98QIzdGZmgpPNjVg
emuLdbQgPwIhAJ0Qe+9TmejwTicNqNYpTKPe1KGUgHaUhUALXboVuXXR
-----END CERTIFICATE-----
";

const NOT_YET_VALID_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgEFFB75/1ZJGoNVPn
wcRLixrD4Ljyv5IZoTSgsk2xx5yhRANCAAQBHIOpCTQW63h/QslltumftjYIogpG
RiEed6WNGV/RnvENLqQeMWGGlNRo2v1Aiiwm+brzr2R95BhonyhqbpHG
-----END PRIVATE KEY-----
";

const GUARD: Duration = Duration::from_secs(60);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration with this certificate and key, for these versions.
fn server_config(
    cert: &str,
    key: &str,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// A clock that is one second later each time rustls asks it: what a client retrying a
/// second or more apart sees, without waiting for it.
#[derive(Debug, Default)]
struct Ticking {
    asked: AtomicU64,
}

impl TimeProvider for Ticking {
    fn current_time(&self) -> Option<UnixTime> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let later = Duration::from_secs(self.asked.fetch_add(1, Ordering::Relaxed));
        Some(UnixTime::since_unix_epoch(now + later))
    }
}

/// A connector trusting [`VALIDITY_CA`] for `localhost`, whose clock ticks a second per
/// verification.
fn ticking_connector() -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(VALIDITY_CA.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_details(ring(), Arc::new(Ticking::default()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::new(Arc::new(config), "localhost").unwrap()
}

/// What a TLS server does with each TCP connection it accepts.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Close the TCP connection at once, before any TLS.
    CloseAtOnce,
    /// Complete the handshake, then send "bye", close_notify and a FIN.
    HandshakeThenClose,
    /// Complete the handshake, then reset the connection (SO_LINGER 0).
    HandshakeThenReset,
    /// Complete the handshake, then hold the connection.
    Hold,
}

/// A server on 127.0.0.1 that does `then` with every connection.
async fn server(config: Arc<ServerConfig>, then: Then) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            if matches!(then, Then::CloseAtOnce) {
                drop(tcp);
                continue;
            }
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if matches!(then, Then::HandshakeThenReset) {
                    socket2::SockRef::from(&tcp)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                }
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                match then {
                    Then::HandshakeThenClose => {
                        let _ = tls.write_all(b"bye").await;
                        let _ = tls.shutdown().await;
                    }
                    Then::Hold => {
                        let mut buf = [0u8; 64];
                        while tls.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                    }
                    Then::CloseAtOnce | Then::HandshakeThenReset => drop(tls),
                }
            });
        }
    });
    addr
}

/// A persistent connection to `addr` through `connector`, retrying every 5 ms; the texts
/// of the `FailedToConnect` it announced once `attempts` attempts failed.
async fn announced_failures(
    connector: TlsConnector,
    addr: SocketAddr,
    attempts: u64,
) -> (Vec<String>, persistent_connection::Stats) {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = failures.clone();
    let pc = PersistentConnection::builder(
        "tls failures",
        move || async move { Ok::<_, IoError>(addr) },
        move |addr, _cx| {
            let connector = connector.clone();
            async move { connector.connect(addr).await }
        },
    )
    .retry_policy(Duration::from_millis(5))
    .on_event(move |event| {
        if let Event::FailedToConnect(e) = &event {
            seen.lock().unwrap().push(e.to_string());
        }
        async {}
    })
    .build();
    guard("the failed attempts", async {
        while pc.stats().failures < attempts {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    guard("close", pc.close()).await;
    let stats = pc.stats();
    let failures = failures.lock().unwrap().clone();
    (failures, stats)
}

/// Issue 28 item 1: rustls words a certificate outside its validity with the time of the
/// verification ("verification time 1796685288 (UNIX) ... (818378088 seconds ago)"), which
/// changes every second, so each retry a second or more later was a new failure. The
/// failure is now the certificate's validity, the same every time, with what to check;
/// retries a second apart announce it once.
#[tokio::test]
async fn a_certificate_outside_its_validity_is_one_failure_however_late_the_retries() {
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    for (cert, key, said) in [
        (EXPIRED_CERT, EXPIRED_KEY, "expired"),
        (NOT_YET_VALID_CERT, NOT_YET_VALID_KEY, "not valid yet"),
    ] {
        let addr = server(server_config(cert, key, all), Then::Hold).await;
        let connector = ticking_connector();
        let first = guard("handshake", connector.connect(addr))
            .await
            .unwrap_err();
        let second = guard("handshake", connector.connect(addr))
            .await
            .unwrap_err();
        assert_eq!(first, second, "{said}");
        assert_eq!(first.kind(), std::io::ErrorKind::InvalidData, "{first}");
        let message = first.message();
        assert!(
            message.starts_with(&format!(
                "TLS handshake with {addr} (server name \"localhost\"): invalid peer certificate"
            )) && message.contains(said)
                && !message.contains("verification time"),
            "{message}"
        );

        let (failures, stats) = announced_failures(connector, addr, 6).await;
        assert_eq!(failures.len(), 1, "{said}: {failures:?}");
        assert!(stats.deduplicated_failures >= 5, "{said}: {stats:?}");
    }
}

/// How many connects each test below makes: the issue saw 174–190 different announced
/// failures in 200 attempts against a peer that closes at once.
const TRIES: usize = 200;

/// Issue 28 item 2: a peer that accepts TCP and closes at once failed the handshake three
/// ways by timing — "the connection is closed" (the ClientHello not written after the
/// peer's FIN), "tls handshake eof", "Connection reset by peer" (written after it) — so a
/// persistent connection announced most attempts as new. Now one failure, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_at_once_fails_the_handshake_one_way() {
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let addr = server(
        server_config(EXPIRED_CERT, EXPIRED_KEY, all),
        Then::CloseAtOnce,
    )
    .await;
    let connector = ticking_connector();
    let mut texts = BTreeSet::new();
    for _ in 0..TRIES {
        let err = guard("handshake", connector.connect(addr))
            .await
            .unwrap_err();
        texts.insert((format!("{:?}", err.kind()), err.message().to_owned()));
    }
    assert_eq!(texts.len(), 1, "{texts:#?}");
    let (kind, message) = texts.pop_first().unwrap();
    assert_eq!(kind, "UnexpectedEof");
    assert!(
        message.starts_with(&format!(
            "TLS handshake with {addr} (server name \"localhost\"): the peer closed the \
             connection"
        )),
        "{message}"
    );

    let (failures, stats) = announced_failures(connector, addr, TRIES as u64).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(stats.deduplicated_failures >= TRIES as u64 - 1, "{stats:?}");
}

/// Issue 28 item 2, related: a server that completes the handshake and closes (or resets)
/// at once sometimes failed the connect ("the connection is closed": the client's last
/// flush refused after the peer's FIN; or the reset read after the handshake had
/// completed). A completed handshake is now a connection, which is then seen closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_right_after_the_handshake_gives_a_connection() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for then in [Then::HandshakeThenClose, Then::HandshakeThenReset] {
            let config = server_config(NOT_YET_VALID_CERT, NOT_YET_VALID_KEY, &[version]);
            let addr = server(config, then).await;
            // A clock in the year 9500, when the certificate is valid.
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(VALIDITY_CA.as_bytes()).unwrap())
                .unwrap();
            #[derive(Debug)]
            struct Year9500;
            impl TimeProvider for Year9500 {
                fn current_time(&self) -> Option<UnixTime> {
                    Some(UnixTime::since_unix_epoch(Duration::from_secs(
                        237_623_846_400,
                    )))
                }
            }
            let config = ClientConfig::builder_with_details(ring(), Arc::new(Year9500))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = TlsConnector::new(Arc::new(config), "localhost").unwrap();
            let mut failed = Vec::new();
            for _ in 0..TRIES {
                match guard("handshake", connector.connect(addr)).await {
                    Ok(conn) => {
                        guard("closed", conn.close_finished()).await;
                        assert!(conn.is_closed());
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            let distinct = failed.iter().collect::<BTreeSet<_>>();
            match then {
                // A close after the handshake leaves the server's last flight readable: the
                // handshake completes on the client's side every time.
                Then::HandshakeThenClose => assert!(
                    failed.is_empty(),
                    "{version:?} {then:?}: {} of {TRIES} connects failed: {distinct:?}",
                    failed.len(),
                ),
                // A reset may reach the client before it has read the server's last
                // handshake message, and Linux discards unread data when a reset arrives:
                // then the handshake did not complete on the client's side (seen in 1 of 200
                // TLS 1.2 connects under load). What must hold is that such a failure is
                // rare and reads one way, so that R4 announces it once.
                _ => {
                    assert!(
                        failed.len() <= TRIES / 10,
                        "{version:?} {then:?}: {} of {TRIES} connects failed: {distinct:?}",
                        failed.len(),
                    );
                    assert!(distinct.len() <= 1, "{version:?} {then:?}: {distinct:?}");
                }
            }
        }
    }
}

/// The etcd catalog over TLS (feature `etcd-tls`) against a real `etcd` (Debian's
/// `etcd-server`; a missing one is a failure with a message, never a skip).
#[cfg(feature = "etcd-tls")]
mod etcd {
    use std::time::Instant;

    use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdTls};
    use persistent_connection::catalog::{Catalog, CatalogError, Pick};
    use persistent_connection::{Event, IoError, PersistentConnection, TcpConnection};
    use persistent_connection_testkit::etcd::{EtcdServer, ServerTls};

    use super::*;

    const PREFIX: &str = "/services/echo/";
    /// The request timeout of the options under test.
    const TIMEOUT: Duration = Duration::from_secs(2);

    async fn start(tls: Option<ServerTls>) -> EtcdServer {
        tokio::task::spawn_blocking(move || match tls {
            Some(tls) => EtcdServer::start_tls(tls),
            None => EtcdServer::start(),
        })
        .await
        .expect("start etcd")
    }

    fn catalog(endpoint: &str, tls: EtcdTls) -> EtcdCatalog {
        EtcdCatalog::with_options(
            EtcdOptions::new([endpoint]).tls(tls).timeout(TIMEOUT),
            PREFIX,
        )
    }

    /// Why TLS with `endpoint` failed, as `message` says: `TLS with <endpoint> failed:
    /// <why>`, or, where the catalog names its one endpoint itself, `… <endpoint> …
    /// failed: TLS failed: <why>`.
    fn tls_failure<'a>(message: &'a str, endpoint: &str) -> &'a str {
        let with = format!("TLS with {endpoint} failed: ");
        if let Some(at) = message.find(&with) {
            return &message[at + with.len()..];
        }
        let named = message.find(endpoint);
        let tls = message.find("failed: TLS failed: ");
        match (named, tls) {
            (Some(named), Some(at)) if named < at => &message[at + "failed: TLS failed: ".len()..],
            _ => panic!("not 'TLS with {endpoint} failed: <why>': {message}"),
        }
    }

    /// A lookup that must fail, within the timeout (a margin for a loaded machine): its
    /// error's text.
    async fn failed_lookup(catalog: &EtcdCatalog) -> String {
        let started = Instant::now();
        let error = guard("a lookup that should fail", catalog.lookup())
            .await
            .expect_err("the lookup should fail");
        assert!(
            started.elapsed() < TIMEOUT + Duration::from_secs(3),
            "{error}"
        );
        assert!(matches!(error, CatalogError::Lookup { .. }), "{error:?}");
        error.to_string()
    }

    /// Issue 28 item 1 through the etcd catalog: a member whose certificate expired (or is
    /// not valid yet) failed each lookup with the time of the verification in the text, so
    /// a persistent connection retrying a second or more apart announced every attempt.
    /// Now one `FailedToConnect` for all of them, naming the endpoint and the certificate's
    /// bound. (etcd's client builds its own rustls configuration: its clock is the real
    /// one, so the attempts are a real 1.1 s apart.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_with_a_certificate_outside_its_validity_is_announced_once() {
        for (cert, key, said) in [
            (EXPIRED_CERT, EXPIRED_KEY, "expired"),
            (NOT_YET_VALID_CERT, NOT_YET_VALID_KEY, "not valid yet"),
        ] {
            let etcd = start(Some(ServerTls {
                ca_pem: VALIDITY_CA.into(),
                cert_pem: cert.into(),
                key_pem: key.into(),
                client_cert_auth: false,
            }))
            .await;
            let ep = etcd.endpoint();
            let catalog = catalog(&ep, EtcdTls::new(VALIDITY_CA));
            let message = failed_lookup(&catalog).await;
            let why = tls_failure(&message, &ep);
            assert!(
                why.contains(said)
                    && why.contains("check the dates")
                    && !why.contains("verification time"),
                "{message}"
            );

            let failures = Arc::new(Mutex::new(Vec::new()));
            let seen = failures.clone();
            let pc = PersistentConnection::builder(
                "echo",
                catalog.get_address::<IoError>(Pick::InOrder),
                |addr: SocketAddr, _cx| TcpConnection::connect(addr),
            )
            .retry_policy(Duration::from_millis(1100))
            .on_event(move |event| {
                if let Event::FailedToConnect(e) = &event {
                    seen.lock().unwrap().push(e.to_string());
                }
                async {}
            })
            .build();
            guard("three failed attempts", async {
                while pc.stats().failures < 3 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            guard("close", pc.close()).await;
            let failures = failures.lock().unwrap();
            assert_eq!(failures.len(), 1, "{said}: {failures:#?}");
        }
    }

    /// Issue 28 item 8: every TLS failure reads "TLS with <endpoint> failed: <why and what
    /// to check>". Before: a CA that is not PEM named no endpoint; an `http://` endpoint
    /// with TLS read "invalid arguments"; `https://` to a plaintext member read
    /// "Unavailable: tls handshake eof", unclassified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_tls_failure_names_the_endpoint_and_what_to_check() {
        let plain = start(None).await;
        let ep = plain.endpoint();
        let https = ep.replace("http://", "https://");

        // A CA that is not PEM.
        let message = failed_lookup(&catalog(&https, EtcdTls::new("not a certificate"))).await;
        let why = tls_failure(&message, &https);
        assert!(
            why.starts_with("the CA certificate") && why.contains("EtcdTls::new"),
            "{message}"
        );

        // An http:// endpoint with TLS settings.
        let message = failed_lookup(&catalog(&ep, EtcdTls::new(VALIDITY_CA))).await;
        let why = tls_failure(&message, &ep);
        assert!(why.contains(&https), "{message}");
        assert!(!message.contains("invalid arguments"), "{message}");

        // https:// to a member that speaks plain text: the same text every time.
        let to_plain = catalog(&https, EtcdTls::new(VALIDITY_CA));
        let message = failed_lookup(&to_plain).await;
        let why = tls_failure(&message, &https);
        assert!(
            why.starts_with("the member closed the connection during the TLS handshake")
                && why.contains("does it serve TLS"),
            "{message}"
        );
        for _ in 0..5 {
            assert_eq!(failed_lookup(&to_plain).await, message);
        }
    }
}
