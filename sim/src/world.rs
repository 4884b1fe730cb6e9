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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};
use persistent_connection_core::{
    AttemptId, Config, ConnId, Effect, EventId, Input, Instant, Jitter, Machine, RetryDelay,
    RetryPolicy,
};

use crate::checker::{Checker, CheckerSettings, Coverage, Invariant, MachineView, Violation};
use crate::mutants::{Mutant, MutantMachine};
use crate::trace::Trace;

/// An address: which server of the catalog.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub u8);

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// A connection handle: the world's number for it and the server it goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The world's number (not the machine's [`ConnId`]).
    pub id: u32,
    /// The server.
    pub server: Addr,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}@{:?}", self.id, self.server)
    }
}

/// The few kinds of failure the world produces, so that de-duplication (R3, R4) matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimError {
    /// The catalog does not know the service.
    NoSuchHost,
    /// The catalog did not answer in time.
    LookupTimedOut,
    /// The server is down.
    Refused(Addr),
    /// The connect did not complete in time.
    ConnectTimedOut,
    /// The connection was reset during the handshake.
    Reset,
    /// The user aborted through the connect context (R12).
    Aborted,
}

/// The machine's input in the simulated world.
pub type SimInput = Input<Addr, Conn, SimError>;
/// The machine's effect in the simulated world.
pub type SimEffect = Effect<Addr, Conn, SimError>;

/// What the world drives: the real [`Machine`], or a deliberately wrong wrapper of it.
pub trait SimMachine<A, C, E>: MachineView {
    /// [`Machine::handle`].
    fn handle(&mut self, now: Instant, input: Input<A, C, E>);
    /// [`Machine::poll_effect`].
    fn poll_effect(&mut self) -> Option<Effect<A, C, E>>;
}

impl<A, C, E> SimMachine<A, C, E> for Machine<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone + fmt::Debug,
    E: Clone + PartialEq,
{
    fn handle(&mut self, now: Instant, input: Input<A, C, E>) {
        Machine::handle(self, now, input)
    }
    fn poll_effect(&mut self) -> Option<Effect<A, C, E>> {
        Machine::poll_effect(self)
    }
}

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
}

/// Seeds the binary runs by default; every mutant must be caught within them.
pub const DEFAULT_SEEDS: u64 = 2000;

/// Steps allowed between the user's final `close()` and `CloseFinished`.
pub const CLOSE_STEP_CAP: u64 = 5_000;

#[derive(Debug)]
enum Ev {
    /// Feed as is.
    Feed(SimInput),
    Lookup {
        attempt: AttemptId,
        result: Result<Addr, SimError>,
    },
    ConnectDone {
        attempt: AttemptId,
        result: Result<Conn, SimError>,
    },
    Timer,
    PeerDrop {
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
}

#[derive(Debug)]
struct WorldConn {
    machine_id: Option<ConnId>,
    server: Addr,
    closing: bool,
}

struct World<M> {
    s: Settings,
    rng: ChaCha8Rng,
    machine: M,
    checker: Checker<Addr, Conn, SimError>,
    trace: Trace,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    timer_at: Option<Instant>,
    timer_key: Option<(Instant, u64)>,
    up: Vec<bool>,
    catalog: Addr,
    cancelled: BTreeSet<AttemptId>,
    conns: BTreeMap<u32, WorldConn>,
    next_conn: u32,
    old_events: Vec<EventId>,
    old_attempts: Vec<AttemptId>,
    closed_conns: Vec<ConnId>,
    inputs: Vec<(Instant, SimInput)>,
    totals: Totals,
    active: bool,
    close_step: Option<u64>,
}

struct Time(Instant);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0.since_origin();
        write!(f, "{:>7}.{:06}", d.as_secs(), d.subsec_micros())
    }
}

impl<M: SimMachine<Addr, Conn, SimError>> World<M> {
    fn at(&mut self, when: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((when, self.seq), ev);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        let when = self.now.saturating_add(d);
        self.at(when, ev);
    }

    fn fail(&self, invariant: Invariant, message: String) -> Violation {
        Violation {
            invariant,
            step: self.checker.step(),
            now: self.now,
            message,
        }
    }

    fn start(&mut self) -> Result<(), Violation> {
        let s = self.s.clone();
        self.trace.line(format_args!("SEED={} {:?}", s.seed, s));
        self.totals.steps += 1;
        self.trace
            .line(format_args!("{:>6} {} new", 0, Time(self.now)));
        self.drain()?;
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
        Ok(())
    }

