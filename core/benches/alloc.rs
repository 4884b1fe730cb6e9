//! Allocations per machine step in steady state (issue 6, "Machine step"), counted by a
//! counting global allocator (`stats_alloc`) around the same input mix as `step.rs`.
//!
//! `cargo bench -p persistent-connection-core --bench alloc`
//!
//! Prints the counts and exits non-zero if a step allocated, so a regression is loud.
#![forbid(unsafe_code)]

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

mod mix;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore any arguments.
    let steps: u64 = 1_000_000;
    let mut d = mix::Driver::new(7);
    for _ in 0..10_000 {
        d.step();
    }
    let region = Region::new(GLOBAL);
    let before = d.inputs;
    for _ in 0..steps {
        d.step();
    }
    let change = region.change();
    let fed = d.inputs - before;
    let connections = d.connections();
    println!(
        "machine steady state: {fed} inputs, {} allocations, {} reallocations, {} bytes \
         allocated ({:.6} allocations per input); {connections} connections made",
        change.allocations,
        change.reallocations,
        change.bytes_allocated,
        change.allocations as f64 / fed as f64
    );
    if change.allocations + change.reallocations > 0 {
        std::process::exit(1);
    }
}
