//! A [`tower_service::Service`] over a persistent connection (cargo feature `tower`).
//!
//! [`PersistentService`] sends each request over the persistent connection's current
//! connection with a function of yours. [`poll_ready`](Service::poll_ready) waits until
//! there is a connection (so tower's `buffer`, `limit` and load balancers hold requests
//! back while reconnecting, instead of failing them), and fails with [`ServiceClosed`]
//! once the persistent connection is closed and no connection is current (after R11 the
//! connection still up keeps serving): a closed service is an error, never a hang.
//! It composes with tower's layers: `timeout` bounds a request (placed as said below),
//! `retry` sends it again (the service is `Clone`), `limit` and `buffer` share it.
//!
//! # Where `timeout` goes: outside `buffer`
//!
//! tower's `timeout` starts its clock at `call`, and it does not bound `poll_ready`; while
//! the persistent connection reconnects, this service is not ready. Under `buffer`, a
//! request waits in the buffer's queue until the buffer's worker finds the inner service
//! ready, and only then calls it. So a `timeout` **inside** `buffer`
//! (`ServiceBuilder::new().buffer(n).timeout(d)`) starts once a connection is back: a
//! request held back while reconnecting waits for the whole outage, however short `d`.
//! Put it **outside**: `ServiceBuilder::new().timeout(d).buffer(n)` (the first layer named
//! is the outermost). `buffer` is ready as long as its queue has room, so the timeout's
//! clock starts when the request is queued and bounds the wait for a connection as well
//! as the request itself. Without a `buffer`, bound your own wait for readiness
//! (`tokio::time::timeout(d, service.ready())`). `shell/tests/tower.rs` shows both orders
//! during an outage.
//!
//! ```
//! use std::net::SocketAddr;
//! use persistent_connection::tower::{BoxError, PersistentService};
//! use persistent_connection::{IoError, PersistentConnection, TcpConnection};
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An echo server.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! tokio::spawn(async move {
//!     let (mut s, _) = listener.accept().await.unwrap();
//!     let (mut r, mut w) = s.split();
//!     let _ = tokio::io::copy(&mut r, &mut w).await;
//! });
//!
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     move || async move { Ok::<_, IoError>(addr) },
//!     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
//! )
//! .build();
//! // One request: send the bytes, read the echo.
//! let mut service = PersistentService::new(pc.clone(), |conn: TcpConnection, req: Vec<u8>| async move {
//!     conn.send(&req).await?;
//!     conn.recv().await.ok_or_else(|| BoxError::from("closed before the reply"))
//! });
//! let reply = service.ready().await.unwrap().call(b"ping".to_vec()).await.unwrap();
//! assert_eq!(reply, b"ping");
//!
//! pc.close().await;
//! let err = service.ready().await.unwrap_err();
//! assert!(err.is::<persistent_connection::tower::ServiceClosed>());
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::conn::closable::Closable;
use crate::error::AttemptOutcome;
use crate::handle::PersistentConnection;
use persistent_connection_core::AttemptError;

/// The error type of [`PersistentService`], as tower's own layers use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The persistent connection behind a [`PersistentService`] is closed (or closing): no
/// request can be sent any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceClosed {
    server_name: String,
}

impl ServiceClosed {
    /// The persistent connection's server name.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
}

impl fmt::Display for ServiceClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the persistent connection to {} is closed",
            self.server_name
        )
    }
}

impl std::error::Error for ServiceClosed {}

/// A [`Service`] that runs `request(connection, req)` on the persistent connection's
/// current connection; see the [module docs](self).
///
/// - `poll_ready` is ready when a connection is current (the connection is kept for the
///   next `call`), also after R11 while that connection stays up; otherwise it waits for
///   the next one, across failed attempts; once the persistent connection is closed and
///   no connection is current, it returns [`ServiceClosed`].
/// - `call` runs `request` with that connection. Its error is whatever `request` returns,
///   boxed. `call` without a successful `poll_ready` first panics, as tower's contract
///   allows.
///
/// Cloning makes an independent service over the same persistent connection (and a clone
/// of `request`), as tower's `retry` and `buffer` need.
pub struct PersistentService<A, C, E, F> {
    pc: PersistentConnection<A, C, E>,
    request: F,
    ready: Option<C>,
    waiting: Option<BoxFuture<Option<C>>>,
}

