//! An instrumented TCP connection, the connect function that makes it, a catalog whose
//! lookup can hang or fail, and the error type of both.
//!
//! Every [`Conn`] handed to the library is recorded in a [`Ledger`], which counts for each
//! connection how often `close()` was called, how often its resources were released
//! (must be exactly once) and whether its last handle was dropped while still open.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::Closable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

/// Why a lookup or a connect failed. Compares the failure itself (docs/behaviour.md §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fail {
    /// The catalog said no.
    Lookup(String),
    /// The OS said no.
    Io(ErrorKind),
    /// The server closed before greeting.
    Eof,
    /// The server greeted with something else than `HELLO`.
    Rejected(String),
    /// The connect function's own deadline passed.
    Timeout,
    /// A test's deliberate failure.
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Fail {}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        match e.kind() {
            ErrorKind::UnexpectedEof => Fail::Eof,
            k => Fail::Io(k),
        }
    }
}

/// One connection's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// `close()` calls (by anyone).
    pub close_calls: usize,
    /// Times its socket was released: must end at exactly 1.
    pub released: usize,
    /// The peer closed it first.
    pub peer_closed: bool,
    /// Its last handle was dropped while it was still open (nobody closed it).
    pub dropped_open: bool,
}

/// Every connection made by a [`Connector`].
#[derive(Debug, Default)]
pub struct Ledger {
    records: Mutex<Vec<Record>>,
    changed: Notify,
}

impl Ledger {
    /// A new, empty ledger.
    pub fn new() -> Arc<Ledger> {
        Arc::new(Ledger::default())
    }

    /// A copy of all records, in creation order.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// How many connections were made.
    pub fn made(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// How many connections are still open (not released).
    pub fn open(&self) -> usize {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.released == 0)
            .count()
    }

    fn update(&self, id: usize, f: impl FnOnce(&mut Record)) {
        f(&mut self.records.lock().unwrap()[id]);
        self.changed.notify_waiters();
    }

    /// Wait (bounded by `guard`) until `cond` holds of the records.
    pub async fn wait_until(&self, what: &str, guard: Duration, cond: impl Fn(&[Record]) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if cond(&self.records.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(guard, wait).await.is_err() {
            panic!(
                "hang guard ({guard:?}) passed waiting for: {what}; ledger: {:?}",
                self.records()
            );
        }
    }

    /// I6 / R8: every connection made was released exactly once and none was left to be
    /// closed by dropping it. Call after the persistent connection's close finished.
    pub fn assert_all_closed_exactly_once(&self) {
        let records = self.records();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.released, 1,
                "connection {i} was released {} times: {records:?}",
                r.released
            );
            assert!(
                !r.dropped_open,
                "connection {i} was dropped while open instead of being closed: {records:?}"
            );
        }
    }
}

struct Shared {
    id: usize,
    ledger: Arc<Ledger>,
    closed: AtomicBool,
    shutdown: Notify,
    /// For socketless connections: the simulated peer goes away.
    peer_gone: Notify,
    released: watch::Sender<bool>,
}

struct Guard {
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The last handle is gone: release the socket so nothing leaks, but remember that
        // nobody closed it.
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.shared
                .ledger
                .update(self.shared.id, |r| r.dropped_open = true);
        }
        self.shared.shutdown.notify_one();
    }
}

/// An instrumented TCP connection: a cheap handle (`Arc`). A watcher task owns the socket,
/// reads and discards what the peer sends, and releases the socket when the peer closes or
/// when `close()` is called.
#[derive(Clone)]
pub struct Conn {
    guard: Arc<Guard>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn#{}", self.guard.shared.id)
    }
}

impl PartialEq for Conn {
    fn eq(&self, other: &Conn) -> bool {
        self.guard.shared.id == other.guard.shared.id
    }
}

impl Conn {
    /// A connection without a socket, for tests on the paused clock (where waiting on real
    /// I/O would let virtual time run away). [`Conn::simulate_peer_close`] plays the peer.
    pub fn socketless(ledger: &Arc<Ledger>) -> Conn {
        Conn::new(None, ledger)
    }

    /// For a socketless connection: the peer goes away.
    pub fn simulate_peer_close(&self) {
        self.guard.shared.peer_gone.notify_one();
    }

    fn new(stream: Option<TcpStream>, ledger: &Arc<Ledger>) -> Conn {
        let id = {
            let mut records = ledger.records.lock().unwrap();
            records.push(Record::default());
            records.len() - 1
        };
        ledger.changed.notify_waiters();
        let shared = Arc::new(Shared {
            id,
            ledger: ledger.clone(),
            closed: AtomicBool::new(false),
            shutdown: Notify::new(),
            peer_gone: Notify::new(),
            released: watch::channel(false).0,
        });
        tokio::spawn(watch_socket(stream, shared.clone()));
        Conn {
            guard: Arc::new(Guard { shared }),
        }
    }

    /// Its number in the ledger.
    pub fn id(&self) -> usize {
        self.guard.shared.id
    }

    /// Start closing; resolves once the socket is released. Idempotent.
    pub async fn close(&self) {
        let s = &self.guard.shared;
        s.ledger.update(s.id, |r| r.close_calls += 1);
        s.closed.store(true, Ordering::SeqCst);
        s.shutdown.notify_one();
        self.close_finished().await;
    }

    /// True once closing has begun, by either side.
    pub fn is_closed(&self) -> bool {
        self.guard.shared.closed.load(Ordering::SeqCst)
    }

