// Shared by `step.rs` and `alloc.rs`: a machine driven through a realistic mix of inputs.
//
// The world's answers (lookup fails 8 % of the time, connect fails 31 %, three addresses in
// rotation, every connection dropped as soon as its `Connected` is handled) come from a
// table of bytes generated up front, so the measured loop does nothing but feed the
// machine and react to its effects: no allocation, no randomness, no clock.

use std::collections::VecDeque;
use std::time::Duration;

use persistent_connection_core::{
    Config, Effect, HandoverReason, Input, Instant, Machine, RetryNowReason, RetryPolicy,
};

/// Address: a port. Connection: a number. Error: a code. All `Copy`, so the clones the
/// machine makes of them cost nothing and allocate nothing.
pub type M = Machine<u16, u32, u8>;

/// How many answers the world has before it repeats.
const SCRIPT_LEN: usize = 4096;

/// A machine and a scripted world around it.
pub struct Driver {
    m: M,
    now: Instant,
    pending: VecDeque<Input<u16, u32, u8>>,
    script: Vec<u8>,
    pos: usize,
    next_conn: u32,
    /// Replace every other connection by a handover (R15) instead of dropping it, and end
    /// some waits by retry now (R16).
    handovers: bool,
    turn: u64,
    /// Inputs fed so far.
    pub inputs: u64,
}

impl Driver {
    /// A machine with a 1 s jittered retry delay, and the world's answers for `seed`.
    pub fn new(seed: u64) -> Driver {
        let mut x = seed | 1;
        let script = (0..SCRIPT_LEN)
            .map(|_| {
                // xorshift64*: plenty for a table of answers.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        let m = M::new(Config {
            seed,
            retry: RetryPolicy::constant(Duration::from_secs(1)),
        });
        let mut d = Driver {
            m,
            now: Instant::ZERO,
            pending: VecDeque::with_capacity(16),
            script,
            pos: 0,
            next_conn: 0,
            handovers: false,
            turn: 0,
            inputs: 0,
        };
        d.drain();
        d
    }

    /// The same world, but every other connection is replaced by a handover (R15) with a
    /// 2 ms grace instead of being dropped, and every third wait is ended by retry now (R16).
    #[allow(dead_code)] // used by one of the two bench targets that include this file
    pub fn with_handovers(seed: u64) -> Driver {
        let mut d = Driver::new(seed);
        d.handovers = true;
        d
    }

    fn answer(&mut self) -> u8 {
        let r = self.script[self.pos];
        self.pos = (self.pos + 1) % SCRIPT_LEN;
        r
    }

    /// Turns the machine's effects into the world's next inputs.
    fn drain(&mut self) {
        while let Some(effect) = self.m.poll_effect() {
            match effect {
                Effect::Emit { id, .. } => {
                    self.pending.push_back(Input::EventHandled { event: id })
                }
                Effect::GetAddress { attempt } => {
                    let r = self.answer();
                    let result = if r < 20 {
                        Err(1)
                    } else {
                        Ok(8000 + u16::from(r % 3))
                    };
                    self.pending
                        .push_back(Input::AddressResult { attempt, result });
                }
                Effect::Connect { attempt, .. } => {
                    let r = self.answer();
                    let result = if r < 80 {
                        Err(2 + r % 2)
                    } else {
                        self.next_conn = self.next_conn.wrapping_add(1);
                        Ok(self.next_conn)
                    };
                    self.pending
                        .push_back(Input::ConnectResult { attempt, result });
                }
                Effect::CloseConnection { conn, .. } => {
                    self.pending.push_back(Input::Closed { conn })
                }
                _ => {}
            }
        }
    }

    /// Feeds one input (the world's next answer, a timer fire, or a drop of the current
    /// connection) and drains the effects it caused.
    #[inline]
    pub fn step(&mut self) {
        self.now = self.now.saturating_add(Duration::from_millis(1));
        self.turn += 1;
        let input = if let Some(input) = self.pending.pop_front() {
            input
        } else if self.handovers
            && self.turn.is_multiple_of(3)
            && self.m.retired_connections().next().is_none()
            && self.m.poll_timeout().is_some()
        {
            Input::RetryNow {
                reason: RetryNowReason::NewCopy,
            }
        } else if self.handovers
            && self.turn.is_multiple_of(2)
            && self.m.poll_timeout().is_none()
            && self.m.current_conn_id().is_some()
            && self.m.handover().is_none()
        {
            Input::Handover {
                reason: HandoverReason::MaxAge,
                grace: Duration::from_millis(2),
            }
        } else if let Some(deadline) = self.m.poll_timeout() {
            self.now = self.now.max(deadline);
            Input::TimerFired
        } else if let Some(conn) = self.m.current_conn_id() {
            Input::Closed { conn }
        } else {
            // Not reached by this world; keeps the loop total.
            Input::TimerFired
        };
        self.m.handle(self.now, input);
        self.inputs += 1;
        self.drain();
    }

    /// Connections the world has handed out so far.
    #[allow(dead_code)] // used by one of the two bench targets that include this file
    pub fn connections(&self) -> u32 {
        self.next_conn
    }

    /// Handovers that succeeded so far.
    #[allow(dead_code)] // used by one of the two bench targets that include this file
    pub fn handovers(&self) -> u32 {
        self.m.counters().handovers
    }

    /// The machine, for checks.
    #[allow(dead_code)] // used by one of the two bench targets that include this file
    pub fn machine(&self) -> &M {
        &self.m
    }
}
