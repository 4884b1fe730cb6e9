//! Certificates made at test time (rcgen): a certificate authority ([`Authority`]) and
//! the certificates it signs, as PEM; [`make`] for an authority and one server certificate
//! in one call; [`files`], this process's authority and a certificate for `localhost` and
//! 127.0.0.1 written as PEM files for servers that read files (`redis-server`); and, with
//! the `tls` feature, [`connector`], a client that trusts it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority that signs certificates.
pub struct Authority {
    /// Its own certificate, in PEM: what a client or server that trusts it is given.
    pub ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Authority {
    /// A new authority whose name says `label`, this process and a counter: each one has a
    /// name of its own, so that a certificate from another one is an unknown issuer to a
    /// client, not a bad signature.
    pub fn new(label: &str) -> Authority {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("{label} CA {} #{n}", std::process::id()),
        );
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        Authority {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// A certificate for `names` (an IP address becomes an IP SAN), named `common_name`
    /// when given.
    pub fn sign(&self, names: &[&str], common_name: Option<&str>) -> Signed {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        if let Some(cn) = common_name {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Signed {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A new certificate authority and a server certificate it signed for `names`: the PEMs
/// of the authority, the certificate and its key.
pub fn make(names: &[&str]) -> (String, String, String) {
    let ca = Authority::new("persistent-connection test");
    let server = ca.sign(names, None);
    (ca.ca_pem, server.cert_pem, server.key_pem)
}

/// The PEM texts of [`files`] and the files they were written to.
#[derive(Debug)]
pub struct Pki {
    /// The certificate authority's certificate.
    pub ca_pem: String,
    /// The server's certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// Where `ca_pem` is written.
    pub ca: PathBuf,
    /// Where `cert_pem` is written.
    pub cert: PathBuf,
    /// Where `key_pem` is written.
    pub key: PathBuf,
}

/// This process's certificate authority and a server certificate for `localhost` and
/// 127.0.0.1, made and written to a temporary directory on first use.
pub fn files() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let (ca_pem, cert_pem, key_pem) = make(&["localhost", "127.0.0.1"]);
        let dir = std::env::temp_dir().join(format!("pc-testkit-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("certificate file");
            path
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            cert: write("server.pem", &cert_pem),
            key: write("server.key", &key_pem),
            ca_pem,
            cert_pem,
            key_pem,
        }
    })
}

/// A TLS connector that trusts [`files`]' authority and verifies the name `localhost`.
#[cfg(feature = "tls")]
pub fn connector() -> persistent_connection::conn::tls::TlsConnector {
    persistent_connection::conn::tls::TlsConnector::from_pem_roots(
        files().ca_pem.as_bytes(),
        "localhost",
    )
    .expect("the authority's certificate parses")
}
