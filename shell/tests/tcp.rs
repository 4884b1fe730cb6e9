//! Integration over real TCP on 127.0.0.1: redundant echo servers published in a catalog,
//! failover when the current one dies, everything restarted, close during connect, during
//! backoff and while connected; and the ready `TcpConnection` on its own.
//!
//! Real sockets need the real clock, so these tests bound every wait with a generous guard
//! (`GUARD`) instead of asserting on durations; they take milliseconds when all is well.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::{
    AttemptError, Closable, Error, Event, IoError, PersistentConnection, TcpConnection,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

const GUARD: Duration = Duration::from_secs(10);

/// A `TcpConnection` to a fresh listener on 127.0.0.1, and the server's side of it.
async fn connected_pair() -> (TcpConnection, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = TcpConnection::connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (conn, server)
}

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// What a test server does with each connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Answers each line `L` with `<name> L`.
    Echo,
    /// Reads and says nothing.
    Silent,
}

/// A server on 127.0.0.1 that reports, for every accepted connection, when the client
/// closed it.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
    mode: Mode,
    client_closed: mpsc::UnboundedSender<&'static str>,
}

impl Server {
    async fn start(
        name: &'static str,
        port: u16,
        mode: Mode,
        client_closed: mpsc::UnboundedSender<&'static str>,
    ) -> Server {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let tx = client_closed.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((stream, _)) = a else { break };
                        let tx = tx.clone();
                        conns.spawn(async move {
                            serve(name, mode, stream).await;
                            let _ = tx.send(name);
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Server {
            name,
            addr,
            task: Some(task),
            mode,
            client_closed,
        }
    }

    /// Kills it: the listener and every connection go at once.
    async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    async fn restart(&mut self) {
        self.kill().await;
        *self = Server::start(
            self.name,
            self.addr.port(),
            self.mode,
            self.client_closed.clone(),
        )
        .await;
    }
}

async fn serve(name: &'static str, mode: Mode, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if mode == Mode::Echo
            && write
                .write_all(format!("{name} {line}\n").as_bytes())
                .await
                .is_err()
        {
            break;
        }
    }
}

/// The catalog: published servers by name; a lookup returns the first.
#[derive(Clone, Default)]
struct Catalog(Arc<Mutex<BTreeMap<&'static str, SocketAddr>>>);

impl Catalog {
    fn set(&self, name: &'static str, addr: Option<SocketAddr>) {
        let mut m = self.0.lock().unwrap();
        match addr {
            Some(a) => m.insert(name, a),
            None => m.remove(name),
        };
    }

    fn lookup(&self) -> Result<SocketAddr, String> {
        self.0
            .lock()
            .unwrap()
            .values()
            .next()
            .copied()
            .ok_or_else(|| "nothing published".to_owned())
    }
}

type Pc = PersistentConnection<SocketAddr, TcpConnection, String>;

fn persistent(catalog: &Catalog, retry: Duration, log: Arc<Mutex<Vec<String>>>) -> Pc {
    let catalog = catalog.clone();
    PersistentConnection::builder(
        "tcp-test",
        move || {
            let r = catalog.lookup();
            async move { r }
        },
        |addr: SocketAddr, _cx| async move {
            TcpConnection::connect(addr)
                .await
                .map_err(|e: IoError| e.kind().to_string())
        },
    )
    .retry_policy(retry)
    .seed(3)
    .on_event(move |e| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(match e {
                Event::AttemptingToConnect => "Attempting".into(),
                Event::ObtainedAddress(a) => format!("Obtained({})", a.port()),
                Event::FailedToConnect(e) => format!("Failed({e})"),
                Event::Connected(c) => format!("Connected({})", c.peer_addr().port()),
                Event::Disconnected => "Disconnected".into(),
                Event::HandedOver { .. } => "HandedOver".into(),
            })
        }
    })
    .build()
}

