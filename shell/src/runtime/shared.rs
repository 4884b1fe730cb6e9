//! The state shared by the handles and the driver task, and the protocol between them.
//!
//! The machine itself lives here, behind one lock. Whoever has something to tell it — the
//! driver (a result, a timer, a handled event) or a handle (`close`, R11, `abort`) — feeds
//! it under that lock and, before letting go, performs the effects that only touch shared
//! state: publishing an attempt's outcome to the R10 waiters, a new current connection to
//! the R9 waiters, the closed flags, close finished. Effects that need the runtime (run
//! `on_event`, `get_address`, `connect`, close a connection) are queued for the driver,
//! which is woken. So:
//!
//! - the shell decides nothing: `is_closed()` is the machine's own answer, read before
//!   the call returns (S2), except that R11 and `abort` count as closed at once even
//!   while the machine keeps the current connection up until it goes away (R11, §7);
//! - a waiter registers under the lock that publishes, so it gets exactly the first
//!   outcome or connection after its registration (S1) and cannot miss a close (S2);
//! - if the driver task dies, its drop guard ends everything here (S3).
//!
//! The `loom` model tests in `runtime/loom.rs` drive this type from several threads.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;

use arc_swap::ArcSwapOption;
use persistent_connection_core::{AttemptError, Effect, Input, Instant, Machine};
use tokio::sync::broadcast;

use crate::conn::closable::Closable;
use crate::error::AttemptOutcome;
use crate::error::Error;
use crate::events::Event;
use crate::runtime::callbacks::AbortTarget;
use crate::runtime::driver_state::Driver;
use crate::runtime::sync::{AtomicU8, AtomicUsize, Mutex, MutexGuard, lock};
use crate::runtime::waiters::{Slot, Wait, fill_all, register};
use crate::status::{State, Stats};

impl<A, C, E> AbortTarget<E> for Shared<A, C, E>
where
    A: Clone + PartialEq + Send + Sync,
    C: Clone + Send + Sync,
    E: Clone + PartialEq + Send + Sync,
{
    fn abort(&self, error: E) {
        self.feed_from_handle(Input::Abort {
            error: Error::User(error),
        });
    }
}

/// The Tokio instant of a machine time; times too far to represent are clamped about 30
/// years ahead (R7: `Duration::MAX` must not panic).
pub(crate) fn to_tokio(base: tokio::time::Instant, t: Instant) -> tokio::time::Instant {
    base.checked_add(t.since_origin())
        .or_else(|| tokio::time::Instant::now().checked_add(FAR_FUTURE))
        .unwrap_or(base)
}

/// Where machine deadlines that do not fit in a Tokio `Instant` go: about 30 years from
/// now. Far enough that no real retry delay is cut short (a deadline that does not fit is
/// at least `Instant::MAX - base` away, i.e. centuries), yet representable from any `now`.
pub(crate) const FAR_FUTURE: std::time::Duration =
    std::time::Duration::from_secs(30 * 365 * 24 * 3600);

/// `flags`: the machine counts as closed (R8, R11, R12).
const CLOSED: u8 = 1;
/// `flags`: `close()` was called (or the last handle dropped, or the driver died): the
/// current connection is being torn down and must not be handed out (S1).
const TEARING_DOWN: u8 = 2;
/// `flags`: close finished (R8), or the driver is gone (S3).
const FINISHED: u8 = 4;

pub(crate) type CoreEffect<A, C, E> = Effect<A, C, Error<E>>;
pub(crate) type CoreInput<A, C, E> = Input<A, C, Error<E>>;

