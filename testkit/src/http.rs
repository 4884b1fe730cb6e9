//! The HTTP failover drill of the `hyper_failover` example and `shell/tests/connector.rs`:
//! hyper HTTP/1 servers that can be killed and restarted on the same port
//! ([`HttpServer`]), and a hyper client whose pool reconnects through
//! [`CatalogConnector`], which makes each new connection look the service up and go to a
//! copy that accepts ([`drill`]).
//!
//! Two servers ("A" and "B") are listed in a [`StaticList`]. hyper-util's legacy `Client`,
//! built with the connector, sends `GET /` every [`Settings::every`]. The drill kills the
//! copy that answers (its listener and every connection it accepted), waits for a reply
//! from the other copy, restarts the killed one on the same port, and does that
//! [`Settings::kills`] times. The catalog never changes: the connector skips the dead copy
//! because it refuses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::catalog::connector::CatalogConnector;
use persistent_connection::catalog::{Pick, StaticList};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An HTTP/1 server answering every request with its name; aborting its task closes the
/// listener and every connection it accepted.
pub struct HttpServer {
    /// Its name, the body of every reply.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl HttpServer {
    /// Starts one on `addr` (port 0: any free port).
    pub async fn start(name: &'static str, addr: SocketAddr) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(async move {
                    let service =
                        hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(HttpServer {
            name,
            addr,
            task: Some(task),
        })
    }

    /// Kills it: the listener and its connections close at once.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        // The aborted task drops its listener when it is next polled.
        for _ in 0..200 {
            match HttpServer::start(self.name, self.addr).await {
                Ok(s) => {
                    *self = s;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!("{} still in use", self.addr)))
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One kill and how the client got through it.
#[derive(Clone, Debug)]
pub struct Failover {
    /// The copy killed.
    pub killed: &'static str,
    /// The copy that answered next.
    pub answered_by: String,
    /// From the kill to the first reply from the other copy.
    pub gap: Duration,
    /// Requests that failed in between.
    pub failed: usize,
}

/// The drill's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Kills.
    pub kills: usize,
    /// Time between requests.
    pub every: Duration,
    /// Time on a healthy copy before each kill.
    pub hold: Duration,
    /// Print every request's outcome.
    pub verbose: bool,
}

/// Runs the drill: `kills` times, kill the copy that answers, measure the gap, restart it.
pub async fn drill(settings: Settings) -> std::io::Result<Vec<Failover>> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut servers = [
        HttpServer::start("A", any).await?,
        HttpServer::start("B", any).await?,
    ];
    let catalog = StaticList::new([servers[0].addr, servers[1].addr]);
    let connector =
        CatalogConnector::new(catalog, Pick::InOrder).copy_timeout(Duration::from_millis(500));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);

    // One request; the body names the copy that answered.
    let get = |client: Client<CatalogConnector<StaticList<SocketAddr>>, Empty<Bytes>>| async move {
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            client.get("http://service/".parse().unwrap()),
        )
        .await
        .map_err(|_| "no reply within 2 s".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
        let body = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>(String::from_utf8_lossy(&body).into_owned())
    };

    let mut failovers = Vec::new();
    let mut answering = get(client.clone())
        .await
        .map_err(|e| std::io::Error::other(format!("first request: {e}")))?;
    for _ in 0..settings.kills {
        tokio::time::sleep(settings.hold).await;
        let victim = servers
            .iter_mut()
            .find(|s| s.name == answering)
            .expect("a listed copy answered");
        let killed = victim.name;
        let fault = Instant::now();
        victim.kill();
        if settings.verbose {
            println!("== kill {killed}");
        }
        let mut failed = 0;
        let deadline = fault + Duration::from_secs(10);
        loop {
            match get(client.clone()).await {
                Ok(by) if by != killed => {
                    let gap = fault.elapsed();
                    if settings.verbose {
                        println!("   {by} answered, {:.1} ms after the kill", ms(gap));
                    }
                    failovers.push(Failover {
                        killed,
                        answered_by: by.clone(),
                        gap,
                        failed,
                    });
                    answering = by;
                    break;
                }
                Ok(by) => {
                    if settings.verbose {
                        println!("   {by} answered (still?)");
                    }
                }
                Err(e) => {
                    failed += 1;
                    if settings.verbose {
                        println!("   request failed: {e}");
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "no reply from another copy within 10 s of killing {killed}"
                )));
            }
            tokio::time::sleep(settings.every).await;
        }
        let victim = servers.iter_mut().find(|s| s.name == killed).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        victim.restart().await?;
        if settings.verbose {
            println!("== {killed} restarted");
        }
    }
    Ok(failovers)
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
