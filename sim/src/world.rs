//! The simulated world: one `u64` seed fixes its settings (swarm testing: the seed picks the
//! fault rates too) and every event on its virtual clock.
//!
//! A run: build the machine, then pop world events from a queue ordered by
//! `(time, sequence)` — results of lookups and connects, handlers finishing, connections
//! dropping, servers going up and down, the catalog changing, the user's `close()`, R11 and
//! R12 calls, stale and duplicate inputs — feed each as one input, drain the effects into
//! the world, and check the step with the [`Checker`]. After an active phase (a step budget
//! or a time horizon from the settings) the user closes; the close must finish within a
//! step cap and before the world runs out of events, or the run fails for liveness.
//!
//! ```
//! use persistent_connection_sim::world::{run_seed, RunOptions};
//!
//! let a = run_seed(7, &RunOptions::default()).unwrap();
//! let b = run_seed(7, &RunOptions::default()).unwrap();
//! assert_eq!(a.trace_hash, b.trace_hash); // I9
//! assert!(a.totals.steps > 0);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};
use persistent_connection_core::{
    AttemptId, Config, ConnId, Effect, EventId, HandoverReason, Input, Instant, Jitter, Machine,
    RetryDelay, RetryNowReason, RetryPolicy,
};

use crate::checker::{Checker, CheckerSettings, Coverage, Invariant, Violation};
/// The world's vocabulary lives in [`crate::model`]; it is re-exported here so that
/// `world::Addr` and the like keep working.
pub use crate::model::{Addr, Conn, SimEffect, SimError, SimInput, SimMachine};
use crate::mutants::{Mutant, MutantMachine};
use crate::trace::Trace;

/// The retry policy a seed picked, in a form that can build both the machine's policy and
/// the checker's twin of it.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyChoice {
    /// [`RetryDelay::Constant`].
    Constant(Duration),
    /// [`RetryDelay::Exponential`].
    Exponential {
        /// Initial delay.
        initial: Duration,
        /// Growth per failure.
        multiplier: f64,
        /// Cap.
        max: Duration,
    },
    /// [`RetryDelay::Custom`]: cycles through `table`, offset by the failure count.
    Custom(Vec<Duration>),
}

impl PolicyChoice {
    fn delay(&self) -> RetryDelay {
        match self {
            PolicyChoice::Constant(d) => RetryDelay::constant(*d),
            PolicyChoice::Exponential {
                initial,
                multiplier,
                max,
            } => RetryDelay::exponential(*initial, *multiplier, *max),
            PolicyChoice::Custom(table) => {
                let table = table.clone();
                let mut calls = 0usize;
                RetryDelay::from_fn(move |failures| {
                    calls += 1;
                    table[(calls + failures as usize) % table.len()]
                })
            }
        }
    }

    /// The checker's twin: the same policy written out here, independently of the core's
    /// `RetryDelay` code (a bug there must not hide by answering both sides).
    fn twin(&self) -> RetryDelay {
        let choice = self.clone();
        let mut calls = 0usize;
        RetryDelay::Custom(Box::new(move |failures| match &choice {
            PolicyChoice::Constant(d) => *d,
            PolicyChoice::Exponential {
                initial,
                multiplier,
                max,
            } => twin_exponential(*initial, *multiplier, *max, failures),
            PolicyChoice::Custom(table) => {
                calls += 1;
                table[(calls + failures as usize) % table.len()]
            }
        }))
    }
}

/// `initial · multiplier^failures` capped at `max`, multipliers below 1 taken as 1, in the
/// floating-point steps the core documents (exponentiation by squaring, then seconds).
fn twin_exponential(initial: Duration, multiplier: f64, max: Duration, failures: u32) -> Duration {
    let m = if multiplier.is_nan() || multiplier < 1.0 {
        1.0
    } else {
        multiplier
    };
    let (mut factor, mut power, mut n) = (1.0f64, m, failures);
    while n != 0 {
        if n % 2 == 1 {
            factor *= power;
        }
        power *= power;
        n /= 2;
    }
    let secs = initial.as_secs_f64() * factor;
    let d = if secs.is_nan() {
        initial
    } else {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    };
    if d < max { d } else { max }
}

/// Latency and fault rates of one kind of operation. Percentages are of operations.
#[derive(Clone, Debug, PartialEq)]
pub struct OpFaults {
    /// How often it fails.
    pub fail_pct: u32,
    /// How often it never answers.
    pub hang_pct: u32,
    /// Latency is uniform in `[0, latency_max]`.
    pub latency_max: Duration,
}

/// Everything a seed decides about its world (swarm testing).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The seed.
    pub seed: u64,
    /// Base delay policy.
    pub policy: PolicyChoice,
    /// Jitter.
    pub jitter: Jitter,
    /// Number of servers in the catalog.
    pub servers: u8,
    /// Mean time between catalog changes (`None`: never changes).
    pub catalog_change_every: Option<Duration>,
    /// Mean up time and mean down time of a server (`None`: always up).
    pub server_flaps: Option<(Duration, Duration)>,
    /// Lookups.
    pub lookup: OpFaults,
    /// Connects (to a server that is up; a down server refuses).
    pub connect: OpFaults,
    /// How often a cancelled connect still delivers its connection (a late connection).
    pub late_conn_pct: u32,
    /// How often a connection is short-lived (else long-lived).
    pub short_conn_pct: u32,
    /// Short lifetimes are uniform in `[0, short_life_max]`.
    pub short_life_max: Duration,
    /// Long lifetimes are uniform in `[0, long_life_max]`.
    pub long_life_max: Duration,
    /// `on_event` handlers take uniform `[0, handler_max]`.
    pub handler_max: Duration,
    /// Closing a connection takes uniform `[0, close_max]`.
    pub close_max: Duration,
    /// When the user calls `close()` (`None`: only at the end).
    pub close_at: Option<Duration>,
    /// When the user calls `close_when_current_connection_is_closed()` (R11).
    pub r11_at: Option<Duration>,
    /// How often a connect's context is used to `abort` (R12) while it runs.
    pub abort_pct: u32,
    /// Mean time between stale or duplicate inputs (`None`: none).
    pub noise_every: Option<Duration>,
    /// The active phase ends at this time...
    pub horizon: Duration,
    /// ...or after this many steps, whichever comes first; then the user closes.
    pub active_steps: u64,
}

fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    if n == 0 { 0 } else { rng.next_u64() % n }
}

fn chance(rng: &mut ChaCha8Rng, pct: u32) -> bool {
    below(rng, 100) < u64::from(pct)
}

fn upto(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(below(rng, micros.saturating_add(1)))
}

fn one_of<T: Clone>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[below(rng, items.len() as u64) as usize].clone()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Settings {
    /// The settings seed `seed` picks.
    pub fn from_seed(seed: u64) -> Settings {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let r = &mut r;
        let delays = [Duration::ZERO, ms(1), ms(50), ms(300), ms(1000), ms(10_000)];
        let policy = match below(r, 8) {
            0..=3 => PolicyChoice::Constant(one_of(r, &delays)),
            4 | 5 => PolicyChoice::Exponential {
                initial: one_of(r, &delays[..5]),
                multiplier: one_of(r, &[1.0, 1.6, 2.0, 0.5]),
                max: one_of(r, &[ms(100), ms(2000), ms(120_000)]),
            },
            6 => PolicyChoice::Custom((0..1 + below(r, 4)).map(|_| upto(r, ms(800))).collect()),
            _ => PolicyChoice::Constant(if chance(r, 50) { Duration::MAX } else { ms(2) }),
        };
        let jitter = match below(r, 4) {
            0 => Jitter::NonRandom,
            1 => Jitter::Percent(below(r, 101) as u8),
            _ => Jitter::Percent(30),
        };
        let latency = [Duration::ZERO, ms(1), ms(20), ms(200), ms(2000)];
        let op = |r: &mut ChaCha8Rng| OpFaults {
            fail_pct: one_of(r, &[0, 5, 20, 50, 90]),
            hang_pct: one_of(r, &[0, 0, 1, 5]),
            latency_max: one_of(r, &latency),
        };
        let lookup = op(r);
        let connect = op(r);
        let short_life_max = one_of(r, &[Duration::ZERO, ms(5), ms(100), ms(1000)]);
        Settings {
            seed,
            policy,
            jitter,
            servers: 1 + below(r, 4) as u8,
            catalog_change_every: chance(r, 60).then(|| one_of(r, &[ms(50), ms(1000), ms(20_000)])),
            server_flaps: chance(r, 60).then(|| {
                (
                    one_of(r, &[ms(100), ms(2000), ms(60_000)]),
                    one_of(r, &[ms(10), ms(500), ms(10_000)]),
                )
            }),
            lookup,
            connect,
            late_conn_pct: one_of(r, &[0, 50, 100]),
            short_conn_pct: one_of(r, &[0, 30, 70, 100]),
            short_life_max,
            long_life_max: one_of(r, &[ms(10_000), ms(600_000)]),
            handler_max: one_of(r, &[Duration::ZERO, ms(1), ms(30), ms(500), ms(5000)]),
            close_max: one_of(r, &[Duration::ZERO, ms(1), ms(50), ms(1000)]),
            close_at: chance(r, 40).then(|| upto(r, ms(60_000))),
            r11_at: chance(r, 25).then(|| upto(r, ms(60_000))),
            abort_pct: one_of(r, &[0, 0, 2, 10]),
            noise_every: chance(r, 30).then(|| one_of(r, &[ms(300), ms(5000), ms(60_000)])),
            horizon: one_of(r, &[ms(5_000), ms(60_000), ms(600_000)]),
            active_steps: 50 + below(r, 1500),
        }
    }

    /// The machine's configuration.
    pub fn config(&self) -> Config {
        Config {
            seed: self.seed,
            retry: RetryPolicy {
                delay: self.policy.delay(),
                jitter: self.jitter,
            },
        }
    }

    /// The checker's settings, with an exact, independently written twin of the
    /// base-delay policy.
    pub fn checker_settings(&self) -> CheckerSettings {
        CheckerSettings::jitter_only(self.jitter).with_delay(self.policy.twin())
    }
}

