//! What a persistent connection is doing, and what it has done: [`State`] and [`Stats`].

/// What a persistent connection is doing now, read from its machine's own state
/// ([`PersistentConnection::state`](crate::PersistentConnection::state)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// An attempt is under way: looking the address up or connecting (including the
    /// `AttemptingToConnect` and `ObtainedAddress` handlers).
    Connecting,
    /// The last attempt failed or the connection was lost; the next attempt begins at
    /// `next_attempt` (on Tokio's clock), or as soon as the running handler returns if
    /// that time has passed (R4, R6).
    WaitingToRetry {
        /// When the retry timer of the latest attempt fires.
        next_attempt: tokio::time::Instant,
    },
    /// A connection is current (R5), including while its `Connected` handler runs, and
    /// after R11 until that connection goes away (`is_closed()` is then already true).
    Connected,
    /// Close was requested (R8, R11, R12) and has not finished: connections are closing,
    /// or a handler or an aborting attempt is finishing.
    Closing,
    /// Close has finished (R8), or the driver task is gone (S3).
    Closed,
}

/// Counters since creation, read without a lock
/// ([`PersistentConnection::stats`](crate::PersistentConnection::stats)). Each is
/// monotonic; a snapshot's counters are read one by one, so they may straddle a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Attempts begun (R2).
    pub attempts: u64,
    /// Attempts that failed (R4), counted whether or not `FailedToConnect` was emitted,
    /// the attempt that called `abort` included (R12).
    pub failures: u64,
    /// Failures not reported because they repeated the round's previous one (R4, I2).
    pub deduplicated_failures: u64,
    /// Connections that became current (R5).
    pub connections: u64,
    /// `Disconnected` events (R6).
    pub disconnections: u64,
    /// Successful handovers (R15): `HandedOver` events. A replaced connection is not a
    /// disconnection.
    pub handovers: u64,
    /// Handover attempts that failed (R15); the current connection kept serving.
    pub handover_failures: u64,
    /// Waits between attempts ended early by retry now (R16, R17).
    pub retries_now: u64,
}
