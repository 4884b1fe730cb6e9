//! The clients: this project and the crates users would pick instead, each driven the way
//! its documentation suggests, all connecting through [`tcp_connect`] (so attempts are
//! counted alike) and all looking the address up in the same [`Catalog`] per attempt.
//!
//! | library | retry delay given | what it does between attempts |
//! | --- | --- | --- |
//! | this project | `RetryDelay::constant(base)`, default ±30 % jitter | timer counted from each attempt's start (R2); after a long-lived connection, reconnects at once (R6) |
//! | `stubborn-io` 0.3 | `ExpBackoffStrategy::new(base, 2.0, 0.05)` (its own defaults but the base) | sleeps the next delay *before* every reconnect, including the first after a drop; the schedule restarts after each success |
//! | `tower` 0.5 `Reconnect` | none built in: the caller sleeps `base` after a failed connect | reconnects lazily on the next `poll_ready` after the service fails; no delay after a connection that succeeded then dropped |
//! | this project as a `tower::Service` (`persistent_connection::tower::PersistentService`) | as this project | the persistent connection above; the caller's loop is tower's own (`ready().await`, then `call`), as for `Reconnect`; `poll_ready` waits for a connection |
//! | hand-rolled loop (baseline) | sleeps `base` after a failed connect | `loop { connect; wait until closed }` |
//! | hand-rolled loop, jittered (issue 21's fair storm peer) | sleeps `base` × a uniform factor in [0.7, 1.3] after a failed connect | the same loop, with this project's default ±30 % spread |
//!
//! Every client that sends requests resends at once after a request failed (its reply
//! lost to a reset, or the connection already gone) instead of waiting for its next tick,
//! so the failover gap shows the library's reconnect, not the bench's period or reply
//! timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use stubborn_io::tokio::StubbornIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tower::{Service, ServiceExt};

// What a client is given lives below this file, in `client`; named here too, with `spawn`.
use crate::client::stopped;
pub use crate::client::{Mode, Setup};
use crate::common::{Catalog, EchoConn, tcp_connect};
use crate::server::{REPLY_LEN, REQUEST_LEN};
use crate::stubborn_stream::{self, Lookup, LookupStream};

/// Which client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lib {
    /// `persistent-connection` (this project).
    Ours,
    /// `stubborn-io`.
    Stubborn,
    /// `tower::reconnect::Reconnect`.
    Tower,
    /// This project behind its `tower::Service` adapter, driven as `Reconnect` is.
    OursTower,
    /// A hand-rolled `loop { connect; wait until closed; on error sleep }`.
    Hand,
    /// The same loop sleeping `base` × a uniform factor in [0.7, 1.3]: the ±30 % jitter this
    /// project applies by default, so the storm compares like with like (issue 21).
    HandJitter,
}

impl Lib {
    /// All of them, in table order.
    pub const ALL: [Lib; 6] = [
        Lib::Ours,
        Lib::Stubborn,
        Lib::Tower,
        Lib::OursTower,
        Lib::Hand,
        Lib::HandJitter,
    ];

    /// The name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Lib::Ours => "persistent-connection",
            Lib::Stubborn => "stubborn-io",
            Lib::Tower => "tower reconnect",
            Lib::OursTower => "persistent-connection as tower Service",
            Lib::Hand => "hand-rolled loop",
            Lib::HandJitter => "hand-rolled loop, ±30 % jitter",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Lib> {
        match s {
            "ours" | "persistent-connection" => Some(Lib::Ours),
            "stubborn" | "stubborn-io" => Some(Lib::Stubborn),
            "tower" => Some(Lib::Tower),
            "ours-tower" => Some(Lib::OursTower),
            "hand" => Some(Lib::Hand),
            "hand-jitter" => Some(Lib::HandJitter),
            _ => None,
        }
    }
}

