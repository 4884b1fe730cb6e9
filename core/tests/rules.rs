//! One or more named tests per rule of docs/behaviour.md §2 (R1–R12), driving the machine by hand with
//! explicit times. R15–R17 (handover, retry now) are in `handover.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use persistent_connection_core::{
    AttemptError, AttemptId, Config, ConnId, Effect, Event, EventId, Input, Instant, Jitter,
    RetryDelay, RetryPolicy, State,
};

// ---------------------------------------------------------------- R1 start

#[test]
fn r1_new_machine_emits_attempting_to_connect_and_nothing_else() {
    let h = H::constant(1.0);
    assert_eq!(events(&h.last), vec![Event::AttemptingToConnect]);
    assert_eq!(h.last.len(), 1, "{:?}", h.last);
    assert_eq!(
        h.m.state(),
        State::HandlingEvent(persistent_connection_core::EventKind::AttemptingToConnect)
    );
}

#[test]
fn r1_round_begins_only_once_attempting_to_connect_is_handled() {
    let mut h = H::constant(1.0);
    let id = h.emitted_id();
    // Time passes and the timer "fires": nothing begins while the handler runs.
    assert!(h.feed_at(50.0, Input::TimerFired).is_empty());
    // A wrong event id is stale: nothing happens.
    let wrong = EventId::from_raw(id.raw() + 7);
    assert!(h.feed(Input::EventHandled { event: wrong }).is_empty());
    let effects = h.feed(Input::EventHandled { event: id });
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
}

// ---------------------------------------------------------------- R2 attempt

#[test]
fn r2_attempt_starts_the_retry_timer_then_asks_for_the_address() {
    let mut h = H::constant(2.0);
    let effects = h.handled_at(3.0);
    match effects.as_slice() {
        [
            Effect::StartTimer {
                attempt: a,
                base,
                delay,
                deadline,
            },
            Effect::GetAddress { attempt: b },
        ] => {
            assert_eq!(a, b);
            assert_eq!(*base, secs(2.0));
            assert_eq!(*delay, secs(2.0));
            assert_eq!(*deadline, at(5.0));
        }
        other => panic!("unexpected effects {other:?}"),
    }
}

#[test]
fn r2_retry_delay_is_called_exactly_once_per_attempt() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut h = H::with(Config {
        seed: 3,
        retry: RetryPolicy {
            delay: RetryDelay::from_fn(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Duration::from_secs(1)
            }),
            jitter: Jitter::NonRandom,
        },
    });
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no attempt before R1's event is handled"
    );
    h.handled();
    for i in 1..=5u32 {
        assert_eq!(calls.load(Ordering::SeqCst), i);
        h.address(Err("down"));
        if !events(&h.last).is_empty() {
            h.handled();
        }
        h.feed_at(f64::from(i) * 1.0, Input::TimerFired);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(h.attempt_starts().len(), 6);
}

// ---------------------------------------------------------------- R3 address

#[test]
fn r3_obtained_address_is_emitted_and_awaited_before_connecting() {
    let mut h = H::constant(1.0);
    h.handled();
    let effects = h.address(Ok("a"));
    assert_eq!(events(&effects), vec![Event::ObtainedAddress("a")]);
    assert!(
        find_connect(&effects).is_none(),
        "connect waits for the handler"
    );
    let effects = h.handled();
    assert_eq!(find_connect(&effects).map(|c| c.1), Some("a"));
}

#[test]
fn r3_same_address_twice_in_a_round_is_reported_once() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Err("refused"));
    h.handled();
    h.feed_at(1.0, Input::TimerFired);
    let effects = h.address(Ok("a"));
    assert!(events(&effects).is_empty(), "{effects:?}");
    assert_eq!(
        find_connect(&effects).map(|c| c.1),
        Some("a"),
        "connects at once"
    );
}

#[test]
fn r3_an_address_differing_from_the_last_is_reported_even_if_seen_before() {
    let mut h = H::constant(0.0);
    h.handled();
    for addr in ["a", "b", "a"] {
        let effects = h.address(Ok(addr));
        assert_eq!(events(&effects), vec![Event::ObtainedAddress(addr)]);
        h.handled();
        h.connect_result(Err("refused"));
        if !events(&h.last).is_empty() {
            h.handled();
        }
    }
}

#[test]
fn r3_a_new_round_reports_the_address_again() {
    let mut h = H::constant(1.0);
    let conn = h.connect_fully("a", 1);
    h.feed_at(100.0, Input::Closed { conn });
    h.handled(); // Disconnected
    assert_eq!(events(&h.last), vec![Event::AttemptingToConnect]);
    h.handled();
    let effects = h.address(Ok("a"));
    assert_eq!(events(&effects), vec![Event::ObtainedAddress("a")]);
}

