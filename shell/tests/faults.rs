//! Faults and bad input on real sockets (issue 7): the persistent connection against
//! servers that die, reset, hang or refuse, and user callbacks that panic or dawdle.
//! Every test checks the rules of docs/behaviour.md (R1–R14) and, afterwards (see `common::leaks::run`),
//! that nothing leaked: the process has the file descriptors it had before, no task is
//! alive on the test's runtime, and (through the instrumented connection's ledger) every
//! connection the library obtained was released exactly once and never just dropped.
//!
//! Tests on real sockets run on the real clock and wait for conditions (events, counters)
//! under hang guards, never for time. Tests without sockets run on Tokio's paused clock,
//! where times are virtual and exact.
//!
//! Linux only: the leak checks read `/proc/self/fd`, and the full-accept-queue server relies
//! on Linux dropping SYNs to a listener whose queue is full.
#![cfg(target_os = "linux")]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::child::{ChildServer, Mode, child_main};
use common::conn::{Catalog, Conn, Connector, Counter, Fail, Handshake, Lookup};
use common::events::{Pc, Recorder, builder, describe};
use common::leaks::{Clock, open_fds, run, settle};
use common::servers::{Behaviour, FullBacklog, ThreadServer, refused_addr};
use persistent_connection::core::Jitter;
use persistent_connection::{AttemptError, Callback, Error, Event, PersistentConnection};
use tokio::sync::Notify;

/// Not a test: the body of the child server process (see `common::child`). Returns at once
/// in an ordinary run.
#[test]
fn child_server_entry() {
    child_main();
}

/// Hang guard on every wait (never a way to let time pass).
const GUARD: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Await `fut`, failing the test if the hang guard passes first.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(t) => t,
        Err(_) => panic!("hang guard ({GUARD:?}) passed: {what}"),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---- the support itself: if these fail, the fault tests below mean nothing ----

