//! A real single-member `etcd` on 127.0.0.1 ([`EtcdServer`]), on free ports, with its data
//! in a temporary directory; `kill -9` on stop and on drop, the directory removed on drop.
//! With [`EtcdServer::start_tls`], its client port speaks TLS only (`https://`), with the
//! certificates given, and its health is checked on a plain-text metrics port. Standard
//! library only: it needs no feature of the library.
//!
//! The `etcd` binary comes from Debian's `etcd-server` package (`scripts/needs.sh`
//! installs it); a missing binary is a panic with a clear message, never a skip.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long etcd may take to answer its health check after starting.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running (or stopped) etcd member.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsPorts>,
}

/// TLS on the client port: the PEM texts etcd is started with.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The certificate authority that signed `cert_pem` (and, with `client_cert_auth`,
    /// the clients' certificates).
    pub ca_pem: String,
    /// The server's certificate (for 127.0.0.1).
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// `--client-cert-auth`: every client must present a certificate `ca_pem` signed.
    pub client_cert_auth: bool,
}

/// A TLS member's settings: its certificates and its plain-text health port.
#[derive(Debug)]
struct TlsPorts {
    tls: ServerTls,
    metrics_port: u16,
}

/// `N` ports free on 127.0.0.1 right now (all bound at once, so they differ).
fn free_port_array<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("port").port())
}

/// Two ports free on 127.0.0.1 right now (both bound at once, so they differ).
pub fn free_ports() -> (u16, u16) {
    let [a, b] = free_port_array();
    (a, b)
}

/// A fresh directory for etcd's data: in `/dev/shm` (memory) when the system has it, so
/// that etcd's fsyncs cost nothing on a loaded machine, else in the system's temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "pc-etcd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create etcd's temporary directory");
    dir
}

impl EtcdServer {
    /// Starts etcd on two free ports and waits until it is healthy.
    pub fn start() -> EtcdServer {
        let (client_port, peer_port) = free_ports();
        EtcdServer::start_on(client_port, peer_port)
    }

    /// Starts etcd on these ports and waits until it is healthy.
    pub fn start_on(client_port: u16, peer_port: u16) -> EtcdServer {
        let mut server = EtcdServer {
            child: None,
            dir: temp_dir(),
            client_port,
            peer_port,
            tls: None,
        };
        server.restart();
        server
    }

    /// Starts etcd on free ports with TLS on its client port (`https://` only, with the
    /// certificates of `tls`), and waits until it is healthy.
    pub fn start_tls(tls: ServerTls) -> EtcdServer {
        let [client_port, peer_port, metrics_port] = free_port_array();
        let dir = temp_dir();
        for (name, text) in [
            ("ca.pem", &tls.ca_pem),
            ("server.pem", &tls.cert_pem),
            ("server-key.pem", &tls.key_pem),
        ] {
            std::fs::write(dir.join(name), text).expect("write a certificate file for etcd");
        }
        let mut server = EtcdServer {
            child: None,
            dir,
            client_port,
            peer_port,
            tls: Some(TlsPorts { tls, metrics_port }),
        };
        server.restart();
        server
    }

    /// The client URL, as `etcd_client` takes it (`https://` for a TLS member).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("etcd is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// `kill -STOP`, then waits until every thread of etcd is stopped (the signal is
    /// delivered asynchronously: a thread on another core may still answer a request).
    pub fn pause(&self) {
        self.signal("STOP");
        let pid = self.pid().expect("etcd is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                            // The state follows the parenthesised command name.
                            stat.rsplit_once(") ")
                                .is_some_and(|(_, rest)| rest.starts_with('T'))
                        })
                    })
                })
                .unwrap_or(false);
            if all_stopped {
                return;
            }
            assert!(Instant::now() < deadline, "etcd did not stop on SIGSTOP");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts etcd on the same ports and data directory, and waits until it is healthy.
    /// Panics with etcd's log if it does not become healthy in time.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log file");
        let mut command = Command::new("etcd");
        if let Some(TlsPorts { tls, metrics_port }) = &self.tls {
            command
                .arg(format!(
                    "--cert-file={}",
                    self.dir.join("server.pem").display()
                ))
                .arg(format!(
                    "--key-file={}",
                    self.dir.join("server-key.pem").display()
                ))
                // The health check below speaks plain HTTP: etcd serves `/health` on its
                // metrics URL too.
                .arg(format!(
                    "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
                ));
            // etcd (3.4) asks every client for a certificate as soon as it has a
            // `--trusted-ca-file`, with `--client-cert-auth` or not: only mutual TLS has one.
            if tls.client_cert_auth {
                let ca = self.dir.join("ca.pem");
                command
                    .arg(format!("--trusted-ca-file={}", ca.display()))
                    .arg("--client-cert-auth");
            }
        }
        let child = command
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            // A fast election: the member leads within a fraction of a second and the
            // shortest lease is about 1 s (1.5 × the election timeout, whole seconds).
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=250")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `etcd` ({e}): install Debian's etcd-server package \
                     (`bash scripts/needs.sh` does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        while !self.is_healthy() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("etcd exited with {status} at start; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.stop();
                panic!("etcd not healthy within {READY_WITHIN:?}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` and reap the process (no-op if stopped). Its client port then refuses.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// `GET /health` answers `"health":"true"` (on the metrics port for a TLS member).
    fn is_healthy(&self) -> bool {
        let addr = match &self.tls {
            Some(t) => SocketAddr::from((Ipv4Addr::LOCALHOST, t.metrics_port)),
            None => self.client_addr(),
        };
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
