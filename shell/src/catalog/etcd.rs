//! etcd as a catalog (cargo feature `etcd`): servers publish themselves under a key prefix,
//! one key per copy, each held by a lease they keep alive; clients list the prefix before
//! every attempt.
//!
//! - [`EtcdPublisher`] (server side): registers a [`SocketAddr`] under a key with a lease
//!   and keeps the lease alive. [`publish`](EtcdPublisher::publish) fails if etcd cannot be
//!   reached now; [`start`](EtcdPublisher::start) keeps trying until it can (a server that
//!   starts before etcd, or while etcd is down), logging what happens. A copy that stops
//!   cleanly ([`EtcdPublisher::withdraw`] or drop) revokes its lease and disappears from the
//!   catalog at once; a copy that dies (`kill -9`, a crash, a lost network) stops renewing
//!   and disappears after its TTL.
//! - [`EtcdCatalog`] (client side): a [`Catalog`] listing the values under the prefix.
//!   Every lookup is one range read with a timeout; etcd being down is a failed attempt
//!   ([`CatalogError::Lookup`] or [`CatalogError::TimedOut`]), logged, de-duplicated and
//!   retried on the persistent connection's schedule, never a panic or a hang.
//! - [`EtcdOptions`]: how both reach the cluster: endpoints, user and password, TLS
//!   (cargo feature `etcd-tls`), and the timeout of each request.
//!
//! # Keys and prefixes
//!
//! A catalog's prefix is a directory: [`EtcdCatalog::new`] adds the trailing `/` when it is
//! missing, so `"/services/echo"` lists `/services/echo/copy-1` but never
//! `/services/echo-admin/…`. Publish each copy under its own key below it.
//!
//! # Timeouts: the catalog's and the builder's
//!
//! Each etcd request of the catalog (connecting included) and of the publisher is bounded
//! by [`EtcdOptions::timeout`] (default [`DEFAULT_TIMEOUT`], 2 s): a lookup that runs out
//! fails with [`CatalogError::TimedOut`] naming the catalog (with several members, each try
//! gets an equal share, and a lookup no member answered fails with
//! [`CatalogError::Lookup`] listing each member's answer), and the catalog starts its etcd
//! clients afresh (a client stuck on a dead member is replaced). The persistent connection's
//! own [`lookup_timeout`](crate::Builder::lookup_timeout) (default 10 s) is a backstop for
//! any `get_address`; **keep the catalog's timeout below it** (the defaults are). If the
//! builder's is shorter, it cuts the lookup first: the failure is then the builder's
//! [`Error::LookupTimedOut`](crate::Error::LookupTimedOut), which names no catalog, so the
//! catalog logs a warning naming itself and its timeout, and starts its client afresh all
//! the same.
//!
//! # Choosing the TTL
//!
//! A lease must outlive every etcd stall you want to ride out: while etcd cannot renew it
//! (a leader election, a member restarting, a slow disk, a network partition) the TTL is
//! all a copy has, and etcd expires every lease that runs out at once — every copy of the
//! service disappears together, although they all still run. An election alone takes one
//! to two election timeouts (1 s each by default) and a member that restarts takes
//! seconds, so take **at least 10 s** (15–30 s on a loaded or distant cluster; Kubernetes'
//! leader leases use 15 s). What a long TTL costs is small here: a copy killed without
//! withdrawing stays listed until its TTL runs out, but the picker moves on after one
//! refused connect and tries every other listed copy before it comes back to it. Short
//! TTLs (1–2 s, as in this crate's tests) only suit a local single-member etcd.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher};
//! use persistent_connection::catalog::{Catalog, Pick};
//! use persistent_connection::{IoError, PersistentConnection, TcpConnection};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdOptions::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
//!     .user("echo", "secret")
//!     .timeout(Duration::from_secs(1));
//! // In each server process: publish, and keep trying while etcd is unreachable.
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7000").await?;
//! let me: SocketAddr = "10.0.1.5:7000".parse()?;
//! let publication =
//!     EtcdPublisher::start(etcd.clone(), "/services/echo/copy-1", me, Duration::from_secs(15));
//!
//! // In the client:
//! let catalog = EtcdCatalog::with_options(etcd, "/services/echo");
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     catalog.get_address::<IoError>(Pick::Random { seed: 7 }),
//!     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
//! )
//! .build();
//! let conn = pc.connected().await;
//!
//! // The server stops cleanly: its key is gone at once.
//! publication.withdraw().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What a publisher publishes is what the catalog parses: a [`SocketAddr`], so a host name
//! cannot be published by mistake and then skipped as malformed by every client:
//!
//! ```compile_fail
//! # use std::time::Duration;
//! # use persistent_connection::catalog::etcd::EtcdPublisher;
//! # async fn demo() {
//! // Does not compile: "localhost:7000" is not a SocketAddr.
//! let p = EtcdPublisher::publish(["http://127.0.0.1:2379"], "/services/echo/a",
//!     "localhost:7000", Duration::from_secs(15)).await;
//! # }
//! ```
//!
//! # TLS
//!
//! With the cargo feature `etcd-tls`, `EtcdOptions::tls` reaches the members over TLS
//! (`https://` endpoints): `EtcdTls` gives the certificate authority that verifies them
//! (etcd's `--cert-file` must chain to it and name the endpoint's host, or the name set
//! with `EtcdTls::domain_name`) and, for etcd started with `--client-cert-auth` (or with
//! any `--trusted-ca-file`, which makes etcd ask every client for a certificate), a client
//! certificate and key it signed. The feature uses the etcd client's rustls flavour with
//! the `ring` provider, the same rustls as the `tls` feature: no OpenSSL, no second crypto
//! provider. TLS goes with user and password, or replaces them (etcd then takes the user
//! name from the client certificate's common name).
//!
//! A TLS failure is a failed lookup or publish like any other, bounded by the request
//! timeout, logged and retried: the message says `TLS with <endpoint> failed` and why
//! (e.g. `invalid peer certificate: UnknownIssuer`, a CA that is not PEM, an `http://`
//! endpoint with TLS settings). etcd refuses a client certificate (or the lack of one)
//! after the TLS 1.3 handshake, usually by closing the connection: with TLS on, a closed
//! connection says so, with a hint to check the client certificate.
//!
#![cfg_attr(feature = "etcd-tls", doc = "```no_run")]
#![cfg_attr(not(feature = "etcd-tls"), doc = "```ignore")]
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher, EtcdTls};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The CA that signed the members' certificates, and this client's certificate and key
//! // (mutual TLS; leave `client_identity` out if etcd does not check client certificates).
//! let tls = EtcdTls::new(std::fs::read("/etc/etcd/pki/ca.pem")?)
//!     .client_identity(
//!         std::fs::read("/etc/echo/etcd-client.pem")?,
//!         std::fs::read("/etc/echo/etcd-client-key.pem")?,
//!     );
//! let etcd = EtcdOptions::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
//!     .tls(tls)
//!     .timeout(Duration::from_secs(1));
//! let me: SocketAddr = "10.0.1.5:7000".parse()?;
//! let publication =
//!     EtcdPublisher::publish_with(etcd.clone(), "/services/echo/copy-1", me, Duration::from_secs(15))
//!         .await?;
//! let catalog = EtcdCatalog::with_options(etcd, "/services/echo");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, WatchOptions,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Catalog, CatalogError, with_timeout};
use crate::guard::Guarded;

