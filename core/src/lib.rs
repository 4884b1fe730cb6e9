//! The sans-IO heart of `persistent-connection`: a pure state machine that keeps a
//! connection to a service alive, following Jane Street's OCaml
//! `Persistent_connection_kernel` and the project's behaviour document, docs/behaviour.md (rules R1–R17).
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
//!
//! # The rules it decides
//!
//! The full contract, with what a user observes and the deliberate differences from the
//! OCaml original, is the project's behaviour document: the [`behaviour`] page of these
//! docs (`docs/behaviour.md` in the repository). In short:
//!
//! - **R1** A new machine emits `AttemptingToConnect`; the first round of attempts begins
//!   once that event is handled.
//! - **R2** Every attempt starts a retry timer (`jitter(base delay)`, the base asked for
//!   once per attempt), then asks for the address ([`Effect::GetAddress`]).
//! - **R3** An address different from the last one of the round is emitted as
//!   `ObtainedAddress` (and awaited) before [`Effect::Connect`].
//! - **R4** A failed lookup or connect emits `FailedToConnect` only if the error differs
//!   from the round's last failure; the next attempt waits for the retry timer.
//! - **R5** A connection becomes current at once ([`Effect::BecameCurrent`]), then
//!   `Connected` is emitted.
//! - **R6** When it finishes closing, `Disconnected` is emitted (never before the
//!   `Connected` handler returned); a new round starts when the timer of the attempt that
//!   made it fires — at once after a long-lived connection.
//! - **R7** Jitter is `b ± u`, `u` uniform in `[0, 0.3·b]` (default), from a ChaCha
//!   generator seeded by [`Config::seed`]; default base 10 s; arithmetic saturates.
//! - **R8** [`Input::CloseRequested`]: no new attempt; the one in flight is cancelled
//!   ([`Effect::CancelAttempt`]) and a late connection closed; the current one is closed
//!   and its `Disconnected` emitted; [`Effect::CloseFinished`] comes once nothing is open,
//!   in flight or being handled, and no event follows it.
//! - **R9, R10** The notifications a driver needs for `connected()` and
//!   `connected_or_failed_to_connect()` waiters ([`Effect::BecameCurrent`],
//!   [`Effect::AttemptOutcome`]).
//! - **R11** [`Input::CloseWhenCurrentConnectionIsClosed`]: keep the current connection,
//!   start no new round.
//! - **R12** [`Machine::consecutive_unsuccessful_attempts`] for the connect context, and
//!   [`Input::Abort`] to stop as R11 with an error for R10 waiters; as in the original,
//!   the attempt in flight runs to its end and its failure is still reported.
//! - **R13, R14** are the driver's: report a panicking callback as a failed attempt or a
//!   handled event; close when the last handle is dropped.
//! - **R15** [`Input::Handover`]: make before break. While connected, an attempt runs
//!   beside the current connection (its [`Effect::GetAddress`] comes while a connection is
//!   current; [`Machine::handover`] says so); its connection replaces the current one in
//!   one step ([`Effect::BecameCurrent`] while the old one is still current), then
//!   [`Event::HandedOver`] is emitted. The old connection is retired: closed
//!   ([`Effect::CloseConnection`]) when its grace ends, never a `Disconnected`. A failed
//!   handover attempt is silent and retried on the retry timer; [`Input::CancelHandover`]
//!   ends it. If the current connection dies meanwhile, the attempt in flight carries on as
//!   the new round's first.
//! - **R16, R17** [`Input::RetryNow`] ends a wait between attempts at once (kept until the
//!   next wait if none is under way), at most once in a row (I10); with
//!   [`RetryNowReason::AnotherCopy`] it lets a connection that died young be replaced by
//!   another listed copy without waiting out R6's delay.
//!
//! Without [`Input::Handover`], [`Input::CancelHandover`] and [`Input::RetryNow`], every
//! trace is the one the rules R1–R14 give, effect for effect.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

extern crate alloc;
// `#[derive(arbitrary::Arbitrary)]` expands to `::std::` paths; `arbitrary` needs `std`
// anyway, so the fuzzing feature (off by default) links it.
#[cfg(feature = "arbitrary")]
extern crate std;

mod display;
mod machine;
mod retry;
mod time;

/// The project's behaviour document (`docs/behaviour.md` in the repository), shipped with
/// the crate so that every rule number cited in these docs can be followed.
#[doc = include_str!("../behaviour.md")]
pub mod behaviour {}

pub use machine::{
    AttemptError, AttemptId, Config, ConnId, Counters, Effect, Event, EventId, EventKind,
    HandoverReason, HandoverStatus, Input, Machine, RetryNowReason, State,
};
pub use retry::{Jitter, RetryDelay, RetryPolicy};
pub use time::Instant;

/// The seeded generator behind the jitter, re-exported so drivers and tests can build one.
pub use rand_chacha;