// ---------------------------------------------------------------- R4 failure

#[test]
fn r4_repeated_identical_failure_is_reported_once_per_round() {
    let mut h = H::constant(1.0);
    h.handled();
    let effects = h.address(Err("catalog down"));
    assert_eq!(
        events(&effects),
        vec![Event::FailedToConnect("catalog down")]
    );
    h.handled();
    for t in 1..=3 {
        h.feed_at(f64::from(t), Input::TimerFired);
        let effects = h.address(Err("catalog down"));
        assert!(
            events(&effects).is_empty(),
            "repeat suppressed: {effects:?}"
        );
    }
    assert_eq!(
        h.count(|e| matches!(
            e,
            Effect::Emit {
                event: Event::FailedToConnect(_),
                ..
            }
        )),
        1
    );
    // A different error is reported, and so is the first one again after it.
    h.feed_at(4.0, Input::TimerFired);
    assert_eq!(
        events(&h.address(Err("refused"))),
        vec![Event::FailedToConnect("refused")]
    );
    h.handled();
    h.feed_at(5.0, Input::TimerFired);
    assert_eq!(
        events(&h.address(Err("catalog down"))),
        vec![Event::FailedToConnect("catalog down")]
    );
}

#[test]
fn r4_address_and_connect_failures_share_the_last_failure() {
    let mut h = H::constant(0.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    assert_eq!(
        events(&h.connect_result(Err("x"))),
        vec![Event::FailedToConnect("x")]
    );
    h.handled();
    // The same error from the lookup is a repeat of the last failure.
    assert!(events(&h.address(Err("x"))).is_empty());
}

#[test]
fn r4_next_attempt_waits_for_the_timer_counted_from_the_attempts_start() {
    let mut h = H::constant(1.0);
    h.handled_at(0.0); // attempt 0 starts at 0.0, timer deadline 1.0
    h.set_time(0.4);
    h.address(Err("down"));
    let effects = h.handled_at(0.5);
    assert!(find_get_address(&effects).is_none(), "timer has not fired");
    assert_eq!(
        h.m.poll_timeout(),
        Some(at(1.0)),
        "deadline from the attempt's start, not the failure"
    );
    assert!(
        h.feed_at(0.99, Input::TimerFired).is_empty(),
        "an early fire changes nothing"
    );
    let effects = h.feed_at(1.0, Input::TimerFired);
    assert!(find_get_address(&effects).is_some());
    assert!(
        events(&effects).is_empty(),
        "no new AttemptingToConnect within a round"
    );
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(1.0)]);
}

#[test]
fn r4_slow_failure_retries_at_once_when_the_timer_has_already_fired() {
    let mut h = H::constant(1.0);
    h.handled_at(0.0);
    h.set_time(2.5);
    h.address(Err("slow"));
    let effects = h.handled_at(3.0);
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(3.0)]);
}

#[test]
fn r4_a_suppressed_repeat_failure_still_waits_for_the_timer() {
    let mut h = H::constant(1.0);
    h.handled_at(0.0);
    h.address(Err("e"));
    h.handled();
    h.feed_at(1.0, Input::TimerFired);
    let effects = h.feed_at(
        1.2,
        Input::AddressResult {
            attempt: h.lookup(),
            result: Err("e"),
        },
    );
    assert!(
        effects
            .iter()
            .all(|e| matches!(e, Effect::AttemptOutcome(_))),
        "{effects:?}"
    );
    assert_eq!(h.m.state(), State::WaitingToRetry);
    assert!(find_get_address(&h.feed_at(2.0, Input::TimerFired)).is_some());
}

#[test]
fn r4_failed_to_connect_handler_is_awaited_before_the_next_attempt() {
    let mut h = H::constant(1.0);
    h.handled_at(0.0);
    h.address(Err("e"));
    // The timer fires while the handler still runs: nothing starts.
    assert!(h.feed_at(5.0, Input::TimerFired).is_empty());
    let effects = h.handled_at(6.0);
    assert!(find_get_address(&effects).is_some());
}

// ---------------------------------------------------------------- R5 connected

#[test]
fn r5_connection_is_current_before_the_connected_handler_finishes() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let effects = h.connect_result(Ok(9));
    assert!(
        matches!(effects[0], Effect::BecameCurrent { connection: 9, .. }),
        "{effects:?}"
    );
    assert_eq!(outcomes(&effects), vec![Ok(9)]);
    assert_eq!(events(&effects), vec![Event::Connected(9)]);
    assert_eq!(
        h.m.current_connection(),
        Some(&9),
        "current before the handler is done"
    );
    h.handled();
    assert_eq!(h.m.state(), State::Connected);
    assert_eq!(h.m.current_connection(), Some(&9));
}

