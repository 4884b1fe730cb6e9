//! The Tokio driver of [`persistent_connection_core`]. Work in progress (issue 3).
#![forbid(unsafe_code)]

pub use persistent_connection_core as core;
