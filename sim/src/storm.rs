//! Reconnect storms: many clients, one server, virtual time.
//!
//! `N` clients are connected to one server. At the outage start (`t = 0` on every axis
//! below) the server dies: its listener closes at once and it resets every connection, one
//! after another, over `kill_time`. It comes back `outage` after the last reset (as the
//! benchmark kills its server, then sleeps) and, while up, accepts connections at a
//! bounded rate. Each client reconnects under a retry policy; the run ends when every
//! client is back (or an hour of virtual time after the restart).
//!
//! Clients under this project's policies (`constant`, `exponential`, `grpc`) are real core
//! [`Machine`]s, one each, fed by a small driver that answers as a shell would: every
//! `on_event` handler returns at once, the lookup answers at once with the one address,
//! the connect answers after one round trip. The alternatives are the shapes the
//! loopback benchmark configured (`persistent-connection-bench storm`): `loop` is a
//! hand-rolled `loop { connect; wait until closed; on error sleep base }` (tower's
//! `Reconnect` has the same shape: no jitter, no delay after a connection that dropped),
//! and `stubborn` is stubborn-io's `ExpBackoffStrategy::new(base, 2.0, 0.05)`: it sleeps
//! `base · 2^k ± 5 %` before every reconnect, the first after a drop included, `k` counting
//! failed connects since the last success.
//!
//! ## The server model
//!
//! - Down (`0 ≤ t < kill_time + outage`): every connect is refused; the client learns it
//!   one round trip (`rtt`) later.
//! - Up: the kernel completes a handshake at once while the listen backlog has room; the
//!   client's connect succeeds one round trip later. The application accepts queued
//!   connections one at a time, at most `accept_rate` per second, in arrival order; an
//!   accepted connection leaves the backlog. A connect that finds the backlog full
//!   (`backlog` connections not yet accepted) is refused (as with Linux's
//!   `tcp_abort_on_overflow = 1`; with the default, the SYN is dropped and the client's
//!   kernel retransmits it, which this model does not follow).
//! - A connection, once made, lives until the end of the run.
//! - Clients act exactly on time. Real clients are late by however long they wait for a
//!   core, which spreads a lockstep wave; the model leaves that out. The repository's
//!   `BENCHMARKS.md` compares its predictions with the medians of repeated real storms on
//!   loopback, error by error: within 11 % on every figure. What lateness costs shows in
//!   the outage attempts of clients without jitter (a late retry falls after the restart),
//!   and in single runs: a lockstep wave's real peak accept rate varies by ±25 % from run
//!   to run, so compare a prediction with a median, not with one run.
//!
//! Counted as the benchmark counts them: an *attempt* is one connect; *accepts per
//! second* is the most accepts in any 100 ms window, times ten; *time to x %
//! reconnected* is measured from the restart. Same seed, same table, same picture: every
//! tie on the virtual clock is broken by client number, and all randomness comes from
//! ChaCha generators seeded from `--seed`.
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection_sim::storm::{Policy, StormConfig, run_storm};
//!
//! let config = StormConfig {
//!     clients: 200,
//!     outage: Duration::from_secs(5),
//!     base: Duration::from_secs(1),
//!     ..StormConfig::default()
//! };
//! let r = run_storm(&config, Policy::Constant).unwrap();
//! assert_eq!(r.reconnected, 200);
//! // Under the constant policy, a client retries about once per base delay.
//! let per_client = r.outage_attempts as f64 / 200.0;
//! assert!((4.0..7.0).contains(&per_client), "{per_client}");
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::{self, Write as _};
use std::time::Duration;

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};
use persistent_connection_core::{
    Config, Effect, Input, Instant, Jitter, Machine, RetryDelay, RetryPolicy, State,
};

use crate::checker::{Checker, CheckerSettings, Violation};

/// A retry policy to compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    /// This project's default shape: a constant base delay, ±30 % jitter, the timer counted
    /// from each attempt's start, an immediate reconnect after a long-lived connection.
    Constant,
    /// This project with `RetryDelay::exponential(base, 2.0, 32·base)`, ±30 % jitter.
    Exponential,
    /// This project with `RetryPolicy::grpc()` (1 s, ×1.6, 120 s cap, ±20 %); `--delay`
    /// does not apply.
    Grpc,
    /// A hand-rolled loop (and tower's `Reconnect`, same shape): reconnect at once after a
    /// drop, sleep `base` after each failed connect, no jitter.
    Loop,
    /// stubborn-io 0.3 as the benchmark configured it: sleep `base · 2^k ± 5 %` before every
    /// reconnect.
    Stubborn,
}

impl Policy {
    /// Every policy, in table order.
    pub const ALL: [Policy; 5] = [
        Policy::Constant,
        Policy::Exponential,
        Policy::Grpc,
        Policy::Loop,
        Policy::Stubborn,
    ];

