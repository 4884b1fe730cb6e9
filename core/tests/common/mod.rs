//! Test harness shared by the core's integration tests: drives a machine by hand with
//! explicit times and collects the effects of each step.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use persistent_connection_core::{
    AttemptError, AttemptId, Config, ConnId, Effect, Event, EventId, Input, Instant, Machine,
    RetryPolicy,
};

pub type A = &'static str;
pub type C = u32;
pub type E = &'static str;
pub type Eff = Effect<A, C, E>;
pub type Ev = Event<A, C, E>;

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

pub fn at(s: f64) -> Instant {
    Instant::ZERO + secs(s)
}

pub struct H {
    pub m: Machine<A, C, E>,
    pub now: Instant,
    /// Effects of the last step.
    pub last: Vec<Eff>,
    /// Every effect since the start.
    pub all: Vec<(Instant, Eff)>,
}

impl H {
    /// A machine with a constant, non-random delay.
    pub fn constant(delay: f64) -> H {
        H::with(Config {
            seed: 1,
            retry: RetryPolicy::constant(secs(delay)).non_random(),
        })
    }

    pub fn with(config: Config) -> H {
        let mut h = H {
            m: Machine::new(config),
            now: Instant::ZERO,
            last: Vec::new(),
            all: Vec::new(),
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        self.last.clear();
        while let Some(e) = self.m.poll_effect() {
            self.all.push((self.now, e.clone()));
            self.last.push(e);
        }
    }

    pub fn set_time(&mut self, s: f64) -> &mut Self {
        self.now = at(s);
        self
    }

    /// Feeds `input` at the current time and returns the effects it produced.
    pub fn feed(&mut self, input: Input<A, C, E>) -> Vec<Eff> {
        self.m.handle(self.now, input);
        self.drain();
        self.last.clone()
    }

    pub fn feed_at(&mut self, s: f64, input: Input<A, C, E>) -> Vec<Eff> {
        self.set_time(s);
        self.feed(input)
    }

    /// The id of the one event emitted by the last step.
    pub fn emitted_id(&self) -> EventId {
        let ids: Vec<_> = self
            .last
            .iter()
            .filter_map(|e| match e {
                Effect::Emit { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 1, "expected one Emit in {:?}", self.last);
        ids[0]
    }

    /// Handles the most recently emitted event (whichever step emitted it).
    pub fn handled(&mut self) -> Vec<Eff> {
        let event = self
            .all
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                Effect::Emit { id, .. } => Some(*id),
                _ => None,
            })
            .expect("an event was emitted");
        self.feed(Input::EventHandled { event })
    }

    pub fn handled_at(&mut self, s: f64) -> Vec<Eff> {
        self.set_time(s);
        self.handled()
    }

    /// The attempt whose address the last step asked for.
    pub fn lookup(&self) -> AttemptId {
        find_get_address(&self.last).unwrap_or_else(|| panic!("no GetAddress in {:?}", self.last))
    }

    /// The attempt the last step asked to connect.
    pub fn connecting(&self) -> AttemptId {
        find_connect(&self.last)
            .unwrap_or_else(|| panic!("no Connect in {:?}", self.last))
            .0
    }

    pub fn address(&mut self, result: Result<A, E>) -> Vec<Eff> {
        let attempt = self.lookup();
        self.feed(Input::AddressResult { attempt, result })
    }

    pub fn connect_result(&mut self, result: Result<C, E>) -> Vec<Eff> {
        let attempt = self.connecting();
        self.feed(Input::ConnectResult { attempt, result })
    }

    /// From `AttemptingToConnect` emitted to `Connected` handled: handle the round start,
    /// obtain `addr` (handling `ObtainedAddress` if emitted), connect with `conn`.
    pub fn connect_fully(&mut self, addr: A, conn: C) -> ConnId {
        self.handled();
        self.address(Ok(addr));
        if events(&self.last)
            .iter()
            .any(|e| matches!(e, Event::ObtainedAddress(_)))
        {
            self.handled();
        }
        self.connect_result(Ok(conn));
        let id = self.m.current_conn_id().expect("connected");
        self.handled();
        id
    }

    /// All events emitted since the start.
    pub fn all_events(&self) -> Vec<Ev> {
        self.all
            .iter()
            .filter_map(|(_, e)| match e {
                Effect::Emit { event, .. } => Some(event.clone()),
                _ => None,
            })
            .collect()
    }

    /// The times at which attempts began (their `StartTimer`).
    pub fn attempt_starts(&self) -> Vec<Instant> {
        self.all
            .iter()
            .filter_map(|(t, e)| matches!(e, Effect::StartTimer { .. }).then_some(*t))
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&Eff) -> bool) -> usize {
        self.all.iter().filter(|(_, e)| pred(e)).count()
    }
}

pub fn events(effects: &[Eff]) -> Vec<Ev> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

pub fn find_get_address(effects: &[Eff]) -> Option<AttemptId> {
    effects.iter().find_map(|e| match e {
        Effect::GetAddress { attempt } => Some(*attempt),
        _ => None,
    })
}

pub fn find_connect(effects: &[Eff]) -> Option<(AttemptId, A, u32)> {
    effects.iter().find_map(|e| match e {
        Effect::Connect {
            attempt,
            address,
            consecutive_unsuccessful_attempts,
        } => Some((*attempt, *address, *consecutive_unsuccessful_attempts)),
        _ => None,
    })
}

pub fn outcomes(effects: &[Eff]) -> Vec<Result<C, AttemptError<E>>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AttemptOutcome(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

pub fn has(effects: &[Eff], pred: impl Fn(&Eff) -> bool) -> bool {
    effects.iter().any(pred)
}
