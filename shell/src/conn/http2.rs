//! An HTTP/2 client connection that a persistent connection can keep: hyper's HTTP/2 client
//! over any [`Closable`] stream ([`TcpConnection`](crate::TcpConnection), `TlsConnection`),
//! usable as tonic's and hyper's transport (feature `http2`).
//!
//! hyper 1.x runs an HTTP/2 connection in tasks of its own (the socket's reader and writer,
//! one per request waiting for its response), which outlive the connection future it hands
//! out: dropping that future, or closing a [`Driven`](crate::conn::Driven) around it, lets calls in
//! flight go on and keeps the socket open until they end. [`Http2Connection`] gives hyper an
//! executor of its own, so it knows every task hyper starts for the connection, and stops
//! them all on [`close`](Closable::close): calls in flight fail at once and the socket is
//! released.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::conn::closable::Closable;
use crate::error::IoError;

/// HTTP/2 PING keepalive: a health check built into the protocol.
///
/// Every `interval` the client sends a PING; a peer that does not answer within `timeout`
/// closes the connection (calls in flight fail with hyper's "keep-alive timed out"). A hung
/// server or a black hole is so noticed within `interval + timeout` of its last sign of
/// life, on the connection itself, without a call of yours and without a
/// [`HealthChecked`](crate::conn::HealthChecked) task. With `while_idle` (the default here) the
/// PINGs go on when no call is open, so an idle connection is checked too; without it, only
/// while calls are open.
///
/// A PING checks the peer's HTTP/2 layer (its connection task answers it), not that the
/// service behind it works: a server whose handlers hang still answers PINGs. For that, add
/// a health check that makes a call (the `grpc-health` feature's `grpc.health.v1` check).
///
/// Servers limit how often they accept PINGs: tonic and hyper servers accept any rate,
/// but gRPC servers in other languages close a connection whose PINGs come more often
/// than every 5 minutes (their default) with a `GOAWAY` (`ENHANCE_YOUR_CALM`,
/// `too_many_pings`) unless their owners allow it. Choose the interval with them.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::http2::PingKeepalive;
///
/// let k = PingKeepalive::new(Duration::from_millis(200), Duration::from_millis(300));
/// assert!(k.while_idle);
/// assert_eq!(k.worst_case_detection(), Duration::from_millis(500));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingKeepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long a PING may stay unanswered before the connection is closed.
    pub timeout: Duration,
    /// Whether PINGs are sent while no call is open (true from [`PingKeepalive::new`]).
    pub while_idle: bool,
}

impl PingKeepalive {
    /// A PING every `interval`, also while idle; closed when one stays unanswered for
    /// `timeout`.
    pub fn new(interval: Duration, timeout: Duration) -> PingKeepalive {
        PingKeepalive {
            interval,
            timeout,
            while_idle: true,
        }
    }

    /// Sets whether PINGs are sent while no call is open.
    pub fn while_idle(mut self, while_idle: bool) -> PingKeepalive {
        self.while_idle = while_idle;
        self
    }

    /// The longest a connection whose peer went silent stays open: `interval + timeout`
    /// (saturating).
    pub fn worst_case_detection(&self) -> Duration {
        self.interval.saturating_add(self.timeout)
    }
}

/// Settings of an [`Http2Connection`]: PING keepalive and the origin put on requests that
/// have none. `Http2Options::new()` is the default.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::http2::{Http2Options, PingKeepalive};
///
/// let options = Http2Options::new()
///     .keepalive(PingKeepalive::new(Duration::from_secs(1), Duration::from_secs(1)))
///     .origin("http://echo.internal".parse().unwrap());
/// assert_eq!(options.origin_uri().to_string(), "http://echo.internal/");
/// ```
#[derive(Clone, Debug)]
pub struct Http2Options {
    keepalive: Option<PingKeepalive>,
    scheme: Scheme,
    authority: Authority,
}

impl Default for Http2Options {
    fn default() -> Self {
        Http2Options::new()
    }
}

impl Http2Options {
    /// No PING keepalive; origin `http://localhost`.
    pub fn new() -> Http2Options {
        Http2Options {
            keepalive: None,
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
        }
    }

