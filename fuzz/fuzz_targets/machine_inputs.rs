//! Feeds the core machine an arbitrary configuration and an arbitrary sequence of timed
//! inputs (any kind, any id, stale and never-issued ones included, time steps of any
//! size) and checks every step (docs/behaviour.md §3 "Total", §6). See `fuzz/README.md`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use persistent_connection_fuzz::machine::{Case, check};

fuzz_target!(|case: Case| check(&case));
