//! Deliberately wrong machines, to prove the checker bites.
//!
//! Each [`Mutant`] wraps the real [`Machine`] and bends its effects or its clock in one
//! way docs/behaviour.md forbids. The simulator must catch every one of them within its default seed
//! budget (`sim/tests/mutants.rs` asserts it); `--mutant NAME` shows it from the command
//! line.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use persistent_connection_core::{
    AttemptError, ConnId, Effect, Event, EventId, EventKind, Input, Instant, Machine, State,
};

use crate::checker::MachineView;
use crate::model::{Addr, Conn, SimEffect, SimError, SimInput, SimMachine};

/// One planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// Reports a repeated address or failure instead of de-duplicating it (breaks R3, R4).
    SkipDedup,
    /// Counts the retry delay from the failure instead of the attempt's start (breaks R4).
    DelayFromFailure,
    /// Emits `Disconnected` while the `Connected` handler still runs (breaks R6).
    EarlyDisconnected,
    /// Never closes a connection that arrives for a cancelled attempt (breaks R8).
    ForgetLateClose,
    /// Leaves out a new failure's `FailedToConnect` (breaks R4 the other way).
    SuppressFailure,
    /// Begins each attempt half a delay early (breaks R2, R4).
    EarlyRetry,
    /// Reports `CloseFinished` one input late (breaks R8's promptness).
    LateCloseFinished,
    /// Forgets to tell R10 waiters about a failed attempt (breaks R10).
    DropFailureOutcome,
    /// Drops the failure of the attempt in flight when `abort` came, as this library did
    /// before it followed the original (breaks R12, R4).
    DropAbortedFailure,
    /// Asks for a timer that is always due, so time never advances: no checker rule sees
    /// it, the simulator's liveness cap must.
    BusyTimer,
    /// Honours a retry now right after an attempt that itself began by retry now: no
    /// bound, so a flapping catalog makes a busy loop (breaks R16, I10).
    RetryNowTwice,
    /// Reports the old connection as no longer current just before a handover's new one
    /// becomes current: an instant without a current connection (breaks R15, I11).
    GapInHandover,
    /// Asks to close a retired connection one input after its grace ended (breaks R15,
    /// I11).
    LateRetiredClose,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 13] = [
        Mutant::SkipDedup,
        Mutant::DelayFromFailure,
        Mutant::EarlyDisconnected,
        Mutant::ForgetLateClose,
        Mutant::SuppressFailure,
        Mutant::EarlyRetry,
        Mutant::LateCloseFinished,
        Mutant::DropFailureOutcome,
        Mutant::DropAbortedFailure,
        Mutant::BusyTimer,
        Mutant::RetryNowTwice,
        Mutant::GapInHandover,
        Mutant::LateRetiredClose,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::SkipDedup => "skip-dedup",
            Mutant::DelayFromFailure => "delay-from-failure",
            Mutant::EarlyDisconnected => "early-disconnected",
            Mutant::ForgetLateClose => "forget-late-close",
            Mutant::SuppressFailure => "suppress-failure",
            Mutant::EarlyRetry => "early-retry",
            Mutant::LateCloseFinished => "late-close-finished",
            Mutant::DropFailureOutcome => "drop-failure-outcome",
            Mutant::DropAbortedFailure => "drop-aborted-failure",
            Mutant::BusyTimer => "busy-timer",
            Mutant::RetryNowTwice => "retry-now-twice",
            Mutant::GapInHandover => "gap-in-handover",
            Mutant::LateRetiredClose => "late-retired-close",
        }
    }

    /// Whether it bends handover or retry now (R15–R17), which only a world with planned
    /// changes exercises ([`crate::world::RunOptions::planned`]).
    pub fn needs_planned_world(self) -> bool {
        matches!(
            self,
            Mutant::RetryNowTwice | Mutant::GapInHandover | Mutant::LateRetiredClose
        )
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mutant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mutant::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Mutant::ALL.iter().map(|m| m.name()).collect();
                format!("unknown mutant {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Fake event ids of the mutants, far from the machine's own.
const FAKE_EVENT_BASE: u64 = 1 << 62;

/// The real machine with one planted bug.
pub struct MutantMachine {
    mutant: Mutant,
    inner: Machine<Addr, Conn, SimError>,
    out: VecDeque<SimEffect>,
    scratch: Vec<SimEffect>,
    next_fake: u64,
    /// SkipDedup and EarlyDisconnected: a fake event being handled; the inner machine's
    /// effects wait behind it.
    fake: Option<EventId>,
    held: VecDeque<SimEffect>,
    /// EarlyDisconnected: the inner machine's own `Disconnected` to swallow, and whether
    /// its fake twin was already handled.
    swallow_disconnected: bool,
    fake_disconnected_handled: bool,
    /// DelayFromFailure: how far the inner machine's clock lags, and the outer start of
    /// the latest attempt.
    lag: Duration,
    attempt_start: Instant,
    /// EarlyRetry: how far the inner machine's clock runs ahead.
    lead: Duration,
    /// LateCloseFinished: a `CloseFinished` held back until the next input.
    held_finish: bool,
    /// GapInHandover: the current connection before the step.
    prev_current: Option<ConnId>,
    /// LateRetiredClose: connections retired by a handover, and closes held back until
    /// the next input.
    retired: Vec<ConnId>,
    held_closes: Vec<SimEffect>,
}

impl fmt::Debug for MutantMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutantMachine")
            .field("mutant", &self.mutant)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl MutantMachine {
    /// Wraps a freshly built machine (its construction effects are taken over).
    pub fn new(mutant: Mutant, inner: Machine<Addr, Conn, SimError>) -> Self {
        let mut m = MutantMachine {
            mutant,
            inner,
            out: VecDeque::new(),
            scratch: Vec::new(),
            next_fake: FAKE_EVENT_BASE,
            fake: None,
            held: VecDeque::new(),
            swallow_disconnected: false,
            fake_disconnected_handled: false,
            lag: Duration::ZERO,
            attempt_start: Instant::ZERO,
            lead: Duration::ZERO,
            held_finish: false,
            prev_current: None,
            retired: Vec::new(),
            held_closes: Vec::new(),
        };
        m.pump(Instant::ZERO, None);
        m
    }

    fn inner_now(&self, now: Instant) -> Instant {
        Instant::from_since_origin(
            now.since_origin()
                .saturating_sub(self.lag)
                .saturating_add(self.lead),
        )
    }

    /// An inner-clock instant on the outer clock.
    fn outer(&self, t: Instant) -> Instant {
        Instant::from_since_origin(
            t.since_origin()
                .saturating_add(self.lag)
                .saturating_sub(self.lead),
        )
    }

    fn fake_event(&mut self, event: Event<Addr, Conn, SimError>) -> SimEffect {
        let id = EventId::from_raw(self.next_fake);
        self.next_fake += 1;
        self.fake = Some(id);
        Effect::Emit { id, event }
    }

    /// Moves the inner machine's effects out, bending them.
    fn pump(&mut self, now: Instant, input: Option<&SimInput>) {
        self.scratch.clear();
        while let Some(e) = self.inner.poll_effect() {
            self.scratch.push(e);
        }
        let effects = std::mem::take(&mut self.scratch);
        match self.mutant {
            Mutant::SkipDedup => self.pump_skip_dedup(input, &effects),
            Mutant::DelayFromFailure => {
                for e in &effects {
                    let e = match e {
                        Effect::StartTimer {
                            attempt,
                            base,
                            delay,
                            deadline,
                        } => {
                            self.attempt_start = now;
                            Effect::StartTimer {
                                attempt: *attempt,
                                base: *base,
                                delay: *delay,
                                deadline: deadline.saturating_add(self.lag),
                            }
                        }
                        Effect::AttemptOutcome(Err(AttemptError::Failed(_))) => {
                            // From now on the inner clock lags by the attempt's duration,
                            // so its retry timer runs from the failure.
                            self.lag += now.saturating_duration_since(self.attempt_start);
                            e.clone()
                        }
                        other => other.clone(),
                    };
                    self.out.push_back(e);
                }
            }
            Mutant::EarlyDisconnected => {
                for e in &effects {
                    if self.swallow_disconnected
                        && let Effect::Emit {
                            id,
                            event: Event::Disconnected,
                        } = e
                    {
                        self.swallow_disconnected = false;
                        if self.fake_disconnected_handled {
                            self.fake_disconnected_handled = false;
                            self.inner
                                .handle(self.inner_now(now), Input::EventHandled { event: *id });
                            self.pump(now, None);
                        } else {
                            // Its handling is forwarded when the fake one's comes.
                            self.held.push_back(e.clone());
                        }
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::ForgetLateClose => {
                let current = self.inner.current_conn_id();
                for e in &effects {
                    if let Effect::CloseConnection { conn, .. } = e
                        && Some(*conn) != current
                    {
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::SuppressFailure => {
                for e in &effects {
                    if let Effect::Emit {
                        id,
                        event: Event::FailedToConnect(_),
                    } = e
                    {
                        // Handled at once, never shown.
                        self.inner
                            .handle(self.inner_now(now), Input::EventHandled { event: *id });
                        self.pump(now, None);
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::EarlyRetry => {
                for e in &effects {
                    if let Effect::StartTimer {
                        attempt,
                        base,
                        delay,
                        deadline,
                    } = e
                    {
                        self.out.push_back(Effect::StartTimer {
                            attempt: *attempt,
                            base: *base,
                            delay: *delay,
                            deadline: self.outer(*deadline),
                        });
                        self.lead += *delay / 2;
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::LateCloseFinished => {
                for e in &effects {
                    if let Effect::CloseFinished = e {
                        self.held_finish = true;
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::DropFailureOutcome => {
                for e in &effects {
                    if let Effect::AttemptOutcome(Err(AttemptError::Failed(_))) = e {
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::DropAbortedFailure => {
                for e in &effects {
                    if let Effect::Emit {
                        id,
                        event: Event::FailedToConnect(_),
                    } = e
                        && self.inner.is_closed()
                    {
                        // After abort: handled at once, never shown.
                        self.inner
                            .handle(self.inner_now(now), Input::EventHandled { event: *id });
                        self.pump(now, None);
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::BusyTimer => self.out.extend(effects.iter().cloned()),
            Mutant::RetryNowTwice => {
                for e in &effects {
                    // The inner clock runs ahead after a forced retry now: its deadlines,
                    // shown on the outer clock.
                    if let Effect::StartTimer {
                        attempt,
                        base,
                        delay,
                        deadline,
                    } = e
                    {
                        self.out.push_back(Effect::StartTimer {
                            attempt: *attempt,
                            base: *base,
                            delay: *delay,
                            deadline: self.outer(*deadline),
                        });
                        continue;
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::GapInHandover => {
                for e in &effects {
                    if let Effect::BecameCurrent { conn, .. } = e
                        && let Some(old) = self.prev_current
                        && old != *conn
                    {
                        self.out.push_back(Effect::NoLongerCurrent { conn: old });
                    }
                    self.out.push_back(e.clone());
                }
            }
            Mutant::LateRetiredClose => {
                for e in &effects {
                    match e {
                        Effect::BecameCurrent { conn, .. } => {
                            if let Some(old) = self.prev_current
                                && old != *conn
                            {
                                self.retired.push(old);
                            }
                        }
                        Effect::CloseConnection { conn, .. } if self.retired.contains(conn) => {
                            self.retired.retain(|c| c != conn);
                            self.held_closes.push(e.clone());
                            continue;
                        }
                        _ => {}
                    }
                    self.out.push_back(e.clone());
                }
            }
        }
        self.scratch = effects;
    }

    fn pump_skip_dedup(&mut self, input: Option<&SimInput>, effects: &[SimEffect]) {
        if self.fake.is_some() {
            self.held.extend(effects.iter().cloned());
            return;
        }
        let emitted = effects.iter().any(|e| matches!(e, Effect::Emit { .. }));
        let trigger = if emitted {
            None
        } else {
            effects
                .iter()
                .enumerate()
                .find_map(|(i, e)| match (e, input) {
                    (
                        Effect::Connect {
                            attempt, address, ..
                        },
                        Some(Input::AddressResult { attempt: a, .. }),
                    ) if a == attempt => Some((i, Event::ObtainedAddress(*address), true)),
                    (Effect::AttemptOutcome(Err(AttemptError::Failed(err))), _) => {
                        Some((i, Event::FailedToConnect(*err), false))
                    }
                    _ => None,
                })
        };
        match trigger {
            None => self.out.extend(effects.iter().cloned()),
            Some((i, event, before)) => {
                // The repeated event goes out; what followed it waits for its handling.
                let split = if before { i } else { i + 1 };
                self.out.extend(effects[..split].iter().cloned());
                let fake = self.fake_event(event);
                self.out.push_back(fake);
                self.held.extend(effects[split..].iter().cloned());
            }
        }
    }
}

impl MachineView for MutantMachine {
    fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }
    fn is_close_finished(&self) -> bool {
        self.inner.is_close_finished() && !self.held_finish
    }
    fn current_conn_id(&self) -> Option<ConnId> {
        self.inner.current_conn_id()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        if self.mutant == Mutant::BusyTimer && !self.inner.is_close_finished() {
            return Some(Instant::ZERO);
        }
        self.inner.poll_timeout().map(|t| self.outer(t))
    }
    fn consecutive_unsuccessful_attempts(&self) -> Option<u32> {
        MachineView::consecutive_unsuccessful_attempts(&self.inner)
    }
    fn lingering_connections(&self) -> Option<&[ConnId]> {
        MachineView::lingering_connections(&self.inner)
    }
    fn current_connection_hash(&self) -> Option<Option<u64>> {
        self.inner.current_connection_hash()
    }
    fn handover_state(
        &self,
    ) -> Option<Option<(ConnId, Option<persistent_connection_core::AttemptId>)>> {
        self.inner.handover_state()
    }
    fn state(&self) -> State {
        match self.fake {
            Some(_) => State::HandlingEvent(EventKind::FailedToConnect),
            None => self.inner.state(),
        }
    }
}

impl SimMachine<Addr, Conn, SimError> for MutantMachine {
    fn handle(&mut self, now: Instant, input: SimInput) {
        if self.held_finish {
            self.held_finish = false;
            self.out.push_back(Effect::CloseFinished);
        }
        let held = std::mem::take(&mut self.held_closes);
        self.out.extend(held);
        self.prev_current = self.inner.current_conn_id();
        if self.mutant == Mutant::RetryNowTwice
            && matches!(input, Input::RetryNow { .. })
            && self.inner.attempt_began_by_retry_now().is_some()
            && let Some(deadline) = self.inner.retry_deadline()
            && (matches!(
                self.inner.state(),
                State::WaitingToRetry | State::WaitingToReconnect
            ) || (self.inner.state() == State::Connected
                && self.inner.handover().is_some_and(|h| h.attempt.is_none())))
        {
            // The bound would refuse it: move the inner clock to the deadline instead, so
            // the wait ends now.
            let inner = self.inner_now(now);
            self.lead += deadline.saturating_duration_since(inner);
        }
        if let Input::EventHandled { event } = &input
            && Some(*event) == self.fake
        {
            self.fake = None;
            match self.mutant {
                Mutant::EarlyDisconnected => {
                    // Forward to the inner machine's own Disconnected, now or when it comes.
                    if let Some(Effect::Emit { id, .. }) = self.held.pop_front() {
                        self.inner
                            .handle(self.inner_now(now), Input::EventHandled { event: id });
                        self.pump(now, None);
                    } else {
                        self.fake_disconnected_handled = true;
                    }
                }
                _ => {
                    let held = std::mem::take(&mut self.held);
                    self.out.extend(held);
                }
            }
            return;
        }
        let early = self.mutant == Mutant::EarlyDisconnected
            && matches!(input, Input::Closed { conn } if Some(conn) == self.inner.current_conn_id())
            && self.inner.state() == State::HandlingEvent(EventKind::Connected);
        self.inner.handle(self.inner_now(now), input.clone());
        self.pump(now, Some(&input));
        if early {
            let fake = self.fake_event(Event::Disconnected);
            self.out.push_back(fake);
            self.swallow_disconnected = true;
        }
    }

    fn poll_effect(&mut self) -> Option<SimEffect> {
        self.out.pop_front()
    }
}