/// Counts over a run (or many).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Inputs fed (one step each), plus the construction step.
    pub steps: u64,
    /// Events emitted.
    pub events: u64,
    /// Attempts begun.
    pub attempts: u64,
    /// Connections that became current.
    pub connections: u64,
    /// Late connections closed at once (R8).
    pub late_connections: u64,
    /// Connections closed (their `Closed` input fed).
    pub conn_closes: u64,
    /// Persistent-connection closes finished (`CloseFinished`).
    pub closes: u64,
    /// Simulated time covered.
    pub sim_time: Duration,
    /// The situations the checker saw.
    pub coverage: Coverage,
}

impl Totals {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Totals) {
        self.steps += other.steps;
        self.events += other.events;
        self.attempts += other.attempts;
        self.connections += other.connections;
        self.late_connections += other.late_connections;
        self.conn_closes += other.conn_closes;
        self.closes += other.closes;
        self.sim_time = self.sim_time.saturating_add(other.sim_time);
        self.coverage.add(&other.coverage);
    }
}

/// How to run a seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Keep the trace text (else only its hash).
    pub keep_trace: bool,
    /// Drive a deliberately wrong machine instead of the real one.
    pub mutant: Option<Mutant>,
    /// Add the planned changes of a service's life ([`Planned`]): copies withdrawn,
    /// drained, restarted on a new address, added, catalog entries that flap, the user's
    /// handover and retry now (docs/behaviour.md R15–R17). Off, the seed's world is the
    /// one it always was, trace for trace.
    pub planned: bool,
}

/// The planned changes a seed's world goes through when [`RunOptions::planned`] is set,
/// drawn from a stream of their own so that the seed's [`Settings`] stay as they are.
/// Each is what a driver of the persistent connection does when the catalog or the user
/// says so (R15–R17).
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The grace period of every handover.
    pub grace: Duration,
    /// Mean time between rolling restarts of a copy: withdrawn (the driver asks for a
    /// handover if the current connection goes there), then after `drain` stopped and
    /// started again on a new address.
    pub restart_every: Option<Duration>,
    /// How long a withdrawn copy keeps serving before it stops.
    pub drain: Duration,
    /// Mean time between flaps of a catalog entry: withdrawn, then listed again soon
    /// (the driver cancels the handover it asked for, or retries now).
    pub flap_every: Option<Duration>,
    /// Mean time between new copies being added (the driver retries now if waiting).
    pub scale_out_every: Option<Duration>,
    /// A maximum connection age: a handover when the current connection reaches it.
    pub max_age: Option<Duration>,
    /// Mean time between the user's `handover()` calls.
    pub user_handover_every: Option<Duration>,
    /// Mean time between the user's `retry_now()` calls.
    pub user_retry_now_every: Option<Duration>,
    /// The driver tells the machine when a lost connection's copy is not the only one
    /// listed (R17).
    pub another_copy: bool,
}

impl Planned {
    /// The planned changes of seed `seed` (a stream of its own).
    pub fn from_seed(seed: u64) -> Planned {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x504c_414e_4e45_4421);
        let r = &mut r;
        Planned {
            grace: one_of(r, &[Duration::ZERO, ms(1), ms(50), ms(2000)]),
            restart_every: chance(r, 70).then(|| one_of(r, &[ms(200), ms(3000), ms(30_000)])),
            drain: one_of(r, &[Duration::ZERO, ms(20), ms(1000)]),
            flap_every: chance(r, 40).then(|| one_of(r, &[ms(20), ms(500), ms(10_000)])),
            scale_out_every: chance(r, 40).then(|| one_of(r, &[ms(500), ms(20_000)])),
            max_age: chance(r, 40).then(|| one_of(r, &[ms(5), ms(300), ms(10_000)])),
            user_handover_every: chance(r, 40).then(|| one_of(r, &[ms(100), ms(5000)])),
            user_retry_now_every: chance(r, 40).then(|| one_of(r, &[ms(30), ms(2000)])),
            another_copy: chance(r, 70),
        }
    }
}

/// A run that passed.
#[derive(Debug)]
pub struct RunReport {
    /// The world.
    pub settings: Settings,
    /// Counts.
    pub totals: Totals,
    /// FNV-1a of the trace (I9).
    pub trace_hash: u64,
    /// The trace, if kept.
    pub trace: Option<String>,
}

/// A run that failed: the violation, the world, and every input fed up to it.
#[derive(Debug)]
pub struct Failure {
    /// What broke.
    pub violation: Violation,
    /// The world.
    pub settings: Settings,
    /// Every input fed, with its time, up to and including the failing step.
    pub inputs: Vec<(Instant, SimInput)>,
    /// The trace, if kept.
    pub trace: Option<String>,
    /// The planned changes, if the run had them ([`RunOptions::planned`]).
    pub planned: Option<Planned>,
}

/// Seeds the binary runs by default; every mutant must be caught within them.
pub const DEFAULT_SEEDS: u64 = 2000;

/// Steps allowed between the user's final `close()` and `CloseFinished`.
pub const CLOSE_STEP_CAP: u64 = 5_000;

// ---------------------------------------------------------------------------------------
// The world: its state, and one operation at a time.

/// Something that watches every step of a [`World`] besides its built-in [`Checker`] (the
/// fuzz harness's own oracle does). Every method defaults to watching nothing.
pub trait Watch<M> {
    /// `input` is about to be fed at `now` to `machine` (still in the state before it).
    fn on_input(&mut self, now: Instant, input: &SimInput, machine: &M) {
        let _ = (now, input, machine);
    }
    /// The machine produced `effect` at `now`.
    fn on_effect(&mut self, now: Instant, effect: &SimEffect) {
        let _ = (now, effect);
    }
    /// All effects of the step at `now` are drained.
    fn after_step(&mut self, now: Instant, machine: &M) {
        let _ = (now, machine);
    }
}

/// Watches nothing.
impl<M> Watch<M> for () {}

/// A watcher lent to a run, kept by its owner afterwards.
impl<M, T: Watch<M> + ?Sized> Watch<M> for &mut T {
    fn on_input(&mut self, now: Instant, input: &SimInput, machine: &M) {
        (**self).on_input(now, input, machine);
    }
    fn on_effect(&mut self, now: Instant, effect: &SimEffect) {
        (**self).on_effect(now, effect);
    }
    fn after_step(&mut self, now: Instant, machine: &M) {
        (**self).after_step(now, machine);
    }
}

/// Something the world now owes the machine, as a step left it: the seeded driver
/// schedules each one on the virtual clock; an operation driver (the fuzzer) picks among
/// what is pending with [`WorldOp`]s instead. See [`World::take_owed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owed {
    /// An `on_event` handler runs: `EventHandled` for this event.
    Handler(EventId),
    /// A lookup is in flight.
    Lookup(AttemptId),
    /// A connect to this address is in flight.
    Connect(AttemptId, Addr),
    /// This attempt was cancelled; its lookup or connect may still answer late.
    Cancelled(AttemptId),
    /// This connection (the world's number) became current; it lives until it drops.
    Connected(u32),
    /// This connection (the world's number) is closing; its `Closed` is owed.
    Closing(u32),
}

