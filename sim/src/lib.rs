//! Seeded, deterministic simulation of the persistent-connection machine (§5 of the
//! behaviour document, [`persistent_connection_core::behaviour`]), in the spirit of
//! TigerBeetle's VOPR and FoundationDB's simulation.
//!
//! - [`checker`]: the invariant checker (I1–I8, I10, I11), a library type working from the
//!   trace alone, shared with the fuzz targets.
//! - [`model`]: the world's vocabulary (addresses, connections, errors, the machine's
//!   inputs and effects over them) and [`model::SimMachine`], what the world drives.
//! - [`world`]: a world on a virtual clock, all of it derived from one `u64` seed; with
//!   `RunOptions::planned` (`--planned`), also the planned changes of a service's life
//!   (withdrawals, drains, restarts on a new address, scale-outs, flapping catalog entries,
//!   the user's handover and retry now: R15–R17).
//! - [`trace`]: the trace and its FNV-1a hash (I9: a seed replayed gives the same hash).
//! - [`mutants`]: deliberately wrong machines that the checker must catch.
//! - [`report`]: failure reports with the seed, the shrunk inputs and the command.
//! - [`storm`]: reconnect storms of up to millions of clients (real core machines) against
//!   one server with a bounded accept rate, on the virtual clock: attempts and accepts per
//!   second, time until everyone is back, per retry policy, as a table and an SVG plot.
//! - [`timeline`]: one seeded run drawn over virtual time (attempts, connections, events,
//!   close), so a failing seed can be looked at.
//!
//! The binary runs many seeds, replays one, prints its trace and shrinks failures:
//! `cargo run --release -p persistent-connection-sim -- --seeds 2000`; and runs storms:
//! `cargo run --release -p persistent-connection-sim -- storm --clients 1000000`.
//!
//! ```
//! use persistent_connection_sim::world::{run_seed, RunOptions};
//!
//! for seed in 0..3 {
//!     let report = run_seed(seed, &RunOptions::default()).expect("the real machine passes");
//!     assert_eq!(report.totals.closes, 1);
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod checker;
pub mod model;
pub mod mutants;
pub mod report;
pub mod storm;
pub mod timeline;
pub mod trace;
pub mod world;

pub use persistent_connection_core as core;
