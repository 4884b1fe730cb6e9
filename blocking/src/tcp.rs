//! A TCP connection for the blocking driver: a reader thread hands over what arrives and
//! notices the peer closing, so a dead server turns into `Disconnected`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use crate::Connection;

/// A TCP stream with a reader thread. Cheap to clone; all clones are the same connection.
#[derive(Clone)]
pub struct TcpConnection {
    inner: Arc<Inner>,
}

struct Inner {
    stream: TcpStream,
    peer: SocketAddr,
    incoming: Mutex<mpsc::Receiver<Vec<u8>>>,
    state: Arc<State>,
}

/// `(closing, reader_done)`.
struct State {
    flags: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl State {
    fn set(&self, f: impl FnOnce(&mut (bool, bool))) {
        f(&mut self.flags.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_all();
    }
}

impl TcpConnection {
    /// Connects to `addr`, giving up after `timeout`, and starts the reader thread. An
    /// error names `addr` and keeps the kind of the failure (a zero `timeout` is
    /// `InvalidInput`).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpConnection> {
        let failed =
            |step: &str, e: io::Error| io::Error::new(e.kind(), format!("{step} {addr}: {e}"));
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed("connect to", e))?;
        let mut reader = stream
            .try_clone()
            .map_err(|e| failed("start the connection to", e))?;
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(State {
            flags: Mutex::new((false, false)),
            changed: Condvar::new(),
        });
        let reader_state = state.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                let _ = tx.send(buf[..n].to_vec());
            }
            reader_state.set(|f| *f = (true, true));
        });
        Ok(TcpConnection {
            inner: Arc::new(Inner {
                stream,
                peer: addr,
                incoming: Mutex::new(rx),
                state,
            }),
        })
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// Writes all of `data`.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        (&self.inner.stream).write_all(data)
    }

    /// The next bytes received, waiting at most `timeout`; `None` on timeout or once the
    /// connection has closed and everything received was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let incoming = self
            .inner
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        incoming.recv_timeout(timeout).ok()
    }

    /// True once closing has begun, by either side.
    pub fn is_closed(&self) -> bool {
        self.inner
            .state
            .flags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

impl Connection for TcpConnection {
    fn close(&self) {
        self.inner.state.set(|f| f.0 = true);
        // Wakes the reader thread's `read` with end of file.
        let _ = self.inner.stream.shutdown(Shutdown::Both);
    }

    fn wait_closed(&self) {
        let state = &self.inner.state;
        let flags = state.flags.lock().unwrap_or_else(|e| e.into_inner());
        let _done = state.changed.wait_while(flags, |f| !f.1);
    }
}

impl Drop for Inner {
    /// The last clone gone: stop the reader thread, which holds a second handle.
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl PartialEq for TcpConnection {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("peer", &self.inner.peer)
            .field("is_closed", &self.is_closed())
            .finish()
    }
}