/// One echo round trip; returns the name of the server that answered.
async fn ask(conn: &TcpConnection, n: u32) -> String {
    conn.send(format!("q{n}\n").as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    while !buf.contains(&b'\n') {
        buf.extend(guard("reply", conn.recv()).await.expect("reply"));
    }
    let line = String::from_utf8(buf).unwrap();
    let (server, rest) = line.trim_end().split_once(' ').unwrap();
    assert_eq!(rest, format!("q{n}"));
    server.to_owned()
}

#[tokio::test]
async fn failover_to_the_next_server_when_the_current_one_dies_then_restart_all() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let catalog = Catalog::default();
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        let s = Server::start(name, 0, Mode::Echo, closed_tx.clone()).await;
        catalog.set(name, Some(s.addr));
        servers.push(s);
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let pc = persistent(&catalog, Duration::from_millis(20), log.clone());

    let c1 = guard("first connection", pc.connected()).await;
    assert_eq!(c1.peer_addr(), servers[0].addr);
    assert_eq!(ask(&c1, 1).await, "a");

    // Kill the current server; the catalog withdraws it.
    catalog.set("a", None);
    servers[0].kill().await;
    guard("death noticed", c1.close_finished()).await;
    assert!(c1.is_closed());
    let c2 = guard("failover", pc.connected()).await;
    assert_eq!(c2.peer_addr(), servers[1].addr, "failed over to the next");
    assert_eq!(ask(&c2, 2).await, "b");

    // And again.
    catalog.set("b", None);
    servers[1].kill().await;
    guard("death noticed", c2.close_finished()).await;
    let c3 = guard("second failover", pc.connected()).await;
    assert_eq!(c3.peer_addr(), servers[2].addr);
    assert_eq!(ask(&c3, 3).await, "c");

    // Everything dies: attempts fail.
    catalog.set("c", None);
    servers[2].kill().await;
    guard("death noticed", c3.close_finished()).await;
    let outcome = guard("failure", pc.connected_or_failed_to_connect()).await;
    assert_eq!(
        outcome.unwrap_err(),
        AttemptError::Failed(Error::User("nothing published".into()))
    );

    // Restart all, on their ports: service is back.
    for s in &mut servers {
        s.restart().await;
        catalog.set(s.name, Some(s.addr));
    }
    let c4 = guard("after restart", pc.connected()).await;
    assert_eq!(c4.peer_addr(), servers[0].addr);
    assert_eq!(ask(&c4, 4).await, "a");

    guard("close", pc.close()).await;
    assert!(c4.is_closed());
    // The server saw our close.
    // (Killed servers report nothing: their connection tasks were aborted.)
    assert_eq!(
        guard("server sees client close", closed_rx.recv()).await,
        Some("a")
    );
    let log = log.lock().unwrap().clone();
    let (pa, pb, pc_) = (
        servers[0].addr.port(),
        servers[1].addr.port(),
        servers[2].addr.port(),
    );
    let expected_prefix = vec![
        "Attempting".to_string(),
        format!("Obtained({pa})"),
        format!("Connected({pa})"),
        "Disconnected".into(),
        "Attempting".into(),
        format!("Obtained({pb})"),
        format!("Connected({pb})"),
        "Disconnected".into(),
        "Attempting".into(),
        format!("Obtained({pc_})"),
        format!("Connected({pc_})"),
        "Disconnected".into(),
        "Attempting".into(),
        "Failed(nothing published)".into(),
    ];
    assert_eq!(log[..expected_prefix.len()], expected_prefix[..], "{log:?}");
    assert_eq!(log.last().map(String::as_str), Some("Disconnected"));
    assert!(log.contains(&format!("Connected({pa})")));
    for s in &mut servers {
        s.kill().await;
    }
}

#[tokio::test]
async fn close_during_connect_is_prompt_and_drops_the_half_made_connection() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut silent = Server::start("silent", 0, Mode::Silent, closed_tx).await;
    let addr = silent.addr;
    let (connecting_tx, mut connecting_rx) = mpsc::unbounded_channel();
    // `connect` waits for a greeting the silent server never sends.
    let pc: PersistentConnection<SocketAddr, TcpConnection, String> =
        PersistentConnection::builder(
            "silent",
            move || async move { Ok(addr) },
            move |addr: SocketAddr, _cx| {
                let connecting = connecting_tx.clone();
                async move {
                    let conn = TcpConnection::connect(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = connecting.send(());
                    match conn.recv().await {
                        Some(_) => Ok(conn),
                        None => Err("no greeting".to_owned()),
                    }
                }
            },
        )
        .build();
    guard("connect in progress", connecting_rx.recv()).await;
    guard("close during connect", pc.close()).await;
    assert!(pc.is_closed());
    // The cancelled connect's socket was dropped: the server sees end of file.
    assert_eq!(
        guard("server sees the close", closed_rx.recv()).await,
        Some("silent")
    );
    assert!(pc.current_connection().is_none());
    silent.kill().await;
}