/// The etcd client crate this module is built on, for direct use of etcd beside the
/// catalog (same version, no second copy in the build).
pub use etcd_client;

/// How long one etcd request of the catalog or the publisher may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach an etcd cluster, for [`EtcdCatalog`] and [`EtcdPublisher`]: the member
/// endpoints, the user to authenticate as, TLS (cargo feature `etcd-tls`,
/// `EtcdOptions::tls`), and the timeout of each request.
///
/// List every member. A catalog lookup asks the member that answered last and, if it
/// fails, each other member in turn (each try within the timeout divided by the number of
/// members), so a dead or cut-off member costs one failed try, not a failed lookup; when
/// every member fails, the error lists each member's answer in endpoint order. The
/// publisher's client spreads its requests over the members. Requests go only to members
/// that have a leader (etcd's `require_leader`), so a member cut off from its cluster's
/// majority answers at once that it has no leader, rather than after the timeout.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::catalog::etcd::EtcdOptions;
///
/// let options = EtcdOptions::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .user("echo", "secret")
///     .timeout(Duration::from_millis(800));
/// assert_eq!(options.endpoints().len(), 2);
/// assert_eq!(options.request_timeout(), Duration::from_millis(800));
/// // The password is never printed.
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct EtcdOptions {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    timeout: Duration,
    #[cfg(feature = "etcd-tls")]
    tls: Option<EtcdTls>,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EtcdOptions");
        d.field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("timeout", &self.timeout);
        #[cfg(feature = "etcd-tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

impl EtcdOptions {
    /// The cluster at `endpoints` (e.g. `["http://127.0.0.1:2379"]`), without
    /// authentication, each request bounded by [`DEFAULT_TIMEOUT`].
    pub fn new(endpoints: impl IntoIterator<Item = impl AsRef<str>>) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.as_ref().to_owned())
                .collect(),
            user: None,
            timeout: DEFAULT_TIMEOUT,
            #[cfg(feature = "etcd-tls")]
            tls: None,
        }
    }

    /// Authenticate as `name` with `password` (etcd's `auth enable`): every new client
    /// asks etcd for a token first.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> EtcdOptions {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// How long one request may take, connecting (and authenticating) included: a catalog
    /// lookup, a publish, a renewal, a withdraw. Keep it below the persistent connection's
    /// [`lookup_timeout`](crate::Builder::lookup_timeout) (see the [module docs](self)).
    pub fn timeout(mut self, timeout: Duration) -> EtcdOptions {
        self.timeout = timeout;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The timeout of one request.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// Reach the members over TLS (cargo feature `etcd-tls`), verified with `tls`'s CA
    /// certificate, presenting its client certificate if it has one: the endpoints must then
    /// be `https://` URLs. A setting that cannot work (a CA that is not a PEM certificate,
    /// a client key that is not a PEM private key, an `http://` endpoint) and a member whose
    /// certificate does not verify are failed lookups and publishes saying that TLS failed,
    /// like any other failure to reach etcd.
    ///
    /// ```no_run
    /// use persistent_connection::catalog::etcd::{EtcdOptions, EtcdTls};
    ///
    /// # fn demo() -> std::io::Result<()> {
    /// let tls = EtcdTls::new(std::fs::read("/etc/etcd/ca.pem")?)
    ///     .client_identity(std::fs::read("client.pem")?, std::fs::read("client-key.pem")?);
    /// let options = EtcdOptions::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"]).tls(tls);
    /// assert!(options.tls_settings().is_some());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "etcd-tls")]
    pub fn tls(mut self, tls: EtcdTls) -> EtcdOptions {
        self.tls = Some(tls);
        self
    }

    /// The TLS settings, if the members are reached over TLS.
    #[cfg(feature = "etcd-tls")]
    pub fn tls_settings(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The client's options. No per-request timeout in the client: every request is
    /// bounded by our own timeout (one error per operation), and a keep-alive stream must
    /// not expire. Fails if the endpoints' schemes and the TLS settings do not agree, or if
    /// the TLS settings cannot be used.
    fn connect_options(&self) -> Result<ConnectOptions, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_require_leader(true);
        if let Some((name, password)) = &self.user {
            options = options.with_user(name.clone(), password.clone());
        }
        let https = self.endpoints.iter().find(|e| {
            e.get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        });
        #[cfg(feature = "etcd-tls")]
        match &self.tls {
            Some(tls) => {
                if let Some(plain) = self.endpoints.iter().find(|e| {
                    e.get(..7)
                        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
                }) {
                    return Err(etcd_client::Error::InvalidArgs(format!(
                        "TLS settings need https:// endpoints, not {plain}"
                    )));
                }
                let config = tls.client_config(self.timeout).map_err(|problem| {
                    etcd_client::Error::InvalidArgs(format!("unusable TLS settings: {problem}"))
                })?;
                options = options.with_tls(config);
            }
            None => {
                if let Some(https) = https {
                    return Err(etcd_client::Error::InvalidArgs(format!(
                        "the https:// endpoint {https} needs TLS settings \
                         (EtcdOptions::tls, with the CA certificate that verifies it)"
                    )));
                }
            }
        }
        #[cfg(not(feature = "etcd-tls"))]
        if let Some(https) = https {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "the https:// endpoint {https} needs TLS: build with the cargo feature \
                 `etcd-tls` and set EtcdOptions::tls"
            )));
        }
        Ok(options)
    }

    async fn connect(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, Some(self.connect_options()?)).await
    }

    /// `e` described (see [`describe_etcd_error`]); a TLS failure says so first, naming
    /// `endpoints` (the ones the failed request could have gone to).
    fn describe(&self, endpoints: &[String], e: &etcd_client::Error) -> String {
        let text = describe_etcd_error(e);
        #[cfg(feature = "etcd-tls")]
        if let Some(failure) = tls::failure(e, &text, self.tls.as_ref()) {
            let with = if endpoints.is_empty() {
                String::new()
            } else {
                format!(" with {}", endpoints.join(", "))
            };
            return match failure {
                tls::Failure::Tls => format!("TLS{with} failed: {text}"),
                // One text for every way the refusal shows, so R4 announces it once.
                tls::Failure::Refused(hint) => format!(
                    "TLS{with} failed: etcd refused the client certificate or closed the \
                     connection after the handshake; {hint}"
                ),
            };
        }
        let _ = endpoints;
        text
    }
}