    /// Turns on HTTP/2 PING keepalive (off by default): see [`PingKeepalive`].
    pub fn keepalive(mut self, keepalive: PingKeepalive) -> Http2Options {
        self.keepalive = Some(keepalive);
        self
    }

    /// The keepalive, if on.
    pub fn keepalive_settings(&self) -> Option<PingKeepalive> {
        self.keepalive
    }

    /// The scheme and authority given to a request whose URI has none (default
    /// `http://localhost`). tonic's generated clients made with `XClient::new(conn)` send
    /// only the path, and an HTTP/2 server refuses a request without `:scheme`; with this,
    /// `new` works as `XClient::with_origin(conn, origin)` does. Set it to the service's
    /// name (and `https` over TLS) when the server routes by authority. A URI without a
    /// scheme or authority leaves the default's part in place.
    pub fn origin(mut self, origin: Uri) -> Http2Options {
        let parts = origin.into_parts();
        if let Some(scheme) = parts.scheme {
            self.scheme = scheme;
        }
        if let Some(authority) = parts.authority {
            self.authority = authority;
        }
        self
    }

    /// The origin as a URI (`scheme://authority/`).
    pub fn origin_uri(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a URI")
    }
}

/// Why an [`Http2Connection`] stopped taking calls.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Http2End {
    /// [`close`](Closable::close) was called: calls in flight failed.
    Closed,
    /// The server sent `GOAWAY`: no new call is taken; calls in flight that the server
    /// accepted go on to their end on this connection. `error_code` 0 (`NO_ERROR`) is a
    /// graceful shutdown (tonic's `serve_with_shutdown`, hyper's `graceful_shutdown`, a
    /// server's maximum connection age); another code is the server's complaint
    /// (`ENHANCE_YOUR_CALM` for too many PINGs, `PROTOCOL_ERROR`, …).
    GoAway {
        /// The HTTP/2 error code of the `GOAWAY` frame (RFC 9113 §7).
        error_code: u32,
    },
    /// The connection ended without an error and without a `GOAWAY`: every handle was
    /// dropped, or the server closed it cleanly.
    Finished,
    /// The connection failed: a reset, the peer closing with calls in flight, a PING
    /// unanswered (`keep-alive timed out`), a protocol error. The text is hyper's, with its
    /// causes.
    Failed(String),
    /// The stream under it (TCP, TLS) closed first: the peer closed or reset it.
    TransportClosed,
}

/// The name RFC 9113 §7 gives an HTTP/2 error code.
fn error_code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown error code",
    }
}

impl fmt::Display for Http2End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Http2End::Closed => f.write_str("closed by the client"),
            Http2End::GoAway { error_code } => write!(
                f,
                "the server sent GOAWAY ({} {error_code:#x})",
                error_code_name(*error_code)
            ),
            Http2End::Finished => f.write_str("the connection ended"),
            Http2End::Failed(e) => write!(f, "the connection failed: {e}"),
            Http2End::TransportClosed => f.write_str("the stream under it closed"),
        }
    }
}

/// A call's failure on an [`Http2Connection`]: the connection took no new call (nothing was
/// sent, so the call may go to another connection as it is), or hyper's error (its
/// [`source`](std::error::Error::source), so tonic's own mapping to a gRPC status applies).
/// [`is_not_sent`](Http2Error::is_not_sent) tells the calls that may be made again.
#[derive(Debug)]
pub struct Http2Error {
    repr: Repr,
}

#[derive(Debug)]
enum Repr {
    NotSent(Http2End),
    Hyper {
        error: hyper::Error,
        /// The connection ended before the server sent a single byte: it never began
        /// HTTP/2 on it, so it processed no call.
        server_silent: bool,
    },
}