#[tokio::test]
async fn close_during_backoff_is_prompt() {
    let refused = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap()
    };
    let catalog = Catalog::default();
    catalog.set("gone", Some(refused));
    let log = Arc::new(Mutex::new(Vec::new()));
    // An hour of backoff after the first refusal.
    let pc = persistent(&catalog, Duration::from_secs(3600), log.clone());
    let outcome = guard("refused", pc.connected_or_failed_to_connect()).await;
    assert!(
        matches!(outcome, Err(AttemptError::Failed(Error::User(_)))),
        "{outcome:?}"
    );
    guard("close during backoff", pc.close()).await;
    assert_eq!(
        log.lock().unwrap()[..],
        [
            "Attempting".to_string(),
            format!("Obtained({})", refused.port()),
            "Failed(connection refused)".to_string()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_connected_closes_the_socket_and_emits_disconnected() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut server = Server::start("echo", 0, Mode::Echo, closed_tx).await;
    let catalog = Catalog::default();
    catalog.set("echo", Some(server.addr));
    let log = Arc::new(Mutex::new(Vec::new()));
    let pc = persistent(&catalog, Duration::from_millis(20), log.clone());
    let conn = guard("connected", pc.connected()).await;
    assert_eq!(ask(&conn, 1).await, "echo");
    guard("close", pc.close()).await;
    assert!(conn.is_closed());
    assert_eq!(
        guard("server sees close", closed_rx.recv()).await,
        Some("echo")
    );
    assert_eq!(
        log.lock().unwrap().last().map(String::as_str),
        Some("Disconnected")
    );
    assert!(
        conn.send(b"late\n").await.is_err(),
        "send after close fails"
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_closes_the_socket() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut server = Server::start("echo", 0, Mode::Echo, closed_tx).await;
    let catalog = Catalog::default();
    catalog.set("echo", Some(server.addr));
    let pc = persistent(&catalog, Duration::from_millis(20), Default::default());
    let conn = guard("connected", pc.connected()).await;
    drop(pc);
    assert_eq!(
        guard("server sees close after drop (R14)", closed_rx.recv()).await,
        Some("echo")
    );
    guard("closed", conn.close_finished()).await;
    server.kill().await;
}

// ------------------------------------------------------------------ TcpConnection alone

#[tokio::test]
async fn tcp_connection_notices_a_reset() {
    let (conn, stream) = connected_pair().await;
    let std_stream = stream.into_std().unwrap();
    socket2::SockRef::from(&std_stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std_stream); // RST
    guard("reset noticed", conn.close_finished()).await;
    assert!(conn.is_closed());
    assert_eq!(conn.recv().await, None);
}

#[tokio::test]
async fn tcp_connection_close_sends_fin_and_is_idempotent() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = TcpConnection::connect(addr).await.unwrap();
    assert_eq!(conn.peer_addr(), addr);
    assert_eq!(conn.local_addr().ip(), Ipv4Addr::LOCALHOST);
    let (mut stream, _) = listener.accept().await.unwrap();
    conn.send(b"hi").await.unwrap();
    let other = conn.clone();
    guard("close", conn.close()).await;
    guard("close again", other.close()).await;
    assert!(other.is_closed());
    let mut got = Vec::new();
    guard("server reads to EOF", stream.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"hi");
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_every_tcp_connection_clone_stops_its_reader_task() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let conn = TcpConnection::connect(addr).await.unwrap();
    let (mut stream, _) = listener.accept().await.unwrap();
    assert_eq!(metrics.num_alive_tasks(), baseline + 1, "the reader runs");
    drop(conn);
    let mut buf = Vec::new();
    guard("server sees EOF", stream.read_to_end(&mut buf))
        .await
        .unwrap();
    guard("reader ends", async {
        while metrics.num_alive_tasks() != baseline {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_send_blocked_on_a_peer_that_does_not_read_gives_up_when_close_begins() {
    use tokio_test::{assert_pending, assert_ready};
    let (conn, _never_reads) = connected_pair().await;
    // Far more than the socket buffers hold: the first poll writes what fits and blocks.
    let big = vec![7u8; 32 << 20];
    let mut send = tokio_test::task::spawn(conn.send(&big));
    assert_pending!(send.poll());
    let close = conn.close(); // begins closing at once
    assert!(send.is_woken(), "closing wakes the blocked send");
    let err = assert_ready!(send.poll()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
    drop(send);
    guard("close", close).await;
}

/// A message of many chunks (the reader reads at most 8 KiB at a time and buffers 16 chunks
/// before it stops reading): `recv` returns it whole, in order, in chunks no larger than one
/// read, while the peer keeps writing past the reader's buffer.
#[tokio::test]
async fn a_message_larger_than_the_reader_buffers_arrives_whole_and_in_order() {
    let (conn, mut server) = connected_pair().await;
    let message: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = message.clone();
    let writer = tokio::spawn(async move {
        server.write_all(&sent).await.unwrap();
        server.shutdown().await.unwrap();
        server
    });
    let mut got = Vec::new();
    let mut largest = 0;
    while let Some(chunk) = guard("next chunk", conn.recv()).await {
        largest = largest.max(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), message.len());
    assert!(got == message, "the bytes arrive in order");
    // A megabyte written at once fills the socket faster than the reader drains it, so
    // its reads are full: exactly one chunk.
    assert_eq!(
        largest,
        8 * 1024,
        "one read is 8 KiB at most, and here at least"
    );
    let _server = writer.await.unwrap();
    assert!(conn.is_closed(), "the peer's FIN closed it");
    let err = conn.send(b"late").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

// ------------------------------------------------- TcpConnection as a stream, and options

#[tokio::test]
async fn tcp_connection_carries_a_framed_codec_request_and_response() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::{Framed, LinesCodec};
    let (closed_tx, _closed_rx) = mpsc::unbounded_channel();
    let mut server = Server::start("echo", 0, Mode::Echo, closed_tx).await;
    let conn = guard("connect", TcpConnection::connect(server.addr))
        .await
        .unwrap();
    let mut framed = Framed::new(conn.clone(), LinesCodec::new());
    for n in 0..3 {
        guard("send a line", framed.send(format!("ping {n}")))
            .await
            .unwrap();
        let answer = guard("a line back", framed.next()).await;
        assert_eq!(answer.unwrap().unwrap(), format!("echo ping {n}"));
    }
    // The server dies: the framed stream ends, and the connection counts as closed.
    server.kill().await;
    guard("closed", conn.close_finished()).await;
    assert!(conn.is_closed());
    assert!(guard("stream ends", framed.next()).await.is_none());
    let err = framed.send("late".to_owned()).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
}

#[tokio::test]
async fn a_persistent_connection_of_tcp_streams_serves_a_framed_client_across_failover() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_util::codec::{Framed, LinesCodec};
    let (closed_tx, _closed_rx) = mpsc::unbounded_channel();
    let mut a = Server::start("a", 0, Mode::Echo, closed_tx.clone()).await;
    let mut b = Server::start("b", 0, Mode::Echo, closed_tx).await;
    let catalog = Catalog::default();
    catalog.set("echo", Some(a.addr));
    let pc = persistent(&catalog, Duration::from_millis(20), Default::default());
    let mut framed = Framed::new(guard("connected", pc.connected()).await, LinesCodec::new());
    guard("send", framed.send("one")).await.unwrap();
    assert_eq!(
        guard("recv", framed.next()).await.unwrap().unwrap(),
        "a one"
    );
    catalog.set("echo", Some(b.addr));
    a.kill().await;
    guard("a's stream ends", framed.get_ref().close_finished()).await;
    let mut framed = Framed::new(
        guard("reconnected", pc.connected()).await,
        LinesCodec::new(),
    );
    guard("send", framed.send("two")).await.unwrap();
    assert_eq!(
        guard("recv", framed.next()).await.unwrap().unwrap(),
        "b two"
    );
    guard("close", pc.close()).await;
    b.kill().await;
}

/// How a test peer ends a connection.
#[derive(Clone, Copy, Debug)]
enum PeerEnd {
    Close,
    Reset,
}

/// What the user does meanwhile.
#[derive(Clone, Copy, Debug)]
enum UserDoes {
    OnlyWrites,
    OnlyReads,
    Nothing,
}

#[tokio::test]
async fn peer_close_and_reset_are_noticed_whether_the_user_writes_reads_or_neither() {
    for peer in [PeerEnd::Close, PeerEnd::Reset] {
        for user in [UserDoes::OnlyWrites, UserDoes::OnlyReads, UserDoes::Nothing] {
            let what = format!("{peer:?} while the user {user:?}");
            let (conn, stream) = connected_pair().await;
            let mut user_task = {
                let mut conn = conn.clone();
                tokio::spawn(async move {
                    match user {
                        // Writes until the connection refuses (it counts as closed).
                        UserDoes::OnlyWrites => loop {
                            if conn.write_all(b"data\n").await.is_err() {
                                return;
                            }
                            tokio::task::yield_now().await;
                        },
                        // Reads until end of file or the reset's error.
                        UserDoes::OnlyReads => {
                            let mut buf = Vec::new();
                            let _ = conn.read_to_end(&mut buf).await;
                        }
                        UserDoes::Nothing => std::future::pending().await,
                    }
                })
            };
            // Let the user start.
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let std_stream = stream.into_std().unwrap();
            if let PeerEnd::Reset = peer {
                socket2::SockRef::from(&std_stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(std_stream);
            guard(&what, conn.close_finished()).await;
            assert!(conn.is_closed(), "{what}");
            match user {
                UserDoes::Nothing => user_task.abort(),
                _ => guard(&format!("{what}: the user's loop ends"), &mut user_task)
                    .await
                    .unwrap(),
            }
            let mut c = conn.clone();
            assert!(c.write_all(b"late").await.is_err(), "{what}");
        }
    }
}

#[tokio::test]
async fn a_reset_reaches_a_reader_as_an_error_then_end_of_file() {
    let (mut conn, mut stream) = connected_pair().await;
    stream.write_all(b"before").await.unwrap();
    let mut got = [0u8; 6];
    guard("data", conn.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"before");
    let std_stream = stream.into_std().unwrap();
    socket2::SockRef::from(&std_stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(std_stream);
    let mut buf = [0u8; 16];
    let err = guard("read", conn.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(guard("then EOF", conn.read(&mut buf)).await.unwrap(), 0);
}

#[tokio::test]
async fn a_failed_connect_names_the_address() {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = TcpConnection::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        err.to_string().starts_with(&format!("connect to {addr}: ")),
        "{err}"
    );
}

/// A connection whose peer sent "hello world" in one write, of which "hello" has been read
/// as a stream (the rest of the chunk waits); and the peer, still open.
async fn hello_partly_read() -> (TcpConnection, TcpStream) {
    let (mut conn, mut server) = connected_pair().await;
    server.write_all(b"hello world").await.unwrap();
    let mut first = [0u8; 5];
    guard("read", conn.read_exact(&mut first)).await.unwrap();
    assert_eq!(&first, b"hello");
    (conn, server)
}

/// Reading part of a chunk as a stream, then with `recv`: `recv` returns the rest of that
/// chunk first, so no byte is lost or repeated between the two ways of reading.
#[tokio::test]
async fn recv_after_a_partial_stream_read_returns_the_rest_of_the_chunk() {
    let (conn, _server) = hello_partly_read().await;
    let mut rest = Vec::new();
    while rest.len() < 6 {
        rest.extend(guard("recv", conn.recv()).await.expect("open"));
    }
    assert_eq!(rest, b" world");
    guard("close", conn.close()).await;
}

/// Two stream reads of one chunk, a small buffer then a large one: the second gets exactly
/// the rest of the chunk (no byte repeated, none read past its end).
#[tokio::test]
async fn a_larger_read_after_a_partial_one_returns_the_rest_of_the_chunk() {
    let (mut conn, _server) = hello_partly_read().await;
    let mut rest = Vec::new();
    while rest.len() < 6 {
        let mut buf = [0u8; 64];
        let n = guard("read the rest", conn.read(&mut buf)).await.unwrap();
        assert!(n > 0, "end of file after {rest:?}");
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(rest, b" world");
    guard("close", conn.close()).await;
}

/// `shutdown()` (the stream's half-close) sends a FIN: the peer reads end of file, and
/// can still answer, which the connection reads before it counts as closed.
#[tokio::test]
async fn shutdown_half_closes_and_the_peer_can_still_answer() {
    let (mut conn, mut server) = connected_pair().await;
    conn.write_all(b"last words").await.unwrap();
    conn.flush().await.unwrap();
    guard("shutdown", conn.shutdown()).await.unwrap();
    let mut got = Vec::new();
    guard("server sees EOF", server.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"last words");
    server.write_all(b"bye").await.unwrap();
    drop(server);
    let mut answer = Vec::new();
    guard("client reads to EOF", conn.read_to_end(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, b"bye");
    guard("closed", conn.close_finished()).await;
    assert!(conn.is_closed());
    // Once closed, the write half is gone: a flush says so, like a write.
    let err = conn.flush().await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

#[tokio::test]
async fn tcp_options_hold_what_they_are_given() {
    use persistent_connection::conn::{
        DEFAULT_KEEPALIVE, DEFAULT_USER_TIMEOUT, Keepalive, TcpOptions,
    };
    let default = TcpOptions::default();
    assert_eq!(default, TcpOptions::new());
    assert!(default.nodelay_enabled(), "TCP_NODELAY is on by default");
    // Keepalive and TCP_USER_TIMEOUT are on by default (issue 19): a vanished peer is
    // noticed in bounded time, idle (keepalive) or with data in flight (user timeout).
    assert_eq!(default.keepalive_settings(), Some(DEFAULT_KEEPALIVE));
    assert_eq!(default.user_timeout_value(), DEFAULT_USER_TIMEOUT);
    assert_eq!(DEFAULT_USER_TIMEOUT, Duration::from_secs(20));
    assert_eq!(default.no_keepalive().keepalive_settings(), None);
    assert_eq!(default.bound_local_addr(), None);
    let k = Keepalive::new(Duration::from_secs(7), Duration::from_secs(2), 4);
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let options = TcpOptions::new()
        .nodelay(false)
        .keepalive(k)
        .local_addr(local);
    assert!(!options.nodelay_enabled());
    assert_eq!(options.keepalive_settings(), Some(k));
    assert_eq!(
        (k.idle, k.interval, k.retries),
        (Duration::from_secs(7), Duration::from_secs(2), 4)
    );
    assert_eq!(options.bound_local_addr(), Some(local));
    assert!(options.nodelay(true).nodelay_enabled());
}

#[tokio::test]
async fn options_bind_the_local_address_and_a_bad_one_is_a_clear_error() {
    use persistent_connection::conn::{Keepalive, TcpOptions};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A free local port: taken, then released.
    let local = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let options = TcpOptions::new()
        .nodelay(false)
        .keepalive(Keepalive::new(
            Duration::from_secs(5),
            Duration::from_secs(1),
            3,
        ))
        .local_addr(local);
    let conn = TcpConnection::connect_with(addr, &options).await.unwrap();
    assert_eq!(conn.local_addr(), local);
    let (_stream, from) = listener.accept().await.unwrap();
    assert_eq!(from, local);
    guard("close", conn.close()).await;

    // The kernel refuses a zero keepalive idle time: the option rounds it up to what the
    // kernel takes (1 s / 1 s / 1 probe) instead of failing every connect (issue 28 item 3).
    let zero = TcpOptions::new().keepalive(Keepalive::new(Duration::ZERO, Duration::ZERO, 0));
    let one = Duration::from_secs(1);
    assert_eq!(zero.keepalive_settings(), Some(Keepalive::new(one, one, 1)));
    let conn = TcpConnection::connect_with(addr, &zero).await.unwrap();
    guard("close", conn.close()).await;
    // A local address of the wrong family: the error names both addresses.
    let v6 = TcpOptions::new().local_addr("[::1]:0".parse().unwrap());
    let err = TcpConnection::connect_with(addr, &v6).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("bind [::1]:0 to connect to {addr}: ")),
        "{err}"
    );
}
