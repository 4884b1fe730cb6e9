//! The `world_ops` target's model: a small world in the simulator's image (servers that
//! go up and down, a catalog that moves, lookups and connects that succeed, fail or come
//! late, connections that drop and take time to close, handlers that take time, a user who
//! closes), driven step by step by an arbitrary sequence of world operations instead of a
//! seeded random generator.
//!
//! Unlike `machine_inputs`, every input here is one a real world could produce: each
//! request is answered at most once, each connection is closed once, time only moves to
//! the next thing that happens. So the fuzzer explores realistic histories, and the run
//! can end with liveness checks no arbitrary input sequence allows: after the user's
//! `close()` and with the world answering everything it owes, close must finish (R8, I7)
//! and every connection the machine received must have been closed (I6).

//! The `world_ops` target: the simulator's own world ([`persistent_connection_sim::world::World`]),
//! driven step by step by an arbitrary sequence of world operations instead of a seeded
//! random generator: handlers finish, lookups and connects answer or fail, servers go down
//! (dropping their connections) and up, the catalog moves, connections drop and finish
//! closing, cancelled attempts answer late, inputs are duplicated, time moves on, the
//! timer fires, the user closes, calls R11 or aborts; and the planned changes of R15–R17:
//! servers withdrawn, listed again, restarted on a new address, added, the user's handover,
//! its cancellation and retry now. The first planned change turns the world's planned mode
//! on (`World::set_planned`), so a case without one runs exactly as before.
//!
//! Unlike `machine_inputs`, every input here is one a real world could produce: each
//! request is answered at most once, each connection is closed once, time only moves to
//! the next thing that happens. So the fuzzer explores realistic histories, and the run
//! ends with the world's wind-down, whose liveness checks no arbitrary input sequence
//! allows: after the user's `close()` and with the world answering everything it owes,
//! close must finish (R8, I7) and every connection the machine received must have been
//! closed (I6). The simulator's seeded runs drive the same world, so a bug of the world is
//! found once, by either.

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use persistent_connection_core::{Instant, Machine};
use persistent_connection_sim::checker::CheckerSettings;
use persistent_connection_sim::trace::Trace;
use persistent_connection_sim::world::{
    Addr, Conn, SimEffect, SimError, SimInput, Watch, World, WorldOp,
};

use crate::machine::{ConfigSpec, Nothing, Observer, Oracle, Span};

/// The machine the world drives.
pub type WorldMachine = Machine<Addr, Conn, SimError>;

/// Longest operation sequence used from one fuzz case.
pub const MAX_OPS: usize = 2_000;

/// One world operation, decoded from fuzz bytes (weighted: the common things happen often,
/// the user's calls rarely).
#[derive(Clone, Copy, Debug)]
pub struct FuzzOp(pub WorldOp);

fn opt_small(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<u8>> {
    let b = u8::arbitrary(u)?;
    Ok((b >= 160).then_some(b & 1))
}

impl<'a> Arbitrary<'a> for FuzzOp {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let which = |u: &mut Unstructured<'a>| u8::arbitrary(u);
        Ok(FuzzOp(match u8::arbitrary(u)? {
            0..=49 => WorldOp::FinishHandler,
            50..=84 => WorldOp::LookupDone {
                fail: opt_small(u)?,
            },
            85..=119 => WorldOp::ConnectDone {
                fail: opt_small(u)?,
            },
            120..=129 => WorldOp::LateConnection { which: which(u)? },
            130..=134 => WorldOp::LateFailure { which: which(u)? },
            135..=154 => WorldOp::PeerDrop { which: which(u)? },
            155..=179 => WorldOp::CloseDone { which: which(u)? },
            180..=189 => WorldOp::ServerFlip { server: which(u)? },
            190..=199 => WorldOp::CatalogChange { server: which(u)? },
            200..=219 => WorldOp::Sleep(Span::arbitrary(u)?.get()),
            220..=239 => WorldOp::TimerFires,
            240..=247 => WorldOp::Duplicate { back: which(u)? },
            248..=250 => WorldOp::Close,
            251..=252 => WorldOp::CloseWhenCurrent,
            253 => WorldOp::Abort,
            // Planned changes (R15–R17).
            _ => match u8::arbitrary(u)? % 8 {
                0 => WorldOp::Withdraw { server: which(u)? },
                1 => WorldOp::List { server: which(u)? },
                2 => WorldOp::RestartElsewhere { server: which(u)? },
                3 => WorldOp::ScaleOut,
                4 | 5 => WorldOp::Handover {
                    reason: which(u)?,
                    grace_ms: u16::arbitrary(u)? % 2000,
                },
                6 => WorldOp::CancelHandover,
                _ => WorldOp::RetryNow,
            },
        }))
    }
}

