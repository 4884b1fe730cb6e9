//! The simulator's vocabulary: the address, connection and error types the simulated world
//! hands the machine, the machine's input and effect over them, and [`SimMachine`], what
//! the world drives (the real [`Machine`] or a [`crate::mutants`] wrapper of it).
//!
//! It sits below both [`crate::world`] and [`crate::mutants`], so that each can use it
//! without the other.

use std::fmt;

use persistent_connection_core::{Effect, Input, Instant, Machine};

use crate::checker::MachineView;

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
    /// The world's number (not the machine's [`ConnId`](persistent_connection_core::ConnId)).
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