/// One thing that happens in the world, for drivers that choose what happens next (the
/// fuzzer's `world_ops` target) rather than drawing it from a seed. `which` picks among the
/// candidates in a fixed order, wrapping; an operation without a candidate does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldOp {
    /// The running `on_event` handler finishes.
    FinishHandler,
    /// The lookup in flight answers: the catalog's address, or with `Some(f)` a failure
    /// (`f` even: [`SimError::NoSuchHost`], odd: [`SimError::LookupTimedOut`]).
    LookupDone {
        /// Fail instead.
        fail: Option<u8>,
    },
    /// The connect in flight answers: a connection if its server is up, else
    /// [`SimError::Refused`]; with `Some(f)` a failure (`f` even:
    /// [`SimError::ConnectTimedOut`], odd: [`SimError::Reset`]).
    ConnectDone {
        /// Fail instead.
        fail: Option<u8>,
    },
    /// A cancelled attempt's connect delivers after all (R8: a connection that arrives
    /// then must be closed at once).
    LateConnection {
        /// Which cancelled connect.
        which: u8,
    },
    /// A cancelled attempt's lookup or connect reports a failure after all.
    LateFailure {
        /// Which cancelled attempt.
        which: u8,
    },
    /// The peer drops an open connection: it starts closing.
    PeerDrop {
        /// Which open connection.
        which: u8,
    },
    /// A connection that is closing finishes closing (`Closed` is fed).
    CloseDone {
        /// Which closing connection.
        which: u8,
    },
    /// A server goes down (its connections drop) or comes back up.
    ServerFlip {
        /// Which server (wrapping over the servers).
        server: u8,
    },
    /// The catalog now gives this server's address.
    CatalogChange {
        /// Which server (wrapping over the servers).
        server: u8,
    },
    /// Time moves on (saturating).
    Sleep(Duration),
    /// Time moves on to the machine's retry timer, which fires.
    TimerFires,
    /// An input fed earlier is fed again (never a connection: those come once).
    Duplicate {
        /// How far back, among the last 32 inputs.
        back: u8,
    },
    /// The user calls `close()`.
    Close,
    /// The user calls `close_when_current_connection_is_closed()` (R11).
    CloseWhenCurrent,
    /// The user calls `abort(Aborted)` through the connect context (R12).
    Abort,
    /// The catalog stops listing a server (wrapping); if the current connection goes
    /// there, the driver asks for a handover (R15, reason `Withdrawn`).
    Withdraw {
        /// Which server.
        server: u8,
    },
    /// The catalog lists a server again (wrapping): the driver cancels the handover it
    /// asked for when that server was withdrawn, retries now if not connected (R16), or
    /// fails back to server 0 (R15).
    List {
        /// Which server.
        server: u8,
    },
    /// A server (wrapping) is withdrawn, stops (its connections drop) and starts again on
    /// a new address, which is listed (a rolling restart).
    RestartElsewhere {
        /// Which server.
        server: u8,
    },
    /// A new server is added and listed (a scale-out).
    ScaleOut,
    /// The user (or the connection's maximum age) asks for a handover (R15).
    Handover {
        /// Which reason (wrapping over the reasons).
        reason: u8,
        /// Its grace, in milliseconds.
        grace_ms: u16,
    },
    /// The cause of the pending handover no longer holds (R15).
    CancelHandover,
    /// The user asks to retry now (R16).
    RetryNow,
}

#[derive(Debug)]
struct WorldConn {
    /// The machine's id, once the connection was handed in.
    machine_id: Option<ConnId>,
    server: Addr,
    closing: bool,
}

/// The simulated world around one machine: servers that go down and up, a catalog that
/// moves, lookups and connects in flight, cancelled attempts that may still answer,
/// connections that drop and take time to close, the running event handler, the user, a
/// virtual clock. Every input it feeds is traced, checked by the simulator's [`Checker`]
/// (and any extra [`Watch`]) before and after the machine's step, and recorded.
///
/// Two drivers share it: the seeded runs ([`run_seed`]), which schedule what the world
/// owes ([`Owed`]) on an event queue, and the fuzzer, which picks each next thing with a
/// [`WorldOp`] and ends with [`World::wind_down`].
///
/// ```
/// use std::time::Duration;
/// use persistent_connection_core::{Config, Machine, RetryPolicy};
/// use persistent_connection_sim::checker::CheckerSettings;
/// use persistent_connection_sim::trace::Trace;
/// use persistent_connection_sim::world::{World, WorldOp};
///
/// let config = Config { seed: 1, retry: RetryPolicy::constant(Duration::from_secs(1)) };
/// let settings = CheckerSettings::for_policy(&config.retry);
/// let mut w = World::new(Machine::new(config), settings, 2, Trace::new(false), ()).unwrap();
/// // AttemptingToConnect is handled, the lookup answers, ObtainedAddress is handled, the
/// // connect answers, Connected is handled.
/// for op in [WorldOp::FinishHandler, WorldOp::LookupDone { fail: None }, WorldOp::FinishHandler,
///            WorldOp::ConnectDone { fail: None }, WorldOp::FinishHandler] {
///     w.apply(op).unwrap();
/// }
/// assert_eq!(w.totals().connections, 1);
/// w.wind_down().unwrap(); // close finishes, nothing is left open (I6, I7)
/// assert!(w.is_close_finished());
/// ```
pub struct World<M, W = ()> {
    machine: M,
    checker: Checker<Addr, Conn, SimError>,
    watch: W,
    trace: Trace,
    now: Instant,
    up: Vec<bool>,
    catalog: Addr,
    /// Which servers the catalog lists (R15–R17; all, unless planned changes withdrew some).
    listed: Vec<bool>,
    /// Planned changes: a handover's lookup avoids the current connection's server, and
    /// the driver reacts to the catalog (R15–R17).
    planned: bool,
    /// The grace of the handovers the driver asks for.
    grace: Duration,
    /// The driver sends retry now when a lost connection's copy is not the only one
    /// listed (R17).
    another_copy: bool,
    /// The server whose withdrawal made the driver ask for the pending handover.
    withdrawn: Option<Addr>,
    /// The server the lookup in flight must avoid: the current connection's, for a
    /// handover's lookup (R15).
    avoid: Option<Addr>,
    handler: Option<EventId>,
    lookup: Option<AttemptId>,
    connect: Option<(AttemptId, Addr)>,
    /// Cancelled attempts not answered yet: a lookup (`None`) or a connect to an address.
    cancelled: Vec<(AttemptId, Option<Addr>)>,
    conns: BTreeMap<u32, WorldConn>,
    next_conn: u32,
    owed: Vec<Owed>,
    /// The last inputs fed (no connections), for [`WorldOp::Duplicate`].
    recent: VecDeque<SimInput>,
    old_events: Vec<EventId>,
    old_attempts: Vec<AttemptId>,
    closed_conns: Vec<ConnId>,
    inputs: Vec<(Instant, SimInput)>,
    totals: Totals,
}

impl<M, W> fmt::Debug for World<M, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("now", &self.now)
            .field("up", &self.up)
            .field("catalog", &self.catalog)
            .field("handler", &self.handler)
            .field("lookup", &self.lookup)
            .field("connect", &self.connect)
            .field("cancelled", &self.cancelled)
            .field("conns", &self.conns)
            .finish_non_exhaustive()
    }
}

struct Time(Instant);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.since_origin();
        write!(f, "{:>7}.{:06}", d.as_secs(), d.subsec_micros())
    }
}

/// Steps [`World::wind_down`] allows between the user's `close()` and the world having
/// answered everything it owes.
pub const WIND_DOWN_CAP: usize = 10_000;

/// The most servers a world grows to by restarts on new addresses and scale-outs.
pub const MAX_SERVERS: usize = 16;

fn nth<T>(items: impl Iterator<Item = T> + Clone, which: u8) -> Option<T> {
    let n = items.clone().count();
    if n == 0 {
        None
    } else {
        items.into_iter().nth(usize::from(which) % n)
    }
}

