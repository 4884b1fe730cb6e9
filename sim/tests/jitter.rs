//! R7's jitter is not only within bounds (the checker's I4, step by step) but spread as
//! docs/behaviour.md says: `b ± u`, `u` uniform in `[0, 0.3·b]`, sign uniform. A per-step checker cannot
//! see a jitter that lost its randomness (always `b`, always above `b`...); thousands of
//! attempts of the real machine can. Seeded, so the figures are the same on every run.

use std::time::Duration;

use persistent_connection_core::{Config, Effect, Input, Instant, Jitter, RetryDelay, RetryPolicy};
use persistent_connection_sim::checker::CheckedMachine;

/// The jittered delays of `n` consecutive failed attempts, every step checked.
fn delays(jitter: Jitter, base: Duration, n: usize, seed: u64) -> Vec<Duration> {
    let config = Config {
        seed,
        retry: RetryPolicy {
            delay: RetryDelay::constant(base),
            jitter,
        },
    };
    let mut m: CheckedMachine<u8, u8, u8> = CheckedMachine::new(config).unwrap();
    let mut now = Instant::ZERO;
    let mut out = Vec::with_capacity(n);
    let mut steps = 0;
    while out.len() < n && steps < 20 * n {
        steps += 1;
        let mut next = Input::TimerFired;
        for e in m.effects() {
            match e {
                Effect::Emit { id, .. } => next = Input::EventHandled { event: *id },
                Effect::StartTimer { delay, .. } => out.push(*delay),
                // Always the same error: after the first, de-duplicated (R4).
                Effect::GetAddress { attempt } => {
                    next = Input::AddressResult {
                        attempt: *attempt,
                        result: Err(1),
                    }
                }
                _ => {}
            }
        }
        if matches!(next, Input::TimerFired)
            && let Some(t) = m.machine().poll_timeout()
        {
            now = t;
        }
        m.handle(now, next).unwrap_or_else(|v| panic!("{v}"));
    }
    assert_eq!(out.len(), n, "the loop ran out of steps");
    out
}

#[test]
fn jitter_spreads_uniformly_over_plus_minus_30_percent() {
    let base = Duration::from_secs(10);
    let n = 6000;
    let ratios: Vec<f64> = delays(Jitter::Percent(30), base, n, 7)
        .iter()
        .map(|d| d.as_secs_f64() / base.as_secs_f64())
        .collect();
    let below = ratios.iter().filter(|r| **r < 1.0).count() as f64 / n as f64;
    let mean = ratios.iter().sum::<f64>() / n as f64;
    let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
    let max = ratios.iter().cloned().fold(f64::MIN, f64::max);
    eprintln!("{n} delays: {below} below b, mean {mean}, min {min}, max {max}");
    assert!(
        (0.46..=0.54).contains(&below),
        "sign not uniform: {below} below b"
    );
    assert!((0.99..=1.01).contains(&mean), "mean {mean}");
    assert!(
        (0.7..0.71).contains(&min),
        "min {min}: the low end is not reached"
    );
    assert!(
        max > 1.29 && max <= 1.3,
        "max {max}: the high end is not reached"
    );
    // Six equal bins over [0.7, 1.3]: each holds about a sixth.
    let mut bins = [0usize; 6];
    for r in &ratios {
        bins[(((r - 0.7) / 0.1) as usize).min(5)] += 1;
    }
    eprintln!("bins {bins:?}");
    for (i, count) in bins.iter().enumerate() {
        let share = *count as f64 / n as f64;
        assert!(
            (0.14..=0.19).contains(&share),
            "bin {i} holds {share}: {bins:?}"
        );
    }
}

#[test]
fn non_random_jitter_keeps_the_base_delay() {
    let base = Duration::from_millis(1500);
    assert!(
        delays(Jitter::NonRandom, base, 50, 3)
            .iter()
            .all(|d| *d == base)
    );
}

#[test]
fn different_seeds_give_different_delays_and_one_seed_the_same() {
    let a = delays(Jitter::Percent(30), Duration::from_secs(1), 20, 1);
    let b = delays(Jitter::Percent(30), Duration::from_secs(1), 20, 2);
    assert_ne!(a, b);
    assert_eq!(
        a,
        delays(Jitter::Percent(30), Duration::from_secs(1), 20, 1)
    );
}
