//! The Redis failover drill for three ways of keeping a Redis client alive, in one run
//! (issue 11): this project (the client of the `redis_failover` example, the test kit's
//! `redis::connect`: a multiplexed connection over `TcpConnection`, `Driven`,
//! `HealthChecked`, a catalog),
//! `stubborn-io` (the multiplexed connection over a `StubbornIo` stream whose every
//! reconnect looks the catalog up) and `redis`' own `ConnectionManager` (which reconnects
//! to the one address it was given: it cannot fail over to another).
//!
//! ```text
//! cargo run --release -p persistent-connection-bench --bin redis-failover -- [rounds]
//! ```
//!
//! Each library gets two fresh `redis-server` processes on 127.0.0.1 and a client that
//! PINGs every 20 ms (100 ms timeout). Each round hits the server the library is using
//! with three faults: kill -9 with the catalog naming the other server at once; kill -9
//! with the catalog updated 300 ms later; SIGSTOP with the catalog updated at once. The hit
//! server is restarted 1 s after its fault (a stopped one is killed first). The gap is
//! from the fault to the first PING answered afterwards, by any server. Markdown on stdout.
#![forbid(unsafe_code)]

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::conn::HealthCheck;
use persistent_connection::{Closable, PersistentConnection};
use persistent_connection_testkit::redis::{self as kit, RedisServer};
use persistent_connection_testkit::stubborn::{self, LookupStream, SharedAddr};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use stubborn_io::tokio::StubbornIo;
use tokio::time::Instant;

const PING_EVERY: Duration = Duration::from_millis(20);
const PING_TIMEOUT: Duration = Duration::from_millis(100);
const RETRY: Duration = Duration::from_millis(50);
const RESTART_AFTER: Duration = Duration::from_secs(1);
const CATALOG_LAG: Duration = Duration::from_millis(300);
const HOLD: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lib {
    Ours,
    Stubborn,
    Manager,
}

impl Lib {
    fn name(self) -> &'static str {
        match self {
            Lib::Ours => "persistent-connection",
            Lib::Stubborn => "stubborn-io 0.3",
            Lib::Manager => "redis ConnectionManager",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultKind {
    KillCatalogAtOnce,
    KillCatalogLate,
    Stop,
}

impl FaultKind {
    const ALL: [FaultKind; 3] = [
        FaultKind::KillCatalogAtOnce,
        FaultKind::KillCatalogLate,
        FaultKind::Stop,
    ];
    fn name(self) -> &'static str {
        match self {
            FaultKind::KillCatalogAtOnce => "kill -9, catalog at once",
            FaultKind::KillCatalogLate => "kill -9, catalog 300 ms late",
            FaultKind::Stop => "SIGSTOP, catalog at once",
        }
    }
}

/// A client of one library: PINGs until told to stop, recording when each one answered.
async fn client(
    lib: Lib,
    catalog: SharedAddr,
    answered: Arc<Mutex<Vec<Instant>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> io::Result<()> {
    let other = |e: redis::RedisError| io::Error::other(e.to_string());
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    async fn ping(conn: &mut (impl redis::aio::ConnectionLike + Send)) -> bool {
        matches!(
            tokio::time::timeout(PING_TIMEOUT, redis::cmd("PING").query_async::<String>(conn)).await,
            Ok(Ok(ref p)) if p == "PONG"
        )
    }
    match lib {
        Lib::Ours => {
            let health =
                HealthCheck::new(Duration::from_millis(100), Duration::from_millis(100), 2);
            let lookup = catalog.clone();
            let pc = PersistentConnection::builder(
                "redis",
                move || {
                    let addr = lookup.get();
                    async move { Ok(addr) }
                },
                move |addr, _cx| kit::connect(addr, health),
            )
            .retry_policy(RETRY)
            .connect_timeout(Duration::from_millis(500))
            .build();
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {}
                }
                let conn = match pc.current_connection() {
                    Some(c) if !c.is_closed() => Some(c),
                    _ => tokio::select! {
                        _ = &mut stop => break,
                        c = tokio::time::timeout(WAIT, pc.connected()) => c.ok(),
                    },
                };
                if let Some(c) = conn
                    && ping(&mut c.conn.clone()).await
                {
                    answered.lock().unwrap().push(Instant::now());
                }
            }
            pc.close().await;
        }
        Lib::Stubborn => {
            let stream = StubbornIo::<LookupStream, SharedAddr>::connect_with_options(
                catalog,
                stubborn::options(RETRY),
            )
            .await?;
            let (mut conn, driver) = MultiplexedConnection::new_with_config(
                &RedisConnectionInfo::default(),
                stream,
                AsyncConnectionConfig::new(),
            )
            .await
            .map_err(other)?;
            let driver = tokio::spawn(driver);
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {}
                }
                if ping(&mut conn).await {
                    answered.lock().unwrap().push(Instant::now());
                }
            }
            driver.abort();
        }
        Lib::Manager => {
            let client =
                redis::Client::open(format!("redis://{}/", catalog.get())).map_err(other)?;
            let config = ConnectionManagerConfig::new().set_min_delay(RETRY);
            let mut conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(other)?;
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tick.tick() => {}
                }
                if ping(&mut conn).await {
                    answered.lock().unwrap().push(Instant::now());
                }
            }
        }
    }
    Ok(())
}