impl<A, C, E, F: Clone> Clone for PersistentService<A, C, E, F> {
    fn clone(&self) -> Self {
        PersistentService {
            pc: self.pc.clone(),
            request: self.request.clone(),
            ready: None,
            waiting: None,
        }
    }
}

impl<A, C, E, F> fmt::Debug for PersistentService<A, C, E, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistentService")
            .field("pc", &self.pc)
            .field("ready", &self.ready.is_some())
            .finish_non_exhaustive()
    }
}

impl<A, C, E, F> PersistentService<A, C, E, F>
where
    A: Clone + PartialEq + Send + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + 'static,
{
    /// A service over `pc` whose requests run `request(connection, req)`.
    pub fn new(pc: PersistentConnection<A, C, E>, request: F) -> Self {
        PersistentService {
            pc,
            request,
            ready: None,
            waiting: None,
        }
    }

    /// The persistent connection.
    pub fn persistent_connection(&self) -> &PersistentConnection<A, C, E> {
        &self.pc
    }

    fn closed(&self) -> BoxError {
        Box::new(ServiceClosed {
            server_name: self.pc.server_name().to_owned(),
        })
    }
}

/// The next connection, or `None` once closed: attempts that fail are waited through.
async fn next_connection<A, C, E>(pc: PersistentConnection<A, C, E>) -> Option<C>
where
    A: Clone + PartialEq + Send + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + 'static,
{
    let weak = pc.downgrade();
    drop(pc); // waiting must not keep the persistent connection alive (R14)
    loop {
        let outcome = weak.upgrade()?.connected_or_failed_to_connect();
        let outcome: AttemptOutcome<C, E> = outcome.await;
        match outcome {
            Ok(c) => return Some(c),
            Err(AttemptError::Closed) => return None,
            // Failed or aborted: the next outcome tells (closed after an abort).
            Err(_) => {}
        }
    }
}

impl<A, C, E, F, Req, Fut, Resp, Err> Service<Req> for PersistentService<A, C, E, F>
where
    A: Clone + PartialEq + Send + 'static,
    C: Closable + Clone + Send + Sync + 'static,
    E: Clone + PartialEq + Send + 'static,
    F: FnMut(C, Req) -> Fut,
    Fut: Future<Output = Result<Resp, Err>> + Send + 'static,
    Err: Into<BoxError>,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = BoxFuture<Result<Resp, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            // A current connection serves, also after R11, which counts the persistent
            // connection as closed at once while its connection stays up and current.
            if let Some(c) = &self.ready {
                if !c.is_closed() && !self.pc.is_closed() {
                    return Poll::Ready(Ok(()));
                }
                self.ready = None;
            }
            if let Some(c) = self.pc.current_connection() {
                self.waiting = None;
                self.ready = Some(c);
                return Poll::Ready(Ok(()));
            }
            if self.pc.is_closed() {
                self.waiting = None;
                return Poll::Ready(Err(self.closed()));
            }
            if self.waiting.is_none() {
                self.waiting = Some(Box::pin(next_connection(self.pc.clone())));
            }
            let waiting = self.waiting.as_mut().expect("set above");
            match waiting.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(c) => {
                    self.waiting = None;
                    match c {
                        Some(c) => self.ready = Some(c),
                        None => return Poll::Ready(Err(self.closed())),
                    }
                }
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let conn = self
            .ready
            .take()
            .expect("PersistentService::call without a successful poll_ready");
        let fut = (self.request)(conn, req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}
