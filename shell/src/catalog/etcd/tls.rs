//! TLS to the etcd members (cargo feature `etcd-tls`): [`EtcdTls`].

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

    /// The etcd client's TLS configuration, after checking that the PEM texts parse; else
    /// what is wrong and what to give instead.
    pub(super) fn client_config(&self, timeout: Duration) -> Result<TlsOptions, String> {
        certificates("CA certificate", &self.ca_pem).map_err(|problem| {
            format!(
                "{problem}: give EtcdTls::new the PEM text of the certificate authority \
                 that signed the members' certificates (etcd's --cert-file)"
            )
        })?;
        let mut config = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(timeout);
        if let Some((cert, key)) = &self.identity {
            certificates("client certificate", cert).map_err(|problem| {
                format!("{problem}: give EtcdTls::client_identity the client's PEM certificate")
            })?;
            PrivateKeyDer::from_pem_slice(key).map_err(|e| {
                format!(
                    "the client key is not a PEM private key ({e}): give \
                     EtcdTls::client_identity the key of the client certificate, in PEM"
                )
            })?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        Ok(config)
    }
}

/// Checks that `pem` holds at least one certificate, and that each parses as X.509.
pub(super) fn certificates(what: &str, pem: &[u8]) -> Result<(), String> {
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

/// TLS settings that cannot work (a CA that is not PEM, an `http://` endpoint with TLS):
/// the error's source, so that [`settings_problem`] tells it from etcd's own errors.
#[derive(Debug)]
struct Settings(String);

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Settings {}

/// An error for TLS settings that cannot work: `problem` says what is wrong and what to
/// give instead.
pub(super) fn settings_error(problem: String) -> etcd_client::Error {
    etcd_client::Error::IoError(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        Settings(problem),
    ))
}

/// What is wrong with the TLS settings, if `e` is [`settings_error`]'s.
pub(super) fn settings_problem(e: &etcd_client::Error) -> Option<&str> {
    match e {
        etcd_client::Error::IoError(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Settings>())
            .map(|Settings(problem)| problem.as_str()),
        _ => None,
    }
}

/// What went wrong with TLS, if anything.
pub(super) enum Failure {
    /// TLS failed (a rustls error, tonic's handshake timeout) for a reason the text
    /// says.
    Tls,
    /// The member closed or reset the connection before the handshake completed: a
    /// member that speaks plain text on that port. By timing the client sees an end of
    /// file ("tls handshake eof") or a reset, so the failure's text is one fixed sentence
    /// with what to check (R4).
    ClosedInHandshake,
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
    // Connecting failed (tonic reports a failed connect, TLS handshake included, as
    // `Unavailable`); a refusal after the handshake fails the request instead.
    let connecting = match e {
        etcd_client::Error::GRpcStatus(status) => i32::from(status.code()) == UNAVAILABLE,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    };
    let mut typed = false;
    let mut closed = false;
    while let Some(error) = next {
        let io = error.downcast_ref::<std::io::Error>();
        typed |= error.is::<rustls::Error>()
            || io
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>());
        closed |= io.is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::NotConnected
            )
        });
        next = error.source();
    }
    if tls.is_some() && !typed && (text.contains("tls handshake eof") || connecting && closed) {
        return Some(Failure::ClosedInHandshake);
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

/// gRPC's code `Unavailable`.
const UNAVAILABLE: i32 = 14;

/// What to check when etcd refuses the client's certificate (or its lack of one).
pub(super) fn refusal_hint(has_identity: bool) -> &'static str {
    if has_identity {
        "if etcd checks client certificates, is this one signed by its --trusted-ca-file?"
    } else {
        "if etcd checks client certificates (--client-cert-auth, or any \
         --trusted-ca-file), set one with EtcdTls::client_identity"
    }
}
