//! Named tests for the rules this library adds to the original (docs/behaviour.md §2, §7):
//! R15 handover (make before break), R16 retry now, R17 another copy is not held up by R6,
//! and the bound I10 on attempts that begin early. Driven by hand with explicit times.

mod common;

use std::time::Duration;

use common::*;
use persistent_connection_core::{
    AttemptError, AttemptId, Config, ConnId, Effect, Event, EventId, EventKind, HandoverReason,
    Input, Instant, Jitter, Machine, RetryDelay, RetryNowReason, RetryPolicy, State,
};
use proptest::prelude::*;

fn handover(reason: HandoverReason, grace: f64) -> Input<A, C, E> {
    Input::Handover {
        reason,
        grace: secs(grace),
    }
}

fn retry_now(reason: RetryNowReason) -> Input<A, C, E> {
    Input::RetryNow { reason }
}

/// The lookup and connect of the handover attempt in flight, answered with `addr` and
/// `conn`; returns the effects of the connect's answer.
fn handover_succeeds(h: &mut H, addr: A, conn: C) -> Vec<Eff> {
    let attempt =
        h.m.handover()
            .and_then(|s| s.attempt)
            .expect("handover attempt");
    let effects = h.feed(Input::AddressResult {
        attempt,
        result: Ok(addr),
    });
    assert_eq!(
        effects,
        vec![Effect::Connect {
            attempt,
            address: addr,
            consecutive_unsuccessful_attempts: h.m.consecutive_unsuccessful_attempts(),
        }],
        "a handover's address is not an event (R15)"
    );
    h.feed(Input::ConnectResult {
        attempt,
        result: Ok(conn),
    })
}

fn new_conn(effects: &[Eff]) -> ConnId {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::BecameCurrent { conn, .. } => Some(*conn),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no BecameCurrent in {effects:?}"))
}

// ---------------------------------------------------------------- R15 handover

#[test]
fn r15_handover_makes_the_new_connection_current_before_the_old_one_is_closed() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    // Long after the attempt that made it: a handover begins with an ordinary attempt start.
    let effects = h.feed_at(100.0, handover(HandoverReason::Withdrawn, 5.0));
    let attempt = h.lookup();
    assert_eq!(
        effects,
        vec![
            Effect::StartTimer {
                attempt,
                base: secs(10.0),
                delay: secs(10.0),
                deadline: at(110.0),
            },
            Effect::GetAddress { attempt },
        ],
        "R2 for the handover's attempt, and nothing else"
    );
    let status = h.m.handover().expect("pending");
    assert_eq!(status.reason, HandoverReason::Withdrawn);
    assert_eq!(status.from, old);
    assert_eq!(status.attempt, Some(attempt));
    assert_eq!(
        h.m.current_connection(),
        Some(&1),
        "the old one serves meanwhile"
    );
    assert_eq!(h.m.state(), State::Connected);

    h.set_time(100.5);
    let effects = handover_succeeds(&mut h, "b", 2);
    let new = new_conn(&effects);
    assert_eq!(
        effects,
        vec![
            Effect::BecameCurrent {
                conn: new,
                connection: 2
            },
            Effect::Emit {
                id: h.emitted_id(),
                event: Event::HandedOver {
                    connection: 2,
                    reason: HandoverReason::Withdrawn
                },
            },
        ],
        "one step: the new one current, no NoLongerCurrent, no outcome, no Disconnected"
    );
    assert_eq!(h.m.current_connection(), Some(&2));
    assert_eq!(
        h.m.retired_connections().collect::<Vec<_>>(),
        vec![(old, at(105.5))],
        "retired until its grace ends"
    );
    assert_eq!(h.m.handover(), None);
    assert_eq!(h.m.poll_timeout(), Some(at(105.5)));
    assert!(h.handled().is_empty());
    assert_eq!(h.m.state(), State::Connected);

    assert!(
        h.feed_at(105.0, Input::TimerFired).is_empty(),
        "grace not over"
    );
    assert_eq!(
        h.feed_at(105.5, Input::TimerFired),
        vec![Effect::CloseConnection {
            conn: old,
            connection: 1
        }]
    );
    assert_eq!(h.m.lingering_connections(), &[old]);
    assert!(
        h.feed(Input::Closed { conn: old }).is_empty(),
        "the retired connection's close is not a Disconnected"
    );
    assert_eq!(h.m.poll_timeout(), None);
    assert_eq!(h.m.counters().handovers, 1);
    assert_eq!(
        h.all_events(),
        vec![
            Event::AttemptingToConnect,
            Event::ObtainedAddress("a"),
            Event::Connected(1),
            Event::HandedOver {
                connection: 2,
                reason: HandoverReason::Withdrawn
            },
        ]
    );
}

