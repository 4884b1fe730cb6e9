//! The etcd catalog and publisher over TLS (feature `etcd-tls`) against a real `etcd`
//! (Debian's `etcd-server`) whose client port speaks TLS only: a certificate authority, a
//! server certificate for 127.0.0.1 and a client certificate are made at test time
//! (the test kit's `certs`); each test starts its own etcd on free ports of 127.0.0.1 in a
//! temporary directory (the test kit's `etcd::EtcdServer`, shared with `tests/etcd.rs`)
//! and kills it on drop, pass or fail. A missing `etcd` is a failure with a message, never a skip.
//!
//! Waits are on the wall clock (etcd is a real process); each is bounded by a guard.
//!
//! `cargo test -p persistent-connection --features etcd-tls --test etcd_tls`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use persistent_connection::catalog::etcd::{
    EtcdCatalog, EtcdOptions, EtcdPublisher, EtcdTls, PublishOperation,
};
use persistent_connection::catalog::{Catalog, CatalogError, Pick};
use persistent_connection::{IoError, PersistentConnection, TcpConnection};
use persistent_connection_testkit::certs::Authority;
use persistent_connection_testkit::etcd::{EtcdServer, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Hang guard on every wait.
const GUARD: Duration = Duration::from_secs(20);
/// The request timeout of the options under test: a failure must come within it (plus a
/// margin for a loaded machine).
const TIMEOUT: Duration = Duration::from_secs(2);
const PREFIX: &str = "/services/echo/";
const TTL: Duration = Duration::from_secs(2);

// ---- certificates ----------------------------------------------------------------------

/// A certificate authority for these tests.
fn authority() -> Authority {
    Authority::new("etcd-tls test")
}

/// etcd's settings: `ca`, and a server certificate it signed for 127.0.0.1.
fn server_tls(ca: &Authority, client_cert_auth: bool) -> ServerTls {
    let server = ca.sign(&["127.0.0.1"], Some("etcd"));
    ServerTls {
        ca_pem: ca.ca_pem.clone(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
        client_cert_auth,
    }
}

async fn start_etcd(tls: ServerTls) -> EtcdServer {
    tokio::task::spawn_blocking(move || EtcdServer::start_tls(tls))
        .await
        .expect("start etcd with TLS")
}

// ---- helpers ---------------------------------------------------------------------------

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out (a hang): {what}"))
}

/// An echo server on 127.0.0.1.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A lookup that must fail: within the timeout (a margin for a loaded machine), never a
/// hang; returns the error's text.
async fn failed_lookup(catalog: &EtcdCatalog) -> String {
    let started = Instant::now();
    let result = guard("a lookup that should fail", catalog.lookup()).await;
    let took = started.elapsed();
    let error = result.expect_err("the lookup should fail");
    assert!(
        took < TIMEOUT + Duration::from_secs(3),
        "the failure took {took:?}: {error}"
    );
    assert!(
        matches!(error, CatalogError::Lookup { .. }),
        "a failed lookup, not a timeout or another kind: {error:?}"
    );
    let message = error.to_string();
    eprintln!("failed lookup after {took:?}: {message}");
    message
}

fn options(endpoint: &str, tls: EtcdTls) -> EtcdOptions {
    EtcdOptions::new([endpoint]).tls(tls).timeout(TIMEOUT)
}

// ---- tests -------------------------------------------------------------------------------

/// (a) Publish and look up over TLS, then connect to what was published.
#[tokio::test]
async fn a_copy_published_over_tls_is_listed_over_tls_and_connected_to() {
    let pki = authority();
    let etcd = start_etcd(server_tls(&pki, false)).await;
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://127.0.0.1:"), "{ep}");
    let etcd_options = options(&ep, EtcdTls::new(pki.ca_pem.clone()));

    let echo = echo_server().await;
    let publisher = guard(
        "publish",
        EtcdPublisher::publish_with(etcd_options.clone(), format!("{PREFIX}a"), echo, TTL),
    )
    .await
    .unwrap_or_else(|e| panic!("publish over TLS: {e}; etcd log:\n{}", etcd.log()));
    assert!(publisher.is_published());

    let catalog = EtcdCatalog::with_options(etcd_options.clone(), PREFIX);
    let listed = guard("lookup", catalog.lookup()).await;
    assert_eq!(listed, Ok(vec![echo]), "etcd log:\n{}", etcd.log());

    // The watch cache reaches etcd over TLS as well.
    let cached = catalog.clone().watch_cache();
    let deadline = Instant::now() + GUARD;
    while !cached.watch_cache_in_sync() {
        assert!(
            Instant::now() < deadline,
            "the watch cache never synced over TLS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        guard("cached lookup", cached.lookup()).await,
        Ok(vec![echo])
    );

    let pc = PersistentConnection::builder(
        "echo",
        catalog.clone().get_address::<IoError>(Pick::InOrder),
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .build();
    let mut conn = guard("connected", pc.connected()).await;
    assert_eq!(conn.peer_addr(), echo);
    conn.write_all(b"over a catalog behind TLS").await.unwrap();
    let mut back = [0u8; 25];
    guard("echo", conn.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"over a catalog behind TLS");
    guard("close", pc.close()).await;

    guard("withdraw", publisher.withdraw()).await.unwrap();
    let after = guard("lookup", catalog.lookup()).await;
    assert!(
        matches!(after, Err(CatalogError::Empty { .. })),
        "{after:?}"
    );
}

/// (b) A catalog that trusts another authority fails its lookup, clearly and in time; so
/// does a publisher.
#[tokio::test]
async fn a_catalog_trusting_another_authority_fails_clearly_within_its_timeout() {
    let pki = authority();
    let etcd = start_etcd(server_tls(&pki, false)).await;
    let ep = etcd.endpoint();
    let other = authority();
    let wrong = options(&ep, EtcdTls::new(other.ca_pem.clone()));

    let catalog = EtcdCatalog::with_options(wrong.clone(), PREFIX);
    for _ in 0..2 {
        let message = failed_lookup(&catalog).await;
        assert!(message.contains(PREFIX), "names the catalog: {message}");
        assert!(message.contains(&ep), "names the endpoint: {message}");
        assert!(message.contains("TLS"), "says TLS failed: {message}");
        assert!(
            message.to_lowercase().contains("certificate"),
            "says the certificate did not verify: {message}"
        );
    }

    let started = Instant::now();
    let error = guard(
        "publish with the wrong authority",
        EtcdPublisher::publish_with(wrong, format!("{PREFIX}a"), echo_server().await, TTL),
    )
    .await
    .expect_err("publishing with the wrong authority should fail");
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(3));
    assert_eq!(error.operation(), PublishOperation::Publish);
    let message = error.to_string();
    assert!(message.contains("TLS"), "says TLS failed: {message}");
    assert!(message.contains(&ep), "names the endpoint: {message}");

    // The right authority works against the same etcd.
    let right = EtcdCatalog::with_options(options(&ep, EtcdTls::new(pki.ca_pem.clone())), PREFIX);
    assert!(matches!(
        guard("lookup", right.lookup()).await,
        Err(CatalogError::Empty { .. })
    ));
}

/// A CA that is not PEM, a server name that does not match, and an `http://` endpoint with
/// TLS settings: each an ordinary failed lookup saying what is wrong, never a panic.
#[tokio::test]
async fn bad_tls_settings_are_failed_lookups_that_say_what_is_wrong() {
    let pki = authority();
    let etcd = start_etcd(server_tls(&pki, false)).await;
    let ep = etcd.endpoint();

    let not_pem =
        EtcdCatalog::with_options(options(&ep, EtcdTls::new("not a certificate")), PREFIX);
    let message = failed_lookup(&not_pem).await;
    assert!(message.contains("TLS"), "{message}");
    assert!(
        message.contains("CA certificate"),
        "names the setting: {message}"
    );

    let bad_key = EtcdCatalog::with_options(
        options(
            &ep,
            EtcdTls::new(pki.ca_pem.clone())
                .client_identity(pki.sign(&[], Some("c")).cert_pem, "nope"),
        ),
        PREFIX,
    );
    let message = failed_lookup(&bad_key).await;
    assert!(message.contains("TLS"), "{message}");
    assert!(
        message.contains("client key"),
        "names the setting: {message}"
    );

    let wrong_name = EtcdCatalog::with_options(
        options(
            &ep,
            EtcdTls::new(pki.ca_pem.clone()).domain_name("etcd.invalid"),
        ),
        PREFIX,
    );
    let message = failed_lookup(&wrong_name).await;
    assert!(message.contains("TLS"), "{message}");
    assert!(message.to_lowercase().contains("certificate"), "{message}");

    let plain = EtcdCatalog::with_options(
        options(
            &ep.replace("https://", "http://"),
            EtcdTls::new(pki.ca_pem.clone()),
        ),
        PREFIX,
    );
    let message = failed_lookup(&plain).await;
    assert!(
        message.contains("https://"),
        "says TLS needs https: {message}"
    );
}

/// (c) Mutual TLS: without a client certificate the lookup fails; with one it works.
#[tokio::test]
async fn with_client_cert_auth_a_lookup_needs_a_client_certificate() {
    let pki = authority();
    let etcd = start_etcd(server_tls(&pki, true)).await;
    let ep = etcd.endpoint();

    let anonymous =
        EtcdCatalog::with_options(options(&ep, EtcdTls::new(pki.ca_pem.clone())), PREFIX);
    let message = failed_lookup(&anonymous).await;
    assert!(message.contains(&ep), "names the endpoint: {message}");
    assert!(message.contains("TLS"), "says TLS failed: {message}");
    // R4: the same refusal reads the same every time, so a persistent connection announces
    // it once. (etcd refuses after the TLS 1.3 handshake: the client sees a closed
    // connection, a broken pipe or the alert, whichever comes first.)
    for _ in 0..8 {
        assert_eq!(
            failed_lookup(&anonymous).await,
            message,
            "a repeated refusal reads the same"
        );
    }

    // A certificate from another authority is refused as well.
    let stranger = authority().sign(&[], Some("stranger"));
    let refused = EtcdCatalog::with_options(
        options(
            &ep,
            EtcdTls::new(pki.ca_pem.clone()).client_identity(stranger.cert_pem, stranger.key_pem),
        ),
        PREFIX,
    );
    let message = failed_lookup(&refused).await;
    assert!(message.contains("TLS"), "says TLS failed: {message}");

    let client = pki.sign(&[], Some("client"));
    let mutual = options(
        &ep,
        EtcdTls::new(pki.ca_pem.clone()).client_identity(client.cert_pem, client.key_pem),
    );
    let echo = echo_server().await;
    let publisher = guard(
        "publish",
        EtcdPublisher::publish_with(mutual.clone(), format!("{PREFIX}a"), echo, TTL),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "publish with a client certificate: {e}; etcd log:\n{}",
            etcd.log()
        )
    });
    let catalog = EtcdCatalog::with_options(mutual, PREFIX);
    assert_eq!(guard("lookup", catalog.lookup()).await, Ok(vec![echo]));
    // The anonymous catalog still fails, now that there is something to list.
    failed_lookup(&anonymous).await;
    guard("withdraw", publisher.withdraw()).await.unwrap();
}

/// The client key never shows in the options' `Debug`.
#[test]
fn tls_options_print_no_private_key() {
    let pki = authority();
    let client = pki.sign(&[], Some("client"));
    let options = EtcdOptions::new(["https://127.0.0.1:2379"]).tls(
        EtcdTls::new(pki.ca_pem.clone())
            .client_identity(client.cert_pem, client.key_pem.clone())
            .domain_name("etcd.internal"),
    );
    let shown = format!("{options:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(
        !shown.contains(client.key_pem.lines().nth(1).unwrap()),
        "{shown}"
    );
    assert!(shown.contains("etcd.internal"), "{shown}");
}
