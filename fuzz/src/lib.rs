//! Shared code of the fuzz targets (`fuzz_targets/*.rs`).
//!
//! [`machine`] turns fuzz bytes into an arbitrary machine configuration and an arbitrary
//! sequence of timed inputs (any kind, any id, stale and never-issued ones included, time
//! steps of any size), feeds them to the core [`Machine`](persistent_connection_core::Machine)
//! and checks every step with the simulator's invariant checker and an
//! [`Oracle`](machine::Oracle) of its own.
//!
//! [`world_ops`] drives the simulator's own world (the one its seeded runs use) by an arbitrary
//! sequence of world operations (handlers finish, lookups and connects answer or fail,
//! servers go down, connections drop, the user closes), so the fuzzer explores realistic
//! histories, and ends each run with the world's liveness checks (close finishes, nothing
//! leaks).
//!
//! Every check panics with the rule it enforces (docs/behaviour.md R1–R14, I1–I9), so libFuzzer reports
//! a broken rule as a crash and keeps the input that shows it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod machine;
pub mod world_ops;
