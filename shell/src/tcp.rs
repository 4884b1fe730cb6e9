//! A TCP connection on Tokio that notices the peer closing, usable as a stream.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::closable::Closable;
use crate::error::IoError;

/// How many received chunks wait to be read before the reader stops reading (back-pressure
/// onto the peer).
const CHUNKS_BUFFERED: usize = 16;
/// The largest chunk one read returns.
const CHUNK_SIZE: usize = 8 * 1024;

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
/// kernel still answers the probes): use a [health check](crate::HealthChecked) for that.
/// With a user timeout set, Linux also uses it for keepalive: the connection is reset once
/// probes have gone unanswered for the user timeout, whatever `retries` says.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::Keepalive;
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

/// Socket options for [`TcpConnection::connect_with`] (and [`TcpOptions::apply`] for a
/// stream you connected yourself). The default is what [`TcpConnection::connect`] uses:
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
/// | server up but hung (its kernel still acknowledges) | neither: a [health check](crate::HealthChecked) | never without one |
///
/// The recommended settings for fast failover (the crate documentation's "Noticing
/// failures" section) shorten the user timeout and add a health check.
///
/// ```
/// use std::time::Duration;
/// use persistent_connection::{Keepalive, TcpOptions, DEFAULT_USER_TIMEOUT};
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
    nodelay: bool,
    keepalive: Option<Keepalive>,
    user_timeout: Duration,
    local_addr: Option<SocketAddr>,
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
            user_timeout: DEFAULT_USER_TIMEOUT,
            local_addr: None,
        }
    }

    /// `TCP_NODELAY` (default on: requests go out at once instead of waiting for Nagle's
    /// algorithm).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// TCP keepalive with these settings (default [`DEFAULT_KEEPALIVE`]). Keepalive
    /// probes only an idle connection; see [`Keepalive`].
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = Some(keepalive);
        self
    }

    /// No TCP keepalive: a vanished peer of an idle connection is then noticed only when
    /// something is sent to it (and the user timeout runs out).
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = None;
        self
    }

    /// `TCP_USER_TIMEOUT` (default [`DEFAULT_USER_TIMEOUT`], 20 s): how long sent data may
    /// stay unacknowledged (and, with keepalive, probes unanswered) before the kernel
    /// gives up and resets the connection, which the connection then notices like any
    /// reset. [`TcpConnection::connect_with`] sets it before connecting, so it bounds an
    /// unanswered connect too (the builder's connect timeout still applies on top). This is what notices a peer host that vanished, or a black hole, while a
    /// request is in flight; keepalive cannot (it sends no probe while data is
    /// unacknowledged). `Duration::ZERO` leaves the kernel's own limit (about 15 minutes
    /// with `tcp_retries2 = 15`). Shorter is faster failover but cuts connections on a
    /// path that loses everything for that long and then recovers; keep it above a few
    /// round trips plus the longest stall you want to ride out. Sub-millisecond parts are
    /// dropped; values above `u32::MAX` ms are clamped.
    ///
    /// Linux (and Android) only: elsewhere the option is not set and the OS's own
    /// retransmission limit applies (on macOS and Windows, tens of seconds to minutes, with
    /// no per-socket setting through this type).
    pub fn user_timeout(mut self, timeout: Duration) -> Self {
        self.user_timeout = timeout;
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

    /// The user timeout (`Duration::ZERO`: the kernel's own limit).
    pub fn user_timeout_value(&self) -> Duration {
        self.user_timeout
    }

    /// The local address to bind, if any.
    pub fn bound_local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Sets these options but the local address (`TCP_NODELAY`, keepalive, user timeout)
    /// on a connected stream: for a stream you connected yourself before
    /// [`TcpConnection::from_stream`], which sets only `TCP_NODELAY`.
    ///
    /// ```
    /// use persistent_connection::{TcpConnection, TcpOptions};
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
    fn apply_steps(&self, socket: socket2::SockRef<'_>) -> Result<(), (&'static str, io::Error)> {
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
            .set_tcp_user_timeout(if self.user_timeout.is_zero() {
                None
            } else {
                // At least 1 ms: socket2 truncates to whole milliseconds, and 0 means "off".
                Some(self.user_timeout.max(Duration::from_millis(1)))
            })
            .map_err(|e| ("TCP_USER_TIMEOUT", e))?;
        Ok(())
    }
}

