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

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use persistent_connection_core::{AttemptId, ConnId, Effect, EventId, Input, Instant, Machine};

use crate::machine::{ConfigSpec, Eff, In, M, Nothing, Observer, Oracle, SimChecker, Span};

/// Longest operation sequence used from one fuzz case.
pub const MAX_OPS: usize = 2_000;
/// Steps allowed for the wind-down after the final `close()` (R8: close is prompt).
pub const WIND_DOWN_CAP: usize = 10_000;

/// Errors are small numbers: 0–1 lookup failures, 2–3 connect failures, 4 + server for
/// "refused by that (down) server", 255 for an abort.
const ERR_REFUSED: u8 = 4;

/// One thing that happens in the world.
#[derive(Clone, Copy, Debug)]
pub enum WorldOp {
    /// The running `on_event` handler finishes.
    FinishHandler,
    /// The lookup in flight finishes: the catalog's address, or failure `fail & 1`.
    LookupDone {
        /// Fail with this error instead.
        fail: Option<u8>,
    },
    /// The connect in flight finishes: a connection if its server is up (refused if down),
    /// or failure `2 + (fail & 1)`.
    ConnectDone {
        /// Fail with this error instead.
        fail: Option<u8>,
    },
    /// A cancelled attempt's connect delivers a connection after all (R8: the machine must
    /// close it at once).
    LateConnection {
        /// Which cancelled attempt (wrapping).
        which: u8,
    },
    /// A cancelled attempt's lookup or connect reports a failure after all.
    LateFailure {
        /// Which cancelled attempt (wrapping).
        which: u8,
    },
    /// The peer drops an open connection: it starts closing.
    PeerDrop {
        /// Which open connection (wrapping).
        which: u8,
    },
    /// A connection that is closing finishes closing.
    CloseDone {
        /// Which closing connection (wrapping).
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
    /// Time passes.
    Sleep(Span),
    /// Time passes until the machine's retry timer, which fires.
    TimerFires,
    /// A duplicate of an input fed earlier (not a connection: those come once).
    Duplicate {
        /// How far back (wrapping over the recent inputs).
        back: u8,
    },
    /// The user calls `close()`.
    Close,
    /// The user calls `close_when_current_connection_is_closed()` (R11).
    CloseWhenCurrent,
    /// `abort(error)` through the connect context (R12).
    Abort,
}

fn opt_small(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<u8>> {
    let b = u8::arbitrary(u)?;
    Ok((b >= 160).then_some(b & 1))
}

impl<'a> Arbitrary<'a> for WorldOp {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let which = |u: &mut Unstructured<'a>| u8::arbitrary(u);
        // Weighted: the common things happen often, the user's calls rarely.
        Ok(match u8::arbitrary(u)? {
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
            200..=219 => WorldOp::Sleep(Span::arbitrary(u)?),
            220..=239 => WorldOp::TimerFires,
            240..=247 => WorldOp::Duplicate { back: which(u)? },
            248..=250 => WorldOp::Close,
            251..=252 => WorldOp::CloseWhenCurrent,
            _ => WorldOp::Abort,
        })
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
            ops.push(WorldOp::arbitrary(u)?);
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

/// A connection the machine holds, as the world sees it.
#[derive(Clone, Copy, Debug)]
struct WorldConn {
    server: u8,
    closing: bool,
}

/// What was in flight for an attempt the machine cancelled.
#[derive(Clone, Copy, Debug)]
enum Cancelled {
    Lookup(AttemptId),
    Connect(AttemptId, u8),
}

/// What a run of the world did, for the harness's tests and the determinism check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Every effect, with its time.
    pub trace: Vec<(Instant, Eff)>,
    /// Connections handed to the machine.
    pub connections: usize,
    /// Inputs fed, wind-down included.
    pub steps: usize,
}

struct World<O> {
    m: M,
    now: Instant,
    obs: O,
    out: Outcome,
    up: Vec<bool>,
    catalog: u8,
    handler: Option<EventId>,
    lookup: Option<AttemptId>,
    connect: Option<(AttemptId, u8)>,
    cancelled: Vec<Cancelled>,
    /// Connections the machine holds (current or stray), until their close finishes.
    conns: BTreeMap<ConnId, WorldConn>,
    /// The server of the connection being handed in this step.
    delivering: Option<u8>,
    next_conn: u8,
    recent: Vec<In>,
}

impl<O: Observer> World<O> {
    fn new(case: &WorldCase, obs: O) -> Self {
        let mut w = World {
            m: Machine::new(case.config.config()),
            now: Instant::ZERO,
            obs,
            out: Outcome::default(),
            up: vec![true; usize::from(case.servers.max(1))],
            catalog: 0,
            handler: None,
            lookup: None,
            connect: None,
            cancelled: Vec::new(),
            conns: BTreeMap::new(),
            delivering: None,
            next_conn: 0,
            recent: Vec::new(),
        };
        w.drain();
        w
    }

    fn feed(&mut self, input: In) {
        self.out.steps += 1;
        if !matches!(input, Input::ConnectResult { result: Ok(_), .. }) {
            if self.recent.len() == 32 {
                self.recent.remove(0);
            }
            self.recent.push(input.clone());
        }
        self.obs.on_input(self.now, &input, &self.m);
        self.m.handle(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(e) = self.m.poll_effect() {
            self.obs.on_effect(self.now, &e);
            self.react(&e);
            self.out.trace.push((self.now, e));
        }
        self.obs.after_step(self.now, &self.m);
        self.delivering = None;
    }

    /// The world performs an effect.
    fn react(&mut self, e: &Eff) {
        match e {
            Effect::Emit { id, .. } => self.handler = Some(*id),
            Effect::GetAddress { attempt } => self.lookup = Some(*attempt),
            Effect::Connect {
                attempt, address, ..
            } => self.connect = Some((*attempt, *address)),
            Effect::CancelAttempt { attempt } => {
                if self.lookup == Some(*attempt) {
                    self.lookup = None;
                    self.cancelled.push(Cancelled::Lookup(*attempt));
                }
                if let Some((a, address)) = self.connect
                    && a == *attempt
                {
                    self.connect = None;
                    self.cancelled.push(Cancelled::Connect(a, address));
                }
            }
            Effect::BecameCurrent { conn, .. } => {
                let server = self.delivering.take().expect("a connection was handed in");
                self.conns.insert(
                    *conn,
                    WorldConn {
                        server,
                        closing: false,
                    },
                );
            }
            Effect::CloseConnection { conn, .. } => match self.conns.get_mut(conn) {
                Some(c) => c.closing = true,
                None => {
                    let server = self
                        .delivering
                        .take()
                        .expect("a stray connection was handed in");
                    self.conns.insert(
                        *conn,
                        WorldConn {
                            server,
                            closing: true,
                        },
                    );
                }
            },
            Effect::StartTimer { .. }
            | Effect::NoLongerCurrent { .. }
            | Effect::AttemptOutcome(_)
            | Effect::CloseFinished => {}
        }
    }

    fn new_connection(&mut self, server: u8) -> u8 {
        self.delivering = Some(server);
        self.out.connections += 1;
        self.next_conn = self.next_conn.wrapping_add(1);
        self.next_conn
    }

    fn nth<T: Copy>(items: impl Iterator<Item = T> + Clone, which: u8) -> Option<T> {
        let n = items.clone().count();
        (n > 0)
            .then(|| items.clone().nth(usize::from(which) % n))
            .flatten()
    }

    fn apply(&mut self, op: WorldOp) {
        match op {
            WorldOp::FinishHandler => {
                if let Some(event) = self.handler.take() {
                    self.feed(Input::EventHandled { event });
                }
            }
            WorldOp::LookupDone { fail } => {
                if let Some(attempt) = self.lookup.take() {
                    let result = match fail {
                        Some(f) => Err(f & 1),
                        None => Ok(self.catalog),
                    };
                    self.feed(Input::AddressResult { attempt, result });
                }
            }
            WorldOp::ConnectDone { fail } => {
                if let Some((attempt, address)) = self.connect.take() {
                    let up = self.up.get(usize::from(address)).copied().unwrap_or(false);
                    let result = match fail {
                        _ if !up => Err(ERR_REFUSED + address),
                        Some(f) => Err(2 + (f & 1)),
                        None => Ok(self.new_connection(address)),
                    };
                    self.feed(Input::ConnectResult { attempt, result });
                }
            }
            WorldOp::LateConnection { which } => {
                let n = self.cancelled.len();
                if n > 0
                    && let Cancelled::Connect(attempt, address) =
                        self.cancelled.remove(usize::from(which) % n)
                {
                    let c = self.new_connection(address);
                    self.feed(Input::ConnectResult {
                        attempt,
                        result: Ok(c),
                    });
                }
            }
            WorldOp::LateFailure { which } => {
                let n = self.cancelled.len();
                if n > 0 {
                    let input = match self.cancelled.remove(usize::from(which) % n) {
                        Cancelled::Lookup(attempt) => Input::AddressResult {
                            attempt,
                            result: Err(0),
                        },
                        Cancelled::Connect(attempt, _) => Input::ConnectResult {
                            attempt,
                            result: Err(2),
                        },
                    };
                    self.feed(input);
                }
            }
            WorldOp::PeerDrop { which } => {
                let open = self
                    .conns
                    .iter()
                    .filter(|(_, c)| !c.closing)
                    .map(|(id, _)| *id);
                if let Some(id) = Self::nth(open, which)
                    && let Some(c) = self.conns.get_mut(&id)
                {
                    c.closing = true;
                }
            }
            WorldOp::CloseDone { which } => {
                let closing = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.closing)
                    .map(|(id, _)| *id);
                if let Some(conn) = Self::nth(closing, which) {
                    self.conns.remove(&conn);
                    self.feed(Input::Closed { conn });
                }
            }
            WorldOp::ServerFlip { server } => {
                let s = usize::from(server) % self.up.len();
                self.up[s] = !self.up[s];
                if !self.up[s] {
                    for c in self.conns.values_mut() {
                        if usize::from(c.server) == s {
                            c.closing = true;
                        }
                    }
                }
            }
            WorldOp::CatalogChange { server } => {
                self.catalog = server % self.up.len() as u8;
            }
            WorldOp::Sleep(span) => self.now = self.now.saturating_add(span.get()),
            WorldOp::TimerFires => {
                if let Some(t) = self.m.poll_timeout() {
                    self.now = self.now.max(t);
                    self.feed(Input::TimerFired);
                }
            }
            WorldOp::Duplicate { back } => {
                let n = self.recent.len();
                if n > 0 {
                    let input = self.recent[n - 1 - usize::from(back) % n].clone();
                    self.feed(input);
                }
            }
            WorldOp::Close => self.feed(Input::CloseRequested),
            WorldOp::CloseWhenCurrent => self.feed(Input::CloseWhenCurrentConnectionIsClosed),
            WorldOp::Abort => self.feed(Input::Abort { error: 255 }),
        }
    }

    /// The user closes; the world then answers everything it owes (handlers finish,
    /// closes finish, the timer fires) and nothing else. Close must finish (R8, I7) and
    /// leave no connection open (I6).
    fn wind_down(&mut self) {
        self.feed(Input::CloseRequested);
        // Not "until close finished": a connection that arrived late may still be closing
        // after it (docs/behaviour.md §3), and the world owes that close too.
        for _ in 0..WIND_DOWN_CAP {
            if let Some(event) = self.handler.take() {
                self.feed(Input::EventHandled { event });
            } else if let Some((&conn, _)) = self.conns.iter().find(|(_, c)| c.closing) {
                self.conns.remove(&conn);
                self.feed(Input::Closed { conn });
            } else if let Some(t) = self.m.poll_timeout() {
                self.now = self.now.max(t);
                self.feed(Input::TimerFired);
            } else {
                break;
            }
        }
        assert!(
            self.m.is_close_finished(),
            "R8/I7 liveness: close did not finish with the world answering everything (state {:?}, world conns {:?})",
            self.m.state(),
            self.conns
        );
        assert!(
            self.conns.is_empty(),
            "I6: close finished with connections still open in the world: {:?}",
            self.conns
        );
        // After close finished, late results change nothing but a late connection's close.
        while !self.cancelled.is_empty() {
            self.apply(WorldOp::LateConnection { which: 0 });
            self.apply(WorldOp::LateFailure { which: 0 });
        }
        while let Some((&conn, _)) = self.conns.iter().next() {
            self.conns.remove(&conn);
            self.feed(Input::Closed { conn });
        }
        assert!(self.handler.is_none(), "R8: an event after close finished");
    }
}

/// Runs `case` in the world, telling `obs` everything, and winds down.
pub fn run_world(case: &WorldCase, obs: impl Observer) -> Outcome {
    let mut w = World::new(case, obs);
    for op in &case.ops {
        w.apply(*op);
    }
    w.wind_down();
    w.out
}

/// Runs `case` under the simulator's checker and the harness's oracle, then once more
/// unchecked, and compares the two traces (I9).
pub fn check_world(case: &WorldCase) {
    let first = run_world(
        case,
        (SimChecker::new(&case.config), Oracle::new(&case.config)),
    );
    let second = run_world(case, Nothing);
    assert!(
        first == second,
        "I9: same seed and operations gave different effects"
    );
}