    /// The name used by `--policies` and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Constant => "constant",
            Policy::Exponential => "exponential",
            Policy::Grpc => "grpc",
            Policy::Loop => "loop",
            Policy::Stubborn => "stubborn",
        }
    }

    /// What it is, for the table.
    pub fn describe(self) -> &'static str {
        match self {
            Policy::Constant => "this project: constant base, ±30 % (default shape)",
            Policy::Exponential => "this project: exponential ×2 to 32·base, ±30 %",
            Policy::Grpc => "this project: RetryPolicy::grpc() (1 s ×1.6 to 120 s, ±20 %)",
            Policy::Loop => "hand-rolled loop / tower Reconnect: sleep base after a failure",
            Policy::Stubborn => "stubborn-io: sleep base·2^k ±5 % before every reconnect",
        }
    }

    /// Whether clients under it are real core machines.
    pub fn is_machine(self) -> bool {
        matches!(self, Policy::Constant | Policy::Exponential | Policy::Grpc)
    }

    fn retry(self, base: Duration) -> RetryPolicy {
        match self {
            Policy::Exponential => RetryPolicy {
                delay: RetryDelay::exponential(base, 2.0, base.saturating_mul(32)),
                jitter: Jitter::Percent(30),
            },
            Policy::Grpc => RetryPolicy::grpc(),
            _ => RetryPolicy::constant(base),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown policy {s:?} (known: constant, exponential, grpc, loop, stubborn)")
            })
    }
}

/// One storm's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct StormConfig {
    /// Clients (1 to 10,000,000).
    pub clients: u32,
    /// How long the server stays down.
    pub outage: Duration,
    /// Most connections the server accepts per second while up.
    pub accept_rate: u32,
    /// Listen backlog: connections handshaken but not yet accepted.
    pub backlog: u32,
    /// Round trip of a connect (refused or accepted).
    pub rtt: Duration,
    /// How long the dying server takes to reset all its connections (one after another,
    /// evenly spread); the outage is counted from the last reset, as the benchmark's
    /// `kill` then `sleep(outage)`.
    pub kill_time: Duration,
    /// Base retry delay (`grpc` ignores it).
    pub base: Duration,
    /// Seed of every client's jitter and of the alternatives' randomness.
    pub seed: u64,
    /// Check every step of every machine with the simulator's invariant checker (for small
    /// runs: it costs memory and time per client).
    pub check: bool,
    /// Width of the time buckets of the curves.
    pub bucket: Duration,
}

impl Default for StormConfig {
    /// 10,000 clients, 60 s outage, 10,000 accepts/s, backlog 4096 (Linux's default
    /// `somaxconn`), 100 µs round trip, 20 ms to reset every connection, 10 s base (this
    /// project's default), seed 0.
    fn default() -> Self {
        StormConfig {
            clients: 10_000,
            outage: Duration::from_secs(60),
            accept_rate: 10_000,
            backlog: 4096,
            rtt: Duration::from_micros(100),
            kill_time: Duration::from_millis(20),
            base: RetryDelay::DEFAULT,
            seed: 0,
            check: false,
            bucket: Duration::from_millis(100),
        }
    }
}

impl StormConfig {
    /// Checks the parameters: a clear error instead of a nonsense run.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.clients > 10_000_000 {
            return Err(format!(
                "--clients must be 1 to 10,000,000, not {}",
                self.clients
            ));
        }
        if self.accept_rate == 0 {
            return Err("--accept-rate must be at least 1 per second".into());
        }
        if self.backlog == 0 {
            return Err("--backlog must be at least 1".into());
        }
        if self.outage > Duration::from_secs(24 * 3600) {
            return Err("--outage must be at most a day".into());
        }
        if self.base > Duration::from_secs(3600) {
            return Err("--delay must be at most an hour".into());
        }
        if self.rtt.is_zero() || self.rtt > Duration::from_secs(10) {
            return Err("--rtt must be more than zero and at most 10 s".into());
        }
        if self.kill_time > Duration::from_secs(3600) {
            return Err("--kill-time must be at most an hour".into());
        }
        if self.bucket.is_zero() {
            return Err("the bucket width must not be zero".into());
        }
        Ok(())
    }
}

/// What one policy did in one storm. Times are from the outage start unless said.
#[derive(Clone, Debug, PartialEq)]
pub struct StormResult {
    /// The policy.
    pub policy: Policy,
    /// Connect attempts while the server was down.
    pub outage_attempts: u64,
    /// Connect attempts in all, from the outage start to the end.
    pub attempts: u64,
    /// Most attempts in one bucket during the outage, per second.
    pub peak_outage_attempts_per_s: f64,
    /// Most accepts in any 100 ms window after the restart, times ten (as the benchmark).
    pub peak_accepts_per_s: u64,
    /// Connects refused after the restart (backlog full).
    pub refused_after_restart: u64,
    /// Connects refused in all (server down or backlog full).
    pub refused: u64,
    /// Clients back by the end.
    pub reconnected: u32,
    /// From the restart until 50 %, 99 % and 100 % of the clients were back (`None`: not
    /// within the run).
    pub time_to: [Option<Duration>; 3],
    /// Attempts per bucket, from the outage start.
    pub attempts_curve: Vec<u32>,
    /// Connected clients at the end of each bucket, from the outage start.
    pub connected_curve: Vec<u32>,
    /// Core machine steps fed (0 for the alternatives).
    pub machine_steps: u64,
}

