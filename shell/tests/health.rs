//! Health checks (S7) and connections run by a driver future.
//!
//! The timing tests run on Tokio's paused clock with an in-memory connection, so every
//! figure is exact. The real-socket test uses 127.0.0.1 and the real clock (a server that
//! stops reading without closing), bounded by a generous guard.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::conn::{CloseSignal, Driven, HealthCheck, HealthChecked};
use persistent_connection::core::Jitter;
use persistent_connection::{Closable, Event, PersistentConnection, TcpConnection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

const GUARD: Duration = Duration::from_secs(10);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What one scripted check does.
#[derive(Clone, Copy, Debug)]
enum Check {
    Pass,
    Fail,
    Hang,
}

/// A scripted check: takes the next step of the script (passing once it runs out) and
/// records when each check started, relative to `start`.
#[derive(Clone)]
struct Script {
    steps: Arc<Mutex<VecDeque<Check>>>,
    started: Arc<Mutex<Vec<Duration>>>,
    start: Instant,
}

impl Script {
    fn new(steps: &[Check]) -> Script {
        Script {
            steps: Arc::new(Mutex::new(steps.iter().copied().collect())),
            started: Arc::default(),
            start: Instant::now(),
        }
    }

    fn check<C>(
        &self,
    ) -> impl Fn(C) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + 'static
    {
        let script = self.clone();
        move |_conn: C| {
            let step = script
                .steps
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Check::Pass);
            script.started.lock().unwrap().push(script.start.elapsed());
            Box::pin(async move {
                match step {
                    Check::Pass => Ok(()),
                    Check::Fail => Err("no PONG".to_owned()),
                    Check::Hang => std::future::pending().await,
                }
            })
        }
    }

    fn started(&self) -> Vec<Duration> {
        self.started.lock().unwrap().clone()
    }
}

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|s| Duration::from_secs(*s)).collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hung_connection_is_closed_after_n_times_interval_plus_timeout() {
    let script = Script::new(&[Check::Hang; 3]);
    let settings = HealthCheck::new(Duration::from_secs(1), Duration::from_secs(2), 3);
    let conn = HealthChecked::new(CloseSignal::new(), settings, script.check());
    conn.close_finished().await;
    assert_eq!(script.start.elapsed(), settings.worst_case_detection());
    assert_eq!(script.start.elapsed(), Duration::from_secs(9));
    assert_eq!(script.started(), secs(&[1, 4, 7]));
    assert!(conn.closed_by_health_check() && conn.is_closed());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failing_checks_close_after_n_intervals_and_a_success_resets_the_count() {
    use Check::*;
    let script = Script::new(&[Fail, Fail, Pass, Fail, Fail, Fail]);
    let settings = HealthCheck::new(Duration::from_secs(1), Duration::from_secs(5), 3);
    let conn = HealthChecked::new(CloseSignal::new(), settings, script.check());
    conn.close_finished().await;
    assert_eq!(script.start.elapsed(), Duration::from_secs(6));
    assert_eq!(script.started(), secs(&[1, 2, 3, 4, 5, 6]));
    assert!(conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn zero_failures_counts_as_one() {
    let script = Script::new(&[Check::Fail]);
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 0),
        script.check(),
    );
    conn.close_finished().await;
    assert_eq!(script.start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_healthy_connection_stays_open_and_its_check_stops_when_it_closes() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let script = Script::new(&[]);
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 1),
        script.check(),
    );
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline + 1,
        "the check task runs"
    );
    tokio::time::sleep(ms(100_500)).await;
    assert!(!conn.is_closed());
    assert_eq!(script.started().len(), 100);
    conn.close().await;
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), baseline, "the check task ended");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(script.started().len(), 100, "no check after close");
    assert!(!conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_check_stops_when_the_peer_closes_mid_check() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let script = Script::new(&[Check::Hang]);
    let peer = CloseSignal::new();
    let conn = HealthChecked::new(
        peer.clone(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(60), 1),
        script.check(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await; // the first check hangs
    assert_eq!(script.started().len(), 1);
    peer.mark_closed(); // the peer goes away
    conn.close_finished().await;
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), baseline, "the check task ended");
    assert!(!conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dropping_every_handle_ends_the_check_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let script = Script::new(&[]);
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 1),
        script.check(),
    );
    let clone = conn.clone();
    drop(conn);
    tokio::time::sleep(ms(1500)).await;
    assert_eq!(metrics.num_alive_tasks(), baseline + 1, "a clone keeps it");
    drop(clone);
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), baseline);
    assert_eq!(script.started().len(), 1);
}

