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
    let plain = measure("machine steady state", mix::Driver::new(7));
    // The same world with handovers (R15) and retries now (R16) mixed in.
    let handovers = measure(
        "with handovers and retry now",
        mix::Driver::with_handovers(7),
    );
    if plain + handovers > 0 {
        std::process::exit(1);
    }
}

/// Steps `d` a million times after a warm-up and prints what the steps allocated; returns
/// the number of allocations and reallocations.
fn measure(what: &str, mut d: mix::Driver) -> u64 {
    let steps: u64 = 1_000_000;
    for _ in 0..10_000 {
        d.step();
    }
    let region = Region::new(GLOBAL);
    let before = d.inputs;
    let handovers_before = d.handovers();
    for _ in 0..steps {
        d.step();
    }
    let change = region.change();
    let fed = d.inputs - before;
    let connections = d.connections();
    let handovers = d.handovers() - handovers_before;
    println!(
        "{what}: {fed} inputs, {} allocations, {} reallocations, {} bytes \
         allocated ({:.6} allocations per input); {connections} connections made, \
         {handovers} handovers",
        change.allocations,
        change.reallocations,
        change.bytes_allocated,
        change.allocations as f64 / fed as f64
    );
    (change.allocations + change.reallocations) as u64
}
