//! The checker accepts the real machine on arbitrary input sequences (docs/behaviour.md §3 "Total",
//! §6): stale, duplicate and never-issued ids, results after close, any time steps.

use std::time::Duration;

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};
use persistent_connection_core::{
    AttemptId, Config, ConnId, Effect, EventId, Input, Instant, Jitter, RetryDelay, RetryPolicy,
};
use persistent_connection_sim::checker::CheckedMachine;

fn pick(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

#[test]
fn checker_accepts_the_real_machine_on_random_input_sequences() {
    for seed in 0..400u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let retry = match pick(&mut rng, 4) {
            0 => RetryPolicy::constant(Duration::from_millis(pick(&mut rng, 50))),
            1 => RetryPolicy::constant(Duration::from_millis(20)).non_random(),
            2 => RetryPolicy {
                delay: RetryDelay::exponential(
                    Duration::from_millis(5),
                    2.0,
                    Duration::from_millis(60),
                ),
                jitter: Jitter::Percent(pick(&mut rng, 101) as u8),
            },
            _ => RetryPolicy::constant(Duration::ZERO),
        };
        let mut m: CheckedMachine<u8, u32, u8> = CheckedMachine::new(Config { seed, retry })
            .unwrap_or_else(|v| panic!("seed {seed}: {v}"));
        let mut now = Instant::ZERO;
        let mut last_event = None;
        let mut attempt = None;
        let mut conns = Vec::new();
        for step in 0..300 {
            for e in m.effects() {
                match e {
                    Effect::Emit { id, .. } => last_event = Some(*id),
                    Effect::GetAddress { attempt: a } | Effect::Connect { attempt: a, .. } => {
                        attempt = Some(*a)
                    }
                    Effect::BecameCurrent { conn, .. } | Effect::CloseConnection { conn, .. } => {
                        conns.push(*conn)
                    }
                    _ => {}
                }
            }
            let a = if pick(&mut rng, 8) == 0 {
                AttemptId::from_raw(pick(&mut rng, 5))
            } else {
                attempt.unwrap_or(AttemptId::from_raw(0))
            };
            let input = match pick(&mut rng, 14) {
                0 | 1 => Input::AddressResult {
                    attempt: a,
                    result: if pick(&mut rng, 3) == 0 {
                        Err(pick(&mut rng, 3) as u8)
                    } else {
                        Ok(pick(&mut rng, 3) as u8)
                    },
                },
                2 | 3 => Input::ConnectResult {
                    attempt: a,
                    result: if pick(&mut rng, 2) == 0 {
                        Err(pick(&mut rng, 3) as u8)
                    } else {
                        Ok(step)
                    },
                },
                4..=6 => Input::EventHandled {
                    event: if pick(&mut rng, 8) == 0 {
                        EventId::from_raw(pick(&mut rng, 6))
                    } else {
                        last_event.unwrap_or(EventId::from_raw(0))
                    },
                },
                7 => Input::Closed {
                    conn: if conns.is_empty() || pick(&mut rng, 5) == 0 {
                        ConnId::from_raw(pick(&mut rng, 6))
                    } else {
                        conns[pick(&mut rng, conns.len() as u64) as usize]
                    },
                },
                8..=10 => {
                    now = now + Duration::from_millis(pick(&mut rng, 40));
                    Input::TimerFired
                }
                11 if pick(&mut rng, 6) == 0 => Input::CloseRequested,
                12 if pick(&mut rng, 6) == 0 => Input::CloseWhenCurrentConnectionIsClosed,
                13 if pick(&mut rng, 6) == 0 => Input::Abort { error: 9 },
                _ => Input::TimerFired,
            };
            let shown = format!("{input:?}");
            if let Err(v) = m.handle(now, input) {
                panic!(
                    "seed {seed} step {step} input {shown}: {v}\n{:?}",
                    m.machine()
                );
            }
        }
    }
}
