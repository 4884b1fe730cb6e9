//! Simulator of the persistent-connection machine. Work in progress (issue 4).
#![forbid(unsafe_code)]

pub use persistent_connection_core as core;