/// State shared by the handles and the background reader. It owns no way to stop the reader:
/// that is [`Inner::stop`], so dropping every handle stops the reader.
struct Shared {
    /// Close has begun, by either side.
    closed: AtomicBool,
    /// The same, for waiters: a blocked [`TcpConnection::send`] gives up when it turns true.
    closing: watch::Sender<bool>,
    /// The write half, until closing releases it. Locked only within a poll, never across
    /// an await.
    writer: StdMutex<Option<OwnedWriteHalf>>,
    /// The task blocked writing, woken when closing begins so that it stops waiting for a
    /// peer that does not read.
    write_waker: AtomicWaker,
    /// Set by the reader once both halves are released.
    finished: watch::Sender<bool>,
}

/// What the reader task has received and the user has not read yet.
struct ReadState {
    incoming: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// The rest of a chunk a `poll_read` did not fully take.
    chunk: Vec<u8>,
    taken: usize,
}

struct Inner {
    shared: Arc<Shared>,
    read: StdMutex<ReadState>,
    /// Serialises [`TcpConnection::recv`] callers (one waker per receiver).
    recv_lock: Mutex<()>,
    /// Serialises [`TcpConnection::send`] callers, so that a message goes out whole.
    send_lock: Mutex<()>,
    /// Dropping or firing it stops the reader.
    stop: StdMutex<Option<oneshot::Sender<()>>>,
    peer: SocketAddr,
    local: SocketAddr,
}

fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

