//! Where a `machine_inputs` case spends its time, by input length: the run alone, with the
//! simulator's checker, with the oracle, and the whole check (both, then the I9 replay).
//! Release build, no fuzzer instrumentation:
//! `cargo run --release --example profile_inputs -- [bytes] [cases]`.

use std::time::Instant as Wall;

use arbitrary::{Arbitrary, Unstructured};
use persistent_connection_fuzz::machine::{Case, Nothing, Oracle, SimChecker, check, run};

/// xorshift64*: a fixed byte stream, no OS randomness.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let len: usize = args.next().map_or(4096, |a| a.parse().expect("bytes"));
    let n: u64 = args.next().map_or(200, |a| a.parse().expect("cases"));
    let cases: Vec<Case> = (0..n)
        .map(|s| Case::arbitrary_take_rest(Unstructured::new(&bytes(s, len))).expect("decodes"))
        .collect();
    let steps: usize = cases.iter().map(|c| c.steps.len()).sum::<usize>().max(1);
    println!(
        "{n} cases of {len} bytes, {:.0} steps each",
        steps as f64 / n as f64
    );
    let time = |name: &str, f: &dyn Fn(&Case)| {
        let t = Wall::now();
        for c in &cases {
            f(c);
        }
        let e = t.elapsed().as_secs_f64();
        println!(
            "{name:>12}: {:8.1} µs/case {:5.0} ns/step",
            e * 1e6 / n as f64,
            e * 1e9 / steps as f64
        );
    };
    time("run", &|c| {
        run(c, &mut Nothing);
    });
    time("run+checker", &|c| {
        run(c, &mut SimChecker::new(&c.config));
    });
    time("run+oracle", &|c| {
        run(c, &mut Oracle::<u8, u8, u8>::new(&c.config));
    });
    time("check (all)", &|c| check(c));
}