/// Starts one client of `lib` on the current runtime.
pub fn spawn(lib: Lib, setup: Setup, mode: Mode) -> JoinHandle<()> {
    match lib {
        Lib::Ours => tokio::spawn(crate::ours::run(setup, mode)),
        Lib::Stubborn => tokio::spawn(stubborn(setup, mode)),
        Lib::Tower => tokio::spawn(tower_client(setup, mode)),
        Lib::OursTower => tokio::spawn(crate::ours::run_tower(setup, mode)),
        Lib::Hand => tokio::spawn(hand(setup, mode, false)),
        Lib::HandJitter => tokio::spawn(hand(setup, mode, true)),
    }
}

/// Sleeps `d` unless stopped first; true if stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopped(stop) => true,
    }
}

fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

// ---- stubborn-io ----

impl Lookup for Catalog {
    fn lookup(&self) -> io::Result<SocketAddr> {
        Catalog::lookup(self)
    }

    /// Counted, as every client's connects are.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<TcpStream>> + Send {
        tcp_connect(addr)
    }
}

async fn stubborn(mut setup: Setup, mode: Mode) {
    let connect = StubbornIo::<LookupStream, Catalog>::connect_with_options(
        setup.catalog.clone(),
        stubborn_stream::options(setup.delay),
    );
    let mut s = tokio::select! {
        r = connect => match r { Ok(s) => s, Err(_) => return },
        _ = stopped(&mut setup.stop) => return,
    };
    let mut buf = [0u8; REPLY_LEN];
    match mode {
        Mode::Idle => loop {
            // A read drives stubborn-io's reconnects; an idle server sends nothing.
            tokio::select! {
                r = s.read(&mut buf) => if r.is_err() { return },
                _ = stopped(&mut setup.stop) => return,
            }
        },
        Mode::Requests {
            every,
            timeout,
            sink,
        } => {
            let mut tick = interval(every);
            let mut seq = 0u64;
            let mut resend = false;
            loop {
                if !resend {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped(&mut setup.stop) => return,
                    }
                }
                resend = true;
                seq += 1;
                let request = seq.to_le_bytes();
                // While disconnected, the write waits for stubborn-io's reconnect.
                tokio::select! {
                    r = s.write_all(&request) => if r.is_err() { continue },
                    _ = stopped(&mut setup.stop) => return,
                }
                let deadline = tokio::time::Instant::now() + timeout;
                // Skip late replies to earlier requests.
                for _ in 0..64 {
                    match tokio::time::timeout_at(deadline, s.read_exact(&mut buf)).await {
                        Ok(Ok(_)) => {
                            let got = u64::from_le_bytes(buf[..REQUEST_LEN].try_into().expect("8"));
                            if got == seq {
                                let server =
                                    u64::from_le_bytes(buf[REQUEST_LEN..].try_into().expect("8"));
                                let _ = sink.send((Instant::now(), server));
                                resend = false;
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
    }
}

// ---- tower ----

/// A connect (lookup or TCP) failure, told apart from request failures so the caller knows
/// when to back off.
#[derive(Debug)]
struct ConnectFailed(io::Error);

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connect failed: {}", self.0)
    }
}

impl std::error::Error for ConnectFailed {}

enum Req {
    Request(u64),
    WaitClosed,
}

/// The service over one connection: not ready once the connection is closed, which makes
/// `Reconnect` reconnect.
struct EchoSvc {
    conn: EchoConn,
    timeout: Duration,
}

impl Service<Req> for EchoSvc {
    type Response = u64;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<u64>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_closed() {
            Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let conn = self.conn.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            match req {
                Req::Request(seq) => conn.request(seq, timeout).await,
                Req::WaitClosed => {
                    conn.closed().await;
                    Ok(0)
                }
            }
        })
    }
}

type MakeFuture = Pin<Box<dyn Future<Output = Result<EchoSvc, ConnectFailed>> + Send>>;

async fn tower_client(mut setup: Setup, mode: Mode) {
    let timeout = match &mode {
        Mode::Requests { timeout, .. } => *timeout,
        Mode::Idle => Duration::from_secs(1),
    };
    let make = tower::service_fn(move |catalog: Catalog| -> MakeFuture {
        Box::pin(async move {
            let addr = catalog.lookup().map_err(ConnectFailed)?;
            let conn = EchoConn::connect(addr).await.map_err(ConnectFailed)?;
            Ok(EchoSvc { conn, timeout })
        })
    });
    let mut svc = tower::reconnect::Reconnect::new(make, setup.catalog.clone());
    let mut tick = match &mode {
        Mode::Requests { every, .. } => Some(interval(*every)),
        Mode::Idle => None,
    };
    let mut seq = 0u64;
    let mut resend = false;
    // Bounded by `stop`: every iteration awaits a connect, a request or a tick.
    loop {
        if let Some(t) = tick.as_mut().filter(|_| !resend) {
            tokio::select! {
                _ = t.tick() => {}
                _ = stopped(&mut setup.stop) => return,
            }
        }
        seq += 1;
        let req = match mode {
            Mode::Requests { .. } => Req::Request(seq),
            Mode::Idle => Req::WaitClosed,
        };
        let call = async {
            match svc.ready().await {
                Ok(s) => s.call(req).await,
                Err(e) => Err(e),
            }
        };
        let result = tokio::select! {
            r = call => r,
            _ = stopped(&mut setup.stop) => return,
        };
        resend = result.is_err();
        match result {
            Ok(server) => {
                if let Mode::Requests { sink, .. } = &mode {
                    let _ = sink.send((Instant::now(), server));
                }
            }
            Err(e) if e.is::<ConnectFailed>() => {
                if sleep_or_stop(setup.delay, &mut setup.stop).await {
                    return;
                }
            }
            Err(_) => {}
        }
    }
}

// ---- hand-rolled baseline ----

/// A factor in [0.7, 1.3] from a xorshift generator: what a hand-rolled loop would write
/// for ±30 % jitter.
fn jitter_factor(x: &mut u64) -> f64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    0.7 + 0.6 * (*x >> 11) as f64 / (1u64 << 53) as f64
}

