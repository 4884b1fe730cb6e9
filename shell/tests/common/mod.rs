//! Support shared by the fault-injection tests: real servers (a killable child process,
//! misbehaving in-process servers), an instrumented connection, a controllable catalog,
//! and leak checks.
#![allow(dead_code, unreachable_pub)]

pub mod child;
pub mod conn;
pub mod events;
pub mod leaks;
pub mod servers;
