//! The checker accepts the real machine on random input sequences that include handovers,
//! their cancellation and retries now (docs/behaviour.md R15–R17, I10, I11), and the
//! sequences reach every situation those rules are about.

use std::time::Duration;

use persistent_connection_core::rand_chacha::ChaCha8Rng;
use persistent_connection_core::rand_chacha::rand_core::{Rng, SeedableRng};
use persistent_connection_core::{
    AttemptId, Config, ConnId, Effect, EventId, HandoverReason, Input, Instant, Jitter, RetryDelay,
    RetryNowReason, RetryPolicy,
};
use persistent_connection_sim::checker::{CheckedMachine, Coverage};

fn pick(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    rng.next_u64() % n
}

const REASONS: [HandoverReason; 5] = [
    HandoverReason::User,
    HandoverReason::Drain,
    HandoverReason::MaxAge,
    HandoverReason::Withdrawn,
    HandoverReason::FailBack,
];
const RETRY_REASONS: [RetryNowReason; 3] = [
    RetryNowReason::User,
    RetryNowReason::NewCopy,
    RetryNowReason::AnotherCopy,
];

#[test]
fn checker_accepts_the_real_machine_with_handovers_and_retries_now() {
    let mut coverage = Coverage::default();
    for seed in 0..1500u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4841_4e44);
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
        for step in 0..400 {
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
            let a = if pick(&mut rng, 10) == 0 {
                AttemptId::from_raw(pick(&mut rng, 5))
            } else {
                attempt.unwrap_or(AttemptId::from_raw(0))
            };
            let input = match pick(&mut rng, 18) {
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
                    result: if pick(&mut rng, 3) == 0 {
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
                    } else if pick(&mut rng, 2) == 0 {
                        // The current connection, most often: its death during a handover
                        // is what R15's carry-on is about.
                        m.machine().current_conn_id().unwrap_or(conns[0])
                    } else {
                        conns[pick(&mut rng, conns.len() as u64) as usize]
                    },
                },
                8..=10 => {
                    now = now + Duration::from_millis(pick(&mut rng, 40));
                    Input::TimerFired
                }
                11 | 12 => Input::Handover {
                    reason: REASONS[pick(&mut rng, 5) as usize],
                    grace: Duration::from_millis(pick(&mut rng, 4) * pick(&mut rng, 30)),
                },
                13 if pick(&mut rng, 3) == 0 => Input::CancelHandover,
                14 | 15 => Input::RetryNow {
                    reason: RETRY_REASONS[pick(&mut rng, 3) as usize],
                },
                16 if pick(&mut rng, 12) == 0 => match pick(&mut rng, 3) {
                    0 => Input::CloseRequested,
                    1 => Input::CloseWhenCurrentConnectionIsClosed,
                    _ => Input::Abort { error: 9 },
                },
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
        coverage.add(m.checker().coverage());
    }
    for (name, n) in coverage.planned_counters() {
        assert!(n > 0, "1500 sequences never reached: {name} ({coverage:?})");
    }
}

/// Issue 28 item 9 (docs/behaviour.md §7): an abort through a connect context kept from an
/// earlier attempt, while an `ObtainedAddress` handler runs. This library stops when the
/// handler returns, without connecting; the checker expects exactly that (and would flag
/// a `Connect` after the abort).
#[test]
fn abort_while_the_obtained_address_handler_runs_stops_without_connecting() {
    let config = Config {
        seed: 1,
        retry: RetryPolicy::constant(Duration::from_secs(1)),
    };
    let mut m: CheckedMachine<u8, u32, u8> = CheckedMachine::new(config).unwrap();
    let emitted = |m: &CheckedMachine<u8, u32, u8>| {
        m.effects().iter().find_map(|e| match e {
            Effect::Emit { id, .. } => Some(*id),
            _ => None,
        })
    };
    let t = Instant::ZERO;
    let first = emitted(&m).unwrap();
    m.handle(t, Input::EventHandled { event: first }).unwrap();
    let attempt = m
        .effects()
        .iter()
        .find_map(|e| match e {
            Effect::GetAddress { attempt } => Some(*attempt),
            _ => None,
        })
        .unwrap();
    m.handle(
        t,
        Input::AddressResult {
            attempt,
            result: Ok(7),
        },
    )
    .unwrap();
    let obtained = emitted(&m).expect("ObtainedAddress");
    m.handle(t, Input::Abort { error: 3 }).unwrap();
    assert!(m.machine().is_closed());
    m.handle(t, Input::EventHandled { event: obtained })
        .unwrap();
    assert_eq!(m.effects(), &[Effect::CloseFinished]);
}
