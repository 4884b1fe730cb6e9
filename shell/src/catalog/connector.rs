//! A connector for clients that reconnect on their own, hyper's and tonic's, built from
//! any [`Catalog`] (cargo feature `connector`).
//!
//! hyper's client pool and tonic's channel reconnect by themselves, but to one fixed
//! address. [`CatalogConnector`] is a `tower::Service<Uri>` that looks the catalog up
//! before every connect and picks a listed copy (a [`Pick`] policy, preferring copies not
//! tried since the last sweep, as [`Catalog::get_address`] does); if that copy refuses or
//! does not answer within the connect timeout, it tries the other listed copies in the
//! same call. So when the copy in use dies, the client's next connection goes to another
//! one. The request's `Uri` only says which scheme and path the client wants: the catalog
//! decides where to connect.
//!
//! The connected stream is a [`TokioIo`]`<`[`TcpStream`]`>` (`TCP_NODELAY` set), which
//! hyper-util's legacy `Client` and tonic's `Endpoint::connect_with_connector` take as they
//! are.
//!
//! ```
//! use std::net::SocketAddr;
//! use persistent_connection::catalog::{Pick, StaticList};
//! use persistent_connection::connector::CatalogConnector;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let live = listener.local_addr().unwrap();
//! let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let refused = gone.local_addr().unwrap();
//! drop(gone);
//!
//! let connector = CatalogConnector::new(StaticList::new([refused, live]), Pick::InOrder);
//! // hyper: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector)
//! // tonic: Endpoint::from_static("http://service").connect_with_connector(connector)
//! let stream = connector.oneshot("http://service/".parse().unwrap()).await.unwrap();
//! assert_eq!(stream.inner().peer_addr().unwrap(), live); // the refused copy was skipped
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::catalog::{Catalog, CatalogError, Pick, Picker};
use crate::error::IoError;

/// How long [`CatalogConnector`] waits for one copy to accept by default, before it tries
/// the next listed copy.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A `tower::Service<Uri>` that connects to a copy of the service listed in a catalog; see
/// the [module docs](self). Cheap to clone; clones share the catalog and the picking state.
///
/// Errors ([`IoError`]): the catalog's own lookup failure ([`CatalogError`]'s kind and
/// message), or, when every listed copy failed, the last copy's failure prefixed with how
/// many were tried: `no listed copy accepted (2 tried); last: connect to 127.0.0.1:7001:
/// Connection refused (os error 111)`.
pub struct CatalogConnector<K: Catalog> {
    catalog: Arc<K>,
    picker: Arc<Mutex<Picker<K::Address>>>,
    connect_timeout: Duration,
}

impl<K: Catalog> Clone for CatalogConnector<K> {
    fn clone(&self) -> Self {
        CatalogConnector {
            catalog: self.catalog.clone(),
            picker: self.picker.clone(),
            connect_timeout: self.connect_timeout,
        }
    }
}

impl<K: Catalog> fmt::Debug for CatalogConnector<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConnector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl<K: Catalog<Address = SocketAddr>> CatalogConnector<K> {
    /// A connector over `catalog`, choosing among listed copies with `pick`, with a
    /// per-copy connect timeout of [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn new(catalog: K, pick: Pick) -> Self {
        CatalogConnector {
            catalog: Arc::new(catalog),
            picker: Arc::new(Mutex::new(Picker::new(pick))),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// How long to wait for one copy to accept before trying the next one.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Looks the catalog up and connects to a listed copy, trying each listed copy at most
    /// once. What [`call`](Service::call) does, without the `Uri`.
    ///
    /// The picker is shared by every call (and clone), so that calls spread over the copies
    /// ([`Pick::RoundRobin`]) or keep to the first that accepts ([`Pick::InOrder`]); each
    /// call keeps its own tried set on top of it. A call whose copy failed asks the picker
    /// again, and when the picker hands out a copy this call has already tried (another
    /// call's picks started a new sweep meanwhile), it asks once more, until it gets one it
    /// has not tried: so a call tries every listed copy, whatever concurrent calls do.
    pub fn connect(
        &self,
    ) -> impl Future<Output = Result<TokioIo<TcpStream>, IoError>> + Send + 'static + use<K> {
        let catalog = self.catalog.clone();
        let picker = self.picker.clone();
        let timeout = self.connect_timeout;
        async move {
            let listed = catalog.lookup().await.map_err(IoError::from)?;
            let mut tried: Vec<SocketAddr> = Vec::new();
            let mut last = None;
            loop {
                let addr = {
                    let mut picker = picker
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    untried_pick(&mut picker, &listed, &tried)
                };
                let Some(addr) = addr else { break };
                tried.push(addr);
                match connect_one(addr, timeout).await {
                    Ok(stream) => return Ok(TokioIo::new(stream)),
                    Err(e) => last = Some(e),
                }
            }
            Err(match last {
                Some(e) => IoError::new(
                    e.kind(),
                    format!(
                        "no listed copy accepted ({} tried); last: {}",
                        tried.len(),
                        e.message()
                    ),
                ),
                None => IoError::from(CatalogError::Empty {
                    catalog: "the catalog".to_owned(),
                }),
            })
        }
    }
}

/// The shared picker's next pick among `listed` that is not in `tried` (this call's own
/// tried set); `None` once every listed copy is in it.
///
/// The picker hands out every listed copy once per sweep, so within two sweeps' worth of
/// picks it hands out each copy at least once: asking at most that often finds an untried
/// copy if there is one. The picks skipped on the way count as tried in the picker, which
/// they are (by this call).
fn untried_pick(
    picker: &mut Picker<SocketAddr>,
    listed: &[SocketAddr],
    tried: &[SocketAddr],
) -> Option<SocketAddr> {
    if listed.iter().all(|a| tried.contains(a)) {
        return None;
    }
    for _ in 0..2 * listed.len() {
        match picker.pick(listed) {
            Some(addr) if !tried.contains(&addr) => return Some(addr),
            Some(_) => {}
            None => return None,
        }
    }
    // Not reached with the picker's sweeps; listing order as a fallback.
    listed.iter().find(|a| !tried.contains(a)).copied()
}

async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, IoError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(IoError::new(e.kind(), format!("connect to {addr}: {e}"))),
        Err(_) => {
            return Err(IoError::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr}: timed out after {timeout:?}"),
            ));
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| IoError::new(e.kind(), format!("TCP_NODELAY on {addr}: {e}")))?;
    Ok(stream)
}

impl<K: Catalog<Address = SocketAddr>> Service<Uri> for CatalogConnector<K> {
    type Response = TokioIo<TcpStream>;
    type Error = IoError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, IoError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), IoError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        Box::pin(self.connect())
    }
}