/// A TCP connection on Tokio that notices the peer closing: a background reader reads the
/// socket all the time and, on end of file or error, marks the connection closed, releases
/// the socket and resolves [`close_finished`](Closable::close_finished), whether or not
/// anyone reads. That is how the persistent connection learns that a server died (R6).
///
/// It is a stream: [`AsyncRead`] + [`AsyncWrite`], so `tokio_util::codec::Framed` and
/// client libraries that take a stream can use it (`redis`' `MultiplexedConnection::new`,
/// for one). Bytes arrive through the reader, in order; a reset is returned once as an
/// error, then end of file. Writing after close has begun fails with `NotConnected`, also
/// for a write blocked on a peer that does not read, so a writer never holds up `close()`.
/// [`send`](TcpConnection::send) and [`recv`](TcpConnection::recv) are the same two
/// directions as async methods, for quick use.
///
/// Cheap to clone (an `Arc`); all clones are the same connection, so clones are also its
/// split: give one clone to the task that reads and another to the task that writes. As
/// with any stream, read from one task at a time and write from one task at a time.
/// Dropping the last clone stops the reader and closes the socket.
///
/// Back-pressure: the reader buffers up to 16 chunks (8 KiB each) that nobody has read,
/// then stops reading the socket until someone does. A peer that closes behind that much
/// unread data is noticed only once it is read, so read what the peer sends.
///
/// ```
/// use persistent_connection::{Closable, TcpConnection};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # tokio_test::block_on(async {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let addr = listener.local_addr().unwrap();
/// let server = tokio::spawn(async move {
///     let (mut s, _) = listener.accept().await.unwrap();
///     let mut buf = [0; 5];
///     s.read_exact(&mut buf).await.unwrap();
///     s.write_all(&buf).await.unwrap(); // echo, then close
/// });
/// let mut conn = TcpConnection::connect(addr).await.unwrap();
/// conn.write_all(b"hello").await.unwrap(); // a stream…
/// let mut echo = [0; 5];
/// conn.read_exact(&mut echo).await.unwrap();
/// assert_eq!(&echo, b"hello");
/// server.await.unwrap();
/// conn.close_finished().await; // the server closed: noticed by the connection itself
/// assert!(conn.is_closed());
/// assert_eq!(conn.recv().await, None); // …or chunks, with `send`/`recv`
/// # });
/// ```
#[derive(Clone)]
pub struct TcpConnection {
    inner: Arc<Inner>,
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("local", &self.inner.local)
            .field("peer", &self.inner.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl TcpConnection {
    /// Connects to `addr` with the default [`TcpOptions`] (`TCP_NODELAY`) and starts the
    /// background reader. A failure names the address (`connect to 127.0.0.1:6379: …`)
    /// and keeps the [`io::ErrorKind`]. Must be called within a Tokio runtime.
    pub async fn connect(addr: SocketAddr) -> Result<TcpConnection, IoError> {
        TcpConnection::connect_with(addr, &TcpOptions::new()).await
    }

    /// Connects to `addr` with these socket options and starts the background reader. A
    /// failure names the address and the step that failed. Must be called within a Tokio
    /// runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::{Keepalive, TcpConnection, TcpOptions};
    ///
    /// # tokio_test::block_on(async {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    /// let addr = listener.local_addr().unwrap();
    /// let options = TcpOptions::new()
    ///     .keepalive(Keepalive::new(Duration::from_secs(5), Duration::from_secs(1), 3))
    ///     .local_addr("127.0.0.1:0".parse().unwrap());
    /// let conn = TcpConnection::connect_with(addr, &options).await.unwrap();
    /// assert_eq!(conn.peer_addr(), addr);
    ///
    /// drop(listener); // nobody listens there any more
    /// let err = TcpConnection::connect(addr).await.unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    /// assert!(err.to_string().contains(&addr.to_string()), "{err}");
    /// # });
    /// ```
    pub async fn connect_with(
        addr: SocketAddr,
        options: &TcpOptions,
    ) -> Result<TcpConnection, IoError> {
        let failed =
            |step: &str, e: io::Error| IoError::new(e.kind(), format!("{step} {addr}: {e}"));
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| failed("socket to connect to", e))?;
        if let Some(local) = options.local_addr {
            socket
                .bind(local)
                .map_err(|e| failed(&format!("bind {local} to connect to"), e))?;
        }
        // Before the SYN goes out: the user timeout then also bounds the connect (a host
        // that vanished fails it after the user timeout, not the kernel's ~2 min of SYN
        // retries), and the connection has its options from its first segment.
        options
            .apply_steps(socket2::SockRef::from(&socket))
            .map_err(|(step, e)| failed(&format!("{step} on the connection to"), e))?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| failed("connect to", e))?;
        TcpConnection::start(stream).map_err(|e| failed("start the connection to", e))
    }

    /// Wraps an established stream (setting `TCP_NODELAY`) and starts the background
    /// reader. Must be called within a Tokio runtime.
    ///
    /// It sets no keepalive and no user timeout: without them, a peer host that vanishes
    /// is noticed only after the kernel's ~15 minutes. Call [`TcpOptions::apply`] on the
    /// stream first (`TcpOptions::new().apply(&stream)` gives what
    /// [`connect`](TcpConnection::connect) sets).
    pub fn from_stream(stream: TcpStream) -> io::Result<TcpConnection> {
        stream.set_nodelay(true)?;
        TcpConnection::start(stream)
    }