impl<M: SimMachine<Addr, Conn, SimError>, W: Watch<M>> World<M, W> {
    /// A world of `servers` servers (at least one), all up, around `machine` (just built,
    /// at time zero): drains and checks the construction step. `trace` may already hold a
    /// header line.
    pub fn new(
        machine: M,
        checker: CheckerSettings,
        servers: u8,
        trace: Trace,
        watch: W,
    ) -> Result<Self, Violation> {
        let mut w = World {
            machine,
            checker: Checker::new(checker),
            watch,
            trace,
            now: Instant::ZERO,
            up: vec![true; usize::from(servers.max(1))],
            catalog: Addr(0),
            listed: vec![true; usize::from(servers.max(1))],
            planned: false,
            grace: Duration::ZERO,
            another_copy: false,
            withdrawn: None,
            avoid: None,
            handler: None,
            lookup: None,
            connect: None,
            cancelled: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 0,
            owed: Vec::new(),
            recent: VecDeque::with_capacity(32),
            old_events: Vec::new(),
            old_attempts: Vec::new(),
            closed_conns: Vec::new(),
            inputs: Vec::new(),
            totals: Totals::default(),
        };
        w.totals.steps += 1;
        w.trace.line(format_args!("{:>6} {} new", 0, Time(w.now)));
        w.drain()?;
        Ok(w)
    }

    /// Turns on the planned changes of a service's life (R15–R17): a handover's lookup
    /// (one made while a connection is current) answers a listed server other than the
    /// current connection's, or fails with [`SimError::NoSuchHost`]; an ordinary lookup
    /// answers the catalog's server if listed, else the next listed one; and the world's
    /// driver tells the machine what its catalog sees: a withdrawn current copy (a handover
    /// with `grace`), a copy listed again (cancel that handover, retry now, fail back),
    /// another copy listed when a connection is lost (R17). Without any withdrawal or
    /// handover, the world answers as it always did.
    pub fn set_planned(&mut self, grace: Duration) {
        self.planned = true;
        self.grace = grace;
        self.another_copy = true;
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Steps checked so far (0 is the construction).
    pub fn step(&self) -> u64 {
        self.checker.step()
    }

    /// The machine.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The extra watcher.
    pub fn watch(&self) -> &W {
        &self.watch
    }

    /// Whether the machine's close has finished (`CloseFinished` was seen).
    pub fn is_close_finished(&self) -> bool {
        self.checker.is_close_finished()
    }

    /// Counts so far (coverage is filled in by [`World::finish`]).
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The trace's hash so far (I9).
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Whether `server` is up.
    pub fn is_up(&self, server: Addr) -> bool {
        self.up.get(usize::from(server.0)).copied().unwrap_or(false)
    }

    /// Whether `attempt` was cancelled and its lookup or connect has not answered yet.
    pub fn is_cancelled(&self, attempt: AttemptId) -> bool {
        self.cancelled.iter().any(|(a, _)| *a == attempt)
    }

    /// What the steps since the last call left owed, in order (see [`Owed`]).
    pub fn take_owed(&mut self) -> std::vec::Drain<'_, Owed> {
        self.owed.drain(..)
    }

    fn fail(&self, invariant: Invariant, message: String) -> Violation {
        Violation {
            invariant,
            step: self.checker.step(),
            now: self.now,
            message,
        }
    }