// ---------------------------------------------------------------- R6 disconnected

#[test]
fn r6_long_lived_connection_reconnects_immediately() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1);
    let effects = h.feed_at(3600.0, Input::Closed { conn });
    assert_eq!(effects[0], Effect::NoLongerCurrent { conn });
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    assert_eq!(h.m.current_connection(), None);
    assert_eq!(
        events(&h.handled()),
        vec![Event::AttemptingToConnect],
        "no waiting"
    );
    assert!(find_get_address(&h.handled()).is_some());
    assert_eq!(h.attempt_starts(), vec![at(0.0), at(3600.0)]);
}

#[test]
fn r6_short_lived_connection_waits_for_the_retry_timer_of_its_attempt() {
    let mut h = H::constant(10.0);
    let conn = h.connect_fully("a", 1); // attempt started at 0: deadline 10
    h.feed_at(2.0, Input::Closed { conn });
    let effects = h.handled_at(2.5);
    assert!(
        events(&effects).is_empty(),
        "waits for the timer: {effects:?}"
    );
    assert_eq!(h.m.state(), State::WaitingToReconnect);
    assert_eq!(h.m.poll_timeout(), Some(at(10.0)));
    assert_eq!(
        events(&h.feed_at(10.0, Input::TimerFired)),
        vec![Event::AttemptingToConnect]
    );
}

#[test]
fn r6_disconnected_waits_for_the_connected_handler_even_if_the_connection_died_during_it() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Ok(5));
    let connected = h.emitted_id();
    let conn = h.m.current_conn_id().unwrap();
    let effects = h.feed_at(0.1, Input::Closed { conn });
    assert_eq!(
        effects,
        vec![Effect::NoLongerCurrent { conn }],
        "no Disconnected yet"
    );
    assert_eq!(
        h.m.current_connection(),
        None,
        "it stops being current at once"
    );
    let effects = h.feed_at(0.2, Input::EventHandled { event: connected });
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    assert_eq!(
        h.count(|e| matches!(
            e,
            Effect::Emit {
                event: Event::Disconnected,
                ..
            }
        )),
        1
    );
}

#[test]
fn r6_duplicate_or_unknown_closed_changes_nothing() {
    let mut h = H::constant(1.0);
    let conn = h.connect_fully("a", 1);
    assert!(
        h.feed(Input::Closed {
            conn: ConnId::from_raw(99)
        })
        .is_empty()
    );
    h.feed_at(50.0, Input::Closed { conn });
    assert!(
        h.feed(Input::Closed { conn }).is_empty(),
        "duplicate Closed is stale"
    );
}

// ---------------------------------------------------------------- R7 jitter

fn delays(seed: u64, jitter: Jitter, base: Duration, n: usize) -> Vec<Duration> {
    let mut h = H::with(Config {
        seed,
        retry: RetryPolicy {
            delay: RetryDelay::Constant(base),
            jitter,
        },
    });
    h.handled();
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(Effect::StartTimer { delay, .. }) = h
            .last
            .iter()
            .find(|e| matches!(e, Effect::StartTimer { .. }))
            .cloned()
        else {
            panic!("no StartTimer in {:?}", h.last)
        };
        out.push(delay);
        h.address(Err("e"));
        if !events(&h.last).is_empty() {
            h.handled();
        }
        let deadline = h.m.poll_timeout().expect("waiting");
        h.now = deadline;
        h.feed(Input::TimerFired);
    }
    out
}

#[test]
fn r7_jitter_stays_within_thirty_percent_and_uses_both_signs() {
    let base = Duration::from_secs(10);
    let d = delays(11, Jitter::default(), base, 500);
    assert!(
        d.iter()
            .all(|d| *d >= Duration::from_secs(7) && *d <= Duration::from_secs(13))
    );
    assert!(
        d.iter().any(|d| *d < Duration::from_millis(8_500)),
        "spread below"
    );
    assert!(
        d.iter().any(|d| *d > Duration::from_millis(11_500)),
        "spread above"
    );
    let distinct: std::collections::BTreeSet<_> = d.iter().collect();
    assert!(distinct.len() > 450, "delays vary: {}", distinct.len());
}

#[test]
fn r7_the_seed_fixes_every_delay() {
    let base = Duration::from_secs(1);
    assert_eq!(
        delays(5, Jitter::default(), base, 50),
        delays(5, Jitter::default(), base, 50)
    );
    assert_ne!(
        delays(5, Jitter::default(), base, 50),
        delays(6, Jitter::default(), base, 50)
    );
}

