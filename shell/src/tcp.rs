//! A TCP connection on Tokio that notices the peer closing.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

use crate::closable::Closable;
use crate::error::IoError;

/// How many received chunks wait for [`TcpConnection::recv`] before the reader stops
/// reading (back-pressure onto the peer).
const CHUNKS_BUFFERED: usize = 16;
/// The largest chunk one read returns.
const CHUNK_SIZE: usize = 8 * 1024;

/// State shared by the handles and the background reader. It owns no way to stop the reader:
/// that is [`Inner::stop`], so dropping every handle stops the reader.
struct Shared {
    /// Close has begun, by either side.
    closed: AtomicBool,
    /// The same, for waiters: a blocked [`TcpConnection::send`] gives up when it turns true.
    closing: watch::Sender<bool>,
    /// The write half, until closing releases it.
    writer: Mutex<Option<OwnedWriteHalf>>,
    /// Set by the reader once both halves are released.
    finished: watch::Sender<bool>,
}

struct Inner {
    shared: Arc<Shared>,
    incoming: Mutex<mpsc::Receiver<Vec<u8>>>,
    /// Dropping or firing it stops the reader.
    stop: StdMutex<Option<oneshot::Sender<()>>>,
    peer: SocketAddr,
    local: SocketAddr,
}

/// A TCP connection on Tokio that notices the peer closing: a background reader reads the
/// socket all the time, hands the bytes to [`recv`](TcpConnection::recv), and on end of
/// file or error marks the connection closed, releases the socket and resolves
/// [`close_finished`](Closable::close_finished). That is how the persistent connection
/// learns that a server died (R6).
///
/// Cheap to clone (an `Arc`); all clones are the same connection. Dropping the last clone
/// stops the reader and closes the socket.
///
/// Back-pressure: the reader buffers up to 16 chunks (8 KiB each) that nobody has taken
/// with [`recv`](TcpConnection::recv), then stops reading the socket until someone does.
/// A peer that closes behind that much unread data is noticed only once it is read, so
/// read what the peer sends.
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
/// let conn = TcpConnection::connect(addr).await.unwrap();
/// conn.send(b"hello").await.unwrap();
/// assert_eq!(conn.recv().await.unwrap(), b"hello");
/// server.await.unwrap();
/// conn.close_finished().await; // the server closed: noticed without a read of ours
/// assert!(conn.is_closed());
/// assert_eq!(conn.recv().await, None);
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
    /// Connects to `addr` (with `TCP_NODELAY`) and starts the background reader.
    /// Must be called within a Tokio runtime.
    pub async fn connect(addr: SocketAddr) -> Result<TcpConnection, IoError> {
        let stream = TcpStream::connect(addr).await?;
        TcpConnection::from_stream(stream).map_err(IoError::from)
    }

    /// Wraps an established stream and starts the background reader. Must be called within
    /// a Tokio runtime.
    pub fn from_stream(stream: TcpStream) -> io::Result<TcpConnection> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            closing: watch::Sender::new(false),
            writer: Mutex::new(Some(write)),
            finished: watch::Sender::new(false),
        });
        let (data_tx, data_rx) = mpsc::channel(CHUNKS_BUFFERED);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(reader(read, data_tx, stop_rx, shared.clone()));
        Ok(TcpConnection {
            inner: Arc::new(Inner {
                shared,
                incoming: Mutex::new(data_rx),
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

    /// Writes all of `data`. Fails with `NotConnected` once closing has begun, including
    /// while blocked on a peer that does not read (so a send never holds up `close()`).
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        let not_connected =
            || io::Error::new(io::ErrorKind::NotConnected, "the connection is closed");
        let mut closing = self.inner.shared.closing.subscribe();
        let mut writer = tokio::select! {
            w = self.inner.shared.writer.lock() => w,
            _ = closing.wait_for(|c| *c) => return Err(not_connected()),
        };
        match writer.as_mut() {
            Some(w) if !self.is_closed() => tokio::select! {
                r = w.write_all(data) => r,
                _ = closing.wait_for(|c| *c) => Err(not_connected()),
            },
            _ => Err(not_connected()),
        }
    }

    /// The next chunk of bytes received, as read (no framing), or `None` once the
    /// connection is closed and everything received before has been returned.
    pub async fn recv(&self) -> Option<Vec<u8>> {
        self.inner.incoming.lock().await.recv().await
    }
}

impl Shared {
    fn mark_closing(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(true);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.mark_closing();
        // Dropping `stop` (here, with `self`) also stops the reader; nothing else to do.
    }
}

/// The background reader: forwards bytes until end of file, an error or a stop request;
/// then releases both halves and marks the connection finished.
async fn reader(
    mut read: OwnedReadHalf,
    data: mpsc::Sender<Vec<u8>>,
    mut stop: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        tokio::select! {
            // Fires on a stop request and when every handle is gone.
            _ = &mut stop => break,
            r = read.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tokio::select! {
                        _ = &mut stop => break,
                        sent = data.send(buf[..n].to_vec()) => if sent.is_err() { break },
                    }
                }
            },
        }
    }
    shared.mark_closing();
    drop(read);
    drop(data);
    // Release the write half unless `close()` already took it. A `send` blocked on it gives
    // up as soon as closing is marked (just above), so this lock is not held for long.
    drop(shared.writer.lock().await.take());
    shared.finished.send_replace(true);
}

impl Closable for TcpConnection {
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.inner.shared.mark_closing();
        if let Some(stop) = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        let shared = self.inner.shared.clone();
        let mut finished = shared.finished.subscribe();
        async move {
            if let Some(mut w) = shared.writer.lock().await.take() {
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