    /// Moves the clock to `t` (never back).
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
    }

    /// Feeds any input at all, stale and never-issued ones included (the seeded world's
    /// noise): traced, checked, recorded. A connection in it must come from
    /// [`World::new_conn`].
    pub fn feed(&mut self, input: SimInput) -> Result<(), Violation> {
        self.totals.steps += 1;
        let step = self.checker.step() + 1;
        self.trace
            .line(format_args!("{step:>6} {} < {input:?}", Time(self.now)));
        self.inputs.push((self.now, input.clone()));
        match &input {
            Input::Closed { conn } => self.closed_conns.push(*conn),
            Input::ConnectResult { result: Ok(_), .. } => {}
            _ => {
                if self.recent.len() == 32 {
                    self.recent.pop_front();
                }
                self.recent.push_back(input.clone());
            }
        }
        self.checker.on_input(self.now, &input)?;
        self.watch.on_input(self.now, &input, &self.machine);
        self.machine.handle(self.now, input);
        self.drain()
    }

    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(effect) = self.machine.poll_effect() {
            self.trace.line(format_args!("{:>23} {effect:?}", ">"));
            self.checker.on_effect(self.now, &effect)?;
            self.watch.on_effect(self.now, &effect);
            self.react(effect);
        }
        self.checker.after_step(self.now, &self.machine)?;
        self.watch.after_step(self.now, &self.machine);
        Ok(())
    }

    /// A new connection to `server`, known to the world from now on.
    pub fn new_conn(&mut self, server: Addr) -> Conn {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            WorldConn {
                machine_id: None,
                server,
                closing: false,
            },
        );
        Conn { id, server }
    }

    /// The world performs an effect.
    fn react(&mut self, effect: SimEffect) {
        match effect {
            Effect::Emit { id, .. } => {
                self.totals.events += 1;
                if self.old_events.len() < 64 {
                    self.old_events.push(id);
                }
                self.handler = Some(id);
                self.owed.push(Owed::Handler(id));
            }
            Effect::StartTimer { attempt, .. } => {
                self.totals.attempts += 1;
                if self.old_attempts.len() < 64 {
                    self.old_attempts.push(attempt);
                }
            }
            Effect::GetAddress { attempt } => {
                self.lookup = Some(attempt);
                // R15: a lookup while a connection is current is a handover's: the driver
                // asks the catalog for another copy.
                self.avoid = if self.planned {
                    self.current_server()
                } else {
                    None
                };
                self.owed.push(Owed::Lookup(attempt));
            }
            Effect::Connect {
                attempt, address, ..
            } => {
                self.connect = Some((attempt, address));
                self.owed.push(Owed::Connect(attempt, address));
            }
            Effect::CancelAttempt { attempt } => {
                if self.lookup == Some(attempt) {
                    self.lookup = None;
                    self.cancelled.push((attempt, None));
                    self.owed.push(Owed::Cancelled(attempt));
                }
                if let Some((a, address)) = self.connect
                    && a == attempt
                {
                    self.connect = None;
                    self.cancelled.push((attempt, Some(address)));
                    self.owed.push(Owed::Cancelled(attempt));
                }
            }
            Effect::BecameCurrent { conn, connection } => {
                self.totals.connections += 1;
                if let Some(c) = self.conns.get_mut(&connection.id) {
                    c.machine_id = Some(conn);
                }
                self.owed.push(Owed::Connected(connection.id));
            }
            Effect::NoLongerCurrent { .. } => {}
            Effect::CloseConnection { conn, connection } => {
                let c = self.conns.entry(connection.id).or_insert(WorldConn {
                    machine_id: None,
                    server: connection.server,
                    closing: false,
                });
                if c.machine_id != Some(conn) {
                    self.totals.late_connections += 1;
                }
                c.machine_id = Some(conn);
                if !c.closing {
                    c.closing = true;
                    self.owed.push(Owed::Closing(connection.id));
                }
            }
            Effect::AttemptOutcome(_) => {}
            Effect::CloseFinished => self.totals.closes += 1,
        }
    }

    // ---- the world's operations, by id (for drivers that track what they scheduled)

    /// The handler of `event` finishes, if it is the one running.
    pub fn handler_done(&mut self, event: EventId) -> Result<(), Violation> {
        if self.handler != Some(event) {
            return Ok(());
        }
        self.handler = None;
        self.feed(Input::EventHandled { event })
    }

    fn take_cancelled(&mut self, attempt: AttemptId) -> Option<Option<Addr>> {
        let i = self.cancelled.iter().position(|(a, _)| *a == attempt)?;
        Some(self.cancelled.remove(i).1)
    }

    /// The lookup of `attempt` answers, in flight or late (cancelled): the catalog's
    /// address, or `fail`. Nothing happens for any other attempt.
    pub fn answer_lookup(
        &mut self,
        attempt: AttemptId,
        fail: Option<SimError>,
    ) -> Result<(), Violation> {
        if self.lookup == Some(attempt) {
            self.lookup = None;
        } else if self.take_cancelled(attempt).is_none() {
            return Ok(());
        }
        let result = match fail {
            Some(e) => Err(e),
            None if self.planned => self.pick(self.avoid),
            None => Ok(self.catalog),
        };
        self.feed(Input::AddressResult { attempt, result })
    }

    /// The planned world's catalog: the catalog's server if it is listed and not `avoid`,
    /// else the next listed server that is not `avoid`, else none.
    fn pick(&self, avoid: Option<Addr>) -> Result<Addr, SimError> {
        let n = self.listed.len();
        (0..n)
            .map(|i| Addr(((usize::from(self.catalog.0) + i) % n) as u8))
            .find(|a| self.listed[usize::from(a.0)] && Some(*a) != avoid)
            .ok_or(SimError::NoSuchHost)
    }

    /// The server of the machine's current connection.
    fn current_server(&self) -> Option<Addr> {
        let id = self.machine.current_conn_id()?;
        self.conns
            .values()
            .find(|c| c.machine_id == Some(id))
            .map(|c| c.server)
    }

    fn is_listed(&self, server: Addr) -> bool {
        self.listed
            .get(usize::from(server.0))
            .copied()
            .unwrap_or(false)
    }

    /// The catalog stops listing `server` (wrapping). If the current connection goes there,
    /// the driver asks for a handover (R15).
    pub fn withdraw(&mut self, server: u8) -> Result<(), Violation> {
        let s = Addr(server % self.listed.len() as u8);
        if !self.is_listed(s) {
            return Ok(());
        }
        self.listed[usize::from(s.0)] = false;
        if self.current_server() == Some(s) {
            self.withdrawn = Some(s);
            return self.feed(Input::Handover {
                reason: HandoverReason::Withdrawn,
                grace: self.grace,
            });
        }
        Ok(())
    }

    /// The catalog lists `server` (wrapping) again: the driver cancels the handover the
    /// withdrawal asked for (its cause ended), retries now when not connected (R16), or
    /// fails back to server 0, the preferred one (R15).
    pub fn list(&mut self, server: u8) -> Result<(), Violation> {
        let s = Addr(server % self.listed.len() as u8);
        if self.is_listed(s) {
            return Ok(());
        }
        self.listed[usize::from(s.0)] = true;
        self.on_listed(s)
    }

    fn on_listed(&mut self, s: Addr) -> Result<(), Violation> {
        let pending = matches!(self.machine.handover_state(), Some(Some(_)));
        if self.withdrawn == Some(s) && pending {
            self.withdrawn = None;
            return self.feed(Input::CancelHandover);
        }
        match self.current_server() {
            None => self.feed(Input::RetryNow {
                reason: RetryNowReason::NewCopy,
            }),
            Some(current) if s == Addr(0) && current != s => self.feed(Input::Handover {
                reason: HandoverReason::FailBack,
                grace: self.grace,
            }),
            Some(_) => Ok(()),
        }
    }

    /// A rolling restart of `server` (wrapping): withdrawn if it still is listed, stopped
    /// (its connections drop), and started again on a new address, which is listed.
    pub fn restart_elsewhere(&mut self, server: u8) -> Result<(), Violation> {
        let i = usize::from(server) % self.up.len();
        self.withdraw(i as u8)?;
        if self.up[i] {
            self.server_flip(i as u8);
        }
        self.scale_out()
    }

    /// A new server is added and listed, up to [`MAX_SERVERS`].
    pub fn scale_out(&mut self) -> Result<(), Violation> {
        if self.up.len() >= MAX_SERVERS {
            return Ok(());
        }
        self.up.push(true);
        self.listed.push(true);
        let s = Addr((self.up.len() - 1) as u8);
        self.on_listed(s)
    }

    /// The user (or the connection's age) asks for a handover (R15).
    pub fn handover(&mut self, reason: HandoverReason, grace: Duration) -> Result<(), Violation> {
        self.feed(Input::Handover { reason, grace })
    }

    /// The connect of `attempt` answers, in flight or late (cancelled): refused if its
    /// server is down, else `fail`, else a new connection. Nothing happens for any other
    /// attempt (a cancelled lookup included).
    pub fn answer_connect(
        &mut self,
        attempt: AttemptId,
        fail: Option<SimError>,
    ) -> Result<(), Violation> {
        let address = match self.connect {
            Some((a, address)) if a == attempt => {
                self.connect = None;
                address
            }
            _ => {
                let late = self
                    .cancelled
                    .iter()
                    .position(|&(a, address)| a == attempt && address.is_some());
                match late.and_then(|i| self.cancelled.remove(i).1) {
                    Some(address) => address,
                    None => return Ok(()),
                }
            }
        };
        let result = if !self.is_up(address) {
            Err(SimError::Refused(address))
        } else if let Some(e) = fail {
            Err(e)
        } else {
            Ok(self.new_conn(address))
        };
        self.feed(Input::ConnectResult { attempt, result })
    }

    /// The shell dropped a cancelled attempt's future: its answer never comes.
    pub fn drop_late(&mut self, attempt: AttemptId) {
        self.take_cancelled(attempt);
    }

    /// The peer drops connection `conn` (the world's number), if it is open: it starts
    /// closing.
    pub fn peer_drop(&mut self, conn: u32) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.closing
            && c.machine_id.is_some()
        {
            c.closing = true;
            self.owed.push(Owed::Closing(conn));
        }
    }

    /// Connection `conn` (the world's number) finishes closing, if it is closing:
    /// `Closed` is fed.
    pub fn close_done(&mut self, conn: u32) -> Result<(), Violation> {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (true, Some(id)) = (c.closing, c.machine_id) else {
            return Ok(());
        };
        let server = c.server;
        let was_current = self.machine.current_conn_id() == Some(id);
        self.conns.remove(&conn);
        self.totals.conn_closes += 1;
        self.feed(Input::Closed { conn: id })?;
        // R17: the connection was lost; the catalog lists another copy.
        if self.planned
            && self.another_copy
            && was_current
            && (0..self.listed.len()).any(|i| self.listed[i] && i != usize::from(server.0))
        {
            self.feed(Input::RetryNow {
                reason: RetryNowReason::AnotherCopy,
            })?;
        }
        Ok(())
    }

    /// Server `server` (wrapping) goes down, dropping its connections, or comes back up.
    pub fn server_flip(&mut self, server: u8) {
        let i = usize::from(server) % self.up.len();
        self.up[i] = !self.up[i];
        if !self.up[i] {
            let doomed: Vec<u32> = self
                .conns
                .iter()
                .filter(|(_, c)| usize::from(c.server.0) == i)
                .map(|(id, _)| *id)
                .collect();
            for conn in doomed {
                self.peer_drop(conn);
            }
        }
    }

    /// The catalog now gives server `server`'s address (wrapping).
    pub fn set_catalog(&mut self, server: u8) {
        self.catalog = Addr(server % self.up.len() as u8);
    }

    /// The retry timer fires now (stale or early fires change nothing, docs/behaviour.md §3).
    pub fn timer_fired(&mut self) -> Result<(), Violation> {
        self.feed(Input::TimerFired)
    }

    /// The user calls `close()`.
    pub fn close(&mut self) -> Result<(), Violation> {
        self.feed(Input::CloseRequested)
    }

    // ---- the world's operations, chosen by a driver

    /// Performs one operation (see [`WorldOp`]).
    pub fn apply(&mut self, op: WorldOp) -> Result<(), Violation> {
        match op {
            WorldOp::FinishHandler => match self.handler {
                Some(event) => self.handler_done(event),
                None => Ok(()),
            },
            WorldOp::LookupDone { fail } => match self.lookup {
                Some(attempt) => self.answer_lookup(attempt, fail.map(lookup_error)),
                None => Ok(()),
            },
            WorldOp::ConnectDone { fail } => match self.connect {
                Some((attempt, _)) => self.answer_connect(attempt, fail.map(connect_error)),
                None => Ok(()),
            },
            WorldOp::LateConnection { which } => {
                let connects = self.cancelled.iter().filter(|c| c.1.is_some()).map(|c| c.0);
                match nth(connects, which) {
                    Some(attempt) => self.answer_connect(attempt, None),
                    None => Ok(()),
                }
            }
            WorldOp::LateFailure { which } => match nth(self.cancelled.iter().copied(), which) {
                Some((attempt, None)) => self.answer_lookup(attempt, Some(SimError::NoSuchHost)),
                Some((attempt, Some(_))) => {
                    self.answer_connect(attempt, Some(SimError::ConnectTimedOut))
                }
                None => Ok(()),
            },
            WorldOp::PeerDrop { which } => {
                let open = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.closing && c.machine_id.is_some())
                    .map(|(id, _)| *id);
                if let Some(conn) = nth(open, which) {
                    self.peer_drop(conn);
                }
                Ok(())
            }
            WorldOp::CloseDone { which } => {
                let closing = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.closing)
                    .map(|(id, _)| *id);
                match nth(closing, which) {
                    Some(conn) => self.close_done(conn),
                    None => Ok(()),
                }
            }
            WorldOp::ServerFlip { server } => {
                self.server_flip(server);
                Ok(())
            }
            WorldOp::CatalogChange { server } => {
                self.set_catalog(server);
                Ok(())
            }
            WorldOp::Sleep(d) => {
                self.now = self.now.saturating_add(d);
                Ok(())
            }
            WorldOp::TimerFires => match self.machine.poll_timeout() {
                Some(t) => {
                    self.advance_to(t);
                    self.timer_fired()
                }
                None => Ok(()),
            },
            WorldOp::Duplicate { back } => {
                let n = self.recent.len();
                if n == 0 {
                    return Ok(());
                }
                let input = self.recent[n - 1 - usize::from(back) % n].clone();
                self.feed(input)
            }
            WorldOp::Close => self.close(),
            WorldOp::CloseWhenCurrent => self.feed(Input::CloseWhenCurrentConnectionIsClosed),
            WorldOp::Abort => self.feed(Input::Abort {
                error: SimError::Aborted,
            }),
            WorldOp::Withdraw { server } => self.withdraw(server),
            WorldOp::List { server } => self.list(server),
            WorldOp::RestartElsewhere { server } => self.restart_elsewhere(server),
            WorldOp::ScaleOut => self.scale_out(),
            WorldOp::Handover { reason, grace_ms } => {
                const REASONS: [HandoverReason; 5] = [
                    HandoverReason::User,
                    HandoverReason::Drain,
                    HandoverReason::MaxAge,
                    HandoverReason::Withdrawn,
                    HandoverReason::FailBack,
                ];
                self.handover(
                    REASONS[usize::from(reason) % REASONS.len()],
                    Duration::from_millis(u64::from(grace_ms)),
                )
            }
            WorldOp::CancelHandover => self.feed(Input::CancelHandover),
            WorldOp::RetryNow => self.feed(Input::RetryNow {
                reason: RetryNowReason::User,
            }),
        }
    }

    /// The end of an operation-driven run: the user closes, then the world answers
    /// everything it owes (handlers finish, closes finish, the timer fires) and nothing
    /// else, within [`WIND_DOWN_CAP`] steps. Close must finish (R8, I7) and leave no
    /// connection open (I6). Then every cancelled attempt answers late: a late connection
    /// must be closed at once and nothing else may happen (R8).
    pub fn wind_down(&mut self) -> Result<(), Violation> {
        self.close()?;
        // Not "until close finished": a connection that arrived late may still be closing
        // after it (docs/behaviour.md §3), and the world owes that close too.
        for _ in 0..WIND_DOWN_CAP {
            if let Some(event) = self.handler {
                self.handler_done(event)?;
            } else if let Some(conn) = self.first_closing() {
                self.close_done(conn)?;
            } else if let Some(t) = self.machine.poll_timeout() {
                self.advance_to(t);
                self.timer_fired()?;
            } else {
                break;
            }
        }
        if !self.is_close_finished() {
            return Err(self.fail(
                Invariant::I7,
                format!(
                    "liveness: close did not finish with the world answering everything (R8; state {:?}, {self:?})",
                    self.machine.state()
                ),
            ));
        }
        if !self.conns.is_empty() {
            return Err(self.fail(
                Invariant::I6,
                format!(
                    "close finished with connections still open: {:?}",
                    self.conns
                ),
            ));
        }
        // After close finished, late results change nothing but a late connection's close.
        while let Some(&(attempt, address)) = self.cancelled.first() {
            match address {
                Some(_) => self.answer_connect(attempt, None)?,
                None => self.answer_lookup(attempt, Some(SimError::LookupTimedOut))?,
            }
        }
        while let Some(conn) = self.first_closing() {
            self.close_done(conn)?;
        }
        if !self.conns.is_empty() || self.handler.is_some() {
            return Err(self.fail(
                Invariant::I7,
                format!("after close finished: {self:?} (R8: nothing may follow)"),
            ));
        }
        Ok(())
    }

    fn first_closing(&self) -> Option<u32> {
        self.conns
            .iter()
            .find(|(_, c)| c.closing)
            .map(|(id, _)| *id)
    }

    /// I6 at the end of a run: every connection the machine received was closed or is
    /// closing. Fills in the coverage of the totals.
    pub fn finish(&mut self) -> Result<(), Violation> {
        let leaked: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.machine_id.is_some() && !c.closing)
            .map(|(id, _)| *id)
            .collect();
        if !leaked.is_empty() {
            return Err(self.fail(
                Invariant::I6,
                format!("connections {leaked:?} never closed after close finished"),
            ));
        }
        self.totals.sim_time = self.now.since_origin();
        self.totals.coverage = *self.checker.coverage();
        Ok(())
    }
}

