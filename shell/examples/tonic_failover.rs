//! A real tonic client failing over between two copies of a tonic server through a
//! persistent connection over `Http2Connection`.
//!
//! ```text
//! cargo run -p persistent-connection --features grpc-health --example tonic_failover
//! ```
//!
//! The server is tonic's own, serving tonic-health's prebuilt `grpc.health.v1.Health` (no
//! code generation, no `protoc`); each copy runs as a child process of this example
//! (`tonic_failover serve ADDR`), so a copy can really be killed. Both are listed in a
//! `StaticList`. The client calls `Health/Check` every 20 ms with a 500 ms deadline through
//! whatever connection is current, and the drill hits the copy in use three times:
//!
//! 1. kill -9: the kernel closes its sockets; the connection notices at once;
//! 2. graceful shutdown (tonic's `serve_with_shutdown`, a `GOAWAY`): the client hands over
//!    (`handover(Drain)`, make before break): the next connection is made while the call in
//!    flight finishes on the old one; new calls wait for the next one; none fails;
//! 3. SIGSTOP: the copy hangs with its sockets open; the HTTP/2 PING keepalive (200 ms +
//!    300 ms) closes the connection (the `grpc.health.v1` check, 2 × (100 ms + 200 ms),
//!    would too; it also catches a server that answers PINGs but not calls).
//!
//! For each it prints the gap from the fault to the first answer from the other copy and the
//! calls that failed. It ends by itself in about 6 seconds.
//!
//! The client is what to copy: `connect` below (a `TcpConnection`, HTTP/2 on it with PING
//! keepalive, the gRPC health check around it) and `call` (tonic's generated client over
//! the current connection; a call that the connection did not send, because it had just
//! started draining, is made again).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use persistent_connection::catalog::{Catalog, Pick, StaticList};
use persistent_connection::conn::grpc_health;
use persistent_connection::conn::http2::{
    Http2Connection, Http2Options, PingKeepalive, call_was_not_sent,
};
use persistent_connection::conn::{HealthCheck, HealthChecked};
use persistent_connection::core::HandoverReason;
use persistent_connection::{
    Event, IoError, PersistentConnection, TcpConnection, WeakPersistentConnection,
};
use tokio::time::Instant;
use tonic::body::Body;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type Conn = HealthChecked<Http2Connection<Body>>;
type Pc = PersistentConnection<SocketAddr, Conn, IoError>;
type Weak = WeakPersistentConnection<SocketAddr, Conn, IoError>;

/// One connection to one copy: TCP with the library's defaults (`TCP_USER_TIMEOUT` and
/// keepalive), HTTP/2 on it with a PING every 200 ms that must come back within 300 ms, and
/// a `grpc.health.v1` check of the server every 100 ms (200 ms each; closed after 2 failed).
async fn connect(addr: SocketAddr) -> Result<Conn, IoError> {
    let tcp = TcpConnection::connect(addr).await?;
    let keepalive = PingKeepalive::new(Duration::from_millis(200), Duration::from_millis(300));
    let conn = Http2Connection::handshake(tcp, &Http2Options::new().keepalive(keepalive)).await?;
    let check = HealthCheck::new(Duration::from_millis(100), Duration::from_millis(200), 2);
    Ok(grpc_health::health_checked(conn, check, ""))
}