    fn start(stream: TcpStream) -> io::Result<TcpConnection> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            writer: StdMutex::new(Some(write)),
            write_waker: AtomicWaker::new(),
            finished: watch::Sender::new(false),
        });
        let (data_tx, data_rx) = mpsc::channel(CHUNKS_BUFFERED);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(reader(read, data_tx, stop_rx, shared.clone()));
        Ok(TcpConnection {
            inner: Arc::new(Inner {
                shared,
                read: StdMutex::new(ReadState {
                    incoming: data_rx,
                    chunk: Vec::new(),
                    taken: 0,
                }),
                recv_lock: Mutex::new(()),
                send_lock: Mutex::new(()),
                stop: StdMutex::new(Some(stop_tx)),
                peer,
                local,
            }),
        })
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Writes all of `data`; concurrent sends go out one after the other, each whole.
    /// Fails with `NotConnected` once closing has begun, including while blocked on a peer
    /// that does not read (so a send never holds up `close()`).
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        let mut closing = self.inner.shared.closing.subscribe();
        let _turn = tokio::select! {
            t = self.inner.send_lock.lock() => t,
            _ = closing.wait_for(|c| *c) => return Err(not_connected()),
        };
        let mut this = self.clone();
        tokio::select! {
            r = this.write_all(data) => r,
            _ = closing.wait_for(|c| *c) => Err(not_connected()),
        }
    }

    /// The next chunk of bytes received, as read (no framing), or `None` once the
    /// connection is closed and everything received before has been returned.
    pub async fn recv(&self) -> Option<Vec<u8>> {
        let _turn = self.inner.recv_lock.lock().await;
        poll_fn(|cx| {
            let mut state = lock(&self.inner.read);
            if state.taken < state.chunk.len() {
                let taken = state.taken;
                let rest = state.chunk.split_off(taken);
                state.chunk.clear();
                state.taken = 0;
                return Poll::Ready(Some(rest));
            }
            state
                .incoming
                .poll_recv(cx)
                .map(|chunk| chunk.and_then(Result::ok))
        })
        .await
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = lock(&self.inner.read);
        loop {
            if state.taken < state.chunk.len() {
                let n = buf.remaining().min(state.chunk.len() - state.taken);
                let from = state.taken;
                buf.put_slice(&state.chunk[from..from + n]);
                state.taken += n;
                return Poll::Ready(Ok(()));
            }
            match state.incoming.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    state.chunk = chunk;
                    state.taken = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The reader is done: end of file.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl TcpConnection {
    /// Runs `f` on the write half; `NotConnected` once closing has begun. Registers the
    /// task to be woken when closing begins, so a write blocked on the peer gives up.
    fn poll_writer<T>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut OwnedWriteHalf>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let shared = &self.inner.shared;
        shared.write_waker.register(cx.waker());
        if self.is_closed() {
            return Poll::Ready(Err(not_connected()));
        }
        match lock(&shared.writer).as_mut() {
            Some(w) => f(Pin::new(w), cx),
            None => Poll::Ready(Err(not_connected())),
        }
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_writer(cx, |w, cx| w.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writer(cx, |w, cx| w.poll_flush(cx))
    }

    /// Sends a FIN (half-close). The connection counts as closed once the peer closes its
    /// side too; [`close`](Closable::close) closes both at once.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_writer(cx, |w, cx| w.poll_shutdown(cx))
    }
}

impl Shared {
    fn mark_closing(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(true);
        self.write_waker.wake();
    }
}

/// The background reader: forwards bytes until end of file, an error or a stop request;
/// then releases both halves and marks the connection finished.
async fn reader(
    mut read: OwnedReadHalf,
    data: mpsc::Sender<io::Result<Vec<u8>>>,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        tokio::select! {
            // Fires on a stop request and when every handle is gone.
            _ = &mut stop => break,
            r = read.read(&mut buf) => {
                let (chunk, last) = match r {
                    Ok(0) => break,
                    Ok(n) => (Ok(buf[..n].to_vec()), false),
                    Err(e) => (Err(e), true),
                };
                tokio::select! {
                    _ = &mut stop => break,
                    sent = data.send(chunk) => if sent.is_err() || last { break },
                }
            }
        }
    }
    shared.mark_closing();
    drop(read);
    drop(data);
    // Release the write half unless `close()` already took it. Writers lock it only within
    // a poll, so this never waits on a blocked write.
    drop(lock(&shared.writer).take());
    shared.finished.send_replace(true);
}