#[cfg(feature = "etcd-tls")]
pub use tls::EtcdTls;

#[cfg(feature = "etcd-tls")]
mod tls {
    use std::error::Error as StdError;
    use std::fmt;
    use std::time::Duration;

    use etcd_client::{Certificate, Identity, TlsOptions};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, RootCertStore};

    /// TLS to the etcd members (cargo feature `etcd-tls`), for [`EtcdOptions::tls`]: the
    /// certificate authority that verifies them, optionally a client certificate and key
    /// (mutual TLS, etcd's `--client-cert-auth`), and optionally the name their
    /// certificates are checked against.
    ///
    /// PEM texts are taken as given and checked when a client is made (at the first lookup
    /// or publish): one that does not parse is a failed lookup or publish naming it, not a
    /// panic. The private key is never printed (`Debug` shows whether there is one).
    ///
    /// Verification is rustls's (the `ring` provider, as for the crate's `tls` feature):
    /// each member's certificate must chain to the CA and be valid for the name: by
    /// default the endpoint's host, so a certificate for `127.0.0.1` must have that IP
    /// address among its subject alternative names.
    ///
    /// ```
    /// use persistent_connection::catalog::etcd::{EtcdOptions, EtcdTls};
    ///
    /// let ca = "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n";
    /// let tls = EtcdTls::new(ca).domain_name("etcd.internal");
    /// assert_eq!(tls.domain(), Some("etcd.internal"));
    /// assert!(!tls.has_client_identity());
    /// let options = EtcdOptions::new(["https://10.0.0.1:2379"]).tls(tls);
    /// assert!(format!("{options:?}").contains("etcd.internal"));
    /// ```
    ///
    /// [`EtcdOptions::tls`]: super::EtcdOptions::tls
    #[derive(Clone)]
    pub struct EtcdTls {
        ca_pem: Vec<u8>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        domain: Option<String>,
    }

    impl fmt::Debug for EtcdTls {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EtcdTls")
                .field("ca_pem_bytes", &self.ca_pem.len())
                .field("client_identity", &self.identity.is_some())
                .field("domain", &self.domain)
                .finish()
        }
    }

    impl EtcdTls {
        /// Members verified with the certificate authority in `ca_pem` (one or more
        /// PEM certificates, e.g. the contents of etcd's `--trusted-ca-file`), and no
        /// client certificate. Only these authorities are trusted, not the system's.
        pub fn new(ca_pem: impl Into<Vec<u8>>) -> EtcdTls {
            EtcdTls {
                ca_pem: ca_pem.into(),
                identity: None,
                domain: None,
            }
        }

        /// Present this client certificate (PEM, the chain if any) and its private key
        /// (PEM: PKCS#8, PKCS#1 or SEC1): for etcd started with `--client-cert-auth`, which
        /// accepts certificates its `--trusted-ca-file` signed.
        pub fn client_identity(
            mut self,
            cert_pem: impl Into<Vec<u8>>,
            key_pem: impl Into<Vec<u8>>,
        ) -> EtcdTls {
            self.identity = Some((cert_pem.into(), key_pem.into()));
            self
        }

        /// Check the members' certificates against `name` instead of each endpoint's
        /// host: for members reached by an address their certificates do not name (e.g.
        /// certificates for `etcd.internal`, endpoints by IP address).
        pub fn domain_name(mut self, name: impl Into<String>) -> EtcdTls {
            self.domain = Some(name.into());
            self
        }

        /// The name the members' certificates are checked against, if set.
        pub fn domain(&self) -> Option<&str> {
            self.domain.as_deref()
        }

        /// Whether a client certificate is presented.
        pub fn has_client_identity(&self) -> bool {
            self.identity.is_some()
        }

        /// The etcd client's TLS configuration, after checking that the PEM texts parse.
        pub(super) fn client_config(&self, timeout: Duration) -> Result<TlsOptions, String> {
            certificates("CA certificate", &self.ca_pem)?;
            let mut config = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&self.ca_pem))
                .timeout(timeout);
            if let Some((cert, key)) = &self.identity {
                certificates("client certificate", cert)?;
                PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("the client key is not a PEM private key ({e})"))?;
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &self.domain {
                config = config.domain_name(domain.clone());
            }
            Ok(config)
        }
    }

    /// Checks that `pem` holds at least one certificate, and that each parses as X.509.
    fn certificates(what: &str, pem: &[u8]) -> Result<(), String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the {what} is not valid PEM ({e})"))?;
        if certs.is_empty() {
            return Err(format!("the {what} holds no PEM certificate"));
        }
        let mut store = RootCertStore::empty();
        let (_, unparsable) = store.add_parsable_certificates(certs);
        if unparsable > 0 {
            return Err(format!(
                "the {what} holds a certificate that does not parse"
            ));
        }
        Ok(())
    }

    /// What went wrong with TLS, if anything.
    pub(super) enum Failure {
        /// TLS failed (a rustls error, tonic's handshake timeout) for a reason the text
        /// says.
        Tls,
        /// etcd refused the client's certificate, or the lack of one: by an alert, or (TLS
        /// 1.3, after the handshake) by closing the connection, whose alert is then lost.
        /// Which of the two the client sees varies from one try to the next, so the
        /// failure's text is one fixed sentence with what to check (R4).
        Refused(&'static str),
    }

    /// Whether `e` (described as `text`) is a TLS failure: a rustls error anywhere in its
    /// causes, rustls's or tonic's words for one in the text (a cause the chain does not
    /// expose); or, with TLS on, a connection etcd closed.
    pub(super) fn failure(
        e: &etcd_client::Error,
        text: &str,
        tls: Option<&EtcdTls>,
    ) -> Option<Failure> {
        let mut next: Option<&(dyn StdError + 'static)> = match e {
            etcd_client::Error::GRpcStatus(status) => Some(status),
            etcd_client::Error::TransportError(t) => Some(t),
            etcd_client::Error::IoError(io) => Some(io),
            _ => None,
        };
        let mut typed = false;
        while let Some(error) = next {
            typed |= error.is::<rustls::Error>()
                || error
                    .downcast_ref::<std::io::Error>()
                    .and_then(std::io::Error::get_ref)
                    .is_some_and(|inner| inner.is::<rustls::Error>());
            next = error.source();
        }
        const WORDS: [&str; 6] = [
            "fatal alert",
            "peer certificate",
            "peer sent no certificates",
            "peer is incompatible",
            "TLS handshake",
            "HTTP/2 was not negotiated",
        ];
        let has_identity = tls.is_some_and(EtcdTls::has_client_identity);
        if typed || WORDS.iter().any(|w| text.contains(w)) {
            // rustls's words for the alerts by which etcd refuses a client certificate.
            const REFUSALS: [&str; 4] = [
                "CertificateRequired",
                "BadCertificate",
                "UnknownCA",
                "CertificateUnknown",
            ];
            let refused = text.contains("fatal alert") && REFUSALS.iter().any(|r| text.contains(r));
            return Some(if refused {
                Failure::Refused(refusal_hint(has_identity))
            } else {
                Failure::Tls
            });
        }
        tls?;
        let lower = text.to_lowercase();
        let closed = ["connection closed", "broken pipe", "connection reset"]
            .iter()
            .any(|c| lower.contains(c));
        closed.then_some(Failure::Refused(refusal_hint(has_identity)))
    }

    /// What to check when etcd refuses the client's certificate (or its lack of one).
    fn refusal_hint(has_identity: bool) -> &'static str {
        if has_identity {
            "if etcd checks client certificates, is this one signed by its --trusted-ca-file?"
        } else {
            "if etcd checks client certificates (--client-cert-auth, or any \
             --trusted-ca-file), set one with EtcdTls::client_identity"
        }
    }
}

