//! The sans-IO heart of `persistent-connection`: a pure state machine that keeps a
//! connection to a service alive, following Jane Street's OCaml
//! `Persistent_connection_kernel` and this project's `SPEC.md` (rules R1–R14).
//!
//! The machine performs no I/O, reads no clock and draws no OS randomness: inputs go in
//! with the time they happened at, effect commands come out, and jitter comes from a
//! ChaCha generator seeded by [`Config::seed`]. The same seed and the same inputs give the
//! same effects. A driver (the `persistent-connection` crate on Tokio, or the simulator)
//! performs the effects and feeds their completions back.
//!
//! # The driving loop
//!
//! After every input, drain the effects until [`Machine::poll_effect`] returns `None`, then
//! sleep until [`Machine::poll_timeout`] (if any) and feed [`Input::TimerFired`].
//!
//! ```
//! use core::time::Duration;
//! use persistent_connection_core::{Config, Effect, Event, Input, Instant, Machine, RetryPolicy};
//!
//! // Address: a port; connection: a number; error: a string.
//! let mut m: Machine<u16, u32, &str> = Machine::new(Config {
//!     seed: 1,
//!     retry: RetryPolicy::constant(Duration::from_secs(1)).non_random(),
//! });
//! let mut now = Instant::ZERO;
//! let mut pending = Vec::new();
//! let mut log = Vec::new();
//! // A tiny world: the first connect fails, the second succeeds.
//! let mut connects = 0;
//! for _step in 0..20 {
//!     while let Some(effect) = m.poll_effect() {
//!         match effect {
//!             Effect::Emit { id, event } => {
//!                 log.push(format!("{event:?}"));
//!                 pending.push(Input::EventHandled { event: id });
//!             }
//!             Effect::GetAddress { attempt } => {
//!                 pending.push(Input::AddressResult { attempt, result: Ok(8080) })
//!             }
//!             Effect::Connect { attempt, .. } => {
//!                 connects += 1;
//!                 let result = if connects == 1 { Err("refused") } else { Ok(7) };
//!                 pending.push(Input::ConnectResult { attempt, result });
//!             }
//!             _ => {}
//!         }
//!     }
//!     if let Some(input) = pending.pop() {
//!         m.handle(now, input);
//!     } else if let Some(deadline) = m.poll_timeout() {
//!         now = deadline;
//!         m.handle(now, Input::TimerFired);
//!     } else {
//!         break;
//!     }
//! }
//! assert_eq!(
//!     log,
//!     ["AttemptingToConnect", "ObtainedAddress(8080)", "FailedToConnect(\"refused\")", "Connected(7)"]
//! );
//! // The second attempt began one retry delay after the first (R2, R4).
//! assert_eq!(now, Instant::ZERO + Duration::from_secs(1));
//! assert_eq!(m.current_connection(), Some(&7));
//! ```
//!
//! # Guarantees
//!
//! - Total: any input in any state is handled without panic; a result for a request that
//!   is not outstanding changes nothing, except that a connection arriving outside its
//!   attempt is closed ([`Effect::CloseConnection`]).
//! - Cheap: effects go through one reused queue; a step allocates nothing of its own in
//!   steady state (cloning the user's `A`, `C` and `E` is theirs).
//! - `no_std` + `alloc`.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

extern crate alloc;
// `#[derive(arbitrary::Arbitrary)]` expands to `::std::` paths; `arbitrary` needs `std`
// anyway, so the fuzzing feature (off by default) links it.
#[cfg(feature = "arbitrary")]
extern crate std;

mod machine;
mod retry;
mod time;

pub use machine::{
    AttemptError, AttemptId, Config, ConnId, Effect, Event, EventId, EventKind, Input, Machine,
    State,
};
pub use retry::{Jitter, RetryDelay, RetryPolicy};
pub use time::Instant;

/// The seeded generator behind the jitter, re-exported so drivers and tests can build one.
pub use rand_chacha;
