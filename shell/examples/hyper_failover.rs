//! A real hyper client failing over between two HTTP servers through a catalog: hyper's
//! own pool reconnects, and `CatalogConnector` makes each new connection look the service
//! up and go to a copy that accepts.
//!
//! ```text
//! cargo run -p persistent-connection --features connector --example hyper_failover
//! ```
//!
//! Two hyper HTTP/1 servers on 127.0.0.1 ("A" and "B") are listed in a `StaticList`.
//! hyper-util's legacy `Client`, built with the connector, sends `GET /` every 20 ms. The
//! drill kills the copy that answers (its listener and every connection it accepted),
//! restarts it on the same port, and does that four times. For each kill it prints the
//! failover gap: from the kill to the first reply from the other copy, and how many
//! requests failed in between. The catalog never changes: the connector skips the dead
//! copy because it refuses. It ends by itself in about 3 seconds.
//!
//! The client is two lines of the drill (`testkit/src/http.rs`, shared with the
//! integration test `tests/connector.rs`):
//!
//! ```ignore
//! let connector = CatalogConnector::new(StaticList::new([a, b]), Pick::InOrder)
//!     .copy_timeout(Duration::from_millis(500));
//! let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
//! ```

use std::time::Duration;

use persistent_connection_testkit::http::{Settings, drill, ms};

#[tokio::main]
async fn main() {
    let settings = Settings {
        kills: 4,
        every: Duration::from_millis(20),
        hold: Duration::from_millis(500),
        verbose: true,
    };
    match drill(settings).await {
        Ok(failovers) => {
            println!();
            for f in &failovers {
                println!(
                    "kill {} -> first reply from {} after {:6.1} ms ({} failed request(s))",
                    f.killed,
                    f.answered_by,
                    ms(f.gap),
                    f.failed
                );
            }
            let mut gaps: Vec<f64> = failovers.iter().map(|f| ms(f.gap)).collect();
            gaps.sort_by(f64::total_cmp);
            println!(
                "failover gap: min {:.1} ms, median {:.1} ms, max {:.1} ms",
                gaps[0],
                gaps[gaps.len() / 2],
                gaps[gaps.len() - 1]
            );
        }
        Err(e) => {
            eprintln!("hyper_failover: {e}");
            std::process::exit(1);
        }
    }
}