fn lookup_error(f: u8) -> SimError {
    if f & 1 == 0 {
        SimError::NoSuchHost
    } else {
        SimError::LookupTimedOut
    }
}

fn connect_error(f: u8) -> SimError {
    if f & 1 == 0 {
        SimError::ConnectTimedOut
    } else {
        SimError::Reset
    }
}

// ---------------------------------------------------------------------------------------
// The seeded driver: one seed schedules everything the world owes on an event queue.

#[derive(Debug)]
enum Ev {
    Handled(EventId),
    Lookup {
        attempt: AttemptId,
        fail: Option<SimError>,
    },
    ConnectDone {
        attempt: AttemptId,
        fail: Option<SimError>,
    },
    Timer,
    PeerDrop {
        conn: u32,
    },
    CloseDone {
        conn: u32,
    },
    ServerFlip {
        server: u8,
    },
    CatalogChange,
    UserClose,
    UserR11,
    UserAbort,
    EndOfActivity,
    Noise,
    /// Planned changes (R15–R17).
    Restart,
    Stop {
        server: u8,
    },
    Flap,
    Relist {
        server: u8,
    },
    ScaleOut,
    MaxAge {
        conn: ConnId,
    },
    UserHandover,
    UserRetryNow,
}

struct Seeded<M, W = ()> {
    s: Settings,
    rng: ChaCha8Rng,
    /// The planned changes and their own random stream.
    planned: Option<(Planned, ChaCha8Rng)>,
    /// The connection whose maximum age is scheduled.
    aged: Option<ConnId>,
    world: World<M, W>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    timer_at: Option<Instant>,
    timer_key: Option<(Instant, u64)>,
    active: bool,
    close_step: Option<u64>,
    /// Reused buffer: what one step's owed things were scheduled as.
    plan: Vec<(Duration, Ev)>,
}

impl<M: SimMachine<Addr, Conn, SimError>, W: Watch<M>> Seeded<M, W> {
    fn at(&mut self, when: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((when, self.seq), ev);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let when = self.world.now.saturating_add(d);
        self.at(when, ev);
    }

    fn start(&mut self) {
        let s = self.s.clone();
        self.schedule_owed();
        if let Some(every) = s.catalog_change_every {
            let d = upto(&mut self.rng, every * 2);
            self.after(d, Ev::CatalogChange);
        }
        if let Some((up, _)) = s.server_flaps {
            for server in 0..s.servers {
                let d = upto(&mut self.rng, up * 2);
                self.after(d, Ev::ServerFlip { server });
            }
        }
        if let Some(t) = s.close_at {
            self.after(t, Ev::UserClose);
        }
        if let Some(t) = s.r11_at {
            self.after(t, Ev::UserR11);
        }
        if let Some(every) = s.noise_every {
            let d = upto(&mut self.rng, every * 2);
            self.after(d, Ev::Noise);
        }
        self.after(s.horizon, Ev::EndOfActivity);
        if let Some((p, _)) = &self.planned {
            let p = p.clone();
            for (every, ev) in [
                (p.restart_every, Ev::Restart),
                (p.flap_every, Ev::Flap),
                (p.scale_out_every, Ev::ScaleOut),
                (p.user_handover_every, Ev::UserHandover),
                (p.user_retry_now_every, Ev::UserRetryNow),
            ] {
                if let Some(every) = every {
                    self.planned_after(every, ev);
                }
            }
        }
    }

    /// Schedules a planned event in about `every`, drawn from the planned changes' own
    /// stream.
    fn planned_after(&mut self, every: Duration, ev: Ev) {
        if let Some((_, r)) = &mut self.planned {
            let d = upto(r, every * 2);
            self.after(d, ev);
        }
    }

    /// A server drawn from the planned changes' stream.
    fn planned_server(&mut self) -> u8 {
        let n = self.world.up.len() as u64;
        self.planned.as_mut().map_or(0, |(_, r)| below(r, n) as u8)
    }

