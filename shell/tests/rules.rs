//! The public API of the Tokio shell against docs/behaviour.md R1–R14, on Tokio's paused clock: every
//! time below is virtual and exact (milliseconds since the persistent connection was
//! built), and no test sleeps on the wall clock.
//!
//! The world is scripted: `get_address` and `connect` follow per-test scripts, connections
//! are `WithCloseSignal<u32>` whose death a test triggers, and `on_event` logs each event
//! with its time and then waits as long as the test says for that kind of event.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use persistent_connection::core::{EventKind, Jitter, RetryDelay};
use persistent_connection::{
    AttemptError, Builder, Callback, Closable, ConnectContext, Error, Event, Lagged,
    PersistentConnection, State,
};
use tokio::time::Instant;

type Conn = WithCloseSignal<u32>;
type Pc = PersistentConnection<u16, Conn, String>;

/// What one call of `get_address` or `connect` does.
#[derive(Clone, Debug)]
enum Act<T> {
    Ok(T),
    Err(&'static str),
    /// Never finishes (until dropped).
    Hang,
    Panic,
    /// Wait this many milliseconds, then do the rest.
    After(u64, Box<Act<T>>),
}

fn after<T>(ms: u64, act: Act<T>) -> Act<T> {
    Act::After(ms, Box::new(act))
}

#[derive(Default)]
struct Inner {
    start: Option<Instant>,
    log: Vec<(u64, String)>,
    lookups: VecDeque<Act<u16>>,
    /// What a lookup does once the script is used up.
    lookup_default: Option<Act<u16>>,
    connects: VecDeque<Act<()>>,
    connect_default: Option<Act<()>>,
    handler_ms: HashMap<EventKind, u64>,
    panic_on: Vec<EventKind>,
    next_conn: u32,
    conns: Vec<Conn>,
    contexts: Vec<ConnectContext<String>>,
    /// Set when an in-flight lookup or connect future is dropped before finishing.
    dropped: Vec<Arc<AtomicBool>>,
}

/// The scripted world, shared by the callbacks and the test.
#[derive(Clone, Default)]
struct World(Arc<Mutex<Inner>>);

/// Sets a flag when dropped: proves a hanging future was cancelled (R8).
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl World {
    fn new() -> World {
        let w = World::default();
        w.0.lock().unwrap().start = Some(Instant::now());
        w
    }

    fn now_ms(&self) -> u64 {
        let start = self.0.lock().unwrap().start.expect("started");
        Instant::now().duration_since(start).as_millis() as u64
    }

    fn note(&self, what: impl Into<String>) {
        let t = self.now_ms();
        self.0.lock().unwrap().log.push((t, what.into()));
    }

    fn log(&self) -> Vec<(u64, String)> {
        self.0.lock().unwrap().log.clone()
    }

    /// The events only, with their times.
    fn events(&self) -> Vec<(u64, String)> {
        self.log()
            .into_iter()
            .filter(|(_, s)| !s.starts_with("call "))
            .collect()
    }

    fn event_names(&self) -> Vec<String> {
        self.events().into_iter().map(|(_, s)| s).collect()
    }

    /// Times at which `get_address` was called (one per attempt, R2).
    fn lookup_times(&self) -> Vec<u64> {
        self.log()
            .into_iter()
            .filter(|(_, s)| s == "call get_address")
            .map(|(t, _)| t)
            .collect()
    }

    fn lookups(&self, acts: impl IntoIterator<Item = Act<u16>>, then: Act<u16>) -> &Self {
        let mut i = self.0.lock().unwrap();
        i.lookups = acts.into_iter().collect();
        i.lookup_default = Some(then);
        drop(i);
        self
    }

    fn connects(&self, acts: impl IntoIterator<Item = Act<()>>, then: Act<()>) -> &Self {
        let mut i = self.0.lock().unwrap();
        i.connects = acts.into_iter().collect();
        i.connect_default = Some(then);
        drop(i);
        self
    }

    fn handler(&self, kind: EventKind, ms: u64) -> &Self {
        self.0.lock().unwrap().handler_ms.insert(kind, ms);
        self
    }

    fn panic_on(&self, kind: EventKind) -> &Self {
        self.0.lock().unwrap().panic_on.push(kind);
        self
    }

    fn conn(&self, i: usize) -> Conn {
        self.0.lock().unwrap().conns[i].clone()
    }

    fn conn_count(&self) -> usize {
        self.0.lock().unwrap().conns.len()
    }

    /// The peer closes connection `i`.
    fn kill(&self, i: usize) {
        self.conn(i).signal().mark_closed();
    }

    fn all_dropped(&self) -> Vec<bool> {
        self.0
            .lock()
            .unwrap()
            .dropped
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .collect()
    }

    fn contexts(&self) -> Vec<ConnectContext<String>> {
        self.0.lock().unwrap().contexts.clone()
    }

    fn next_lookup(&self) -> Act<u16> {
        let mut i = self.0.lock().unwrap();
        let default = i.lookup_default.clone().unwrap_or(Act::Ok(1));
        i.lookups.pop_front().unwrap_or(default)
    }

    fn next_connect(&self) -> Act<()> {
        let mut i = self.0.lock().unwrap();
        let default = i.connect_default.clone().unwrap_or(Act::Ok(()));
        i.connects.pop_front().unwrap_or(default)
    }

    fn drop_flag(&self) -> DropFlag {
        let f = Arc::new(AtomicBool::new(false));
        self.0.lock().unwrap().dropped.push(f.clone());
        DropFlag(f)
    }

    fn new_conn(&self) -> Conn {
        let mut i = self.0.lock().unwrap();
        i.next_conn += 1;
        let c = WithCloseSignal::new(i.next_conn, CloseSignal::new());
        i.conns.push(c.clone());
        c
    }

    /// Plays `act`; `make` turns a success into the callback's value.
    async fn play<T, U>(&self, act: Act<T>, make: impl FnOnce(T) -> U) -> Result<U, String> {
        let flag = self.drop_flag();
        let mut act = act;
        let out = loop {
            match act {
                Act::After(ms, rest) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    act = *rest;
                }
                Act::Ok(v) => break Ok(make(v)),
                Act::Err(e) => break Err(e.to_owned()),
                Act::Hang => std::future::pending::<()>().await,
                Act::Panic => panic!("scripted panic"),
            }
        };
        std::mem::forget(flag); // finished, not dropped
        out
    }

