//! A persistent connection's metrics served in Prometheus' text format.
//!
//! ```text
//! cargo run -p persistent-connection --features metrics --example metrics_prometheus
//! cargo run -p persistent-connection --features metrics --example metrics_prometheus -- --serve 60
//! ```
//!
//! It installs metrics-exporter-prometheus' recorder (without its own HTTP listener: the
//! example serves `GET /metrics` itself on 127.0.0.1 with a few lines of Tokio), exports a
//! persistent connection's metrics with `persistent_connection::metrics::export`, and runs
//! a short failover: two servers on 127.0.0.1, the one in use dies, the catalog names a
//! refused address for 100 ms (a few failed attempts, the repeats de-duplicated), then the
//! other server. It then fetches its own `/metrics` over HTTP and prints the text, so the
//! counters, the state gauge and the failover-gap histogram can be read. With
//! `--serve SECONDS` it keeps serving that long, for `curl 127.0.0.1:PORT/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use persistent_connection::{IoError, PersistentConnection, TcpConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server that accepts and holds its connections until its task is aborted.
async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// Serves `GET /metrics` (any path, in fact) with the recorder's text.
async fn serve_metrics(handle: PrometheusHandle) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = s.read(&mut request).await;
                let body = handle.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// What `curl http://addr/metrics` would print.
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(response)
}

#[tokio::main]
async fn main() {
    let serve_for = std::env::args()
        .skip_while(|a| a != "--serve")
        .nth(1)
        .map(|s| Duration::from_secs(s.parse().expect("--serve SECONDS")));

    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let endpoint = serve_metrics(handle).await;

    let (a, server_a) = server().await;
    let (b, server_b) = server().await;
    let catalog = Arc::new(Mutex::new(a));
    let lookup = catalog.clone();
    let pc = PersistentConnection::builder(
        "echo",
        move || {
            let addr = *lookup.lock().unwrap();
            async move { Ok::<_, IoError>(addr) }
        },
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(Duration::from_millis(20))
    .on_event(|event| async move { println!("{event:?}") })
    .build();
    let exporter = persistent_connection::metrics::export(&pc);

    pc.connected().await;
    // The server in use dies; for 100 ms the catalog names an address nobody listens on.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    *catalog.lock().unwrap() = refused;
    server_a.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    *catalog.lock().unwrap() = b;
    let conn = pc.connected().await;
    println!("failed over to {}", conn.peer_addr());
    tokio::time::sleep(Duration::from_millis(50)).await; // the exporter catches up

    println!(
        "\n== GET http://{endpoint}/metrics\n{}",
        scrape(endpoint).await
    );
    if let Some(d) = serve_for {
        println!("serving http://{endpoint}/metrics for {d:?}");
        tokio::time::sleep(d).await;
    }
    pc.close().await;
    exporter.await.unwrap();
    server_b.abort();
}
