//! The socket options a [`TcpConnection`](super::TcpConnection) is made with: `TCP_NODELAY`,
//! keepalive, `TCP_USER_TIMEOUT` and the local address, applied before the SYN.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// TCP keepalive settings (`SO_KEEPALIVE` with `TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
/// `TCP_KEEPCNT`): after `idle` without traffic the kernel sends a probe every `interval`,
/// and resets the connection after `retries` unanswered probes, which the connection then
/// notices like any reset.
///
/// It catches a peer host that vanished (or a path that black-holes) **only while the
/// connection is idle**: Linux sends no keepalive probe while sent data is unacknowledged,
/// so a connection with a request in flight to a vanished host is caught by the
/// [user timeout](TcpOptions::user_timeout) instead (measured in the network lab, issue 19:
/// with keepalive 1 s / 1 s / 3 probes and no user timeout, a black-holed connection that
/// kept sending was still up after 90 s). It does not catch a hung process either (its
/// kernel still answers the probes): use a [health check](crate::conn::HealthChecked) for that.
/// With a user timeout set, Linux also uses it for keepalive: the connection is reset once
/// probes have gone unanswered for the user timeout, whatever `retries` says; see
/// [`TcpOptions::keepalive`] for the user timeout an explicit keepalive brings.
///
/// The kernel takes whole seconds from 1 to 32,767 for `idle` and `interval`, and 1 to 127
/// probes: [`TcpOptions::keepalive`] rounds the times up to whole seconds and brings all
/// three within those bounds (a keepalive of 0.5 s / 1.5 s / 0 probes is 1 s / 2 s / 1
/// probe), rather than have every connect fail with EINVAL, or 1.5 s silently become 1 s.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::Keepalive;
///
/// let k = Keepalive::new(Duration::from_secs(10), Duration::from_secs(2), 3);
/// assert_eq!(k.retries, 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is reset.
    pub retries: u32,
}

impl Keepalive {
    /// Probes after `idle`, every `interval`, `retries` times.
    pub fn new(idle: Duration, interval: Duration, retries: u32) -> Keepalive {
        Keepalive {
            idle,
            interval,
            retries,
        }
    }
}

/// The longest [`TcpOptions::user_timeout`]: `i32::MAX` milliseconds (24.8 days), as
/// Linux reads `TCP_USER_TIMEOUT` as an int of milliseconds. Longer ones are clamped to it.
const MAX_USER_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// The longest keepalive idle time and interval Linux takes (`MAX_TCP_KEEPIDLE`,
/// `MAX_TCP_KEEPINTVL`): 32,767 s.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// The most keepalive probes Linux takes (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_PROBES: u32 = 127;

impl Keepalive {
    /// These settings as the kernel takes them: times rounded up to whole seconds from 1
    /// to 32,767, probes from 1 to 127.
    fn as_taken(self) -> Keepalive {
        let secs = |d: Duration| {
            let whole = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            Duration::from_secs(whole.clamp(1, MAX_KEEPALIVE_SECS))
        };
        Keepalive {
            idle: secs(self.idle),
            interval: secs(self.interval),
            retries: self.retries.clamp(1, MAX_KEEPALIVE_PROBES),
        }
    }

    /// How long an idle connection to a vanished peer lasts with these settings alone:
    /// `idle` + `interval` × `retries`.
    fn gives_up_after(self) -> Duration {
        self.idle
            .saturating_add(self.interval.saturating_mul(self.retries))
    }
}

/// The default [`TcpOptions::user_timeout`]: 20 s, the keepalive timeout from which gRPC
/// sets `TCP_USER_TIMEOUT`. A peer that stops acknowledging what was sent (its host
/// vanished, a black hole on the path) is given up 20 s after the oldest unacknowledged
/// byte was sent, instead of after the kernel's ~15 min (`tcp_retries2 = 15`). Long enough
/// to ride out a few seconds of loss (TCP keeps retransmitting meanwhile, and a congested
/// or briefly re-routed path is not cut), short enough that a stuck connection is
/// replaced within the same order of time as the default retry delay.
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// The default [`Keepalive`]: a probe after 10 s idle, then every 5 s, 3 probes; with the
/// default user timeout, an idle connection to a vanished host is reset 20–25 s after the
/// last thing it received. One empty segment per 10 s idle per connection; it also keeps
/// middleboxes' idle state (NAT, conntrack, load balancers) from expiring.
pub const DEFAULT_KEEPALIVE: Keepalive = Keepalive {
    idle: Duration::from_secs(10),
    interval: Duration::from_secs(5),
    retries: 3,
};