impl Http2Error {
    /// True when the call was not sent or not processed, so it is safe to make again on
    /// another connection: the connection took no new calls any more (draining after a
    /// `GOAWAY`, failed, closed); it ended before hyper had sent the request (hyper's
    /// "canceled" errors, which its HTTP/2 client returns only for requests it never
    /// sent); or it ended before the server had sent anything at all (a server resets the
    /// connections it has not begun HTTP/2 on when it shuts down: its preface, the first
    /// thing an HTTP/2 server sends, never came, so it processed nothing).
    pub fn is_not_sent(&self) -> bool {
        match &self.repr {
            Repr::NotSent(_) => true,
            Repr::Hyper {
                error,
                server_silent,
            } => *server_silent || error.is_canceled(),
        }
    }

    /// Why the connection took no new call, when it refused the call itself.
    pub fn end(&self) -> Option<&Http2End> {
        match &self.repr {
            Repr::NotSent(end) => Some(end),
            Repr::Hyper { .. } => None,
        }
    }

    /// hyper's error, for the others.
    pub fn hyper_error(&self) -> Option<&hyper::Error> {
        match &self.repr {
            Repr::Hyper { error, .. } => Some(error),
            Repr::NotSent(_) => None,
        }
    }

    fn hyper(error: hyper::Error, shared: &Shared) -> Http2Error {
        Http2Error {
            repr: Repr::Hyper {
                error,
                server_silent: !shared.heard.load(Ordering::Acquire),
            },
        }
    }
}

impl fmt::Display for Http2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::NotSent(end) => write!(
                f,
                "the HTTP/2 connection takes no new calls ({end}); the call was not sent"
            ),
            Repr::Hyper {
                error,
                server_silent,
            } => {
                f.write_str(&with_causes(error))?;
                if *server_silent {
                    f.write_str(
                        " (the server sent nothing on this connection: the call was not processed)",
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl StdError for Http2Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.repr {
            Repr::Hyper { error, .. } => Some(error),
            Repr::NotSent(_) => None,
        }
    }
}

/// True when `error` or one of its causes is an [`Http2Error`] whose call was not sent
/// ([`Http2Error::is_not_sent`]): the connection was already draining or closed, so the
/// call can be made again on the next connection as it is, without risk of doing it twice.
/// Works on what tonic returns (`tonic::Status` keeps the transport's error as its source).
///
/// ```
/// use persistent_connection::conn::http2::call_was_not_sent;
///
/// let other = std::io::Error::other("connection reset");
/// assert!(!call_was_not_sent(&other));
/// ```
pub fn call_was_not_sent(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<Http2Error>() {
            return h.is_not_sent();
        }
        cause = e.source();
    }
    false
}

/// An error's text followed by its causes' (hyper's own says only "http2 error").
fn with_causes(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// What the handles, the supervisor and hyper's tasks share.
struct Shared {
    /// Takes no new calls: draining or closed, by either side.
    closed: AtomicBool,
    /// The server has sent something (its preface comes first).
    heard: AtomicBool,
    /// The same, for waiters.
    draining: watch::Sender<bool>,
    /// The server sent a `GOAWAY`.
    goaway: watch::Sender<bool>,
    /// Stops every task hyper started for this connection.
    stop: watch::Sender<bool>,
    /// How many of hyper's tasks for this connection are alive.
    tasks: watch::Sender<usize>,
    /// Everything is released: tasks ended, the stream closed.
    finished: watch::Sender<bool>,
    end: Mutex<Option<Http2End>>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            closed: AtomicBool::new(false),
            heard: AtomicBool::new(false),
            draining: watch::Sender::new(false),
            goaway: watch::Sender::new(false),
            stop: watch::Sender::new(false),
            tasks: watch::Sender::new(0),
            finished: watch::Sender::new(false),
            end: Mutex::new(None),
        }
    }

    /// Stops taking calls; the first reason given is kept.
    fn begin_close(&self, why: Http2End) {
        {
            let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
            if end.is_none() {
                match &why {
                    Http2End::Failed(e) => tracing::warn!(error = %e, "HTTP/2 connection failed"),
                    why => tracing::debug!(end = %why, "HTTP/2 connection takes no new calls"),
                }
                *end = Some(why);
            }
        }
        self.closed.store(true, Ordering::Release);
        self.draining.send_replace(true);
    }

    fn end(&self) -> Option<Http2End> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Counts a task of hyper's as ended, however it ends (also when the runtime drops it).
