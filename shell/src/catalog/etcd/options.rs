//! How the etcd catalog and publisher reach etcd: [`EtcdOptions`] (endpoints, timeouts,
//! TLS) and the request timeout they share.

use std::fmt;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use super::*;

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
    pub(super) endpoints: Vec<String>,
    pub(super) user: Option<(String, String)>,
    pub(super) timeout: Duration,
    #[cfg(feature = "etcd-tls")]
    pub(super) tls: Option<EtcdTls>,
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
    /// [`lookup_timeout`](crate::Builder::lookup_timeout) (see the [module docs](super)).
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
    /// a client key that is not a PEM private key, an `http://` endpoint), a member whose
    /// certificate does not verify (its issuer, its name, its dates) and a member that
    /// speaks plain text are failed lookups and publishes like any other failure to reach
    /// etcd, reading `TLS with <endpoint> failed: <why and what to check>`, the same text
    /// on every try of the same cause (R4).
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
    pub(super) fn connect_options(&self) -> Result<ConnectOptions, etcd_client::Error> {
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
                    let secure = format!("https://{}", &plain[7..]);
                    return Err(tls::settings_error(format!(
                        "{plain} is not a TLS endpoint: with EtcdOptions::tls, write it \
                         {secure}; for a member that speaks plain text, leave out \
                         EtcdOptions::tls"
                    )));
                }
                let config = tls
                    .client_config(self.timeout)
                    .map_err(tls::settings_error)?;
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

    pub(super) async fn connect(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, Some(self.connect_options()?)).await
    }

    /// `e` described (see [`describe_etcd_error`]); a TLS failure reads `TLS with
    /// <endpoints> failed: <why and what to check>`, naming `endpoints` (the ones the
    /// failed request could have gone to; `TLS failed: …` if none are given, for a caller
    /// that names the endpoint itself), the same text every time for the same cause (R4).
    pub(super) fn describe(&self, endpoints: &[String], e: &etcd_client::Error) -> String {
        #[cfg(feature = "etcd-tls")]
        let with = if endpoints.is_empty() {
            String::new()
        } else {
            format!(" with {}", endpoints.join(", "))
        };
        #[cfg(feature = "etcd-tls")]
        if let Some(problem) = tls::settings_problem(e) {
            return format!("TLS{with} failed: {problem}");
        }
        let text = describe_etcd_error(e);
        #[cfg(feature = "etcd-tls")]
        if let Some(failure) = tls::failure(e, &text, self.tls.as_ref()) {
            return match failure {
                tls::Failure::Tls => match crate::conn::tls::stable_validity_text(&text) {
                    // Without the time of the verification, which changes every second.
                    Some(stable) => format!(
                        "TLS{with} failed: {stable}; {}",
                        crate::conn::tls::VALIDITY_HINT
                    ),
                    None => format!("TLS{with} failed: {text}"),
                },
                tls::Failure::ClosedInHandshake => format!(
                    "TLS{with} failed: the member closed the connection during the TLS \
                     handshake; does it serve TLS on this port (etcd's --cert-file)? A \
                     member without one speaks plain text: use an http:// endpoint and \
                     leave out EtcdOptions::tls"
                ),
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

/// A short, stable text for an etcd error: the gRPC code and message, and the root cause
/// (e.g. `Unavailable: tcp connect error (Connection refused (os error 111))`). Stable, so
/// that a repeated failure is de-duplicated (R4).
pub(super) fn describe_etcd_error(e: &etcd_client::Error) -> String {
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
