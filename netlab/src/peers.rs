//! Drill 7: drills 1–4 for the crates users would pick instead of this project, each
//! driven the way its documentation suggests (as in `bench/src/peers.rs`), with the same
//! request loop, echo servers, faults and figures as [`drills`](crate::drills):
//!
//! | peer | reconnects when | retry delay | catalog |
//! | --- | --- | --- | --- |
//! | `stubborn-io` 0.3 | a read or write returns an error (`on_disconnect` logged as `Disconnected`) | its `ExpBackoffStrategy` from 500 ms (×2, ±5 %) | the next listed copy at every connect |
//! | `tower` 0.5 `Reconnect` | the service's `poll_ready` fails (after a request failed with an error) | 500 ms after a failed connect (the caller's) | the same |
//! | hand-rolled loop | a request meets an error or end of file | 500 ms after a failed connect | the same |
//!
//! All connect with a plain `TcpStream::connect` (no connect timeout, no keepalive, no
//! `TCP_USER_TIMEOUT`: what a user of each gets), and none treats a request that timed
//! out as a reason to reconnect (none of them has a health check); a reply that arrives
//! after its request timed out is skipped by id.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use stubborn_io::ReconnectOptions;
use stubborn_io::strategies::ExpBackoffStrategy;
use stubborn_io::tokio::{StubbornIo, UnderlyingIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tower::{Service, ServiceExt};

use crate::drills::{
    Bed, Log, REQUEST_EVERY, REQUEST_TIMEOUT, Run, current_server, served_since, wait_until,
};

/// The base retry delay given to every peer.
pub const BASE_DELAY: Duration = Duration::from_millis(500);

/// A peer library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `stubborn-io`.
    Stubborn,
    /// `tower::reconnect::Reconnect`.
    Tower,
    /// A hand-rolled `loop { connect; serve until an error }`.
    Hand,
}

impl Peer {
    /// All of them, in table order.
    pub const ALL: [Peer; 3] = [Peer::Stubborn, Peer::Tower, Peer::Hand];

    /// Name for the tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Stubborn => "stubborn-io",
            Peer::Tower => "tower reconnect",
            Peer::Hand => "hand-rolled loop",
        }
    }

    /// What notices the fault of drill `drill` (1–4), if anything.
    pub fn mechanism(self, drill: u32) -> &'static str {
        match (self, drill) {
            (_, 3) => "reset (a request's error)",
            (Peer::Hand, 2) => {
                "the request's timeout, which drops the connect (it connects inside a request)"
            }
            (_, 2) => "nothing: connect has no timeout (kernel SYN retries, ~2 min)",
            _ => "nothing: no timeout on a silent peer (kernel, ~15 min)",
        }
    }
}

/// The listed copies, handed out in turn at every connect.
#[derive(Clone, Debug)]
pub struct Rotor {
    addrs: Arc<Vec<SocketAddr>>,
    next: Arc<AtomicUsize>,
}

impl Rotor {
    /// Starts with the first of `addrs`.
    pub fn new(addrs: Vec<SocketAddr>) -> Rotor {
        Rotor {
            addrs: Arc::new(addrs),
            next: Arc::default(),
        }
    }

    /// The next copy.
    pub fn next_addr(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }
}

/// A TCP stream for stubborn-io whose every (re)connect takes the rotor's next copy.
pub struct RotorStream(TcpStream);

impl UnderlyingIo<Rotor> for RotorStream {
    fn establish(target: Rotor) -> Pin<Box<dyn Future<Output = io::Result<Self>> + Send>> {
        Box::pin(async move {
            let s = TcpStream::connect(target.next_addr()).await?;
            s.set_nodelay(true)?;
            Ok(RotorStream(s))
        })
    }
}

impl AsyncRead for RotorStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RotorStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// One request on a stream: writes `id`, reads replies until the one for `id` (earlier,
/// late replies are skipped); the answering server's index.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, id: u64) -> io::Result<u8> {
    s.write_all(&id.to_be_bytes()).await?;
    loop {
        let mut reply = [0; 9];
        s.read_exact(&mut reply).await?;
        if u64::from_be_bytes(reply[..8].try_into().expect("8 bytes")) == id {
            return Ok(reply[8]);
        }
    }
}

/// tower's connect future.
type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<EchoService>> + Send>>;

/// A request handed to a peer's connection task.
type Request = (u64, oneshot::Sender<Result<u8, String>>);