#[test]
fn support_child_server_can_be_killed_and_restarted_on_its_port() {
    run(Clock::Real, || async {
        let connector = Connector::new(Handshake::Hello, GUARD);
        let mut server = ChildServer::start(Mode::Greet);
        let addr = server.addr();
        let conn = connector.connect(addr).await.expect("greeted");
        server.kill9();
        // The kernel closes the dead server's socket: our watcher sees it.
        tokio::time::timeout(GUARD, conn.close_finished())
            .await
            .expect("peer close seen");
        assert!(conn.is_closed());
        assert_eq!(
            connector.connect(addr).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionRefused)
        );
        server.restart(Mode::Greet);
        assert_eq!(server.addr(), addr);
        let again = connector
            .connect(addr)
            .await
            .expect("greeted after restart");
        again.close().await;
        server.kill9();
        server.restart(Mode::Reject);
        assert_eq!(
            connector.connect(addr).await.unwrap_err(),
            Fail::Rejected("NO".into())
        );
        drop(server);
        drop((conn, again));
        let records = connector.ledger.records();
        assert_eq!(records.len(), 2);
        assert!(records[0].peer_closed && records[0].close_calls == 0);
        assert!(!records[1].peer_closed && records[1].close_calls == 1);
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn support_leak_checks_can_fail() {
    // A leaked descriptor, a task left running and a connection dropped while open are
    // each caught.
    // (On the paused clock, so that the checks' hang guards pass in virtual time.)
    let leaked_fd = std::panic::catch_unwind(|| {
        run(Clock::Paused, || async {
            std::mem::forget(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        })
    });
    let message = panic_text(leaked_fd.expect_err("a leaked socket must fail the test"));
    assert!(message.contains("descriptors leaked"), "{message}");

    let leaked_task = std::panic::catch_unwind(|| {
        run(Clock::Paused, || async {
            tokio::spawn(std::future::pending::<()>());
        })
    });
    let message = panic_text(leaked_task.expect_err("a live task must fail the test"));
    assert!(message.contains("tasks left alive"), "{message}");

    let dropped = std::panic::catch_unwind(|| {
        run(Clock::Paused, || async {
            let ledger = common::conn::Ledger::new();
            drop(Conn::socketless(&ledger));
            ledger
                .wait_until("released", GUARD, |r| r[0].released == 1)
                .await;
            ledger.assert_all_closed_exactly_once();
        })
    });
    let message = panic_text(dropped.expect_err("a connection dropped open must fail"));
    assert!(message.contains("dropped while open"), "{message}");
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn support_misbehaving_servers_behave_as_advertised() {
    run(Clock::Real, || async {
        let connector = Connector::new(Handshake::Hello, Duration::from_millis(300));
        let closer = ThreadServer::start(Behaviour::AcceptAndClose);
        assert_eq!(
            connector.connect(closer.addr()).await.unwrap_err(),
            Fail::Eof
        );
        let resetter = ThreadServer::start(Behaviour::Reset);
        assert_eq!(
            connector.connect(resetter.addr()).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionReset)
        );
        let full = FullBacklog::start();
        assert!(full.fillers() >= 1);
        assert_eq!(
            connector.connect(full.addr()).await.unwrap_err(),
            Fail::Timeout
        );
        assert_eq!(
            connector.connect(refused_addr()).await.unwrap_err(),
            Fail::Io(std::io::ErrorKind::ConnectionRefused)
        );
        // Without a handshake, the accept-and-close server's connections succeed and then
        // die at once.
        let plain = Connector::new(Handshake::None, GUARD);
        let conn = plain.connect(closer.addr()).await.expect("tcp connect");
        tokio::time::timeout(GUARD, conn.close_finished())
            .await
            .expect("peer close seen");
        drop(conn);
        assert!(plain.ledger.records()[0].peer_closed);
        drop((closer, resetter, full));
        plain.ledger.assert_all_closed_exactly_once();
        assert_eq!(connector.ledger.made(), 0);
    });
}

// ---- the server process dies ----

#[test]
fn server_killed_while_connected_disconnects_then_reconnects_after_restart() {
    run(Clock::Real, || async {
        let mut server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(20)).non_random())
            .on_event(rec.handler())
            .build();
        let c0 = within("first connection", pc.connected()).await;
        rec.wait_count("Connected(#0)", 1, GUARD).await;

        server.kill9();
        // R6: the kernel closes the dead server's end; the connection notices, stops being
        // current, and `Disconnected` follows.
        rec.wait_count("Disconnected", 1, GUARD).await;
        assert!(c0.is_closed());
        // A new round (R6 → R1) finds nobody listening: the failure is reported once.
        rec.wait_count("FailedToConnect(Io(ConnectionRefused))", 1, GUARD)
            .await;
        assert!(pc.current_connection().is_none());

        server.restart(Mode::Greet);
        let c1 = within("reconnection after restart", pc.connected()).await;
        assert_ne!(c1, c0);
        within("close", pc.close()).await;

        rec.assert_grammar();
        let events = rec.events();
        assert_eq!(
            events[..6],
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "Connected(#0)",
                "Disconnected",
                "AttemptingToConnect",
                "ObtainedAddress",
            ])
        );
        // R8: the connection current at close is closed and `Disconnected` is emitted.
        assert_eq!(
            events[events.len() - 2..],
            strs(&["Connected(#1)", "Disconnected"])
        );
        let records = connector.ledger.records();
        assert_eq!(records.len(), 2);
        assert!(records[0].peer_closed && records[0].close_calls == 0);
        assert!(!records[1].peer_closed && records[1].close_calls == 1);
        drop((server, c0, c1, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn server_killed_while_connecting_is_a_failed_attempt_then_restart_connects() {
    run(Clock::Real, || async {
        // The server accepts but never greets: `connect` waits in its handshake.
        let mut server = ChildServer::start(Mode::Silent);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(20)).non_random())
            .on_event(rec.handler())
            .build();
        // R10: the waiter registered now gets the outcome of the attempt in flight.
        let outcome = pc.connected_or_failed_to_connect();
        connector
            .handshaking
            .wait_at_least(1, GUARD, "handshakes")
            .await;

        server.kill9();
        let outcome = within("attempt outcome", outcome).await.map(|c| c.id());
        // The server's end is closed by the kernel: end of file if it had accepted, reset
        // if the connection was still in its accept queue.
        let eof = Err(AttemptError::Failed(Error::User(Fail::Eof)));
        let reset = Err(AttemptError::Failed(Error::User(Fail::Io(
            std::io::ErrorKind::ConnectionReset,
        ))));
        assert!(outcome == eof || outcome == reset, "{outcome:?}");
        let failed = rec.wait_prefix("FailedToConnect(", GUARD).await;
        assert!(
            failed == "FailedToConnect(Eof)" || failed == "FailedToConnect(Io(ConnectionReset))",
            "{failed}"
        );

        server.restart(Mode::Greet);
        within("connection after restart", pc.connected()).await;
        within("close", pc.close()).await;
        rec.assert_grammar();
        // No connection came out of the killed handshake.
        assert_eq!(connector.ledger.made(), 1);
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn server_killed_and_restarted_while_the_client_backs_off() {
    run(Clock::Real, || async {
        // The server refuses at the application level: every attempt fails.
        let mut server = ChildServer::start(Mode::Reject);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(150)).non_random())
            .on_event(rec.handler())
            .build();
        rec.wait_count("FailedToConnect(Rejected(\"NO\"))", 1, GUARD)
            .await;
        // Now the client waits for the retry timer (R4). Kill and restart meanwhile.
        server.kill9();
        server.restart(Mode::Greet);
        within("connection after the backoff", pc.connected()).await;
        within("close", pc.close()).await;
        rec.assert_grammar();
        let events = rec.events();
        // One round: the rejection, maybe a refusal while the server was down, then success.
        assert_eq!(
            events[..3],
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(Rejected(\"NO\"))"
            ])
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| *e == "AttemptingToConnect")
                .count(),
            1
        );
        assert_eq!(
            events[events.len() - 2..],
            strs(&["Connected(#0)", "Disconnected"])
        );
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

// ---- misbehaving servers ----

#[test]
fn server_that_accepts_and_closes_fails_each_attempt_and_the_failure_is_reported_once() {
    run(Clock::Real, || async {
        let server = ThreadServer::start(Behaviour::AcceptAndClose);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(2)).non_random())
            .on_event(rec.handler())
            .build();
        let outcome = within("outcome", pc.connected_or_failed_to_connect()).await;
        assert_eq!(
            outcome.map(|c| c.id()),
            Err(AttemptError::Failed(Error::User(Fail::Eof)))
        );
        catalog.wait_lookups(8, GUARD).await;
        // R10 is not de-duplicated: a later attempt reports the same failure again.
        let again = within("outcome", pc.connected_or_failed_to_connect()).await;
        assert_eq!(
            again.map(|c| c.id()),
            Err(AttemptError::Failed(Error::User(Fail::Eof)))
        );
        within("close", pc.close()).await;
        // R4 / I2: eight and more attempts, one round, one report of the same failure.
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(Eof)"
            ])
        );
        assert!(server.accepted() >= 7, "accepted {}", server.accepted());
        assert_eq!(connector.ledger.made(), 0);
        drop((server, pc));
    });
}

