//! Drives the core machine through a small simulated world by an arbitrary sequence of
//! world operations (realistic histories), checks every step, and ends with the user's
//! close: it must finish and leave nothing open (docs/behaviour.md §5, §6). See `fuzz/README.md`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use persistent_connection_fuzz::world_ops::{WorldCase, check_world};

fuzz_target!(|case: WorldCase| check_world(&case));
