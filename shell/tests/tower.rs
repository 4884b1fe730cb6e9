//! The tower adapter (feature `tower`) under tower's own layers — buffer, concurrency
//! limit, retry and timeout stacked — over real TCP echo servers on 127.0.0.1. Real
//! sockets need the real clock: every wait is bounded by a generous guard.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use persistent_connection::tower::{BoxError, PersistentService, ServiceClosed};
use persistent_connection::{Closable, IoError, PersistentConnection, TcpConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::retry::Policy;
use tower::{Service, ServiceBuilder, ServiceExt};

const GUARD: Duration = Duration::from_secs(30);

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// An echo server; aborting its task closes every connection it accepted.
async fn echo_server(reply: bool) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || (reply && s.write_all(&buf[..n]).await.is_err()) {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

type Pc = PersistentConnection<SocketAddr, TcpConnection, IoError>;

fn persistent(catalog: Arc<Mutex<SocketAddr>>) -> Pc {
    PersistentConnection::builder(
        "echo",
        move || {
            let addr = *catalog.lock().unwrap();
            async move { Ok::<_, IoError>(addr) }
        },
        |addr: SocketAddr, _cx| TcpConnection::connect(addr),
    )
    .retry_policy(Duration::from_millis(20))
    .build()
}

/// A request's future.
type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, BoxError>> + Send>>;

/// One request: send the line, read its echo. A lock per service keeps request/reply
/// pairs together when the limit lets two requests in at once.
fn service(
    pc: Pc,
) -> PersistentService<
    SocketAddr,
    TcpConnection,
    IoError,
    impl FnMut(TcpConnection, String) -> Reply + Clone,
> {
    let turn = Arc::new(tokio::sync::Mutex::new(()));
    PersistentService::new(pc, move |conn: TcpConnection, req: String| -> Reply {
        let turn = turn.clone();
        Box::pin(async move {
            let _turn = turn.lock().await;
            conn.send(req.as_bytes()).await?;
            let reply = conn.recv().await.ok_or("closed before the reply")?;
            Ok(String::from_utf8(reply)?)
        })
    })
}

/// Retries a failed request up to this many more times, 10 ms apart: a request caught by
/// the server's death fails (a broken pipe) until the connection has noticed the death,
/// which takes a moment, and immediate retries would all fall in that moment.
#[derive(Clone)]
struct Attempts(usize);

impl<Res> Policy<String, Res, BoxError> for Attempts {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut String,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Err(e) if self.0 > 0 && !e.is::<ServiceClosed>() => {
                self.0 -= 1;
                Some(tokio::time::sleep(Duration::from_millis(10)))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &String) -> Option<String> {
        Some(req.clone())
    }
}

/// buffer → concurrency limit → retry → timeout → the adapter, failing over between two
/// real servers: every request is answered, the one caught by the server's death is
/// retried on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_layers_stack_on_the_adapter_and_requests_survive_failover() {
    let (a, server_a) = echo_server(true).await;
    let (b, server_b) = echo_server(true).await;
    let catalog = Arc::new(Mutex::new(a));
    let pc = persistent(catalog.clone());
    let stack = ServiceBuilder::new()
        .buffer(16)
        .concurrency_limit(2)
        .retry(Attempts(5))
        .timeout(Duration::from_secs(5))
        .service(service(pc.clone()));

    let mut answered = Vec::new();
    for i in 0..40 {
        if i == 20 {
            // The server in use dies; the catalog names the other one.
            *catalog.lock().unwrap() = b;
            server_a.abort();
        }
        let reply = guard("a request", stack.clone().oneshot(format!("req {i}")))
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        answered.push(reply);
    }
    let expected: Vec<String> = (0..40).map(|i| format!("req {i}")).collect();
    assert_eq!(answered, expected);
    assert_eq!(pc.current_connection().unwrap().peer_addr(), b);
    assert!(pc.stats().connections >= 2, "{:?}", pc.stats());

    // Concurrent requests through the buffer and the limit.
    let replies = guard(
        "concurrent requests",
        futures_util::future::join_all((0..8).map(|i| stack.clone().oneshot(format!("c{i}")))),
    )
    .await;
    for (i, r) in replies.into_iter().enumerate() {
        assert_eq!(r.unwrap(), format!("c{i}"));
    }

    guard("close", pc.close()).await;
    server_b.abort();
}

/// tower's timeout bounds a request to a server that never answers.
#[tokio::test]
async fn the_timeout_layer_bounds_a_request_to_a_silent_server() {
    let (silent, server) = echo_server(false).await;
    let pc = persistent(Arc::new(Mutex::new(silent)));
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_millis(200))
        .service(service(pc.clone()));
    let started = std::time::Instant::now();
    let err = guard("a timed-out request", async {
        svc.ready().await.unwrap().call("hello?".into()).await
    })
    .await
    .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    guard("close", pc.close()).await;
    server.abort();
}