#[test]
fn server_that_resets_fails_with_connection_reset_or_disconnects_at_once() {
    run(Clock::Real, || async {
        let server = ThreadServer::start(Behaviour::Reset);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));

        // With a greeting to wait for, the reset fails the attempt.
        let greeting = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &greeting)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(2)).non_random())
            .on_event(rec.handler())
            .build();
        catalog.wait_lookups(6, GUARD).await;
        within("close", pc.close()).await;
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(Io(ConnectionReset))"
            ])
        );
        assert_eq!(greeting.ledger.made(), 0);

        // With a bare TCP connect, each connection is made, then reset by the peer: it
        // becomes current, dies, and the loop goes round again (R5, R6, R1).
        let plain = Connector::new(Handshake::None, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &plain)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(2)).non_random())
            .on_event(rec.handler())
            .build();
        rec.wait_count("Disconnected", 3, GUARD).await;
        within("close", pc.close()).await;
        rec.assert_grammar();
        let records = plain.ledger.records();
        assert!(records.len() >= 3);
        // The reset ones were noticed by the connection itself; the library did not close
        // them again. Only the last may have been closed by `close()`.
        for r in &records[..3] {
            assert!(r.peer_closed && r.close_calls == 0, "{records:?}");
        }
        drop((server, pc));
        plain.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn peer_closing_during_the_connected_handler_is_reported_after_it() {
    run(Clock::Real, || async {
        // Each connection is closed by the server as soon as it is accepted.
        let server = ThreadServer::start(Behaviour::AcceptAndClose);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::None, GUARD);
        let rec = Recorder::new();
        let handler_rec = rec.clone();
        let pc = builder(&catalog, &connector)
            // Long: after `Disconnected` the next round waits for it (R6).
            .retry_policy(
                persistent_connection::RetryPolicy::constant(Duration::from_secs(3600))
                    .non_random(),
            )
            .on_event(move |ev| {
                let rec = handler_rec.clone();
                async move {
                    rec.push(describe(&ev));
                    if let Event::Connected(c) = ev {
                        // The peer goes away while this handler runs.
                        within("peer close during the handler", c.close_finished()).await;
                        rec.push(format!("~#{} died during its Connected handler", c.id()));
                    }
                }
            })
            .build();
        rec.wait_count("Disconnected", 1, GUARD).await;
        assert!(pc.current_connection().is_none());
        // Waiting for the retry timer now (R6): close is prompt all the same.
        within("close", pc.close()).await;
        // R6: `Disconnected` only after the `Connected` handler has finished.
        assert_eq!(
            rec.log(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "Connected(#0)",
                "~#0 died during its Connected handler",
                "Disconnected",
            ])
        );
        let records = connector.ledger.records();
        assert_eq!(records.len(), 1);
        assert!(records[0].peer_closed && records[0].close_calls == 0);
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn full_accept_queue_makes_connect_hang_until_the_connect_timeout_and_close_cancels_it() {
    run(Clock::Real, || async {
        let full = FullBacklog::start();
        let catalog = Catalog::new(Lookup::Addr(full.addr()));
        // The connect function itself would wait a long time.
        let connector = Connector::new(Handshake::None, Duration::from_secs(3600));

        // With the shell's connect timeout, a hung connect is a failed attempt.
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(10)).non_random())
            .connect_timeout(ms(100))
            .on_event(rec.handler())
            .build();
        let outcome = within("outcome", pc.connected_or_failed_to_connect()).await;
        assert_eq!(
            outcome.map(|c| c.id()),
            Err(AttemptError::Failed(Error::TimedOut(ms(100))))
        );
        // R8: close while the next connect hangs: cancelled, prompt.
        connector.started.wait_at_least(2, GUARD, "connects").await;
        within("close during a hung connect", pc.close()).await;
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(TimedOut(100ms))"
            ])
        );

        // Without a connect timeout, the attempt hangs until close cancels it (R8).
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .on_event(rec.handler())
            .build();
        let started = connector.started.get();
        connector
            .started
            .wait_at_least(started + 1, GUARD, "connects")
            .await;
        let outcome = pc.connected_or_failed_to_connect();
        within("close during a hung connect", pc.close()).await;
        assert_eq!(
            within("outcome", outcome).await.map(|c| c.id()),
            Err(AttemptError::Closed)
        );
        assert_eq!(
            rec.events(),
            strs(&["AttemptingToConnect", "ObtainedAddress"])
        );
        assert_eq!(connector.ledger.made(), 0);
        drop((full, pc));
    });
}