    /// One input: trace it, check it, feed it, drain and check the effects.
    fn feed(&mut self, input: SimInput) -> Result<(), Violation> {
        self.totals.steps += 1;
        let step = self.checker.step() + 1;
        self.trace
            .line(format_args!("{step:>6} {} < {input:?}", Time(self.now)));
        self.inputs.push((self.now, input.clone()));
        if let Input::Closed { conn } = &input {
            self.closed_conns.push(*conn);
        }
        self.checker.on_input(self.now, &input)?;
        self.machine.handle(self.now, input);
        self.drain()
    }

    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(effect) = self.machine.poll_effect() {
            self.trace.line(format_args!("{:>23} {effect:?}", ">"));
            self.checker.on_effect(self.now, &effect)?;
            self.react(effect);
        }
        self.checker.after_step(self.now, &self.machine)?;
        let timeout = self.machine.poll_timeout();
        if timeout != self.timer_at {
            // One timer at a time, re-armed only when the deadline changes (as the shell).
            self.timer_at = timeout;
            if let Some(key) = self.timer_key.take() {
                self.queue.remove(&key);
            }
            if let Some(t) = timeout {
                let when = t.max(self.now);
                self.at(when, Ev::Timer);
                self.timer_key = Some((when, self.seq));
            }
        }
        Ok(())
    }

    fn new_conn(&mut self, server: Addr) -> Conn {
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
        let s = &self.s;
        match effect {
            Effect::Emit { id, .. } => {
                self.totals.events += 1;
                if self.old_events.len() < 64 {
                    self.old_events.push(id);
                }
                let d = upto(&mut self.rng, s.handler_max);
                self.after(d, Ev::Feed(Input::EventHandled { event: id }));
            }
            Effect::StartTimer { attempt, .. } => {
                self.totals.attempts += 1;
                if self.old_attempts.len() < 64 {
                    self.old_attempts.push(attempt);
                }
            }
            Effect::GetAddress { attempt } => {
                let f = s.lookup.clone();
                if chance(&mut self.rng, f.hang_pct) {
                    return;
                }
                let result = if chance(&mut self.rng, f.fail_pct) {
                    Err(one_of(
                        &mut self.rng,
                        &[SimError::NoSuchHost, SimError::LookupTimedOut],
                    ))
                } else {
                    Ok(self.catalog)
                };
                let d = upto(&mut self.rng, f.latency_max);
                self.after(d, Ev::Lookup { attempt, result });
            }
            Effect::Connect {
                attempt, address, ..
            } => {
                let f = s.connect.clone();
                // R12: `abort` is called from inside `connect`, which then returns: an
                // aborting connect answers after the abort and never hangs.
                let abort_at = chance(&mut self.rng, s.abort_pct).then(|| {
                    let d = upto(&mut self.rng, f.latency_max);
                    self.after(d, Ev::UserAbort);
                    d
                });
                if abort_at.is_none() && chance(&mut self.rng, f.hang_pct) {
                    return;
                }
                let up = self.up.get(address.0 as usize).copied().unwrap_or(false);
                let result = if !up {
                    Err(SimError::Refused(address))
                } else if chance(&mut self.rng, f.fail_pct) {
                    Err(one_of(
                        &mut self.rng,
                        &[SimError::ConnectTimedOut, SimError::Reset],
                    ))
                } else {
                    Ok(self.new_conn(address))
                };
                let d = upto(&mut self.rng, f.latency_max);
                let d = abort_at.map_or(d, |a| a.saturating_add(d));
                self.after(d, Ev::ConnectDone { attempt, result });
            }
            Effect::CancelAttempt { attempt } => {
                self.cancelled.insert(attempt);
            }
            Effect::BecameCurrent { conn, connection } => {
                self.totals.connections += 1;
                let short = chance(&mut self.rng, s.short_conn_pct);
                let life = upto(
                    &mut self.rng,
                    if short {
                        s.short_life_max
                    } else {
                        s.long_life_max
                    },
                );
                let server_up = self
                    .up
                    .get(connection.server.0 as usize)
                    .copied()
                    .unwrap_or(false);
                if let Some(c) = self.conns.get_mut(&connection.id) {
                    c.machine_id = Some(conn);
                }
                let life = if server_up { life } else { Duration::ZERO };
                self.after(
                    life,
                    Ev::PeerDrop {
                        conn: connection.id,
                    },
                );
            }
            Effect::NoLongerCurrent { .. } => {}
            Effect::CloseConnection { conn, connection } => {
                let close = upto(&mut self.rng, s.close_max);
                let known = self.conns.get_mut(&connection.id);
                let was_current = known.as_ref().is_some_and(|c| c.machine_id == Some(conn));
                if !was_current {
                    self.totals.late_connections += 1;
                }
                match known {
                    Some(c) if c.closing => {}
                    Some(c) => {
                        c.machine_id = Some(conn);
                        c.closing = true;
                        self.after(close, Ev::Feed(Input::Closed { conn }));
                    }
                    None => self.after(close, Ev::Feed(Input::Closed { conn })),
                }
            }
            Effect::AttemptOutcome(_) => {}
            Effect::CloseFinished => self.totals.closes += 1,
        }
    }

    /// Pops and performs world events until the run ends.
    fn run(&mut self) -> Result<(), Violation> {
        self.start()?;
        while let Some(((when, _), ev)) = self.queue.pop_first() {
            self.now = self.now.max(when);
            if self.active && self.checker.step() >= self.s.active_steps {
                self.end_activity();
            }
            self.world_event(ev)?;
            if self.checker.step() > self.s.active_steps + 2 * CLOSE_STEP_CAP {
                return Err(self.fail(
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
                && self.checker.step() > at + CLOSE_STEP_CAP
                && !self.checker.is_close_finished()
            {
                return Err(self.fail(
                    Invariant::I9,
                    format!(
                        "liveness: close() was called at step {at} and has not finished {CLOSE_STEP_CAP} steps later (R8)"
                    ),
                ));
            }
        }
        if !self.checker.is_close_finished() {
            return Err(self.fail(
                Invariant::I9,
                format!(
                    "liveness: the world ran out of events and close() never finished (state {:?})",
                    self.machine.state()
                ),
            ));
        }
        // I6: every connection the machine received was closed.
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

    fn end_activity(&mut self) {
        if self.active {
            self.active = false;
            self.at(self.now, Ev::UserClose);
        }
    }

    fn world_event(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Feed(input) => {
                if let Input::Closed { .. } = input {
                    self.totals.conn_closes += 1;
                }
                self.feed(input)
            }
            Ev::Lookup { attempt, result } => {
                if !self.cancelled.contains(&attempt) || self.noise_now() {
                    self.feed(Input::AddressResult { attempt, result })?;
                }
                Ok(())
            }
            Ev::ConnectDone { attempt, result } => {
                let late = self.cancelled.contains(&attempt);
                let deliver = match &result {
                    Ok(_) if late => chance(&mut self.rng, self.s.late_conn_pct),
                    _ if late => self.noise_now(),
                    _ => true,
                };
                if deliver {
                    self.feed(Input::ConnectResult { attempt, result })?;
                } else if let Ok(c) = result {
                    // The shell dropped the cancelled future: the connection never reached
                    // the machine.
                    self.conns.remove(&c.id);
                }
                Ok(())
            }
            Ev::Timer => {
                self.timer_key = None;
                self.timer_at = None;
                self.feed(Input::TimerFired)
            }
            Ev::PeerDrop { conn } => {
                self.drop_conn(conn);
                Ok(())
            }
            Ev::ServerFlip { server } => {
                if let Some((up_mean, down_mean)) = self.s.server_flaps
                    && self.active
                {
                    let i = server as usize;
                    let now_up = !self.up[i];
                    self.up[i] = now_up;
                    if !now_up {
                        let doomed: Vec<u32> = self
                            .conns
                            .iter()
                            .filter(|(_, c)| c.server == Addr(server) && !c.closing)
                            .map(|(id, _)| *id)
                            .collect();
                        for conn in doomed {
                            self.drop_conn(conn);
                        }
                    }
                    let mean = if now_up { up_mean } else { down_mean };
                    let d = upto(&mut self.rng, mean * 2);
                    self.after(d, Ev::ServerFlip { server });
                }
                Ok(())
            }
            Ev::CatalogChange => {
                if let Some(every) = self.s.catalog_change_every
                    && self.active
                {
                    self.catalog = Addr(below(&mut self.rng, u64::from(self.s.servers)) as u8);
                    let d = upto(&mut self.rng, every * 2);
                    self.after(d, Ev::CatalogChange);
                }
                Ok(())
            }
            Ev::UserClose => {
                if self.close_step.is_none() {
                    self.close_step = Some(self.checker.step());
                }
                self.feed(Input::CloseRequested)
            }
            Ev::UserR11 => self.feed(Input::CloseWhenCurrentConnectionIsClosed),
            Ev::UserAbort => self.feed(Input::Abort {
                error: SimError::Aborted,
            }),
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
                    self.feed(input)?;
                }
                Ok(())
            }
        }
    }

    fn noise_now(&mut self) -> bool {
        self.s.noise_every.is_some() && chance(&mut self.rng, 20)
    }

    fn drop_conn(&mut self, conn: u32) {
        let close = upto(&mut self.rng, self.s.close_max);
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.closing
            && let Some(id) = c.machine_id
        {
            c.closing = true;
            self.after(close, Ev::Feed(Input::Closed { conn: id }));
        }
    }

    /// A stale, duplicate or never-issued input: the machine must ignore it (docs/behaviour.md §3),
    /// except that a connection outside its attempt is closed.
    fn stale_input(&mut self) -> SimInput {
        let r = &mut self.rng;
        let old_attempt = |r: &mut ChaCha8Rng, olds: &[AttemptId]| {
            if olds.is_empty() || chance(r, 10) {
                AttemptId::from_raw(below(r, 1000) + 1000)
            } else {
                one_of(r, olds)
            }
        };
        match below(r, 8) {
            0 | 6 => {
                let event = if self.old_events.is_empty() || chance(r, 10) {
                    EventId::from_raw(below(r, 1000) + 1000)
                } else {
                    one_of(r, &self.old_events)
                };
                Input::EventHandled { event }
            }
            1 => Input::AddressResult {
                attempt: old_attempt(r, &self.old_attempts),
                result: Ok(Addr(below(r, 4) as u8)),
            },
            2 => Input::ConnectResult {
                attempt: old_attempt(r, &self.old_attempts),
                result: Err(SimError::Reset),
            },
            3 if chance(r, 30) => {
                let attempt = old_attempt(r, &self.old_attempts);
                let server = Addr(below(r, 4) as u8);
                let c = self.new_conn(server);
                Input::ConnectResult {
                    attempt,
                    result: Ok(c),
                }
            }
            4 if !self.closed_conns.is_empty() => Input::Closed {
                conn: one_of(r, &self.closed_conns),
            },
            _ => Input::TimerFired,
        }
    }
}