impl Closable for TcpConnection {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.inner.shared.mark_closing();
        if let Some(stop) = lock(&self.inner.stop).take() {
            let _ = stop.send(());
        }
        let writer = lock(&self.inner.shared.writer).take();
        let mut finished = self.inner.shared.finished.subscribe();
        async move {
            if let Some(mut w) = writer {
                // A FIN for the peer; the socket closes once the reader drops its half.
                let _ = w.shutdown().await;
            }
            let _ = finished.wait_for(|f| *f).await;
        }
    }

    fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::Acquire)
    }

    fn close_finished(&self) -> impl Future<Output = ()> + Send {
        let mut finished = self.inner.shared.finished.subscribe();
        async move {
            let _ = finished.wait_for(|f| *f).await;
        }
    }
}

#[cfg(all(test, not(pc_loom)))]
mod tests {
    use super::*;

    /// What the kernel has on `conn`'s socket (getsockopt through socket2).
    #[derive(Debug)]
    struct OnSocket {
        nodelay: bool,
        keepalive: bool,
        user_timeout: Option<Duration>,
        idle: Duration,
        interval: Duration,
    }

    fn on_socket(conn: &TcpConnection) -> OnSocket {
        let writer = lock(&conn.inner.shared.writer);
        let stream: &TcpStream = writer.as_ref().expect("open").as_ref();
        let socket = socket2::SockRef::from(stream);
        OnSocket {
            nodelay: socket.tcp_nodelay().unwrap(),
            keepalive: socket.keepalive().unwrap(),
            user_timeout: socket.tcp_user_timeout().unwrap(),
            idle: socket.tcp_keepalive_time().unwrap(),
            interval: socket.tcp_keepalive_interval().unwrap(),
        }
    }

    #[tokio::test]
    async fn connect_sets_the_default_user_timeout_and_keepalive_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = TcpConnection::connect(addr).await.unwrap();
        let s = on_socket(&conn);
        assert!(s.nodelay && s.keepalive, "{s:?}");
        assert_eq!(s.user_timeout, Some(DEFAULT_USER_TIMEOUT));
        assert_eq!(s.idle, DEFAULT_KEEPALIVE.idle);
        assert_eq!(s.interval, DEFAULT_KEEPALIVE.interval);

        let options = TcpOptions::new()
            .user_timeout(Duration::from_millis(2500))
            .keepalive(Keepalive::new(
                Duration::from_secs(3),
                Duration::from_secs(1),
                2,
            ));
        let s = on_socket(&TcpConnection::connect_with(addr, &options).await.unwrap());
        assert!(s.keepalive);
        assert_eq!(s.user_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            (s.idle, s.interval),
            (Duration::from_secs(3), Duration::from_secs(1))
        );

        let off = TcpOptions::new()
            .user_timeout(Duration::ZERO)
            .no_keepalive()
            .nodelay(false);
        let s = on_socket(&TcpConnection::connect_with(addr, &off).await.unwrap());
        assert!(!s.nodelay && !s.keepalive, "{s:?}");
        assert_eq!(s.user_timeout, None);

        // from_stream sets TCP_NODELAY only; apply() gives what connect() sets.
        let stream = TcpStream::connect(addr).await.unwrap();
        let s = on_socket(&TcpConnection::from_stream(stream).unwrap());
        assert_eq!(s.user_timeout, None);
        let stream = TcpStream::connect(addr).await.unwrap();
        TcpOptions::new().apply(&stream).unwrap();
        let s = on_socket(&TcpConnection::from_stream(stream).unwrap());
        assert_eq!(s.user_timeout, Some(DEFAULT_USER_TIMEOUT));
    }
}