#[test]
fn r15_handover_begins_at_once_after_the_attempt_that_made_the_connection() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1); // its attempt began at 0; its timer fires at 10
    let effects = h.feed_at(1.0, handover(HandoverReason::Drain, 1.0));
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert_eq!(h.m.retry_deadline(), Some(at(11.0)), "its own timer");
    assert_eq!(h.m.attempt_began_by_retry_now(), None);
}

#[test]
fn r15_a_handover_asked_while_the_connected_handler_runs_begins_when_it_returns() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Ok(1));
    assert!(h.feed(handover(HandoverReason::User, 1.0)).is_empty());
    assert_eq!(h.m.handover().map(|s| s.attempt), Some(None));
    let effects = h.handled();
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
}

#[test]
fn r15_a_failed_handover_attempt_leaves_the_current_connection_and_retries_on_the_timer() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Withdrawn, 1.0));
    let effects = h.feed_at(
        100.5,
        Input::AddressResult {
            attempt: h.lookup(),
            result: Err("no other copy"),
        },
    );
    assert!(effects.is_empty(), "no event, no outcome: {effects:?}");
    assert_eq!(h.m.current_connection(), Some(&1));
    assert_eq!(h.m.state(), State::Connected);
    let status = h.m.handover().expect("still pending");
    assert_eq!((status.attempt, status.failures), (None, 1));
    assert_eq!(h.m.poll_timeout(), Some(at(110.0)));
    assert!(h.feed_at(109.0, Input::TimerFired).is_empty());
    let effects = h.feed_at(110.0, Input::TimerFired);
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    // A connect failure is the same: counted (R12), no event, the next attempt on its timer.
    h.address(Ok("b"));
    let effects = h.connect_result(Err("refused"));
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(h.m.consecutive_unsuccessful_attempts(), 2);
    assert_eq!(h.m.counters().handover_failures, 2);
    h.feed_at(120.0, Input::TimerFired);
    let effects = handover_succeeds(&mut h, "c", 3);
    assert_eq!(
        events(&effects),
        vec![Event::HandedOver {
            connection: 3,
            reason: HandoverReason::Withdrawn
        }]
    );
    assert_eq!(
        h.m.consecutive_unsuccessful_attempts(),
        0,
        "reset by the success"
    );
    assert_eq!(
        h.count(|e| matches!(e, Effect::AttemptOutcome(_))),
        1,
        "only R5's"
    );
}

#[test]
fn r15_the_retry_policy_counts_failed_handover_attempts() {
    let mut h = H::with(Config {
        seed: 1,
        retry: RetryPolicy::grpc().non_random(),
    });
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::MaxAge, 1.0));
    let mut bases = Vec::new();
    for _ in 0..3 {
        let Some(Effect::StartTimer { base, .. }) = h.last.first().cloned() else {
            panic!("{:?}", h.last)
        };
        bases.push(base);
        h.address(Err("no other copy"));
        h.now = h.m.poll_timeout().expect("waits for the timer");
        h.feed(Input::TimerFired);
    }
    assert_eq!(bases, vec![secs(1.0), secs(1.6), secs(2.56)]);
}

#[test]
fn r15_when_the_connection_dies_during_the_connect_the_attempt_carries_on_as_the_new_round() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Withdrawn, 1.0));
    let attempt = h.lookup();
    h.address(Ok("b"));
    let effects = h.feed_at(100.2, Input::Closed { conn: old });
    assert_eq!(effects[0], Effect::NoLongerCurrent { conn: old });
    assert_eq!(events(&effects), vec![Event::Disconnected], "as R6 says");
    assert_eq!(h.m.handover(), None);
    // The connect answers while the Disconnected handler runs: kept for later.
    let effects = h.feed_at(
        100.3,
        Input::ConnectResult {
            attempt,
            result: Ok(2),
        },
    );
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(events(&h.handled()), vec![Event::AttemptingToConnect]);
    assert_eq!(events(&h.handled()), vec![Event::ObtainedAddress("b")]);
    let effects = h.handled();
    assert!(matches!(
        effects[0],
        Effect::BecameCurrent { connection: 2, .. }
    ));
    assert_eq!(
        outcomes(&effects),
        vec![Ok(2)],
        "an ordinary attempt now (R10)"
    );
    assert_eq!(events(&effects), vec![Event::Connected(2)]);
    assert_eq!(
        h.attempt_starts(),
        vec![at(0.0), at(100.0)],
        "no new attempt, no wait"
    );
}

