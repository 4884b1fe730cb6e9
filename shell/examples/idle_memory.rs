//! Heap bytes per idle persistent connection, counted by a global allocator (no RSS noise,
//! no sockets): 10,000 persistent connections over `CloseSignal` connections, built and
//! connected on a current-thread runtime, then left idle. The memory table of
//! BENCHMARKS.md itemises the total with `cargo test -p persistent-connection --lib sizes`.
//!
//! `cargo run --release -p persistent-connection --example idle_memory`
//!
//! Which allocations these are (the crate forbids `unsafe`, so no counting allocator of its
//! own here): run it under DHAT and itemise the blocks live at the peak, which is when the
//! 10,000 connections idle: `valgrind --tool=dhat --dhat-out-file=dhat.json
//! target/release/examples/idle_memory && python3 scripts/dhat_sizes.py dhat.json`. At
//! issue 25: the shared state with the machine and the driver's state (784 B), the driver
//! task's cell (128 B), the current connection's `Arc` for lock-free reads (32 B), the
//! callbacks (24 B) and the server name (24 B).
#![forbid(unsafe_code)]

use std::alloc::System;
use std::time::Duration;

use persistent_connection::PersistentConnection;
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 10_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm the runtime (timer wheel, task lists) so it is not counted.
        let warm: Vec<_> = (0..100).map(build).collect();
        for pc in &warm {
            pc.connected().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rss_before = rss();
        let region = Region::new(GLOBAL);
        let mut pcs = Vec::with_capacity(N);
        let vec_bytes =
            N * std::mem::size_of::<PersistentConnection<u16, WithCloseSignal<u32>, String>>();
        for i in 0..N {
            pcs.push(build(i as u64));
        }
        for pc in &pcs {
            pc.connected().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = region.change();
        let rss_after = rss();
        let net = s.bytes_allocated as i64 - s.bytes_deallocated as i64 - vec_bytes as i64;
        println!(
            "{N} idle persistent connections: {:.1} live allocations and {:.0} heap bytes \
             each, the user's connection (a CloseSignal) included",
            (s.allocations as f64 - s.deallocations as f64) / N as f64,
            net as f64 / N as f64,
        );
        println!(
            "resident memory grew by {:.0} bytes per connection (the allocator's view: \
             size classes, and room left by what connecting used and freed)",
            (rss_after - rss_before) as f64 / N as f64
        );
        // The user's part alone: the same connections, without persistent connections.
        let region = Region::new(GLOBAL);
        let conns: Vec<_> = (0..N)
            .map(|i| WithCloseSignal::new(i as u32, CloseSignal::new()))
            .collect();
        let c = region.change();
        let conn_net = c.bytes_allocated as i64
            - c.bytes_deallocated as i64
            - (N * std::mem::size_of::<WithCloseSignal<u32>>()) as i64;
        println!(
            "of which the user's connection: {:.1} allocations and {:.0} bytes; \
             the persistent connection's own: {:.0} bytes",
            (c.allocations as f64 - c.deallocations as f64) / N as f64,
            conn_net as f64 / N as f64,
            (net - conn_net) as f64 / N as f64,
        );
        drop(conns);
        for pc in &pcs {
            pc.close().await;
        }
        drop(warm);
    });
}

fn build(i: u64) -> PersistentConnection<u16, WithCloseSignal<u32>, String> {
    PersistentConnection::builder(
        "idle",
        || async { Ok::<_, String>(1u16) },
        move |_addr, _cx| async move { Ok(WithCloseSignal::new(i as u32, CloseSignal::new())) },
    )
    .seed(i)
    .build()
}

/// Resident set size in bytes, from `/proc/self/statm` (0 where there is none).
fn rss() -> i64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages * 4096)
}