/// Runs one seed with the real machine or a mutant.
pub fn run_seed(seed: u64, options: &RunOptions) -> Result<RunReport, Box<Failure>> {
    let settings = Settings::from_seed(seed);
    match options.mutant {
        None => run_with(settings, options, Machine::new),
        Some(m) => run_with(settings, options, |c| {
            MutantMachine::new(m, Machine::new(c))
        }),
    }
}

fn run_with<M: SimMachine<Addr, Conn, SimError>>(
    settings: Settings,
    options: &RunOptions,
    build: impl FnOnce(Config) -> M,
) -> Result<RunReport, Box<Failure>> {
    let machine = build(settings.config());
    let servers = usize::from(settings.servers);
    let mut world = World {
        rng: ChaCha8Rng::seed_from_u64(settings.seed ^ 0x5157_5f57_4f52_4c44),
        machine,
        checker: Checker::new(settings.checker_settings()),
        trace: Trace::new(options.keep_trace),
        now: Instant::ZERO,
        queue: BTreeMap::new(),
        seq: 0,
        timer_at: None,
        timer_key: None,
        up: vec![true; servers],
        catalog: Addr(0),
        cancelled: BTreeSet::new(),
        conns: BTreeMap::new(),
        next_conn: 0,
        old_events: Vec::new(),
        old_attempts: Vec::new(),
        closed_conns: Vec::new(),
        inputs: Vec::new(),
        totals: Totals::default(),
        active: true,
        close_step: None,
        s: settings,
    };
    match world.run() {
        Ok(()) => {
            world.trace.line(format_args!(
                "END steps={} events={} attempts={} connections={} closes={}",
                world.totals.steps,
                world.totals.events,
                world.totals.attempts,
                world.totals.connections,
                world.totals.closes
            ));
            Ok(RunReport {
                trace_hash: world.trace.hash(),
                trace: world.trace.text().map(str::to_owned),
                settings: world.s,
                totals: world.totals,
            })
        }
        Err(violation) => {
            world.trace.line(format_args!("VIOLATION {violation}"));
            Err(Box::new(Failure {
                violation,
                trace: world.trace.text().map(str::to_owned),
                settings: world.s,
                inputs: world.inputs,
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