struct TaskDone(Arc<Shared>);

impl Drop for TaskDone {
    fn drop(&mut self) {
        self.0.tasks.send_modify(|n| *n -= 1);
    }
}

/// hyper's executor for one connection: every task it starts ends when the connection is
/// stopped, and is counted while alive.
#[derive(Clone)]
struct Tasks(Arc<Shared>);

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let shared = self.0.clone();
        shared.tasks.send_modify(|n| *n += 1);
        let mut stop = shared.stop.subscribe();
        tokio::spawn(async move {
            let _done = TaskDone(shared);
            tokio::select! {
                biased;
                // The sender lives in `Shared`, which this task holds: no error.
                _ = stop.wait_for(|s| *s) => {}
                () = fut => {}
            }
        });
    }
}

/// Finds `GOAWAY` frames in what the server sends. hyper takes note of a `GOAWAY` only when
/// the next call is made (its dispatch task is not woken by one), so the connection reads
/// the frame headers itself: a frame is a 9-byte header (24-bit length, type, flags, stream
/// id) and its payload; a `GOAWAY` (type 7) carries the last stream id and the error code
/// in its first 8 bytes. The server's preface is an ordinary `SETTINGS` frame, so frames
/// start at the first byte.
#[derive(Debug, Default)]
struct FrameScan {
    header: [u8; 9],
    header_len: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// The current frame is a `GOAWAY`: its first 8 payload bytes, as they come.
    goaway: Option<([u8; 8], usize)>,
}

impl FrameScan {
    /// Passes `data` (the next bytes from the server); calls `on_goaway(error_code)` for
    /// every complete `GOAWAY` payload head.
    fn scan(&mut self, mut data: &[u8], mut on_goaway: impl FnMut(u32)) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                let n = (9 - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
                self.header_len += n;
                data = &data[n..];
                if self.header_len == 9 {
                    self.header_len = 0;
                    let h = self.header;
                    self.payload_left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    // A GOAWAY shorter than 8 bytes is malformed: hyper fails the connection.
                    self.goaway = (h[3] == 0x7 && self.payload_left >= 8).then_some(([0; 8], 0));
                }
                continue;
            }
            let n = self.payload_left.min(data.len());
            if let Some((head, have)) = &mut self.goaway {
                let take = (8 - *have).min(n);
                head[*have..*have + take].copy_from_slice(&data[..take]);
                *have += take;
                if *have == 8 {
                    on_goaway(u32::from_be_bytes([head[4], head[5], head[6], head[7]]));
                    self.goaway = None;
                }
            }
            self.payload_left -= n;
            data = &data[n..];
        }
    }
}

/// The stream as hyper sees it: reads pass through [`FrameScan`], which marks the
/// connection draining on a `GOAWAY`.
struct Sniffed<T> {
    io: T,
    frames: FrameScan,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let this = &mut *self;
            let shared = &this.shared;
            if buf.filled().len() > before {
                shared.heard.store(true, Ordering::Release);
            }
            this.frames.scan(&buf.filled()[before..], |error_code| {
                shared.begin_close(Http2End::GoAway { error_code });
                shared.goaway.send_replace(true);
            });
        }
        polled
    }
}