/// Socket options for
/// [`TcpConnection::connect_with`](super::TcpConnection::connect_with) (and
/// [`TcpOptions::apply`] for a stream you connected yourself). The default is what
/// [`TcpConnection::connect`](super::TcpConnection::connect) uses:
/// `TCP_NODELAY` on, [keepalive](DEFAULT_KEEPALIVE) 10 s / 5 s / 3 probes,
/// [`TCP_USER_TIMEOUT`](DEFAULT_USER_TIMEOUT) 20 s, any local address.
///
/// Which failure each option notices, and how fast (issue 19's network lab):
///
/// | failure | noticed by | default settings |
/// | --- | --- | --- |
/// | peer closes or resets, process killed | the connection's reader (end of file, reset) | at once |
/// | peer host vanished / black hole, **request in flight** | the user timeout (unacknowledged data) | ~20 s |
/// | peer host vanished / black hole, **connection idle** | keepalive probes (bounded by the user timeout) | 20–25 s |
/// | server up but hung (its kernel still acknowledges) | neither: a [health check](crate::conn::HealthChecked) | never without one |
///
/// The recommended settings for fast failover (the crate documentation's "Noticing
/// failures" section) shorten the user timeout and add a health check.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::conn::{Keepalive, TcpOptions, DEFAULT_USER_TIMEOUT};
///
/// let options = TcpOptions::new()
///     .nodelay(true)
///     .keepalive(Keepalive::new(Duration::from_secs(10), Duration::from_secs(2), 3))
///     .user_timeout(Duration::from_secs(5))
///     .local_addr("127.0.0.1:0".parse().unwrap());
/// assert!(options.nodelay_enabled());
/// assert_eq!(options.user_timeout_value(), Duration::from_secs(5));
/// assert_eq!(TcpOptions::new().user_timeout_value(), DEFAULT_USER_TIMEOUT);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    pub(super) nodelay: bool,
    pub(super) keepalive: Option<Keepalive>,
    /// Whether `keepalive` was set with [`TcpOptions::keepalive`] (not the default).
    pub(super) keepalive_chosen: bool,
    /// The user timeout set with [`TcpOptions::user_timeout`], if it was.
    pub(super) user_timeout: Option<Duration>,
    pub(super) local_addr: Option<SocketAddr>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions::new()
    }
}

impl TcpOptions {
    /// `TCP_NODELAY` on, keepalive [`DEFAULT_KEEPALIVE`], user timeout
    /// [`DEFAULT_USER_TIMEOUT`], any local address.
    pub fn new() -> TcpOptions {
        TcpOptions {
            nodelay: true,
            keepalive: Some(DEFAULT_KEEPALIVE),
            keepalive_chosen: false,
            user_timeout: None,
            local_addr: None,
        }
    }

