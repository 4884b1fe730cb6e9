//! Retry delays (R2, R7): the base delay of each attempt and its jitter.

use alloc::boxed::Box;
use core::fmt;
use core::time::Duration;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;

/// The base delay between the starts of two consecutive attempts, before jitter.
///
/// The machine asks for it once at the start of every attempt (R2), passing the number of
/// consecutive unsuccessful attempts so far (R12: 0 on the first attempt, reset by a
/// successful connect).
///
/// ```
/// use core::time::Duration;
/// use persistent_connection_core::RetryDelay;
///
/// let mut grpc = RetryDelay::exponential(Duration::from_secs(1), 1.6, Duration::from_secs(120));
/// assert_eq!(grpc.base_delay(0), Duration::from_secs(1));
/// assert_eq!(grpc.base_delay(1), Duration::from_millis(1600));
/// assert_eq!(grpc.base_delay(50), Duration::from_secs(120));
///
/// let mut calls = 0;
/// let mut custom = RetryDelay::from_fn(move |_failures| { calls += 1; Duration::from_millis(calls) });
/// assert_eq!(custom.base_delay(0), Duration::from_millis(1));
/// assert_eq!(custom.base_delay(0), Duration::from_millis(2));
/// ```
pub enum RetryDelay {
    /// The same delay before every attempt. The original's default is 10 s.
    Constant(Duration),
    /// `initial · multiplier^failures`, capped at `max`.
    Exponential {
        /// Delay after zero consecutive failures.
        initial: Duration,
        /// Growth per consecutive failure; values below 1 (and NaN) are treated as 1.
        multiplier: f64,
        /// The cap.
        max: Duration,
    },
    /// Any function of the number of consecutive unsuccessful attempts. It is called once
    /// per attempt, from the machine's step, so it must not block.
    Custom(Box<dyn FnMut(u32) -> Duration + Send>),
}

impl RetryDelay {
    /// The original's default: a constant 10 seconds.
    pub const DEFAULT: Duration = Duration::from_secs(10);

    /// A constant delay.
    pub fn constant(delay: Duration) -> RetryDelay {
        RetryDelay::Constant(delay)
    }

    /// Exponential backoff: `initial · multiplier^failures`, capped at `max`.
    pub fn exponential(initial: Duration, multiplier: f64, max: Duration) -> RetryDelay {
        RetryDelay::Exponential {
            initial,
            multiplier,
            max,
        }
    }

    /// A delay computed by `f(consecutive_unsuccessful_attempts)`. The seed's
    /// `retry_delay: unit -> span` is `RetryDelay::from_fn(move |_| retry_delay())`.
    pub fn from_fn(f: impl FnMut(u32) -> Duration + Send + 'static) -> RetryDelay {
        RetryDelay::Custom(Box::new(f))
    }

    /// The base delay for an attempt that follows `failures` consecutive unsuccessful
    /// attempts. Never panics; saturates at `Duration::MAX`.
    pub fn base_delay(&mut self, failures: u32) -> Duration {
        match self {
            RetryDelay::Constant(d) => *d,
            RetryDelay::Exponential {
                initial,
                multiplier,
                max,
            } => exponential(*initial, *multiplier, *max, failures),
            RetryDelay::Custom(f) => f(failures),
        }
    }
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay::Constant(RetryDelay::DEFAULT)
    }
}

impl fmt::Debug for RetryDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryDelay::Constant(d) => f.debug_tuple("Constant").field(d).finish(),
            RetryDelay::Exponential {
                initial,
                multiplier,
                max,
            } => f
                .debug_struct("Exponential")
                .field("initial", initial)
                .field("multiplier", multiplier)
                .field("max", max)
                .finish(),
            RetryDelay::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

fn exponential(initial: Duration, multiplier: f64, max: Duration, failures: u32) -> Duration {
    // `!(m >= 1.0)` also catches NaN.
    let m = if multiplier >= 1.0 { multiplier } else { 1.0 };
    // Exponentiation by squaring: O(log failures), no `std` float intrinsics needed.
    let mut factor = 1.0f64;
    let mut base = m;
    let mut n = failures;
    while n > 0 {
        if n & 1 == 1 {
            factor *= base;
        }
        base *= base;
        n >>= 1;
    }
    let secs = initial.as_secs_f64() * factor;
    // `try_from_secs_f64` rejects NaN, negatives and overflow; overflow means "huge".
    let d = Duration::try_from_secs_f64(secs).unwrap_or(if secs.is_nan() {
        initial
    } else {
        Duration::MAX
    });
    d.min(max)
}

/// How the base delay is randomised (R7).
///
/// ```
/// use core::time::Duration;
/// use persistent_connection_core::Jitter;
/// use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
///
/// let mut rng = ChaCha8Rng::seed_from_u64(7);
/// let b = Duration::from_secs(10);
/// let d = Jitter::default().apply(b, &mut rng);
/// assert!(d >= Duration::from_secs(7) && d <= Duration::from_secs(13));
/// assert_eq!(Jitter::NonRandom.apply(b, &mut rng), b);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Jitter {
    /// `b ± u`, `u` uniform in `[0, percent/100 · b]`, sign uniform. Percentages above 100
    /// are treated as 100. The default is 30 (R7).
    Percent(u8),
    /// The base delay unchanged.
    NonRandom,
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::Percent(30)
    }
}