/// Virtual time in nanoseconds.
type Nanos = u64;

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A client's next thing on the virtual clock. Ordered by time, then client: ties are
/// broken the same way on every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Nanos,
    client: u32,
    kind: Kind,
}

impl Due {
    /// The queue's key: ordered as `Due` is.
    fn key(self) -> u128 {
        (u128::from(self.at) << 40) | (u128::from(self.client) << 8) | self.kind as u128
    }

    fn from_key(k: u128) -> Due {
        let kind = match k as u8 {
            0 => Kind::Refused,
            1 => Kind::Connected,
            2 => Kind::Wake,
            _ => Kind::Reset,
        };
        Due {
            at: (k >> 40) as u64,
            client: (k >> 8) as u32,
            kind,
        }
    }
}

/// The event queue: a calendar of 1 ms buckets in a ring covering 2¹⁸ ms (4.4 min), each
/// bucket an unsorted list until the clock reaches it, then sorted once and drained from
/// its end; what is pushed into the bucket being drained (a connect's answer a round trip
/// later) goes to a small binary heap beside it; events beyond the ring wait in an
/// overflow heap. Pops in key order, as one big binary heap would (tested against one),
/// but a wave of a million reconnects costs a push into a list each and one sort per
/// millisecond, where a binary heap of a million entries (or a radix heap, which moves a
/// lockstep wave through a dozen levels) spends its time waiting for memory.
struct CalendarQueue {
    ring: Vec<Vec<u128>>,
    /// Events in the ring.
    in_ring: usize,
    /// The bucket being drained (absolute number).
    cursor: u64,
    /// Its events, sorted, the smallest last.
    sorted: Vec<u128>,
    /// Events pushed into it while it drains.
    late: BinaryHeap<Reverse<u128>>,
    overflow: BinaryHeap<Reverse<u128>>,
}

const BUCKET_NS: u64 = 1_000_000;
const RING: u64 = 1 << 18;

fn bucket_of_key(key: u128) -> u64 {
    ((key >> 40) as u64) / BUCKET_NS
}

impl CalendarQueue {
    fn new() -> CalendarQueue {
        CalendarQueue {
            ring: (0..RING).map(|_| Vec::new()).collect(),
            in_ring: 0,
            cursor: 0,
            sorted: Vec::new(),
            late: BinaryHeap::new(),
            overflow: BinaryHeap::new(),
        }
    }

    fn push(&mut self, key: u128) {
        let b = bucket_of_key(key);
        if b <= self.cursor {
            self.late.push(Reverse(key));
        } else if b < self.cursor + RING {
            self.ring[(b % RING) as usize].push(key);
            self.in_ring += 1;
        } else {
            self.overflow.push(Reverse(key));
        }
    }