async fn hand(mut setup: Setup, mode: Mode, jitter: bool) {
    let mut conn: Option<EchoConn> = None;
    let mut tick = match &mode {
        Mode::Requests { every, .. } => Some(interval(*every)),
        Mode::Idle => None,
    };
    let mut seq = 0u64;
    let mut resend = false;
    // Never zero (xorshift's fixed point), distinct per client.
    let mut rng = setup.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    loop {
        if let Some(t) = tick.as_mut().filter(|_| !resend) {
            tokio::select! {
                _ = t.tick() => {}
                _ = stopped(&mut setup.stop) => break,
            }
        }
        if conn.as_ref().is_none_or(EchoConn::is_closed) {
            let attempt = async {
                let addr = setup.catalog.lookup()?;
                EchoConn::connect(addr).await
            };
            let r = tokio::select! {
                r = attempt => r,
                _ = stopped(&mut setup.stop) => break,
            };
            match r {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    let delay = if jitter {
                        setup.delay.mul_f64(jitter_factor(&mut rng))
                    } else {
                        setup.delay
                    };
                    if sleep_or_stop(delay, &mut setup.stop).await {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_ref() else { continue };
        match &mode {
            Mode::Idle => {
                tokio::select! {
                    _ = c.closed() => {}
                    _ = stopped(&mut setup.stop) => break,
                }
            }
            Mode::Requests { timeout, sink, .. } => {
                seq += 1;
                match c.request(seq, *timeout).await {
                    Ok(server) => {
                        resend = false;
                        let _ = sink.send((Instant::now(), server));
                    }
                    Err(_) => resend = true,
                }
            }
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::jitter_factor;

    #[test]
    fn the_jittered_loop_spreads_its_delay_over_plus_minus_30_percent() {
        for seed in [1u64, 2, 0x9E37_79B9_7F4A_7C15 | 1] {
            let mut x = seed;
            let draws: Vec<f64> = (0..10_000).map(|_| jitter_factor(&mut x)).collect();
            assert!(draws.iter().all(|f| (0.7..1.3).contains(f)));
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
            // Spread over the whole range, not bunched: each tenth of it is drawn.
            for k in 0..10 {
                let lo = 0.7 + 0.06 * f64::from(k);
                assert!(draws.iter().any(|f| (lo..lo + 0.06).contains(f)), "{lo}");
            }
        }
    }
}