#[test]
fn r15_when_the_connection_dies_during_the_lookup_the_attempt_carries_on_as_the_new_round() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 1.0));
    let attempt = h.lookup();
    h.feed(Input::Closed { conn: old });
    assert_eq!(events(&h.handled()), vec![Event::AttemptingToConnect]);
    assert!(h.handled().is_empty(), "the lookup is still in flight");
    assert_eq!(h.m.state(), State::Resolving(attempt));
    let effects = h.feed(Input::AddressResult {
        attempt,
        result: Err("catalog down"),
    });
    assert_eq!(
        events(&effects),
        vec![Event::FailedToConnect("catalog down")]
    );
    assert_eq!(
        outcomes(&effects),
        vec![Err(AttemptError::Failed("catalog down"))]
    );
    h.handled_at(101.0);
    assert_eq!(
        h.m.poll_timeout(),
        Some(at(110.0)),
        "its own timer, as R4 says"
    );
}

#[test]
fn r15_a_result_parked_during_the_handlers_is_delivered_after_them() {
    // Lookup answered while Disconnected is handled: ObtainedAddress comes after
    // AttemptingToConnect, then the connect.
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 1.0));
    let attempt = h.lookup();
    h.feed(Input::Closed { conn: old });
    assert!(
        h.feed(Input::AddressResult {
            attempt,
            result: Ok("a")
        })
        .is_empty()
    );
    // A duplicate answer is stale.
    assert!(
        h.feed(Input::AddressResult {
            attempt,
            result: Ok("z")
        })
        .is_empty()
    );
    assert_eq!(events(&h.handled()), vec![Event::AttemptingToConnect]);
    let effects = h.handled();
    assert_eq!(
        events(&effects),
        vec![Event::ObtainedAddress("a")],
        "a new round reports the address again (R3)"
    );
    assert_eq!(find_connect(&h.handled()).map(|c| c.1), Some("a"));
}

#[test]
fn r15_a_failed_handover_waiting_for_its_timer_ends_with_the_connection() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Withdrawn, 1.0));
    h.address(Err("no other copy"));
    h.feed_at(101.0, Input::Closed { conn: old });
    assert_eq!(h.m.handover(), None);
    let effects = h.handled();
    assert!(events(&effects).is_empty());
    assert_eq!(h.m.state(), State::WaitingToReconnect);
    assert_eq!(
        h.m.poll_timeout(),
        Some(at(110.0)),
        "the latest attempt's timer (R6, I4)"
    );
}

#[test]
fn r15_a_new_handover_request_replaces_the_reason_and_the_grace() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::MaxAge, 60.0));
    assert!(
        h.feed(handover(HandoverReason::Withdrawn, 2.0)).is_empty(),
        "the attempt in flight goes on"
    );
    let effects = handover_succeeds(&mut h, "b", 2);
    assert_eq!(
        events(&effects),
        vec![Event::HandedOver {
            connection: 2,
            reason: HandoverReason::Withdrawn
        }]
    );
    assert_eq!(
        h.m.retired_connections().collect::<Vec<_>>(),
        vec![(old, at(102.0))]
    );
}

#[test]
fn r15_cancel_handover_cancels_the_attempt_and_the_next_one_waits_for_its_timer() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Withdrawn, 1.0));
    let attempt = h.lookup();
    h.address(Ok("b"));
    assert_eq!(
        h.feed(Input::CancelHandover),
        vec![Effect::CancelAttempt { attempt }]
    );
    assert_eq!(h.m.handover(), None);
    assert_eq!(h.m.counters().handovers_cancelled, 1);
    // Its connection still arrives: closed, never current.
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Ok(7),
    });
    assert!(matches!(
        effects.as_slice(),
        [Effect::CloseConnection { connection: 7, .. }]
    ));
    assert_eq!(h.m.current_connection(), Some(&1));
    // A new handover: the attempt before it did not make the connection, so I4 holds.
    assert!(
        h.feed_at(101.0, handover(HandoverReason::User, 1.0))
            .is_empty()
    );
    assert_eq!(h.m.poll_timeout(), Some(at(110.0)));
    assert!(find_get_address(&h.feed_at(110.0, Input::TimerFired)).is_some());
    // Cancelling with nothing pending changes nothing.
    h.feed(Input::CancelHandover);
    assert!(h.feed(Input::CancelHandover).is_empty());
}

