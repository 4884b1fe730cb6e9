//! Shared code of the fuzz targets (`fuzz_targets/*.rs`).
//!
//! [`machine`] turns fuzz bytes into an arbitrary machine configuration and an arbitrary
//! sequence of timed inputs (any kind, any id, stale and never-issued ones included, time
//! steps of any size), feeds them to the core [`Machine`](persistent_connection_core::Machine)
//! and checks every step with an [`Oracle`](machine::Oracle) of its own.
//!
//! Every check panics with the rule it enforces (SPEC R1–R14, I1–I9), so libFuzzer reports
//! a broken rule as a crash and keeps the input that shows it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod machine;
