//! In-process misbehaving servers on 127.0.0.1, on plain threads (so that they add no task
//! to the runtime under test, whose task count the tests check).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};

/// What [`ThreadServer`] does with each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Close it at once (the client sees end of file).
    AcceptAndClose,
    /// Reset it at once: SO_LINGER 0, then close (the client sees `ECONNRESET`).
    Reset,
}

/// A server that accepts and closes or resets every connection, on its own thread.
/// Dropping it stops the thread and closes the listener.
#[derive(Debug)]
pub struct ThreadServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadServer {
    /// Start one on an ephemeral port.
    pub fn start(behaviour: Behaviour) -> ThreadServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    if behaviour == Behaviour::Reset {
                        SockRef::from(&stream)
                            .set_linger(Some(Duration::ZERO))
                            .expect("SO_LINGER 0");
                    }
                    // Counted before the close, so a client that saw the close sees the count.
                    accepted.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            })
        };
        ThreadServer {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections it has accepted (and closed or reset) so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking `accept`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listener whose accept queue is full: it never accepts, its backlog is 0, and filler
/// connections occupy the queue. On Linux a further `connect` then hangs (the SYN is
/// dropped and retransmitted) until the caller's own timeout.
#[derive(Debug)]
pub struct FullBacklog {
    addr: SocketAddr,
    _listener: Socket,
    fillers: Vec<TcpStream>,
}

impl FullBacklog {
    /// Make one, and fill its queue until a connect times out (bounded: 64 fillers).
    pub fn start() -> FullBacklog {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .expect("bind");
        socket.listen(0).expect("listen");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let mut fillers = Vec::new();
        for _ in 0..64 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(250)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    return FullBacklog {
                        addr,
                        _listener: socket,
                        fillers,
                    };
                }
                Err(e) => panic!("filling the accept queue: {e}"),
            }
        }
        panic!("the accept queue of a backlog-0 listener never filled");
    }

    /// Its address: connecting to it hangs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections fill the queue.
    pub fn fillers(&self) -> usize {
        self.fillers.len()
    }
}

/// An address on 127.0.0.1 where nothing listens (bound once, then released): connects to
/// it are refused.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    l.local_addr().expect("addr")
}