#[test]
fn r15_close_during_a_handover_cancels_it_and_closes_both_and_the_retired() {
    let mut h = H::constant(10.0);
    let first = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 300.0));
    let second = new_conn(&handover_succeeds(&mut h, "b", 2));
    h.handled();
    // The attempt before made the connection: the next handover begins at once.
    h.feed_at(101.0, handover(HandoverReason::User, 300.0));
    let attempt = h.lookup();
    let effects = h.feed(Input::CloseRequested);
    assert_eq!(
        effects,
        vec![
            Effect::AttemptOutcome(Err(AttemptError::Closed)),
            Effect::CloseConnection {
                conn: first,
                connection: 1
            },
            Effect::CancelAttempt { attempt },
            Effect::CloseConnection {
                conn: second,
                connection: 2
            },
        ]
    );
    assert_eq!(h.m.poll_timeout(), None, "no grace is waited out");
    assert!(h.feed(Input::Closed { conn: first }).is_empty());
    let effects = h.feed(Input::Closed { conn: second });
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
}

#[test]
fn r15_close_while_the_carried_attempt_is_parked_closes_its_connection() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 1.0));
    let attempt = h.lookup();
    h.address(Ok("b"));
    h.feed(Input::Closed { conn: old });
    h.feed(Input::ConnectResult {
        attempt,
        result: Ok(2),
    });
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CancelAttempt { attempt }));
    let stray = match effects.last() {
        Some(Effect::CloseConnection {
            conn,
            connection: 2,
        }) => *conn,
        other => panic!("{other:?} in {effects:?}"),
    };
    assert!(
        h.handled().is_empty(),
        "the Disconnected handler returned; the stray is still closing"
    );
    assert_eq!(
        h.feed(Input::Closed { conn: stray }),
        vec![Effect::CloseFinished]
    );
    assert_eq!(h.all_events().last(), Some(&Event::Disconnected));
}

#[test]
fn r15_handover_when_not_connected_or_closing_does_nothing() {
    let mut h = H::constant(10.0);
    assert!(h.feed(handover(HandoverReason::User, 1.0)).is_empty());
    h.handled();
    assert!(h.feed(handover(HandoverReason::User, 1.0)).is_empty());
    assert_eq!(h.m.handover(), None);
    // After R11 while connected.
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed(Input::CloseWhenCurrentConnectionIsClosed);
    assert!(
        h.feed_at(100.0, handover(HandoverReason::User, 1.0))
            .is_empty()
    );
    assert_eq!(h.m.handover(), None);
    // After close.
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed(Input::CloseRequested);
    assert!(
        h.feed_at(100.0, handover(HandoverReason::User, 1.0))
            .is_empty()
    );
}

#[test]
fn r15_r11_and_abort_during_a_handover_cancel_it_and_keep_the_current_connection() {
    for stop in [
        Input::CloseWhenCurrentConnectionIsClosed,
        Input::Abort { error: "stop" },
    ] {
        let mut h = H::constant(10.0);
        let conn = h.connect_fully("a", 1);
        h.feed_at(100.0, handover(HandoverReason::User, 1.0));
        let attempt = h.lookup();
        let effects = h.feed(stop.clone());
        assert!(
            effects.contains(&Effect::CancelAttempt { attempt }),
            "{effects:?}"
        );
        assert_eq!(h.m.current_connection(), Some(&1));
        assert_eq!(h.m.handover(), None);
        let effects = h.feed(Input::Closed { conn });
        assert_eq!(events(&effects), vec![Event::Disconnected]);
        assert_eq!(h.handled(), vec![Effect::CloseFinished]);
    }
}