    /// `TCP_NODELAY` (default on: requests go out at once instead of waiting for Nagle's
    /// algorithm).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// TCP keepalive with these settings (default [`DEFAULT_KEEPALIVE`]), as the kernel
    /// takes them: times rounded up to whole seconds from 1 to 32,767, probes from 1 to
    /// 127 (see [`Keepalive`]; [`keepalive_settings`](TcpOptions::keepalive_settings) says
    /// what the socket gets). Keepalive probes only an idle connection.
    ///
    /// **What wins over what.** Linux lets the user timeout override the number of probes:
    /// with one set, an idle connection is reset once a probe has gone unanswered and the
    /// peer has been silent for the user timeout (checked at each probe). So that the default user timeout (20 s) does not
    /// slow a keepalive you chose (1 s / 1 s / 3 probes would give up after 20 s instead
    /// of 4 s), a keepalive set here without a [`user_timeout`](TcpOptions::user_timeout)
    /// brings its own: `idle + interval × retries`, at most [`DEFAULT_USER_TIMEOUT`].
    /// Keepalive then gives up exactly as set when that is 20 s or less, and data in flight
    /// is given the same time; a longer keepalive (30 s / 10 s / 3) keeps the default 20 s
    /// for data in flight, and an idle connection is then reset at the first probe time
    /// after 20 s of silence (at 40 s here, not 60 s). A user timeout
    /// set with [`user_timeout`](TcpOptions::user_timeout), before or after, always wins.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::conn::{Keepalive, TcpOptions};
    ///
    /// let secs = Duration::from_secs;
    /// let fast = TcpOptions::new().keepalive(Keepalive::new(secs(1), secs(1), 3));
    /// assert_eq!(fast.user_timeout_value(), secs(4));
    /// let mine = fast.user_timeout(secs(9));
    /// assert_eq!(mine.user_timeout_value(), secs(9));
    /// let rounded = TcpOptions::new()
    ///     .keepalive(Keepalive::new(Duration::from_millis(500), Duration::from_millis(1500), 3));
    /// assert_eq!(rounded.keepalive_settings(), Some(Keepalive::new(secs(1), secs(2), 3)));
    /// ```
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive.as_taken());
        self.keepalive_chosen = true;
        self
    }

    /// No TCP keepalive: a vanished peer of an idle connection is then noticed only when
    /// something is sent to it (and the user timeout runs out).
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = None;
        self.keepalive_chosen = false;
        self
    }

    /// `TCP_USER_TIMEOUT` (default [`DEFAULT_USER_TIMEOUT`], 20 s, or less with a
    /// [`keepalive`](TcpOptions::keepalive) of your own, which says how): how long sent
    /// data may stay unacknowledged (and, with keepalive, probes unanswered) before the
    /// kernel gives up and resets the connection, which the connection then notices like
    /// any reset. [`TcpConnection::connect_with`](super::TcpConnection::connect_with) sets
    /// it before connecting, so it bounds an unanswered connect too (the builder's connect
    /// timeout still applies on top). This is what notices a peer host that vanished, or a
    /// black hole, while a request is in flight; keepalive cannot (it sends no probe while
    /// data is unacknowledged). `Duration::ZERO` leaves the kernel's own limit (about 15
    /// minutes with `tcp_retries2 = 15`). Shorter is faster failover but cuts connections
    /// on a path that loses everything for that long and then recovers; keep it above a
    /// few round trips plus the longest stall you want to ride out. Sub-millisecond parts
    /// are dropped (a non-zero timeout is at least 1 ms); values above `i32::MAX` ms (24.8
    /// days: Linux reads an int) are clamped to it, rather than fail every connect.
    /// [`user_timeout_value`](TcpOptions::user_timeout_value) says what the socket gets.
    ///
    /// Linux (and Android) only: elsewhere the option is not set and the OS's own
    /// retransmission limit applies (on macOS and Windows, tens of seconds to minutes, with
    /// no per-socket setting through this type).
    pub fn user_timeout(mut self, timeout: Duration) -> Self {
        self.user_timeout = Some(if timeout.is_zero() {
            Duration::ZERO
        } else {
            let millis = timeout.as_millis().clamp(1, MAX_USER_TIMEOUT.as_millis());
            Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
        });
        self
    }

    /// Bind the socket to this local address (port 0: any port) before connecting.
    pub fn local_addr(mut self, addr: SocketAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }

    /// Whether `TCP_NODELAY` is set.
    pub fn nodelay_enabled(&self) -> bool {
        self.nodelay
    }

    /// The keepalive settings, if on.
    pub fn keepalive_settings(&self) -> Option<Keepalive> {
        self.keepalive
    }

    /// The user timeout the socket gets (`Duration::ZERO`: the kernel's own limit): the one
    /// set with [`user_timeout`](TcpOptions::user_timeout); else, with a
    /// [`keepalive`](TcpOptions::keepalive) of your own, `idle + interval × retries` at
    /// most [`DEFAULT_USER_TIMEOUT`]; else [`DEFAULT_USER_TIMEOUT`].
    pub fn user_timeout_value(&self) -> Duration {
        match (self.user_timeout, self.keepalive) {
            (Some(chosen), _) => chosen,
            (None, Some(k)) if self.keepalive_chosen => {
                k.gives_up_after().min(DEFAULT_USER_TIMEOUT)
            }
            (None, _) => DEFAULT_USER_TIMEOUT,
        }
    }

    /// The local address to bind, if any.
    pub fn bound_local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Sets these options but the local address (`TCP_NODELAY`, keepalive, user timeout)
    /// on a connected stream: for a stream you connected yourself before
    /// [`TcpConnection::from_stream`](super::TcpConnection::from_stream), which sets only `TCP_NODELAY`.
    ///
    /// ```
    /// use persistent_connection::conn::TcpOptions;
    /// use persistent_connection::TcpConnection;
    ///
    /// # tokio_test::block_on(async {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    /// TcpOptions::new().apply(&stream).unwrap(); // the defaults connect() would set
    /// let conn = TcpConnection::from_stream(stream).unwrap();
    /// # drop(conn);
    /// # });
    /// ```
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        self.apply_steps(socket2::SockRef::from(stream))
            .map_err(|(step, e)| io::Error::new(e.kind(), format!("{step}: {e}")))
    }

    /// [`apply`](TcpOptions::apply) to a socket, connected or not, naming the option that
    /// failed.
    pub(super) fn apply_steps(
        &self,
        socket: socket2::SockRef<'_>,
    ) -> Result<(), (&'static str, io::Error)> {
        socket
            .set_tcp_nodelay(self.nodelay)
            .map_err(|e| ("TCP_NODELAY", e))?;
        match self.keepalive {
            Some(k) => {
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(k.idle)
                    .with_interval(k.interval)
                    .with_retries(k.retries);
                socket
                    .set_tcp_keepalive(&keepalive)
                    .map_err(|e| ("keepalive", e))?;
            }
            None => socket.set_keepalive(false).map_err(|e| ("keepalive", e))?,
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        socket
            .set_tcp_user_timeout(match self.user_timeout_value() {
                zero if zero.is_zero() => None,
                // Whole milliseconds from 1 to i32::MAX (see `user_timeout`).
                timeout => Some(timeout),
            })
            .map_err(|e| ("TCP_USER_TIMEOUT", e))?;
        Ok(())
    }
}
