//! Redis for the tests, the benchmarks and the `redis_failover` example: a real
//! `redis-server` child process ([`RedisServer`], plain or on its TLS port only), the
//! `redis` crate's client kept alive by a persistent connection ([`connect`], [`Conn`]),
//! and the failover drill ([`drill`]) between two servers.
//!
//! How the client is kept alive, with no user code in the request path:
//!
//! - [`TcpConnection`] is the stream given to `redis::aio::MultiplexedConnection` (with TCP
//!   keepalive, and a connect error that names the address); over TLS (feature `tls`),
//!   `persistent_connection::conn::tls::TlsConnection`, which notices a server dying as
//!   `TcpConnection` does;
//! - [`Driven`] runs the driver future that the client's constructor returns in a task of
//!   its own: when the socket closes or resets, the driver ends and the connection counts
//!   as closed, so the persistent connection reconnects (R6 in docs/behaviour.md);
//! - [`HealthChecked`] PINGs on a schedule and closes the connection after repeated
//!   failures: a server that hangs (SIGSTOP, a network black hole) is noticed;
//! - [`Keyed`] decides which failures are "the same" for de-duplication (R4): a
//!   `RedisError`'s own `==` is false for any two I/O errors, which would report every
//!   failed attempt.
//!
//! The drill: two servers on free ports of 127.0.0.1, the primary published in a catalog,
//! a PING every [`Settings::ping_every`] through the persistent connection, and three
//! faults: kill -9 the primary (the catalog names the other server at once); kill -9 the
//! new primary (the catalog is updated [`Settings::catalog_lag`] later); SIGSTOP the
//! primary (it hangs without closing its sockets, so only the health check can tell). Each
//! dead server is restarted before the next fault; each fault's gap runs from the fault to
//! the first PING answered by the other server.
//!
//! `redis-server` comes from Debian's `redis-server` package (its build has TLS).

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::conn::{Driven, HealthCheck, HealthChecked, Keepalive, TcpOptions};
use persistent_connection::{Closable, Event, Keyed, PersistentConnection, TcpConnection};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError};
use tokio::time::Instant;

/// A Redis client connection and the server it is connected to.
#[derive(Clone)]
pub struct Redis {
    /// The `redis` crate's client handle (cheap to clone).
    pub conn: MultiplexedConnection,
    /// The server's address.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis({})", self.addr)
    }
}

/// The connection the persistent connection keeps: a Redis client whose driver runs in a
/// task of its own, with a PING health check.
pub type Conn = HealthChecked<Driven<Redis>>;
/// A failed attempt: the `RedisError`, compared by its text.
pub type Failure = Keyed<RedisError, String>;
/// The persistent connection.
pub type Pc = PersistentConnection<SocketAddr, Conn, Failure>;

/// Two failures are the same when their text is: `RedisError`'s own `==` is false for I/O
/// errors, which would turn de-duplication off.
pub fn failure(e: RedisError) -> Failure {
    Keyed::new(e, |e| e.to_string())
}

/// One `PING`, bounded by `timeout`.
pub async fn ping(redis: &Redis, timeout: Duration) -> Result<(), String> {
    let mut conn = redis.conn.clone();
    match tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await {
        Ok(Ok(pong)) if pong == "PONG" => Ok(()),
        Ok(Ok(other)) => Err(format!("PING answered {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer to PING within {timeout:?}")),
    }
}

/// The client's TCP options: keepalive, so that a vanished host is noticed too.
fn tcp_options() -> TcpOptions {
    TcpOptions::new().keepalive(Keepalive::new(
        Duration::from_secs(5),
        Duration::from_secs(1),
        3,
    ))
}

/// Connects a Redis client to `addr`: the stream, the client over it, its driver in a task
/// of its own, and a health check.
pub async fn connect(addr: SocketAddr, health: HealthCheck) -> Result<Conn, Failure> {
    let stream = TcpConnection::connect_with(addr, &tcp_options())
        .await
        .map_err(|e| failure(io::Error::from(e).into()))?;
    over(stream, addr, health).await
}