#[test]
fn r15_a_retired_connection_closed_by_its_peer_is_not_a_disconnection() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Drain, 30.0));
    handover_succeeds(&mut h, "b", 2);
    h.handled();
    assert!(h.feed_at(101.0, Input::Closed { conn: old }).is_empty());
    assert_eq!(h.m.retired_connections().count(), 0);
    assert_eq!(h.m.poll_timeout(), None, "no grace left to wait for");
    assert!(h.feed_at(200.0, Input::TimerFired).is_empty());
    assert_eq!(h.count(|e| matches!(e, Effect::NoLongerCurrent { .. })), 0);
}

#[test]
fn r15_a_zero_grace_closes_the_old_connection_in_the_same_step() {
    let mut h = H::constant(10.0);
    let old = h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 0.0));
    let effects = handover_succeeds(&mut h, "b", 2);
    assert!(matches!(
        effects[0],
        Effect::BecameCurrent { connection: 2, .. }
    ));
    assert_eq!(
        effects.last(),
        Some(&Effect::CloseConnection {
            conn: old,
            connection: 1
        }),
        "after the swap, never before"
    );
}

#[test]
fn r15_the_new_connection_dying_during_the_handed_over_handler_waits_for_it() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::User, 1.0));
    let new = new_conn(&handover_succeeds(&mut h, "b", 2));
    let effects = h.feed(Input::Closed { conn: new });
    assert_eq!(effects, vec![Effect::NoLongerCurrent { conn: new }], "R6");
    assert_eq!(h.m.current_connection(), None);
    assert_eq!(events(&h.handled()), vec![Event::Disconnected]);
}

#[test]
fn r15_a_handover_asked_during_the_connected_handler_ends_if_the_connection_dies() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Ok(1));
    let conn = h.m.current_conn_id().unwrap();
    h.feed(handover(HandoverReason::User, 1.0));
    h.feed(Input::Closed { conn });
    assert_eq!(h.m.handover(), None);
    assert_eq!(events(&h.handled()), vec![Event::Disconnected]);
    assert!(h.count(|e| matches!(e, Effect::StartTimer { .. })) == 1);
}

#[test]
fn r15_handed_over_is_a_new_event_kind_and_the_state_stays_connected() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::FailBack, 1.0));
    assert_eq!(
        h.m.state(),
        State::Connected,
        "a handover runs beside the connection"
    );
    handover_succeeds(&mut h, "b", 2);
    assert_eq!(h.m.state(), State::HandlingEvent(EventKind::HandedOver));
    assert_eq!(
        Event::<A, C, E>::HandedOver {
            connection: 2,
            reason: HandoverReason::FailBack
        }
        .kind(),
        EventKind::HandedOver
    );
    assert_eq!(HandoverReason::FailBack.as_str(), "fail_back");
    assert_eq!(
        HandoverReason::Withdrawn.to_string(),
        "the copy was withdrawn from the catalog"
    );
}

// ---------------------------------------------------------------- R16 retry now

#[test]
fn r16_retry_now_ends_the_wait_before_the_next_attempt() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Err("refused"));
    h.handled_at(0.5);
    assert_eq!(h.m.state(), State::WaitingToRetry);
    let effects = h.feed_at(1.0, retry_now(RetryNowReason::User));
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert!(events(&effects).is_empty(), "the same round");
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(1.0)]);
    assert_eq!(h.m.attempt_began_by_retry_now(), Some(RetryNowReason::User));
    assert_eq!(h.m.counters().retries_now, 1);
}

#[test]
fn r16_retry_now_ends_the_wait_before_a_new_round() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1);
    h.feed_at(2.0, Input::Closed { conn });
    h.handled();
    assert_eq!(h.m.state(), State::WaitingToReconnect);
    let effects = h.feed_at(3.0, retry_now(RetryNowReason::NewCopy));
    assert_eq!(events(&effects), vec![Event::AttemptingToConnect]);
    assert!(find_get_address(&h.handled()).is_some());
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(3.0)]);
    assert_eq!(
        h.m.attempt_began_by_retry_now(),
        Some(RetryNowReason::NewCopy)
    );
}

