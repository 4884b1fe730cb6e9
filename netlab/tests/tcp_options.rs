//! `TcpConnection`'s socket options against real network failures (issue 19).

use std::io;
use std::time::{Duration, Instant};

use persistent_connection::TcpConnection;
use persistent_connection::conn::TcpOptions;
use persistent_connection_netlab::Lab;

/// The user timeout also bounds the connect itself: its options are on the socket before
/// the SYN goes out, so a connect to a host that vanished fails after the user timeout
/// instead of the kernel's SYN retries (~2 min with `tcp_syn_retries = 6`), even without
/// a connect timeout around it.
#[test]
fn the_user_timeout_bounds_a_connect_to_a_vanished_host() {
    let lab = Lab::new();
    let client = lab.host("client");
    let gone = lab.host("gone");
    lab.isolate(&gone);
    let rt = client.runtime();
    let addr = gone.addr(7000);
    let started = Instant::now();
    let result = rt.block_on(async move {
        let options = TcpOptions::new().user_timeout(Duration::from_secs(1));
        tokio::time::timeout(
            Duration::from_secs(8),
            TcpConnection::connect_with(addr, &options),
        )
        .await
    });
    let took = started.elapsed();
    let err = result
        .expect("the connect was still hanging after 8 s")
        .expect_err("connected to a vanished host");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    // The SYN retransmissions are 1 s, 3 s, … after the first: the timeout is checked at
    // the first one past 1 s.
    assert!(took < Duration::from_secs(4), "took {took:?}");
}
