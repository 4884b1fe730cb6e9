//! `conn::grpc_health` against a real tonic-health server on 127.0.0.1: `SERVING` passes,
//! `NOT_SERVING` and an unknown service fail, a server without the health service fails,
//! and `HealthChecked` closes the connection after the failures it is told to take — and
//! not while the server is `SERVING`.
//!
//! The checks' timing uses Tokio's clock with real sockets: the intervals are short real
//! times, and the waits that must end by themselves are bounded by `HANG` (a guard against
//! a hang, not a timed assertion).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use persistent_connection::conn::HealthCheck;
use persistent_connection::conn::grpc_health::{self, GrpcHealthError};
use persistent_connection::conn::http2::{Http2Connection, Http2Options};
use persistent_connection::{Closable, TcpConnection};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::body::Body as GrpcBody;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

const HANG: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {HANG:?}"),
    }
}

/// A tonic server with tonic-health's service on a free port of 127.0.0.1; its reporter
/// sets what it answers.
async fn health_server() -> (SocketAddr, HealthReporter, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .serve_with_incoming(service, TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (addr, reporter, task)
}

async fn connect(addr: SocketAddr) -> Http2Connection<GrpcBody> {
    let tcp = TcpConnection::connect(addr).await.unwrap();
    Http2Connection::handshake(tcp, &Http2Options::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn serving_passes_and_every_other_answer_fails() {
    let (addr, reporter, server) = health_server().await;
    let conn = connect(addr).await;
    // tonic-health answers SERVING for the server as a whole ("") from the start.
    assert_eq!(grpc_health::check(conn.clone(), "").await, Ok(()));

    reporter
        .set_service_status("echo", ServingStatus::Serving)
        .await;
    assert_eq!(grpc_health::check(conn.clone(), "echo").await, Ok(()));

    reporter
        .set_service_status("echo", ServingStatus::NotServing)
        .await;
    let e = grpc_health::check(conn.clone(), "echo").await.unwrap_err();
    assert_eq!(
        e,
        GrpcHealthError::NotServing {
            service: "echo".into(),
            status: "NOT_SERVING".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "grpc.health.v1 check of service \"echo\": NOT_SERVING"
    );

    // A name the server does not know: NOT_FOUND, as the protocol says.
    let e = grpc_health::check(conn.clone(), "nobody")
        .await
        .unwrap_err();
    match &e {
        GrpcHealthError::Call { service, code, .. } => {
            assert_eq!((service.as_str(), *code), ("nobody", tonic::Code::NotFound))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string()
            .starts_with("grpc.health.v1 check of service \"nobody\" failed: NotFound"),
        "{e}"
    );

    // The server as a whole set NOT_SERVING.
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let e = grpc_health::check(conn.clone(), "").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "grpc.health.v1 check of the server: NOT_SERVING"
    );

    // A closed connection: the call fails.
    conn.close().await;
    let e = grpc_health::check(conn.clone(), "echo").await.unwrap_err();
    assert!(matches!(e, GrpcHealthError::Call { .. }), "{e:?}");
    server.abort();
}

#[tokio::test]
async fn a_server_without_the_health_service_fails_the_check() {
    // A tonic server whose only service is not the health service: UNIMPLEMENTED.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let other = tower::service_fn(|_req: http::Request<GrpcBody>| async {
        Ok::<_, std::convert::Infallible>(
            tonic::Status::unimplemented("no such service").into_http::<GrpcBody>(),
        )
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming(other, TcpIncoming::from(listener)),
    );
    let conn = connect(addr).await;
    let e = grpc_health::check(conn.clone(), "").await.unwrap_err();
    assert!(
        matches!(
            e,
            GrpcHealthError::Call {
                code: tonic::Code::Unimplemented,
                ..
            }
        ),
        "{e:?}"
    );
    conn.close().await;
    server.abort();
}

#[tokio::test]
async fn health_checked_closes_the_connection_once_the_server_stops_serving() {
    let (addr, reporter, server) = health_server().await;
    reporter
        .set_service_status("echo", ServingStatus::Serving)
        .await;
    let settings = HealthCheck::new(Duration::from_millis(50), Duration::from_secs(2), 2);
    let checked = grpc_health::health_checked(connect(addr).await, settings, "echo");
    // SERVING: checks pass, several of them, and the connection stays open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!checked.is_closed() && !checked.closed_by_health_check());

    reporter
        .set_service_status("echo", ServingStatus::NotServing)
        .await;
    within("the health check's close", checked.close_finished()).await;
    assert!(checked.closed_by_health_check());
    server.abort();
}

#[tokio::test]
async fn check_fn_works_with_health_checked_new() {
    let (addr, _reporter, server) = health_server().await;
    let settings = HealthCheck::new(Duration::from_millis(50), Duration::from_secs(2), 1);
    // A service the server does not know fails every check: closed after the first.
    let checked = persistent_connection::conn::HealthChecked::new(
        connect(addr).await,
        settings,
        grpc_health::check_fn("unknown"),
    );
    within("the health check's close", checked.close_finished()).await;
    assert!(checked.closed_by_health_check());
    server.abort();
}