/// What only the lock holder may touch.
pub(crate) struct Inner<A, C, E> {
    machine: Machine<A, C, Error<E>>,
    /// The driver's latest time; handles feed their inputs at it.
    now: Instant,
    /// Effects for the driver to perform, in order.
    io: VecDeque<CoreEffect<A, C, E>>,
    /// The driver task's waker, while it waits.
    driver: Option<Waker>,
    /// The waiters, allocated by the first one; freed while the machine idles connected
    /// with none.
    waiters: Option<Box<Waiters<C, E>>>,
    /// The last strong handle is gone; the driver closes (R14) when it sees this.
    orphaned: bool,
    /// R11 or `abort` was fed: the persistent connection counts as closed from then on,
    /// also while the machine keeps a current connection up until it goes away (R11, §7).
    stopped: bool,
    /// Observers' channel, created by the first subscriber; dropped when close finishes,
    /// which ends every observer's stream (S4).
    events: Option<broadcast::Sender<Event<A, C, E>>>,
    event_capacity: u32,
    /// Told of every input the machine takes (so of every change of the counters, the
    /// state and the consecutive count), for the metrics exporter, which a de-duplicated
    /// failure would otherwise not wake; created by the first watcher, dropped when close
    /// finishes.
    #[cfg(feature = "metrics")]
    changes: Option<tokio::sync::watch::Sender<()>>,
    /// Close finished or the driver is gone: nothing is fed any more.
    ended: bool,
    /// The Tokio instant of the machine's time zero, once the driver has started.
    base: Option<tokio::time::Instant>,
    /// The address the current connection was made to (R15's catalog follower compares it
    /// with the listing); set by the driver, cleared when no connection is current.
    current_address: Option<A>,
    /// R15's grace for handovers asked through a handle.
    handover_grace: std::time::Duration,
}

/// What handles wait for, behind the lock that publishes it (S1, S2).
struct Waiters<C, E> {
    /// `connected()` waiters (R9).
    connected: Vec<Arc<Slot<C>>>,
    /// `connected_or_failed_to_connect()` waiters (R10).
    outcomes: Vec<Arc<Slot<AttemptOutcome<C, E>>>>,
    /// `close_finished()` waiters.
    finish: Vec<Arc<Slot<()>>>,
}

impl<A, C, E> Inner<A, C, E> {
    /// The waiters, allocated if there were none.
    fn waiters(&mut self) -> &mut Waiters<C, E> {
        self.waiters.get_or_insert_with(|| {
            Box::new(Waiters {
                connected: Vec::new(),
                outcomes: Vec::new(),
                finish: Vec::new(),
            })
        })
    }
}

/// Every handover reason, for counts by reason (metrics labels).
pub(crate) const HANDOVER_REASONS: [persistent_connection_core::HandoverReason; 5] = {
    use persistent_connection_core::HandoverReason as R;
    [R::User, R::Drain, R::MaxAge, R::Withdrawn, R::FailBack]
};

/// See [`Stats`]. Plain std atomics: they are statistics, not part of the protocol.
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    failures: AtomicU64,
    reported_failures: AtomicU64,
    connections: AtomicU64,
    disconnections: AtomicU64,
    handovers: AtomicU64,
    /// Handovers by reason, in [`HANDOVER_REASONS`]' order.
    handovers_by: [AtomicU64; 5],
    handover_failures: AtomicU64,
    retries_now: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl<A, C, E> Shared<A, C, E> {
    /// Handovers so far, by reason in [`HANDOVER_REASONS`]' order.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn handovers_by_reason(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.counters.handovers_by[i].load(Ordering::Relaxed))
    }
}

/// Shared by the handles (strong and weak), connect contexts and the driver task.
pub(crate) struct Shared<A, C, E> {
    pub(crate) server_name: Arc<str>,
    /// The current connection (R5, R6), for lock-free reads on the hot path. Written under
    /// the lock only.
    current: ArcSwapOption<C>,
    /// `CLOSED | TEARING_DOWN | FINISHED`, written under the lock only.
    flags: AtomicU8,
    /// Strong handles; the last one's drop closes (R14).
    handles: AtomicUsize,
    /// Counters since creation, written under the lock, read without it.
    counters: Counters,
    inner: Mutex<Inner<A, C, E>>,
    /// The driver task's own state, in this allocation so that the task holds only a
    /// pointer (issue 25). Locked by the driver task alone, never by a handle, so the user
    /// code the driver polls under it may call any handle method. Not a model lock: loom
    /// explores the protocol above, which this does not take part in.
    driver: std::sync::Mutex<Option<Driver<A, C, E>>>,
}