    /// Schedules what the world owes after a step, and re-arms the one timer when the
    /// machine's deadline changed (as the shell does).
    fn schedule_owed(&mut self) {
        let mut owed = std::mem::take(&mut self.world.owed);
        let mut plan = std::mem::take(&mut self.plan);
        let (s, r, w) = (&self.s, &mut self.rng, &self.world);
        for o in owed.drain(..) {
            match o {
                Owed::Handler(id) => plan.push((upto(r, s.handler_max), Ev::Handled(id))),
                Owed::Lookup(attempt) => {
                    let f = &s.lookup;
                    if chance(r, f.hang_pct) {
                        continue;
                    }
                    let fail = chance(r, f.fail_pct)
                        .then(|| one_of(r, &[SimError::NoSuchHost, SimError::LookupTimedOut]));
                    plan.push((upto(r, f.latency_max), Ev::Lookup { attempt, fail }));
                }
                Owed::Connect(attempt, _) => {
                    let f = &s.connect;
                    // R12: `abort` is called from inside `connect`, which then returns: an
                    // aborting connect answers after the abort and never hangs.
                    let abort_at = chance(r, s.abort_pct).then(|| upto(r, f.latency_max));
                    if let Some(d) = abort_at {
                        plan.push((d, Ev::UserAbort));
                    }
                    if abort_at.is_none() && chance(r, f.hang_pct) {
                        continue;
                    }
                    let fail = chance(r, f.fail_pct)
                        .then(|| one_of(r, &[SimError::ConnectTimedOut, SimError::Reset]));
                    let d = upto(r, f.latency_max);
                    let d = abort_at.map_or(d, |a| a.saturating_add(d));
                    plan.push((d, Ev::ConnectDone { attempt, fail }));
                }
                Owed::Cancelled(_) => {}
                Owed::Connected(conn) => {
                    let short = chance(r, s.short_conn_pct);
                    let max = if short {
                        s.short_life_max
                    } else {
                        s.long_life_max
                    };
                    let life = upto(r, max);
                    let server = w.conns.get(&conn).map(|c| c.server);
                    // A connection to a server that went down in the meantime drops at once.
                    let life = if server.is_some_and(|a| w.is_up(a)) {
                        life
                    } else {
                        Duration::ZERO
                    };
                    plan.push((life, Ev::PeerDrop { conn }));
                }
                Owed::Closing(conn) => plan.push((upto(r, s.close_max), Ev::CloseDone { conn })),
            }
        }
        self.world.owed = owed;
        for (d, ev) in plan.drain(..) {
            self.after(d, ev);
        }
        self.plan = plan;
        // A maximum connection age: a handover once the current connection reaches it.
        if let Some(max_age) = self.planned.as_ref().and_then(|(p, _)| p.max_age) {
            let current = self.world.machine.current_conn_id();
            if current.is_some() && current != self.aged {
                self.aged = current;
                if let Some(conn) = current {
                    self.after(max_age, Ev::MaxAge { conn });
                }
            }
        }
        let timeout = self.world.machine.poll_timeout();
        if timeout != self.timer_at {
            self.timer_at = timeout;
            if let Some(key) = self.timer_key.take() {
                self.queue.remove(&key);
            }
            if let Some(t) = timeout {
                let when = t.max(self.world.now);
                self.at(when, Ev::Timer);
                self.timer_key = Some((when, self.seq));
            }
        }
    }

    /// Pops and performs world events until the run ends.
    fn run(&mut self) -> Result<(), Violation> {
        self.start();
        while let Some(((when, _), ev)) = self.queue.pop_first() {
            self.world.advance_to(when);
            if self.active && self.world.step() >= self.s.active_steps {
                self.end_activity();
            }
            self.world_event(ev)?;
            self.schedule_owed();
            let step = self.world.step();
            if step > self.s.active_steps + 2 * CLOSE_STEP_CAP {
                return Err(self.world.fail(
                    Invariant::I9,
                    format!(
                        "liveness: step cap {} breached (active phase {} steps, close {} steps)",
                        self.s.active_steps + 2 * CLOSE_STEP_CAP,
                        self.s.active_steps,
                        CLOSE_STEP_CAP
                    ),
                ));
            }
            if let Some(at) = self.close_step
                && step > at + CLOSE_STEP_CAP
                && !self.world.is_close_finished()
            {
                return Err(self.world.fail(
                    Invariant::I9,
                    format!(
                        "liveness: close() was called at step {at} and has not finished {CLOSE_STEP_CAP} steps later (R8)"
                    ),
                ));
            }
        }
        if !self.world.is_close_finished() {
            return Err(self.world.fail(
                Invariant::I9,
                format!(
                    "liveness: the world ran out of events and close() never finished (state {:?})",
                    self.world.machine.state()
                ),
            ));
        }
        self.world.finish()
    }

    fn end_activity(&mut self) {
        if self.active {
            self.active = false;
            self.at(self.world.now, Ev::UserClose);
        }
    }

    fn world_event(&mut self, ev: Ev) -> Result<(), Violation> {
        let w = &mut self.world;
        match ev {
            Ev::Handled(id) => w.handler_done(id),
            Ev::Lookup { attempt, fail } => {
                if w.is_cancelled(attempt) && !self.noise_now() {
                    self.world.drop_late(attempt);
                    return Ok(());
                }
                self.world.answer_lookup(attempt, fail)
            }
            Ev::ConnectDone { attempt, fail } => {
                if w.is_cancelled(attempt) {
                    let deliver = match fail {
                        None => chance(&mut self.rng, self.s.late_conn_pct),
                        Some(_) => self.noise_now(),
                    };
                    if !deliver {
                        // The shell dropped the cancelled future: nothing reaches the machine.
                        self.world.drop_late(attempt);
                        return Ok(());
                    }
                }
                self.world.answer_connect(attempt, fail)
            }
            Ev::Timer => {
                self.timer_key = None;
                self.timer_at = None;
                w.timer_fired()
            }
            Ev::PeerDrop { conn } => {
                w.peer_drop(conn);
                Ok(())
            }
            Ev::CloseDone { conn } => w.close_done(conn),
            Ev::ServerFlip { server } => {
                if let Some((up_mean, down_mean)) = self.s.server_flaps
                    && self.active
                {
                    w.server_flip(server);
                    let mean = if w.is_up(Addr(server)) {
                        up_mean
                    } else {
                        down_mean
                    };
                    let d = upto(&mut self.rng, mean * 2);
                    self.after(d, Ev::ServerFlip { server });
                }
                Ok(())
            }
            Ev::CatalogChange => {
                if let Some(every) = self.s.catalog_change_every
                    && self.active
                {
                    let server = below(&mut self.rng, u64::from(self.s.servers)) as u8;
                    w.set_catalog(server);
                    let d = upto(&mut self.rng, every * 2);
                    self.after(d, Ev::CatalogChange);
                }
                Ok(())
            }
            Ev::UserClose => {
                if self.close_step.is_none() {
                    self.close_step = Some(w.step());
                }
                self.world.close()
            }
            Ev::UserR11 => w.apply(WorldOp::CloseWhenCurrent),
            Ev::UserAbort => w.apply(WorldOp::Abort),
            Ev::EndOfActivity => {
                self.end_activity();
                Ok(())
            }
            Ev::Noise => {
                if let Some(every) = self.s.noise_every
                    && self.active
                {
                    let d = upto(&mut self.rng, every * 2);
                    self.after(d, Ev::Noise);
                    let input = self.stale_input();
                    self.world.feed(input)?;
                }
                Ok(())
            }
            ev => self.planned_event(ev),
        }
    }

    /// A planned change (R15–R17): what the catalog or the user does, and what the driver
    /// tells the machine about it.
    fn planned_event(&mut self, ev: Ev) -> Result<(), Violation> {
        let Some((p, _)) = &self.planned else {
            return Ok(());
        };
        let p = p.clone();
        if !self.active {
            return Ok(());
        }
        match ev {
            Ev::Restart => {
                // A rolling restart: withdraw, drain, stop, start on a new address.
                let server = self.planned_server();
                self.world.withdraw(server)?;
                self.after(p.drain, Ev::Stop { server });
                if let Some(every) = p.restart_every {
                    self.planned_after(every, Ev::Restart);
                }
                Ok(())
            }
            Ev::Stop { server } => self.world.restart_elsewhere(server),
            Ev::Flap => {
                let server = self.planned_server();
                self.world.withdraw(server)?;
                if let Some(every) = p.flap_every {
                    self.planned_after(every / 4, Ev::Relist { server });
                    self.planned_after(every, Ev::Flap);
                }
                Ok(())
            }
            Ev::Relist { server } => self.world.list(server),
            Ev::ScaleOut => {
                if let Some(every) = p.scale_out_every {
                    self.planned_after(every, Ev::ScaleOut);
                }
                self.world.scale_out()
            }
            Ev::MaxAge { conn } => {
                if self.world.machine.current_conn_id() == Some(conn) {
                    self.world.handover(HandoverReason::MaxAge, p.grace)?;
                }
                Ok(())
            }
            Ev::UserHandover => {
                if let Some(every) = p.user_handover_every {
                    self.planned_after(every, Ev::UserHandover);
                }
                self.world.handover(HandoverReason::User, p.grace)
            }
            Ev::UserRetryNow => {
                if let Some(every) = p.user_retry_now_every {
                    self.planned_after(every, Ev::UserRetryNow);
                }
                self.world.feed(Input::RetryNow {
                    reason: RetryNowReason::User,
                })
            }
            _ => Ok(()),
        }
    }