/// A short, stable text for an etcd error: the gRPC code and message, and the root cause
/// (e.g. `Unavailable: tcp connect error (Connection refused (os error 111))`). Stable, so
/// that a repeated failure is de-duplicated (R4).
fn describe_etcd_error(e: &etcd_client::Error) -> String {
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(status) => (
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    let mut root = None;
    while let Some(s) = source {
        root = Some(s);
        source = s.source();
    }
    if let Some(root) = root {
        let root = root.to_string();
        if !text.contains(&root) {
            text = format!("{text} ({root})");
        }
    }
    text
}

/// The live addresses under a key prefix in etcd, in key order: one key per published copy
/// (see [`EtcdPublisher`]). Values are parsed as `A` (default [`SocketAddr`]) with
/// `FromStr`.
///
/// The prefix always ends with `/` ([`new`](EtcdCatalog::new) adds it), so it never lists
/// another service whose name starts the same. A value that does not parse is skipped with
/// a warning naming its key; if no value under the prefix parses, the lookup fails with
/// [`CatalogError::Malformed`] naming the first bad key. An empty prefix fails with
/// [`CatalogError::Empty`]. Every lookup is bounded by the request timeout (default
/// [`DEFAULT_TIMEOUT`]; see the [module docs](self) on the builder's timeout).
///
/// By default every lookup is one range read of the prefix. With
/// [`watch_cache`](EtcdCatalog::watch_cache), a background task keeps a local copy of the
/// prefix fed by an etcd watch, and lookups read it while the watch is healthy.
///
/// The etcd client is made on the first lookup and made again after a failed one, so a
/// catalog created while etcd is down works once etcd is up. Cheap to clone: clones share
/// the client and the cache; the cache's task stops when the last clone is dropped.
pub struct EtcdCatalog<A = SocketAddr> {
    inner: Arc<CatalogInner>,
    _address: PhantomData<fn() -> A>,
}

#[derive(Clone, Debug)]
struct Settings {
    options: EtcdOptions,
    prefix: String,
    describe: String,
    watch_cache: bool,
}

struct CatalogInner {
    settings: Settings,
    /// One client per member (made on first use, dropped when it fails).
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    /// The member that answered last: the next lookup asks it first.
    preferred: AtomicUsize,
    /// The watch-fed copy of the prefix, when enabled.
    cache: Option<Arc<Mutex<CacheState>>>,
    /// The task feeding it, started by `watch_cache()` inside a runtime, else by the first
    /// lookup.
    cache_task: OnceLock<JoinHandle<()>>,
}

impl Drop for CatalogInner {
    fn drop(&mut self) {
        if let Some(task) = self.cache_task.get() {
            task.abort();
        }
    }
}

/// The local copy of the prefix: valid only while `synced` (a range read done and the watch
/// that follows it still running).
#[derive(Debug, Default)]
struct CacheState {
    synced: bool,
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<A> Clone for EtcdCatalog<A> {
    fn clone(&self) -> Self {
        EtcdCatalog {
            inner: self.inner.clone(),
            _address: PhantomData,
        }
    }
}

impl<A> fmt::Debug for EtcdCatalog<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCatalog")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// `prefix` as a directory: with its trailing `/`.
fn directory(prefix: String) -> String {
    if prefix.ends_with('/') {
        prefix
    } else {
        prefix + "/"
    }
}

impl EtcdCatalog<SocketAddr> {
    /// A catalog of the socket addresses under `prefix` (a `/` is added if it does not end
    /// with one), read from the etcd cluster at `endpoints` (e.g.
    /// `["http://127.0.0.1:2379"]`). Nothing is contacted until the first lookup. Use
    /// [`parse_as`](EtcdCatalog::parse_as) for another address type.
    ///
    /// ```
    /// use persistent_connection::catalog::etcd::EtcdCatalog;
    ///
    /// let catalog = EtcdCatalog::new(["http://127.0.0.1:2379"], "/services/echo");
    /// assert_eq!(catalog.prefix(), "/services/echo/"); // never /services/echo-admin/…
    /// ```
    pub fn new(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        prefix: impl Into<String>,
    ) -> EtcdCatalog<SocketAddr> {
        EtcdCatalog::with_options(EtcdOptions::new(endpoints), prefix)
    }

    /// A catalog of the socket addresses under `prefix` (a `/` is added if it does not end
    /// with one), in the etcd cluster reached with `options` (user, password, timeout).
    pub fn with_options(options: EtcdOptions, prefix: impl Into<String>) -> EtcdCatalog {
        let prefix = directory(prefix.into());
        EtcdCatalog::from_settings(Settings {
            options,
            describe: format!("etcd prefix {prefix:?}"),
            prefix,
            watch_cache: false,
        })
    }
}

impl<A> EtcdCatalog<A> {
    fn from_settings(settings: Settings) -> EtcdCatalog<A> {
        let cache = settings
            .watch_cache
            .then(|| Arc::new(Mutex::new(CacheState::default())));
        let members = settings.options.endpoints.len().max(1);
        let inner = Arc::new(CatalogInner {
            settings,
            clients: tokio::sync::Mutex::new(vec![None; members]),
            preferred: AtomicUsize::new(0),
            cache,
            cache_task: OnceLock::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            inner.start_watch();
        }
        EtcdCatalog {
            inner,
            _address: PhantomData,
        }
    }

    /// The same catalog, with values parsed as `B`.
    pub fn parse_as<B>(self) -> EtcdCatalog<B> {
        EtcdCatalog {
            inner: self.inner,
            _address: PhantomData,
        }
    }

    /// How long a lookup may take (connecting included) before the attempt fails with
    /// [`CatalogError::TimedOut`]: sets [`EtcdOptions::timeout`]. Keep it below the
    /// persistent connection's [`lookup_timeout`](crate::Builder::lookup_timeout). Returns a
    /// new catalog (clones made before keep their setting).
    pub fn lookup_timeout(self, timeout: Duration) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.options.timeout = timeout;
        EtcdCatalog::from_settings(settings)
    }

    /// Keep a local copy of the prefix, fed by an etcd watch, and answer lookups from it:
    /// a lookup is then a local read (no round trip to etcd). The watch task starts at
    /// once when called inside a Tokio runtime (else at the first lookup, on the runtime
    /// that runs it), so the copy is usually in sync before the first attempt; it stops
    /// when the last clone of the catalog is dropped.
    ///
    /// The copy is used only while the watch is healthy: the connection to etcd is checked
    /// with HTTP/2 keep-alives every second, and every half request timeout the cluster
    /// must vouch for the copy (a linearizable count of the prefix, which fails at once
    /// without quorum). Before the first sync and whenever the watch or a check fails,
    /// lookups fall back to a range read, so they fail while etcd is down as without the
    /// cache. The copy can thus be served for at most about one request timeout after the
    /// cluster stopped vouching for it (a member died, quorum was lost); a range read
    /// never is. Returns a new catalog (clones made before keep their setting).
    pub fn watch_cache(self) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.watch_cache = true;
        EtcdCatalog::from_settings(settings)
    }

    /// Whether lookups are answered from the watch cache now: it is enabled, synced, and
    /// its watch is running.
    pub fn watch_cache_in_sync(&self) -> bool {
        self.inner
            .cache
            .as_ref()
            .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).synced)
    }

    /// The key prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    /// How the catalog reaches etcd.
    pub fn options(&self) -> &EtcdOptions {
        &self.inner.settings.options
    }
}

