//! A TCP connection on Tokio that notices the peer closing, usable as a stream.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::conn::closable::{Closable, CloseWakers};
use crate::error::IoError;

use super::options::TcpOptions;

/// How many received chunks wait to be read before the reader stops reading (back-pressure
/// onto the peer).
const CHUNKS_BUFFERED: usize = 16;
/// The largest chunk one read returns.
const CHUNK_SIZE: usize = 8 * 1024;

/// State shared by the handles and the background reader. It owns no way to stop the reader:
/// that is [`Handles::stop`], so dropping every handle stops the reader.
struct CloseState {
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
    /// Tasks polling for `finished` (`poll_close_finished`).
    finished_wakers: CloseWakers,
}

/// What the reader task has received and the user has not read yet.
struct ReadState {
    incoming: mpsc::Receiver<io::Result<Vec<u8>>>,
    /// The rest of a chunk a `poll_read` did not fully take.
    chunk: Vec<u8>,
    taken: usize,
}

struct Handles {
    shared: Arc<CloseState>,
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

fn lock_unpoisoned<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
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
    inner: Arc<Handles>,
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
    /// use persistent_connection::conn::{Keepalive, TcpOptions};
    /// use persistent_connection::TcpConnection;
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
        let shared = Arc::new(CloseState {
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            writer: StdMutex::new(Some(write)),
            write_waker: AtomicWaker::new(),
            finished: watch::Sender::new(false),
            finished_wakers: CloseWakers::default(),
        });
        let (data_tx, data_rx) = mpsc::channel(CHUNKS_BUFFERED);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(reader(read, data_tx, stop_rx, shared.clone()));
        Ok(TcpConnection {
            inner: Arc::new(Handles {
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
            let mut state = lock_unpoisoned(&self.inner.read);
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
        let mut state = lock_unpoisoned(&self.inner.read);
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
        match lock_unpoisoned(&shared.writer).as_mut() {
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

impl CloseState {
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
    shared: Arc<CloseState>,
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
    drop(lock_unpoisoned(&shared.writer).take());
    shared.finished.send_replace(true);
    shared.finished_wakers.wake_all();
}

impl Closable for TcpConnection {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.inner.shared.mark_closing();
        if let Some(stop) = lock_unpoisoned(&self.inner.stop).take() {
            let _ = stop.send(());
        }
        let writer = lock_unpoisoned(&self.inner.shared.writer).take();
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

    fn poll_close_finished(&self, cx: &mut Context<'_>) -> Option<Poll<()>> {
        let shared = &self.inner.shared;
        Some(
            shared
                .finished_wakers
                .poll(cx, || *shared.finished.borrow()),
        )
    }
}

#[cfg(all(test, not(pc_loom)))]
mod tests {
    use std::time::Duration;

    use super::super::options::{DEFAULT_KEEPALIVE, DEFAULT_USER_TIMEOUT, Keepalive};
    use super::*;

    /// What the kernel has on `conn`'s socket (getsockopt through socket2).
    #[derive(Debug)]
    struct OnSocket {
        nodelay: bool,
        keepalive: bool,
        user_timeout: Option<Duration>,
        idle: Duration,
        interval: Duration,
        retries: u32,
    }

    fn on_socket(conn: &TcpConnection) -> OnSocket {
        let writer = lock_unpoisoned(&conn.inner.shared.writer);
        let stream: &TcpStream = writer.as_ref().expect("open").as_ref();
        let socket = socket2::SockRef::from(stream);
        OnSocket {
            nodelay: socket.tcp_nodelay().unwrap(),
            keepalive: socket.keepalive().unwrap(),
            user_timeout: socket.tcp_user_timeout().unwrap(),
            idle: socket.tcp_keepalive_time().unwrap(),
            interval: socket.tcp_keepalive_interval().unwrap(),
            retries: socket.tcp_keepalive_retries().unwrap(),
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

    /// Issue 28 item 3: Linux reads `TCP_USER_TIMEOUT` as an int of milliseconds, so a
    /// longer user timeout (`Duration::MAX`, 30 days) failed every connect with EINVAL
    /// though the docs said it was clamped. It is clamped to `i32::MAX` ms (24.8 days).
    #[tokio::test]
    async fn a_user_timeout_longer_than_linux_takes_is_clamped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let most = Duration::from_millis(i32::MAX as u64);
        for asked in [Duration::MAX, Duration::from_secs(30 * 86_400), most] {
            let options = TcpOptions::new().user_timeout(asked);
            assert_eq!(options.user_timeout_value(), most, "{asked:?}");
            let conn = TcpConnection::connect_with(addr, &options)
                .await
                .unwrap_or_else(|e| panic!("user timeout {asked:?}: {e}"));
            assert_eq!(on_socket(&conn).user_timeout, Some(most), "{asked:?}");
        }
        // Sub-millisecond parts are dropped, but a non-zero timeout is never 0 ("off").
        let options = TcpOptions::new().user_timeout(Duration::from_micros(1500));
        let conn = TcpConnection::connect_with(addr, &options).await.unwrap();
        assert_eq!(
            on_socket(&conn).user_timeout,
            Some(Duration::from_millis(1))
        );
        let options = TcpOptions::new().user_timeout(Duration::from_nanos(1));
        assert_eq!(options.user_timeout_value(), Duration::from_millis(1));
    }

    /// Issue 28 item 3: Linux takes keepalive times in whole seconds from 1 to 32767 and
    /// 1 to 127 probes: a keepalive under 1 s failed every connect with EINVAL and 1.5 s
    /// silently became 1 s. Times are rounded up to whole seconds within those bounds
    /// when the option is set (so `keepalive_settings` says what the socket gets).
    #[tokio::test]
    async fn keepalive_is_rounded_up_to_what_linux_takes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secs = Duration::from_secs;
        for (asked, taken) in [
            (
                Keepalive::new(Duration::from_millis(500), Duration::from_millis(1500), 3),
                Keepalive::new(secs(1), secs(2), 3),
            ),
            (
                Keepalive::new(Duration::ZERO, Duration::ZERO, 0),
                Keepalive::new(secs(1), secs(1), 1),
            ),
            (
                Keepalive::new(secs(40_000), Duration::MAX, 1_000),
                Keepalive::new(secs(32_767), secs(32_767), 127),
            ),
            (
                Keepalive::new(secs(7), secs(2), 4),
                Keepalive::new(secs(7), secs(2), 4),
            ),
        ] {
            let options = TcpOptions::new().keepalive(asked);
            assert_eq!(options.keepalive_settings(), Some(taken), "{asked:?}");
            let conn = TcpConnection::connect_with(addr, &options)
                .await
                .unwrap_or_else(|e| panic!("keepalive {asked:?}: {e}"));
            let s = on_socket(&conn);
            assert!(s.keepalive, "{asked:?}");
            assert_eq!(
                Keepalive::new(s.idle, s.interval, s.retries),
                taken,
                "{asked:?}"
            );
        }
    }

    /// Issue 27 point 4: Linux lets `TCP_USER_TIMEOUT` override keepalive's probe count,
    /// so an explicit keepalive of 1 s / 1 s / 3 probes (gives up after 4 s) was slowed to
    /// the default user timeout's 20 s. Set without a user timeout, keepalive now brings
    /// its own: idle + interval × retries, at most the default; an explicit user timeout
    /// still wins.
    #[tokio::test]
    async fn an_explicit_keepalive_is_not_slowed_by_the_default_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secs = Duration::from_secs;
        let fast = Keepalive::new(secs(1), secs(1), 3);
        let slow = Keepalive::new(secs(30), secs(10), 3);
        for (options, user_timeout, keepalive) in [
            (TcpOptions::new().keepalive(fast), secs(4), fast),
            // Longer than the default: the default still bounds data in flight.
            (
                TcpOptions::new().keepalive(slow),
                DEFAULT_USER_TIMEOUT,
                slow,
            ),
            // An explicit user timeout wins, whichever is set first.
            (
                TcpOptions::new().keepalive(fast).user_timeout(secs(9)),
                secs(9),
                fast,
            ),
            (
                TcpOptions::new().user_timeout(secs(9)).keepalive(fast),
                secs(9),
                fast,
            ),
            (
                TcpOptions::new()
                    .keepalive(fast)
                    .user_timeout(Duration::ZERO),
                Duration::ZERO,
                fast,
            ),
            (TcpOptions::new(), DEFAULT_USER_TIMEOUT, DEFAULT_KEEPALIVE),
        ] {
            assert_eq!(options.user_timeout_value(), user_timeout, "{options:?}");
            let s = on_socket(&TcpConnection::connect_with(addr, &options).await.unwrap());
            let expected = (!user_timeout.is_zero()).then_some(user_timeout);
            assert_eq!(s.user_timeout, expected, "{options:?}");
            assert_eq!(
                Keepalive::new(s.idle, s.interval, s.retries),
                keepalive,
                "{options:?}"
            );
        }
        // Keepalive turned off again: the default user timeout.
        let options = TcpOptions::new().keepalive(fast).no_keepalive();
        assert_eq!(options.user_timeout_value(), DEFAULT_USER_TIMEOUT);
    }
}
