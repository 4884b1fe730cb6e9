//! A real client kept alive: the `redis` crate's multiplexed connection over real
//! `redis-server` processes on 127.0.0.1 (Debian's `redis-server` package; `scripts/test.sh`
//! installs it). Each test starts and stops its own servers on free ports; nothing is
//! mocked. The client, the servers and the drill are the test kit's
//! (`persistent_connection_testkit::redis`), which the `redis_failover` example runs.
//! Real processes need the real clock: every wait is bounded by a generous guard, and no
//! figure is asserted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::conn::HealthCheck;
use persistent_connection::{Closable, Event, PersistentConnection};
use persistent_connection_testkit::redis::{RedisServer, Settings, connect, drill, failure, ping};

const GUARD: Duration = Duration::from_secs(60);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The example's drill, shorter: kill -9 with the catalog updated at once and late, then
/// SIGSTOP (only the health check can tell), restarting each server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_fails_over_from_kill_9_and_from_a_sigstopped_primary() {
    let settings = Settings {
        hold: ms(200),
        catalog_lag: ms(100),
        // Generous on a loaded machine: a slow PING must not pass for a hung server.
        ping_timeout: ms(300),
        health: HealthCheck::new(ms(100), ms(300), 2),
        verbose: false,
        ..Settings::example()
    };
    let report = guard("the drill", drill(&settings))
        .await
        .expect("the drill ran");
    println!("{}\n{}", report.events.join("\n"), report.summary());
    let faults: Vec<_> = report.faults.iter().map(|f| f.what).collect();
    assert_eq!(
        faults,
        [
            "kill -9 the primary, catalog updated at once",
            "kill -9 the primary, catalog updated 300 ms later",
            "SIGSTOP the primary, catalog updated at once",
        ]
    );
    // The stopped server never closed its sockets: the health check did.
    assert!(report.closed_by_health_check >= 1, "{}", report.summary());
    let connected = report
        .events
        .iter()
        .filter(|e| e.contains("] Connected("))
        .count();
    assert!(connected >= 4, "at least one connection per server in turn");
    assert!(report.pings_ok > 0);
}

/// Without a key, `RedisError`'s `==` is false for I/O errors and every failed attempt is
/// reported; with `Keyed` (the test kit's `failure`), the same refusal is reported once per
/// round (R4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connect_failures_are_deduplicated_by_key_not_by_their_own_eq() {
    // A port where nobody listens: a server started, then stopped.
    let addr = {
        let server = RedisServer::start().await.unwrap();
        server.addr
    };
    const ATTEMPTS: usize = 8;

    async fn failed_events<E, F>(addr: SocketAddr, wrap: F) -> usize
    where
        E: Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
        F: Fn(redis::RedisError) -> E + Copy + Send + Sync + 'static,
    {
        let failed = Arc::new(Mutex::new(0usize));
        let attempts = Arc::new(Mutex::new(0usize));
        let pc = {
            let failed = failed.clone();
            let attempts = attempts.clone();
            PersistentConnection::builder(
                "dead redis",
                move || async move { Ok(addr) },
                move |addr: SocketAddr, _cx: persistent_connection::ConnectContext<E>| {
                    *attempts.lock().unwrap() += 1;
                    async move {
                        let stream = persistent_connection::TcpConnection::connect(addr)
                            .await
                            .map_err(|e| wrap(std::io::Error::from(e).into()))?;
                        Ok(persistent_connection::conn::Driven::spawn((), async move {
                            drop(stream)
                        }))
                    }
                },
            )
            .retry_policy(ms(2))
            .on_event(move |e| {
                if let Event::FailedToConnect(_) = e {
                    *failed.lock().unwrap() += 1;
                }
                async {}
            })
            .build()
        };
        guard("attempts", async {
            while *attempts.lock().unwrap() < ATTEMPTS {
                tokio::time::sleep(ms(2)).await;
            }
        })
        .await;
        pc.close().await;
        let attempts = *attempts.lock().unwrap();
        assert!(attempts >= ATTEMPTS);
        *failed.lock().unwrap()
    }

    let raw = failed_events(addr, |e| e).await;
    assert!(raw >= ATTEMPTS - 1, "RedisError's own eq: {raw} events");
    let keyed = failed_events(addr, failure).await;
    assert_eq!(keyed, 1, "keyed by its text: one event per round");
}

/// The library notices the server going away by itself: redis' driver future ends when
/// its socket does, and `Driven` turns that into a close. No request, no health check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_noticed_without_a_request_and_close_leaves_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut server = RedisServer::start().await.unwrap();
    // Health checks far apart: only the driver's end can tell.
    let quiet = HealthCheck::new(Duration::from_secs(3600), Duration::from_secs(1), 1);
    let conn = guard("connect", connect(server.addr, quiet)).await.unwrap();
    guard("a PING", ping(&conn, Duration::from_secs(5)))
        .await
        .unwrap();
    server.kill9();
    guard("the driver's end noticed", conn.close_finished()).await;
    assert!(conn.get().driver_ended());
    assert!(!conn.closed_by_health_check());

    // Within a persistent connection: close stops the driver, the check and the stream.
    server.restart().await.unwrap();
    let addr = server.addr;
    let pc = PersistentConnection::builder(
        "redis",
        move || async move { Ok(addr) },
        move |addr, _cx| connect(addr, quiet),
    )
    .build();
    let conn = guard("connected", pc.connected()).await;
    guard("a PING", ping(&conn, Duration::from_secs(5)))
        .await
        .unwrap();
    guard("close", pc.close()).await;
    assert!(conn.is_closed());
    drop(conn);
    guard("no task left", async {
        while metrics.num_alive_tasks() != baseline {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
}