#[test]
fn r7_non_random_uses_the_base_delay_unchanged() {
    let base = Duration::from_millis(1234);
    assert!(
        delays(5, Jitter::NonRandom, base, 20)
            .iter()
            .all(|d| *d == base)
    );
}

#[test]
fn r7_default_retry_delay_is_a_jittered_constant_ten_seconds() {
    let mut h = H::with(Config::default());
    let effects = h.handled();
    let Effect::StartTimer { base, delay, .. } = effects[0] else {
        panic!("{effects:?}")
    };
    assert_eq!(base, Duration::from_secs(10));
    assert!(delay >= Duration::from_secs(7) && delay <= Duration::from_secs(13));
}

#[test]
fn r7_zero_delay_allows_back_to_back_attempts() {
    let mut h = H::with(Config {
        seed: 1,
        retry: RetryPolicy::constant(Duration::ZERO),
    });
    h.handled();
    h.address(Err("e"));
    let effects = h.handled();
    assert!(
        find_get_address(&effects).is_some(),
        "next attempt at once: {effects:?}"
    );
    let effects = h.address(Err("e")); // suppressed repeat: straight to the next attempt
    assert!(find_get_address(&effects).is_some(), "{effects:?}");
    assert_eq!(h.attempt_starts(), vec![at(0.0); 3]);
}

#[test]
fn r7_duration_max_delay_saturates_and_close_is_still_prompt() {
    let mut h = H::with(Config {
        seed: 1,
        retry: RetryPolicy::constant(Duration::MAX), // jittered: up to 1.3·MAX, saturating
    });
    h.set_time(5.0);
    h.handled();
    h.address(Err("e"));
    h.handled();
    assert_eq!(h.m.poll_timeout().map(|t| t >= at(5.0)), Some(true));
    // Far in the future, yet before 0.7·MAX: an early fire changes nothing.
    let late = Instant::from_since_origin(Duration::from_secs(u64::MAX / 2));
    h.now = late;
    assert!(h.feed(Input::TimerFired).is_empty());
    assert_eq!(h.m.state(), State::WaitingToRetry);
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CloseFinished), "{effects:?}");
}

#[test]
fn r7_jitter_of_duration_max_never_exceeds_it() {
    for seed in 0..200 {
        let mut rng = <persistent_connection_core::rand_chacha::ChaCha8Rng as persistent_connection_core::rand_chacha::rand_core::SeedableRng>::seed_from_u64(seed);
        let d = Jitter::default().apply(Duration::MAX, &mut rng);
        assert!(d >= Duration::MAX.mul_f64(0.69), "{d:?}");
    }
}

// ---------------------------------------------------------------- R8 close

fn assert_closed_now(effects: &[Eff]) {
    assert_eq!(
        effects
            .iter()
            .filter(|e| **e == Effect::CloseFinished)
            .count(),
        1,
        "{effects:?}"
    );
}

#[test]
fn r8_close_during_the_attempting_to_connect_handler_waits_for_it_and_begins_no_attempt() {
    let mut h = H::constant(1.0);
    let effects = h.feed(Input::CloseRequested);
    assert!(h.m.is_closed());
    assert_eq!(outcomes(&effects), vec![Err(AttemptError::Closed)]);
    assert!(
        !effects.contains(&Effect::CloseFinished),
        "handler still running"
    );
    let effects = h.handled();
    assert_closed_now(&effects);
    assert!(find_get_address(&effects).is_none());
}

#[test]
fn r8_close_while_resolving_cancels_the_lookup() {
    let mut h = H::constant(1.0);
    h.handled();
    let attempt = h.lookup();
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CancelAttempt { attempt }));
    assert_closed_now(&effects);
    // The cancelled lookup answering late changes nothing.
    assert!(
        h.feed(Input::AddressResult {
            attempt,
            result: Ok("a")
        })
        .is_empty()
    );
}

#[test]
fn r8_close_while_connecting_closes_the_late_connection() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CancelAttempt { attempt }));
    assert_closed_now(&effects);
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Ok(7),
    });
    let [
        Effect::CloseConnection {
            conn,
            connection: 7,
        },
    ] = effects.as_slice()
    else {
        panic!("late connection must be closed, and nothing else: {effects:?}")
    };
    assert_eq!(h.m.lingering_connections(), &[*conn]);
    assert!(
        h.feed(Input::Closed { conn: *conn }).is_empty(),
        "no second CloseFinished, no event"
    );
    assert!(h.m.lingering_connections().is_empty());
    assert_eq!(h.m.current_connection(), None);
}