// ---- the catalog misbehaves (no sockets: paused clock) ----

#[test]
fn catalog_lookup_that_hangs_is_cancelled_by_close_at_once() {
    run(Clock::Paused, || async {
        let catalog = Catalog::new(Lookup::Hang);
        let connector = Connector::new(Handshake::None, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(10)).non_random())
            .on_event(rec.handler())
            .build();
        catalog.wait_lookups(1, GUARD).await;
        let outcome = pc.connected_or_failed_to_connect();
        let t0 = tokio::time::Instant::now();
        within("close during a hung lookup", pc.close()).await;
        // R8: the lookup is cancelled; close needs no (virtual) time at all.
        assert_eq!(tokio::time::Instant::now(), t0);
        assert!(pc.is_closed());
        assert_eq!(
            within("outcome", outcome).await.map(|c| c.id()),
            Err(AttemptError::Closed)
        );
        assert_eq!(rec.events(), strs(&["AttemptingToConnect"]));
        assert_eq!(catalog.lookups(), 1);
        drop(pc);
    });
}

#[test]
fn catalog_lookup_that_fails_is_retried_and_each_new_error_reported_once() {
    run(Clock::Paused, || async {
        let catalog = Catalog::new(Lookup::Fail("down".into()));
        let connector = Connector::new(Handshake::None, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(
                persistent_connection::RetryPolicy::constant(Duration::from_secs(1)).non_random(),
            )
            .on_event(rec.handler())
            .build();
        let t0 = tokio::time::Instant::now();
        catalog.wait_lookups(4, GUARD).await;
        // R2/R4: attempts one retry delay apart, exactly (virtual time, non-random).
        assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(3));
        catalog.set(Lookup::Fail("still down".into()));
        let outcome = within("outcome", pc.connected_or_failed_to_connect()).await;
        assert_eq!(
            outcome.map(|c| c.id()),
            Err(AttemptError::Failed(Error::User(Fail::Lookup(
                "still down".into()
            ))))
        );
        within("close", pc.close()).await;
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "FailedToConnect(Lookup(\"down\"))",
                "FailedToConnect(Lookup(\"still down\"))",
            ])
        );
        drop(pc);
    });
}

// ---- close at every phase, concurrently, twice; dropping every handle ----