/// The same as [`connect`] over TLS, trusting the certificate authority of
/// [`certs::files`](crate::certs::files).
#[cfg(feature = "tls")]
pub async fn connect_tls(addr: SocketAddr, health: HealthCheck) -> Result<Conn, Failure> {
    let stream = crate::certs::connector()
        .connect(addr)
        .await
        .map_err(|e| failure(io::Error::from(e).into()))?;
    over(stream, addr, health).await
}

/// [`connect`] or `connect_tls` (feature `tls`).
pub async fn connect_to(addr: SocketAddr, health: HealthCheck, tls: bool) -> Result<Conn, Failure> {
    if tls {
        #[cfg(feature = "tls")]
        return connect_tls(addr, health).await;
        #[cfg(not(feature = "tls"))]
        return Err(failure(
            io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS needs the testkit's `tls` feature",
            )
            .into(),
        ));
    }
    connect(addr, health).await
}

/// The Redis client over an established stream, its driver in a task of its own, and a
/// health check.
async fn over<S>(stream: S, addr: SocketAddr, health: HealthCheck) -> Result<Conn, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static,
{
    // `new_with_config`, not `new`: its driver future is `'static` (it does not borrow the
    // connection info), so it can run in a task of its own.
    let info = RedisConnectionInfo::default();
    let (conn, driver) =
        MultiplexedConnection::new_with_config(&info, stream, AsyncConnectionConfig::new())
            .await
            .map_err(failure)?;
    let redis = Driven::spawn(Redis { conn, addr }, driver);
    Ok(HealthChecked::new(
        redis,
        health,
        move |c: Driven<Redis>| async move { ping(&c, health.timeout).await },
    ))
}

/// The drill's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often the client PINGs.
    pub ping_every: Duration,
    /// How long a client PING may take.
    pub ping_timeout: Duration,
    /// How long the client runs on a healthy server between faults.
    pub hold: Duration,
    /// How late the catalog is updated in the second fault.
    pub catalog_lag: Duration,
    /// The connection's health check.
    pub health: HealthCheck,
    /// The persistent connection's retry delay (jittered ±30%).
    pub retry_delay: Duration,
    /// The persistent connection's connect timeout (a stopped server accepts TCP
    /// connections in its kernel but never answers the handshake).
    pub connect_timeout: Duration,
    /// Print every event as it happens.
    pub verbose: bool,
    /// Run over TLS (servers on their TLS port only; needs the `tls` feature).
    pub tls: bool,
}

impl Settings {
    /// The example's settings: PING every 20 ms, 1 s between faults, catalog 300 ms late.
    pub fn example() -> Settings {
        Settings {
            ping_every: Duration::from_millis(20),
            ping_timeout: Duration::from_millis(100),
            hold: Duration::from_secs(1),
            catalog_lag: Duration::from_millis(300),
            health: HealthCheck::new(Duration::from_millis(100), Duration::from_millis(100), 2),
            retry_delay: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
            verbose: true,
            tls: false,
        }
    }
}

/// One fault of the drill and how the client got through it.
#[derive(Clone, Debug)]
pub struct Fault {
    /// What was done.
    pub what: &'static str,
    /// From the fault to the first PING answered by the other server.
    pub gap: Duration,
    /// The server that answered it.
    pub answered_by: SocketAddr,
}

/// What the drill saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Each fault in order.
    pub faults: Vec<Fault>,
    /// Every event, as printed.
    pub events: Vec<String>,
    /// How many connections the health check closed.
    pub closed_by_health_check: usize,
    /// PINGs answered and not.
    pub pings_ok: usize,
    /// PINGs that failed or timed out.
    pub pings_failed: usize,
}

impl Report {
    /// The summary the example prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for f in &self.faults {
            let _ = writeln!(
                s,
                "{:<60} failover gap {:>7.1} ms (answered by {})",
                f.what,
                f.gap.as_secs_f64() * 1e3,
                f.answered_by
            );
        }
        let _ = writeln!(
            s,
            "PINGs: {} answered, {} failed; connections closed by the health check: {}",
            self.pings_ok, self.pings_failed, self.closed_by_health_check
        );
        s
    }
}

