//! TLS connections (cargo feature `tls`): rustls through `tokio-rustls`, over a
//! [`TcpConnection`], so that a TLS connection notices the peer closing as a TCP one does.
//!
//! - [`TlsConnector`]: what a persistent connection's `connect` needs to open TLS
//!   connections — the rustls client configuration, the server name to verify, the TCP
//!   options and a handshake timeout.
//! - [`TlsConnection`]: the connection, [`Closable`] and `AsyncRead + AsyncWrite`.
//! - [`client_config`]: a rustls client configuration that trusts the given roots, built
//!   with the `ring` provider that this crate enables.
//!
//! The crates are re-exported ([`rustls`], [`tokio_rustls`]) so that your configuration
//! is built with the same versions as the connector takes.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::tls::{TlsConnection, TlsConnector, client_config};
//! use persistent_connection::{IoError, PersistentConnection};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The roots your servers' certificates chain to (here: none, so nothing verifies).
//! let roots = tokio_rustls::rustls::RootCertStore::empty();
//! let connector = TlsConnector::new(client_config(roots), "redis.example").unwrap();
//! let addr: SocketAddr = "127.0.0.1:6380".parse().unwrap();
//! let pc = PersistentConnection::builder(
//!     "redis over TLS",
//!     move || async move { Ok::<_, IoError>(addr) },
//!     move |addr, _cx| {
//!         let connector = connector.clone();
//!         async move { connector.connect(addr).await }
//!     },
//! )
//! .retry_delay(Duration::from_millis(100))
//! .build();
//! # pc.close().await;
//! # }
//! ```

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self as rustls_crate, ClientConfig, RootCertStore};

use crate::conn::closable::Closable;
use crate::conn::tcp::{TcpConnection, TcpOptions};
use crate::error::IoError;

pub use tokio_rustls;
pub use tokio_rustls::rustls;

/// How long [`TlsConnector`] waits for a handshake by default: a server that accepts TCP
/// and never answers (not a TLS port, a hung process) fails the attempt after this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A rustls client configuration that trusts `roots`, with the `ring` provider and its
/// safe default protocol versions (TLS 1.2 and 1.3), no client certificate.
///
/// Built with an explicit provider, so it works whichever providers other crates of your
/// build enable (rustls' `ClientConfig::builder()` panics when it cannot choose one).
///
/// ```
/// use persistent_connection::tls::{client_config, rustls::RootCertStore};
///
/// let config = client_config(RootCertStore::empty());
/// assert!(config.alpn_protocols.is_empty());
/// ```
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls_crate::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Opens [`TlsConnection`]s: TCP connect with [`TcpOptions`], then a TLS handshake that
/// verifies the server's certificate for one server name (the service's name, which every
/// copy's certificate names, whichever address the catalog gives). Cheap to clone.
///
/// A failure names the address and says which step failed, so that a failed attempt tells
/// what to fix, and two failures are equal ([`IoError`]'s kind and message) exactly when
/// their cause is (de-duplication, R4):
///
/// - `TCP connect to 127.0.0.1:6380: Connection refused (os error 111)`
/// - `TLS handshake with 127.0.0.1:6380 (server name "redis.example"): invalid peer
///   certificate: UnknownIssuer` (kind `InvalidData`)
/// - `TLS handshake with 127.0.0.1:6380 (server name "redis.example") timed out after 10s`
///   (kind `TimedOut`)
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    tcp: TcpOptions,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .field("tcp", &self.tcp)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector that verifies certificates for `server_name` (a DNS name or an IP
    /// address) with `config`, default [`TcpOptions`] and a handshake timeout of
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]. Fails with `InvalidInput` if `server_name` is
    /// neither.
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<TlsConnector, IoError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|e| {
            IoError::new(
                io::ErrorKind::InvalidInput,
                format!("TLS server name {server_name:?}: {e}"),
            )
        })?;
        Ok(TlsConnector {
            config,
            server_name,
            tcp: TcpOptions::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// A connector trusting the certificates of a PEM file's contents (one or more
    /// `CERTIFICATE` blocks: your certificate authority), for `server_name`.
    ///
    /// ```
    /// use persistent_connection::tls::TlsConnector;
    ///
    /// let err = TlsConnector::from_pem_roots(b"not PEM", "localhost").unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    /// ```
    pub fn from_pem_roots(pem: &[u8], server_name: &str) -> Result<TlsConnector, IoError> {
        use rustls_crate::pki_types::CertificateDer;
        use rustls_crate::pki_types::pem::PemObject;
        let invalid = |m: String| IoError::new(io::ErrorKind::InvalidData, m);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid(format!("TLS root certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("TLS root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(
                "TLS root certificates: no certificate found".into(),
            ));
        }
        TlsConnector::new(client_config(roots), server_name)
    }

    /// The TCP options (default: [`TcpOptions::new`]).
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp = options;
        self
    }

    /// How long the handshake may take after TCP connected (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]). The persistent connection's own connect timeout
    /// also bounds the whole attempt; this one names the step.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The server name certificates are verified for.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Connects to `addr` over TCP, then makes the TLS handshake. Must be called within a
    /// Tokio runtime. See the type's docs for the errors.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TlsConnection, IoError> {
        let tcp = TcpConnection::connect_with(addr, &self.tcp)
            .await
            .map_err(|e| IoError::new(e.kind(), format!("TCP {}", e.message())))?;
        let name = self.server_name.to_str();
        let handshake = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), tcp.clone());
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tcp.close().await;
                return Err(IoError::new(
                    e.kind(),
                    format!("TLS handshake with {addr} (server name {name:?}): {e}"),
                ));
            }
            Err(_) => {
                tcp.close().await;
                return Err(IoError::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "TLS handshake with {addr} (server name {name:?}) timed out after {:?}",
                        self.handshake_timeout
                    ),
                ));
            }
        };
        Ok(TlsConnection {
            tcp,
            tls: Arc::new(Mutex::new(stream)),
            writer: Arc::new(AtomicWaker::new()),
        })
    }
}