    fn pop(&mut self) -> Option<u128> {
        loop {
            match (self.sorted.last(), self.late.peek()) {
                (Some(&a), Some(&Reverse(b))) => {
                    return if a <= b {
                        self.sorted.pop()
                    } else {
                        self.late.pop().map(|r| r.0)
                    };
                }
                (Some(_), None) => return self.sorted.pop(),
                (None, Some(_)) => return self.late.pop().map(|r| r.0),
                (None, None) => {}
            }
            if self.in_ring == 0 {
                // Nothing within the ring: jump to the overflow's first bucket.
                let Reverse(k) = *self.overflow.peek()?;
                self.cursor = bucket_of_key(k).max(self.cursor + 1) - 1;
            }
            self.cursor += 1;
            while let Some(&Reverse(k)) = self.overflow.peek() {
                if bucket_of_key(k) >= self.cursor + RING {
                    break;
                }
                self.overflow.pop();
                self.push(k);
            }
            let slot = &mut self.ring[(self.cursor % RING) as usize];
            if !slot.is_empty() {
                self.in_ring -= slot.len();
                // The slot starts again empty: buffers handed back to slots would keep
                // every wave's capacity alive around the ring.
                self.sorted = std::mem::take(slot);
                self.sorted.sort_unstable_by(|a, b| b.cmp(a));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The connect answers: refused.
    Refused = 0,
    /// The connect answers: connected.
    Connected = 1,
    /// A timer (a machine's retry timer, an alternative's sleep) is due.
    Wake = 2,
    /// The dying server resets this client's connection.
    Reset = 3,
}

/// The server.
struct Server {
    down_from: Nanos,
    up_at: Nanos,
    interval: Nanos,
    backlog: usize,
    /// Accept times of the connections in the backlog, in order.
    queue: VecDeque<Nanos>,
    last_accept: Option<Nanos>,
    /// Every accept after the restart, in order.
    accepts: Vec<Nanos>,
}

impl Server {
    /// A connect arrives at `t`: accepted into the backlog, or refused.
    fn connect(&mut self, t: Nanos) -> bool {
        if t >= self.down_from && t < self.up_at {
            return false;
        }
        while self.queue.front().is_some_and(|&a| a <= t) {
            self.queue.pop_front();
        }
        if self.queue.len() >= self.backlog {
            return false;
        }
        let at = match self.last_accept {
            Some(last) => t.max(last.saturating_add(self.interval)),
            None => t,
        };
        self.last_accept = Some(at);
        self.queue.push_back(at);
        if t >= self.up_at {
            self.accepts.push(at);
        }
        true
    }
}

type StormMachine = Machine<(), (), ()>;

/// The alternatives' per-client state.
#[derive(Clone, Copy, Debug)]
struct Alt {
    /// Failed connects since the last success (stubborn-io's exponent).
    failures: u32,
}

struct Fleet {
    config: StormConfig,
    policy: Policy,
    queue: CalendarQueue,
    machines: Vec<StormMachine>,
    checkers: Vec<Checker<(), (), ()>>,
    alts: Vec<Alt>,
    server: Server,
    rng: ChaCha8Rng,
    /// The outage start, on the virtual clock.
    t0: Nanos,
    /// Before the outage: every connect succeeds and nothing is counted.
    setup: bool,
    connected: u32,
    reconnect_times: Vec<Nanos>,
    attempts: Vec<u32>,
    connected_curve: Vec<u32>,
    outage_attempts: u64,
    total_attempts: u64,
    refused: u64,
    refused_after_restart: u64,
    steps: u64,
    /// Inputs owed to the machine being driven (reused buffer).
    owed: Vec<Input<(), (), ()>>,
}

impl Fleet {
    fn bucket_of(&self, t: Nanos) -> usize {
        (t.saturating_sub(self.t0) / nanos(self.config.bucket)) as usize
    }

    fn count_attempt(&mut self, t: Nanos) {
        if self.setup {
            return;
        }
        self.total_attempts += 1;
        if t < self.server.up_at {
            self.outage_attempts += 1;
        }
        let b = self.bucket_of(t);
        if self.attempts.len() <= b {
            self.attempts.resize(b + 1, 0);
        }
        self.attempts[b] += 1;
    }

    fn record_connected_curve(&mut self, t: Nanos) {
        let b = self.bucket_of(t);
        if self.connected_curve.len() <= b {
            let last = self.connected_curve.last().copied().unwrap_or(0);
            self.connected_curve.resize(b + 1, last);
        }
        self.connected_curve[b] = self.connected;
    }

    fn now(t: Nanos) -> Instant {
        Instant::from_since_origin(Duration::from_nanos(t))
    }

    /// A connect leaves at `t`: ask the server, schedule the answer a round trip later.
    fn start_connect(&mut self, client: u32, t: Nanos) {
        self.count_attempt(t);
        let ok = self.setup || self.server.connect(t);
        if !ok {
            self.refused += 1;
            if t >= self.server.up_at {
                self.refused_after_restart += 1;
            }
        }
        let at = t.saturating_add(nanos(self.config.rtt));
        let kind = if ok { Kind::Connected } else { Kind::Refused };
        self.queue.push(Due { at, client, kind }.key());
    }

    fn became_connected(&mut self, t: Nanos) {
        self.connected += 1;
        if !self.setup {
            self.reconnect_times.push(t);
            self.record_connected_curve(t);
        }
    }

    // ---- this project's clients: real machines

    fn feed(&mut self, client: u32, t: Nanos, input: Input<(), (), ()>) -> Result<(), Violation> {
        let i = client as usize;
        let now = Self::now(t);
        self.steps += 1;
        if let Some(c) = self.checkers.get_mut(i) {
            c.on_input(now, &input)?;
        }
        self.machines[i].handle(now, input);
        self.settle(client, t)
    }

    /// Drains the machine's effects, answers at once what a shell answers at once, and
    /// schedules the rest.
    fn settle(&mut self, client: u32, t: Nanos) -> Result<(), Violation> {
        let i = client as usize;
        let now = Self::now(t);
        loop {
            while let Some(e) = self.machines[i].poll_effect() {
                if let Some(c) = self.checkers.get_mut(i) {
                    c.on_effect(now, &e)?;
                }
                match e {
                    Effect::Emit { id, .. } => self.owed.push(Input::EventHandled { event: id }),
                    Effect::GetAddress { attempt } => self.owed.push(Input::AddressResult {
                        attempt,
                        result: Ok(()),
                    }),
                    Effect::Connect { .. } => self.start_connect(client, t),
                    Effect::BecameCurrent { .. } => self.became_connected(t),
                    _ => {}
                }
            }
            if let Some(c) = self.checkers.get_mut(i) {
                c.after_step(now, &self.machines[i])?;
            }
            let input = if let Some(input) = self.owed.pop() {
                input
            } else {
                match self.machines[i].poll_timeout() {
                    Some(deadline) => {
                        let at = nanos(deadline.since_origin());
                        if at <= t {
                            Input::TimerFired
                        } else {
                            let kind = Kind::Wake;
                            self.queue.push(Due { at, client, kind }.key());
                            return Ok(());
                        }
                    }
                    None => {
                        // As the shell does: an idle connected machine keeps no buffers.
                        if self.machines[i].state() == State::Connected {
                            self.machines[i].release_buffers();
                        }
                        return Ok(());
                    }
                }
            };
            self.steps += 1;
            if let Some(c) = self.checkers.get_mut(i) {
                c.on_input(now, &input)?;
            }
            self.machines[i].handle(now, input);
        }
    }

    fn machine_due(&mut self, due: Due) -> Result<(), Violation> {
        let i = due.client as usize;
        match due.kind {
            Kind::Wake => {
                // Only the machine's current deadline fires (the shell keeps one timer).
                let deadline = self.machines[i]
                    .poll_timeout()
                    .map(|d| nanos(d.since_origin()));
                if deadline == Some(due.at) {
                    self.feed(due.client, due.at, Input::TimerFired)?;
                }
                Ok(())
            }
            Kind::Reset => {
                self.lose_connection(due.at);
                let Some(conn) = self.machines[i].current_conn_id() else {
                    return Ok(());
                };
                self.feed(due.client, due.at, Input::Closed { conn })
            }
            Kind::Refused | Kind::Connected => {
                let State::Connecting(attempt) = self.machines[i].state() else {
                    return Ok(());
                };
                let result = if due.kind == Kind::Connected {
                    Ok(())
                } else {
                    Err(())
                };
                self.feed(due.client, due.at, Input::ConnectResult { attempt, result })
            }
        }
    }

    // ---- the alternatives

    fn alt_sleep(&mut self, client: u32, t: Nanos) {
        let base = self.config.base;
        let d = match self.policy {
            Policy::Stubborn => {
                let k = self.alts[client as usize].failures.min(40);
                let b = base.as_secs_f64() * 2f64.powi(k as i32);
                // ±5 %, uniform.
                let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                Duration::try_from_secs_f64(b * (0.95 + 0.1 * u)).unwrap_or(Duration::MAX)
            }
            _ => base,
        };
        let at = t.saturating_add(nanos(d));
        self.queue.push(
            Due {
                at,
                client,
                kind: Kind::Wake,
            }
            .key(),
        );
    }

    fn alt_due(&mut self, due: Due) {
        let i = due.client as usize;
        match due.kind {
            Kind::Wake => self.start_connect(due.client, due.at),
            Kind::Connected => {
                self.alts[i].failures = 0;
                self.became_connected(due.at);
            }
            Kind::Refused => {
                self.alts[i].failures += 1;
                self.alt_sleep(due.client, due.at);
            }
            Kind::Reset => {
                self.lose_connection(due.at);
                match self.policy {
                    // stubborn-io sleeps before the first reconnect too.
                    Policy::Stubborn => self.alt_sleep(due.client, due.at),
                    _ => self.start_connect(due.client, due.at),
                }
            }
        }
    }

    fn lose_connection(&mut self, t: Nanos) {
        self.connected -= 1;
        self.record_connected_curve(t);
    }

    /// The server dies at `t`: its listener closes at once, and it resets its clients'
    /// connections one after another over `kill_time` (client 0 first).
    fn outage(&mut self, t: Nanos) {
        let n = u128::from(self.config.clients);
        let kill = u128::from(nanos(self.config.kill_time));
        for client in 0..self.config.clients {
            let at = t.saturating_add((kill * u128::from(client) / n) as u64);
            let kind = Kind::Reset;
            self.queue.push(Due { at, client, kind }.key());
        }
    }

    fn run_until(&mut self, end: Nanos) -> Result<(), Violation> {
        while let Some(key) = self.queue.pop() {
            let due = Due::from_key(key);
            let everyone_back = self.reconnect_times.len() == self.config.clients as usize;
            if due.at > end || (!self.setup && everyone_back) {
                self.queue.push(key);
                break;
            }
            if self.policy.is_machine() {
                self.machine_due(due)?;
            } else {
                self.alt_due(due);
            }
        }
        Ok(())
    }
}

/// Bytes per client of a policy's fleet, beyond the event queue: a core machine's
/// `size_of` (an idle connected machine has released its effect queue, as the shell has it
/// do; a reconnecting one holds 8 effect slots more), or the alternatives' state.
pub fn bytes_per_client(policy: Policy) -> usize {
    if policy.is_machine() {
        std::mem::size_of::<StormMachine>()
    } else {
        std::mem::size_of::<Alt>()
    }
}

/// Runs one storm under one policy.
pub fn run_storm(config: &StormConfig, policy: Policy) -> Result<StormResult, Violation> {
    run_storm_with(config, policy, || {})
}

/// [`run_storm`], calling `after_setup` once every client is built and connected, before
/// the outage (the binary measures memory there).
pub fn run_storm_with(
    config: &StormConfig,
    policy: Policy,
    after_setup: impl FnOnce(),
) -> Result<StormResult, Violation> {
    let n = config.clients;
    let delay_cap = nanos(config.base.max(Duration::from_secs(120))).saturating_mul(2);
    // Connected long before the outage: every first retry timer has long fired.
    let t0 = 1_000_000_000_000u64.max(delay_cap);
    // As the benchmark does it: kill (reset every connection), then wait `outage`, then
    // restart.
    let up_at = t0
        .saturating_add(nanos(config.kill_time))
        .saturating_add(nanos(config.outage));
    let mut fleet = Fleet {
        config: config.clone(),
        policy,
        queue: CalendarQueue::new(),
        machines: Vec::new(),
        checkers: Vec::new(),
        alts: Vec::new(),
        server: Server {
            down_from: t0,
            up_at,
            interval: 1_000_000_000 / u64::from(config.accept_rate),
            backlog: config.backlog as usize,
            queue: VecDeque::new(),
            last_accept: None,
            accepts: Vec::new(),
        },
        rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x5354_4f52_4d00),
        t0,
        setup: true,
        connected: 0,
        reconnect_times: Vec::with_capacity(n as usize),
        attempts: Vec::new(),
        connected_curve: Vec::new(),
        outage_attempts: 0,
        total_attempts: 0,
        refused: 0,
        refused_after_restart: 0,
        steps: 0,
        owed: Vec::with_capacity(4),
    };
    // Setup: everyone connects at time zero (not counted).
    if policy.is_machine() {
        fleet.machines.reserve_exact(n as usize);
        for client in 0..n {
            let retry = policy.retry(config.base);
            let cfg = Config {
                seed: config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(client),
                retry,
            };
            if config.check {
                let settings = CheckerSettings::for_policy(&cfg.retry);
                fleet.checkers.push(Checker::new(settings));
            }
            fleet.machines.push(Machine::new(cfg));
            fleet.settle(client, 0)?;
        }
    } else {
        fleet.alts = vec![Alt { failures: 0 }; n as usize];
        for client in 0..n {
            fleet.start_connect(client, 0);
        }
    }
    fleet.run_until(t0)?;
    after_setup();
    fleet.setup = false;
    // The outage, then the restart; stop once everyone is back or an hour after it.
    fleet.outage(t0);
    fleet.run_until(up_at.saturating_add(3_600_000_000_000))?;

    let reconnected = fleet.reconnect_times.len() as u32;
    let times = &fleet.reconnect_times;
    let time_to = [50u64, 99, 100].map(|pct| {
        let k = (u64::from(n) * pct).div_ceil(100) as usize;
        (k >= 1 && k <= times.len())
            .then(|| Duration::from_nanos(times[k - 1].saturating_sub(up_at)))
    });
    let outage_buckets = fleet.bucket_of(up_at.saturating_sub(1)) + 1;
    let per_s = 1.0 / config.bucket.as_secs_f64();
    let peak_outage = fleet
        .attempts
        .iter()
        .take(outage_buckets)
        .max()
        .copied()
        .unwrap_or(0);
    let mut connected_curve = fleet.connected_curve;
    let len = connected_curve.len().max(fleet.attempts.len());
    let last = connected_curve.last().copied().unwrap_or(0);
    connected_curve.resize(len, last);
    let mut attempts_curve = fleet.attempts;
    attempts_curve.resize(len, 0);
    Ok(StormResult {
        policy,
        outage_attempts: fleet.outage_attempts,
        attempts: fleet.total_attempts,
        peak_outage_attempts_per_s: f64::from(peak_outage) * per_s,
        peak_accepts_per_s: peak_per_second(&fleet.server.accepts),
        refused_after_restart: fleet.refused_after_restart,
        refused: fleet.refused,
        reconnected,
        time_to,
        attempts_curve,
        connected_curve,
        machine_steps: fleet.steps,
    })
}

/// Most accepts in any 100 ms window, times ten (the benchmark's measure).
fn peak_per_second(accepts: &[Nanos]) -> u64 {
    let window = 100_000_000;
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..accepts.len() {
        while accepts[hi] - accepts[lo] >= window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64 * 10
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not reached".to_owned(), |d| {
        format!("{:.2}", d.as_secs_f64())
    })
}

/// Groups digits by thousands: `1,000,000`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The text table (Markdown), the same for the same seed and parameters.
pub fn table(config: &StormConfig, results: &[StormResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storm: {} clients, kill {} ms then outage {:.1} s, accept rate {}/s, backlog {}, rtt {} µs, base delay {:.3} s, seed {}",
        thousands(u64::from(config.clients)),
        config.kill_time.as_millis(),
        config.outage.as_secs_f64(),
        thousands(u64::from(config.accept_rate)),
        config.backlog,
        config.rtt.as_micros(),
        config.base.as_secs_f64(),
        config.seed
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| policy | attempts during outage | attempts/s during outage (mean) | peak attempts/s during outage | peak accepts/s after restart | 50 % back, s | 99 % back, s | 100 % back, s | refused connects (after restart) | attempts in all |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    // As the benchmark: attempts from the first reset until the restart, over the nominal
    // outage.
    let outage = config.outage.as_secs_f64();
    for r in results {
        let mean = if outage > 0.0 {
            format!("{:.0}", r.outage_attempts as f64 / outage)
        } else {
            "-".to_owned()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} ({}) | {} |",
            r.policy,
            thousands(r.outage_attempts),
            mean,
            r.peak_outage_attempts_per_s,
            thousands(r.peak_accepts_per_s),
            secs(r.time_to[0]),
            secs(r.time_to[1]),
            secs(r.time_to[2]),
            thousands(r.refused),
            thousands(r.refused_after_restart),
            thousands(r.attempts),
        );
    }
    let _ = writeln!(out);
    for r in results {
        let _ = writeln!(out, "- {}: {}", r.policy, r.policy.describe());
    }
    out
}

const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// The picture: connected clients (top) and attempts per second (middle) over time, one
/// line per policy, and (bottom) connected clients again against the time since the
/// restart on a logarithmic axis, with each policy's 99 % point marked, so that recoveries
/// of 100 s and of 2,000 s can both be read (issue 22). An SVG document. Deterministic: the same results give the same
/// bytes.
pub fn svg(config: &StormConfig, results: &[StormResult]) -> String {
    let (w, h) = (960.0f64, 1070.0f64);
    let (left, right) = (90.0, 200.0);
    let plot_w = w - left - right;
    let panel_h = 260.0;
    let tops = [50.0, 50.0 + panel_h + 90.0];
    let bucket = config.bucket.as_secs_f64();
    let buckets = results
        .iter()
        .map(|r| r.connected_curve.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let down = (config.kill_time + config.outage).as_secs_f64();
    let t_end = (buckets as f64 * bucket).max(down + bucket);
    let x = |t: f64| left + plot_w * t / t_end;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="24" font-size="13">Reconnect storm: {} clients, server down {:.1} s, accepts ≤ {}/s, backlog {}, base delay {:.3} s, seed {}</text>"#,
        thousands(u64::from(config.clients)),
        config.outage.as_secs_f64(),
        thousands(u64::from(config.accept_rate)),
        config.backlog,
        config.base.as_secs_f64(),
        config.seed
    );
    let per_s = 1.0 / bucket;
    let connected: Vec<Vec<f64>> = results
        .iter()
        .map(|r| r.connected_curve.iter().map(|&c| f64::from(c)).collect())
        .collect();
    let attempts: Vec<Vec<f64>> = results
        .iter()
        .map(|r| {
            r.attempts_curve
                .iter()
                .map(|&a| f64::from(a) * per_s)
                .collect()
        })
        .collect();
    let panels = [
        ("connected clients", connected),
        ("connect attempts per second", attempts),
    ];
    for ((title, series), top) in panels.iter().zip(tops) {
        let max = series.iter().flatten().copied().fold(1.0f64, f64::max);
        let y = |v: f64| top + panel_h - panel_h * v / max;
        let _ = writeln!(
            out,
            r##"<text x="{left}" y="{}" font-size="13">{title}</text>"##,
            top - 8.0
        );
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#888"/>"##
        );
        // The outage, shaded.
        let _ = writeln!(
            out,
            r##"<rect x="{left}" y="{top}" width="{:.1}" height="{panel_h}" fill="#eee"/>"##,
            x(down) - left
        );
        for k in 0..=4 {
            let v = max * f64::from(k) / 4.0;
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left - 6.0,
                y(v) + 4.0,
                thousands(v.round() as u64)
            );
        }
        for k in 0..=10 {
            let t = t_end * f64::from(k) / 10.0;
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.1}</text>"##,
                x(t),
                top + panel_h + 16.0,
                t
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the server went down (shaded: down)</text>"##,
            left + plot_w / 2.0,
            top + panel_h + 34.0
        );
        for (i, s) in series.iter().enumerate() {
            // At most about 1,200 points a line: each point stands for `group` buckets and
            // shows their largest value, so no peak is lost.
            let group = s.len().div_ceil(1200).max(1);
            let mut points = String::new();
            for (g, chunk) in s.chunks(group).enumerate() {
                let v = chunk.iter().copied().fold(f64::MIN, f64::max);
                let t = ((g * group + chunk.len()) as f64) * bucket;
                let _ = write!(points, "{:.1},{:.1} ", x(t), y(v));
            }
            let _ = writeln!(
                out,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"##,
                COLOURS[i % COLOURS.len()],
                points.trim_end()
            );
        }
    }
    log_panel(&mut out, config, results, tops[1] + panel_h + 90.0, panel_h);
    for (i, r) in results.iter().enumerate() {
        let ly = 60.0 + 22.0 * i as f64;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            out,
            r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"##,
            lx + 24.0,
            COLOURS[i % COLOURS.len()],
            lx + 30.0,
            ly + 4.0,
            r.policy
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The third panel of [`svg`]: connected clients against the time since the restart, on a
/// log axis from one bucket to the end of the run, with each policy's 99 % point.
fn log_panel(
    out: &mut String,
    config: &StormConfig,
    results: &[StormResult],
    top: f64,
    panel_h: f64,
) {
    let (left, plot_w) = (90.0, 960.0 - 90.0 - 200.0);
    let bucket = config.bucket.as_secs_f64();
    let restart = (config.kill_time + config.outage).as_secs_f64();
    let buckets = results
        .iter()
        .map(|r| r.connected_curve.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let lo = bucket.max(1e-6);
    let hi = (buckets as f64 * bucket - restart).max(lo * 10.0);
    let (llo, lhi) = (lo.log10(), hi.log10());
    let x = |t: f64| left + plot_w * (t.max(lo).log10() - llo) / (lhi - llo);
    let max = f64::from(config.clients.max(1));
    let y = |v: f64| top + panel_h - panel_h * v / max;
    let _ = writeln!(
        out,
        r##"<text x="{left}" y="{}" font-size="13">connected clients after the restart (log time axis; dot: 99 % back)</text>"##,
        top - 8.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#888"/>"##
    );
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y(v) + 4.0,
            thousands(v.round() as u64)
        );
    }
    // Ticks at 1, 2 and 5 times each power of ten within the range.
    let mut decade = 10f64.powf(llo.floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t < lo * 0.999 || t > hi * 1.001 {
                continue;
            }
            let label = if t >= 1.0 {
                thousands(t.round() as u64)
            } else {
                format!("{t}")
            };
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{label}</text>"##,
                x(t),
                top + panel_h,
                top + panel_h + 16.0
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the server came back (log scale)</text>"##,
        left + plot_w / 2.0,
        top + panel_h + 34.0
    );
    for (i, r) in results.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // The bucket ending at `t` since the restart; the log axis gives each decade the
        // same width, so keep about 300 points a decade, each the largest of its buckets.
        let first = ((restart / bucket).floor() as usize).min(r.connected_curve.len());
        let mut points = String::new();
        let mut last_x = f64::MIN;
        let mut best = f64::MIN;
        for (k, &c) in r.connected_curve.iter().enumerate().skip(first) {
            let t = (k + 1) as f64 * bucket - restart;
            if t <= 0.0 {
                continue;
            }
            best = best.max(f64::from(c));
            let px = x(t);
            if px - last_x >= plot_w / ((lhi - llo) * 300.0) || k + 1 == r.connected_curve.len() {
                let _ = write!(points, "{px:.1},{:.1} ", y(best));
                last_x = px;
                best = f64::MIN;
            }
        }
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"##,
            points.trim_end()
        );
        if let Some(t99) = r.time_to[1] {
            let t = t99.as_secs_f64();
            let _ = writeln!(
                out,
                r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"><title>{}: 99 % back {t:.1} s after the restart</title></circle>"##,
                x(t),
                y(max * 0.99),
                r.policy
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calendar_queue_pops_in_the_order_a_binary_heap_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut queue = CalendarQueue::new();
        let mut heap = std::collections::BinaryHeap::new();
        let mut now = 0u64;
        for round in 0..20_000u32 {
            // Push a few keys at or after the last popped time, then pop one.
            for _ in 0..(rng.next_u64() % 3) {
                let due = Due {
                    // Mostly within seconds, sometimes past the ring (20 min ahead).
                    at: now
                        + if rng.next_u64() % 16 == 0 {
                            rng.next_u64() % 1_200_000_000_000
                        } else {
                            rng.next_u64() % 5_000_000_000
                        },
                    client: (rng.next_u64() % 1000) as u32,
                    kind: [Kind::Refused, Kind::Connected, Kind::Wake][round as usize % 3],
                };
                queue.push(due.key());
                heap.push(std::cmp::Reverse(due));
            }
            let a = queue.pop().map(Due::from_key);
            let b = heap.pop().map(|r| r.0);
            assert_eq!(a, b);
            if let Some(d) = a {
                now = d.at;
            }
        }
        while let Some(std::cmp::Reverse(b)) = heap.pop() {
            assert_eq!(queue.pop().map(Due::from_key), Some(b));
        }
        assert_eq!(queue.pop(), None);
    }
}