impl<T: Closable> Sniffed<T> {
    /// A write to a stream that has closed under it (the peer closed: our `TcpConnection`
    /// releases its write half at end of file) counts as done. h2 flushes before it reads
    /// on, and a failed flush would end the connection before it reads what the server
    /// sent last — its answer to a call in flight, which a server that shuts down sends
    /// just before it closes. What is written then could not reach the peer anyway.
    fn after_close<R>(
        &self,
        polled: Poll<std::io::Result<R>>,
        done: R,
    ) -> Poll<std::io::Result<R>> {
        match polled {
            Poll::Ready(Err(e))
                if e.kind() == std::io::ErrorKind::NotConnected && self.io.is_closed() =>
            {
                Poll::Ready(Ok(done))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Closable + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_close(polled, buf.len())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.after_close(polled, ())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.after_close(polled, ())
    }
}

/// An HTTP/2 client connection that a persistent connection can keep, and that tonic and
/// hyper can send requests through: a `tower::Service<http::Request<B>>` returning
/// `http::Response<hyper::body::Incoming>` (feature `http2`).
///
/// Made by [`handshake`](Http2Connection::handshake) over any stream that is
/// [`Closable`] ([`TcpConnection`](crate::TcpConnection), `TlsConnection`; over TLS the
/// client configuration must offer ALPN `h2`, `config.alpn_protocols = vec![b"h2".to_vec()]`,
/// as gRPC servers require). What it adds to hyper's own `http2::SendRequest`:
///
/// - **[`close`](Closable::close) fails every call in flight at once and releases the
///   socket.** hyper keeps its connection in tasks of its own that live on while a call is
///   open; this type starts those tasks itself and stops them all, then closes the stream.
/// - **It notices the connection's end**, whatever ends it: the peer closing or resetting
///   (noticed by the stream as well as by hyper), a protocol error, a `GOAWAY`, or an
///   unanswered PING ([`PingKeepalive`]). [`is_closed`](Closable::is_closed) turns true at
///   once and [`close_finished`](Closable::close_finished) resolves once everything is
///   released, so the persistent connection replaces it (R6).
/// - **A server's graceful shutdown costs no call.** On `GOAWAY` (tonic's
///   `serve_with_shutdown`, hyper's `graceful_shutdown`) the connection stops taking new
///   calls — [`is_closed`](Closable::is_closed) and [`draining`](Http2Connection::draining)
///   say so at once — while calls in flight go on to their end on it;
///   `close_finished` resolves after the last one (or when [`close`](Closable::close) is
///   called, which fails them). A persistent connection does not hand this connection out
///   while it drains, and new calls wait in `connected()` for the next one; to make the
///   next connection *while* the old one drains (make-before-break), hand over when
///   [`goaway`](Http2Connection::goaway) says so (`PersistentConnection::handover` with
///   the `Drain` reason). A call made in the instant the `GOAWAY`
///   arrives fails unsent ([`Http2Error::is_not_sent`], [`call_was_not_sent`]): make it
///   again. One race is hyper's: a request whose stream it opens in the very poll that
///   processes the `GOAWAY` fails with h2's `GOAWAY` error although the server may have
///   it.
///
/// Cheap to clone (hyper's `SendRequest` and an `Arc`); all clones are the same connection.
/// Dropping every clone lets calls in flight end, then releases everything. tonic's
/// generated clients take it as it is: `HealthClient::new(conn)` (the origin of
/// [`Http2Options::origin`] completes the request's URI) or `XClient::with_origin(conn,
/// origin)`. Must be created within a Tokio runtime.
///
/// ```no_run
/// use persistent_connection::conn::http2::{Http2Connection, Http2Options, PingKeepalive};
/// use persistent_connection::{Closable, IoError, TcpConnection};
/// use std::time::Duration;
///
/// # async fn example(addr: std::net::SocketAddr) -> Result<(), IoError> {
/// let tcp = TcpConnection::connect(addr).await?;
/// let options = Http2Options::new()
///     .keepalive(PingKeepalive::new(Duration::from_millis(200), Duration::from_millis(300)));
/// let conn: Http2Connection<tonic::body::Body> = Http2Connection::handshake(tcp, &options).await?;
/// let mut health = tonic_health::pb::health_client::HealthClient::new(conn.clone());
/// # let _ = &mut health;
/// conn.close().await; // calls in flight fail now; the socket is released
/// # Ok(())
/// # }
/// ```
pub struct Http2Connection<B> {
    send: SendRequest<B>,
    shared: Arc<Shared>,
    scheme: Scheme,
    authority: Authority,
}

impl<B> Clone for Http2Connection<B> {
    fn clone(&self) -> Self {
        Http2Connection {
            send: self.send.clone(),
            shared: self.shared.clone(),
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
        }
    }
}

impl<B> fmt::Debug for Http2Connection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection")
            .field(
                "origin",
                &format_args!("{}://{}", self.scheme, self.authority),
            )
            .field("closed", &self.is_closed())
            .field("end", &self.shared.end())
            .finish()
    }
}