    /// Resolves once the socket is released, without starting to close.
    pub async fn close_finished(&self) {
        let mut rx = self.guard.shared.released.subscribe();
        let _ = rx.wait_for(|released| *released).await;
    }
}

impl Closable for Conn {
    async fn close(&self) {
        Conn::close(self).await
    }

    fn is_closed(&self) -> bool {
        Conn::is_closed(self)
    }

    async fn close_finished(&self) {
        Conn::close_finished(self).await
    }
}

async fn watch_socket(stream: Option<TcpStream>, shared: Arc<Shared>) {
    let peer_closed = match stream {
        Some(mut stream) => {
            let mut buf = [0u8; 512];
            let peer_closed = loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break true,
                        Ok(_) => {}
                    },
                    () = shared.shutdown.notified() => break false,
                }
            };
            shared.closed.store(true, Ordering::SeqCst);
            drop(stream);
            peer_closed
        }
        None => {
            let peer_closed = tokio::select! {
                () = shared.peer_gone.notified() => true,
                () = shared.shutdown.notified() => false,
            };
            shared.closed.store(true, Ordering::SeqCst);
            peer_closed
        }
    };
    shared.ledger.update(shared.id, |r| {
        r.released += 1;
        r.peer_closed |= peer_closed;
    });
    shared.released.send_replace(true);
}

/// How [`Connector::connect`] connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// A TCP connect is enough.
    None,
    /// Wait for the child server's `HELLO\n` greeting.
    Hello,
}

/// The tests' connect function: TCP connect to 127.0.0.1, optionally wait for the greeting,
/// all within `timeout`; then hand out an instrumented [`Conn`].
#[derive(Clone, Debug)]
pub struct Connector {
    /// Where every connection made is recorded.
    pub ledger: Arc<Ledger>,
    /// Whether to wait for a greeting.
    pub handshake: Handshake,
    /// The connect function's own deadline.
    pub timeout: Duration,
    /// Connects begun.
    pub started: Counter,
    /// Connects whose TCP connection is established and that now wait for the greeting.
    pub handshaking: Counter,
}

impl Connector {
    /// A connector with a fresh ledger.
    pub fn new(handshake: Handshake, timeout: Duration) -> Connector {
        Connector {
            ledger: Ledger::new(),
            handshake,
            timeout,
            started: Counter::default(),
            handshaking: Counter::default(),
        }
    }

    /// Connect to `addr` (which must be on 127.0.0.1).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, Fail> {
        assert!(addr.ip().is_loopback(), "tests connect to 127.0.0.1 only");
        self.started.bump();
        let handshake = self.handshake;
        let handshaking = self.handshaking.clone();
        let attempt = async move {
            let stream = TcpStream::connect(addr).await?;
            if handshake == Handshake::Hello {
                handshaking.bump();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await? == 0 {
                    return Err(Fail::Eof);
                }
                if line != "HELLO\n" {
                    return Err(Fail::Rejected(line.trim().to_owned()));
                }
                // Nothing else is sent before the greeting is read, so the buffer is empty.
                Ok(reader.into_inner())
            } else {
                Ok(stream)
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(stream)) => Ok(Conn::new(Some(stream), &self.ledger)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Fail::Timeout),
        }
    }
}

/// What the catalog answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// This address.
    Addr(SocketAddr),
    /// This error.
    Fail(String),
    /// Never answer.
    Hang,
    /// Panic (R13).
    Panic,
}

/// A catalog of where the service is, whose answer a test changes at will.
#[derive(Clone, Debug)]
pub struct Catalog {
    answer: Arc<Mutex<Lookup>>,
    lookups: Counter,
}

impl Catalog {
    /// A catalog answering `answer`.
    pub fn new(answer: Lookup) -> Catalog {
        Catalog {
            answer: Arc::new(Mutex::new(answer)),
            lookups: Counter::default(),
        }
    }

    /// Change the answer.
    pub fn set(&self, answer: Lookup) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Lookups begun so far.
    pub fn lookups(&self) -> usize {
        self.lookups.get()
    }

    /// Wait (bounded by `guard`) until at least `n` lookups have begun.
    pub async fn wait_lookups(&self, n: usize, guard: Duration) {
        self.lookups.wait_at_least(n, guard, "lookups").await;
    }

    /// Look the address up.
    pub async fn lookup(&self) -> Result<SocketAddr, Fail> {
        self.lookups.bump();
        let answer = self.answer.lock().unwrap().clone();
        match answer {
            Lookup::Addr(a) => Ok(a),
            Lookup::Fail(e) => Err(Fail::Lookup(e)),
            Lookup::Hang => std::future::pending().await,
            Lookup::Panic => panic!("catalog lookup panics (deliberately, R13)"),
        }
    }
}

/// A shared counter that can be awaited.
#[derive(Clone, Debug)]
pub struct Counter(Arc<watch::Sender<usize>>);

impl Default for Counter {
    fn default() -> Counter {
        Counter(Arc::new(watch::channel(0).0))
    }
}

impl Counter {
    /// Add one.
    pub fn bump(&self) {
        self.0.send_modify(|k| *k += 1);
    }

    /// The count.
    pub fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Wait (bounded by `guard`) until the count is at least `n`.
    pub async fn wait_at_least(&self, n: usize, guard: Duration, what: &str) {
        let mut rx = self.0.subscribe();
        if tokio::time::timeout(guard, rx.wait_for(|k| *k >= n))
            .await
            .is_err()
        {
            panic!(
                "hang guard ({guard:?}) passed waiting for {n} {what}; saw {}",
                self.get()
            );
        }
    }
}