#[test]
fn r8_close_in_backoff_finishes_at_once_and_no_attempt_follows() {
    let mut h = H::constant(10.0);
    h.handled();
    h.address(Err("e"));
    h.handled();
    assert_eq!(h.m.state(), State::WaitingToRetry);
    let effects = h.feed_at(1.0, Input::CloseRequested);
    assert_closed_now(&effects);
    assert_eq!(h.m.poll_timeout(), None);
    assert!(h.feed_at(100.0, Input::TimerFired).is_empty());
}

#[test]
fn r8_close_while_connected_closes_it_and_emits_disconnected_then_finishes() {
    let mut h = H::constant(1.0);
    let conn = h.connect_fully("a", 3);
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CloseConnection {
        conn,
        connection: 3
    }));
    assert!(
        !effects.contains(&Effect::CloseFinished),
        "the connection is still open"
    );
    let effects = h.feed(Input::Closed { conn });
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    assert!(
        !effects.contains(&Effect::CloseFinished),
        "the Disconnected handler runs"
    );
    let effects = h.handled();
    assert_eq!(effects, vec![Effect::CloseFinished]);
    assert!(h.m.is_close_finished());
}

#[test]
fn r8_close_during_the_connected_handler() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Ok(4));
    let connected = h.emitted_id();
    let conn = h.m.current_conn_id().unwrap();
    let effects = h.feed(Input::CloseRequested);
    assert!(effects.contains(&Effect::CloseConnection {
        conn,
        connection: 4
    }));
    let effects = h.feed(Input::Closed { conn });
    assert!(
        events(&effects).is_empty(),
        "Disconnected waits for the Connected handler (R6)"
    );
    let effects = h.feed(Input::EventHandled { event: connected });
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    assert_closed_now(&h.handled());
}

#[test]
fn r8_close_during_the_obtained_address_handler_never_connects() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.feed(Input::CloseRequested);
    let effects = h.handled();
    assert_closed_now(&effects);
    assert!(find_connect(&effects).is_none());
}

#[test]
fn r8_close_during_the_failed_to_connect_handler() {
    let mut h = H::constant(0.0);
    h.handled();
    h.address(Err("e"));
    h.feed(Input::CloseRequested);
    let effects = h.handled();
    assert_closed_now(&effects);
    assert!(find_get_address(&effects).is_none());
}

#[test]
fn r8_close_during_the_disconnected_handler() {
    let mut h = H::constant(0.0);
    let conn = h.connect_fully("a", 1);
    h.feed(Input::Closed { conn });
    let effects = h.feed(Input::CloseRequested);
    assert!(!effects.contains(&Effect::CloseFinished));
    let effects = h.handled();
    assert_closed_now(&effects);
    assert!(events(&effects).is_empty());
}

#[test]
fn r8_close_is_idempotent() {
    let mut h = H::constant(1.0);
    h.handled();
    let first = h.feed(Input::CloseRequested);
    assert_closed_now(&first);
    assert!(h.feed(Input::CloseRequested).is_empty());
    assert!(h.feed(Input::CloseWhenCurrentConnectionIsClosed).is_empty());
    assert!(h.feed(Input::Abort { error: "x" }).is_empty());
    assert!(h.m.is_closed());
}

#[test]
fn r8_nothing_is_emitted_after_close_finished_whatever_arrives() {
    let mut h = H::constant(1.0);
    h.handled();
    h.feed(Input::CloseRequested);
    assert!(h.m.is_close_finished());
    let before = h.all.len();
    for raw in 0..5 {
        let attempt = AttemptId::from_raw(raw);
        h.feed(Input::AddressResult {
            attempt,
            result: Ok("a"),
        });
        h.feed(Input::AddressResult {
            attempt,
            result: Err("e"),
        });
        h.feed(Input::ConnectResult {
            attempt,
            result: Err("e"),
        });
        h.feed(Input::EventHandled {
            event: EventId::from_raw(raw),
        });
        h.feed(Input::Closed {
            conn: ConnId::from_raw(raw),
        });
        h.feed_at(1e6, Input::TimerFired);
    }
    assert_eq!(h.all.len(), before, "{:?}", &h.all[before..]);
}

// ---------------------------------------------------------------- R9 connected()

#[test]
fn r9_each_connection_becomes_current_once_and_stops_being_current_once() {
    let mut h = H::constant(0.0);
    for n in 0..3 {
        let conn = h.connect_fully("a", n);
        h.feed(Input::Closed { conn });
        h.handled();
    }
    assert_eq!(h.count(|e| matches!(e, Effect::BecameCurrent { .. })), 3);
    assert_eq!(h.count(|e| matches!(e, Effect::NoLongerCurrent { .. })), 3);
}