#[test]
fn r16_retry_now_during_an_attempt_ends_the_wait_that_follows_it() {
    let mut h = H::constant(10.0);
    h.handled();
    let attempt = h.lookup();
    assert!(
        h.feed_at(0.1, retry_now(RetryNowReason::NewCopy))
            .is_empty()
    );
    // The attempt under way fails; its FailedToConnect handler runs; then no wait.
    h.feed(Input::AddressResult {
        attempt,
        result: Err("refused"),
    });
    let effects = h.handled_at(0.2);
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert_eq!(
        h.m.attempt_began_by_retry_now(),
        Some(RetryNowReason::NewCopy)
    );
}

#[test]
fn r16_a_kept_retry_now_is_forgotten_once_an_attempt_begins_or_a_connection_is_made() {
    // Kept during AttemptingToConnect's handler: the attempt that begins next uses the news.
    let mut h = H::constant(10.0);
    h.feed(retry_now(RetryNowReason::NewCopy));
    h.handled();
    h.address(Err("refused"));
    assert!(find_get_address(&h.handled()).is_none(), "waits as R4 says");
    assert_eq!(h.m.state(), State::WaitingToRetry);
    // Kept during a connect that succeeds: a later young death waits as R6 says.
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    h.feed(retry_now(RetryNowReason::NewCopy));
    h.feed(Input::ConnectResult {
        attempt,
        result: Ok(1),
    });
    let conn = h.m.current_conn_id().unwrap();
    h.handled();
    h.feed_at(1.0, Input::Closed { conn });
    h.handled();
    assert_eq!(h.m.state(), State::WaitingToReconnect);
}

#[test]
fn r16_retry_now_while_connected_or_closed_does_nothing() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1);
    assert!(h.feed_at(1.0, retry_now(RetryNowReason::User)).is_empty());
    h.feed_at(2.0, Input::Closed { conn });
    h.handled();
    assert_eq!(h.m.state(), State::WaitingToReconnect, "nothing was kept");
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Err("e"));
    h.handled();
    h.feed(Input::CloseRequested);
    assert!(h.feed(retry_now(RetryNowReason::User)).is_empty());
}

#[test]
fn r16_retry_now_after_the_timer_fired_is_an_ordinary_start() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Err("refused"));
    h.handled();
    // The driver has not fed TimerFired yet; retry now arrives after the deadline.
    let effects = h.feed_at(12.0, retry_now(RetryNowReason::User));
    assert!(find_get_address(&effects).is_some());
    assert_eq!(
        h.m.attempt_began_by_retry_now(),
        None,
        "it began on its timer"
    );
    assert_eq!(h.m.counters().retries_now, 0);
}

#[test]
fn r16_retry_now_ends_a_pending_handovers_wait() {
    let mut h = H::constant(10.0);
    h.connect_fully("a", 1);
    h.feed_at(100.0, handover(HandoverReason::Withdrawn, 1.0));
    h.address(Err("no other copy"));
    let effects = h.feed_at(101.0, retry_now(RetryNowReason::NewCopy));
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert_eq!(
        h.m.handover().and_then(|s| s.attempt),
        find_get_address(&effects)
    );
}

#[test]
fn r16_i10_no_two_attempts_in_a_row_begin_by_retry_now() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Err("refused"));
    h.handled();
    h.feed_at(1.0, retry_now(RetryNowReason::NewCopy)); // attempt 1 at 1.0, by retry now
    h.address(Err("refused"));
    assert_eq!(
        h.m.state(),
        State::WaitingToRetry,
        "de-duplicated: straight to the wait"
    );
    let effects = h.feed_at(2.0, retry_now(RetryNowReason::NewCopy));
    assert!(effects.is_empty(), "refused: {effects:?}");
    assert_eq!(h.m.counters().retries_now_refused, 1);
    assert_eq!(h.m.poll_timeout(), Some(at(11.0)));
    // Attempt 2 begins on its timer; after it, retry now works again.
    assert!(find_get_address(&h.feed_at(11.0, Input::TimerFired)).is_some());
    assert_eq!(h.m.attempt_began_by_retry_now(), None);
    h.address(Err("refused"));
    assert!(find_get_address(&h.feed_at(12.0, retry_now(RetryNowReason::User))).is_some());
    assert_eq!(
        h.attempt_starts(),
        vec![at(0.0), at(1.0), at(11.0), at(12.0)]
    );
}

// ---------------------------------------------------------------- R17 another copy

