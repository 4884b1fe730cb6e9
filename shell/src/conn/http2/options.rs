//! How an [`Http2Connection`](super::Http2Connection) is set up: HTTP/2 PING keepalive and
//! hyper's options.

use std::time::Duration;

use http::Uri;
use http::uri::{Authority, Scheme};

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

/// Settings of an [`Http2Connection`](super::Http2Connection): PING keepalive and the origin put on requests that
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
    pub(super) keepalive: Option<PingKeepalive>,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
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