/// A whole `world_ops` case: the machine's configuration, the world's size, then
/// operations for as long as the bytes last.
#[derive(Clone, Debug)]
pub struct WorldCase {
    /// The machine's configuration.
    pub config: ConfigSpec,
    /// Servers in the catalog (1–4).
    pub servers: u8,
    /// What happens, in order (at most [`MAX_OPS`]).
    pub ops: Vec<WorldOp>,
}

impl<'a> Arbitrary<'a> for WorldCase {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let config = ConfigSpec::arbitrary(u)?;
        let servers = 1 + u8::arbitrary(u)? % 4;
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(FuzzOp::arbitrary(u)?.0);
        }
        Ok(WorldCase {
            config,
            servers,
            ops,
        })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

/// Lets a harness [`Observer`] (the [`Oracle`], a test's counter) watch the simulator's
/// world.
#[derive(Debug)]
pub struct Watched<O>(pub O);

impl<O: Observer<Addr, Conn, SimError>> Watch<WorldMachine> for Watched<O> {
    fn on_input(&mut self, now: Instant, input: &SimInput, machine: &WorldMachine) {
        self.0.on_input(now, input, machine);
    }
    fn on_effect(&mut self, now: Instant, effect: &SimEffect) {
        self.0.on_effect(now, effect);
    }
    fn after_step(&mut self, now: Instant, machine: &WorldMachine) {
        self.0.after_step(now, machine);
    }
}

/// Runs `case` in the simulator's world, every step checked by the simulator's checker
/// and watched by `obs`, then winds down (close finishes, nothing leaks). Panics with the
/// broken rule on any violation; returns the world at the end.
pub fn run_world<O: Observer<Addr, Conn, SimError>>(
    case: &WorldCase,
    obs: O,
) -> World<WorldMachine, Watched<O>> {
    let config = case.config.config();
    let checker = CheckerSettings::jitter_only(case.config.jitter)
        .with_delay(case.config.config().retry.delay);
    // No trace text: formatting every step would cost more than the step; determinism
    // (I9) is checked on the effects instead (`check_world`).
    let world = World::new(
        Machine::new(config),
        checker,
        case.servers,
        Trace::off(),
        Watched(obs),
    );
    let mut w = world.unwrap_or_else(|v| panic!("checker: {v}"));
    let mut planned = false;
    for op in &case.ops {
        if !planned && is_planned(op) {
            planned = true;
            // The handovers the world's driver asks for get a grace from the seed, so
            // the case's bytes before this op decode as they always did.
            w.set_planned(Duration::from_millis(case.config.seed % 1000));
        }
        if let Err(v) = w.apply(*op) {
            panic!("checker: {v}");
        }
    }
    if let Err(v) = w.wind_down() {
        panic!("checker: {v}");
    }
    w
}

/// Whether `op` is one of the planned changes (R15–R17).
fn is_planned(op: &WorldOp) -> bool {
    matches!(
        op,
        WorldOp::Withdraw { .. }
            | WorldOp::List { .. }
            | WorldOp::RestartElsewhere { .. }
            | WorldOp::ScaleOut
            | WorldOp::Handover { .. }
            | WorldOp::CancelHandover
            | WorldOp::RetryNow
    )
}

/// Runs `case` under the simulator's checker and the harness's oracle, then once more with
/// neither watching, and compares the two runs' effects, with their times (I9).
pub fn check_world(case: &WorldCase) {
    let first = run_world(
        case,
        (
            Oracle::<Addr, Conn, SimError>::new(&case.config),
            Effects::default(),
        ),
    );
    let second = run_world(case, (Nothing, Effects::default()));
    assert!(
        first.watch().0.1 == second.watch().0.1,
        "I9: same seed and operations gave different effects"
    );
}

/// Every effect of a run, with its time: an [`Observer`] for the determinism check.
#[derive(Debug, Default, PartialEq)]
pub struct Effects(pub Vec<(Instant, SimEffect)>);

impl Observer<Addr, Conn, SimError> for Effects {
    fn on_input(&mut self, _: Instant, _: &SimInput, _: &WorldMachine) {}
    fn on_effect(&mut self, now: Instant, effect: &SimEffect) {
        self.0.push((now, effect.clone()));
    }
    fn after_step(&mut self, _: Instant, _: &WorldMachine) {}
}
