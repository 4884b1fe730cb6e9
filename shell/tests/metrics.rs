//! Metrics export (feature `metrics`) into a recording `metrics` recorder
//! (metrics-util's `DebuggingRecorder`, installed globally: the exporter's task records
//! from the runtime's threads), for persistent connections over real TCP on 127.0.0.1.
//! Real sockets need the real clock: every wait is bounded by a generous guard.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use persistent_connection::metrics::{
    ATTEMPTS, CONNECTIONS, CONSECUTIVE_FAILURES, DISCONNECTIONS, FAILOVER_GAP, FAILURES, STATE,
    STATE_LABELS, export,
};
use persistent_connection::{IoError, PersistentConnection, State, TcpConnection};
use tokio::net::TcpListener;

const GUARD: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// What was recorded for one server name, accumulated over snapshots (a snapshot resets
/// counters and gauges to zero and drains histograms).
#[derive(Default, Debug)]
struct Recorded {
    counters: HashMap<(String, Vec<(String, String)>), u64>,
    gauges: HashMap<(String, Vec<(String, String)>), f64>,
    histograms: HashMap<String, Vec<f64>>,
}

impl Recorded {
    fn take(&mut self, snapshotter: &Snapshotter, server: &str) {
        for (key, _unit, _desc, value) in snapshotter.snapshot().into_vec() {
            let kind = key.kind();
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            if !labels.contains(&("server_name".into(), server.into())) {
                continue;
            }
            labels.retain(|(k, _)| k != "server_name");
            labels.sort();
            let id = (key.name().to_owned(), labels);
            match (kind, value) {
                (MetricKind::Counter, DebugValue::Counter(n)) => {
                    *self.counters.entry(id).or_default() += n;
                }
                (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                    self.gauges.insert(id, v.into_inner());
                }
                (MetricKind::Histogram, DebugValue::Histogram(vs)) => self
                    .histograms
                    .entry(id.0)
                    .or_default()
                    .extend(vs.into_iter().map(|v| v.into_inner())),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.counters
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0)
    }

    fn state(&self) -> Vec<(&'static str, f64)> {
        STATE_LABELS
            .iter()
            .map(|s| {
                let id = (STATE.to_owned(), vec![("state".to_owned(), s.to_string())]);
                (*s, self.gauges.get(&id).copied().unwrap_or(f64::NAN))
            })
            .collect()
    }

    fn in_state(&self, state: &str) -> bool {
        self.state()
            .iter()
            .all(|(s, v)| *v == if *s == state { 1.0 } else { 0.0 })
    }
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
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
    let snapshotter = snapshotter();
    let server = "metrics-failover";
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
    .retry_delay(Duration::from_millis(10))
    .build();
    let exporter = export(&pc);
    let mut recorded = Recorded::default();

    guard("connected to A", pc.connected()).await;
    guard("the state gauge says connected", async {
        loop {
            recorded.take(snapshotter, server);
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
    recorded.take(snapshotter, server);
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
    let consecutive = (CONSECUTIVE_FAILURES.to_owned(), Vec::new());
    assert_eq!(recorded.gauges.get(&consecutive), Some(&0.0));

    let gaps = &recorded.histograms[FAILOVER_GAP];
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
    let snapshotter = snapshotter();
    let server = "metrics-dropped";
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
    let mut recorded = Recorded::default();
    recorded.take(snapshotter, server);
    assert_eq!(recorded.counter(ATTEMPTS, &[]), 1);
    assert_eq!(recorded.counter(CONNECTIONS, &[]), 1);
    assert_eq!(recorded.counter(DISCONNECTIONS, &[]), 1);
    assert!(recorded.in_state("closed"), "{:?}", recorded.state());
    task.abort();
}