/// A TLS connection over a [`TcpConnection`]: the TCP connection's background reader
/// notices the peer closing or resetting whether or not anyone reads, so the persistent
/// connection learns that the server went away (R6), as with plain TCP.
///
/// It is [`AsyncRead`] + [`AsyncWrite`] (plaintext in and out), for codecs and clients
/// that take a stream. [`close`](Closable::close) sends TLS' `close_notify` if it can
/// without waiting, then closes the TCP connection; it never waits on a peer that does not
/// read. Cheap to clone; all clones are the same connection. Read from one task at a time
/// and write from one task at a time.
#[derive(Clone)]
pub struct TlsConnection {
    tcp: TcpConnection,
    tls: Arc<Mutex<TlsStream<TcpConnection>>>,
    /// The task last blocked writing. `close` polls the TCP connection's write side itself
    /// (for `close_notify`), which replaces that task's waker there, so `close` wakes it
    /// from here once closing has begun: a write blocked on a peer that does not read then
    /// fails with `NotConnected` instead of waiting forever.
    writer: Arc<AtomicWaker>,
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("local", &self.tcp.local_addr())
            .field("peer", &self.tcp.peer_addr())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl TlsConnection {
    fn stream(&self) -> MutexGuard<'_, TlsStream<TcpConnection>> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.tcp.peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The TLS protocol version negotiated, e.g. `TLSv1_3`.
    pub fn protocol_version(&self) -> Option<rustls_crate::ProtocolVersion> {
        self.stream().get_ref().1.protocol_version()
    }

    /// The ALPN protocol negotiated, if any.
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        self.stream()
            .get_ref()
            .1
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.register(cx.waker());
        Pin::new(&mut *self.stream()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.register(cx.waker());
        Pin::new(&mut *self.stream()).poll_flush(cx)
    }

    /// Sends `close_notify`, then a TCP FIN (half-close).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.register(cx.waker());
        Pin::new(&mut *self.stream()).poll_shutdown(cx)
    }
}

impl Closable for TlsConnection {
    fn close(&self) -> impl Future<Output = ()> + Send {
        if !self.tcp.is_closed() {
            // `close_notify` and a FIN if the socket takes them now; never wait for a peer
            // that does not read.
            let _ = poll_fn(|cx| Pin::new(&mut *self.stream()).poll_shutdown(cx)).now_or_never();
        }
        // Marks the connection closing before it returns.
        let closing = self.tcp.close();
        self.writer.wake();
        closing
    }

    fn is_closed(&self) -> bool {
        self.tcp.is_closed()
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.tcp.close_finished()
    }
}