#[test]
fn close_at_every_phase_is_prompt_and_final() {
    run(Clock::Real, || async {
        let greeter = ChildServer::start(Mode::Greet);
        let silent = ChildServer::start(Mode::Silent);
        let connector = Connector::new(Handshake::Hello, GUARD);

        // Before the driver task has even run.
        let rec = Recorder::new();
        let pc = builder(&Catalog::new(Lookup::Addr(greeter.addr())), &connector)
            .on_event(rec.handler())
            .build();
        within("close at once", pc.close()).await;
        assert!(pc.is_closed());
        assert!(rec.events().len() <= 1, "{:?}", rec.events());
        rec.assert_grammar();

        // While connecting (the handshake hangs).
        let rec = Recorder::new();
        let pc = builder(&Catalog::new(Lookup::Addr(silent.addr())), &connector)
            .on_event(rec.handler())
            .build();
        let started = connector.handshaking.get();
        connector
            .handshaking
            .wait_at_least(started + 1, GUARD, "handshakes")
            .await;
        within("close while connecting", pc.close()).await;
        assert_eq!(
            rec.events(),
            strs(&["AttemptingToConnect", "ObtainedAddress"])
        );

        // While an event handler runs: close waits for it (R8), and no attempt follows.
        let rec = Recorder::new();
        let gate = Arc::new(Notify::new());
        let (handler_rec, handler_gate) = (rec.clone(), gate.clone());
        let pc = builder(&Catalog::new(Lookup::Addr(greeter.addr())), &connector)
            .on_event(move |ev| {
                let (rec, gate) = (handler_rec.clone(), handler_gate.clone());
                async move {
                    rec.push(describe(&ev));
                    if matches!(ev, Event::ObtainedAddress(_)) {
                        gate.notified().await;
                        rec.push("~ObtainedAddress handler done");
                    }
                }
            })
            .build();
        rec.wait_count("ObtainedAddress", 1, GUARD).await;
        let mut closing = tokio_test::task::spawn(pc.close());
        assert!(pc.is_closed(), "is_closed from the first call (R8)");
        assert!(closing.poll().is_pending());
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(
            closing.poll().is_pending(),
            "close must wait for the running handler"
        );
        gate.notify_one();
        within("close after the handler", closing).await;
        assert_eq!(
            rec.log(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "~ObtainedAddress handler done"
            ])
        );

        // While waiting to retry, with an hour to wait.
        let closer = ThreadServer::start(Behaviour::AcceptAndClose);
        let rec = Recorder::new();
        let pc = builder(&Catalog::new(Lookup::Addr(closer.addr())), &connector)
            .retry_policy(
                persistent_connection::RetryPolicy::constant(Duration::from_secs(3600))
                    .non_random(),
            )
            .on_event(rec.handler())
            .build();
        rec.wait_count("FailedToConnect(Eof)", 1, GUARD).await;
        within("close while waiting to retry", pc.close()).await;
        assert_eq!(
            closer.accepted(),
            1,
            "one attempt, then the hour's wait (R4)"
        );
        drop(closer);

        // Connected: the connection is closed and `Disconnected` emitted (R8).
        let rec = Recorder::new();
        let pc = builder(&Catalog::new(Lookup::Addr(greeter.addr())), &connector)
            .on_event(rec.handler())
            .build();
        let c = within("connected", pc.connected()).await;
        within("close while connected", pc.close()).await;
        assert!(c.is_closed());
        assert_eq!(
            rec.events().last().map(String::as_str),
            Some("Disconnected")
        );
        let after = rec.events().len();

        // After close finished: twice more, at once; nothing is emitted any more.
        within("close again", pc.close()).await;
        within("close a third time", pc.close()).await;
        within("close_finished", pc.close_finished()).await;
        assert_eq!(
            within("outcome", pc.connected_or_failed_to_connect())
                .await
                .map(|c| c.id()),
            Err(AttemptError::Closed)
        );
        assert!(pc.current_connection().is_none());
        drop((greeter, silent, pc, c));
        // Let every driver task end, then check that nothing was emitted after close.
        assert!(settle(GUARD, || common::leaks::alive_tasks() == 0).await);
        assert_eq!(rec.events().len(), after);
        let records = connector.ledger.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].close_calls, 1);
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn close_from_many_tasks_at_once_closes_the_connection_once() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .on_event(rec.handler())
            .build();
        within("connected", pc.connected()).await;
        let closed = Counter::default();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (pc, closed) = (pc.clone(), closed.clone());
                tokio::spawn(async move {
                    pc.close().await;
                    assert!(pc.is_closed());
                    assert!(pc.current_connection().is_none());
                    closed.bump();
                })
            })
            .collect();
        within("close", pc.close()).await;
        within("close twice", pc.close()).await;
        for t in tasks {
            within("closing task", t)
                .await
                .expect("closing task panicked");
        }
        assert_eq!(closed.get(), 32);
        assert_eq!(rec.count("Disconnected"), 1);
        rec.assert_grammar();
        let records = connector.ledger.records();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].close_calls, 1, "closed once by the library");
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn dropping_every_handle_mid_connect_closes_in_the_background() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Silent);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .on_event(rec.handler())
            .build();
        let weak = pc.downgrade();
        connector
            .handshaking
            .wait_at_least(1, GUARD, "handshakes")
            .await;
        let fds_connecting = open_fds();
        drop(pc);
        // R14: the driver task ends by itself and the half-made connection's socket goes
        // with it.
        assert!(
            settle(GUARD, || common::leaks::alive_tasks() == 0).await,
            "the driver outlived its last handle"
        );
        assert!(settle(GUARD, || open_fds() < fds_connecting).await);
        assert!(weak.upgrade().is_none());
        assert_eq!(
            rec.events(),
            strs(&["AttemptingToConnect", "ObtainedAddress"])
        );
        assert_eq!(connector.ledger.made(), 0);
        drop(server);
    });
}

#[test]
fn dropping_every_handle_mid_handler_closes_the_connection_and_reports_it_after_the_handler() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let gate = Arc::new(Notify::new());
        let (handler_rec, handler_gate) = (rec.clone(), gate.clone());
        let pc = builder(&catalog, &connector)
            .on_event(move |ev| {
                let (rec, gate) = (handler_rec.clone(), handler_gate.clone());
                async move {
                    rec.push(describe(&ev));
                    if matches!(ev, Event::Connected(_)) {
                        gate.notified().await;
                        rec.push("~Connected handler done");
                    }
                }
            })
            .build();
        rec.wait_count("Connected(#0)", 1, GUARD).await;
        drop(pc);
        // R14 → R8: the current connection is closed at once, handler or not...
        connector
            .ledger
            .wait_until("the connection closed", GUARD, |r| r[0].released == 1)
            .await;
        // ...but `Disconnected` waits for the `Connected` handler (R6).
        assert_eq!(rec.count("Disconnected"), 0);
        gate.notify_one();
        rec.wait_count("Disconnected", 1, GUARD).await;
        assert_eq!(
            rec.log(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "Connected(#0)",
                "~Connected handler done",
                "Disconnected",
            ])
        );
        assert!(settle(GUARD, || common::leaks::alive_tasks() == 0).await);
        assert_eq!(connector.ledger.records()[0].close_calls, 1);
        drop(server);
        connector.ledger.assert_all_closed_exactly_once();
    });
}

// ---- bad input from the user's code ----