impl CatalogInner {
    /// One range read of the prefix, from one member: the one that answered last, then, if
    /// it fails, each other member in turn (each try bounded by the timeout divided by the
    /// number of members). A failed member's client is dropped, so the next try of it makes
    /// a new one. When every member fails, the error lists each member's answer in endpoint
    /// order: stable while the members' states are, so a repeated failure is announced once
    /// (R4).
    async fn list(&self) -> Result<Vec<KeyValue>, CatalogError> {
        let s = &self.settings;
        let n = s.options.endpoints.len();
        if n <= 1 {
            return self
                .list_at(0)
                .await
                .map_err(|message| CatalogError::Lookup {
                    catalog: s.describe.clone(),
                    message,
                });
        }
        let per_try = s.options.timeout / u32::try_from(n).unwrap_or(u32::MAX);
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let outcome = match tokio::time::timeout(per_try, self.list_at(i)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.forget(i).await;
                    Err(format!("timed out after {per_try:?}"))
                }
            };
            match outcome {
                Ok(kvs) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(kvs);
                }
                Err(message) => failures.push((i, message)),
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        let answers: Vec<String> = failures
            .into_iter()
            .map(|(i, message)| format!("{}: {message}", s.options.endpoints[i]))
            .collect();
        Err(CatalogError::Lookup {
            catalog: s.describe.clone(),
            message: format!("no member answered ({})", answers.join("; ")),
        })
    }

    /// One range read from member `i` (its client made if needed); the error's text.
    async fn list_at(&self, i: usize) -> Result<Vec<KeyValue>, String> {
        let s = &self.settings;
        let endpoint = s.options.endpoints.get(i..=i).unwrap_or_default();
        // With several members, `list` names the member of each answer.
        let named = if s.options.endpoints.len() > 1 {
            &[]
        } else {
            endpoint
        };
        let mut slots = self.clients.lock().await;
        let mut client = match slots.get(i).cloned().flatten() {
            Some(c) => c,
            None => {
                let c =
                    async { Client::connect(endpoint, Some(s.options.connect_options()?)).await }
                        .await
                        .map_err(|e| s.options.describe(named, &e))?;
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(c.clone());
                }
                c
            }
        };
        drop(slots);
        match client
            .get(s.prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(mut response) => Ok(response.take_kvs()),
            Err(e) => {
                self.forget(i).await;
                Err(s.options.describe(named, &e))
            }
        }
    }

    /// Drops member `i`'s client: the next try makes a new one.
    async fn forget(&self, i: usize) {
        if let Some(slot) = self.clients.lock().await.get_mut(i) {
            *slot = None;
        }
    }

    /// Drops every client (a lookup cut short may have left one stuck on a dead member);
    /// skipped if a lookup holds them now.
    fn forget_all_now(&self) {
        if let Ok(mut slots) = self.clients.try_lock() {
            slots.iter_mut().for_each(|slot| *slot = None);
        }
    }

    /// Starts the watch task, if the cache is enabled and the task is not running yet.
    fn start_watch(&self) {
        if let Some(cache) = &self.cache {
            self.cache_task.get_or_init(|| {
                let settings = self.settings.clone();
                let cache = cache.clone();
                let unsync = cache.clone();
                tokio::spawn(guarded_task(
                    "etcd watch",
                    move || watch_prefix(settings.clone(), cache.clone()),
                    move || unsync.lock().unwrap_or_else(|p| p.into_inner()).synced = false,
                ))
            });
        }
    }

    /// The cached listing, parsed, if the cache is enabled and in sync; starts the watch
    /// task on first use.
    fn cached<A>(&self) -> Option<Result<Vec<A>, CatalogError>>
    where
        A: FromStr,
        A::Err: fmt::Display,
    {
        let cache = self.cache.as_ref()?;
        self.start_watch();
        let state = cache.lock().unwrap_or_else(|p| p.into_inner());
        if !state.synced {
            return None;
        }
        Some(parse_listing(
            &self.settings.describe,
            state.kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ))
    }
}

