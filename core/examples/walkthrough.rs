//! Drives the core machine by hand through a scripted history and prints every effect with
//! its virtual time: a failed lookup, a failover to a second address, a drop, and a close.
//!
//! `cargo run -p persistent-connection-core --example walkthrough`

use std::time::Duration;

use persistent_connection_core::{Config, Effect, Input, Instant, Machine, RetryPolicy};

fn main() {
    let mut m: Machine<&str, u32, &str> = Machine::new(Config {
        seed: 42,
        retry: RetryPolicy::constant(Duration::from_secs(1)),
    });
    let mut now = Instant::ZERO;
    // The catalog answers, attempt by attempt: an error, server A (refuses), server B (accepts).
    let mut lookups = [Err("catalog unavailable"), Ok("a:1"), Ok("b:2"), Ok("b:2")].into_iter();
    let mut queue: Vec<Input<&str, u32, &str>> = Vec::new();
    let mut dropped = false;
    let mut closing = false;
    for _ in 0..100 {
        while let Some(effect) = m.poll_effect() {
            println!("{:>9.3}s  {effect:?}", now.since_origin().as_secs_f64());
            match effect {
                Effect::Emit { id, .. } => queue.push(Input::EventHandled { event: id }),
                Effect::GetAddress { attempt } => {
                    let result = lookups.next().unwrap_or(Ok("b:2"));
                    queue.push(Input::AddressResult { attempt, result });
                }
                Effect::Connect {
                    attempt, address, ..
                } => {
                    let result = if address == "a:1" {
                        Err("connection refused")
                    } else {
                        Ok(attempt.raw() as u32)
                    };
                    queue.push(Input::ConnectResult { attempt, result });
                }
                Effect::CloseConnection { conn, .. } => queue.push(Input::Closed { conn }),
                _ => {}
            }
        }
        if let Some(input) = queue.pop() {
            now = now + Duration::from_millis(5);
            m.handle(now, input);
        } else if let Some(deadline) = m.poll_timeout() {
            now = deadline;
            m.handle(now, Input::TimerFired);
        } else if let (Some(conn), false) = (m.current_conn_id(), dropped) {
            // The server drops the connection after a minute.
            dropped = true;
            now = now + Duration::from_secs(60);
            println!(
                "{:>9.3}s  -- server drops the connection --",
                now.since_origin().as_secs_f64()
            );
            m.handle(now, Input::Closed { conn });
        } else if !closing {
            closing = true;
            now = now + Duration::from_secs(5);
            println!(
                "{:>9.3}s  -- user calls close() --",
                now.since_origin().as_secs_f64()
            );
            m.handle(now, Input::CloseRequested);
        } else {
            break;
        }
    }
    assert!(m.is_close_finished(), "the walkthrough ends closed");
}
