//! A persistent connection's counters and state through the [`metrics`] facade
//! (cargo feature `metrics`), for whatever recorder the program installed (Prometheus,
//! StatsD, OpenTelemetry…).
//!
//! [`export`] spawns a task that watches the persistent connection from outside, through
//! its [`events()`](PersistentConnection::events) and [`stats()`](PersistentConnection::stats):
//! nothing is added to the driver's path, and a slow recorder never holds the connection
//! up. Every metric carries the label `server_name` (the builder's name):
//!
//! | metric | kind | what it counts |
//! | --- | --- | --- |
//! | [`ATTEMPTS`] | counter | attempts begun (R2) |
//! | [`FAILURES`] | counter | failed attempts, label `reported` = `"true"` for those announced by a `FailedToConnect` event, `"false"` for those de-duplicated (R4) |
//! | [`CONNECTIONS`] | counter | connections that became current (R5) |
//! | [`DISCONNECTIONS`] | counter | `Disconnected` events (R6) |
//! | [`STATE`] | gauge | 1 for the current [`State`], 0 for the others, label `state` = `connecting`, `waiting_to_retry`, `connected`, `closing` or `closed` |
//! | [`CONSECUTIVE_FAILURES`] | gauge | unsuccessful attempts since the last connection |
//! | [`FAILOVER_GAP`] | histogram | seconds from a `Disconnected` event to the next `Connected` (time without a connection) |
//!
//! The counters, the state and the consecutive failures are read from the persistent
//! connection's shared state each time it takes a step (it wakes the exporter then, so an
//! attempt whose failure is de-duplicated, which emits no event, is exported too), and
//! once more after close: they are exact, even when the exporter falls behind (a `Lagged`
//! item). The failover gap is measured when the exporter sees the events, on Tokio's
//! clock. The task holds no handle (it does not keep the persistent connection alive,
//! R14) and ends when the event stream ends, after close, with the final counts and the
//! state gauge at `closed`.
//!
//! ```
//! use persistent_connection::conn::CloseSignal;
//! use persistent_connection::PersistentConnection;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // With a recorder installed (e.g. metrics-exporter-prometheus), the metrics appear there.
//! let pc = PersistentConnection::builder(
//!     "cache",
//!     || async { Ok::<_, String>(6379u16) },
//!     |_port, _cx| async { Ok(CloseSignal::new()) },
//! )
//! .build();
//! let exporter = persistent_connection::metrics::export(&pc);
//! pc.connected().await;
//! pc.close().await;
//! exporter.await.unwrap(); // ends after close
//! # }
//! ```

use ::metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::closable::Closable;
use crate::handle::PersistentConnection;
use crate::runtime::shared::HANDOVER_REASONS;
use crate::runtime::shared::Shared;
use crate::status::{State, Stats};
use persistent_connection_core::Event;

/// Counter: attempts begun.
pub const ATTEMPTS: &str = "persistent_connection_attempts_total";
/// Counter: failed attempts, label `reported` (`"true"` or `"false"` when de-duplicated).
pub const FAILURES: &str = "persistent_connection_failures_total";
/// Counter: connections that became current.
pub const CONNECTIONS: &str = "persistent_connection_connections_total";
/// Counter: disconnections.
pub const DISCONNECTIONS: &str = "persistent_connection_disconnections_total";
/// Counter: successful handovers (make-before-break replacements, R15), label `reason`
/// (`user`, `drain`, `max_age`, `withdrawn`, `fail_back`).
pub const HANDOVERS: &str = "persistent_connection_handovers_total";
/// Counter: handover attempts that failed (the current connection kept serving).
pub const HANDOVER_FAILURES: &str = "persistent_connection_handover_failures_total";
/// Counter: waits between attempts ended early by retry now (R16, R17).
pub const RETRIES_NOW: &str = "persistent_connection_retries_now_total";
/// Gauge: 1 for the current state, 0 for the others, label `state`.
pub const STATE: &str = "persistent_connection_state";
/// Gauge: unsuccessful attempts since the last connection.
pub const CONSECUTIVE_FAILURES: &str = "persistent_connection_consecutive_failures";
/// Histogram: seconds from a disconnection to the next connection.
pub const FAILOVER_GAP: &str = "persistent_connection_failover_gap_seconds";