// ---------------------------------------------------------------- R10 outcomes

#[test]
fn r10_every_failure_is_an_outcome_even_when_the_event_is_deduplicated() {
    let mut h = H::constant(0.0);
    h.handled();
    assert_eq!(
        outcomes(&h.address(Err("e"))),
        vec![Err(AttemptError::Failed("e"))]
    );
    h.handled();
    assert_eq!(
        outcomes(&h.address(Err("e"))),
        vec![Err(AttemptError::Failed("e"))]
    );
}

#[test]
fn r10_success_and_close_are_outcomes() {
    let mut h = H::constant(0.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    assert_eq!(outcomes(&h.connect_result(Ok(1))), vec![Ok(1)]);
    h.handled();
    assert_eq!(
        outcomes(&h.feed(Input::CloseRequested)),
        vec![Err(AttemptError::Closed)]
    );
}

// ---------------------------------------------------------------- R11

#[test]
fn r11_when_connected_the_connection_stays_up_and_no_round_follows_its_close() {
    let mut h = H::constant(0.0);
    let conn = h.connect_fully("a", 1);
    let effects = h.feed(Input::CloseWhenCurrentConnectionIsClosed);
    assert!(
        effects.is_empty(),
        "the connection is not closed by us: {effects:?}"
    );
    assert!(!h.m.is_closed());
    assert_eq!(h.m.current_connection(), Some(&1));
    let effects = h.feed_at(100.0, Input::Closed { conn });
    assert!(
        h.m.is_closed(),
        "counts as closed once the connection is gone"
    );
    assert_eq!(events(&effects), vec![Event::Disconnected]);
    let effects = h.handled();
    assert_eq!(effects, vec![Effect::CloseFinished], "no new round");
}

#[test]
fn r11_when_not_connected_it_stops_now() {
    let mut h = H::constant(1.0);
    h.handled();
    let attempt = h.lookup();
    let effects = h.feed(Input::CloseWhenCurrentConnectionIsClosed);
    assert!(h.m.is_closed());
    assert!(effects.contains(&Effect::CancelAttempt { attempt }));
    assert_closed_now(&effects);
}

// ---------------------------------------------------------------- R12

#[test]
fn r12_consecutive_unsuccessful_attempts_counts_failures_and_resets_on_success() {
    let mut h = H::constant(0.0);
    h.handled();
    let mut seen = Vec::new();
    for result in [Err("x"), Err("y"), Err("x"), Ok(1)] {
        h.address(Ok("a"));
        if !events(&h.last).is_empty() {
            h.handled();
        }
        seen.push(find_connect(&h.last).unwrap().2);
        h.connect_result(result);
        if !events(&h.last).is_empty() {
            h.handled();
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    assert_eq!(
        h.m.consecutive_unsuccessful_attempts(),
        0,
        "reset by the success"
    );
    let conn = h.m.current_conn_id().unwrap();
    h.feed(Input::Closed { conn });
    h.handled();
    h.handled();
    h.address(Ok("a"));
    h.handled();
    assert_eq!(find_connect(&h.last).unwrap().2, 0);
}

#[test]
fn r12_exponential_policy_grows_with_consecutive_failures() {
    let mut h = H::with(Config {
        seed: 1,
        retry: RetryPolicy::grpc().non_random(),
    });
    h.handled();
    let mut bases = Vec::new();
    for _ in 0..4 {
        bases.push(match h.last[0] {
            Effect::StartTimer { base, .. } => base,
            ref other => panic!("{other:?}"),
        });
        h.address(Err("e"));
        if !events(&h.last).is_empty() {
            h.handled();
        }
        h.now = h.m.poll_timeout().unwrap();
        h.feed(Input::TimerFired);
    }
    assert_eq!(bases, vec![secs(1.0), secs(1.6), secs(2.56), secs(4.096)]);
}

#[test]
fn r12_abort_while_connecting_stops_and_reports_the_error_to_waiters() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    let effects = h.feed(Input::Abort {
        error: "bad credentials",
    });
    assert_eq!(
        outcomes(&effects),
        vec![
            Err(AttemptError::Aborted("bad credentials")),
            Err(AttemptError::Closed)
        ],
        "waiters get the abort error first"
    );
    assert!(h.m.is_closed(), "closed at once (R11 when not connected)");
    // `abort` comes from inside the attempt: it is awaited, not cancelled.
    assert!(!effects.contains(&Effect::CancelAttempt { attempt }));
    assert!(!effects.contains(&Effect::CloseFinished));
    // As in the original, the aborting attempt's failure is still reported (R4), and
    // close finishes once its handler returned.
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Err("bad credentials"),
    });
    assert_eq!(
        events(&effects),
        vec![Event::FailedToConnect("bad credentials")]
    );
    assert!(!effects.contains(&Effect::CloseFinished), "{effects:?}");
    assert!(
        outcomes(&effects).is_empty(),
        "waiters already have their answer"
    );
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
    assert_eq!(h.m.consecutive_unsuccessful_attempts(), 1);
}