/// R6 and health checks: a connection closed by its check is an ordinary close. The next
/// round waits for the retry timer of the attempt that made the connection, so one that
/// dies young waits for the rest of the retry delay; one that lived longer is replaced at
/// once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_connection_closed_by_its_check_reconnects_after_the_rest_of_the_retry_delay() {
    for (retry, detect, expected_second_connect) in [
        // Dies young: detected at 2 s, the retry timer fires at 10 s.
        (10, 2, 10),
        // Lives longer than the retry delay: reconnects as soon as it is detected.
        (1, 2, 2),
    ] {
        let start = Instant::now();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        let pc = {
            let connects = connects.clone();
            let events = events.clone();
            PersistentConnection::builder(
                "hangs",
                || async { Ok::<_, String>(()) },
                move |(), _cx| {
                    let n = {
                        let mut c = connects.lock().unwrap();
                        c.push(start.elapsed());
                        c.len()
                    };
                    // The first connection hangs at once; the next ones answer.
                    let script = Script::new(if n == 1 { &[Check::Hang] } else { &[] });
                    async move {
                        Ok(HealthChecked::new(
                            CloseSignal::new(),
                            HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 1),
                            script.check(),
                        ))
                    }
                },
            )
            .retry_policy(
                persistent_connection::RetryPolicy::from(Duration::from_secs(retry))
                    .with_jitter(Jitter::NonRandom),
            )
            .on_event(move |e| {
                let events = events.clone();
                async move {
                    if matches!(e, Event::Disconnected) {
                        events.lock().unwrap().push(start.elapsed());
                    }
                }
            })
            .build()
        };
        let first = pc.connected().await;
        first.close_finished().await;
        assert!(first.closed_by_health_check());
        let second = pc.connected().await;
        assert!(!second.is_closed());
        assert_eq!(*events.lock().unwrap(), secs(&[detect]), "retry {retry}s");
        assert_eq!(
            *connects.lock().unwrap(),
            secs(&[0, expected_second_connect]),
            "retry {retry}s"
        );
        pc.close().await;
    }
}

// ------------------------------------------------------------------ real sockets

