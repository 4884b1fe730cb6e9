//! Metrics export (feature `metrics`) into a recording `metrics` recorder — a recorder
//! over metrics-util's `Registry` with atomic storage, installed globally (the exporter's
//! task records from the runtime's threads) and read without resetting anything, so tests
//! running at once do not disturb each other — for persistent connections over real TCP
//! on 127.0.0.1. Real sockets need the real clock: every wait is bounded by a generous
//! guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use persistent_connection::Event;
use persistent_connection::metrics::{
    ATTEMPTS, CONNECTIONS, CONSECUTIVE_FAILURES, DISCONNECTIONS, FAILOVER_GAP, FAILURES, STATE,
    STATE_LABELS, export,
};
use persistent_connection::{IoError, PersistentConnection, State, TcpConnection};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const GUARD: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// A recorder that keeps every value where the tests can read it.
struct Recording(Arc<Registry<Key, AtomicStorage>>);

/// A description the exporter gave: metric name, unit, and whether it had a text.
type Description = (String, Option<Unit>, bool);

/// The descriptions the exporter gave.
fn descriptions() -> &'static Mutex<Vec<Description>> {
    static DESCRIBED: OnceLock<Mutex<Vec<Description>>> = OnceLock::new();
    DESCRIBED.get_or_init(|| Mutex::new(Vec::new()))
}

fn described(key: KeyName, unit: Option<Unit>, text: SharedString) {
    descriptions()
        .lock()
        .unwrap()
        .push((key.as_str().to_owned(), unit, !text.is_empty()));
}

impl Recorder for Recording {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        described(key, unit, text);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        described(key, unit, text);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, text: SharedString) {
        described(key, unit, text);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

fn registry() -> &'static Registry<Key, AtomicStorage> {
    static REGISTRY: OnceLock<Arc<Registry<Key, AtomicStorage>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::atomic());
        metrics::set_global_recorder(Recording(registry.clone()))
            .expect("the only recorder of this test binary");
        registry
    })
}

/// What was recorded for one server name.
struct Recorded {
    server: &'static str,
}

impl Recorded {
    /// The metric `name` with these labels besides `server_name`.
    fn key(&self, name: &str, labels: &[(&str, &str)]) -> Key {
        let mut all = vec![metrics::Label::new("server_name", self.server)];
        all.extend(
            labels
                .iter()
                .map(|(k, v)| metrics::Label::new(k.to_string(), v.to_string())),
        );
        Key::from_parts(name.to_owned(), all)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let handles = registry().get_counter_handles();
        handles
            .get(&self.key(name, labels))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let handles = registry().get_gauge_handles();
        handles
            .get(&self.key(name, labels))
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    fn histogram(&self, name: &str) -> Vec<f64> {
        let handles = registry().get_histogram_handles();
        handles
            .get(&self.key(name, &[]))
            .map(|h| h.data())
            .unwrap_or_default()
    }

    fn state(&self) -> Vec<(&'static str, Option<f64>)> {
        STATE_LABELS
            .iter()
            .map(|s| (*s, self.gauge(STATE, &[("state", s)])))
            .collect()
    }

    fn in_state(&self, state: &str) -> bool {
        self.state()
            .iter()
            .all(|(s, v)| *v == Some(if *s == state { 1.0 } else { 0.0 }))
    }
}

async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s); // closed when the task is aborted
        }
    });
    (addr, task)
}

fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A failover with failed attempts in between: every counter equals what `stats()` says,
/// the repeated refusal is counted as de-duplicated, the state gauge follows, and the
/// failover gap is one histogram value at least as long as the refused stretch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_state_and_failover_gap_reach_the_recorder() {
    let recorded = Recorded {
        server: "metrics-failover",
    };
    let server = recorded.server;
    registry(); // installed before anything is exported
    let (a, server_a) = echo_server().await;
    let (b, server_b) = echo_server().await;
    let catalog = Arc::new(Mutex::new(a));
    let lookup = catalog.clone();
    let pc = PersistentConnection::builder(
        server,
        move || {
            let addr = *lookup.lock().unwrap();
            async move { Ok::<_, IoError>(addr) }
        },
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(Duration::from_millis(10))
    .build();
    let exporter = export(&pc);

    guard("connected to A", pc.connected()).await;
    guard("the state gauge says connected", async {
        loop {
            if recorded.in_state("connected") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // A dies; the catalog names a refused address for a while, then B.
    *catalog.lock().unwrap() = refused_addr();
    let died = std::time::Instant::now();
    server_a.abort();
    guard("four refused attempts", async {
        while pc.stats().failures < 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let refused_for = died.elapsed();
    *catalog.lock().unwrap() = b;
    guard("connected to B", async {
        while pc.current_connection().map(|c| c.peer_addr()) != Some(b) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let total_gap = died.elapsed();

    guard("close", pc.close()).await;
    guard("the exporter ends after close", exporter)
        .await
        .unwrap();
    let stats = pc.stats();
    assert_eq!(pc.state(), State::Closed);

    assert_eq!(recorded.counter(ATTEMPTS, &[]), stats.attempts);
    let reported = stats.failures - stats.deduplicated_failures;
    assert_eq!(
        recorded.counter(FAILURES, &[("reported", "true")]),
        reported
    );
    assert_eq!(
        recorded.counter(FAILURES, &[("reported", "false")]),
        stats.deduplicated_failures
    );
    assert!(stats.deduplicated_failures >= 2, "{stats:?}");
    assert_eq!(recorded.counter(CONNECTIONS, &[]), stats.connections);
    assert_eq!(recorded.counter(CONNECTIONS, &[]), 2);
    assert_eq!(recorded.counter(DISCONNECTIONS, &[]), stats.disconnections);
    assert_eq!(recorded.counter(DISCONNECTIONS, &[]), 2);
    assert!(recorded.in_state("closed"), "{:?}", recorded.state());
    assert_eq!(recorded.gauge(CONSECUTIVE_FAILURES, &[]), Some(0.0));

    let gaps = recorded.histogram(FAILOVER_GAP);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let gap = Duration::from_secs_f64(gaps[0]);
    assert!(
        gap >= refused_for.saturating_sub(Duration::from_millis(5)) && gap <= total_gap,
        "gap {gap:?}, refused for {refused_for:?}, reconnected after {total_gap:?}"
    );
    server_b.abort();
}

/// The exporter holds no strong handle: dropping the last handle closes the persistent
/// connection (R14), and the exporter then ends with the state gauge at closed.
#[tokio::test]
async fn the_exporter_does_not_keep_the_persistent_connection_alive() {
    let recorded = Recorded {
        server: "metrics-dropped",
    };
    let server = recorded.server;
    registry(); // installed before anything is exported
    let (a, task) = echo_server().await;
    let pc = PersistentConnection::builder(
        server,
        move || async move { Ok::<_, IoError>(a) },
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .build();
    guard("connected", pc.connected()).await;
    // Exporting late still counts from creation.
    let exporter = export(&pc);
    drop(pc);
    guard("the exporter ends", exporter).await.unwrap();
    assert_eq!(recorded.counter(ATTEMPTS, &[]), 1);
    assert_eq!(recorded.counter(CONNECTIONS, &[]), 1);
    assert_eq!(recorded.counter(DISCONNECTIONS, &[]), 1);
    assert!(recorded.in_state("closed"), "{:?}", recorded.state());
    task.abort();
}

/// Waits until the state gauge says `state` (and no other).
async fn until_in_state(recorded: &Recorded, state: &str) {
    guard(&format!("the state gauge says {state}"), async {
        while !recorded.in_state(state) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// The state gauge follows every state a persistent connection goes through: connecting
/// while a connect hangs, waiting to retry after it failed, connected, closing while a
/// `Disconnected` handler holds the close up, closed. Every metric is described, the
/// failover gap in seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_gauge_follows_every_state_and_every_metric_is_described() {
    let recorded = Recorded {
        server: "metrics-states",
    };
    let server = recorded.server;
    registry(); // installed before anything is exported
    let (a, server_a) = echo_server().await;
    let fail_first = Arc::new(Notify::new());
    let hold_close = Arc::new(Notify::new());
    let connects = Arc::new(AtomicUsize::new(0));
    let pc = PersistentConnection::builder(server, move || async move { Ok::<_, IoError>(a) }, {
        let fail_first = fail_first.clone();
        move |addr: SocketAddr, _cx| {
            let fail_first = fail_first.clone();
            let n = connects.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    fail_first.notified().await;
                    Err(IoError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    )))
                } else {
                    TcpConnection::connect(addr).await
                }
            }
        }
    })
    // Long enough to be seen waiting, short enough for the test.
    .retry_policy(Duration::from_secs(2))
    .on_event({
        let hold_close = hold_close.clone();
        move |e| {
            let hold_close = hold_close.clone();
            async move {
                if matches!(e, Event::Disconnected) {
                    hold_close.notified().await;
                }
            }
        }
    })
    .build();
    let exporter = export(&pc);

    until_in_state(&recorded, "connecting").await;
    assert_eq!(pc.state(), State::Connecting);
    fail_first.notify_one();
    until_in_state(&recorded, "waiting_to_retry").await;
    until_in_state(&recorded, "connected").await;
    let closing = tokio::spawn({
        let pc = pc.clone();
        async move { pc.close().await }
    });
    until_in_state(&recorded, "closing").await;
    assert_eq!(pc.state(), State::Closing);
    hold_close.notify_one();
    guard("close", closing).await.unwrap();
    guard("the exporter ends after close", exporter)
        .await
        .unwrap();
    assert!(recorded.in_state("closed"), "{:?}", recorded.state());

    let described = descriptions().lock().unwrap().clone();
    for name in [
        ATTEMPTS,
        FAILURES,
        CONNECTIONS,
        DISCONNECTIONS,
        STATE,
        CONSECUTIVE_FAILURES,
        FAILOVER_GAP,
    ] {
        assert!(
            described.iter().any(|(n, _, text)| n == name && *text),
            "{name} is described: {described:?}"
        );
    }
    assert!(
        described
            .iter()
            .any(|(n, unit, _)| n == FAILOVER_GAP && *unit == Some(Unit::Seconds)),
        "the failover gap is in seconds: {described:?}"
    );
    server_a.abort();
}

/// Exported while it waits to retry after losing its connection, a persistent connection's
/// next connection records a failover gap (from the export: the loss came before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_after_a_disconnection_the_next_connection_records_a_gap() {
    let recorded = Recorded {
        server: "metrics-late",
    };
    let server = recorded.server;
    registry(); // installed before anything is exported
    let (a, server_a) = echo_server().await;
    let catalog = Arc::new(Mutex::new(a));
    let lookup = catalog.clone();
    let pc = PersistentConnection::builder(
        server,
        move || {
            let addr = *lookup.lock().unwrap();
            async move { Ok::<_, IoError>(addr) }
        },
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(Duration::from_millis(10))
    .build();
    guard("connected to A", pc.connected()).await;
    *catalog.lock().unwrap() = refused_addr();
    server_a.abort();
    guard("disconnected and failing", async {
        while pc.stats().disconnections == 0 || pc.stats().failures == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert_ne!(pc.state(), State::Connected);
    let exporter = export(&pc);
    let exported = std::time::Instant::now();
    let (b, server_b) = echo_server().await;
    *catalog.lock().unwrap() = b;
    guard("connected to B", async {
        while pc.current_connection().map(|c| c.peer_addr()) != Some(b) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    guard("the gap is recorded", async {
        while recorded.histogram(FAILOVER_GAP).is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Read once the gap is recorded: the exporter takes both of its instants between the
    // export and now, whenever its task runs (reading it at "connected to B" raced the
    // exporter's handling of that event: 1 failure in 8 runs under load).
    let reconnected = exported.elapsed();
    let gaps = recorded.histogram(FAILOVER_GAP);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(
        Duration::from_secs_f64(gaps[0]) <= reconnected,
        "gap {:?} counted from the export, recorded {reconnected:?} after it",
        gaps[0]
    );
    guard("close", pc.close()).await;
    guard("the exporter ends", exporter).await.unwrap();
    server_b.abort();
}

/// Issue 28 item 4 (failed before: after 25 refused attempts the exporter still said
/// 1 attempt, 0 de-duplicated failures and 1 consecutive failure, since a de-duplicated
/// failure emits no event; and it ended short after the close): on Tokio's paused clock,
/// against a server that keeps refusing, every attempt reaches the recorder as it happens,
/// and after the last handle is dropped (R14) the exporter ends with the final counts.
#[tokio::test(start_paused = true)]
async fn the_counters_follow_a_deduplicated_outage_and_end_exact_after_the_close() {
    let recorded = Recorded {
        server: "metrics-outage",
    };
    registry(); // installed before anything is exported
    let pc = PersistentConnection::builder(
        recorded.server,
        || async { Ok::<_, IoError>(SocketAddr::from(([127, 0, 0, 1], 9))) },
        |_addr: SocketAddr, _cx| async {
            Err::<TcpConnection, _>(IoError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            )))
        },
    )
    .retry_policy(
        persistent_connection::RetryPolicy::from(Duration::from_secs(1))
            .with_jitter(persistent_connection::core::Jitter::NonRandom),
    )
    .build();
    let exporter = export(&pc);
    while pc.stats().attempts < 25 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The 25th attempt has failed, the 26th is 0.9 s away, and on the paused clock time
    // moves on only once every task (the exporter's too) has nothing left to do.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = pc.stats();
    assert_eq!(
        (stats.attempts, stats.failures, stats.deduplicated_failures),
        (25, 25, 24),
        "{stats:?}"
    );
    assert_eq!(recorded.counter(ATTEMPTS, &[]), 25);
    assert_eq!(recorded.counter(FAILURES, &[("reported", "true")]), 1);
    assert_eq!(recorded.counter(FAILURES, &[("reported", "false")]), 24);
    assert_eq!(recorded.gauge(CONSECUTIVE_FAILURES, &[]), Some(25.0));
    assert!(
        recorded.in_state("waiting_to_retry"),
        "{:?}",
        recorded.state()
    );

    // Two more attempts, then the last handle goes (R14): the exporter, which holds no
    // handle, still reads the final counts.
    while pc.stats().attempts < 27 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(pc);
    guard("the exporter ends after the close", exporter)
        .await
        .unwrap();
    assert_eq!(recorded.counter(ATTEMPTS, &[]), 27);
    assert_eq!(recorded.counter(FAILURES, &[("reported", "true")]), 1);
    assert_eq!(recorded.counter(FAILURES, &[("reported", "false")]), 26);
    assert_eq!(recorded.gauge(CONSECUTIVE_FAILURES, &[]), Some(27.0));
    assert!(recorded.in_state("closed"), "{:?}", recorded.state());
}