impl<B> Http2Connection<B>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Starts HTTP/2 on `io` (the client preface and settings; a server that does not
    /// answer is noticed by the first call or the [`PingKeepalive`], not here) and runs the
    /// connection. A failure closes `io` and names the step; it is an [`IoError`], as
    /// [`TcpConnection::connect`](crate::TcpConnection::connect)'s is, so one `connect`
    /// can return both with `?`.
    ///
    /// `io` is taken over: the connection closes it when it ends. Must be called within a
    /// Tokio runtime.
    pub async fn handshake<T>(io: T, options: &Http2Options) -> Result<Self, IoError>
    where
        T: AsyncRead + AsyncWrite + Closable + Clone + Unpin + Send + Sync + 'static,
    {
        if io.is_closed() {
            io.close().await;
            return Err(IoError::new(
                std::io::ErrorKind::NotConnected,
                "HTTP/2 handshake: the stream is already closed",
            ));
        }
        let shared = Arc::new(Shared::new());
        let mut builder = Builder::new(Tasks(shared.clone()));
        builder.timer(TokioTimer::new());
        if let Some(k) = options.keepalive {
            builder
                .keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(k.while_idle);
        }
        let sniffed = Sniffed {
            io: io.clone(),
            frames: FrameScan::default(),
            shared: shared.clone(),
        };
        let (send, dispatch) = match builder.handshake(TokioIo::new(sniffed)).await {
            Ok(pair) => pair,
            Err(e) => {
                let e = with_causes(&e);
                shared.begin_close(Http2End::Failed(e.clone()));
                shared.stop.send_replace(true);
                io.close().await;
                return Err(IoError::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("HTTP/2 handshake: {e}"),
                ));
            }
        };
        tokio::spawn(supervise(dispatch, io, shared.clone()));
        Ok(Http2Connection {
            send,
            shared,
            scheme: options.scheme.clone(),
            authority: options.authority.clone(),
        })
    }
}