/// A line server on 127.0.0.1 that answers `PING` with `PONG` until `hang` is set; then it
/// stops reading and answering, and keeps every socket open (a stopped process, as seen
/// from the client).
struct PingServer {
    addr: SocketAddr,
    hang: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PingServer {
    async fn start() -> PingServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(false));
        let flag = hang.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((stream, _)) = a else { break };
                        let flag = flag.clone();
                        conns.spawn(async move {
                            let (read, mut write) = stream.into_split();
                            let mut lines = BufReader::new(read).lines();
                            while let Ok(Some(_)) = lines.next_line().await {
                                if flag.load(Ordering::SeqCst) {
                                    // Hung: never reads nor answers again; the socket stays.
                                    let _keep = (lines, write);
                                    std::future::pending::<()>().await;
                                    unreachable!();
                                }
                                if write.write_all(b"PONG\n").await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        PingServer { addr, hang, task }
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The check: one `PING`, one `PONG`.
async fn ping(conn: TcpConnection) -> Result<(), String> {
    conn.send(b"PING\n").await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        got.extend(conn.recv().await.ok_or("closed")?);
    }
    if got == b"PONG\n" {
        Ok(())
    } else {
        Err(format!("unexpected answer {got:?}"))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_server_that_stops_answering_is_caught_by_the_health_check_and_failed_over_from() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let a = PingServer::start().await;
    let b = PingServer::start().await;
    let catalog = Arc::new(Mutex::new(a.addr));
    let settings = HealthCheck::new(ms(50), ms(100), 2);
    let checks = Arc::new(AtomicUsize::new(0));
    let pc = {
        let catalog = catalog.clone();
        let checks = checks.clone();
        PersistentConnection::builder(
            "ping",
            move || {
                let addr = *catalog.lock().unwrap();
                async move { Ok(addr) }
            },
            move |addr: SocketAddr, _cx| {
                let checks = checks.clone();
                async move {
                    let conn = TcpConnection::connect(addr).await?;
                    Ok::<_, persistent_connection::IoError>(HealthChecked::new(
                        conn,
                        settings,
                        move |c| {
                            checks.fetch_add(1, Ordering::SeqCst);
                            ping(c)
                        },
                    ))
                }
            },
        )
        .retry_policy(ms(20))
        .build()
    };
    let first = guard("connected to a", pc.connected()).await;
    assert_eq!(first.peer_addr(), a.addr);
    // A few good checks first.
    guard("checks pass", async {
        while checks.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    assert!(!first.is_closed());

    // a hangs without closing; the catalog names b.
    *catalog.lock().unwrap() = b.addr;
    let hung_at = Instant::now();
    a.hang.store(true, Ordering::SeqCst);
    guard(
        "the health check closes a's connection",
        first.close_finished(),
    )
    .await;
    let detected = hung_at.elapsed();
    assert!(first.closed_by_health_check());
    eprintln!(
        "hung server detected after {detected:?} (bound {:?})",
        settings.worst_case_detection()
    );
    let second = guard("failed over to b", pc.connected()).await;
    assert_eq!(second.peer_addr(), b.addr);
    guard("b answers", ping(second.get().clone()))
        .await
        .unwrap();

    guard("close", pc.close()).await;
    a.kill().await;
    b.kill().await;
    guard("no task left: readers and checks ended", async {
        while metrics.num_alive_tasks() != baseline {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
}

// ------------------------------------------------------------------ Driven

#[tokio::test(flavor = "current_thread")]
async fn a_driven_connection_closes_when_its_driver_ends_or_panics_and_close_stops_it() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();

    // The driver ends by itself.
    let (end, ended) = tokio::sync::oneshot::channel::<()>();
    let conn = Driven::spawn("handle", async move {
        let _ = ended.await;
    });
    assert!(!conn.is_closed());
    drop(end);
    guard("driver end noticed", conn.close_finished()).await;
    assert!(conn.is_closed() && conn.driver_ended());
    assert_eq!(*conn, "handle");

    // The driver panics.
    let conn = Driven::spawn((), async {
        tokio::task::yield_now().await;
        panic!("driver bug");
    });
    guard("driver panic noticed", conn.close_finished()).await;
    assert!(conn.driver_ended());

    // close() stops (drops) a driver that would run forever.
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let token = Dropped(dropped.clone());
    let conn = Driven::spawn((), async move {
        let _token = token;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    guard("close", conn.close()).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the driver is dropped before close resolves"
    );
    assert!(!conn.driver_ended());

    // Dropping every handle stops the driver too.
    let conn = Driven::spawn((), std::future::pending::<()>());
    drop(conn);
    guard("no driver task left", async {
        while metrics.num_alive_tasks() != baseline {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

// ------------------------------------------------- R13 in the tasks beside the driver

/// Panics when dropped.
struct PanicsOnDrop;
impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("drop bug");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_check_is_a_failed_check_and_the_connection_is_still_closed() {
    // The first call panics before it returns a future, the second's future panics: two
    // failed checks (S7 with R13), so the connection is closed after 2 intervals.
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let start = Instant::now();
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 2),
        move |_c: CloseSignal| {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("check bug, in the call");
            }
            async {
                tokio::task::yield_now().await;
                panic!("check bug, in the future");
                #[allow(unreachable_code)]
                Ok::<(), String>(())
            }
        },
    );
    guard("closed by the check", conn.close_finished()).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_check_whose_future_panics_when_dropped_does_not_stop_the_checks() {
    // The check hangs (a timeout) and its future panics when the timeout drops it: still
    // a failed check, and the next ones run.
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(1), 2),
        |_c: CloseSignal| {
            let token = PanicsOnDrop;
            async move {
                let _token = token;
                std::future::pending::<Result<(), String>>().await
            }
        },
    );
    let start = Instant::now();
    guard("closed by the check", conn.close_finished()).await;
    assert_eq!(start.elapsed(), Duration::from_secs(4));
    assert!(conn.closed_by_health_check());
}

/// A connection whose close takes until its owner marks it closed, counting `close()`s.
#[derive(Clone)]
struct SlowClose {
    signal: CloseSignal,
    closes: Arc<AtomicUsize>,
}

impl Closable for SlowClose {
    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        self.closes.fetch_add(1, Ordering::SeqCst);
        self.signal.close()
    }
    fn is_closed(&self) -> bool {
        self.signal.is_closed()
    }
    fn close_finished(&self) -> impl std::future::Future<Output = ()> + Send {
        self.signal.close_finished()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_check_that_fails_during_the_users_own_close_does_not_claim_it() {
    let inner = SlowClose {
        signal: CloseSignal::owned(),
        closes: Arc::default(),
    };
    // Checks start at 1 s, take 2 s and fail (the connection is going away).
    let conn = HealthChecked::new(
        inner.clone(),
        HealthCheck::new(Duration::from_secs(1), Duration::from_secs(10), 1),
        |_c: SlowClose| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Err::<(), _>("no answer")
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The user's close begins at 1.5 s and finishes at 5 s.
    let user_close = tokio::spawn({
        let conn = conn.clone();
        async move { conn.close().await }
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    inner.signal.mark_closed();
    guard("user close", user_close).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        inner.closes.load(Ordering::SeqCst),
        1,
        "close() called once, by the user"
    );
    assert!(!conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failures_zero_in_a_struct_literal_counts_as_one_and_keeps_a_healthy_connection() {
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 0,
        },
        |_c: CloseSignal| async { Ok::<(), String>(()) },
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!conn.is_closed(), "a healthy connection stays open");
    // And a failing one is closed at its first failure.
    let script = Script::new(&[Check::Pass, Check::Fail]);
    let conn = HealthChecked::new(
        CloseSignal::new(),
        HealthCheck {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failures: 0,
        },
        script.check(),
    );
    guard("closed", conn.close_finished()).await;
    assert_eq!(script.start.elapsed(), Duration::from_secs(2));
    assert!(conn.closed_by_health_check());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_driven_driver_whose_drop_panics_still_lets_close_finish() {
    // close() stops the driver, whose drop panics.
    let conn = Driven::spawn((), async {
        let _token = PanicsOnDrop;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    guard("close of the connection", conn.close()).await;
    assert!(conn.is_closed() && !conn.driver_ended());

    // The driver ends, and a value it holds panics when dropped as it ends.
    let conn = Driven::spawn((), async {
        let _token = PanicsOnDrop;
        tokio::task::yield_now().await;
    });
    guard("driver end noticed", conn.close_finished()).await;
    assert!(conn.driver_ended());

    // Dropping every handle stops it too, and the task does not die on the way.
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let conn = Driven::spawn((), async {
        let _token = PanicsOnDrop;
        std::future::pending::<()>().await;
    });
    tokio::task::yield_now().await;
    drop(conn);
    guard("no driver task left", async {
        while metrics.num_alive_tasks() != baseline {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // As the connection of a persistent connection: its close() finishes.
    let pc = PersistentConnection::builder(
        "driven",
        || async { Ok::<_, String>(1u16) },
        |_port, _cx| async {
            Ok(Driven::spawn((), async {
                let _token = PanicsOnDrop;
                std::future::pending::<()>().await;
            }))
        },
    )
    .retry_policy(
        persistent_connection::RetryPolicy::constant(Duration::from_secs(10)).non_random(),
    )
    .build();
    let c = guard("connected", pc.connected()).await;
    guard("close of the persistent connection", pc.close()).await;
    assert!(c.is_closed());
}