/// A `redis-server` child process on 127.0.0.1, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
    tls: bool,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(false).await
    }

    /// Starts one on a free port, on its TLS port only if `tls` (with the certificate of
    /// `certs`), and waits until it answers.
    pub async fn start_with(tls: bool) -> io::Result<RedisServer> {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        RedisServer::start_on(port, tls).await
    }

    async fn start_on(port: u16, tls: bool) -> io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!("pc-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("redis-server");
        if tls {
            #[cfg(feature = "tls")]
            {
                let pki = crate::certs::files();
                command
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&pki.cert)
                    .arg("--tls-key-file")
                    .arg(&pki.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&pki.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
            #[cfg(not(feature = "tls"))]
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "redis-server over TLS needs the testkit's `tls` feature",
            ));
        } else {
            command.args(["--port", &port.to_string()]);
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start redis-server (Debian package redis-server): {e}"),
                )
            })?;
        let server = RedisServer {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child: Some(child),
            dir,
            tls,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits until it answers a PING (at most 10 s).
    async fn wait_ready(&self) -> io::Result<()> {
        use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
        async fn pong(mut s: impl AsyncRead + AsyncWrite + Unpin) -> bool {
            let mut buf = [0u8; 7];
            s.write_all(b"PING\r\n").await.is_ok()
                && s.read_exact(&mut buf).await.is_ok()
                && &buf == b"+PONG\r\n"
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let answered = if self.tls {
                #[cfg(feature = "tls")]
                let answered = match crate::certs::connector().connect(self.addr).await {
                    Ok(s) => {
                        let ok = pong(s.clone()).await;
                        s.close().await;
                        ok
                    }
                    Err(_) => false,
                };
                #[cfg(not(feature = "tls"))]
                let answered = false;
                answered
            } else {
                match tokio::net::TcpStream::connect(self.addr).await {
                    Ok(s) => pong(s).await,
                    Err(_) => false,
                }
            };
            if answered {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("redis-server on {} did not answer within 10 s", self.addr),
        ))
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process hangs; its kernel keeps its sockets open.
    pub fn sigstop(&self) -> io::Result<()> {
        let pid =
            self.child.as_ref().map(Child::id).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the server is not running")
            })?;
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -STOP {pid}: {status}")))
        }
    }

    /// kill -9 if running, then start again on the same port.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill9();
        let port = self.addr.port();
        *self = RedisServer::start_on(port, self.tls).await?;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How an event is printed.
fn describe(event: &Event<SocketAddr, Conn, Failure>) -> String {
    match event {
        Event::AttemptingToConnect => "AttemptingToConnect".to_owned(),
        Event::ObtainedAddress(a) => format!("ObtainedAddress({a})"),
        Event::FailedToConnect(e) => format!("FailedToConnect({e})"),
        Event::Connected(c) => format!("Connected({})", c.addr),
        Event::Disconnected => "Disconnected".to_owned(),
        Event::HandedOver { connection, reason } => {
            format!("HandedOver({}, {reason})", connection.addr)
        }
    }
}

/// A PING's outcome: when it finished and who answered.
struct Ping {
    at: Instant,
    answered_by: Option<SocketAddr>,
}

/// Bounds every wait of the drill, so that it ends by itself whatever happens.
const WAIT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> io::Result<T> {
    tokio::time::timeout(WAIT, fut).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: not within {WAIT:?}"),
        )
    })
}

