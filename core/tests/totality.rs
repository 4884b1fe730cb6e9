//! docs/behaviour.md §3 "Total": any input in any state, in any order, with stale, duplicate and
//! never-issued ids, is handled without panic, and the structural promises hold:
//! one event at a time (I3), nothing emitted after close finished (R8), every connection
//! received is either current or asked to be closed (I6).

use std::collections::BTreeSet;
use std::time::Duration;

use persistent_connection_core::{
    AttemptId, Config, ConnId, Effect, EventId, Input, Instant, Jitter, Machine, RetryDelay,
    RetryPolicy,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Address { pick: u8, ok: Option<u8>, err: u8 },
    Connect { pick: u8, ok: Option<u8>, err: u8 },
    Closed(u8),
    Timer,
    Close,
    CloseWhenCurrent,
    Abort(u8),
    Handled(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3_000).prop_map(Op::Advance),
        (any::<u8>(), proptest::option::of(0u8..3), 0u8..3)
            .prop_map(|(pick, ok, err)| Op::Address { pick, ok, err }),
        (any::<u8>(), proptest::option::of(any::<u8>()), 0u8..3)
            .prop_map(|(pick, ok, err)| Op::Connect { pick, ok, err }),
        any::<u8>().prop_map(Op::Closed),
        Just(Op::Timer),
        Just(Op::Close),
        Just(Op::CloseWhenCurrent),
        (0u8..3).prop_map(Op::Abort),
        any::<u8>().prop_map(Op::Handled),
    ]
}

/// Picks an id among those issued so far (mostly the latest), or sometimes one never issued.
fn pick(pick: u8, issued: u64) -> u64 {
    match pick % 8 {
        0 => u64::from(pick) + issued, // never issued (or future)
        1 | 2 => u64::from(pick) % issued.max(1),
        _ => issued.saturating_sub(1),
    }
}

#[derive(Default)]
struct Tracker {
    attempts: u64,
    events: u64,
    conns: u64,
    unhandled: Option<EventId>,
    finished: bool,
    received: usize,
    accounted: BTreeSet<ConnId>,
}

impl Tracker {
    fn step(
        &mut self,
        m: &mut Machine<u8, u8, u8>,
        now: Instant,
        input: Option<Input<u8, u8, u8>>,
    ) -> Result<(), TestCaseError> {
        if let Some(input) = input {
            if let Input::ConnectResult { result: Ok(_), .. } = &input {
                self.received += 1;
            }
            if let Input::EventHandled { event } = &input
                && self.unhandled == Some(*event)
            {
                self.unhandled = None;
            }
            m.handle(now, input);
        }
        while let Some(e) = m.poll_effect() {
            match e {
                Effect::Emit { id, .. } => {
                    prop_assert!(!self.finished, "event after CloseFinished (R8)");
                    prop_assert!(
                        self.unhandled.is_none(),
                        "event while another is unhandled (I3)"
                    );
                    self.unhandled = Some(id);
                    self.events = self.events.max(id.raw() + 1);
                }
                Effect::GetAddress { attempt } => {
                    self.attempts = self.attempts.max(attempt.raw() + 1)
                }
                Effect::BecameCurrent { conn, .. } | Effect::CloseConnection { conn, .. } => {
                    self.accounted.insert(conn);
                    self.conns = self.conns.max(conn.raw() + 1);
                }
                Effect::CloseFinished => {
                    prop_assert!(!self.finished, "CloseFinished twice (I7)");
                    self.finished = true;
                }
                _ => {}
            }
        }
        prop_assert_eq!(
            self.accounted.len(),
            self.received,
            "a received connection is neither current nor closed (I6)"
        );
        if self.finished {
            prop_assert!(m.is_closed());
            prop_assert!(m.current_connection().is_none());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_input_sequence_is_handled_and_keeps_the_structural_promises(
        seed in any::<u64>(),
        delay_ms in prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX)],
        non_random in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let delay = if delay_ms == u64::MAX { Duration::MAX } else { Duration::from_millis(delay_ms) };
        let mut m: Machine<u8, u8, u8> = Machine::new(Config {
            seed,
            retry: RetryPolicy {
                delay: RetryDelay::Constant(delay),
                jitter: if non_random { Jitter::NonRandom } else { Jitter::default() },
            },
        });
        let mut now = Instant::ZERO;
        let mut t = Tracker::default();
        t.step(&mut m, now, None)?;
        for op in ops {
            let input = match op {
                Op::Advance(ms) => { now = now + Duration::from_millis(ms); None }
                Op::Address { pick: p, ok, err } => Some(Input::AddressResult {
                    attempt: AttemptId::from_raw(pick(p, t.attempts)),
                    result: ok.ok_or(err),
                }),
                Op::Connect { pick: p, ok, err } => Some(Input::ConnectResult {
                    attempt: AttemptId::from_raw(pick(p, t.attempts)),
                    result: ok.ok_or(err),
                }),
                Op::Closed(p) => Some(Input::Closed { conn: ConnId::from_raw(pick(p, t.conns)) }),
                Op::Timer => Some(Input::TimerFired),
                Op::Close => Some(Input::CloseRequested),
                Op::CloseWhenCurrent => Some(Input::CloseWhenCurrentConnectionIsClosed),
                Op::Abort(e) => Some(Input::Abort { error: e }),
                Op::Handled(p) => Some(Input::EventHandled { event: EventId::from_raw(pick(p, t.events)) }),
            };
            t.step(&mut m, now, input)?;
        }
    }
}
