//! A real client kept alive: the `redis` crate's multiplexed connection as the connection
//! of a persistent connection, failing over between two real `redis-server` processes.
//!
//! ```text
//! cargo run -p persistent-connection --example redis_failover
//! cargo run -p persistent-connection --example redis_failover -- --tls
//! ```
//!
//! It needs `redis-server` on the `PATH` (Debian's `redis-server` package). It starts two
//! servers on free ports of 127.0.0.1, publishes the primary in a catalog, PINGs every
//! 20 ms through the persistent connection and runs the drill:
//!
//! 1. kill -9 the primary; the catalog names the other server at once;
//! 2. kill -9 the new primary; the catalog is updated 300 ms later;
//! 3. SIGSTOP the primary: it hangs without closing its sockets, so only the health check
//!    can tell; the catalog names the other server at once;
//!
//! restarting each dead server before the next fault. It prints every event and, for each
//! fault, the failover gap: from the fault to the first PING answered by the other server.
//! It ends by itself in about 5 seconds.
//!
//! With `--tls` the same drill runs over TLS: the servers listen on their TLS port only
//! with a certificate made at start for `localhost` by a certificate authority made at
//! start too, and the client connects with `persistent_connection::conn::tls::TlsConnection`,
//! which notices a server dying as `TcpConnection` does.
//!
//! The client, the servers and the drill are the test kit's
//! (`persistent_connection_testkit::redis`, `testkit/src/redis.rs`), so that the
//! integration tests (`tests/redis.rs`, `tests/tls.rs`) and the benchmark
//! (`bench/src/bin/redis_failover.rs`) run the same code. The client is what to copy:
//! `connect` there gives the `redis` crate's client a `TcpConnection` (keepalive, a
//! connect error naming the address), runs its driver in a task of its own with `Driven`
//! (the driver's end is the connection's close), adds a PING `HealthChecked` (100 ms
//! interval and timeout, closed after 2 failures) and keys failures by their text with
//! `Keyed` (a `RedisError`'s own `==` is false for any two I/O errors).

use persistent_connection_testkit::redis::{Settings, drill};

#[tokio::main]
async fn main() {
    let tls = std::env::args().skip(1).any(|a| a == "--tls");
    let settings = Settings {
        tls,
        ..Settings::example()
    };
    if tls {
        println!("== over TLS (redis-server on its TLS port only)");
    }
    match drill(&settings).await {
        Ok(report) => print!("\n{}", report.summary()),
        Err(e) => {
            eprintln!("redis_failover: {e}");
            std::process::exit(1);
        }
    }
}