/// The `state` label's values, in [`State`]'s order.
pub const STATE_LABELS: [&str; 5] = [
    "connecting",
    "waiting_to_retry",
    "connected",
    "closing",
    "closed",
];

fn state_index(state: State) -> usize {
    match state {
        State::Connecting => 0,
        State::WaitingToRetry { .. } => 1,
        State::Connected => 2,
        State::Closing => 3,
        _ => 4,
    }
}

/// The metric handles of one persistent connection.
struct Handles {
    attempts: Counter,
    reported: Counter,
    deduplicated: Counter,
    connections: Counter,
    disconnections: Counter,
    handovers: [Counter; 5],
    handover_failures: Counter,
    retries_now: Counter,
    states: [Gauge; 5],
    consecutive: Gauge,
    gap: Histogram,
}

impl Handles {
    fn new(server_name: &str) -> Handles {
        let name = server_name.to_owned();
        Handles {
            attempts: counter!(ATTEMPTS, "server_name" => name.clone()),
            reported: counter!(FAILURES, "server_name" => name.clone(), "reported" => "true"),
            deduplicated: counter!(FAILURES, "server_name" => name.clone(), "reported" => "false"),
            connections: counter!(CONNECTIONS, "server_name" => name.clone()),
            disconnections: counter!(DISCONNECTIONS, "server_name" => name.clone()),
            handovers: HANDOVER_REASONS.map(
                |r| counter!(HANDOVERS, "server_name" => name.clone(), "reason" => r.as_str()),
            ),
            handover_failures: counter!(HANDOVER_FAILURES, "server_name" => name.clone()),
            retries_now: counter!(RETRIES_NOW, "server_name" => name.clone()),
            states: STATE_LABELS
                .map(|s| gauge!(STATE, "server_name" => name.clone(), "state" => s)),
            consecutive: gauge!(CONSECUTIVE_FAILURES, "server_name" => name.clone()),
            gap: histogram!(FAILOVER_GAP, "server_name" => name),
        }
    }

    fn set_state(&self, state: usize) {
        for (i, g) in self.states.iter().enumerate() {
            g.set(if i == state { 1.0 } else { 0.0 });
        }
    }
}

fn describe() {
    describe_counter!(ATTEMPTS, "Connection attempts begun.");
    describe_counter!(
        FAILURES,
        "Failed connection attempts; reported=false: de-duplicated (not announced)."
    );
    describe_counter!(CONNECTIONS, "Connections that became current.");
    describe_counter!(DISCONNECTIONS, "Current connections lost or closed.");
    describe_counter!(
        HANDOVERS,
        "Connections replaced make-before-break (no disconnection), by reason."
    );
    describe_counter!(
        HANDOVER_FAILURES,
        "Handover attempts that failed; the current connection kept serving."
    );
    describe_counter!(
        RETRIES_NOW,
        "Waits between attempts ended early by retry now."
    );
    describe_gauge!(STATE, "1 for the persistent connection's current state.");
    describe_gauge!(
        CONSECUTIVE_FAILURES,
        "Unsuccessful attempts since the last connection."
    );
    describe_histogram!(
        FAILOVER_GAP,
        Unit::Seconds,
        "Time from a disconnection to the next connection."
    );
}

/// What the exporter has already added to the counters.
struct Exported {
    seen: Stats,
    handovers_by: [u64; 5],
}

