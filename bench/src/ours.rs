//! This project's client: a [`PersistentConnection`] over [`EchoConn`], with the catalog
//! looked up by `get_address` before every attempt and the base delay given as
//! `retry_delay` (default jitter ±30 %, R7). No `on_event` handler (the default).

use std::time::{Duration, Instant};

use persistent_connection::catalog::{Catalog as _, Pick};
use persistent_connection::tower::PersistentService;
use persistent_connection::{IoError, PersistentConnection};
use tower::{Service, ServiceExt};

use crate::client::{Mode, Setup, stopped};
use crate::common::EchoConn;

/// The persistent connection the scenarios use.
pub type Pc = PersistentConnection<std::net::SocketAddr, EchoConn, IoError>;

/// Builds one on the current runtime, with `event_capacity` if given (the `events()`
/// broadcast buffer; the default otherwise).
pub fn build_with(setup: &Setup, event_capacity: Option<usize>) -> Pc {
    let connect = |addr, _cx| async move { EchoConn::connect(addr).await.map_err(IoError::from) };
    // The two `get_address` closures have different types, hence the macro.
    macro_rules! build {
        ($get_address:expr) => {{
            let builder = PersistentConnection::builder("bench", $get_address, connect)
                .retry_policy(setup.delay)
                .seed(setup.seed);
            match event_capacity {
                Some(n) => builder.event_capacity(n).build(),
                None => builder.build(),
            }
        }};
    }
    if setup.picker {
        build!(
            setup
                .catalog
                .clone()
                .get_address::<IoError>(Pick::Random { seed: setup.seed })
        )
    } else {
        let catalog = setup.catalog.clone();
        build!(move || {
            let r = catalog.lookup().map_err(IoError::from);
            async move { r }
        })
    }
}

/// Runs one persistent connection until `stop`, then closes it.
pub async fn run(setup: Setup, mode: Mode) {
    run_with(setup, mode, None).await;
}

/// [`run`] with an explicit `event_capacity`.
pub async fn run_with(mut setup: Setup, mode: Mode, event_capacity: Option<usize>) {
    let pc = build_with(&setup, event_capacity);
    match mode {
        Mode::Idle => stopped(&mut setup.stop).await,
        Mode::Requests {
            every,
            timeout,
            sink,
        } => {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut resend = false;
            loop {
                // A request that failed (its reply lost to a reset) is resent at once.
                if !resend {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped(&mut setup.stop) => break,
                    }
                }
                // Waits while disconnected; at once when connected (R9).
                let conn = tokio::select! {
                    c = pc.connected() => c,
                    _ = stopped(&mut setup.stop) => break,
                };
                seq += 1;
                match conn.request(seq, timeout).await {
                    Ok(server) => {
                        resend = false;
                        let _ = sink.send((Instant::now(), server));
                    }
                    Err(_) => resend = true,
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), pc.close()).await;
}

/// The same persistent connection behind its `tower::Service` adapter, driven the way a
/// tower user drives `Reconnect` (`ready().await`, then `call`): a request that fails is
/// resent at once, and `poll_ready` waits while disconnected.
pub async fn run_tower(mut setup: Setup, mode: Mode) {
    let pc = build_with(&setup, None);
    match mode {
        Mode::Idle => stopped(&mut setup.stop).await,
        Mode::Requests {
            every,
            timeout,
            sink,
        } => {
            let mut svc =
                PersistentService::new(pc.clone(), move |conn: EchoConn, seq: u64| async move {
                    conn.request(seq, timeout).await
                });
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut resend = false;
            loop {
                if !resend {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped(&mut setup.stop) => break,
                    }
                }
                seq += 1;
                let call = async {
                    match svc.ready().await {
                        Ok(s) => s.call(seq).await,
                        Err(e) => Err(e),
                    }
                };
                let result = tokio::select! {
                    r = call => r,
                    _ = stopped(&mut setup.stop) => break,
                };
                resend = result.is_err();
                if let Ok(server) = result {
                    let _ = sink.send((Instant::now(), server));
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), pc.close()).await;
}