/// Runs the drill against two fresh `redis-server` processes and reports what it saw.
pub async fn drill(settings: &Settings) -> io::Result<Report> {
    let mut primary = RedisServer::start_with(settings.tls).await?;
    let mut secondary = RedisServer::start_with(settings.tls).await?;
    let catalog = Arc::new(Mutex::new(primary.addr));
    let start = Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(Vec::<Conn>::new()));

    let pc: Pc = {
        let catalog = catalog.clone();
        let health = settings.health;
        let events = events.clone();
        let connections = connections.clone();
        let verbose = settings.verbose;
        let tls = settings.tls;
        PersistentConnection::builder(
            "redis",
            move || {
                let addr = *catalog.lock().unwrap();
                async move { Ok(addr) }
            },
            move |addr, _cx| connect_to(addr, health, tls),
        )
        .retry_policy(settings.retry_delay)
        .connect_timeout(settings.connect_timeout)
        .on_event(move |event| {
            let line = format!(
                "[{:>6.1} ms] {}",
                start.elapsed().as_secs_f64() * 1e3,
                describe(&event)
            );
            if verbose {
                println!("{line}");
            }
            events.lock().unwrap().push(line);
            if let Event::Connected(c) = event {
                connections.lock().unwrap().push(c);
            }
            async {}
        })
        .build()
    };

    // The client: a PING every `ping_every`, waiting for a connection when there is none.
    let pings = Arc::new(Mutex::new(Vec::<Ping>::new()));
    let (stop_pinging, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let pinger = {
        let pc = pc.clone();
        let pings = pings.clone();
        let (every, timeout) = (settings.ping_every, settings.ping_timeout);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {}
                }
                let conn = match pc.current_connection() {
                    Some(c) if !c.is_closed() => Some(c),
                    _ => tokio::select! {
                        _ = &mut stopped => return,
                        c = tokio::time::timeout(WAIT, pc.connected()) => c.ok(),
                    },
                };
                let answered_by = match conn {
                    Some(c) => ping(&c, timeout).await.ok().map(|()| c.addr),
                    None => None,
                };
                pings.lock().unwrap().push(Ping {
                    at: Instant::now(),
                    answered_by,
                });
            }
        })
    };

    // The first PING answered by `by` after `fault`.
    let recovered = |fault: Instant, by: SocketAddr| {
        let pings = pings.clone();
        async move {
            loop {
                if let Some(p) = pings
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|p| p.at > fault && p.answered_by == Some(by))
                {
                    return p.at - fault;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    let mut faults = Vec::new();
    bounded("first connection", pc.connected()).await?;
    tokio::time::sleep(settings.hold).await;

    // 1. kill -9 the primary; the catalog names the other server at once.
    let what = "kill -9 the primary, catalog updated at once";
    let fault = Instant::now();
    primary.kill9();
    *catalog.lock().unwrap() = secondary.addr;
    if settings.verbose {
        println!("== {what}");
    }
    let gap = bounded(what, recovered(fault, secondary.addr)).await?;
    faults.push(Fault {
        what,
        gap,
        answered_by: secondary.addr,
    });
    primary.restart().await?;
    tokio::time::sleep(settings.hold).await;

    // 2. kill -9 the new primary; the catalog is updated late.
    let what = "kill -9 the primary, catalog updated 300 ms later";
    let fault = Instant::now();
    secondary.kill9();
    if settings.verbose {
        println!("== {what}");
    }
    tokio::time::sleep(settings.catalog_lag).await;
    *catalog.lock().unwrap() = primary.addr;
    let gap = bounded(what, recovered(fault, primary.addr)).await?;
    faults.push(Fault {
        what,
        gap,
        answered_by: primary.addr,
    });
    secondary.restart().await?;
    tokio::time::sleep(settings.hold).await;

    // 3. SIGSTOP the primary: only the health check can tell.
    let what = "SIGSTOP the primary, catalog updated at once";
    let fault = Instant::now();
    primary.sigstop()?;
    *catalog.lock().unwrap() = secondary.addr;
    if settings.verbose {
        println!("== {what}");
    }
    let gap = bounded(what, recovered(fault, secondary.addr)).await?;
    faults.push(Fault {
        what,
        gap,
        answered_by: secondary.addr,
    });
    if settings.verbose {
        println!("== restart the stopped server");
    }
    primary.restart().await?;
    tokio::time::sleep(settings.hold).await;

    let _ = stop_pinging.send(());
    let _ = pinger.await;
    if settings.verbose {
        println!("== close");
    }
    bounded("close", pc.close()).await?;
    drop((primary, secondary));

    let pings = pings.lock().unwrap();
    let closed_by_health_check = connections
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.closed_by_health_check())
        .count();
    let events = events.lock().unwrap().clone();
    Ok(Report {
        faults,
        events,
        closed_by_health_check,
        pings_ok: pings.iter().filter(|p| p.answered_by.is_some()).count(),
        pings_failed: pings.iter().filter(|p| p.answered_by.is_none()).count(),
    })
}
