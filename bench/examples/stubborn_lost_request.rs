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

#[path = "../../shell/examples/redis_failover.rs"]
#[allow(dead_code)]
mod example;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
use stubborn_io::ReconnectOptions;
use stubborn_io::strategies::ExpBackoffStrategy;
use stubborn_io::tokio::{StubbornIo, UnderlyingIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Clone)]
struct Catalog(Arc<Mutex<SocketAddr>>);
struct S(TcpStream);
impl UnderlyingIo<Catalog> for S {
    fn establish(c: Catalog) -> Pin<Box<dyn Future<Output = io::Result<Self>> + Send>> {
        Box::pin(async move {
            let a = *c.0.lock().unwrap();
            eprintln!("stubborn-io connects to {a}");
            Ok(S(TcpStream::connect(a).await?))
        })
    }
}
impl AsyncRead for S {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, b)
    }
}
impl AsyncWrite for S {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, b)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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
        let mut a = example::RedisServer::start().await.unwrap();
        let b = example::RedisServer::start().await.unwrap();
        let cat = Catalog(Arc::new(Mutex::new(a.addr)));
        let opts = ReconnectOptions::new()
            .with_exit_if_first_connect_fails(false)
            .with_retries_generator(|| {
                ExpBackoffStrategy::new(Duration::from_millis(50), 2.0, 0.05)
            });
        let s = StubbornIo::<S, Catalog>::connect_with_options(cat.clone(), opts)
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
        *cat.0.lock().unwrap() = b.addr;
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