impl<A, C, E> Shared<A, C, E>
where
    A: Clone + PartialEq,
    C: Clone,
    E: Clone + PartialEq,
{
    /// Shared state around a new machine (which has already emitted R1's event), with one
    /// strong handle, and an observer channel if one is set up before the driver starts.
    pub(crate) fn new(
        server_name: Arc<str>,
        machine: Machine<A, C, Error<E>>,
        events: Option<broadcast::Sender<Event<A, C, E>>>,
        event_capacity: usize,
    ) -> Shared<A, C, E> {
        let shared = Shared {
            server_name,
            current: ArcSwapOption::empty(),
            flags: AtomicU8::new(0),
            handles: AtomicUsize::new(1),
            counters: Counters::default(),
            inner: Mutex::new(Inner {
                machine,
                now: Instant::ZERO,
                io: VecDeque::new(),
                driver: None,
                waiters: None,
                orphaned: false,
                stopped: false,
                events,
                event_capacity: u32::try_from(event_capacity).unwrap_or(u32::MAX),
                #[cfg(feature = "metrics")]
                changes: None,
                ended: false,
                base: None,
                current_address: None,
                handover_grace: std::time::Duration::from_secs(10),
            }),
            driver: std::sync::Mutex::new(None),
        };
        {
            let mut inner = lock(&shared.inner);
            shared.absorb(&mut inner);
        }
        shared
    }

    /// Feeds `input` to the machine at the driver's latest time, performs the shared-state
    /// effects and wakes the driver for the rest. Used by handles and connect contexts.
    pub(crate) fn feed_from_handle(&self, input: CoreInput<A, C, E>) {
        let waker = {
            let mut inner = lock(&self.inner);
            if inner.ended {
                return;
            }
            let now = inner.now;
            self.feed_locked(&mut inner, now, input);
            if inner.io.is_empty() {
                None
            } else {
                inner.driver.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Feeds `input` at the time it happens: Tokio's clock now, on the machine's time line
    /// (the driver's latest time before the driver has started). For inputs whose time
    /// matters to the machine, from outside the driver: a handover or a retry now starts
    /// an attempt and its retry timer (R15, R16).
    pub(crate) fn feed_now_from_handle(&self, input: CoreInput<A, C, E>) {
        let waker = {
            let mut inner = lock(&self.inner);
            if inner.ended {
                return;
            }
            let now = match inner.base {
                Some(base) => Instant::from_since_origin(
                    tokio::time::Instant::now().saturating_duration_since(base),
                )
                .max(inner.now),
                None => inner.now,
            };
            inner.now = now;
            self.feed_locked(&mut inner, now, input);
            if inner.io.is_empty() {
                None
            } else {
                inner.driver.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How long a connection replaced by a handover asked through a handle stays open.
    pub(crate) fn handover_grace(&self) -> std::time::Duration {
        lock(&self.inner).handover_grace
    }

    pub(crate) fn set_handover_grace(&self, grace: std::time::Duration) {
        lock(&self.inner).handover_grace = grace;
    }

    /// During a handover (R15), the current connection's address, which its lookup should
    /// not give again.
    pub(crate) fn handover_lookup_avoids(&self) -> Option<A> {
        let inner = lock(&self.inner);
        inner.machine.handover()?;
        inner.current_address.clone()
    }

    /// The address of the current connection, as the driver recorded it.
    pub(crate) fn current_address(&self) -> Option<A> {
        lock(&self.inner).current_address.clone()
    }

    /// Records the address the connection that just became current was made to.
    pub(crate) fn set_current_address(&self, address: Option<A>) {
        lock(&self.inner).current_address = address;
    }

    /// The reason of the pending handover (R15), if one is pending.
    pub(crate) fn pending_handover(&self) -> Option<persistent_connection_core::HandoverReason> {
        lock(&self.inner).machine.handover().map(|h| h.reason)
    }

    /// Feeds `input` at `now` (the driver's clock). Used by the model tests.
    #[cfg(all(test, pc_loom))]
    pub(crate) fn feed(&self, now: Instant, input: CoreInput<A, C, E>) {
        let mut inner = lock(&self.inner);
        if inner.ended {
            return;
        }
        inner.now = now;
        self.feed_locked(&mut inner, now, input);
    }

    /// Feeds `input` at the driver's clock now: Tokio's time since the driver started.
    /// Used by the driver.
    pub(crate) fn feed_now(&self, input: CoreInput<A, C, E>) {
        let mut inner = lock(&self.inner);
        if inner.ended {
            return;
        }
        let now = inner.base.map_or(Instant::ZERO, |base| {
            Instant::from_since_origin(tokio::time::Instant::now().saturating_duration_since(base))
        });
        inner.now = now;
        self.feed_locked(&mut inner, now, input);
    }

    /// The one way into the machine: records a close request (S1: the current connection
    /// is no longer handed out), feeds the input and absorbs its effects.
    fn feed_locked(
        &self,
        inner: &mut MutexGuard<'_, Inner<A, C, E>>,
        now: Instant,
        input: CoreInput<A, C, E>,
    ) {
        match input {
            Input::CloseRequested => {
                self.flags.fetch_or(TEARING_DOWN, Ordering::AcqRel);
            }
            Input::CloseWhenCurrentConnectionIsClosed | Input::Abort { .. } => {
                inner.stopped = true;
            }
            _ => {}
        }
        // R12: the failure of the attempt that aborted is counted like any failure, but
        // no `AttemptOutcome` tells of it (its waiters already have the abort's error):
        // it shows as one more unsuccessful attempt of a machine that counts as closed
        // (short of u32::MAX in a row, where that count saturates).
        let aborting = matches!(
            &input,
            Input::AddressResult { result: Err(_), .. }
                | Input::ConnectResult { result: Err(_), .. }
        ) && inner.machine.is_closed();
        let unsuccessful = inner.machine.consecutive_unsuccessful_attempts();
        inner.machine.handle(now, input);
        if aborting && inner.machine.consecutive_unsuccessful_attempts() > unsuccessful {
            bump(&self.counters.failures);
        }
        self.absorb(inner);
        #[cfg(feature = "metrics")]
        if let Some(changes) = &inner.changes {
            changes.send_replace(());
        }
    }

    /// Drains the machine's effects: shared-state ones are performed here, under the lock;
    /// the others go to the driver's queue.
    fn absorb(&self, inner: &mut MutexGuard<'_, Inner<A, C, E>>) {
        let inner = &mut **inner;
        while let Some(effect) = inner.machine.poll_effect() {
            match effect {
                Effect::AttemptOutcome(outcome) => {
                    if matches!(outcome, Err(AttemptError::Failed(_))) {
                        bump(&self.counters.failures);
                    }
                    if let Some(w) = &mut inner.waiters {
                        fill_all(&mut w.outcomes, &outcome);
                    }
                }
                Effect::BecameCurrent { conn, connection } => {
                    bump(&self.counters.connections);
                    self.current.store(Some(Arc::new(connection.clone())));
                    if let Some(w) = &mut inner.waiters {
                        fill_all(&mut w.connected, &connection);
                    }
                    // The driver watches it for its close (R6).
                    inner
                        .io
                        .push_back(Effect::BecameCurrent { conn, connection });
                }
                Effect::NoLongerCurrent { .. } => {
                    inner.current_address = None;
                    self.current.store(None);
                }
                Effect::StartTimer {
                    attempt,
                    base,
                    delay,
                    ..
                } => {
                    bump(&self.counters.attempts);
                    tracing::debug!(server = %self.server_name, %attempt, ?base, ?delay, "attempt begins; retry timer started");
                }
                Effect::Emit { id, event } => {
                    match &event {
                        persistent_connection_core::Event::FailedToConnect(_) => {
                            bump(&self.counters.reported_failures)
                        }
                        persistent_connection_core::Event::Disconnected => {
                            bump(&self.counters.disconnections)
                        }
                        persistent_connection_core::Event::HandedOver { reason, .. } => {
                            bump(&self.counters.handovers);
                            if let Some(i) = HANDOVER_REASONS.iter().position(|r| r == reason) {
                                bump(&self.counters.handovers_by[i]);
                            }
                        }
                        _ => {}
                    }
                    inner.io.push_back(Effect::Emit { id, event });
                }
                // R8: the machine has nothing of ours left, but the driver may still
                // hold what the effects queued ahead of this release (a cancelled
                // attempt's future) or take a late connection the machine will close:
                // the driver finishes the close once it has done all that (`finish_close`).
                Effect::CloseFinished => inner.io.push_back(Effect::CloseFinished),
                other => inner.io.push_back(other),
            }
        }
        let k = inner.machine.counters();
        self.counters
            .handover_failures
            .store(u64::from(k.handover_failures), Ordering::Relaxed);
        self.counters
            .retries_now
            .store(u64::from(k.retries_now), Ordering::Relaxed);
        let mut flags = self.flags() & !CLOSED;
        if inner.machine.is_closed() || inner.stopped || inner.ended {
            flags |= CLOSED;
        }
        self.flags.store(flags, Ordering::Release);
    }

    /// R8's close finished, called by the driver once it has performed `CloseFinished` and
    /// every effect queued before it (a cancelled attempt's future dropped) and closed any
    /// connection the machine closed after it: resolves the close's waiters.
    pub(crate) fn finish_close(&self) {
        let mut inner = lock(&self.inner);
        if !inner.ended {
            tracing::info!(server = %self.server_name, "close finished");
            self.end(&mut inner);
        }
    }

    /// Close finished (R8) or the driver died (S3): resolve `close()`/`close_finished()`
    /// and R10 waiters, drop R9 waiters (they never resolve after close, R9) and end the
    /// observers' streams (S4).
    fn end(&self, inner: &mut Inner<A, C, E>) {
        inner.ended = true;
        if let Some(mut w) = inner.waiters.take() {
            fill_all(&mut w.outcomes, &Err(AttemptError::Closed));
            fill_all(&mut w.finish, &());
        }
        inner.events = None;
        #[cfg(feature = "metrics")]
        {
            inner.changes = None;
        }
        self.flags
            .fetch_or(CLOSED | TEARING_DOWN | FINISHED, Ordering::AcqRel);
    }

    /// Called by the driver's drop guard: if close has not finished, the driver died
    /// abnormally (its runtime shut down, or a drop panicked). Nothing may hang on it (S3).
    pub(crate) fn driver_gone(&self) {
        let mut inner = lock(&self.inner);
        if !inner.ended {
            tracing::error!(server = %self.server_name, "driver task ended before close finished; the persistent connection counts as closed");
            self.end(&mut inner);
            inner.io.clear();
            self.current.store(None);
        }
    }

    /// The next effect for the driver, if any. The close of a connection whose last
    /// handle was dropped (R14) is fed first. Observers get each event here, as the driver
    /// takes it to hand it to `on_event`, in order (S4).
    pub(crate) fn pop_io(&self) -> Option<CoreEffect<A, C, E>> {
        let mut inner = lock(&self.inner);
        if std::mem::take(&mut inner.orphaned) && !inner.ended {
            tracing::debug!(server = %self.server_name, "last handle dropped; closing");
            let now = inner.now;
            self.feed_locked(&mut inner, now, Input::CloseRequested);
        }
        let effect = inner.io.pop_front()?;
        if let (Effect::Emit { event, .. }, Some(observers)) = (&effect, &inner.events) {
            let _ = observers.send(event.clone());
        }
        Some(effect)
    }

    /// The driver has nothing to do: unless an effect was queued meanwhile (`None`), store
    /// its waker and return the machine's retry deadline (with its Tokio instant), and
    /// whether the machine idles connected. A connected machine waits for nothing but its
    /// connection, so the effect buffers are released then: an idle connection keeps none.
    #[allow(clippy::type_complexity)]
    pub(crate) fn park(
        &self,
        waker: &Waker,
    ) -> Option<(Option<(Instant, tokio::time::Instant)>, bool)> {
        let mut inner = lock(&self.inner);
        if !inner.io.is_empty() || inner.orphaned {
            return None;
        }
        match &inner.driver {
            Some(old) if old.will_wake(waker) => {}
            _ => inner.driver = Some(waker.clone()),
        }
        let idle = inner.machine.state() == persistent_connection_core::State::Connected;
        if idle {
            inner.io = VecDeque::new();
            inner.machine.release_buffers();
            // Waiters that gave up (their futures dropped) do not keep the lists alive.
            if let Some(w) = &mut inner.waiters {
                w.connected.retain(Slot::is_wanted);
                w.outcomes.retain(Slot::is_wanted);
                w.finish.retain(Slot::is_wanted);
                if w.connected.is_empty() && w.outcomes.is_empty() && w.finish.is_empty() {
                    inner.waiters = None;
                }
            }
        }
        let base = inner.base.unwrap_or_else(tokio::time::Instant::now);
        let deadline = inner.machine.poll_timeout().map(|d| (d, to_tokio(base, d)));
        Some((deadline, idle))
    }
}

impl<A, C, E> Shared<A, C, E> {
    /// The driver's state (see `driver`); for the driver task only.
    pub(crate) fn driver_state(&self) -> std::sync::MutexGuard<'_, Option<Driver<A, C, E>>> {
        self.driver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn flags(&self) -> u8 {
        self.flags.load(Ordering::Acquire)
    }

    /// R8, R11, R12: the machine counts as closed, or the driver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.flags() & CLOSED != 0
    }

    /// Close finished, or the driver is gone.
    pub(crate) fn is_finished(&self) -> bool {
        self.flags() & FINISHED != 0
    }

    /// The driver started at `base` (Tokio's clock at the machine's time zero).
    pub(crate) fn set_base(&self, base: tokio::time::Instant) {
        lock(&self.inner).base = Some(base);
    }

    /// The Tokio instant of the latest attempt's retry deadline, for logs.
    pub(crate) fn next_attempt_at(&self) -> Option<tokio::time::Instant> {
        let inner = lock(&self.inner);
        Some(to_tokio(inner.base?, inner.machine.retry_deadline()?))
    }

    /// What the machine is doing, in the public vocabulary.
    pub(crate) fn state(&self) -> State {
        use persistent_connection_core::{EventKind, State as M};
        let inner = lock(&self.inner);
        if inner.ended {
            return State::Closed;
        }
        let machine = &inner.machine;
        let waiting = || State::WaitingToRetry {
            next_attempt: match (inner.base, machine.retry_deadline()) {
                (Some(base), Some(d)) => to_tokio(base, d),
                _ => tokio::time::Instant::now(),
            },
        };
        match machine.state() {
            M::Closed => State::Closed,
            _ if machine.is_closed() => State::Closing,
            M::Connected | M::HandlingEvent(EventKind::Connected | EventKind::HandedOver) => {
                State::Connected
            }
            M::WaitingToRetry
            | M::WaitingToReconnect
            | M::HandlingEvent(EventKind::FailedToConnect | EventKind::Disconnected) => waiting(),
            M::HandlingEvent(_) | M::Resolving(_) | M::Connecting(_) => State::Connecting,
            M::Closing => State::Closing,
        }
    }

    /// Unsuccessful attempts since the last successful connect (R12).
    pub(crate) fn consecutive_unsuccessful_attempts(&self) -> u32 {
        lock(&self.inner)
            .machine
            .consecutive_unsuccessful_attempts()
    }

    /// A snapshot of the counters, without a lock.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let failures = c.failures.load(Ordering::Relaxed);
        let reported = c.reported_failures.load(Ordering::Relaxed);
        Stats {
            attempts: c.attempts.load(Ordering::Relaxed),
            failures,
            deduplicated_failures: failures.saturating_sub(reported),
            connections: c.connections.load(Ordering::Relaxed),
            disconnections: c.disconnections.load(Ordering::Relaxed),
            handovers: c.handovers.load(Ordering::Relaxed),
            handover_failures: c.handover_failures.load(Ordering::Relaxed),
            retries_now: c.retries_now.load(Ordering::Relaxed),
        }
    }

    /// Whether a connection is current (for `Debug`).
    pub(crate) fn has_current(&self) -> bool {
        self.current.load().is_some()
    }

    // ---- handles ----

    /// One more strong handle.
    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A strong handle from a weak one, if any strong one still exists.
    pub(crate) fn try_add_handle(&self) -> bool {
        let mut n = self.handles.load(Ordering::Acquire);
        loop {
            if n == 0 {
                return false;
            }
            match self
                .handles
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
    }

    /// A strong handle went away. The last one's drop closes in the background (R14): it
    /// tells the driver, which feeds the close.
    pub(crate) fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            let waker = {
                let mut inner = lock(&self.inner);
                inner.orphaned = true;
                inner.driver.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<A, C, E> Shared<A, C, E>
where
    A: Clone + PartialEq,
    C: Closable + Clone,
    E: Clone + PartialEq,
{
    /// The current connection if it may be handed out: not closed, and not being torn down
    /// by `close()` (S1). Lock-free.
    pub(crate) fn live_current(&self) -> Option<C> {
        self.with_live_current(|c| c.cloned())
    }

    /// Calls `f` with the live current connection (see [`live_current`](Self::live_current)).
    pub(crate) fn with_live_current<R>(&self, f: impl FnOnce(Option<&C>) -> R) -> R {
        let guard = self.current.load();
        let live = guard
            .as_deref()
            .filter(|c| self.flags() & TEARING_DOWN == 0 && !c.is_closed());
        f(live)
    }

    /// R9: the live current connection now, or a slot for the next one to become current
    /// (`None` after close: it never resolves).
    pub(crate) fn wait_connected(&self) -> Result<C, Option<Wait<C>>> {
        if let Some(c) = self.live_current() {
            return Ok(c);
        }
        let mut inner = lock(&self.inner);
        // Checked again under the lock that publishes: nothing can slip in between.
        if let Some(c) = self.live_current() {
            return Ok(c);
        }
        if inner.ended || self.flags() & TEARING_DOWN != 0 {
            return Err(None);
        }
        Err(Some(Wait::new(register(&mut inner.waiters().connected))))
    }

    /// R10: the outcome now (connected, or closed), or a slot for the next one.
    pub(crate) fn wait_outcome(&self) -> Wait<AttemptOutcome<C, E>> {
        // Lock-free and allocation-free when the answer is already known.
        if self.is_closed() {
            return Wait::ready(Err(AttemptError::Closed));
        }
        if let Some(c) = self.live_current() {
            return Wait::ready(Ok(c));
        }
        let mut inner = lock(&self.inner);
        // Checked again under the lock that publishes (S1, S2).
        if self.is_closed() || inner.ended {
            return Wait::ready(Err(AttemptError::Closed));
        }
        if let Some(c) = self.live_current() {
            return Wait::ready(Ok(c));
        }
        Wait::new(register(&mut inner.waiters().outcomes))
    }

    /// `close_finished()`: ready at once if finished, else a slot filled when it is.
    pub(crate) fn wait_finished(&self) -> Option<Wait<()>> {
        if self.is_finished() {
            return None;
        }
        let mut inner = lock(&self.inner);
        if inner.ended {
            return None;
        }
        Some(Wait::new(register(&mut inner.waiters().finish)))
    }

    /// A receiver woken after every input the machine takes from now on, closed once close
    /// has finished; `None` if it already has.
    #[cfg(feature = "metrics")]
    pub(crate) fn watch_changes(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        let mut inner = lock(&self.inner);
        if inner.ended {
            return None;
        }
        let changes = inner
            .changes
            .get_or_insert_with(|| tokio::sync::watch::Sender::new(()));
        Some(changes.subscribe())
    }

    /// A receiver of every event from now on; an ended one after close finished (S4).
    /// With the receiver comes the capacity the stream lags by (S4).
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Event<A, C, E>>, usize) {
        let mut inner = lock(&self.inner);
        if inner.ended {
            let (tx, rx) = broadcast::channel(1);
            drop(tx);
            return (rx, 1);
        }
        let capacity = inner.event_capacity as usize;
        let rx = inner
            .events
            .get_or_insert_with(|| broadcast::Sender::new(capacity))
            .subscribe();
        (rx, capacity)
    }
}
