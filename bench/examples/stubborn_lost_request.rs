//! Why stubborn-io does not recover in the Redis drill (BENCHMARKS.md, issue 11): it
//! reconnects the byte stream underneath `redis`' multiplexed connection, so a request in
//! flight at the fault never gets a reply, and the client pairs every later reply with it.
//!
//! ```text
//! cargo run -p persistent-connection-bench --example stubborn_lost_request
//! ```
//!
//! Twice, against two real `redis-server` processes: PING the first server, move the
//! catalog to the second, kill -9 the first, PING three times. The first time no request
//! is in flight at the fault; the second time one PING to the (SIGSTOPped) first server is
//! lost. Then it asks the second server how many commands it processed. Output on stderr.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use persistent_connection_testkit::redis::RedisServer;
use persistent_connection_testkit::stubborn::{self, Lookup, LookupStream, SharedAddr};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use stubborn_io::tokio::StubbornIo;

/// The shared address, printed at every (re)connect stubborn-io makes.
#[derive(Clone)]
struct Logged(SharedAddr);

impl Lookup for Logged {
    fn lookup(&self) -> io::Result<SocketAddr> {
        let a = self.0.get();
        eprintln!("stubborn-io connects to {a}");
        Ok(a)
    }
}

async fn ping(c: &mut MultiplexedConnection, t: u64) -> String {
    match tokio::time::timeout(
        Duration::from_millis(t),
        redis::cmd("PING").query_async::<String>(c),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => format!("error {e}"),
        Err(_) => format!("no answer in {t} ms"),
    }
}

#[tokio::main]
async fn main() {
    for lose_one in [false, true] {
        let mut a = RedisServer::start().await.unwrap();
        let b = RedisServer::start().await.unwrap();
        let cat = SharedAddr::new(a.addr);
        let s = StubbornIo::<LookupStream, Logged>::connect_with_options(
            Logged(cat.clone()),
            stubborn::options(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        let (mut c, d) = MultiplexedConnection::new_with_config(
            &RedisConnectionInfo::default(),
            s,
            AsyncConnectionConfig::new(),
        )
        .await
        .unwrap();
        tokio::spawn(d);
        eprintln!("== lose a request in flight: {lose_one}");
        eprintln!("ping A: {}", ping(&mut c, 2000).await);
        if lose_one {
            a.sigstop().unwrap();
            eprintln!("ping stopped A: {}", ping(&mut c, 100).await);
        }
        cat.set(b.addr);
        a.kill9();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..3 {
            eprintln!("ping {i} after failover: {}", ping(&mut c, 1000).await);
        }
        let mut direct = redis::Client::open(format!("redis://{}/", b.addr))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut direct)
            .await
            .unwrap();
        eprintln!(
            "B: {}",
            info.lines()
                .find(|l| l.starts_with("connected_clients"))
                .unwrap_or("?")
        );
        let stats: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut direct)
            .await
            .unwrap();
        eprintln!(
            "B: {}",
            stats
                .lines()
                .find(|l| l.starts_with("total_commands_processed"))
                .unwrap_or("?")
        );
    }
}
