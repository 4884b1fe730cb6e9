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
//! use persistent_connection::conn::tls::{TlsConnection, TlsConnector, client_config};
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
//! .retry_policy(Duration::from_millis(100))
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
/// use persistent_connection::conn::tls::{client_config, rustls::RootCertStore};
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
/// - `TLS handshake with 127.0.0.1:6380 (server name "redis.example"): invalid peer
///   certificate: certificate expired: certificate is not valid after 2021-01-01 00:00:00
///   UTC; check the dates of the server's certificate and this machine's clock` (kind
///   `InvalidData`; rustls' own text has the time of the verification in it, which changes
///   every second, so it is left out)
/// - `TLS handshake with 127.0.0.1:6380 (server name "redis.example"): the peer closed the
///   connection during the handshake (is this its TLS port? does it accept this client?)`
///   (kind `UnexpectedEof`; by timing, the peer's FIN or reset shows in one of several
///   ways, all of them this failure)
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
    /// use persistent_connection::conn::tls::TlsConnector;
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
    ///
    /// A handshake that completed is a connection, even if the server closed or reset it
    /// right after: the connection is then seen closed, as any connection the server
    /// closes.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TlsConnection, IoError> {
        let tcp = TcpConnection::connect_with(addr, &self.tcp)
            .await
            .map_err(|e| IoError::new(e.kind(), format!("TCP {}", e.message())))?;
        let handshake = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.server_name.clone(), Transport::new(tcp.clone()))
            .into_fallible();
        let stream = match tokio::time::timeout(self.handshake_timeout, handshake).await {
            Ok(Ok(mut stream)) => {
                stream.get_mut().0.handshaking = false;
                stream
            }
            Ok(Err((e, transport))) => {
                tcp.close().await;
                return Err(self.handshake_failure(addr, e, transport.ended));
            }
            Err(_) => {
                tcp.close().await;
                return Err(IoError::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} timed out after {:?}",
                        self.handshake_with(addr),
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

    /// `TLS handshake with <addr> (server name "<name>")`.
    fn handshake_with(&self, addr: SocketAddr) -> String {
        format!(
            "TLS handshake with {addr} (server name {:?})",
            self.server_name.to_str()
        )
    }

    /// The failure of a handshake that ended with `e`, the connection's reads having
    /// ended with `ended` if they did: the same text every time for the same cause (R4).
    fn handshake_failure(
        &self,
        addr: SocketAddr,
        e: io::Error,
        ended: Option<io::Error>,
    ) -> IoError {
        let with = self.handshake_with(addr);
        // A read that failed while the handshake ran shows as the handshake's end of file.
        let e = match ended {
            Some(ended) if e.kind() == io::ErrorKind::UnexpectedEof => ended,
            _ => e,
        };
        if peer_closed(e.kind()) {
            // The peer's FIN or reset reaches the handshake in one of several ways by
            // timing (the ClientHello refused after the FIN, an end of file, a reset):
            // one failure.
            return IoError::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{with}: the peer closed the connection during the handshake (is this \
                     its TLS port? does it accept this client?)"
                ),
            );
        }
        let text = e.to_string();
        match stable_validity_text(&text) {
            Some(text) => IoError::new(e.kind(), format!("{with}: {text}; {VALIDITY_HINT}")),
            None => IoError::new(e.kind(), format!("{with}: {text}")),
        }
    }
}

/// What a failure of a certificate's validity tells to check.
pub(crate) const VALIDITY_HINT: &str =
    "check the dates of the server's certificate and this machine's clock";

