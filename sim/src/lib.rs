//! Seeded, deterministic simulation of the persistent-connection machine (SPEC §5), in the
//! spirit of TigerBeetle's VOPR and FoundationDB's simulation.
//!
//! - [`checker`]: the invariant checker (I1–I8), a library type working from the trace
//!   alone, shared with the fuzz targets.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod checker;

pub use persistent_connection_core as core;
