//! The servers, run in a child process (`persistent-connection-bench serve`) so that killing
//! one resets its connections from outside the client's process, and so that the client's
//! CPU time and resident memory exclude them.
//!
//! Control protocol, one line per command on stdin, one reply line on stdout:
//!
//! - `start NAME KIND PORT`: listen on 127.0.0.1:PORT (0 picks one); KIND is `echo`
//!   (replies to every 8-byte request with it and the server's 8-byte id) or `drop`
//!   (accepts and closes at once). Reply `ok PORT ID` (ID: what its replies carry).
//! - `kill NAME`: stop listening (later connects are refused) and reset every accepted
//!   connection (SO_LINGER 0). Reply `ok`.
//! - `stats NAME`: `ok TOTAL PEAK` — accepts since the last `start` and the most accepts
//!   seen in any 100 ms window, as a rate per second.
//! - `quit`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use persistent_connection_testkit::echo::{Le16, Wire};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Request: 8 bytes (a sequence number). Reply: the request and the server's id, 8 bytes
/// each, little-endian: the test kit's `Le16` format, which `EchoConn` speaks.
pub const REQUEST_LEN: usize = persistent_connection_testkit::echo::REQUEST_LEN;
/// See [`REQUEST_LEN`].
pub const REPLY_LEN: usize = <Le16 as Wire>::REPLY_LEN;

struct Server {
    port: u16,
    live: Arc<AtomicUsize>,
    accept_task: Option<JoinHandle<()>>,
    kill: watch::Sender<bool>,
    accepts: Arc<Mutex<Vec<Instant>>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Echo,
    Drop,
}

/// Runs the control loop on a current-thread runtime until `quit` or end of input.
pub fn serve() -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(control_loop())
}

async fn control_loop() -> io::Result<()> {
    let mut servers: HashMap<String, Server> = HashMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut next_id = 1u64;
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["start", name, kind, port] => {
                let kind = match *kind {
                    "echo" => Kind::Echo,
                    "drop" => Kind::Drop,
                    other => {
                        reply(&mut out, &format!("err unknown kind {other}")).await?;
                        continue;
                    }
                };
                let port: u16 = port.parse().unwrap_or(0);
                if let Some(old) = servers.get_mut(*name) {
                    kill(old).await;
                }
                let id = next_id;
                next_id += 1;
                match start(kind, port, id) {
                    Ok(server) => {
                        let p = server.port;
                        servers.insert((*name).to_owned(), server);
                        format!("ok {p} {id}")
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            ["kill", name] => match servers.get_mut(*name) {
                Some(s) => {
                    kill(s).await;
                    "ok".to_owned()
                }
                None => "err no such server".to_owned(),
            },
            ["stats", name] => match servers.get(*name) {
                Some(s) => {
                    let accepts = s.accepts.lock().expect("not poisoned").clone();
                    format!("ok {} {}", accepts.len(), peak_per_second(&accepts))
                }
                None => "err no such server".to_owned(),
            },
            ["quit"] => break,
            _ => format!("err bad command {line:?}"),
        };
        reply(&mut out, &answer).await?;
    }
    for s in servers.values_mut() {
        kill(s).await;
    }
    Ok(())
}

async fn reply(out: &mut tokio::io::Stdout, line: &str) -> io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await?;
    out.flush().await
}

/// Most accepts in any 100 ms window, times ten.
fn peak_per_second(accepts: &[Instant]) -> u64 {
    let window = Duration::from_millis(100);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..accepts.len() {
        while accepts[hi].duration_since(accepts[lo]) >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64 * 10
}

fn start(kind: Kind, port: u16, id: u64) -> io::Result<Server> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    // Room for a reconnect storm of a few thousand clients (the kernel caps it at somaxconn).
    let listener = socket.listen(8192)?;
    let port = listener.local_addr()?.port();
    let (kill_tx, kill_rx) = watch::channel(false);
    let accepts = Arc::new(Mutex::new(Vec::new()));
    let log = accepts.clone();
    let live = Arc::new(AtomicUsize::new(0));
    let counter = live.clone();
    let accept_task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: back off a little, keep serving.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            log.lock().expect("not poisoned").push(Instant::now());
            match kind {
                Kind::Drop => drop(stream),
                Kind::Echo => {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let counter = counter.clone();
                    let kill = kill_rx.clone();
                    tokio::spawn(async move {
                        echo(stream, id, kill).await;
                        counter.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        }
    });
    Ok(Server {
        port,
        live,
        accept_task: Some(accept_task),
        kill: kill_tx,
        accepts,
    })
}

async fn echo(mut stream: TcpStream, id: u64, mut kill: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let mut req = [0u8; REQUEST_LEN];
    loop {
        tokio::select! {
            _ = kill.changed() => {
                // Reset, as a crashed server's kernel would.
                let _ = stream.set_zero_linger();
                return;
            }
            r = stream.read_exact(&mut req) => {
                if r.is_err() {
                    return;
                }
                let reply = Le16::reply(req, id);
                if stream.write_all(&reply[..REPLY_LEN]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn kill(s: &mut Server) {
    if let Some(task) = s.accept_task.take() {
        task.abort();
        // The listener is dropped (connects refused) once the task is gone.
        let _ = task.await;
    }
    let _ = s.kill.send(true);
    // Let the connection tasks run their reset before answering (bounded).
    for _ in 0..1_000_000 {
        if s.live.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
}