/// R12, R4: the aborting attempt's failure is de-duplicated like any other: the same error
/// as the round's last failure is not emitted again, and close finishes at once.
#[test]
fn r12_the_aborting_attempts_failure_is_de_duplicated() {
    let mut h = H::constant(0.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Err("refused"));
    h.handled(); // FailedToConnect(refused)
    h.address(Ok("a")); // the next attempt, same address: no ObtainedAddress
    let attempt = h.connecting();
    h.feed(Input::Abort { error: "give up" });
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Err("refused"),
    });
    assert_eq!(effects, vec![Effect::CloseFinished]);
    // A different failure would have been reported.
    let mut h = H::constant(0.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    h.connect_result(Err("refused"));
    h.handled();
    h.address(Ok("a"));
    let attempt = h.connecting();
    h.feed(Input::Abort { error: "give up" });
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Err("timed out"),
    });
    assert_eq!(events(&effects), vec![Event::FailedToConnect("timed out")]);
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
}

/// R12, R8: a `close()` while the aborting attempt's failure is being handled waits for
/// that handler, as for any handler.
#[test]
fn r12_close_while_the_aborting_failure_is_handled_waits_for_its_handler() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    h.feed(Input::Abort { error: "stop" });
    h.feed(Input::ConnectResult {
        attempt,
        result: Err("refused"),
    });
    assert!(h.feed(Input::CloseRequested).is_empty());
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
}

/// R12 with a context kept from an earlier attempt: an abort during the lookup lets the
/// lookup end; its failure is reported as an attempt's failure (R4).
#[test]
fn r12_a_lookup_failure_after_abort_is_reported() {
    let mut h = H::constant(1.0);
    h.handled();
    let attempt = h.lookup();
    h.feed(Input::Abort { error: "stop" });
    let effects = h.feed(Input::AddressResult {
        attempt,
        result: Err("no such host"),
    });
    assert_eq!(
        events(&effects),
        vec![Event::FailedToConnect("no such host")]
    );
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
}

/// Bug 9 of issue 10: `connect` calls `abort` and still returns a connection. Before the
/// fix, `CloseFinished` came first and the connection was closed after it (I6 broken).
#[test]
fn r12_abort_then_a_connection_closes_it_before_close_finishes() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    let effects = h.feed(Input::Abort { error: "stop" });
    assert!(
        !effects.contains(&Effect::CloseFinished),
        "close cannot finish while the aborting attempt may still return a connection: \
         {effects:?}"
    );
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Ok(9),
    });
    let conn = match effects.as_slice() {
        [
            Effect::CloseConnection {
                conn,
                connection: 9,
            },
        ] => *conn,
        other => panic!("expected only the stray connection's close, got {other:?}"),
    };
    assert!(events(&effects).is_empty(), "no Connected after abort");
    assert!(h.m.current_connection().is_none());
    assert_eq!(h.feed(Input::Closed { conn }), vec![Effect::CloseFinished]);
    assert!(h.m.is_close_finished());
}

#[test]
fn r12_abort_during_the_lookup_waits_for_it() {
    let mut h = H::constant(1.0);
    h.handled();
    let attempt = h.lookup();
    let effects = h.feed(Input::Abort { error: "stop" });
    assert!(h.m.is_closed());
    assert!(!effects.contains(&Effect::CloseFinished));
    let effects = h.feed(Input::AddressResult {
        attempt,
        result: Ok("a"),
    });
    assert_eq!(
        effects,
        vec![Effect::CloseFinished],
        "no connect after abort"
    );
}

/// Issue 28 item 9, R12 and §7: an abort through a connect context kept from an earlier
/// attempt, arriving while an `ObtainedAddress` handler runs. The original would connect to
/// that address after the handler and report what the connect gives; this library stops
/// when the handler returns, without connecting (the attempt under way did not call
/// `abort`, and nothing of it is in flight: stopping is prompt and loses nothing).
#[test]
fn r12_abort_while_the_obtained_address_handler_runs_stops_when_it_returns_without_connecting() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    assert_eq!(events(&h.last), vec![Event::ObtainedAddress("a")]);
    let effects = h.feed(Input::Abort { error: "stop" });
    assert_eq!(
        outcomes(&effects),
        vec![
            Err(AttemptError::Aborted("stop")),
            Err(AttemptError::Closed)
        ]
    );
    assert!(h.m.is_closed());
    assert!(
        !effects.contains(&Effect::CloseFinished),
        "the handler is still running (R8)"
    );
    let effects = h.handled();
    assert_eq!(effects, vec![Effect::CloseFinished], "no Connect, no event");
    assert_eq!(h.count(|e| matches!(e, Effect::Connect { .. })), 0);
    assert_eq!(
        h.m.consecutive_unsuccessful_attempts(),
        0,
        "no attempt failed: none is counted"
    );
}