#[test]
fn r17_another_copy_listed_is_tried_at_once_after_a_young_death() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1); // attempt at 0: R6 would wait until 10
    h.feed_at(0.56, Input::Closed { conn });
    // The driver sees the catalog list a copy other than the one lost.
    assert!(h.feed(retry_now(RetryNowReason::AnotherCopy)).is_empty());
    assert_eq!(events(&h.handled()), vec![Event::AttemptingToConnect]);
    assert!(find_get_address(&h.handled()).is_some());
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(0.56)]);
    assert_eq!(
        h.m.attempt_began_by_retry_now(),
        Some(RetryNowReason::AnotherCopy)
    );
}

#[test]
fn r17_without_another_copy_a_young_death_waits_as_r6_says() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1);
    h.feed_at(0.56, Input::Closed { conn });
    assert!(events(&h.handled()).is_empty());
    assert_eq!(h.m.poll_timeout(), Some(at(10.0)));
}

#[test]
fn r17_copies_that_accept_and_drop_are_still_throttled() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1);
    h.feed_at(0.1, Input::Closed { conn });
    h.feed(retry_now(RetryNowReason::AnotherCopy));
    h.handled(); // Disconnected
    let conn = h.connect_fully("b", 2); // begun by retry now at 0.1
    h.feed_at(0.2, Input::Closed { conn });
    h.feed(retry_now(RetryNowReason::AnotherCopy));
    assert!(events(&h.handled()).is_empty(), "refused (I10): waits");
    assert_eq!(h.m.poll_timeout(), Some(at(10.1)));
    assert_eq!(h.m.counters().retries_now_refused, 1);
}

// ---------------------------------------------------------------- I10, I11 under any inputs

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
    Handover(u8, u16),
    CancelHandover,
    RetryNow(u8),
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
        (0u8..5, 0u16..3_000).prop_map(|(r, g)| Op::Handover(r, g)),
        Just(Op::CancelHandover),
        (0u8..3).prop_map(Op::RetryNow),
    ]
}