/// Starts `peer`'s client in the bed's client host; returns where to send requests.
fn start(
    bed: &Bed,
    peer: Peer,
    addrs: Vec<SocketAddr>,
    log: Arc<Mutex<Log>>,
    t0: Instant,
) -> tokio::sync::mpsc::Sender<Request> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(16);
    let rotor = Rotor::new(addrs);
    let event = move |e: &str| {
        log.lock()
            .unwrap()
            .events
            .push((t0.elapsed(), e.to_string()))
    };
    bed.client_rt.spawn(async move {
        match peer {
            Peer::Stubborn => {
                let ev = event.clone();
                let options = ReconnectOptions::new()
                    .with_exit_if_first_connect_fails(false)
                    .with_retries_generator(|| ExpBackoffStrategy::new(BASE_DELAY, 2.0, 0.05))
                    .with_on_disconnect_callback(move || ev("disconnected"));
                let Ok(mut s) =
                    StubbornIo::<RotorStream, Rotor>::connect_with_options(rotor, options).await
                else {
                    return;
                };
                while let Some((id, reply)) = rx.recv().await {
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut s, id)).await;
                    let _ = reply.send(match r {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err("timed out".into()),
                    });
                }
            }
            Peer::Tower => {
                let make = tower::service_fn(move |_: ()| {
                    let addr = rotor.next_addr();
                    // Reconnect wants an Unpin connect future: boxed.
                    let connect: ConnectFuture = Box::pin(async move {
                        let r = TcpStream::connect(addr).await;
                        if r.is_err() {
                            tokio::time::sleep(BASE_DELAY).await;
                        }
                        let s = r?;
                        s.set_nodelay(true)?;
                        Ok::<_, io::Error>(EchoService {
                            stream: Arc::new(tokio::sync::Mutex::new(s)),
                            broken: Arc::default(),
                        })
                    });
                    connect
                });
                let mut svc = tower::reconnect::Reconnect::new(make, ());
                while let Some((id, reply)) = rx.recv().await {
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        match ServiceExt::<u64>::ready(&mut svc).await {
                            Ok(s) => s.call(id).await.map_err(|e| {
                                // The service is broken from here on: Reconnect replaces
                                // it at the next poll_ready, silently.
                                event("disconnected");
                                e.to_string()
                            }),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                    .await;
                    let _ = reply.send(r.unwrap_or_else(|_| Err("timed out".into())));
                }
            }
            Peer::Hand => {
                let mut stream: Option<TcpStream> = None;
                while let Some((id, reply)) = rx.recv().await {
                    let r = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        loop {
                            if let Some(s) = stream.as_mut() {
                                return exchange(s, id).await;
                            }
                            match TcpStream::connect(rotor.next_addr()).await {
                                Ok(s) => {
                                    let _ = s.set_nodelay(true);
                                    stream = Some(s);
                                }
                                Err(_) => tokio::time::sleep(BASE_DELAY).await,
                            }
                        }
                    })
                    .await;
                    let r = match r {
                        Ok(Ok(i)) => Ok(i),
                        Ok(Err(e)) => {
                            stream = None;
                            event("disconnected");
                            Err(e.to_string())
                        }
                        Err(_) => Err("timed out".into()),
                    };
                    let _ = reply.send(r);
                }
            }
        }
    });
    tx
}

/// tower's view of one connection: a request is an id, its response the server's index.
/// A failed request marks it broken, so that the next `poll_ready` fails and `Reconnect`
/// makes a new one.
#[derive(Clone)]
struct EchoService {
    stream: Arc<tokio::sync::Mutex<TcpStream>>,
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl Service<u64> for EchoService {
    type Response = u8;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<u8>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.broken.load(Ordering::SeqCst) {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "broken")))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, id: u64) -> Self::Future {
        let (stream, broken) = (self.stream.clone(), self.broken.clone());
        Box::pin(async move {
            let r = exchange(&mut *stream.lock().await, id).await;
            if r.is_err() {
                broken.store(true, Ordering::SeqCst);
            }
            r
        })
    }
}

/// Drill `drill` (1: black hole, 2: dead address first, 3: reject, 4: partition) for
/// `peer`; the run lasts until service is back, at most `limit` after the fault.
pub fn drill(peer: Peer, drill: u32, warmup: Duration, limit: Duration) -> Run {
    let bed = Bed::new(3);
    let dead = (drill == 2).then(|| bed.lab.isolate(&bed.servers[0]));
    let log = Arc::new(Mutex::new(Log::default()));
    let t0 = Instant::now();
    let tx = start(&bed, peer, bed.addrs(), log.clone(), t0);
    let requests = log.clone();
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    bed.client_rt.spawn(async move {
        for id in 0u64.. {
            let start = Instant::now();
            let (reply_tx, reply_rx) = oneshot::channel();
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
                tx.send((id, reply_tx))
                    .await
                    .map_err(|_| "client gone".to_string())?;
                reply_rx.await.map_err(|_| "no reply".to_string())?
            })
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
            requests
                .lock()
                .unwrap()
                .requests
                .push((start - t0, start.elapsed(), outcome));
            tokio::select! {
                _ = tokio::time::sleep_until((start + REQUEST_EVERY).into()) => {}
                _ = &mut stop_rx => break,
            }
        }
    });
    let (at, faulted) = if drill == 2 {
        (Duration::ZERO, 0)
    } else {
        wait_until(&log, t0, Duration::from_secs(10), |l| {
            served_since(l, Duration::ZERO, None)
        });
        std::thread::sleep(warmup);
        let current = current_server(&log.lock().unwrap(), t0.elapsed()).unwrap_or(0);
        let s = &bed.servers[current as usize];
        let at = t0.elapsed();
        let _id = match drill {
            3 => bed.lab.reject(&bed.client, s),
            1 => bed.lab.blackhole(&bed.client, s),
            _ => bed.lab.partition(&[&bed.client], &[s]),
        };
        (at, current)
    };
    wait_until(&log, Instant::now(), limit, |l| {
        served_since(l, at, Some(faulted))
    });
    std::thread::sleep(Duration::from_millis(200));
    let _ = stop_tx.send(());
    let _ = dead;
    bed.lab.heal();
    let log = log.lock().unwrap().clone();
    Run::from_log(&log, at, faulted)
}