impl Jitter {
    /// The jittered delay for base `b`, drawing from `rng`. Exact integer arithmetic on
    /// nanoseconds, so the result always lies in `[b - p·b, b + p·b]` (saturating at
    /// `Duration::MAX`), never panics, and depends only on the generator's state.
    pub fn apply(self, b: Duration, rng: &mut ChaCha8Rng) -> Duration {
        let percent = match self {
            Jitter::NonRandom => return b,
            Jitter::Percent(p) => u128::from(p.min(100)),
        };
        let nanos = b.as_nanos(); // < 2^95
        let r = rng.next_u64();
        // Every delay below 5.8 years: the same arithmetic in 64 bits, without the 128-bit
        // divisions (a library call each, a few per cent of a machine step: issue 21).
        // Same values: nothing below overflows, so the result is the one of the general
        // path, bit for bit (the simulator's trace hashes depend on it).
        if let Ok(n) = u64::try_from(nanos)
            && n.checked_mul(100).is_some()
        {
            let span = n * percent as u64 / 100; // ≤ n
            let u = ((u128::from(span) * u128::from(r >> 32)) >> 32) as u64; // ≤ span
            // n + u ≤ 2n < 2^64: no saturation, as in the general path.
            let jittered = if r & 1 == 1 { n + u } else { n - u };
            return Duration::from_nanos(jittered);
        }
        let span = nanos * percent / 100; // < 2^95
        let fraction = u128::from((r >> 32) as u32); // uniform in [0, 2^32)
        let u = (span * fraction) >> 32; // span · fraction < 2^127: no overflow
        let jittered = if r & 1 == 1 {
            nanos.saturating_add(u)
        } else {
            nanos - u
        };
        duration_from_nanos(jittered)
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// Everything that decides an attempt's delay: the base policy and its jitter.
#[derive(Debug, Default)]
pub struct RetryPolicy {
    /// The base delay.
    pub delay: RetryDelay,
    /// Its randomisation.
    pub jitter: Jitter,
}

impl RetryPolicy {
    /// The original's policy: constant `delay`, ±30% jitter.
    pub fn constant(delay: Duration) -> RetryPolicy {
        RetryPolicy {
            delay: RetryDelay::Constant(delay),
            jitter: Jitter::default(),
        }
    }

    /// gRPC's connection backoff: 1 s initial, ×1.6 per failure, 120 s max, ±20% jitter.
    pub fn grpc() -> RetryPolicy {
        RetryPolicy {
            delay: RetryDelay::exponential(Duration::from_secs(1), 1.6, Duration::from_secs(120)),
            jitter: Jitter::Percent(20),
        }
    }

    /// The same policy without jitter.
    pub fn non_random(self) -> RetryPolicy {
        self.with_jitter(Jitter::NonRandom)
    }

    /// The same base delay with another jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection_core::{Jitter, RetryPolicy};
    ///
    /// let p = RetryPolicy::from(Duration::from_secs(1)).with_jitter(Jitter::Percent(10));
    /// assert_eq!(p.jitter, Jitter::Percent(10));
    /// ```
    pub fn with_jitter(self, jitter: Jitter) -> RetryPolicy {
        RetryPolicy { jitter, ..self }
    }
}

/// A constant base delay with the default ±30% jitter: what [`RetryPolicy::constant`] gives.
impl From<Duration> for RetryPolicy {
    fn from(delay: Duration) -> RetryPolicy {
        RetryPolicy::constant(delay)
    }
}

/// A base delay policy with the default ±30% jitter.
impl From<RetryDelay> for RetryPolicy {
    fn from(delay: RetryDelay) -> RetryPolicy {
        RetryPolicy {
            delay,
            jitter: Jitter::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    /// The general path of [`Jitter::apply`] alone: 128-bit arithmetic for every base.
    fn reference(percent: u8, b: Duration, rng: &mut ChaCha8Rng) -> Duration {
        let percent = u128::from(percent.min(100));
        let nanos = b.as_nanos();
        let r = rng.next_u64();
        let span = nanos * percent / 100;
        let u = (span * u128::from((r >> 32) as u32)) >> 32;
        let jittered = if r & 1 == 1 {
            nanos.saturating_add(u)
        } else {
            nanos - u
        };
        duration_from_nanos(jittered)
    }

    // The 64-bit path changes no delay: the simulator's traces, the seeds users pinned
    // and the storm tables stay what they were.
    #[test]
    fn the_64_bit_path_gives_the_general_path_s_delays_bit_for_bit() {
        let edge = u64::MAX / 100;
        let mut bases = alloc::vec![
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::from_nanos(edge - 1),
            Duration::from_nanos(edge),
            Duration::from_nanos(edge + 1),
            Duration::from_nanos(u64::MAX),
            Duration::MAX,
        ];
        let mut pick = ChaCha8Rng::seed_from_u64(21);
        for _ in 0..2_000 {
            let bits = pick.next_u64() % 64;
            bases.push(Duration::from_nanos(pick.next_u64() >> bits));
        }
        for (i, &b) in bases.iter().enumerate() {
            for percent in [0u8, 1, 20, 30, 50, 99, 100, 200] {
                let mut fast = ChaCha8Rng::seed_from_u64(i as u64);
                let mut slow = fast.clone();
                for _ in 0..4 {
                    assert_eq!(
                        Jitter::Percent(percent).apply(b, &mut fast),
                        reference(percent, b, &mut slow),
                        "base {b:?}, {percent} %"
                    );
                }
            }
        }
    }
}