/// Runs the task made by `make` under the crate's panic guard (R13): if it panics, the
/// panic is logged at warn, `on_panic` runs, and a fresh task is made after a second. The
/// publisher's and the watch's tasks run no user code, only the etcd client and this
/// module; the guard keeps a panic there from silently ending them (a key no longer
/// renewed, a cache no longer fed).
async fn guarded_task<F, Fut>(what: &'static str, mut make: F, on_panic: impl Fn())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match Guarded::boxed(what, make()).await {
            Ok(()) => return,
            Err(panic) => {
                on_panic();
                tracing::warn!(%panic, "the {what} task panicked; starting it again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The watch task: range read, then watch from the next revision, applying every change
/// to the cache; on any error, mark the cache out of sync and start over after a pause.
async fn watch_prefix(settings: Settings, cache: Arc<Mutex<CacheState>>) {
    let pause = Duration::from_millis(200);
    loop {
        let result = sync_and_watch(&settings, &cache).await;
        cache.lock().unwrap_or_else(|p| p.into_inner()).synced = false;
        if let Err(e) = result {
            tracing::warn!(catalog = %settings.describe, error = %e, "etcd watch broke; resyncing");
        }
        tokio::time::sleep(pause).await;
    }
}

async fn sync_and_watch(
    settings: &Settings,
    cache: &Arc<Mutex<CacheState>>,
) -> Result<(), CatalogError> {
    let describe = &settings.describe;
    let err = |e: etcd_client::Error| CatalogError::Lookup {
        catalog: describe.clone(),
        message: settings.options.describe(&settings.options.endpoints, &e),
    };
    let timeout = settings.options.timeout;
    let options = settings
        .options
        .connect_options()
        .map_err(err)?
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true);
    let read = async {
        let mut client = Client::connect(&settings.options.endpoints, Some(options))
            .await
            .map_err(err)?;
        let mut response = client
            .get(
                settings.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(err)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let kvs = response.take_kvs();
        let stream = client
            .watch(
                settings.prefix.as_bytes(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(err)?;
        Ok::<_, CatalogError>((client, kvs, stream))
    };
    let (mut client, kvs, mut stream) = with_timeout(|| describe.clone(), timeout, read).await?;
    {
        let mut state = cache.lock().unwrap_or_else(|p| p.into_inner());
        state.kvs = kvs
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        state.synced = true;
    }
    // Every half timeout, the cluster must vouch for the copy: a linearizable count of the
    // prefix, which fails at once without quorum (no leader). A watch stream alone can stay
    // open for seconds on a member that died or lost its cluster (found by drill 6).
    let every = (timeout / 2).max(Duration::from_millis(50));
    let mut vouch = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    vouch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let response = tokio::select! {
            message = stream.message() => match message.map_err(err)? {
                Some(response) => response,
                None => break,
            },
            _ = vouch.tick() => {
                let count = client.get(
                    settings.prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                );
                match tokio::time::timeout(every, count).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(err(e)),
                    Err(_) => {
                        return Err(CatalogError::TimedOut {
                            catalog: describe.clone(),
                            after: every,
                        });
                    }
                }
            }
        };
        if response.canceled() {
            return Err(CatalogError::Lookup {
                catalog: describe.clone(),
                message: format!("watch cancelled: {}", response.cancel_reason()),
            });
        }
        let mut state = cache.lock().unwrap_or_else(|p| p.into_inner());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    state.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                }
                EventType::Delete => {
                    state.kvs.remove(kv.key());
                }
            }
        }
    }
    Err(CatalogError::Lookup {
        catalog: describe.clone(),
        message: "watch stream ended".to_owned(),
    })
}

/// Parses a listing of `(key, value)` pairs: the values that parse as `A`, in key order; a
/// warning for each that does not.
fn parse_listing<'a, A>(
    describe: &str,
    entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Vec<A>, CatalogError>
where
    A: FromStr,
    A::Err: fmt::Display,
{
    let mut listed = Vec::new();
    let mut first_bad = None;
    for (key, value) in entries {
        let value = String::from_utf8_lossy(value);
        match value.trim().parse::<A>() {
            Ok(a) => listed.push(a),
            Err(e) => {
                let key = String::from_utf8_lossy(key).into_owned();
                tracing::warn!(
                    catalog = describe,
                    key = %key,
                    value = %value,
                    error = %e,
                    "skipping a malformed address in the catalog"
                );
                first_bad.get_or_insert(CatalogError::Malformed {
                    key,
                    value: value.into_owned(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if listed.is_empty() {
        return Err(first_bad.unwrap_or_else(|| CatalogError::Empty {
            catalog: describe.to_owned(),
        }));
    }
    Ok(listed)
}

/// Armed while a lookup runs: a lookup dropped before it finished was cut short by its
/// caller (the builder's lookup timeout, or a close). It says so in the log, naming the
/// catalog and its own timeout, and starts the client afresh as the catalog's own timeout
/// would have (the client may be stuck on a dead member).
struct LookupInFlight {
    inner: Arc<CatalogInner>,
    started: tokio::time::Instant,
    armed: bool,
}

impl Drop for LookupInFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let settings = &self.inner.settings;
        tracing::warn!(
            catalog = %settings.describe,
            after = ?self.started.elapsed(),
            lookup_timeout = ?settings.options.timeout,
            "etcd lookup cancelled before it finished: the persistent connection's \
             lookup_timeout is shorter than this catalog's (set it above), or it was closed; \
             the catalog's etcd client is started afresh"
        );
        self.inner.forget_all_now();
    }
}

impl<A> Catalog for EtcdCatalog<A>
where
    A: FromStr + Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    A::Err: fmt::Display,
{
    type Address = A;

    fn lookup(&self) -> impl Future<Output = Result<Vec<A>, CatalogError>> + Send {
        let inner = self.inner.clone();
        async move {
            if let Some(listed) = inner.cached() {
                return listed;
            }
            let mut in_flight = LookupInFlight {
                inner: inner.clone(),
                started: tokio::time::Instant::now(),
                armed: true,
            };
            let describe = inner.settings.describe.clone();
            let timeout = inner.settings.options.timeout;
            let listed = with_timeout(|| describe.clone(), timeout, inner.list()).await;
            in_flight.armed = false;
            match listed {
                Ok(kvs) => parse_listing(
                    &inner.settings.describe,
                    kvs.iter().map(|kv| (kv.key(), kv.value())),
                ),
                Err(e) => {
                    if matches!(e, CatalogError::TimedOut { .. }) {
                        // A client may be stuck on a dead endpoint: start afresh.
                        inner.forget_all_now();
                    }
                    Err(e)
                }
            }
        }
    }
}

/// What a publisher was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishOperation {
    /// Granting a lease and writing the key under it.
    Publish,
    /// Revoking the lease (and so deleting the key).
    Withdraw,
}

impl fmt::Display for PublishOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishOperation::Publish => "publish",
            PublishOperation::Withdraw => "withdraw",
        })
    }
}

/// Why [`EtcdPublisher::publish`] or [`EtcdPublisher::withdraw`] failed: which operation, on
/// which key, and the etcd error or the timeout.
///
/// ```
/// # use persistent_connection::catalog::etcd::{PublishError, PublishOperation};
/// # fn show(e: PublishError) {
/// // e.g. `etcd publish of key "/services/echo/a" failed: Unavailable: tcp connect error (...)`
/// //   or `etcd withdraw of key "/services/echo/a" timed out after 2s`
/// println!("{e}");
/// assert!(matches!(e.operation(), PublishOperation::Publish | PublishOperation::Withdraw));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    operation: PublishOperation,
    key: String,
    timed_out: Option<Duration>,
    message: String,
}

impl PublishError {
    fn etcd(operation: PublishOperation, key: &str, message: String) -> PublishError {
        PublishError {
            operation,
            key: key.to_owned(),
            timed_out: None,
            message,
        }
    }

    fn timed_out(operation: PublishOperation, key: &str, after: Duration) -> PublishError {
        PublishError {
            operation,
            key: key.to_owned(),
            timed_out: Some(after),
            message: String::new(),
        }
    }

    /// What failed.
    pub fn operation(&self) -> PublishOperation {
        self.operation
    }