/// One `Health/Check` over the current connection.
async fn call(pc: &Pc) -> Result<(), tonic::Status> {
    loop {
        let mut client = HealthClient::new(pc.connected().await.get().clone());
        match client.check(HealthCheckRequest::default()).await {
            // The connection had just begun draining (GOAWAY) and did not send it: make the
            // same call on the next connection.
            Err(status) if call_was_not_sent(&status) => continue,
            answer => return answer.map(drop),
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "serve" {
        serve(args[2].parse().expect("an address to listen on")).await;
        return;
    }
    let mut a = Copy::start("A", "127.0.0.1:0".parse().unwrap());
    let mut b = Copy::start("B", "127.0.0.1:0".parse().unwrap());
    let start = Instant::now();
    // Which copy the last connection made goes to, and the current one (set on the events
    // `Connected` and `HandedOver`).
    let made = Arc::new(Mutex::new(None::<SocketAddr>));
    let current = Arc::new(Mutex::new(None::<SocketAddr>));
    let names = [(a.addr, "A"), (b.addr, "B")];
    // The persistent connection itself, for the GOAWAY watchers started by `on_event`.
    let handle = Arc::new(OnceLock::<Weak>::new());
    let name = move |addr: SocketAddr| names.iter().find(|(a, _)| *a == addr).map_or("?", |n| n.1);

    let pc: Pc = PersistentConnection::builder(
        "health",
        StaticList::new([a.addr, b.addr]).get_address::<IoError>(Pick::InOrder),
        {
            let made = made.clone();
            move |addr: SocketAddr, _cx| {
                let made = made.clone();
                async move {
                    let conn = connect(addr).await?;
                    *made.lock().unwrap() = Some(addr);
                    Ok(conn)
                }
            }
        },
    )
    .retry_policy(Duration::from_millis(500))
    .connect_timeout(Duration::from_secs(1))
    .on_event({
        let (made, current, handle) = (made.clone(), current.clone(), handle.clone());
        move |e: Event<SocketAddr, Conn, IoError>| {
            let at = start.elapsed().as_secs_f64() * 1e3;
            match &e {
                Event::ObtainedAddress(addr) => {
                    println!("[{at:7.1} ms] ObtainedAddress({})", name(*addr))
                }
                Event::Connected(conn)
                | Event::HandedOver {
                    connection: conn, ..
                } => {
                    let addr = made.lock().unwrap().expect("made");
                    *current.lock().unwrap() = Some(addr);
                    let how = match &e {
                        Event::HandedOver { reason, .. } => format!("HandedOver({reason:?})"),
                        _ => "Connected".to_owned(),
                    };
                    println!("[{at:7.1} ms] {how} to {}", name(addr));
                    // Make before break: on the server's GOAWAY, make the next connection
                    // while the calls in flight finish on this one.
                    let (goaway, handle) = (conn.goaway(), handle.clone());
                    tokio::spawn(async move {
                        if goaway.await
                            && let Some(pc) = handle.get().and_then(|weak: &Weak| weak.upgrade())
                        {
                            pc.handover(HandoverReason::Drain);
                        }
                    });
                }
                other => println!("[{at:7.1} ms] {other:?}"),
            }
            async {}
        }
    })
    .build();
    let _ = handle.set(pc.downgrade());

    // The client: a call every 20 ms, each with a 500 ms deadline; when each was answered
    // (by the copy current then) or failed.
    let answered = Arc::new(Mutex::new(Vec::<(Instant, Option<SocketAddr>)>::new()));
    let failed = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let client = tokio::spawn({
        let (pc, current, answered, failed) = (
            pc.clone(),
            current.clone(),
            answered.clone(),
            failed.clone(),
        );
        async move {
            loop {
                let sent = Instant::now();
                match tokio::time::timeout(Duration::from_millis(500), call(&pc)).await {
                    Ok(Ok(())) => answered
                        .lock()
                        .unwrap()
                        .push((Instant::now(), *current.lock().unwrap())),
                    failure => {
                        let why = match failure {
                            Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                            _ => "no answer within 500 ms".to_owned(),
                        };
                        let at = sent.duration_since(start).as_secs_f64() * 1e3;
                        println!("[{at:7.1} ms] call failed: {why}");
                        failed.lock().unwrap().push(Instant::now());
                    }
                }
                tokio::time::sleep_until(sent + Duration::from_millis(20)).await;
            }
        }
    });

    // Faults hit connections older than the retry delay (500 ms ± 30 %), which are replaced
    // at once (R6); a younger one waits for the rest of its attempt's delay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut results = Vec::new();
    for fault in ["kill -9", "graceful shutdown (GOAWAY)", "SIGSTOP"] {
        // The copy in use, and the other one.
        let in_use = current.lock().unwrap().expect("connected");
        let (hit, other) = if in_use == a.addr {
            (&mut a, &b)
        } else {
            (&mut b, &a)
        };
        println!("== {fault} {}", hit.name);
        let at = Instant::now();
        match fault {
            "kill -9" => hit.kill(),
            "SIGSTOP" => hit.signal("-STOP"),
            _ => hit.shut_down(),
        }
        // Wait for an answer from the other copy, then bring the hit one back.
        let gap = loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let answers = answered.lock().unwrap();
            if let Some((t, _)) = answers
                .iter()
                .find(|(t, by)| *t >= at && *by == Some(other.addr))
            {
                break t.duration_since(at);
            }
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lost = failed.lock().unwrap().iter().filter(|t| **t >= at).count();
        results.push((fault, hit.name, other.name, gap, lost));
        if fault == "SIGSTOP" {
            hit.signal("-CONT");
        }
        hit.restart();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    client.abort();
    pc.close().await;
    a.kill();
    b.kill();
    println!();
    for (fault, hit, other, gap, lost) in results {
        println!(
            "{fault:<27} {hit} -> first answer from {other} after {:6.1} ms, {lost} failed call(s)",
            gap.as_secs_f64() * 1e3
        );
    }
    let total = answered.lock().unwrap().len();
    println!(
        "calls: {total} answered, {} failed",
        failed.lock().unwrap().len()
    );
}

/// A copy of the server: this example run as `tonic_failover serve ADDR`.
struct Copy {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Copy {
    /// Starts a copy on `addr` (port 0: any) and waits until it listens.
    fn start(name: &'static str, addr: SocketAddr) -> Copy {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["serve", &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a copy of the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().parse().expect("the copy's address");
        Copy { name, addr, child }
    }

    fn restart(&mut self) {
        self.kill();
        *self = Copy::start(self.name, self.addr);
    }

    /// kill -9.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    /// Graceful shutdown: the copy stops when its standard input closes.
    fn shut_down(&mut self) {
        drop(self.child.stdin.take());
    }
}

/// A copy of the server: tonic with tonic-health's service, all SERVING. It prints its
/// address, and shuts down gracefully (`GOAWAY`, calls in flight finish) when its standard
/// input closes.
async fn serve(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stdin_closed = async {
        let _ =
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
    };
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            health,
            tonic::transport::server::TcpIncoming::from(listener),
            stdin_closed,
        )
        .await
        .expect("serve");
}