#[test]
fn r12_close_after_abort_cancels_the_attempt_at_once() {
    let mut h = H::constant(1.0);
    h.handled();
    h.address(Ok("a"));
    h.handled();
    let attempt = h.connecting();
    h.feed(Input::Abort { error: "stop" });
    let effects = h.feed(Input::CloseRequested);
    assert_eq!(
        effects,
        vec![Effect::CancelAttempt { attempt }, Effect::CloseFinished]
    );
    // A late connection for it is still closed (R8).
    let effects = h.feed(Input::ConnectResult {
        attempt,
        result: Ok(3),
    });
    assert!(matches!(
        effects.as_slice(),
        [Effect::CloseConnection { connection: 3, .. }]
    ));
}

#[test]
fn r12_abort_while_connected_behaves_as_r11() {
    let mut h = H::constant(0.0);
    let conn = h.connect_fully("a", 1);
    let effects = h.feed(Input::Abort { error: "stop" });
    assert_eq!(outcomes(&effects), vec![Err(AttemptError::Aborted("stop"))]);
    assert!(!h.m.is_closed());
    h.feed(Input::Closed { conn });
    assert_eq!(h.handled(), vec![Effect::CloseFinished]);
}

#[test]
fn retry_deadline_query_is_the_latest_attempts_timer() {
    let mut h = H::constant(2.0);
    assert_eq!(h.m.retry_deadline(), None, "no attempt yet");
    h.handled_at(3.0);
    assert_eq!(h.m.retry_deadline(), Some(at(5.0)));
    h.address(Err("down"));
    h.handled();
    assert_eq!(h.m.poll_timeout(), Some(at(5.0)));
    assert_eq!(h.m.retry_deadline(), Some(at(5.0)));
}

/// R7, I9: releasing the idle machine's buffers (the shell does it while connected) does
/// not change a single delay: the generator comes back where it left off.
#[test]
fn r7_release_buffers_keeps_the_jitter_sequence() {
    fn delays(release: bool) -> Vec<Duration> {
        let mut m: persistent_connection_core::Machine<u8, u32, u8> =
            persistent_connection_core::Machine::new(Config {
                seed: 99,
                retry: RetryPolicy::constant(Duration::from_secs(1)),
            });
        let mut now = Instant::ZERO;
        let mut pending = std::collections::VecDeque::new();
        let mut out = Vec::new();
        let mut connects = 0u32;
        let mut to_close = None;
        let mut released = 0;
        for _ in 0..2000 {
            while let Some(e) = m.poll_effect() {
                match e {
                    Effect::Emit { id, .. } => pending.push_back(Input::EventHandled { event: id }),
                    Effect::StartTimer { delay, .. } => out.push(delay),
                    Effect::GetAddress { attempt } => pending.push_back(Input::AddressResult {
                        attempt,
                        result: Ok(1),
                    }),
                    Effect::Connect { attempt, .. } => {
                        connects += 1;
                        let result = if connects.is_multiple_of(3) {
                            Err(7)
                        } else {
                            Ok(connects)
                        };
                        pending.push_back(Input::ConnectResult { attempt, result });
                    }
                    Effect::BecameCurrent { conn, .. } => to_close = Some(conn),
                    _ => {}
                }
            }
            if let Some(input) = pending.pop_front() {
                m.handle(now, input);
            } else if m.state() == State::Connected
                && let Some(conn) = to_close.take()
            {
                // Idle and connected: where the shell releases the buffers.
                if release {
                    m.release_buffers();
                    released += 1;
                }
                m.handle(now, Input::Closed { conn });
            } else if let Some(input) = pending.pop_front() {
                m.handle(now, input);
            } else if let Some(deadline) = m.poll_timeout() {
                now = deadline;
                m.handle(now, Input::TimerFired);
            }
        }
        assert!(!release || released > 50, "{released}");
        out
    }
    let kept = delays(false);
    assert!(kept.len() >= 100, "{}", kept.len());
    assert_eq!(kept, delays(true));
}
