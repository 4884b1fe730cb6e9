//! I6: after every step the checker compares the machine's `lingering_connections()` with
//! the strays the trace shows still closing, and flags any difference.

use persistent_connection_core::{
    AttemptId, Config, ConnId, Input, Instant, Machine, RetryPolicy, State,
};
use persistent_connection_sim::checker::{Checker, CheckerSettings, Invariant, MachineView};
use std::time::Duration;

/// A machine whose `lingering_connections()` answer is replaced.
struct Lying<'a> {
    m: &'a Machine<u8, u8, u8>,
    lingering: &'a [ConnId],
}

impl MachineView for Lying<'_> {
    fn is_closed(&self) -> bool {
        self.m.is_closed()
    }
    fn is_close_finished(&self) -> bool {
        self.m.is_close_finished()
    }
    fn current_conn_id(&self) -> Option<ConnId> {
        self.m.current_conn_id()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.m.poll_timeout()
    }
    fn state(&self) -> State {
        self.m.state()
    }
    fn lingering_connections(&self) -> Option<&[ConnId]> {
        Some(self.lingering)
    }
}

#[test]
fn a_wrong_lingering_set_is_caught_and_the_right_one_passes() {
    let config = Config {
        seed: 1,
        retry: RetryPolicy::constant(Duration::from_secs(1)),
    };
    let settings = CheckerSettings::for_policy(&config.retry);
    let mut m: Machine<u8, u8, u8> = Machine::new(config);
    let mut checker = Checker::new(settings);
    let now = Instant::ZERO;
    while let Some(e) = m.poll_effect() {
        checker.on_effect(now, &e).unwrap();
    }
    checker.after_step(now, &m).unwrap();
    // Connections for attempts that were never made: strays, closed at once (R8, I6).
    for (i, c) in [7u8, 8, 9].into_iter().enumerate() {
        let input = Input::ConnectResult {
            attempt: AttemptId::from_raw(1000 + i as u64),
            result: Ok(c),
        };
        checker.on_input(now, &input).unwrap();
        m.handle(now, input);
        while let Some(e) = m.poll_effect() {
            checker.on_effect(now, &e).unwrap();
        }
        checker.after_step(now, &m).unwrap();
    }
    let truth = m.lingering_connections().to_vec();
    assert_eq!(truth.len(), 3);
    let honest = Lying {
        m: &m,
        lingering: &truth,
    };
    checker.after_step(now, &honest).unwrap();
    let mut reordered = truth.clone();
    reordered.reverse();
    let honest = Lying {
        m: &m,
        lingering: &reordered,
    };
    checker
        .after_step(now, &honest)
        .expect("order does not matter");
    let wrong_sets = [
        vec![truth[0], truth[1]],
        vec![truth[0], truth[1], ConnId::from_raw(99)],
        vec![truth[0], truth[1], truth[1]],
        vec![truth[0], truth[1], truth[2], ConnId::from_raw(1 << 40)],
    ];
    for wrong in wrong_sets {
        let liar = Lying {
            m: &m,
            lingering: &wrong,
        };
        let v = checker
            .after_step(now, &liar)
            .expect_err("a wrong set is flagged");
        assert_eq!(v.invariant, Invariant::I6, "{v}");
    }
}