/// Mostly the latest id issued, sometimes an older or a never-issued one.
fn pick(pick: u8, issued: u64) -> u64 {
    match pick % 8 {
        0 => u64::from(pick) + issued,
        1 | 2 => u64::from(pick) % issued.max(1),
        _ => issued.saturating_sub(1),
    }
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

/// Watches the effects and checks the structural promises of R15/R16 (I10, I11) and the
/// core's own (I3, I6, R8) under any inputs.
#[derive(Default)]
struct Tracker {
    attempts: u64,
    events: u64,
    conns: u64,
    unhandled: Option<EventId>,
    finished: bool,
    /// The current connection, as the effects say.
    current: Option<ConnId>,
    /// Retired connections (R15) with their grace deadline, not yet asked to close.
    retired: Vec<(ConnId, Instant)>,
    /// Deadline of the latest attempt's retry timer.
    deadline: Option<Instant>,
    /// Whether the latest attempt began early by retry now.
    latest_by_retry_now: bool,
    /// The latest attempt made the current connection.
    latest_made_current: bool,
    retry_now_since_start: bool,
    early_starts: u64,
}

impl Tracker {
    fn step(
        &mut self,
        m: &mut Machine<u8, u8, u8>,
        now: Instant,
        input: Option<Input<u8, u8, u8>>,
    ) -> Result<(), TestCaseError> {
        let stepped = input.is_some();
        if let Some(input) = input {
            if let Input::EventHandled { event } = &input
                && self.unhandled == Some(*event)
            {
                self.unhandled = None;
            }
            if matches!(input, Input::RetryNow { .. }) {
                self.retry_now_since_start = true;
            }
            m.handle(now, input);
        }
        while let Some(e) = m.poll_effect() {
            match e {
                Effect::Emit { id, event } => {
                    prop_assert!(!self.finished, "event after CloseFinished (R8)");
                    prop_assert!(self.unhandled.is_none(), "I3");
                    self.unhandled = Some(id);
                    self.events = self.events.max(id.raw() + 1);
                    if let Event::HandedOver { .. } = event {
                        prop_assert!(self.current.is_some(), "HandedOver without a current");
                    }
                }
                Effect::StartTimer {
                    attempt, deadline, ..
                } => {
                    self.attempts = self.attempts.max(attempt.raw() + 1);
                    let early = self.deadline.is_some_and(|d| now < d);
                    if early {
                        self.early_starts += 1;
                        // I10: (a) a handover right after the attempt that made the
                        // connection, or (b) retry now, never twice in a row.
                        let handover_after_success =
                            self.current.is_some() && self.latest_made_current;
                        let by_retry_now = m.attempt_began_by_retry_now().is_some();
                        prop_assert!(
                            handover_after_success || by_retry_now,
                            "I10: an early start that is neither a handover after a success nor retry now"
                        );
                        if by_retry_now {
                            prop_assert!(self.retry_now_since_start, "I10: retry now not asked");
                            prop_assert!(!self.latest_by_retry_now, "I10: twice in a row");
                        }
                    }
                    self.latest_by_retry_now = m.attempt_began_by_retry_now().is_some();
                    prop_assert!(!self.latest_by_retry_now || early);
                    self.latest_made_current = false;
                    self.retry_now_since_start = false;
                    self.deadline = Some(deadline);
                }
                Effect::BecameCurrent { conn, .. } => {
                    self.conns = self.conns.max(conn.raw() + 1);
                    self.latest_made_current = true;
                    if let Some(old) = self.current.replace(conn) {
                        // I11: a handover swaps in one step; the old one is retired.
                        let grace = m
                            .retired_connections()
                            .find(|(c, _)| *c == old)
                            .map(|(_, d)| d);
                        match grace {
                            Some(d) => self.retired.push((old, d)),
                            // A zero grace: already asked to close in this very step.
                            None => prop_assert!(m.lingering_connections().contains(&old)),
                        }
                    }
                }
                Effect::NoLongerCurrent { conn } => {
                    prop_assert_eq!(self.current, Some(conn), "I11: only the current one");
                    self.current = None;
                }
                Effect::CloseConnection { conn, .. } => {
                    self.conns = self.conns.max(conn.raw() + 1);
                    if let Some(i) = self.retired.iter().position(|(c, _)| *c == conn) {
                        let (_, deadline) = self.retired.remove(i);
                        prop_assert!(now <= deadline, "I11: closed after its grace");
                    }
                }
                Effect::CloseFinished => {
                    prop_assert!(!self.finished, "I7");
                    self.finished = true;
                }
                _ => {}
            }
        }
        // I11: a retired connection is asked to close no later than its grace deadline;
        // its grace is part of what the driver must wake up for.
        for (conn, deadline) in &self.retired {
            prop_assert!(
                !stepped || now < *deadline || !m.retired_connections().any(|(c, _)| c == *conn)
            );
            prop_assert!(m.poll_timeout().is_some_and(|t| t <= *deadline));
        }
        prop_assert_eq!(m.current_conn_id(), self.current, "one current connection");
        if m.handover().is_some() {
            prop_assert!(
                m.current_conn_id().is_some(),
                "a handover needs a current one"
            );
        }
        if self.finished {
            prop_assert!(m.current_connection().is_none());
            prop_assert!(self.retired.is_empty());
        }
        Ok(())
    }

    /// Drops retired connections that closed on their own.
    fn closed(&mut self, conn: ConnId) {
        self.retired.retain(|(c, _)| *c != conn);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn i10_i11_hold_under_any_inputs_with_handovers_and_retries_now(
        seed in any::<u64>(),
        delay_ms in prop_oneof![Just(0u64), 1u64..5_000, Just(u64::MAX)],
        non_random in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..250),
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
                Op::Closed(p) => {
                    let conn = ConnId::from_raw(pick(p, t.conns));
                    t.closed(conn);
                    Some(Input::Closed { conn })
                }
                Op::Timer => Some(Input::TimerFired),
                Op::Close => Some(Input::CloseRequested),
                Op::CloseWhenCurrent => Some(Input::CloseWhenCurrentConnectionIsClosed),
                Op::Abort(e) => Some(Input::Abort { error: e }),
                Op::Handled(p) => Some(Input::EventHandled { event: EventId::from_raw(pick(p, t.events)) }),
                Op::Handover(r, g) => Some(Input::Handover {
                    reason: REASONS[usize::from(r) % REASONS.len()],
                    grace: Duration::from_millis(u64::from(g)),
                }),
                Op::CancelHandover => Some(Input::CancelHandover),
                Op::RetryNow(r) => Some(Input::RetryNow { reason: RETRY_REASONS[usize::from(r) % 3] }),
            };
            t.step(&mut m, now, input)?;
        }
    }
}