#[test]
fn get_address_that_panics_is_a_failed_attempt_and_the_loop_goes_on() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Panic);
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(5)).non_random())
            .on_event(rec.handler())
            .build();
        let outcome = within("outcome", pc.connected_or_failed_to_connect()).await;
        match outcome.map(|c| c.id()) {
            Err(AttemptError::Failed(Error::Panicked { callback, message })) => {
                assert_eq!(callback, Callback::GetAddress);
                assert!(message.contains("deliberately"), "{message}");
            }
            other => panic!("R13: expected a panicked attempt, got {other:?}"),
        }
        catalog.wait_lookups(4, GUARD).await;
        catalog.set(Lookup::Addr(server.addr()));
        within("connected", pc.connected()).await;
        within("close", pc.close()).await;
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "FailedToConnect(Panicked(get_address))",
                "ObtainedAddress",
                "Connected(#0)",
                "Disconnected",
            ])
        );
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn connect_that_panics_is_a_failed_attempt_and_the_loop_goes_on() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Greet);
        let addr = server.addr();
        let connector = Connector::new(Handshake::Hello, GUARD);
        let calls = Arc::new(AtomicUsize::new(0));
        let rec = Recorder::new();
        let (k, n) = (connector.clone(), calls.clone());
        let pc: Pc = PersistentConnection::builder(
            "panicky",
            move || async move { Ok::<SocketAddr, Fail>(addr) },
            move |addr: SocketAddr, _cx| {
                let (k, n) = (k.clone(), n.clone());
                async move {
                    if n.fetch_add(1, Ordering::SeqCst) < 3 {
                        panic!("connect panics (deliberately, R13)");
                    }
                    k.connect(addr).await
                }
            },
        )
        .retry_policy(persistent_connection::RetryPolicy::constant(ms(5)).non_random())
        .on_event(rec.handler())
        .build();
        let outcome = within("outcome", pc.connected_or_failed_to_connect()).await;
        match outcome.map(|c| c.id()) {
            Err(AttemptError::Failed(Error::Panicked { callback, message })) => {
                assert_eq!(callback, Callback::Connect);
                assert!(message.contains("deliberately"), "{message}");
            }
            other => panic!("R13: expected a panicked attempt, got {other:?}"),
        }
        within("connected", pc.connected()).await;
        within("close", pc.close()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(Panicked(connect))",
                "Connected(#0)",
                "Disconnected",
            ])
        );
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn on_event_that_panics_counts_as_handled() {
    run(Clock::Real, || async {
        let mut server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let handler_rec = rec.clone();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(5)).non_random())
            .on_event(move |ev| {
                let rec = handler_rec.clone();
                async move {
                    rec.push(describe(&ev));
                    panic!("on_event panics (deliberately, R13)");
                }
            })
            .build();
        within("connected", pc.connected()).await;
        // A whole cycle with panicking handlers: death, reconnection, close.
        server.kill9();
        rec.wait_count("Disconnected", 1, GUARD).await;
        server.restart(Mode::Greet);
        rec.wait_count("Connected(#1)", 1, GUARD).await;
        within("close", pc.close()).await;
        rec.assert_grammar();
        assert_eq!(
            rec.events().last().map(String::as_str),
            Some("Disconnected")
        );
        assert_eq!(rec.count("Disconnected"), 2);
        drop((server, pc));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn on_event_that_takes_an_hour_delays_close_by_exactly_that_much() {
    run(Clock::Paused, || async {
        let ledger = common::conn::Ledger::new();
        let rec = Recorder::new();
        let handler_rec = rec.clone();
        let l = ledger.clone();
        let pc: Pc = PersistentConnection::builder(
            "slow handler",
            || async { Ok::<SocketAddr, Fail>(SocketAddr::from(([127, 0, 0, 1], 9))) },
            move |_addr: SocketAddr, _cx| {
                let l = l.clone();
                async move { Ok(Conn::socketless(&l)) }
            },
        )
        .retry_policy(
            persistent_connection::RetryPolicy::constant(Duration::from_secs(10)).non_random(),
        )
        .on_event(move |ev| {
            let rec = handler_rec.clone();
            async move {
                rec.push(describe(&ev));
                if matches!(ev, Event::Connected(_)) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    rec.push("~Connected handler done");
                }
            }
        })
        .build();
        rec.wait_count("Connected(#0)", 1, GUARD).await;
        let t0 = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(7200), pc.close())
            .await
            .expect("close finishes once the handler does");
        // R8/R13: close waited for the handler, then finished at once (virtual time).
        assert_eq!(tokio::time::Instant::now() - t0, Duration::from_secs(3600));
        assert_eq!(
            rec.log(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "Connected(#0)",
                "~Connected handler done",
                "Disconnected",
            ])
        );
        drop(pc);
        ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn zero_retry_delay_lets_other_tasks_on_the_same_thread_progress() {
    run(Clock::Paused, || async {
        // Every attempt fails at once and the next one may begin at once (R7: zero is
        // allowed): the driver must still yield to the other tasks of its thread.
        let catalog = Catalog::new(Lookup::Fail("down".into()));
        let connector = Connector::new(Handshake::None, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(Duration::ZERO).non_random())
            .on_event(rec.handler())
            .build();
        let ticks = Counter::default();
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    ticks.bump();
                    tokio::task::yield_now().await;
                }
            })
        };
        let t0 = tokio::time::Instant::now();
        catalog.wait_lookups(2000, GUARD).await;
        ticks
            .wait_at_least(200, GUARD, "ticks of the other task")
            .await;
        within("ticker", ticker).await.expect("ticker");
        within("close", pc.close()).await;
        // Back-to-back attempts: no virtual time passed.
        assert_eq!(tokio::time::Instant::now(), t0);
        // Thousands of attempts, one round, one report (I2).
        assert_eq!(
            rec.events(),
            strs(&["AttemptingToConnect", "FailedToConnect(Lookup(\"down\"))"])
        );
        drop(pc);
    });
}

