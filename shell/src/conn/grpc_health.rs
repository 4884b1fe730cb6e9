//! The gRPC health-checking protocol (`grpc.health.v1.Health/Check`) as a ready health
//! check for [`HealthChecked`] (feature `grpc-health`), through tonic-health's client.
//!
//! A server that implements the protocol (tonic-health's `HealthServer`, grpc-go's
//! `health.NewServer()`, …) answers `SERVING`, `NOT_SERVING` or `SERVICE_UNKNOWN` for a
//! service name, `""` meaning the server as a whole. Only `SERVING` passes; any other
//! answer, an error status and a failed call fail the check, and after
//! [`HealthCheck::failures`] of them in a row the connection is closed and the persistent
//! connection moves on (S7). A server that drains (its owners set `NOT_SERVING` before
//! shutting down) is so left before it goes.
//!
//! ```no_run
//! use std::time::Duration;
//! use persistent_connection::conn::grpc_health;
//! use persistent_connection::conn::http2::{Http2Connection, Http2Options};
//! use persistent_connection::conn::HealthCheck;
//! use persistent_connection::{IoError, TcpConnection};
//!
//! # async fn connect(addr: std::net::SocketAddr) -> Result<(), IoError> {
//! let tcp = TcpConnection::connect(addr).await?;
//! let conn = Http2Connection::handshake(tcp, &Http2Options::new()).await?;
//! // Health/Check of "echo" every 100 ms, 200 ms each; closed after 2 failures in a row.
//! let checked = grpc_health::health_checked(
//!     conn,
//!     HealthCheck::new(Duration::from_millis(100), Duration::from_millis(200), 2),
//!     "echo",
//! );
//! # let _ = checked;
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::body::Body as GrpcBody;
use tonic::client::GrpcService;
use tonic::codegen::{Body, Bytes};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::conn::health::{HealthCheck, HealthChecked};
use crate::conn::http2::Http2Connection;

/// Why a `grpc.health.v1` check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcHealthError {
    /// The server answered, and not `SERVING`: `NOT_SERVING`, `SERVICE_UNKNOWN` (it does
    /// not know the name) or `UNKNOWN`. The status as the protocol names it.
    NotServing {
        /// The service name checked (`""`: the server as a whole).
        service: String,
        /// The answer, e.g. `"NOT_SERVING"`.
        status: String,
    },
    /// The call failed: an error status from the server (`UNIMPLEMENTED` from a server
    /// without the health service) or from the transport (the connection closed or reset).
    Call {
        /// The service name checked.
        service: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

impl fmt::Display for GrpcHealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |s: &str| {
            if s.is_empty() {
                "the server".to_owned()
            } else {
                format!("service {s:?}")
            }
        };
        match self {
            GrpcHealthError::NotServing { service, status } => {
                write!(f, "grpc.health.v1 check of {}: {status}", name(service))
            }
            GrpcHealthError::Call {
                service,
                code,
                message,
            } => write!(
                f,
                "grpc.health.v1 check of {} failed: {code:?}: {message}",
                name(service)
            ),
        }
    }
}

impl std::error::Error for GrpcHealthError {}

/// One `grpc.health.v1.Health/Check` of `service_name` (`""`: the server as a whole)
/// through any tonic transport (an [`Http2Connection`], tonic's `Channel`): `Ok` only for
/// `SERVING`. No timeout of its own: [`HealthChecked`] bounds it with
/// [`HealthCheck::timeout`].
pub async fn check<S>(service: S, service_name: &str) -> Result<(), GrpcHealthError>
where
    S: GrpcService<GrpcBody>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    S::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as Body>::Error: Into<Box<dyn StdError + Send + Sync>> + Send,
{
    let mut client = HealthClient::new(service);
    let request = HealthCheckRequest {
        service: service_name.to_owned(),
    };
    match client.check(request).await {
        Ok(answer) => {
            let status = answer.into_inner().status;
            if status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(GrpcHealthError::NotServing {
                    service: service_name.to_owned(),
                    status: ServingStatus::try_from(status)
                        .map(|s| s.as_str_name().to_owned())
                        .unwrap_or_else(|_| format!("status {status}")),
                })
            }
        }
        Err(status) => Err(GrpcHealthError::Call {
            service: service_name.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }),
    }
}

/// The future of one check made by [`check_fn`].
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), GrpcHealthError>> + Send>>;

/// A check for [`HealthChecked::new`]: `grpc.health.v1.Health/Check` of `service_name` on
/// the connection checked. For a connection that wraps an [`Http2Connection`] (say in
/// [`Driven`](crate::conn::Driven) or your own type), call [`check`] from your own closure
/// instead.
///
/// ```no_run
/// # use std::time::Duration;
/// # use persistent_connection::conn::{grpc_health, http2::Http2Connection};
/// # use persistent_connection::conn::{HealthCheck, HealthChecked};
/// # fn f(conn: Http2Connection<tonic::body::Body>) {
/// let checked = HealthChecked::new(
///     conn,
///     HealthCheck::new(Duration::from_millis(100), Duration::from_millis(200), 2),
///     grpc_health::check_fn("echo"),
/// );
/// # let _ = checked;
/// # }
/// ```
pub fn check_fn(
    service_name: impl Into<String>,
) -> impl Fn(Http2Connection<GrpcBody>) -> CheckFuture + Clone + Send + Sync + 'static {
    let name: Arc<str> = Arc::from(service_name.into());
    move |conn: Http2Connection<GrpcBody>| {
        let name = name.clone();
        Box::pin(async move { check(conn, &name).await })
    }
}

/// `conn` with a [`HealthCheck`] that calls `grpc.health.v1.Health/Check` of
/// `service_name` (`""`: the server as a whole): closed after
/// [`failures`](HealthCheck::failures) checks in a row that did not answer `SERVING` within
/// the timeout. Must be called within a Tokio runtime.
pub fn health_checked(
    conn: Http2Connection<GrpcBody>,
    settings: HealthCheck,
    service_name: impl Into<String>,
) -> HealthChecked<Http2Connection<GrpcBody>> {
    HealthChecked::new(conn, settings, check_fn(service_name))
}