    /// The builder for this world, retry delay `retry_ms` without jitter.
    fn builder(&self, retry_ms: u64) -> Builder<u16, Conn, String> {
        let (w1, w2, w3) = (self.clone(), self.clone(), self.clone());
        PersistentConnection::builder(
            "test",
            move || {
                let w = w1.clone();
                async move {
                    w.note("call get_address");
                    let act = w.next_lookup();
                    w.play(act, |a| a).await
                }
            },
            move |addr: u16, cx: ConnectContext<String>| {
                let w = w2.clone();
                async move {
                    w.note(format!("call connect {addr}"));
                    w.0.lock().unwrap().contexts.push(cx);
                    let act = w.next_connect();
                    let ww = w.clone();
                    w.play(act, move |()| ww.new_conn()).await
                }
            },
        )
        .on_event(move |event| {
            let w = w3.clone();
            async move {
                w.note(describe(&event));
                let (ms, panic) = {
                    let i = w.0.lock().unwrap();
                    (
                        i.handler_ms.get(&event.kind()).copied().unwrap_or(0),
                        i.panic_on.contains(&event.kind()),
                    )
                };
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if panic {
                    panic!("on_event panics on {:?}", event.kind());
                }
            }
        })
        .retry_policy(
            persistent_connection::RetryPolicy::from(Duration::from_millis(retry_ms))
                .with_jitter(Jitter::NonRandom),
        )
        .seed(1)
    }

    fn build(&self, retry_ms: u64) -> Pc {
        self.builder(retry_ms).build()
    }
}

fn describe(event: &Event<u16, Conn, String>) -> String {
    match event {
        Event::AttemptingToConnect => "Attempting".into(),
        Event::ObtainedAddress(a) => format!("Obtained({a})"),
        Event::FailedToConnect(e) => format!("Failed({})", error(e)),
        Event::Connected(c) => format!("Connected({})", **c),
        Event::Disconnected => "Disconnected".into(),
        Event::HandedOver { connection, reason } => {
            format!("HandedOver({}, {})", **connection, reason.as_str())
        }
    }
}

fn error(e: &Error<String>) -> String {
    match e {
        Error::User(s) => s.clone(),
        Error::Panicked { callback, .. } => format!("panic in {callback}"),
        Error::TimedOut(d) => format!("timeout {}ms", d.as_millis()),
        Error::LookupTimedOut { after, .. } => format!("lookup timeout {}ms", after.as_millis()),
    }
}

fn ev(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|(t, s)| (*t, s.to_string())).collect()
}

/// Lets virtual time run until `ms` after the start.
async fn until(w: &World, ms: u64) {
    let now = w.now_ms();
    assert!(now <= ms, "already at {now} ms, wanted {ms}");
    tokio::time::sleep(Duration::from_millis(ms - now)).await;
}

/// `fut`, bounded by an hour of virtual time (instant on the paused clock).
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .expect("did not finish within an hour of virtual time")
}