#[test]
fn retry_delay_of_duration_max_neither_panics_nor_delays_close() {
    run(Clock::Paused, || async {
        for (jitter, drop_instead) in [
            (Jitter::NonRandom, false),
            (Jitter::Percent(30), false),
            (Jitter::Percent(30), true),
        ] {
            let catalog = Catalog::new(Lookup::Fail("down".into()));
            let connector = Connector::new(Handshake::None, GUARD);
            let rec = Recorder::new();
            let pc = builder(&catalog, &connector)
                .retry_policy(
                    persistent_connection::RetryPolicy::from(Duration::MAX).with_jitter(jitter),
                )
                .on_event(rec.handler())
                .build();
            rec.wait_count("FailedToConnect(Lookup(\"down\"))", 1, GUARD)
                .await;
            // A year of virtual time: the retry timer has not fired (R4), nothing panicked.
            tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
            assert_eq!(catalog.lookups(), 1);
            let t0 = tokio::time::Instant::now();
            if drop_instead {
                // R14: dropping the last handle ends the driver, with no timer left behind.
                drop(pc);
                assert!(settle(GUARD, || common::leaks::alive_tasks() == 0).await);
            } else {
                within("close", pc.close()).await;
                assert_eq!(tokio::time::Instant::now(), t0, "close is immediate");
            }
            assert_eq!(
                rec.events(),
                strs(&["AttemptingToConnect", "FailedToConnect(Lookup(\"down\"))"])
            );
        }
    });
}

// ---- stopping for good on real sockets (R11, R12) ----

#[test]
fn close_when_current_connection_is_closed_stops_after_the_server_dies() {
    run(Clock::Real, || async {
        let mut server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(1)).non_random())
            .on_event(rec.handler())
            .build();
        let c = within("connected", pc.connected()).await;
        pc.close_when_current_connection_is_closed();
        // R11: the connection stays up...
        assert!(!c.is_closed());
        assert!(pc.current_connection().is_some());
        // ...until the server dies; then no new round, and close has finished by itself.
        server.kill9();
        within("close finished by itself", pc.close_finished()).await;
        assert!(pc.is_closed());
        assert_eq!(catalog.lookups(), 1);
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "Connected(#0)",
                "Disconnected"
            ])
        );
        within("close after that", pc.close()).await;
        drop((server, pc, c));
        connector.ledger.assert_all_closed_exactly_once();
    });
}

#[test]
fn abort_from_connect_after_repeated_rejections_stops_for_good() {
    run(Clock::Real, || async {
        let server = ChildServer::start(Mode::Reject);
        let addr = server.addr();
        let connector = Connector::new(Handshake::Hello, GUARD);
        let rec = Recorder::new();
        let k = connector.clone();
        // R10 waiters see the *next* outcome from the moment they are called, so each attempt
        // after the first waits until the test has registered its next waiter: otherwise a
        // slow test task on a loaded machine misses an outcome, as docs/behaviour.md allows.
        let registered = Arc::new(tokio::sync::Notify::new());
        let gate = registered.clone();
        let pc: Pc = PersistentConnection::builder(
            "abort",
            move || async move { Ok::<SocketAddr, Fail>(addr) },
            move |addr: SocketAddr, cx| {
                let k = k.clone();
                let gate = gate.clone();
                async move {
                    if cx.consecutive_unsuccessful_attempts() >= 1 {
                        gate.notified().await;
                    }
                    // R12: the context counts the failures; give up at the third attempt.
                    if cx.consecutive_unsuccessful_attempts() == 2 {
                        cx.abort(Fail::Other("gave up".into()));
                    }
                    k.connect(addr).await
                }
            },
        )
        .retry_policy(persistent_connection::RetryPolicy::constant(ms(2)).non_random())
        .on_event(rec.handler())
        .build();
        let mut outcomes = Vec::new();
        loop {
            let waiter = pc.connected_or_failed_to_connect(); // registers now
            if !outcomes.is_empty() {
                registered.notify_one();
            }
            match within("outcome", waiter).await {
                Err(AttemptError::Closed) => break,
                other => outcomes.push(other.map(|c| c.id())),
            }
            assert!(outcomes.len() <= 3, "{outcomes:?}");
        }
        let rejected = Err(AttemptError::Failed(Error::User(Fail::Rejected(
            "NO".into(),
        ))));
        assert_eq!(
            outcomes,
            [
                rejected.clone(),
                rejected,
                Err(AttemptError::Aborted(Error::User(Fail::Other(
                    "gave up".into()
                ))))
            ]
        );
        within("close finished by itself", pc.close_finished()).await;
        assert!(pc.is_closed());
        assert_eq!(connector.started.get(), 3);
        assert_eq!(
            rec.events(),
            strs(&[
                "AttemptingToConnect",
                "ObtainedAddress",
                "FailedToConnect(Rejected(\"NO\"))"
            ])
        );
        drop((server, pc));
        assert_eq!(connector.ledger.made(), 0);
    });
}