    /// The key published or withdrawn.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The timeout, if the operation ran out of time (rather than failed).
    pub fn timeout(&self) -> Option<Duration> {
        self.timed_out
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PublishError { operation, key, .. } = self;
        match self.timed_out {
            Some(after) => write!(
                f,
                "etcd {operation} of key {key:?} timed out after {after:?}"
            ),
            None => write!(
                f,
                "etcd {operation} of key {key:?} failed: {}",
                self.message
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// Runs one publisher operation under the request timeout of `options`.
async fn bounded<T>(
    operation: PublishOperation,
    key: &str,
    options: &EtcdOptions,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, PublishError> {
    let timeout = options.timeout;
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(PublishError::etcd(
            operation,
            key,
            options.describe(&options.endpoints, &e),
        )),
        Err(_) => Err(PublishError::timed_out(operation, key, timeout)),
    }
}

/// A server's entry in an etcd catalog: `key = address`, attached to a lease of `ttl` that a
/// background task keeps alive (renewing every third of the TTL).
///
/// - [`publish`](EtcdPublisher::publish) publishes now or fails;
///   [`start`](EtcdPublisher::start) keeps trying until etcd answers (see
///   [`wait_published`](EtcdPublisher::wait_published)).
/// - [`withdraw`](EtcdPublisher::withdraw) (or dropping the publisher inside a Tokio
///   runtime) revokes the lease: the key is deleted at once.
/// - If the process dies, renewals stop and etcd deletes the key when the TTL runs out.
/// - If etcd is unreachable for a while, the task keeps trying; if the lease expired
///   meanwhile (or was revoked by someone else), it grants a new one and writes the key
///   again, so a copy that outlives an etcd outage is listed again once etcd is back.
///
/// Its task logs what happens (`tracing`): `published in etcd` at info (with the lease
/// id and how many tries it took), a failure at warn the first time it is seen and at
/// debug while it repeats, `etcd lease is gone; publishing again` at warn.
///
/// etcd rounds the TTL up to whole seconds and to its own minimum (about 1.5 × its
/// election timeout); see the [module docs](self) on choosing it (10 s or more in
/// production). Give each copy its own key under the catalog's prefix (two publishers of
/// one key overwrite each other).
pub struct EtcdPublisher {
    key: String,
    lease: watch::Receiver<i64>,
    client: Arc<Mutex<Option<Client>>>,
    options: EtcdOptions,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for EtcdPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdPublisher")
            .field("key", &self.key)
            .field("lease", &self.lease_id())
            .finish_non_exhaustive()
    }
}

fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Grants a lease and writes `key = value` under it; returns the lease id.
async fn register(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        let _ = client.lease_revoke(lease).await;
        return Err(e);
    }
    Ok(lease)
}

impl EtcdPublisher {
    /// Publishes `address` under `key` with a lease of `ttl`, in the etcd cluster at
    /// `endpoints`, and starts keeping it alive on the current Tokio runtime. Fails if
    /// etcd cannot be reached within [`DEFAULT_TIMEOUT`]; use
    /// [`start`](EtcdPublisher::start) to keep trying instead.
    pub async fn publish(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> Result<EtcdPublisher, PublishError> {
        EtcdPublisher::publish_with(EtcdOptions::new(endpoints), key, address, ttl).await
    }

    /// [`publish`](EtcdPublisher::publish) with the cluster reached through `options`
    /// (user, password, timeout).
    pub async fn publish_with(
        options: EtcdOptions,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> Result<EtcdPublisher, PublishError> {
        let key = key.into();
        let value = address.to_string();
        let ttl_secs = ttl_seconds(ttl);
        let op = PublishOperation::Publish;
        let (client, lease) = bounded(op, &key, &options, async {
            let mut client = options.connect().await?;
            let lease = register(&mut client, &key, &value, ttl_secs).await?;
            Ok((client, lease))
        })
        .await?;
        tracing::info!(key = %key, lease, ttl = ttl_secs, "published in etcd");
        Ok(EtcdPublisher::spawn(
            options,
            key,
            value,
            ttl_secs,
            Some(client),
            lease,
        ))
    }

    /// Publishes `address` under `key` with a lease of `ttl` in the background, trying until
    /// etcd answers (every second, or every third of the TTL if shorter), then keeping it
    /// alive: for a server that may start before etcd, or while etcd is down. Its progress is
    /// in the logs; [`wait_published`](EtcdPublisher::wait_published) waits for the first
    /// success. Must be called inside a Tokio runtime (it spawns its task there).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use persistent_connection::catalog::etcd::{EtcdOptions, EtcdPublisher};
    /// # async fn demo() {
    /// let etcd = EtcdOptions::new(["http://127.0.0.1:2379"]);
    /// let me = "10.0.1.5:7000".parse().unwrap();
    /// let publisher = EtcdPublisher::start(etcd, "/services/echo/copy-1", me, Duration::from_secs(15));
    /// // Serve at once; the key appears as soon as etcd answers.
    /// publisher.wait_published().await;
    /// assert_ne!(publisher.lease_id(), 0);
    /// # }
    /// ```
    pub fn start(
        options: EtcdOptions,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> EtcdPublisher {
        let key = key.into();
        tracing::info!(key = %key, "publishing in etcd");
        EtcdPublisher::spawn(options, key, address.to_string(), ttl_seconds(ttl), None, 0)
    }

    fn spawn(
        options: EtcdOptions,
        key: String,
        value: String,
        ttl: i64,
        client: Option<Client>,
        lease: i64,
    ) -> EtcdPublisher {
        let (lease_tx, lease_rx) = watch::channel(lease);
        let client = Arc::new(Mutex::new(client));
        let keeper = Keeper {
            options: options.clone(),
            key: key.clone(),
            value,
            ttl,
            lease: Arc::new(lease_tx),
            client: client.clone(),
            last_problem: None,
            tries: 0,
        };
        let task = guarded_task("etcd publisher", move || keeper.clone().run(), || {});
        EtcdPublisher {
            key,
            lease: lease_rx,
            client,
            options,
            keeper: Some(tokio::spawn(task)),
        }
    }

    /// The key this copy is published under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the lease that holds the key now (it changes if the lease had to be
    /// granted again); 0 until the key is first published.
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Whether the key has been published (at least once).
    pub fn is_published(&self) -> bool {
        self.lease_id() != 0
    }

    /// Waits until the key has been published (at once after
    /// [`publish`](EtcdPublisher::publish)).
    pub async fn wait_published(&self) {
        let mut lease = self.lease.clone();
        // An error means the task is gone (withdrawn): nothing more to wait for.
        let _ = lease.wait_for(|id| *id != 0).await;
    }

    /// Stops keeping the lease alive and revokes it: the key is deleted at once. Fails if
    /// etcd cannot be reached within the request timeout; the key then disappears when the
    /// TTL runs out. A publisher that never got to publish has nothing to withdraw.
    pub async fn withdraw(mut self) -> Result<(), PublishError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let lease = self.lease_id();
        if lease == 0 {
            tracing::info!(key = %self.key, "withdrawn before it was ever published in etcd");
            return Ok(());
        }
        let stored = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let options = &self.options;
        bounded(PublishOperation::Withdraw, &self.key, options, async {
            let mut client = match stored {
                Some(c) => c,
                None => options.connect().await?,
            };
            client.lease_revoke(lease).await.map(drop)
        })
        .await?;
        tracing::info!(key = %self.key, "withdrawn from etcd");
        Ok(())
    }
}

impl Drop for EtcdPublisher {
    /// Stops the renewals and, inside a Tokio runtime, revokes the lease in the background
    /// (bounded by the request timeout). Outside a runtime the key lasts until its TTL.
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        let lease = self.lease_id();
        if lease == 0 {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stored = self
                .client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let options = self.options.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(options.timeout, async {
                    let mut client = match stored {
                        Some(c) => c,
                        None => options.connect().await?,
                    };
                    client.lease_revoke(lease).await.map(drop)
                })
                .await;
            });
        }
    }
}

/// The publisher's task: gets a client and a lease (trying until etcd answers), then renews
/// the lease every third of the TTL over one keep-alive stream; when the stream breaks,
/// starts over after a pause; whenever the lease turns out to be gone (expired during an
/// outage, or revoked by someone else), registers again. Cloned to start afresh after a
/// panic (the lease and the client are shared).
#[derive(Clone)]
struct Keeper {
    options: EtcdOptions,
    key: String,
    value: String,
    ttl: i64,
    lease: Arc<watch::Sender<i64>>,
    /// Shared with the publisher, for `withdraw`.
    client: Arc<Mutex<Option<Client>>>,
    /// The last failure logged at warn: a repeat goes to debug (no log storm while etcd is
    /// down).
    last_problem: Option<String>,
    /// Failed tries to publish since the last success.
    tries: u32,
}

impl Keeper {
    fn report(&mut self, problem: String) {
        if self.last_problem.as_ref() == Some(&problem) {
            tracing::debug!(key = %self.key, "{problem}; retrying");
        } else {
            tracing::warn!(key = %self.key, "{problem}; retrying");
            self.last_problem = Some(problem);
        }
    }

