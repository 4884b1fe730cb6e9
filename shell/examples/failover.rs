//! The live failover demo: three echo servers on 127.0.0.1 publish themselves in an
//! in-process catalog; a persistent connection looks the service up before every attempt,
//! a client sends a request every 20 ms over whatever connection is current, and a
//! schedule kills and restarts servers. Every event is printed with its time, and every
//! failover with its gap: from the death of the server we were talking to, to the first
//! reply from another one. It stops by itself after about 25 seconds and prints a summary.
//!
//! `cargo run --release -p persistent-connection --example failover`

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::core::EventKind;
use persistent_connection::{Closable, Error, Event, IoError, PersistentConnection, TcpConnection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How often the client sends a request.
const REQUEST_EVERY: Duration = Duration::from_millis(20);
/// How long the client waits for a reply.
const REPLY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a dead server stays listed in the catalog (it learns of deaths late, like a
/// catalog fed by heartbeats), so the client meets refused connections too.
const CATALOG_LAG: Duration = Duration::from_millis(150);
/// The persistent connection's base retry delay (jittered ±30%).
const RETRY_DELAY: Duration = Duration::from_millis(100);

type Pc = PersistentConnection<SocketAddr, TcpConnection, String>;

/// Seconds since the demo started, for printing.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn secs(self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// The in-process catalog: the servers currently published, by name.
#[derive(Clone, Default)]
struct Catalog(Arc<Mutex<BTreeMap<&'static str, SocketAddr>>>);

impl Catalog {
    fn publish(&self, name: &'static str, addr: SocketAddr) {
        self.0.lock().unwrap().insert(name, addr);
    }

    fn withdraw(&self, name: &'static str) {
        self.0.lock().unwrap().remove(name);
    }

    /// The lookup: the first published server, or an error if none is.
    fn lookup(&self) -> Result<SocketAddr, String> {
        self.0
            .lock()
            .unwrap()
            .values()
            .next()
            .copied()
            .ok_or_else(|| "no server published in the catalog".to_owned())
    }
}

/// One echo server: answers each line `L` with `<name> L`.
struct Server {
    name: &'static str,
    port: u16,
    task: Option<JoinHandle<()>>,
}

impl Server {
    async fn start(name: &'static str, port: u16, catalog: &Catalog) -> std::io::Result<Server> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        let listener = socket.listen(128)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection task,
            // which drops its socket: the client sees the connection close.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            connections.spawn(echo(name, stream));
                        }
                        Err(_) => break,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        catalog.publish(name, addr);
        Ok(Server {
            name,
            port: addr.port(),
            task: Some(task),
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn is_up(&self) -> bool {
        self.task.is_some()
    }

    /// Kills the server at once; the catalog notices `CATALOG_LAG` later.
    fn kill(&mut self, catalog: &Catalog) {
        if let Some(task) = self.task.take() {
            task.abort();
            let catalog = catalog.clone();
            let name = self.name;
            tokio::spawn(async move {
                tokio::time::sleep(CATALOG_LAG).await;
                catalog.withdraw(name);
            });
        }
    }

    /// Starts it again, on the same port if the system allows.
    async fn restart(&mut self, catalog: &Catalog) {
        if self.is_up() {
            return;
        }
        let fresh = match Server::start(self.name, self.port, catalog).await {
            Ok(s) => s,
            Err(_) => Server::start(self.name, 0, catalog)
                .await
                .expect("bind 127.0.0.1"),
        };
        *self = fresh;
    }
}

async fn echo(name: &'static str, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{name} {line}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// What the demo measures.
#[derive(Default)]
struct Stats {
    sent: u64,
    replies: u64,
    failed_requests: u64,
    idle_ticks: u64,
    events: BTreeMap<&'static str, u64>,
    /// The server we were talking to died at this time; waiting for a reply from another.
    pending_failover: Option<(f64, &'static str)>,
    failover_gaps: Vec<f64>,
    /// Every server was down from this time; waiting for any reply.
    pending_outage: Option<f64>,
    outages: Vec<f64>,
    replies_by_server: BTreeMap<String, u64>,
}

/// Sends one request over `conn` and waits for its reply line.
async fn request(conn: &TcpConnection, n: u64) -> Option<String> {
    conn.send(format!("req {n}\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let read = async {
        while !buf.contains(&b'\n') {
            buf.extend_from_slice(&conn.recv().await?);
        }
        Some(())
    };
    tokio::time::timeout(REPLY_TIMEOUT, read).await.ok()??;
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next()?.to_owned();
    line.ends_with(&format!("req {n}")).then_some(line)
}

/// The client: one request every `REQUEST_EVERY` over the current connection.
async fn client(pc: Pc, clock: Clock, stats: Arc<Mutex<Stats>>) {
    let mut tick = tokio::time::interval(REQUEST_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let Some(conn) = pc.current_connection().filter(|c| !c.is_closed()) else {
            stats.lock().unwrap().idle_ticks += 1;
            continue;
        };
        n += 1;
        let reply = request(&conn, n).await;
        let now = clock.secs();
        let mut s = stats.lock().unwrap();
        s.sent += 1;
        let Some(line) = reply else {
            s.failed_requests += 1;
            continue;
        };
        s.replies += 1;
        let server = line.split(' ').next().unwrap_or("?").to_owned();
        *s.replies_by_server.entry(server.clone()).or_default() += 1;
        if let Some((died, dead)) = s.pending_failover
            && server != dead
        {
            let gap = now - died;
            println!(
                "{now:>8.3}s  first reply from {server} after {dead} died: failover gap {:.0} ms",
                gap * 1000.0
            );
            s.failover_gaps.push(gap);
            s.pending_failover = None;
        }
        if let Some(down) = s.pending_outage.take() {
            let gap = now - down;
            println!(
                "{now:>8.3}s  first reply from {server} after the outage: {:.0} ms without service",
                gap * 1000.0
            );
            s.outages.push(gap);
        }
    }
}

fn describe(
    event: &Event<SocketAddr, TcpConnection, String>,
    names: &[(SocketAddr, &str)],
) -> String {
    let name = |a: &SocketAddr| names.iter().find(|(x, _)| x == a).map_or("?", |(_, n)| *n);
    match event {
        Event::AttemptingToConnect => "AttemptingToConnect".to_owned(),
        Event::ObtainedAddress(a) => format!("ObtainedAddress({a} = {})", name(a)),
        Event::FailedToConnect(Error::User(e)) => format!("FailedToConnect({e})"),
        Event::FailedToConnect(e) => format!("FailedToConnect({e})"),
        Event::Connected(c) => format!("Connected(to {})", name(&c.peer_addr())),
        Event::Disconnected => "Disconnected".to_owned(),
        Event::HandedOver { connection, reason } => {
            format!("HandedOver(to {}: {reason})", name(&connection.peer_addr()))
        }
    }
}

fn kind_name(event: &Event<SocketAddr, TcpConnection, String>) -> &'static str {
    match event.kind() {
        EventKind::AttemptingToConnect => "AttemptingToConnect",
        EventKind::ObtainedAddress => "ObtainedAddress",
        EventKind::FailedToConnect => "FailedToConnect",
        EventKind::Connected => "Connected",
        EventKind::Disconnected => "Disconnected",
        EventKind::HandedOver => "HandedOver",
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let clock = Clock(Instant::now());
    let catalog = Catalog::default();
    let mut servers = Vec::new();
    for name in ["A", "B", "C"] {
        servers.push(
            Server::start(name, 0, &catalog)
                .await
                .expect("bind 127.0.0.1"),
        );
    }
    let names: Arc<Vec<(SocketAddr, &str)>> =
        Arc::new(servers.iter().map(|s| (s.addr(), s.name)).collect());
    for s in &servers {
        println!(
            "{:>8.3}s  server {} listening on {}",
            clock.secs(),
            s.name,
            s.addr()
        );
    }
    let stats = Arc::new(Mutex::new(Stats::default()));

    let lookup = catalog.clone();
    let (ev_names, ev_stats) = (names.clone(), stats.clone());
    let pc: Pc = PersistentConnection::builder(
        "echo",
        move || {
            let result = lookup.lookup();
            async move { result }
        },
        |addr: SocketAddr, _cx| async move {
            TcpConnection::connect(addr)
                .await
                .map_err(|e: IoError| e.to_string())
        },
    )
    .retry_policy(RETRY_DELAY)
    .connect_timeout(Duration::from_secs(1))
    .on_event(move |event| {
        let (names, stats) = (ev_names.clone(), ev_stats.clone());
        async move {
            println!("{:>8.3}s  {}", clock.secs(), describe(&event, &names));
            *stats
                .lock()
                .unwrap()
                .events
                .entry(kind_name(&event))
                .or_default() += 1;
        }
    })
    .build();

    let client_task = tokio::spawn(client(pc.clone(), clock, stats.clone()));

    // The schedule: (seconds since start, what to do).
    enum Step {
        KillCurrent,
        KillAll,
        RestartAll,
    }
    let schedule = [
        (3.0, Step::KillCurrent),
        (6.0, Step::KillCurrent),
        (8.0, Step::RestartAll),
        (10.0, Step::KillCurrent),
        (13.0, Step::KillCurrent),
        (15.0, Step::RestartAll),
        (17.0, Step::KillAll),
        (19.0, Step::RestartAll),
        (21.0, Step::KillCurrent),
    ];
    for (at, step) in schedule {
        tokio::time::sleep_until(clock.0 + Duration::from_secs_f64(at)).await;
        match step {
            Step::KillCurrent => {
                let current = pc.current_connection().map(|c| c.peer_addr());
                let Some(server) = servers.iter_mut().find(|s| Some(s.addr()) == current) else {
                    println!(
                        "{:>8.3}s  -- not connected; nothing to kill --",
                        clock.secs()
                    );
                    continue;
                };
                let now = clock.secs();
                println!(
                    "{now:>8.3}s  -- kill {} (the current server) --",
                    server.name
                );
                server.kill(&catalog);
                stats.lock().unwrap().pending_failover = Some((now, server.name));
            }
            Step::KillAll => {
                let now = clock.secs();
                println!("{now:>8.3}s  -- kill every server --");
                for s in &mut servers {
                    s.kill(&catalog);
                }
                let mut st = stats.lock().unwrap();
                st.pending_failover = None;
                st.pending_outage = Some(now);
            }
            Step::RestartAll => {
                for s in &mut servers {
                    if !s.is_up() {
                        s.restart(&catalog).await;
                        println!(
                            "{:>8.3}s  -- restart {} on {} --",
                            clock.secs(),
                            s.name,
                            s.addr()
                        );
                    }
                }
            }
        }
    }
    tokio::time::sleep_until(clock.0 + Duration::from_secs(24)).await;
    println!("{:>8.3}s  -- close --", clock.secs());
    pc.close().await;
    println!("{:>8.3}s  close finished", clock.secs());
    client_task.abort();
    for s in &mut servers {
        s.kill(&catalog);
    }

    let s = stats.lock().unwrap();
    println!();
    println!("== summary");
    println!(
        "requests: {} sent, {} answered, {} unanswered (in flight when a server died); {} ticks with no connection",
        s.sent, s.replies, s.failed_requests, s.idle_ticks
    );
    println!("replies by server: {:?}", s.replies_by_server);
    println!("events: {:?}", s.events);
    let mut gaps: Vec<f64> = s.failover_gaps.iter().map(|g| g * 1000.0).collect();
    gaps.sort_by(f64::total_cmp);
    if gaps.is_empty() {
        println!("failovers: none measured");
    } else {
        println!(
            "failovers: {}, gap (server death -> first reply from another) min {:.0} ms, median {:.0} ms, max {:.0} ms",
            gaps.len(),
            gaps[0],
            gaps[gaps.len() / 2],
            gaps[gaps.len() - 1]
        );
    }
    for o in &s.outages {
        println!(
            "outage with every server down: {:.0} ms without service",
            o * 1000.0
        );
    }
    println!(
        "(retry delay {} ms ±30%, catalog lag {} ms, one request every {} ms)",
        RETRY_DELAY.as_millis(),
        CATALOG_LAG.as_millis(),
        REQUEST_EVERY.as_millis()
    );
}