impl Exported {
    /// Adds what `now` counts beyond what was exported.
    fn update(&mut self, h: &Handles, now: Stats) {
        let seen = self.seen;
        let up = |c: &Counter, new: u64, old: u64| {
            if new > old {
                c.increment(new - old);
            }
        };
        up(&h.attempts, now.attempts, seen.attempts);
        let reported = |s: Stats| s.failures.saturating_sub(s.deduplicated_failures);
        up(&h.reported, reported(now), reported(seen));
        up(
            &h.deduplicated,
            now.deduplicated_failures,
            seen.deduplicated_failures,
        );
        up(&h.connections, now.connections, seen.connections);
        up(&h.disconnections, now.disconnections, seen.disconnections);
        up(
            &h.handover_failures,
            now.handover_failures,
            seen.handover_failures,
        );
        up(&h.retries_now, now.retries_now, seen.retries_now);
        self.seen = Stats {
            attempts: now.attempts.max(seen.attempts),
            failures: now.failures.max(seen.failures),
            deduplicated_failures: now.deduplicated_failures.max(seen.deduplicated_failures),
            connections: now.connections.max(seen.connections),
            disconnections: now.disconnections.max(seen.disconnections),
            handovers: now.handovers.max(seen.handovers),
            handover_failures: now.handover_failures.max(seen.handover_failures),
            retries_now: now.retries_now.max(seen.retries_now),
        };
    }
}

/// Exports what the shared state says now: the counters beyond what was exported, the
/// state and the consecutive failures.
fn refresh<A, C, E>(shared: &Shared<A, C, E>, handles: &Handles, exported: &mut Exported) {
    exported.update(handles, shared.stats());
    let by_reason = shared.handovers_by_reason();
    for (i, n) in by_reason.into_iter().enumerate() {
        if n > exported.handovers_by[i] {
            handles.handovers[i].increment(n - exported.handovers_by[i]);
            exported.handovers_by[i] = n;
        }
    }
    handles.set_state(state_index(shared.state()));
    handles
        .consecutive
        .set(f64::from(shared.consecutive_unsuccessful_attempts()));
}

/// Whether the persistent connection took a step (`false` once close has finished);
/// pending forever without a receiver.
async fn changed(changes: &mut Option<tokio::sync::watch::Receiver<()>>) -> bool {
    match changes {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Exports `pc`'s counters, state and failover gaps through the `metrics` facade, labelled
/// with its server name (see the [module docs](self) for the metrics). Spawns a task on the
/// current Tokio runtime that ends after the persistent connection has closed; the counters
/// start from what [`stats()`](PersistentConnection::stats) says now, so exporting late
/// still reports every attempt since creation. Call it at most once per persistent
/// connection, or the counters count twice.
pub fn export<A, C, E>(pc: &PersistentConnection<A, C, E>) -> JoinHandle<()>
where
    A: Clone + PartialEq + Send + Sync + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + Sync + 'static,
{
    describe();
    let handles = Handles::new(pc.server_name());
    // The shared state, not a handle: it does not keep the persistent connection alive
    // (R14), and it can still be read after the last handle is gone.
    let shared = pc.shared.clone();
    let mut changes = shared.watch_changes();
    let mut events = pc.events();
    let mut exported = Exported {
        seen: Stats::default(),
        handovers_by: [0; 5],
    };
    refresh(&shared, &handles, &mut exported);
    let mut disconnected_at: Option<Instant> = match pc.state() {
        State::Connected => None,
        _ if pc.stats().disconnections > 0 => Some(Instant::now()),
        _ => None,
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = events.next() => match item {
                    Some(Ok(Event::Disconnected)) => disconnected_at = Some(Instant::now()),
                    Some(Ok(Event::Connected(_))) => {
                        if let Some(at) = disconnected_at.take() {
                            handles.gap.record(at.elapsed().as_secs_f64());
                        }
                    }
                    // Lagged: the counters are read from the shared state anyway; a gap
                    // that straddles the missed events is not measured.
                    Some(Err(_)) => disconnected_at = None,
                    Some(Ok(_)) => {}
                    // The stream ends once close has finished.
                    None => break,
                },
                more = changed(&mut changes) => {
                    if !more {
                        changes = None;
                    }
                }
            }
            refresh(&shared, &handles, &mut exported);
        }
        // The final reading, after close.
        refresh(&shared, &handles, &mut exported);
        handles.set_state(state_index(State::Closed));
    })
}