/// True if `fut` is still pending after an hour of virtual time.
async fn never<T>(fut: impl Future<Output = T>) -> bool {
    tokio::time::timeout(Duration::from_secs(3600), fut)
        .await
        .is_err()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

// ------------------------------------------------------------------ R1, R3, R5: the happy path

#[tokio::test(start_paused = true)]
async fn r1_r3_r5_happy_path_events_in_order_and_connection_is_current() {
    let w = World::new();
    w.lookups([Act::Ok(7)], Act::Ok(7));
    let pc = w.build(1000);
    let c = within(pc.connected()).await;
    assert_eq!(*c, 1);
    assert_eq!(pc.current_connection().map(|c| *c), Some(1));
    until(&w, 10).await;
    assert_eq!(
        w.log(),
        ev(&[
            (0, "Attempting"),
            (0, "call get_address"),
            (0, "Obtained(7)"),
            (0, "call connect 7"),
            (0, "Connected(1)"),
        ])
    );
    assert_eq!(pc.server_name(), "test");
    assert!(!pc.is_closed());
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r1_round_begins_only_once_attempting_to_connect_is_handled() {
    let w = World::new();
    w.handler(EventKind::AttemptingToConnect, 5000);
    let pc = w.build(1000);
    within(pc.connected()).await;
    assert_eq!(w.lookup_times(), vec![5000]);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r3_same_address_is_not_reported_twice_in_a_round_but_a_new_one_is() {
    let w = World::new();
    w.lookups([Act::Ok(1), Act::Ok(1), Act::Ok(2), Act::Ok(1)], Act::Hang);
    w.connects(vec![Act::Err("refused"); 4], Act::Err("refused"));
    let pc = w.build(100);
    until(&w, 1000).await;
    assert_eq!(
        w.event_names(),
        vec![
            "Attempting",
            "Obtained(1)",
            "Failed(refused)",
            "Obtained(2)",
            "Obtained(1)"
        ]
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r5_connection_is_current_before_the_connected_handler_runs() {
    let w = World::new();
    w.handler(EventKind::Connected, 5000);
    let pc = w.build(1000);
    until(&w, 1).await;
    // The Connected handler is still running, yet the connection is current (R5).
    assert_eq!(pc.current_connection().map(|c| *c), Some(1));
    assert_eq!(*within(pc.connected()).await, 1);
    assert_eq!(w.now_ms(), 1);
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R2, R4: timing of attempts

#[tokio::test(start_paused = true)]
async fn r2_retry_timer_counts_from_the_start_of_each_attempt() {
    let w = World::new();
    // Each lookup takes 300 ms and fails the same way.
    w.lookups([], after(300, Act::Err("no address")));
    let pc = w.build(1000);
    until(&w, 3500).await;
    // Attempts start 1000 ms apart, not 1300 ms: the timer runs during the lookup.
    assert_eq!(w.lookup_times(), vec![0, 1000, 2000, 3000]);
    // Same failure each time: reported once in the round (R4).
    assert_eq!(w.event_names(), vec!["Attempting", "Failed(no address)"]);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r2_retry_delay_fn_is_called_once_per_attempt() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    let pc = w
        .builder(1)
        .retry_delay_fn(move || {
            let mut n = c.lock().unwrap();
            *n += 1;
            Duration::from_millis(100 * u64::from(*n))
        })
        .build();
    until(&w, 1050).await;
    // Delays 100, 200, 300, 400: attempts at 0, 100, 300, 600, 1000.
    assert_eq!(w.lookup_times(), vec![0, 100, 300, 600, 1000]);
    assert_eq!(*calls.lock().unwrap(), 5);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r4_failure_waits_for_the_timer_but_a_slow_handler_delays_the_next_attempt() {
    let w = World::new();
    w.lookups([Act::Err("e1"), Act::Err("e2")], Act::Hang);
    w.handler(EventKind::FailedToConnect, 3000);
    let pc = w.build(1000);
    until(&w, 7000).await;
    // The first failure's handler runs until 3000 > 1000: the next attempt begins then.
    assert_eq!(w.lookup_times(), vec![0, 3000, 6000]);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r4_distinct_failures_are_each_reported_and_repeats_are_not() {
    let w = World::new();
    w.lookups(
        [Act::Err("a"), Act::Err("a"), Act::Err("b"), Act::Err("a")],
        Act::Hang,
    );
    let pc = w.build(10);
    until(&w, 100).await;
    assert_eq!(
        w.event_names(),
        vec!["Attempting", "Failed(a)", "Failed(b)", "Failed(a)"]
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r4_connect_error_is_a_failed_attempt_and_the_round_goes_on() {
    let w = World::new();
    w.connects([Act::Err("refused")], Act::Ok(()));
    let pc = w.build(500);
    let c = within(pc.connected()).await;
    assert_eq!(*c, 1);
    assert_eq!(w.now_ms(), 500);
    assert_eq!(
        w.events(),
        ev(&[
            (0, "Attempting"),
            (0, "Obtained(1)"),
            (0, "Failed(refused)"),
            (500, "Connected(1)"),
        ])
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn zero_retry_delay_means_back_to_back_attempts() {
    let w = World::new();
    w.lookups(vec![Act::Err("x"); 5], Act::Hang);
    let pc = w.build(0);
    until(&w, 1).await;
    assert_eq!(w.lookup_times(), vec![0; 6]);
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R6: disconnection

#[tokio::test(start_paused = true)]
async fn r6_after_a_long_lived_connection_dies_reconnection_is_immediate() {
    let w = World::new();
    let pc = w.build(10_000);
    within(pc.connected()).await;
    until(&w, 60_000).await;
    w.kill(0);
    let c2 = within(pc.connected()).await;
    assert_eq!(*c2, 2);
    assert_eq!(
        w.events(),
        ev(&[
            (0, "Attempting"),
            (0, "Obtained(1)"),
            (0, "Connected(1)"),
            (60_000, "Disconnected"),
            (60_000, "Attempting"),
            (60_000, "Obtained(1)"),
            (60_000, "Connected(2)"),
        ])
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r6_after_a_short_lived_connection_the_retry_timer_is_awaited() {
    let w = World::new();
    let pc = w.build(10_000);
    within(pc.connected()).await;
    until(&w, 1000).await;
    w.kill(0);
    until(&w, 1001).await;
    assert_eq!(
        pc.current_connection().map(|c| *c),
        None,
        "R6: no longer current"
    );
    within(pc.connected()).await;
    assert_eq!(w.lookup_times(), vec![0, 10_000]);
    assert_eq!(
        w.events()[3..],
        ev(&[
            (1000, "Disconnected"),
            (10_000, "Attempting"),
            (10_000, "Obtained(1)"),
            (10_000, "Connected(2)"),
        ])
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r6_disconnected_never_precedes_the_end_of_the_connected_handler() {
    let w = World::new();
    w.handler(EventKind::Connected, 5000);
    let pc = w.build(100);
    until(&w, 1000).await;
    w.kill(0);
    until(&w, 1001).await;
    assert_eq!(pc.current_connection().map(|c| *c), None);
    within(pc.connected()).await;
    let events = w.events();
    assert_eq!(events[3], (5000, "Disconnected".to_string()), "{events:?}");
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R7: jitter

/// Attempt start times of a persistent connection whose lookups always fail.
async fn schedule(seed: u64, jitter: Jitter) -> Vec<u64> {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w
        .builder(10_000)
        .retry_policy(
            persistent_connection::RetryPolicy::constant(Duration::from_secs(10))
                .with_jitter(jitter),
        )
        .seed(seed)
        .event_capacity(1)
        .build();
    until(&w, 100_000).await;
    pc.close().await;
    w.lookup_times()
}

#[tokio::test(start_paused = true)]
async fn r7_jittered_delays_lie_within_30_percent_and_a_seed_fixes_them() {
    let a = schedule(7, Jitter::default()).await;
    let b = schedule(7, Jitter::default()).await;
    let c = schedule(8, Jitter::default()).await;
    assert_eq!(a, b, "same seed, same schedule");
    assert_ne!(a, c, "another seed, another schedule");
    assert!(a.len() >= 8, "{a:?}");
    let gaps: Vec<u64> = a.windows(2).map(|p| p[1] - p[0]).collect();
    for g in &gaps {
        // 1 ms of slack: Tokio's timers fire on whole milliseconds.
        assert!(
            (7000..=13_001).contains(g),
            "gap {g} out of [0.7, 1.3]·10 s: {gaps:?}"
        );
    }
    assert!(
        gaps.iter().any(|g| *g != 10_000),
        "no jitter at all: {gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn r7_non_random_uses_the_base_delay_unchanged() {
    let a = schedule(7, Jitter::NonRandom).await;
    assert_eq!(a, (0..10).map(|i| i * 10_000).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn r7_duration_max_retry_delay_neither_overflows_nor_blocks_close() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w.builder(1).retry_policy(Duration::MAX).build();
    until(&w, 1000).await;
    assert_eq!(w.lookup_times(), vec![0]);
    within(pc.close()).await;
    assert_eq!(w.now_ms(), 1000, "close is prompt while waiting to retry");
}

#[tokio::test(start_paused = true)]
async fn retry_policies_of_the_core_are_accepted() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w
        .builder(1)
        .retry_policy(
            persistent_connection::RetryPolicy::from(RetryDelay::exponential(
                Duration::from_millis(100),
                2.0,
                Duration::from_millis(400),
            ))
            .non_random(),
        )
        .build();
    until(&w, 1550).await;
    assert_eq!(w.lookup_times(), vec![0, 100, 300, 700, 1100, 1500]);
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R8: close in every phase

/// Closes at `close_at` and checks that close finishes at `finished_at`, that nothing is
/// emitted after, that every connection obtained is closed and that no lookup or connect
/// is still in flight.
async fn close_at(w: &World, pc: &Pc, close_at: u64, finished_at: u64) {
    until(w, close_at).await;
    let close = pc.close();
    assert!(pc.is_closed(), "R8: is_closed from the first call");
    within(close).await;
    assert_eq!(w.now_ms(), finished_at);
    let events = w.events().len();
    within(pc.close()).await; // idempotent
    within(pc.close_finished()).await;
    until(w, finished_at + 100_000).await;
    assert_eq!(w.events().len(), events, "R8: nothing after close");
    for i in 0..w.conn_count() {
        assert!(w.conn(i).is_closed(), "connection {i} left open");
    }
    assert!(pc.current_connection().is_none());
    // Every lookup and connect either finished or was dropped: none runs on.
    let finished_or_dropped = w.all_dropped();
    let calls = w
        .log()
        .iter()
        .filter(|(_, s)| s.starts_with("call "))
        .count();
    assert_eq!(finished_or_dropped.len(), calls);
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_the_attempting_handler_waits_for_it_and_attempts_nothing() {
    let w = World::new();
    w.handler(EventKind::AttemptingToConnect, 5000);
    let pc = w.build(100);
    close_at(&w, &pc, 1000, 5000).await;
    assert!(w.lookup_times().is_empty());
    assert_eq!(w.event_names(), vec!["Attempting"]);
}

#[tokio::test(start_paused = true)]
async fn r8_close_while_resolving_cancels_the_lookup_at_once() {
    let w = World::new();
    w.lookups([], Act::Hang);
    let pc = w.build(100);
    close_at(&w, &pc, 1000, 1000).await;
    assert_eq!(w.all_dropped(), vec![true], "the lookup future was dropped");
    assert_eq!(w.event_names(), vec!["Attempting"]);
}

#[tokio::test(start_paused = true)]
async fn r8_close_while_connecting_cancels_the_connect_at_once() {
    let w = World::new();
    w.connects([], Act::Hang);
    let pc = w.build(100);
    close_at(&w, &pc, 1000, 1000).await;
    assert_eq!(
        w.all_dropped(),
        vec![false, true],
        "lookup done, connect dropped"
    );
    assert_eq!(w.event_names(), vec!["Attempting", "Obtained(1)"]);
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_backoff_is_prompt_and_no_attempt_follows() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w.build(10_000);
    close_at(&w, &pc, 5000, 5000).await;
    assert_eq!(w.lookup_times(), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_the_connected_handler_closes_now_and_disconnects_after_it() {
    let w = World::new();
    w.handler(EventKind::Connected, 5000);
    let pc = w.build(100);
    until(&w, 1000).await;
    let close = pc.close();
    until(&w, 1001).await;
    assert!(w.conn(0).is_closed(), "the connection is closed at once");
    within(close).await;
    assert_eq!(w.now_ms(), 5000, "close waits for the Connected handler");
    assert_eq!(
        w.events(),
        ev(&[
            (0, "Attempting"),
            (0, "Obtained(1)"),
            (0, "Connected(1)"),
            (5000, "Disconnected"),
        ])
    );
    close_at(&w, &pc, 5000, 5000).await;
}

#[tokio::test(start_paused = true)]
async fn r8_close_while_connected_closes_the_connection_and_emits_disconnected() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    close_at(&w, &pc, 1000, 1000).await;
    assert_eq!(
        w.events(),
        ev(&[
            (0, "Attempting"),
            (0, "Obtained(1)"),
            (0, "Connected(1)"),
            (1000, "Disconnected"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_the_disconnected_handler_waits_for_it_and_starts_no_round() {
    let w = World::new();
    w.handler(EventKind::Disconnected, 5000);
    let pc = w.build(100);
    within(pc.connected()).await;
    until(&w, 1000).await;
    w.kill(0);
    close_at(&w, &pc, 2000, 6000).await;
    assert_eq!(
        w.event_names().last().map(String::as_str),
        Some("Disconnected")
    );
    assert_eq!(w.lookup_times(), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn r8_close_finished_resolves_with_close_and_does_not_start_it() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    let finished = pc.close_finished();
    assert!(
        never(pc.close_finished()).await,
        "close_finished does not close"
    );
    assert!(!pc.is_closed());
    until(&w, 3_700_000).await;
    let close = pc.close();
    within(finished).await;
    within(close).await;
    assert!(w.conn(0).is_closed());
}

// ------------------------------------------------------------------ R9: connected()

#[tokio::test(start_paused = true)]
async fn r9_connected_waits_for_the_next_connection_when_not_connected() {
    let w = World::new();
    w.connects([after(2000, Act::Ok(()))], Act::Ok(()));
    let pc = w.build(100);
    let waiter = pc.connected();
    let c = within(waiter).await;
    assert_eq!((*c, w.now_ms()), (1, 2000));
    // Connected: resolves at once, with the same connection.
    let again = within(pc.connected()).await;
    assert_eq!((*again, w.now_ms()), (1, 2000));
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r9_a_current_connection_that_is_closing_is_not_handed_out() {
    let w = World::new();
    w.handler(EventKind::Disconnected, 1000);
    let pc = w.build(100);
    within(pc.connected()).await;
    // Closing has begun on connection 1 but not finished: still current for the machine,
    // yet closed, so not handed out (S1).
    w.conn(0).signal().begin_close();
    assert_eq!(pc.current_connection().map(|c| *c), None);
    assert!(!pc.with_current_connection(|c| c.is_some()));
    let waiter = pc.connected();
    until(&w, 500).await;
    w.kill(0);
    let c = within(waiter).await;
    assert_eq!(*c, 2, "R9: the next connection, not the closing one");
    assert_eq!(w.now_ms(), 1500);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r9_connected_never_resolves_after_close() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    within(pc.close()).await;
    assert!(never(pc.connected()).await);
}

#[tokio::test(start_paused = true)]
async fn r9_waiters_registered_before_a_connection_all_get_it() {
    let w = World::new();
    w.connects([after(100, Act::Ok(()))], Act::Ok(()));
    let pc = w.build(100);
    let waiters: Vec<_> = (0..5).map(|_| pc.connected()).collect();
    for waiter in waiters {
        assert_eq!(*within(waiter).await, 1);
    }
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R10: connected_or_failed_to_connect()

#[tokio::test(start_paused = true)]
async fn r10_failures_are_reported_to_waiters_even_when_events_are_deduplicated() {
    let w = World::new();
    w.lookups([Act::Err("same"), Act::Err("same")], Act::Ok(1));
    let pc = w.build(1000);
    let first = within(pc.connected_or_failed_to_connect()).await;
    assert_eq!(
        first.unwrap_err(),
        AttemptError::Failed(Error::User("same".into()))
    );
    assert_eq!(w.now_ms(), 0);
    let second = within(pc.connected_or_failed_to_connect()).await;
    assert_eq!(
        second.unwrap_err(),
        AttemptError::Failed(Error::User("same".into()))
    );
    assert_eq!(w.now_ms(), 1000);
    // Only one FailedToConnect event (R4), but two outcomes (R10).
    assert_eq!(w.event_names(), vec!["Attempting", "Failed(same)"]);
    let third = within(pc.connected_or_failed_to_connect()).await;
    assert_eq!(*third.unwrap(), 1);
    assert_eq!(w.now_ms(), 2000);
    // Connected: at once.
    assert_eq!(
        *within(pc.connected_or_failed_to_connect()).await.unwrap(),
        1
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r10_close_resolves_pending_waiters_and_later_ones_at_once() {
    let w = World::new();
    w.lookups([], Act::Hang);
    let pc = w.build(100);
    let waiter = pc.connected_or_failed_to_connect();
    until(&w, 1000).await;
    let close = pc.close();
    assert_eq!(within(waiter).await.unwrap_err(), AttemptError::Closed);
    assert_eq!(
        within(pc.connected_or_failed_to_connect())
            .await
            .unwrap_err(),
        AttemptError::Closed
    );
    within(close).await;
    assert_eq!(
        within(pc.connected_or_failed_to_connect())
            .await
            .unwrap_err(),
        AttemptError::Closed
    );
}

// ------------------------------------------------------------------ R11

#[tokio::test(start_paused = true)]
async fn r11_when_connected_the_connection_stays_up_and_no_round_follows_it() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    pc.close_when_current_connection_is_closed();
    until(&w, 5000).await;
    assert!(!w.conn(0).is_closed(), "the current connection stays up");
    assert_eq!(pc.current_connection().map(|c| *c), Some(1));
    let finished = pc.close_finished();
    w.kill(0);
    within(finished).await;
    assert_eq!(w.now_ms(), 5000);
    assert!(pc.is_closed());
    until(&w, 100_000).await;
    assert_eq!(
        w.event_names(),
        vec!["Attempting", "Obtained(1)", "Connected(1)", "Disconnected"]
    );
}

/// Issue 28 item 12 (failed before: `is_closed()` stayed false until the connection went
/// away, and a new R10 waiter got the connection): R11 while connected counts as closed as
/// soon as it returns (S2, §7), as in the blocking driver. The connection stays up and
/// current (R11), `state()` says `Connected` while it does, and a new R10 waiter gets
/// `Err(Closed)` at once: no attempt will ever end again.
#[tokio::test(start_paused = true)]
async fn r11_when_connected_it_counts_as_closed_at_once_while_the_connection_stays_up() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    pc.close_when_current_connection_is_closed();
    assert!(pc.is_closed(), "closed as soon as R11 returns");
    assert!(matches!(
        pc.connected_or_failed_to_connect().now_or_never(),
        Some(Err(AttemptError::Closed))
    ));
    until(&w, 1000).await;
    assert!(pc.is_closed());
    assert_eq!(pc.state(), State::Connected, "the connection is still up");
    assert_eq!(pc.current_connection().map(|c| *c), Some(1));
    assert!(!w.conn(0).is_closed());
    w.kill(0);
    within(pc.close_finished()).await;
    assert_eq!(pc.state(), State::Closed);
    assert_eq!(pc.stats().attempts, 1, "no round after R11");
}

#[tokio::test(start_paused = true)]
async fn r11_when_not_connected_it_stops_now() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w.build(10_000);
    until(&w, 1000).await;
    pc.close_when_current_connection_is_closed();
    within(pc.close_finished()).await;
    assert_eq!(w.now_ms(), 1000);
    assert!(pc.is_closed());
    until(&w, 100_000).await;
    assert_eq!(w.lookup_times(), vec![0]);
}

// ------------------------------------------------------------------ R12: the connect context

#[tokio::test(start_paused = true)]
async fn r12_consecutive_unsuccessful_attempts_counts_failures_and_resets_on_success() {
    let w = World::new();
    w.connects([Act::Err("a"), Act::Err("b"), Act::Err("c")], Act::Ok(()));
    let pc = w.build(10);
    within(pc.connected()).await;
    w.kill(0);
    until(&w, 1000).await;
    let counts: Vec<u32> = w
        .contexts()
        .iter()
        .map(|cx| cx.consecutive_unsuccessful_attempts())
        .collect();
    assert_eq!(counts, vec![0, 1, 2, 3, 0]);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r12_abort_stops_and_gives_the_error_to_waiters() {
    let w = World::new();
    let pc: Pc = PersistentConnection::builder(
        "abort",
        || async { Ok(1u16) },
        |_addr, cx: ConnectContext<String>| async move {
            cx.abort("wrong server".to_owned());
            Err("refused".to_owned())
        },
    )
    .build();
    let waiter = pc.connected_or_failed_to_connect();
    assert_eq!(
        within(waiter).await.unwrap_err(),
        AttemptError::Aborted(Error::User("wrong server".into()))
    );
    within(pc.close_finished()).await;
    assert!(pc.is_closed());
    drop(w);
}

#[tokio::test(start_paused = true)]
async fn r12_a_connection_returned_after_abort_is_closed_and_never_current() {
    let w = World::new();
    let w2 = w.clone();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    let pc: Pc = PersistentConnection::builder(
        "abort",
        || async { Ok(1u16) },
        move |_addr, cx: ConnectContext<String>| {
            let w = w2.clone();
            async move {
                cx.abort("enough".to_owned());
                Ok(w.new_conn())
            }
        },
    )
    .on_event(move |e| {
        let ev = ev2.clone();
        async move { ev.lock().unwrap().push(describe(&e)) }
    })
    .build();
    within(pc.close_finished()).await;
    assert!(w.conn(0).is_closed(), "the late connection was closed");
    assert_eq!(*events.lock().unwrap(), vec!["Attempting", "Obtained(1)"]);
}

/// R12 as in the original: the attempt that called `abort` runs to its end, and its
/// failure is reported as any failure (R4): `FailedToConnect`, whose handler close waits
/// for. Waiters still get the abort's error.
#[tokio::test(start_paused = true)]
async fn r12_the_aborting_attempts_failure_is_reported_and_awaited_before_close_finishes() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    let start = Instant::now();
    let pc: Pc = PersistentConnection::builder(
        "abort-then-fail",
        || async { Ok(1u16) },
        |_addr, cx: ConnectContext<String>| async move {
            cx.abort("wrong server".to_owned());
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err("refused".to_owned())
        },
    )
    .on_event(move |e| {
        let ev = ev2.clone();
        async move {
            let failed = matches!(e, Event::FailedToConnect(_));
            ev.lock().unwrap().push(describe(&e));
            if failed {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .build();
    let waiter = pc.connected_or_failed_to_connect();
    assert_eq!(
        within(waiter).await.unwrap_err(),
        AttemptError::Aborted(Error::User("wrong server".into()))
    );
    assert!(pc.is_closed());
    within(pc.close_finished()).await;
    assert_eq!(
        *events.lock().unwrap(),
        vec!["Attempting", "Obtained(1)", "Failed(refused)"]
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(250),
        "close finished once the failure's handler returned"
    );
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 1);
}

/// Issue 28 item 5 (failed before: `failures` stayed 0 after an aborting attempt's
/// reported failure, and a de-duplicated one was not counted at all): the aborting
/// attempt's failure is counted in `stats()` as any failure (R12: "counted and emitted"),
/// reported or de-duplicated as R4 says, in step with `consecutive_unsuccessful_attempts`.
#[tokio::test(start_paused = true)]
async fn r12_the_aborting_attempts_failure_is_counted_in_stats() {
    // `abort_on`: the attempt (0-based) that aborts before failing like the others.
    let build = |abort_on: usize| -> Pc {
        let calls = Arc::new(AtomicUsize::new(0));
        PersistentConnection::builder(
            "abort-counted",
            || async { Ok(1u16) },
            move |_addr, cx: ConnectContext<String>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == abort_on {
                        cx.abort("stop".to_owned());
                    }
                    Err("refused".to_owned())
                }
            },
        )
        .retry_policy(
            persistent_connection::RetryPolicy::from(Duration::from_millis(100))
                .with_jitter(Jitter::NonRandom),
        )
        .build()
    };

    // Aborted on the first attempt: its failure is reported, and counted.
    let pc = build(0);
    within(pc.close_finished()).await;
    let s = pc.stats();
    assert_eq!(
        (s.attempts, s.failures, s.deduplicated_failures),
        (1, 1, 0),
        "{s:?}"
    );
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 1);

    // Aborted on the second: the same refusal is de-duplicated, and still counted.
    let pc = build(1);
    within(pc.close_finished()).await;
    let s = pc.stats();
    assert_eq!(
        (s.attempts, s.failures, s.deduplicated_failures),
        (2, 2, 1),
        "{s:?}"
    );
    assert_eq!(pc.consecutive_unsuccessful_attempts(), 2);
}

// ------------------------------------------------------------------ R13: misbehaving callbacks

#[tokio::test(start_paused = true)]
async fn r13_a_panic_in_get_address_is_a_failed_attempt_and_the_loop_goes_on() {
    let w = World::new();
    w.lookups([Act::Panic], Act::Ok(1));
    let pc = w.build(100);
    assert_eq!(
        within(pc.connected_or_failed_to_connect())
            .await
            .unwrap_err(),
        AttemptError::Failed(Error::Panicked {
            callback: Callback::GetAddress,
            message: "scripted panic".into()
        })
    );
    within(pc.connected()).await;
    assert_eq!(
        w.event_names(),
        vec![
            "Attempting",
            "Failed(panic in get_address)",
            "Obtained(1)",
            "Connected(1)"
        ]
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r13_a_panic_in_connect_is_a_failed_attempt_and_the_loop_goes_on() {
    let w = World::new();
    w.connects([Act::Panic], Act::Ok(()));
    let pc = w.build(100);
    within(pc.connected()).await;
    assert_eq!(
        w.event_names(),
        vec![
            "Attempting",
            "Obtained(1)",
            "Failed(panic in connect)",
            "Connected(1)"
        ]
    );
    within(pc.close()).await;
}

/// R13 with the crate's one guard: a `connect` future that gives a connection and then
/// panics when dropped still gave that connection; it becomes current (R5) instead of
/// being lost unclosed (I6). Before, the drop's panic turned the attempt into a failure and
/// the connection leaked, open and never closed.
#[tokio::test(start_paused = true)]
async fn r13_a_connect_future_that_panics_when_dropped_after_giving_its_connection_keeps_it() {
    struct ReadyThenPanics(Option<Conn>);
    impl Future for ReadyThenPanics {
        type Output = Result<Conn, String>;
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            std::task::Poll::Ready(Ok(self.0.take().expect("polled once")))
        }
    }
    impl Drop for ReadyThenPanics {
        fn drop(&mut self) {
            panic!("drop bug");
        }
    }
    let w = World::new();
    let w2 = w.clone();
    let pc: Pc = PersistentConnection::builder(
        "drop-panics",
        || async { Ok(1u16) },
        move |_addr, _cx: ConnectContext<String>| ReadyThenPanics(Some(w2.new_conn())),
    )
    .build();
    let c = within(pc.connected()).await;
    assert_eq!(
        (*c, w.conn_count()),
        (1, 1),
        "the first connection is current"
    );
    within(pc.close()).await;
    assert!(w.conn(0).is_closed(), "the connection was ours, and closed");
}

#[tokio::test(start_paused = true)]
async fn r13_a_panic_in_on_event_counts_as_handled() {
    let w = World::new();
    w.panic_on(EventKind::AttemptingToConnect)
        .panic_on(EventKind::Connected);
    let pc = w.build(100);
    within(pc.connected()).await;
    w.kill(0);
    until(&w, 200).await;
    assert_eq!(w.lookup_times(), vec![0, 100]);
    within(pc.close()).await;
    assert_eq!(
        w.event_names().last().map(String::as_str),
        Some("Disconnected")
    );
}

#[tokio::test(start_paused = true)]
async fn r13_a_panicking_retry_delay_falls_back_to_the_default() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w
        .builder(1)
        .retry_delay_fn(|| panic!("no delay today"))
        .build();
    until(&w, 25_000).await;
    assert_eq!(w.lookup_times(), vec![0, 10_000, 20_000]);
    within(pc.close()).await;
}

// ------------------------------------------------------------------ R14: drop

#[tokio::test(start_paused = true)]
async fn r14_dropping_the_last_handle_closes_everything_in_the_background() {
    let baseline = alive_tasks();
    let w = World::new();
    let pc = w.build(100);
    let clone = pc.clone();
    let weak = pc.downgrade();
    within(pc.connected()).await;
    assert!(alive_tasks() > baseline, "the driver task runs");
    drop(pc);
    until(&w, 1000).await;
    assert!(!w.conn(0).is_closed(), "a clone still holds it");
    assert!(weak.upgrade().is_some());
    drop(clone);
    until(&w, 2000).await;
    assert!(w.conn(0).is_closed(), "closed once the last handle went");
    assert!(
        weak.upgrade().is_none(),
        "a weak handle does not keep it alive"
    );
    assert_eq!(alive_tasks(), baseline, "no task outlives it");
    assert_eq!(
        w.event_names().last().map(String::as_str),
        Some("Disconnected")
    );
}

/// Issue 28 item 6 (failed before: the second `upgrade` panicked with an add overflow, in
/// a release build it returned a strong handle to the closed connection): once the last
/// handle is gone, a weak handle never upgrades, however often it is asked, and R14's
/// close completes.
#[tokio::test(start_paused = true)]
async fn r14_a_weak_handle_never_upgrades_once_the_last_handle_is_gone() {
    let w = World::new();
    let pc = w.build(100);
    let weak = pc.downgrade();
    within(pc.connected()).await;
    drop(pc);
    for _ in 0..3 {
        assert!(weak.upgrade().is_none(), "while R14's close is under way");
    }
    until(&w, 1000).await;
    assert!(w.conn(0).is_closed(), "closed once the last handle went");
    for _ in 0..3 {
        assert!(weak.upgrade().is_none(), "after the close");
    }
}

#[tokio::test(start_paused = true)]
async fn r14_dropping_the_handle_cancels_a_hanging_lookup() {
    let baseline = alive_tasks();
    let w = World::new();
    w.lookups([], Act::Hang);
    let pc = w.build(100);
    until(&w, 1000).await;
    drop(pc);
    until(&w, 1001).await;
    assert_eq!(w.all_dropped(), vec![true]);
    assert_eq!(alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn r14_a_connect_context_does_not_keep_the_persistent_connection_alive() {
    let baseline = alive_tasks();
    let w = World::new();
    w.connects([], Act::Hang); // the context stays inside the hanging connect
    let pc = w.build(100);
    until(&w, 1000).await;
    assert_eq!(w.contexts().len(), 1);
    drop(pc);
    until(&w, 1001).await;
    assert_eq!(alive_tasks(), baseline);
    // Aborting through a context of a dropped persistent connection is harmless.
    w.contexts()[0].abort("late".into());
}

// ------------------------------------------------------------------ the rest of the API

#[tokio::test(start_paused = true)]
async fn connect_timeout_turns_a_hung_connect_into_a_failed_attempt() {
    let w = World::new();
    w.connects([Act::Hang], Act::Ok(()));
    let pc = w
        .builder(1000)
        .connect_timeout(Duration::from_millis(300))
        .build();
    within(pc.connected()).await;
    assert_eq!(
        w.events(),
        ev(&[
            (0, "Attempting"),
            (0, "Obtained(1)"),
            (300, "Failed(timeout 300ms)"),
            (1000, "Connected(1)"),
        ])
    );
    assert_eq!(
        w.all_dropped()[..2],
        [false, true],
        "the hung connect was dropped"
    );
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn events_stream_sees_what_on_event_sees() {
    let w = World::new();
    w.handler(EventKind::AttemptingToConnect, 10);
    w.connects([Act::Err("refused")], Act::Ok(()));
    let pc = w.build(100);
    let mut rx = pc.events();
    within(pc.connected()).await;
    w.kill(0);
    within(pc.connected()).await;
    within(pc.close()).await;
    let mut seen = Vec::new();
    while let Some(Some(Ok(e))) = rx.next().now_or_never() {
        seen.push(describe(&e));
    }
    // The stream was subscribed right after build: it sees every event.
    assert_eq!(seen, w.event_names());
    assert_eq!(seen.len(), 9, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn current_connection_follows_connect_and_disconnect() {
    let w = World::new();
    w.connects([after(100, Act::Ok(()))], Act::Hang);
    let pc = w.build(100);
    assert!(pc.current_connection().is_none());
    until(&w, 101).await;
    assert_eq!(pc.current_connection().map(|c| *c), Some(1));
    w.kill(0);
    until(&w, 102).await;
    assert!(pc.current_connection().is_none());
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn a_handle_is_debug_and_names_its_server() {
    let w = World::new();
    let pc = w.build(100);
    within(pc.connected()).await;
    let text = format!("{pc:?}");
    assert!(
        text.contains("\"test\"") && text.contains("connected: true"),
        "{text}"
    );
    within(pc.close()).await;
}

/// A connection whose `close_finished` only reports the peer closing, never a local close
/// (a sloppy `Closable`): the driver must still end once `close()` is done.
#[derive(Clone, Debug)]
struct Sloppy(CloseSignal);

impl Closable for Sloppy {
    async fn close(&self) {
        self.0.begin_close();
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    async fn close_finished(&self) {
        std::future::pending::<()>().await
    }
}

#[tokio::test(start_paused = true)]
async fn r14_a_close_finished_that_never_resolves_does_not_keep_the_driver_alive() {
    let baseline = alive_tasks();
    let pc: PersistentConnection<u16, Sloppy, String> = PersistentConnection::builder(
        "sloppy",
        || async { Ok(1u16) },
        |_addr, _cx| async { Ok(Sloppy(CloseSignal::owned())) },
    )
    .build();
    let conn = within(pc.connected()).await;
    within(pc.close()).await;
    assert!(conn.is_closed());
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), baseline, "the driver task ended");
}

#[tokio::test(start_paused = true)]
async fn retry_policy_sets_base_delay_and_jitter_at_once() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    let pc = w
        .builder(1)
        .retry_policy(
            persistent_connection::RetryPolicy::constant(Duration::from_millis(250)).non_random(),
        )
        .build();
    until(&w, 800).await;
    assert_eq!(w.lookup_times(), vec![0, 250, 500, 750]);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_event_observer_lags_without_holding_up_the_connection() {
    let w = World::new();
    w.lookups(
        [Act::Err("a"), Act::Err("b"), Act::Err("c"), Act::Err("d")],
        Act::Ok(1),
    );
    let pc = w.builder(10).event_capacity(2).build();
    let mut rx = pc.events();
    within(pc.connected()).await; // never blocked by the unread receiver
    match rx.next().now_or_never() {
        Some(Some(Err(Lagged(n)))) => assert!(n > 0),
        other => panic!("expected a lag, got {other:?}"),
    }
    // After the lag it reads the newest events.
    let rest: Vec<String> = std::iter::from_fn(|| rx.next().now_or_never().flatten())
        .map(|e| describe(&e.unwrap()))
        .collect();
    assert_eq!(rest, vec!["Obtained(1)", "Connected(1)"]);
    within(pc.close()).await;
}

#[test]
fn build_on_names_a_runtime_from_outside_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let w = rt.block_on(async { World::new() });
    // Built on a plain thread, outside any runtime.
    let pc = std::thread::scope(|s| {
        s.spawn(|| w.builder(100).build_on(rt.handle()))
            .join()
            .unwrap()
    });
    rt.block_on(async {
        assert_eq!(*within(pc.connected()).await, 1);
        within(pc.close()).await;
    });
}

#[test]
fn handles_and_connections_can_be_shared_between_tasks_and_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Pc>();
    shareable::<persistent_connection::WeakPersistentConnection<u16, Conn, String>>();
    shareable::<ConnectContext<String>>();
    shareable::<persistent_connection::TcpConnection>();
    shareable::<CloseSignal>();
    shareable::<Error<String>>();
    fn sendable<T: Send>() {}
    sendable::<Builder<u16, Conn, String>>();
}

#[tokio::test(start_paused = true)]
async fn r8_close_finishes_only_after_a_connection_returned_after_abort_is_closed() {
    let baseline = alive_tasks();
    let signal = CloseSignal::owned();
    let owner = signal.clone();
    // The connection takes 500 ms to close once asked.
    let closer = tokio::spawn(async move {
        owner.closing().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        owner.mark_closed();
    });
    let pc: Pc = PersistentConnection::builder(
        "abort-slow-close",
        || async { Ok(1u16) },
        move |_addr, cx: ConnectContext<String>| {
            let signal = signal.clone();
            async move {
                cx.abort("enough".to_owned());
                Ok(WithCloseSignal::new(9, signal))
            }
        },
    )
    .build();
    let start = Instant::now();
    within(pc.close_finished()).await;
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(500),
        "R8: after the stray closed"
    );
    within(closer).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(alive_tasks(), baseline);
}

// ------------------------------------------------------------------ waiters, polled by hand

#[tokio::test(start_paused = true)]
async fn r9_r10_waiters_stay_pending_and_are_woken_when_the_connection_comes() {
    use tokio_test::{assert_pending, assert_ready};
    let w = World::new();
    w.connects([after(1000, Act::Ok(()))], Act::Ok(()));
    let pc = w.build(100);
    let mut connected = tokio_test::task::spawn(pc.connected());
    let mut outcome = tokio_test::task::spawn(pc.connected_or_failed_to_connect());
    assert_pending!(connected.poll());
    assert_pending!(outcome.poll());
    until(&w, 999).await;
    assert!(!connected.is_woken() && !outcome.is_woken());
    assert_pending!(connected.poll());
    until(&w, 1001).await;
    assert!(connected.is_woken() && outcome.is_woken());
    assert_eq!(*assert_ready!(connected.poll()), 1);
    assert_eq!(*assert_ready!(outcome.poll()).unwrap(), 1);
    within(pc.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r8_close_and_close_finished_futures_resolve_together() {
    use tokio_test::{assert_pending, assert_ready};
    let w = World::new();
    w.handler(EventKind::Disconnected, 300);
    let pc = w.build(100);
    within(pc.connected()).await;
    let mut finished = tokio_test::task::spawn(pc.close_finished());
    let mut close = tokio_test::task::spawn(pc.close());
    assert_pending!(finished.poll());
    assert_pending!(close.poll());
    until(&w, 299).await;
    assert_pending!(finished.poll());
    assert_pending!(close.poll());
    until(&w, 301).await;
    assert_ready!(finished.poll());
    assert_ready!(close.poll());
}

// ------------------------------------------------------------------ defaults

/// Attempt times of a persistent connection built with the defaults (only `jitter` set
/// when given) whose lookups always fail.
async fn default_schedule(jitter: Option<Jitter>) -> Vec<u64> {
    let start = Instant::now();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t2 = times.clone();
    let mut b = PersistentConnection::builder(
        "defaults",
        move || {
            t2.lock().unwrap().push(start.elapsed().as_millis() as u64);
            async { Err::<u16, String>("down".into()) }
        },
        |_addr, _cx| async { Ok(WithCloseSignal::new(0u32, CloseSignal::new())) },
    );
    if let Some(j) = jitter {
        b = b.retry_policy(
            persistent_connection::RetryPolicy::constant(Duration::from_secs(10)).with_jitter(j),
        );
    }
    let pc = b.build();
    tokio::time::sleep(Duration::from_secs(65)).await;
    within(pc.close()).await;
    times.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn r7_default_retry_delay_is_ten_seconds() {
    assert_eq!(
        default_schedule(Some(Jitter::NonRandom)).await,
        vec![0, 10_000, 20_000, 30_000, 40_000, 50_000, 60_000]
    );
}

#[tokio::test(start_paused = true)]
async fn r7_default_jitter_is_30_percent_with_a_seed_from_the_os() {
    let a = default_schedule(None).await;
    let b = default_schedule(None).await;
    for s in [&a, &b] {
        let gaps: Vec<u64> = s.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.len() >= 4, "{s:?}");
        assert!(gaps.iter().all(|g| (7000..=13_001).contains(g)), "{gaps:?}");
    }
    // Two unseeded connections do not retry in lockstep (equal by chance: < 1e-15).
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn extreme_settings_are_accepted_without_panic() {
    let w = World::new();
    w.connects([Act::Hang], Act::Ok(()));
    let pc = w
        .builder(1)
        .connect_timeout(Duration::MAX) // never fires; must not overflow
        .event_capacity(usize::MAX) // clamped
        .retry_policy(Duration::ZERO)
        .build();
    let mut rx = pc.events();
    until(&w, 5000).await;
    assert_eq!(w.event_names(), vec!["Attempting", "Obtained(1)"]);
    within(pc.close()).await;
    let _ = rx.next().now_or_never();
    let pc2 = w.builder(1).event_capacity(0).build(); // clamped to 1
    within(pc2.close()).await;
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_the_obtained_address_handler_waits_for_it_and_never_connects() {
    let w = World::new();
    w.handler(EventKind::ObtainedAddress, 5000);
    let pc = w.build(100);
    close_at(&w, &pc, 1000, 5000).await;
    assert_eq!(w.event_names(), vec!["Attempting", "Obtained(1)"]);
    assert!(!w.log().iter().any(|(_, s)| s.starts_with("call connect")));
}

#[tokio::test(start_paused = true)]
async fn r8_close_during_the_failed_to_connect_handler_waits_for_it_and_never_retries() {
    let w = World::new();
    w.lookups([], Act::Err("down"));
    w.handler(EventKind::FailedToConnect, 5000);
    let pc = w.build(100);
    close_at(&w, &pc, 1000, 5000).await;
    assert_eq!(w.lookup_times(), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn r13_a_callback_that_panics_before_returning_its_future_is_caught_too() {
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let pc: PersistentConnection<u16, Conn, String> = PersistentConnection::builder(
        "sync-panic",
        || async { Ok(1u16) },
        move |_addr, _cx| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("panics while making the future");
            }
            async { Ok(WithCloseSignal::new(5, CloseSignal::new())) }
        },
    )
    .retry_policy(Duration::from_millis(100))
    .build();
    assert_eq!(
        within(pc.connected_or_failed_to_connect())
            .await
            .unwrap_err(),
        AttemptError::Failed(Error::Panicked {
            callback: Callback::Connect,
            message: "panics while making the future".into()
        })
    );
    assert_eq!(*within(pc.connected()).await, 5);
    within(pc.close()).await;
}