impl<B> Http2Connection<B> {
    /// Resolves once the connection takes no new calls (`GOAWAY`, the peer closing, a
    /// failure, [`close`](Closable::close)), the moment [`is_closed`](Closable::is_closed)
    /// turns true. Calls in flight may still finish after it (on a `GOAWAY`);
    /// [`close_finished`](Closable::close_finished) says when all is over. For a
    /// make-before-break handover, [`goaway`](Http2Connection::goaway) tells a drain from a
    /// failure.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static + use<B> {
        let mut rx = self.shared.draining.subscribe();
        async move {
            // The sender lives in `Shared`, which `rx` does not keep alive; an error means
            // every handle and task is gone, and the connection with them.
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Resolves with `true` when the server sends a `GOAWAY` (it drains the connection: a
    /// graceful shutdown, a maximum connection age), or with `false` once the connection
    /// has ended without one (failed, closed, every handle dropped). The signal for a
    /// make-before-break handover: on `true`, hand over to a new connection
    /// (`PersistentConnection::handover` with the `Drain` reason) while the calls in flight
    /// finish on this one. A task that waits on it ends with the connection.
    pub fn goaway(&self) -> impl Future<Output = bool> + Send + 'static + use<B> {
        let mut goaway = self.shared.goaway.subscribe();
        let mut finished = self.shared.finished.subscribe();
        async move {
            let sent = tokio::select! {
                biased;
                sent = goaway.wait_for(|g| *g) => sent.is_ok(),
                _ = finished.wait_for(|f| *f) => false,
            };
            sent || *goaway.borrow()
        }
    }

    /// True while the connection takes no new calls but has not finished: calls in flight
    /// (after a `GOAWAY`) or a close under way.
    pub fn is_draining(&self) -> bool {
        self.is_closed() && !self.is_close_finished()
    }

    /// True once everything is released (what [`close_finished`](Closable::close_finished)
    /// waits for).
    pub fn is_close_finished(&self) -> bool {
        *self.shared.finished.borrow()
    }

    /// Why the connection stopped taking calls; `None` while it takes them.
    pub fn end(&self) -> Option<Http2End> {
        self.shared.end()
    }

    /// Puts the connection's origin on a request whose URI has no scheme.
    fn with_origin<R>(&self, req: &mut http::Request<R>) {
        if req.uri().scheme().is_some() {
            return;
        }
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        if parts.authority.is_none() {
            parts.authority = Some(self.authority.clone());
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // A path with a scheme and an authority always makes a URI.
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Runs hyper's dispatch future until the connection stops taking calls, then lets hyper
/// finish what it can (calls in flight after a `GOAWAY`; answers already received when the
/// stream ended) unless `close()` stops it; then closes the stream.
async fn supervise<D, T>(dispatch: D, io: T, shared: Arc<Shared>)
where
    D: Future<Output = hyper::Result<()>>,
    T: Closable,
{
    enum First {
        Stopped,
        TransportClosed,
        Dispatch(hyper::Result<()>),
        GoAway,
    }
    let mut stop = shared.stop.subscribe();
    let mut draining = shared.draining.subscribe();
    let mut dispatch = Some(Box::pin(dispatch));
    let first = {
        let transport_closed = io.close_finished();
        let running = dispatch.as_mut().expect("not taken yet");
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => First::Stopped,
            () = transport_closed => First::TransportClosed,
            r = running => First::Dispatch(r),
            _ = draining.wait_for(|d| *d) => First::GoAway,
        }
    };
    match first {
        // `close()` and the GOAWAY's reader record their own reasons.
        First::Stopped | First::GoAway => {}
        First::TransportClosed => shared.begin_close(Http2End::TransportClosed),
        First::Dispatch(r) => {
            // Ended: drop it now, with its references to hyper's connection task, which
            // waits for them before it closes an idle connection.
            dispatch = None;
            shared.begin_close(match r {
                Ok(()) => Http2End::Finished,
                Err(e) => Http2End::Failed(with_causes(&e)),
            });
        }
    }
    // No new calls from here. hyper's tasks end by themselves: the calls in flight after a
    // GOAWAY when they are answered (the server closes the connection after the last),
    // and every task once the stream has ended (the stream's reader saw end of file or a
    // reset: what it read before is still delivered). `close()` stops them at once.
    let pending = dispatch.take();
    let mut tasks = shared.tasks.subscribe();
    let rest = async move {
        if let Some(d) = pending
            && let Err(e) = d.await
        {
            tracing::debug!(error = %with_causes(&e), "HTTP/2 connection ended while draining");
        }
        let _ = tasks.wait_for(|n| *n == 0).await;
    };
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => {}
        () = rest => {}
    }
    shared.stop.send_replace(true);
    // Stopped tasks end at their next poll (the runtime drops them if it shuts down).
    let _ = shared.tasks.subscribe().wait_for(|n| *n == 0).await;
    io.close().await;
    shared.finished.send_replace(true);
    tracing::debug!("HTTP/2 connection released");
}

impl<B> Closable for Http2Connection<B> {
    /// Stops taking calls, fails every call in flight, closes the stream; resolves once all
    /// of it is released. Idempotent. The future does not borrow the connection.
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.shared.begin_close(Http2End::Closed);
        self.shared.stop.send_replace(true);
        self.finished()
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        self.finished()
    }
}

impl<B> Http2Connection<B> {
    /// Resolves once everything is released; borrows nothing.
    fn finished(&self) -> impl Future<Output = ()> + Send + 'static + use<B> {
        let mut rx = self.shared.finished.subscribe();
        async move {
            // The sender lives in `Shared`, which the supervisor holds until it sets it.
            let _ = rx.wait_for(|f| *f).await;
        }
    }
}