/// Runs `rounds` rounds of the three faults against one library; the gaps per fault kind.
async fn drill(lib: Lib, rounds: usize) -> io::Result<Vec<(FaultKind, Duration)>> {
    let mut servers = [RedisServer::start().await?, RedisServer::start().await?];
    let catalog = SharedAddr::new(servers[0].addr);
    let answered = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(client(lib, catalog.clone(), answered.clone(), stop_rx));
    let answered_after = |t: Instant| {
        let answered = answered.clone();
        async move {
            loop {
                if let Some(a) = answered.lock().unwrap().iter().find(|a| **a > t) {
                    return *a - t;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    tokio::time::timeout(WAIT, answered_after(Instant::now()))
        .await
        .map_err(|_| io::Error::other(format!("{}: no first PING", lib.name())))?;
    let mut gaps = Vec::new();
    // The server the library is using: ConnectionManager stays on the first one.
    let mut hit = 0;
    for _ in 0..rounds {
        for kind in FaultKind::ALL {
            tokio::time::sleep(HOLD).await;
            let other = 1 - hit;
            match kind {
                FaultKind::Stop => servers[hit].sigstop()?,
                _ => servers[hit].kill9(),
            }
            let fault = Instant::now();
            let late = kind == FaultKind::KillCatalogLate;
            let catalog = &catalog;
            let servers = &mut servers;
            let (gap, restarted) = tokio::join!(
                async {
                    tokio::time::timeout(WAIT, answered_after(fault))
                        .await
                        .unwrap_or(WAIT)
                },
                async move {
                    if late {
                        tokio::time::sleep(CATALOG_LAG).await;
                    }
                    catalog.set(servers[other].addr);
                    tokio::time::sleep_until(fault + RESTART_AFTER).await;
                    servers[hit].restart().await
                }
            );
            restarted?;
            gaps.push((kind, gap));
            eprintln!("{:<24} {:<30} {:>8.1} ms", lib.name(), kind.name(), ms(gap));
            if lib != Lib::Manager {
                hit = other;
            }
        }
    }
    let _ = stop_tx.send(());
    task.await.map_err(io::Error::other)??;
    Ok(gaps)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(a) => a.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "usage: redis-failover [rounds]",
            )
        })?,
        None => 5,
    };
    println!("load average before: {}", loadavg());
    let mut rows = Vec::new();
    for lib in [Lib::Ours, Lib::Stubborn, Lib::Manager] {
        let gaps = drill(lib, rounds).await?;
        for kind in FaultKind::ALL {
            let mut g: Vec<Duration> = gaps
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, d)| *d)
                .collect();
            g.sort();
            rows.push((lib, kind, g));
        }
    }
    println!("load average after: {}", loadavg());
    println!();
    println!("| library | fault | n | min ms | median ms | max ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (lib, kind, g) in rows {
        let median = g[g.len() / 2];
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
            lib.name(),
            kind.name(),
            g.len(),
            ms(g[0]),
            ms(median),
            ms(g[g.len() - 1])
        );
    }
    Ok(())
}
