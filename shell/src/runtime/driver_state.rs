//! The driver's state: what the driver task keeps between polls, in the shared allocation
//! (`shared.rs` holds it; `driver.rs` is the code that runs on it). Data only, so that the
//! shared state need not know the driver's code.

use std::pin::Pin;

use persistent_connection_core::{AttemptId, ConnId, EventId, Instant};

use crate::runtime::callbacks::{AttemptOutput, BoxFuture, Callbacks};

/// A callback in flight: its request id and its future.
pub(crate) type Slot<I, T> = Option<(I, BoxFuture<T>)>;

/// What the driver keeps, in the shared allocation, locked only by the driver task (never
/// by a handle, so user code it polls may call any handle method).
pub(crate) struct Driver<A, C, E> {
    pub(crate) callbacks: Callbacks<A, C, E>,
    /// The current connection's close (R6).
    pub(crate) watch: Option<Watch<C>>,
    /// What only a connection that is not idle needs; freed while connected and idle.
    pub(crate) busy: Option<Box<Busy<A, C, E>>>,
    pub(crate) seed: u64,
    pub(crate) started: bool,
}

/// The driver's state while it has something to do besides watching the current
/// connection: the callbacks in flight, the timer, the connections being closed.
pub(crate) struct Busy<A, C, E> {
    /// The running `on_event` (at most one, I3). `Err` carries a panic's message.
    pub(crate) event: Slot<EventId, Result<(), String>>,
    /// The in-flight `get_address` or `connect` (at most one).
    pub(crate) attempt: Slot<AttemptId, AttemptOutput<A, C, E>>,
    /// The address the attempt in flight connects to, for the failure's log line.
    pub(crate) address: Option<A>,
    /// Other connections' closes (R8): a stray, or the current one when close asks.
    pub(crate) closing: Vec<BoxFuture<ConnId>>,
    /// The retry timer, kept for the next wait (one allocation per connection cycle, not
    /// per attempt).
    pub(crate) timer: Option<(Instant, Pin<Box<tokio::time::Sleep>>)>,
    /// `CloseFinished` was performed; the task ends once `closing` is empty.
    pub(crate) finished: bool,
}

impl<A, C, E> Default for Busy<A, C, E> {
    fn default() -> Self {
        Busy {
            event: None,
            attempt: None,
            address: None,
            closing: Vec::new(),
            timer: None,
            finished: false,
        }
    }
}

impl<A, C, E> Busy<A, C, E> {
    /// Nothing in flight, nothing closing: only the timer and the log's address, which an
    /// idle connection does without.
    pub(crate) fn is_idle(&self) -> bool {
        self.event.is_none() && self.attempt.is_none() && self.closing.is_empty() && !self.finished
    }
}

/// How the driver watches the current connection's close (R6).
pub(crate) enum Watch<C> {
    /// Through [`Closable::poll_close_finished`]: the connection itself, no future.
    Polled { conn: ConnId, connection: C },
    /// Through its `close_finished` future, for a type that cannot be polled without one.
    Boxed(BoxFuture<ConnId>),
}
