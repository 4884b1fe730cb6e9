//! The hot paths allocate nothing when connected: `current_connection()` and a ready
//! `connected()` / `connected_or_failed_to_connect()` read the current connection through
//! `arc-swap` (no lock shared with the driver, no allocation). Checked with a counting
//! global allocator. The allocator counts every thread, so this is a `harness = false`
//! binary: no test-harness thread allocates during the measurement.

use std::alloc::System;
use std::time::Duration;

use futures_util::FutureExt;
use persistent_connection::PersistentConnection;
use persistent_connection::conn::{CloseSignal, WithCloseSignal};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    current_connection_and_ready_waiters_do_not_allocate_when_connected();
    println!(
        "hot_path: current_connection_and_ready_waiters_do_not_allocate_when_connected ... ok"
    );
    abandoned_waiters_keep_bounded_memory();
    println!("hot_path: abandoned_waiters_keep_bounded_memory ... ok");
    a_burst_of_waiters_leaves_no_buffer_behind();
    println!("hot_path: a_burst_of_waiters_leaves_no_buffer_behind ... ok");
    println!("test result: ok. 3 passed; 0 failed");
}

/// A current-thread runtime on the paused clock, as `#[tokio::test(start_paused = true)]`.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Bytes still held at the end of a region (growth by `realloc` is counted in
/// `bytes_allocated` already).
fn net_bytes(stats: &stats_alloc::Stats) -> i64 {
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// Asserts that what `region` saw allocated and not freed is under `bound` bytes.
fn assert_kept_below(region: &Region<'_, System>, bound: i64, what: &str) {
    let stats = region.change();
    let kept = net_bytes(&stats);
    assert!(kept < bound, "{what} kept {kept} bytes: {stats:?}");
}

fn current_connection_and_ready_waiters_do_not_allocate_when_connected() {
    let rt = paused_runtime();
    rt.block_on(async {
        let pc: PersistentConnection<u16, WithCloseSignal<u32>, String> =
            PersistentConnection::builder(
                "hot",
                || async { Ok(1u16) },
                |_addr, _cx| async { Ok(WithCloseSignal::new(7u32, CloseSignal::new())) },
            )
            .retry_policy(Duration::from_secs(1))
            .build();
        let conn = pc.connected().await;
        assert_eq!(*conn, 7);
        // Warm up (arc-swap registers this thread on first use).
        for _ in 0..10 {
            let _ = pc.current_connection();
            pc.with_current_connection(|_| ());
            let _ = pc.connected().now_or_never();
        }
        let region = Region::new(GLOBAL);
        let mut hits = 0u32;
        for _ in 0..1000 {
            hits += u32::from(pc.current_connection().is_some());
            hits += u32::from(pc.with_current_connection(|c| c.is_some_and(|c| **c == 7)));
            hits += u32::from(pc.connected().now_or_never().is_some());
            hits += u32::from(
                pc.connected_or_failed_to_connect()
                    .now_or_never()
                    .is_some_and(|r| r.is_ok()),
            );
        }
        let stats = region.change();
        assert_eq!(hits, 4000, "every call saw the connection at once");
        assert_eq!(
            (stats.allocations, stats.reallocations),
            (0, 0),
            "hot paths allocated: {stats:?}"
        );
        pc.close().await;
    });
}

/// Waiters given up on (`connected()` under a timeout, in a loop, while the service is down)
/// cost bounded memory: the list of waiting slots drops abandoned ones as it would grow.
/// 10,000 abandoned waiters leave under 16 KiB behind; kept, they would hold about 1 MB.
fn abandoned_waiters_keep_bounded_memory() {
    let rt = paused_runtime();
    rt.block_on(async {
        let pc: PersistentConnection<u16, WithCloseSignal<u32>, String> =
            PersistentConnection::builder(
                "down",
                || async { Err::<u16, _>("down".to_owned()) },
                |_addr, _cx| async { Ok(WithCloseSignal::new(7u32, CloseSignal::new())) },
            )
            .retry_policy(Duration::from_secs(3600))
            .build();
        let _ = pc.connected_or_failed_to_connect().await; // now waiting to retry
        for _ in 0..100 {
            let _ = pc.connected().now_or_never(); // warm up
        }
        let region = Region::new(GLOBAL);
        for _ in 0..10_000 {
            assert!(pc.connected().now_or_never().is_none(), "not connected");
        }
        assert_kept_below(&region, 16 * 1024, "10,000 abandoned waiters");
        pc.close().await;
    });
}

/// 10,000 `connected()` waiters answered by one connection leave no list of that size
/// behind: once they are answered, the persistent connection keeps under 32 KiB more than
/// before they came (the list alone would hold 128 KiB).
fn a_burst_of_waiters_leaves_no_buffer_behind() {
    let rt = paused_runtime();
    rt.block_on(async {
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let pc: PersistentConnection<u16, WithCloseSignal<u32>, String> =
            PersistentConnection::builder(
                "burst",
                || async { Ok(1u16) },
                move |_addr, _cx| {
                    let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            Err("down".to_owned())
                        } else {
                            Ok(WithCloseSignal::new(7u32, CloseSignal::new()))
                        }
                    }
                },
            )
            .retry_policy(Duration::from_secs(1))
            .build();
        let _ = pc.connected_or_failed_to_connect().await; // the first attempt failed
        let region = Region::new(GLOBAL);
        let waiters: Vec<_> = (0..10_000).map(|_| pc.connected()).collect();
        let conns = futures_util::future::join_all(waiters).await;
        assert!(conns.iter().all(|c| **c == 7));
        drop(conns);
        assert_kept_below(&region, 32 * 1024, "the burst");
        pc.close().await;
    });
}
