//! Hot paths when connected (issue 6, "Hot paths"): `current_connection()` and an
//! already-ready `connected()`, on one thread and on two threads at once, beside a
//! `Mutex<Option<C>>` baseline and the bare cost of cloning the connection handle, in the
//! same run.
//!
//! `cargo bench -p persistent-connection --bench hotpath`
//!
//! The connection is a [`CloseSignal`] (an `Arc` inside, as a real handle would be), so
//! every read clones one `Arc`. For the two-thread variants each thread does `iters`
//! operations at once; the reported time is wall time divided by `iters`, i.e. the time
//! per operation *per thread*, directly comparable with the one-thread figure.
//!
//! `with_current_connection` is the lending accessor: it only borrows the connection, so
//! it avoids the clone of `C`, whose reference count both threads write. `arc_swap_borrow`
//! is the bare `ArcSwapOption<C>` load it is built on, for comparison.
//! `clone_unshared_handle` is the control: each thread clones its own handle, so nothing is
//! shared; if its two-thread time matches its one-thread time, the machine did give the
//! bench two cores, and any slowdown elsewhere is contention on shared cache lines.
#![forbid(unsafe_code)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use persistent_connection::conn::CloseSignal;
use persistent_connection::{Closable, PersistentConnection};

type Pc = PersistentConnection<u8, CloseSignal, String>;

/// A connected persistent connection whose driver runs on `rt`.
fn connected(rt: &tokio::runtime::Runtime) -> Pc {
    let pc = rt.block_on(async {
        PersistentConnection::builder(
            "hotpath",
            || async { Ok::<_, String>(1u8) },
            |_addr, _cx| async { Ok(CloseSignal::new()) },
        )
        .build()
    });
    rt.block_on(pc.connected());
    assert!(
        pc.current_connection().is_some(),
        "connected before measuring"
    );
    pc
}

/// `connected()` when already connected: create the future and poll it once.
fn ready_connected(pc: &Pc) -> CloseSignal {
    let fut = pin!(pc.connected());
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(c) => c,
        Poll::Pending => panic!("connected() was not ready while connected"),
    }
}

/// Runs `op` `iters` times on each of `threads` threads started together; wall time.
fn on_threads<F: Fn() + Sync>(threads: usize, iters: u64, op: F) -> Duration {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        barrier.wait();
        // The slowest thread's time: all of them must finish their `iters` operations.
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

thread_local! {
    static UNSHARED: CloseSignal = CloseSignal::new();
}

fn hotpath(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pc = connected(&rt);
    let handle = pc.current_connection().expect("connected");
    let mutex: Mutex<Option<CloseSignal>> = Mutex::new(Some(handle.clone()));
    let swap = arc_swap::ArcSwapOption::from_pointee(handle.clone());

    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!(
            "hotpath/{threads}_thread{}",
            if threads > 1 { "s" } else { "" }
        ));
        g.bench_function("current_connection", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    black_box(pc.current_connection());
                })
            })
        });
        g.bench_function("connected_ready", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    black_box(ready_connected(&pc));
                })
            })
        });
        g.bench_function("mutex_baseline", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    let guard = mutex.lock().expect("not poisoned");
                    black_box(guard.clone());
                })
            })
        });
        g.bench_function("with_current_connection", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    black_box(pc.with_current_connection(|c| c.map(|c| c.is_closed())));
                })
            })
        });
        g.bench_function("arc_swap_borrow", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    let guard = swap.load();
                    black_box(guard.as_deref().map(|c| c.is_closed()));
                })
            })
        });
        g.bench_function("clone_handle_only", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    black_box(handle.clone());
                })
            })
        });
        g.bench_function("clone_unshared_handle", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, || {
                    UNSHARED.with(|h| black_box(h.clone()));
                })
            })
        });
        g.finish();
    }
    rt.block_on(pc.close());
}

criterion_group!(benches, hotpath);
criterion_main!(benches);
