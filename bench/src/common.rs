//! What every client in the benchmarks shares: the catalog, the control of the server
//! process, and, from the test kit (`persistent_connection_testkit::echo`), `EchoConn`, the
//! connection handle (a reader task that notices the server's close or reset), and the
//! connect counters.

use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use persistent_connection_testkit::echo::{ATTEMPTS, CONNECTS, reset_counters, tcp_connect};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The echo client every library in the benchmarks uses: over a plain `TcpStream`, in the
/// benchmark servers' format (`Le16`), connected through [`tcp_connect`].
pub type EchoConn = persistent_connection_testkit::echo::EchoConn;

/// The service catalog: the addresses a lookup may return. Each lookup returns one listed
/// address picked at random (a fixed-seed xorshift, so runs are comparable), as a
/// load-balancing catalog would.
#[derive(Clone, Debug)]
pub struct Catalog {
    inner: Arc<Mutex<(Vec<SocketAddr>, u64)>>,
}

impl Catalog {
    /// A catalog listing `addrs`.
    pub fn new(addrs: &[SocketAddr]) -> Catalog {
        Catalog {
            inner: Arc::new(Mutex::new((addrs.to_vec(), 0x9E37_79B9_7F4A_7C15))),
        }
    }

    /// Replaces the listed addresses.
    pub fn set(&self, addrs: &[SocketAddr]) {
        self.inner.lock().expect("not poisoned").0 = addrs.to_vec();
    }

    /// Removes `addr` if listed.
    pub fn remove(&self, addr: SocketAddr) {
        self.inner
            .lock()
            .expect("not poisoned")
            .0
            .retain(|a| *a != addr);
    }

    /// A listed address picked at random, or an error when nothing is listed.
    pub fn lookup(&self) -> io::Result<SocketAddr> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let (list, x) = &mut *inner;
        if list.is_empty() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "catalog is empty"));
        }
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        Ok(list[(*x % list.len() as u64) as usize])
    }
}

/// The same list seen through the library's catalog trait: `lookup` lists every address,
/// and the library's picker chooses (skipping the copy it handed out last, so the dead
/// copy is not retried first). The failover bench's two-copies case uses it.
impl persistent_connection::catalog::Catalog for Catalog {
    type Address = SocketAddr;

    async fn lookup(
        &self,
    ) -> Result<Vec<SocketAddr>, persistent_connection::catalog::CatalogError> {
        Ok(self.inner.lock().expect("not poisoned").0.clone())
    }
}

/// Where successful replies go: when it arrived and which server sent it.
pub type ReplySink = tokio::sync::mpsc::UnboundedSender<(Instant, u64)>;

/// The server process and its control channel.
pub struct Servers {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Servers {
    /// Starts `persistent-connection-bench serve` as a child process.
    pub async fn spawn() -> io::Result<Servers> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        Ok(Servers {
            child,
            stdin,
            lines,
        })
    }

    async fn cmd(&mut self, line: &str) -> io::Result<Vec<String>> {
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .map_err(|_| io::Error::other(format!("server process did not answer {line:?}")))??
            .ok_or_else(|| io::Error::other("server process exited"))?;
        let words: Vec<String> = reply.split_whitespace().map(str::to_owned).collect();
        if words.first().map(String::as_str) != Some("ok") {
            return Err(io::Error::other(format!("{line:?} -> {reply:?}")));
        }
        Ok(words[1..].to_vec())
    }

    /// Starts (or restarts) server `name` of `kind` (`echo` or `drop`) on `port` (0: any).
    /// Returns its address and the id its replies carry.
    pub async fn start(
        &mut self,
        name: &str,
        kind: &str,
        port: u16,
    ) -> io::Result<(SocketAddr, u64)> {
        let w = self.cmd(&format!("start {name} {kind} {port}")).await?;
        let port: u16 = w
            .first()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other("bad port"))?;
        let id: u64 = w
            .get(1)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| io::Error::other("bad id"))?;
        Ok((SocketAddr::from(([127, 0, 0, 1], port)), id))
    }

    /// Stops listening and resets every connection of `name`.
    pub async fn kill(&mut self, name: &str) -> io::Result<()> {
        self.cmd(&format!("kill {name}")).await.map(drop)
    }

    /// Accepts since the last start, and the peak accept rate per second (100 ms windows).
    pub async fn stats(&mut self, name: &str) -> io::Result<(u64, u64)> {
        let w = self.cmd(&format!("stats {name}")).await?;
        let n = |i: usize| w.get(i).and_then(|x| x.parse().ok()).unwrap_or(0);
        Ok((n(0), n(1)))
    }

    /// Asks the process to exit and waits for it (bounded).
    pub async fn quit(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        let _ = self.stdin.flush().await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which ends with ')'): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // `rest` starts at field 3; USER_HZ is 100 on Linux.
    (ticks(14 - 3) + ticks(15 - 3)) / 100.0
}

/// Resident memory of this process in bytes, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The `q`-quantile (0..=1) of `sorted`, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
