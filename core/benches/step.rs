//! Time per machine step (issue 6, "Machine step"): one `handle` plus draining its effects,
//! over a realistic mix of lookups, failures, connects, handled events and drops.
//!
//! `cargo bench -p persistent-connection-core --bench step`
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod mix;

fn step(c: &mut Criterion) {
    let mut group = c.benchmark_group("machine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("step_realistic_mix", |b| {
        let mut d = mix::Driver::new(7);
        // Warm up past the first round so every buffer has its steady-state size.
        for _ in 0..10_000 {
            d.step();
        }
        b.iter(|| {
            d.step();
            black_box(d.machine().is_closed())
        });
    });
    group.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