    fn stored_client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store_client(&self, client: Option<Client>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// Connects if needed, grants a lease and writes the key; `false` after a failure.
    async fn register(&mut self) -> bool {
        let stored = self.stored_client();
        let options = &self.options;
        let (key, value, ttl) = (&self.key, &self.value, self.ttl);
        let result = bounded(PublishOperation::Publish, key, options, async {
            let mut client = match stored {
                Some(c) => c,
                None => options.connect().await?,
            };
            let lease = register(&mut client, key, value, ttl).await?;
            Ok((client, lease))
        })
        .await;
        match result {
            Ok((client, lease)) => {
                self.store_client(Some(client));
                self.lease.send_replace(lease);
                tracing::info!(
                    key = %self.key,
                    lease,
                    ttl = self.ttl,
                    failed_tries = self.tries,
                    "published in etcd"
                );
                self.tries = 0;
                self.last_problem = None;
                true
            }
            Err(e) => {
                // A fresh client next time: this one may be stuck on a dead member.
                self.store_client(None);
                self.tries += 1;
                self.report(e.to_string());
                false
            }
        }
    }

    /// Renews the lease over one keep-alive stream until it breaks; `true` if etcd says the
    /// lease is gone.
    async fn renew(&mut self, client: &mut Client, id: i64, every: Duration) -> bool {
        let timeout = self.options.timeout.max(every);
        let opened = tokio::time::timeout(timeout, client.lease_keep_alive(id)).await;
        match opened {
            Ok(Ok((mut keeper, mut responses))) => loop {
                // Opening renewed once already.
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return false;
                }
                match tokio::time::timeout(timeout, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return true,
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return false,
                }
            },
            // The client's word for a keep-alive answered with a TTL of 0.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => true,
            Ok(Err(e)) => {
                let problem = format!(
                    "etcd renewal of key {:?} failed: {}",
                    self.key,
                    self.options.describe(&self.options.endpoints, &e)
                );
                self.report(problem);
                false
            }
            Err(_) => {
                let problem = format!(
                    "etcd renewal of key {:?} timed out after {timeout:?}",
                    self.key
                );
                self.report(problem);
                false
            }
        }
    }

    async fn run(mut self) {
        let ttl = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1));
        let every = (ttl / 3).max(Duration::from_millis(100));
        let retry = every.min(Duration::from_secs(1));
        let mut lease_gone = *self.lease.borrow() == 0;
        loop {
            if lease_gone {
                if *self.lease.borrow() != 0 {
                    tracing::warn!(key = %self.key, lease = *self.lease.borrow(), "etcd lease is gone; publishing again");
                }
                if self.register().await {
                    lease_gone = false;
                } else {
                    tokio::time::sleep(retry).await;
                }
                continue;
            }
            let id = *self.lease.borrow();
            let Some(mut client) = self.stored_client() else {
                lease_gone = true;
                continue;
            };
            lease_gone = self.renew(&mut client, id, every).await;
            if !lease_gone {
                // Ask whether the lease itself still exists: etcd answers a TTL of -1 for a
                // lease that expired or was revoked.
                let asked = tokio::time::timeout(
                    self.options.timeout.max(every),
                    client.lease_time_to_live(id, None),
                )
                .await;
                lease_gone = matches!(asked, Ok(Ok(r)) if r.ttl() <= 0);
            }
            if lease_gone {
                continue;
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(300)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_seconds(Duration::MAX), i64::MAX);
    }

    /// A panic in a guarded task is logged and the task is made afresh, after `on_panic`.
    #[tokio::test(start_paused = true)]
    async fn a_guarded_task_that_panics_starts_again() {
        let runs = Arc::new(Mutex::new(0));
        let panics = Arc::new(Mutex::new(0));
        let (r, p) = (runs.clone(), panics.clone());
        guarded_task(
            "test",
            move || {
                let r = r.clone();
                async move {
                    let n = {
                        let mut runs = r.lock().unwrap();
                        *runs += 1;
                        *runs
                    };
                    assert!(n >= 3, "run {n} panics");
                }
            },
            move || *p.lock().unwrap() += 1,
        )
        .await;
        assert_eq!(*runs.lock().unwrap(), 3);
        assert_eq!(*panics.lock().unwrap(), 2);
    }

    #[test]
    fn a_prefix_is_a_directory() {
        assert_eq!(directory("/services/echo".into()), "/services/echo/");
        assert_eq!(directory("/services/echo/".into()), "/services/echo/");
        assert_eq!(directory(String::new()), "/");
    }
}