    fn noise_now(&mut self) -> bool {
        self.s.noise_every.is_some() && chance(&mut self.rng, 20)
    }

    /// A stale, duplicate or never-issued input: the machine must ignore it (docs/behaviour.md §3),
    /// except that a connection outside its attempt is closed.
    fn stale_input(&mut self) -> SimInput {
        let r = &mut self.rng;
        let w = &mut self.world;
        let old_attempt = |r: &mut ChaCha8Rng, olds: &[AttemptId]| {
            if olds.is_empty() || chance(r, 10) {
                AttemptId::from_raw(below(r, 1000) + 1000)
            } else {
                one_of(r, olds)
            }
        };
        match below(r, 8) {
            0 | 6 => {
                let event = if w.old_events.is_empty() || chance(r, 10) {
                    EventId::from_raw(below(r, 1000) + 1000)
                } else {
                    one_of(r, &w.old_events)
                };
                Input::EventHandled { event }
            }
            1 => Input::AddressResult {
                attempt: old_attempt(r, &w.old_attempts),
                result: Ok(Addr(below(r, 4) as u8)),
            },
            2 => Input::ConnectResult {
                attempt: old_attempt(r, &w.old_attempts),
                result: Err(SimError::Reset),
            },
            3 if chance(r, 30) => {
                let attempt = old_attempt(r, &w.old_attempts);
                let server = Addr(below(r, 4) as u8);
                let c = w.new_conn(server);
                Input::ConnectResult {
                    attempt,
                    result: Ok(c),
                }
            }
            4 if !w.closed_conns.is_empty() => Input::Closed {
                conn: one_of(r, &w.closed_conns),
            },
            _ => Input::TimerFired,
        }
    }
}

/// Runs one seed with the real machine or a mutant.
pub fn run_seed(seed: u64, options: &RunOptions) -> Result<RunReport, Box<Failure>> {
    run_seed_watched(seed, options, &mut ())
}

/// [`run_seed`] with `watch` shown every input and effect of the run (the same run: the
/// watcher changes nothing). The timeline picture is drawn this way
/// ([`crate::timeline`]).
pub fn run_seed_watched<W>(
    seed: u64,
    options: &RunOptions,
    watch: &mut W,
) -> Result<RunReport, Box<Failure>>
where
    W: Watch<Machine<Addr, Conn, SimError>> + Watch<MutantMachine>,
{
    let settings = Settings::from_seed(seed);
    match options.mutant {
        None => run_with(settings, options, Machine::new, watch),
        Some(m) => run_with(
            settings,
            options,
            |c| MutantMachine::new(m, Machine::new(c)),
            watch,
        ),
    }
}

fn run_with<M: SimMachine<Addr, Conn, SimError>, W: Watch<M>>(
    settings: Settings,
    options: &RunOptions,
    build: impl FnOnce(Config) -> M,
    watch: W,
) -> Result<RunReport, Box<Failure>> {
    let machine = build(settings.config());
    let mut trace = Trace::new(options.keep_trace);
    trace.line(format_args!("SEED={} {:?}", settings.seed, settings));
    let planned = options.planned.then(|| Planned::from_seed(settings.seed));
    if let Some(p) = &planned {
        trace.line(format_args!("PLANNED {p:?}"));
    }
    let world = World::new(
        machine,
        settings.checker_settings(),
        settings.servers,
        trace,
        watch,
    );
    let mut world = match world {
        Ok(w) => w,
        Err(violation) => {
            return Err(Box::new(Failure {
                violation,
                trace: None,
                settings,
                inputs: Vec::new(),
                planned,
            }));
        }
    };
    if let Some(p) = &planned {
        world.set_planned(p.grace);
        world.another_copy = p.another_copy;
    }
    let mut seeded = Seeded {
        rng: ChaCha8Rng::seed_from_u64(settings.seed ^ 0x5157_5f57_4f52_4c44),
        planned: planned.clone().map(|p| {
            let r = ChaCha8Rng::seed_from_u64(settings.seed ^ 0x504c_414e_4e45_4432);
            (p, r)
        }),
        aged: None,
        world,
        queue: BTreeMap::new(),
        seq: 0,
        timer_at: None,
        timer_key: None,
        active: true,
        close_step: None,
        plan: Vec::new(),
        s: settings,
    };
    match seeded.run() {
        Ok(()) => {
            let w = &mut seeded.world;
            w.trace.line(format_args!(
                "END steps={} events={} attempts={} connections={} closes={}",
                w.totals.steps,
                w.totals.events,
                w.totals.attempts,
                w.totals.connections,
                w.totals.closes
            ));
            Ok(RunReport {
                trace_hash: w.trace.hash(),
                trace: w.trace.text().map(str::to_owned),
                totals: w.totals,
                settings: seeded.s,
            })
        }
        Err(violation) => {
            let w = &mut seeded.world;
            w.trace.line(format_args!("VIOLATION {violation}"));
            Err(Box::new(Failure {
                violation,
                trace: w.trace.text().map(str::to_owned),
                inputs: std::mem::take(&mut w.inputs),
                settings: seeded.s,
                planned,
            }))
        }
    }
}

/// Replays `inputs` against a fresh machine (or mutant) for `settings`, checked, without
/// the world: the first violation, if any. Any subsequence of a run's inputs is a valid
/// replay, since the checker judges arbitrary sequences; this is what shrinking uses.
pub fn replay(
    settings: &Settings,
    mutant: Option<Mutant>,
    inputs: &[(Instant, SimInput)],
) -> Result<(), Violation> {
    match mutant {
        None => replay_with(settings, Machine::new(settings.config()), inputs),
        Some(m) => replay_with(
            settings,
            MutantMachine::new(m, Machine::new(settings.config())),
            inputs,
        ),
    }
}

fn replay_with<M: SimMachine<Addr, Conn, SimError>>(
    settings: &Settings,
    mut machine: M,
    inputs: &[(Instant, SimInput)],
) -> Result<(), Violation> {
    let mut checker = Checker::new(settings.checker_settings());
    let mut now = Instant::ZERO;
    while let Some(e) = machine.poll_effect() {
        checker.on_effect(now, &e)?;
    }
    checker.after_step(now, &machine)?;
    for (t, input) in inputs {
        now = now.max(*t);
        checker.on_input(now, input)?;
        machine.handle(now, input.clone());
        while let Some(e) = machine.poll_effect() {
            checker.on_effect(now, &e)?;
        }
        checker.after_step(now, &machine)?;
    }
    Ok(())
}

/// Shrinks a failing input sequence: delta debugging over chunks, keeping a candidate when
/// its replay still breaks the same invariant. At most `budget` replays.
pub fn shrink(
    settings: &Settings,
    mutant: Option<Mutant>,
    inputs: &[(Instant, SimInput)],
    invariant: Invariant,
    budget: usize,
) -> Vec<(Instant, SimInput)> {
    let fails = |candidate: &[(Instant, SimInput)]| {
        replay(settings, mutant, candidate).is_err_and(|v| v.invariant == invariant)
    };
    let mut current = inputs.to_vec();
    if !fails(&current) {
        return current;
    }
    let mut replays = 1;
    let mut chunk = current.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut removed_any = false;
        while i < current.len() && replays < budget {
            let end = (i + chunk).min(current.len());
            let mut candidate = Vec::with_capacity(current.len() - (end - i));
            candidate.extend_from_slice(&current[..i]);
            candidate.extend_from_slice(&current[end..]);
            replays += 1;
            if fails(&candidate) {
                current = candidate;
                removed_any = true;
            } else {
                i += chunk;
            }
        }
        if replays >= budget {
            break;
        }
        if chunk == 1 {
            if !removed_any {
                break;
            }
        } else {
            chunk = chunk.div_ceil(2);
        }
    }
    current
}