/// Whether a handshake that failed with `kind` met the peer closing or resetting the
/// connection: our [`TcpConnection`] refusing to write after the peer's FIN
/// (`NotConnected`), rustls' "tls handshake eof", a reset or a broken pipe.
fn peer_closed(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// rustls' text of a certificate (or revocation list) outside its validity, without the
/// time of the verification, which changes every second ("certificate expired: verification
/// time 1796685288 (UNIX), but certificate is not valid after 1609459200 (187226088
/// seconds ago)" becomes "certificate expired: certificate is not valid after 2021-01-01
/// 00:00:00 UTC"); `None` if `text` has no such part. Two failures of the same
/// certificate then read the same, however far apart (R4).
pub(crate) fn stable_validity_text(text: &str) -> Option<String> {
    const TIME: &str = "verification time ";
    const BUT: &str = " (UNIX), but ";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find(TIME) {
        let after = &rest[at + TIME.len()..];
        let digits = leading_digits(after);
        let Some(tail) = after[digits.len()..]
            .strip_prefix(BUT)
            .filter(|_| !digits.is_empty())
        else {
            out.push_str(&rest[..at + TIME.len()]);
            rest = after;
            continue;
        };
        changed = true;
        out.push_str(&rest[..at]);
        // "certificate is not valid after 1609459200 (187226088 seconds ago)": the bound
        // as a date, without how far the verification time is from it.
        let Some(bound_at) = tail.find(|c: char| c.is_ascii_digit()) else {
            rest = tail;
            continue;
        };
        let bound = leading_digits(&tail[bound_at..]);
        let after_bound = &tail[bound_at + bound.len()..];
        let distance = after_bound
            .strip_prefix(" (")
            .map(|d| (leading_digits(d), d))
            .and_then(|(n, d)| {
                [" seconds ago)", " seconds in future)"]
                    .iter()
                    .find_map(|s| d[n.len()..].strip_prefix(s))
                    .filter(|_| !n.is_empty())
            });
        match (bound.parse::<u64>(), distance) {
            (Ok(secs), Some(rest_after)) => {
                out.push_str(&tail[..bound_at]);
                out.push_str(&utc_date(secs));
                rest = rest_after;
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The ASCII digits `s` starts with.
fn leading_digits(s: &str) -> &str {
    &s[..s.bytes().take_while(u8::is_ascii_digit).count()]
}

/// `secs` after the Unix epoch as `YYYY-MM-DD hh:mm:ss UTC` (the proleptic Gregorian
/// calendar, as X.509's times).
fn utc_date(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The TCP connection under a TLS stream. While the handshake runs, the peer closing must
/// not fail a handshake that completed, whatever the timing: a read that fails is an end
/// of file for rustls (the error kept for the failure's text, or for the first read
/// after the handshake), and a flush of a connection the peer closed succeeds (nothing is
/// buffered here: rustls' last flush after the handshake would otherwise fail a
/// handshake that completed).
struct Transport {
    tcp: TcpConnection,
    handshaking: bool,
    ended: Option<io::Error>,
}

impl Transport {
    fn new(tcp: TcpConnection) -> Transport {
        Transport {
            tcp,
            handshaking: true,
            ended: None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.ended.take() {
            if self.handshaking {
                self.ended = Some(e);
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(e));
        }
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if self.handshaking => {
                self.ended = Some(e);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.handshaking && self.tcp.is_closed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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
    tls: Arc<Mutex<TlsStream<Transport>>>,
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
    fn stream(&self) -> MutexGuard<'_, TlsStream<Transport>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_609_459_199), "2020-12-31 23:59:59 UTC");
        assert_eq!(utc_date(253_402_300_799), "9999-12-31 23:59:59 UTC");
    }

    #[test]
    fn validity_texts_lose_the_verification_time_and_nothing_else() {
        let expired = |now: u64| {
            format!(
                "invalid peer certificate: certificate expired: verification time {now} \
                 (UNIX), but certificate is not valid after 1609459200 ({} seconds ago)",
                now - 1_609_459_200
            )
        };
        let stable = stable_validity_text(&expired(1_796_685_288)).unwrap();
        assert_eq!(
            stable,
            "invalid peer certificate: certificate expired: certificate is not valid after \
             2021-01-01 00:00:00 UTC"
        );
        assert_eq!(stable_validity_text(&expired(1_796_685_289)), Some(stable));
        assert_eq!(
            stable_validity_text(
                "Unknown: certificate not valid yet: verification time 1796685288 (UNIX), but \
                 certificate is not valid before 253402300799 (251605615511 seconds in future) \
                 (more)"
            )
            .unwrap(),
            "Unknown: certificate not valid yet: certificate is not valid before 9999-12-31 \
             23:59:59 UTC (more)"
        );
        assert_eq!(
            stable_validity_text("invalid peer certificate: UnknownIssuer"),
            None
        );
        assert_eq!(
            stable_validity_text("the verification time 12 (UNIX) is odd"),
            None
        );
    }
}