/// poll_ready waits for a connection while none can be made, across failed attempts, and
/// is ready as soon as one is.
#[tokio::test]
async fn poll_ready_waits_for_a_connection() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = gone.local_addr().unwrap();
    drop(gone);
    let catalog = Arc::new(Mutex::new(refused));
    let pc = persistent(catalog.clone());
    let mut svc = service(pc.clone());
    let ready = tokio::time::timeout(Duration::from_millis(200), svc.ready()).await;
    assert!(ready.is_err(), "ready without a server");
    assert!(pc.stats().failures >= 2, "{:?}", pc.stats());

    let (addr, server) = echo_server(true).await;
    *catalog.lock().unwrap() = addr;
    guard("ready once a server listens", svc.ready())
        .await
        .unwrap();
    let reply = guard("a request", svc.call("there".into())).await.unwrap();
    assert_eq!(reply, "there");
    guard("close", pc.close()).await;
    server.abort();
}

/// A closed persistent connection is an error, not a hang: directly, while waiting, and
/// through the buffer.
#[tokio::test]
async fn a_closed_persistent_connection_is_an_error_not_a_hang() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = gone.local_addr().unwrap();
    drop(gone);
    let pc = persistent(Arc::new(Mutex::new(refused)));
    let mut svc = service(pc.clone());
    let mut buffered = ServiceBuilder::new().buffer(4).service(service(pc.clone()));

    // Closed while poll_ready waits.
    let closer = {
        let pc = pc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pc.close().await;
        })
    };
    let err = guard("ready while closing", svc.ready()).await.unwrap_err();
    let closed = err.downcast_ref::<ServiceClosed>().expect("ServiceClosed");
    assert_eq!(closed.server_name(), "echo");
    assert_eq!(
        closed.to_string(),
        "the persistent connection to echo is closed"
    );
    closer.await.unwrap();

    // Already closed.
    let err = guard("ready after close", svc.ready()).await.unwrap_err();
    assert!(err.is::<ServiceClosed>(), "{err}");
    // Through the buffer: its worker reports the inner service's failure.
    let err = guard("buffered", async {
        match buffered.ready().await {
            Ok(s) => s.call("x".into()).await.map(|_| ()),
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap_err();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    let mut found = false;
    while let Some(e) = source {
        found |= e
            .to_string()
            .contains("the persistent connection to echo is closed");
        source = e.source();
    }
    assert!(found, "{err}");
}

/// After `close_when_current_connection_is_closed` (R11) the current connection stays up,
/// and the service keeps sending over it; once it closes, the service is closed.
#[tokio::test]
async fn after_r11_the_current_connection_still_serves_then_the_service_is_closed() {
    let (a, server) = echo_server(true).await;
    let pc = persistent(Arc::new(Mutex::new(a)));
    let mut svc = service(pc.clone());
    let conn = guard("connected", pc.connected()).await;
    pc.close_when_current_connection_is_closed();
    let reply = guard("a request after R11", async {
        svc.ready().await?.call("still up".into()).await
    })
    .await
    .unwrap();
    assert_eq!(reply, "still up");
    server.abort();
    guard("the connection closes", conn.close_finished()).await;
    let err = guard("ready after it closed", svc.ready())
        .await
        .unwrap_err();
    assert!(err.is::<ServiceClosed>(), "{err}");
    assert!(pc.is_closed());
    assert_eq!(pc.stats().connections, 1, "no new round after R11");
}

/// The connection `poll_ready` kept is dropped if it closes before `call`: the next
/// `poll_ready` waits for a live one, and the request goes over it, not over the closed one.
#[tokio::test]
async fn a_kept_connection_that_closed_is_replaced_before_the_call() {
    let (a, server_a) = echo_server(true).await;
    let (b, server_b) = echo_server(true).await;
    let catalog = Arc::new(Mutex::new(a));
    let pc = persistent(catalog.clone());
    let mut svc = PersistentService::new(pc.clone(), |conn: TcpConnection, (): ()| async move {
        Ok::<_, BoxError>((conn.peer_addr(), conn.is_closed()))
    });
    guard("ready on A", svc.ready()).await.unwrap();
    let first = pc.current_connection().expect("connected to A");
    assert_eq!(first.peer_addr(), a);

    // A dies after poll_ready kept its connection; the catalog names B.
    *catalog.lock().unwrap() = b;
    server_a.abort();
    guard("A's connection closes", first.close_finished()).await;
    let (peer, closed) = guard("a request after A died", async {
        svc.ready().await?.call(()).await
    })
    .await
    .unwrap();
    assert_eq!(
        (peer, closed),
        (b, false),
        "the request went over a live connection to B"
    );
    guard("close", pc.close()).await;
    server_b.abort();
}

/// `{:?}` shows the persistent connection and whether a connection is kept for `call`.
#[tokio::test]
async fn the_service_prints_its_persistent_connection_and_whether_it_is_ready() {
    let (a, server) = echo_server(true).await;
    let pc = persistent(Arc::new(Mutex::new(a)));
    let mut svc = service(pc.clone());
    guard("connected", pc.connected()).await;
    guard("ready", svc.ready()).await.unwrap();
    assert_eq!(
        format!("{svc:?}"),
        format!("PersistentService {{ pc: {pc:?}, ready: true, .. }}")
    );
    assert!(format!("{svc:?}").contains("server_name: \"echo\""));
    let reply = guard("a request", svc.call("hi".into())).await.unwrap();
    assert_eq!(reply, "hi");
    assert_eq!(
        format!("{svc:?}"),
        format!("PersistentService {{ pc: {pc:?}, ready: false, .. }}")
    );
    guard("close", pc.close()).await;
    server.abort();
}

/// Issue 28 item 10: where tower's `timeout` goes. While the persistent connection
/// reconnects, the service is not ready, and `buffer` holds requests back in its queue
/// until its worker finds the service ready; `timeout` starts its clock at `call`. So a
/// `timeout` inside `buffer` only starts once a connection is back, and a request waits
/// for the whole outage; outside `buffer` (whose `poll_ready` is ready while it has room)
/// it bounds the wait too. On the paused clock (the connects are refused at once).
#[tokio::test(start_paused = true)]
async fn a_timeout_outside_the_buffer_bounds_a_request_held_back_while_reconnecting() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = gone.local_addr().unwrap();
    drop(gone);
    let pc = persistent(Arc::new(Mutex::new(refused)));
    let bound = Duration::from_millis(200);

    // Right: timeout outside buffer (the first layer named is the outermost).
    let outside = ServiceBuilder::new()
        .timeout(bound)
        .buffer(4)
        .service(service(pc.clone()));
    let started = tokio::time::Instant::now();
    let err = outside.oneshot("hello?".into()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(started.elapsed(), bound);

    // Wrong: timeout inside buffer. Ten bounds later the request is still held back.
    let inside = ServiceBuilder::new()
        .buffer(4)
        .timeout(bound)
        .service(service(pc.clone()));
    let mut held = tokio::spawn(inside.oneshot("hello?".into()));
    assert!(
        tokio::time::timeout(bound * 10, &mut held).await.is_err(),
        "a timeout inside the buffer bounded the wait for a connection"
    );
    assert!(pc.stats().failures >= 10, "{:?}", pc.stats());
    // Close ends it: an error, not a hang.
    pc.close().await;
    let err = held.await.unwrap().unwrap_err();
    assert!(!err.is::<tower::timeout::error::Elapsed>(), "{err}");
}