/// The response of an [`Http2Connection`] call: hyper's response head, its body streaming
/// in as it comes.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, Http2Error>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Incoming>, Http2Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B> tower_service::Service<http::Request<B>> for Http2Connection<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = http::Response<Incoming>;
    type Error = Http2Error;
    type Future = ResponseFuture;

    /// Always ready once the connection takes no new calls: `call` then
    /// fails at once, unsent ([`Http2Error::is_not_sent`]), an error tonic passes on as the
    /// status' source (its `ready()` keeps only the text of an error from here).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.end().is_some() {
            return Poll::Ready(Ok(()));
        }
        let shared = &self.shared;
        self.send
            .poll_ready(cx)
            .map_err(|e| Http2Error::hyper(e, shared))
    }

    /// Sends the request on this connection (after putting the origin on a URI without
    /// one). Fails at once, without sending, once the connection takes no new calls, and
    /// when it is closed while the call is in flight.
    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(end) = self.shared.end() {
            let not_sent = Http2Error {
                repr: Repr::NotSent(end),
            };
            return ResponseFuture {
                inner: Box::pin(std::future::ready(Err(not_sent))),
            };
        }
        self.with_origin(&mut req);
        let sent = self.send.send_request(req);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(async move { sent.await.map_err(|e| Http2Error::hyper(e, &shared)) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{FrameScan, Shared, Sniffed};
    use crate::{Closable, TcpConnection};

    #[tokio::test]
    async fn writes_to_a_stream_the_peer_closed_count_as_done_and_reads_go_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = TcpConnection::connect(addr).await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        let mut io = Sniffed {
            io: tcp.clone(),
            frames: FrameScan::default(),
            shared: Arc::new(Shared::new()),
        };
        io.write_all(b"open").await.unwrap();
        let mut got = [0; 4];
        peer.read_exact(&mut got).await.unwrap();
        // The peer's last words, then its end of the connection.
        peer.write_all(b"last").await.unwrap();
        drop(peer);
        tcp.close_finished().await;
        // TcpConnection itself refuses the write; through `Sniffed` it counts as done…
        assert_eq!(
            tcp.clone().write(b"x").await.unwrap_err().kind(),
            std::io::ErrorKind::NotConnected
        );
        assert_eq!(io.write(b"more").await.unwrap(), 4);
        io.flush().await.unwrap();
        // …and what the peer sent before it closed is still read, then end of file.
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"last");
        assert!(io.shared.heard.load(std::sync::atomic::Ordering::Acquire));
        io.shutdown().await.unwrap();
    }

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn goaway(last: u32, code: u32) -> Vec<u8> {
        let mut p = last.to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(b"debug data");
        frame(7, 0, &p)
    }

    /// The GOAWAY codes `scan` reports for `bytes` fed in pieces of `step` bytes.
    fn scanned(bytes: &[u8], step: usize) -> Vec<u32> {
        let mut scan = FrameScan::default();
        let mut seen = Vec::new();
        for piece in bytes.chunks(step) {
            scan.scan(piece, |code| seen.push(code));
        }
        seen
    }

    #[test]
    fn goaway_frames_are_found_however_the_bytes_are_split() {
        let mut bytes = frame(4, 0, &[0; 18]); // SETTINGS
        // A DATA frame whose payload holds what looks like a GOAWAY header: skipped.
        bytes.extend(frame(0, 1, &goaway(9, 9)));
        bytes.extend(frame(6, 0, &[1; 8])); // PING
        bytes.extend(goaway(0x7fff_ffff, 0)); // graceful
        bytes.extend(frame(1, 1, &[0; 300])); // HEADERS
        bytes.extend(goaway(1, 0xb)); // ENHANCE_YOUR_CALM
        bytes.extend(frame(7, 0, &[0; 4])); // malformed: shorter than 8 bytes
        bytes.extend(frame(0, 1, &[])); // an empty DATA frame
        for step in [1, 2, 5, 8, 9, 10, 17, 64, bytes.len()] {
            assert_eq!(scanned(&bytes, step), [0, 0xb], "pieces of {step}");
        }
    }

    #[test]
    fn a_large_frame_is_passed_without_looking_inside() {
        let mut bytes = frame(0, 1, &vec![7; 70_000]);
        bytes.extend(goaway(3, 2));
        assert_eq!(scanned(&bytes, 4096), [2]);
    }
}