// ---- in parallel ----

#[test]
fn six_persistent_connections_on_two_threads_survive_kills_and_racing_closes() {
    run(Clock::MultiThread, || async {
        let mut server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let recs: Vec<Recorder> = (0..6).map(|_| Recorder::new()).collect();
        let pcs: Vec<Pc> = recs
            .iter()
            .map(|rec| {
                builder(&catalog, &connector)
                    .retry_policy(persistent_connection::RetryPolicy::constant(ms(5)).non_random())
                    .on_event(rec.handler())
                    .build()
            })
            .collect();
        for round in 0..3 {
            for pc in &pcs {
                within("connected", pc.connected()).await;
            }
            server.kill9();
            for rec in &recs {
                rec.wait_count("Disconnected", round + 1, GUARD).await;
            }
            server.restart(Mode::Greet);
        }
        for pc in &pcs {
            within("connected", pc.connected()).await;
        }
        // The server dies while four tasks per persistent connection close it: the
        // connection's close races its peer's.
        server.kill9();
        let closers: Vec<_> = pcs
            .iter()
            .flat_map(|pc| {
                (0..4).map(move |_| {
                    let pc = pc.clone();
                    tokio::spawn(async move { pc.close().await })
                })
            })
            .collect();
        for t in closers {
            within("closing task", t).await.expect("closing task");
        }
        for rec in &recs {
            rec.assert_grammar();
            // One `Disconnected` per connection (R6, R8): three kills and the last one,
            // whether the peer's close or ours got there first. (If the peer's did, a new
            // round may have begun before close cancelled it.)
            assert_eq!(rec.count("Disconnected"), 4, "{:?}", rec.events());
            let events = rec.events();
            assert_eq!(
                events
                    .iter()
                    .filter(|e| e.starts_with("Connected("))
                    .count(),
                4,
                "{events:?}"
            );
        }
        drop((server, pcs));
        let records = connector.ledger.records();
        assert_eq!(records.len(), 6 * 4);
        for r in &records {
            assert!(
                r.close_calls <= 1,
                "closed twice by the library: {records:?}"
            );
        }
        connector.ledger.assert_all_closed_exactly_once();
    });
}

// ---- nothing leaked over many cycles ----

#[test]
fn many_connect_close_cycles_leak_no_descriptor_task_or_connection() {
    run(Clock::Real, || async {
        let mut server = ChildServer::start(Mode::Greet);
        let catalog = Catalog::new(Lookup::Addr(server.addr()));
        let connector = Connector::new(Handshake::Hello, GUARD);
        let fds_at_start = open_fds();

        // Build, connect, close: 20 persistent connections one after another.
        for _ in 0..20 {
            let pc = builder(&catalog, &connector).build();
            within("connected", pc.connected()).await;
            within("close", pc.close()).await;
        }
        assert!(settle(GUARD, || common::leaks::alive_tasks() == 0).await);
        assert!(
            settle(GUARD, || open_fds() == fds_at_start).await,
            "descriptors: {} at start, {} now",
            fds_at_start,
            open_fds()
        );

        // One persistent connection whose connection is closed from our side 20 times,
        // then killed from the server's side 3 times: it reconnects every time (R6).
        let rec = Recorder::new();
        let pc = builder(&catalog, &connector)
            .retry_policy(persistent_connection::RetryPolicy::constant(ms(1)).non_random())
            .on_event(rec.handler())
            .build();
        for i in 0..20 {
            let c = within("connected", pc.connected()).await;
            c.close().await;
            rec.wait_count("Disconnected", i + 1, GUARD).await;
        }
        for i in 0..3 {
            within("connected", pc.connected()).await;
            server.kill9();
            rec.wait_count("Disconnected", 21 + i, GUARD).await;
            server.restart(Mode::Greet);
        }
        within("connected", pc.connected()).await;
        within("close", pc.close()).await;
        rec.assert_grammar();
        drop(pc);
        assert!(settle(GUARD, || common::leaks::alive_tasks() == 0).await);
        assert!(
            settle(GUARD, || open_fds() == fds_at_start).await,
            "descriptors: {} at start, {} now",
            fds_at_start,
            open_fds()
        );
        let records = connector.ledger.records();
        assert_eq!(records.len(), 20 + 24);
        // Ours were closed once, by us (the library did not close them again); the
        // killed ones by the peer; the rest once by the library.
        for r in &records[20..40] {
            assert_eq!(r.close_calls, 1, "{r:?}");
        }
        for r in &records[40..43] {
            assert!(r.peer_closed && r.close_calls == 0, "{r:?}");
        }
        drop(server);
        connector.ledger.assert_all_closed_exactly_once();
    });
}
