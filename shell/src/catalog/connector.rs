//! A connector for clients that reconnect on their own, hyper's and tonic's, built from
//! any [`Catalog`] (cargo feature `connector`).
//!
//! hyper's client pool and tonic's channel reconnect by themselves, but to one fixed
//! address. [`CatalogConnector`] is a `tower::Service<Uri>` that looks the catalog up
//! before every connect and picks a listed copy (a [`Pick`] policy, preferring copies not
//! tried since the last sweep, as [`Catalog::get_address`] does); if that copy refuses or
//! does not accept within the copy timeout, it tries the other listed copies in the same
//! call, each at most once. So when the copy in use dies, the client's next connection goes
//! to another one. The request's `Uri` only says which scheme and path the client wants:
//! the catalog decides where to connect.
//!
//! The connected stream is a [`TokioIo`]`<`[`TcpStream`]`>`, which hyper-util's legacy
//! `Client` and tonic's `Endpoint::connect_with_connector_lazy` (or the eager
//! `connect_with_connector`, which fails at once when no copy accepts) take as they are.
//! Its socket has the connector's [`TcpOptions`]: the crate's defaults
//! ([`TcpOptions::new`]: `TCP_NODELAY`, keepalive and a 20 s `TCP_USER_TIMEOUT`, so that a
//! copy that vanishes or is black-holed under an open connection is noticed) unless
//! [`tcp_options`](CatalogConnector::tcp_options) says otherwise. They are set once the
//! copy has accepted (the copy timeout bounds the connect itself); a local address, if
//! given, is bound before the connect.
//!
//! # Which timeout bounds what
//!
//! - The **lookup timeout** ([`lookup_timeout`](CatalogConnector::lookup_timeout), default
//!   [`DEFAULT_LOOKUP_TIMEOUT`](crate::DEFAULT_LOOKUP_TIMEOUT), 10 s, the builder's
//!   backstop too) bounds the catalog lookup that starts every call: a registry that hangs
//!   fails the call with [`CatalogError::TimedOut`]'s text instead of holding it (and the
//!   client's request) forever. The catalogs' own timeouts (etcd's 2 s, DNS's 5 s) are
//!   below it, so they speak first, naming what they asked.
//! - The **copy timeout** ([`copy_timeout`](CatalogConnector::copy_timeout), default
//!   [`DEFAULT_COPY_TIMEOUT`], 2 s) bounds the connect to one copy; when it runs out, the
//!   call moves on to the next listed copy. A call over `n` listed copies therefore ends
//!   within the lookup timeout plus `n` copy timeouts.
//! - tonic's **`Endpoint::connect_timeout`** bounds the connector's *whole call* (tonic
//!   wraps the connector in a timeout of its own): shorter than the copy timeouts added
//!   up, it cuts the call off before the call reaches the next copy, and a silent first
//!   copy then fails every connect. Set it to at least the number of listed copies times
//!   the copy timeout, plus what the lookup takes (two copies with a 1 s copy timeout:
//!   2 s or more), or leave it unset and let the connector's own timeouts bound the call.
//! - hyper-util's legacy `Client` puts no timeout around a connector of its own (its
//!   `HttpConnector`'s connect timeout belongs to that connector): the connector's timeouts
//!   are all there is.
//! - The TCP options' **user timeout** bounds how long data sent on the connection may go
//!   unacknowledged once connected, not the connect.
//!
//! ```
//! use std::net::SocketAddr;
//! use persistent_connection::catalog::{Pick, StaticList};
//! use persistent_connection::catalog::connector::CatalogConnector;
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
//! // tonic: Endpoint::from_static("http://service").connect_with_connector_lazy(connector)
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
use tokio::net::{TcpSocket, TcpStream};
use tower_service::Service;

use crate::catalog::{Catalog, CatalogError, Pick, Picker, with_timeout};
use crate::conn::TcpOptions;
use crate::error::IoError;

/// How long [`CatalogConnector`] waits for one copy to accept by default, before it tries
/// the next listed copy: the timeout of one copy, not of the whole call (see the
/// [module docs](self#which-timeout-bounds-what)).
pub const DEFAULT_COPY_TIMEOUT: Duration = Duration::from_secs(2);

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
    copy_timeout: Duration,
    lookup_timeout: Duration,
    tcp_options: TcpOptions,
}

impl<K: Catalog> Clone for CatalogConnector<K> {
    fn clone(&self) -> Self {
        CatalogConnector {
            catalog: self.catalog.clone(),
            picker: self.picker.clone(),
            copy_timeout: self.copy_timeout,
            lookup_timeout: self.lookup_timeout,
            tcp_options: self.tcp_options,
        }
    }
}

impl<K: Catalog> fmt::Debug for CatalogConnector<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogConnector")
            .field("copy_timeout", &self.copy_timeout)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("tcp_options", &self.tcp_options)
            .finish_non_exhaustive()
    }
}

impl<K: Catalog<Address = SocketAddr>> CatalogConnector<K> {
    /// A connector over `catalog`, choosing among listed copies with `pick`, with a copy
    /// timeout of [`DEFAULT_COPY_TIMEOUT`], a lookup timeout of
    /// [`DEFAULT_LOOKUP_TIMEOUT`](crate::DEFAULT_LOOKUP_TIMEOUT) and the default
    /// [`TcpOptions`].
    pub fn new(catalog: K, pick: Pick) -> Self {
        CatalogConnector {
            catalog: Arc::new(catalog),
            picker: Arc::new(Mutex::new(Picker::new(pick))),
            copy_timeout: DEFAULT_COPY_TIMEOUT,
            lookup_timeout: crate::DEFAULT_LOOKUP_TIMEOUT,
            tcp_options: TcpOptions::new(),
        }
    }

    /// How long to wait for one copy to accept before trying the next one (default
    /// [`DEFAULT_COPY_TIMEOUT`], 2 s). A client's own connect timeout around the whole call
    /// must leave room for every copy: see the [module docs](self#which-timeout-bounds-what).
    pub fn copy_timeout(mut self, timeout: Duration) -> Self {
        self.copy_timeout = timeout;
        self
    }

    /// How long the catalog lookup that starts every call may take (default
    /// [`DEFAULT_LOOKUP_TIMEOUT`](crate::DEFAULT_LOOKUP_TIMEOUT), 10 s): past it the call
    /// fails with a `TimedOut` error, `lookup in the catalog Dns timed out after 10s` (the
    /// catalog's type name). `Duration::MAX`: no bound.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// The socket options of every connection (default [`TcpOptions::new`], the crate's
    /// defaults): `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT`, set once a copy has
    /// accepted, and the local address, bound before connecting. The recommended settings
    /// for fast failover are in the [guide](crate::guide#recommended-settings-for-fast-failover).
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::conn::TcpOptions;
    /// use persistent_connection::catalog::{Pick, StaticList};
    /// use persistent_connection::catalog::connector::CatalogConnector;
    ///
    /// let copies = StaticList::new(["10.0.0.1:50051".parse().unwrap()]);
    /// let connector = CatalogConnector::new(copies, Pick::InOrder)
    ///     .copy_timeout(Duration::from_millis(500))
    ///     .tcp_options(TcpOptions::new().user_timeout(Duration::from_secs(5)));
    /// # drop(connector);
    /// ```
    pub fn tcp_options(mut self, options: TcpOptions) -> Self {
        self.tcp_options = options;
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
        let timeout = self.copy_timeout;
        let lookup_timeout = self.lookup_timeout;
        let options = self.tcp_options;
        async move {
            let listed = with_timeout(catalog_name::<K>, lookup_timeout, catalog.lookup())
                .await
                .map_err(IoError::from)?;
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
                match connect_one(addr, timeout, &options).await {
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

/// `the catalog StaticList<SocketAddr>`: the catalog's type name without its paths, to
/// name it in a lookup timeout (a [`Catalog`] has no name of its own).
fn catalog_name<K>() -> String {
    let full = std::any::type_name::<K>();
    let mut short = String::from("the catalog ");
    let mut segment = short.len();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            // `a::b::C`: what came before `::` is a path; keep only the last segment.
            chars.next();
            short.truncate(segment);
        } else {
            short.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                segment = short.len();
            }
        }
    }
    short
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

/// Connects to one copy within `timeout`, with `options`; a failure names the address and
/// the step.
async fn connect_one(
    addr: SocketAddr,
    timeout: Duration,
    options: &TcpOptions,
) -> Result<TcpStream, IoError> {
    let failed = |step: &str, e: io::Error| IoError::new(e.kind(), format!("{step} {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| failed("socket to connect to", e))?;
    if let Some(local) = options.bound_local_addr() {
        socket
            .bind(local)
            .map_err(|e| failed(&format!("bind {local} to connect to"), e))?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(failed("connect to", e)),
        Err(_) => {
            return Err(IoError::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr}: timed out after {timeout:?}"),
            ));
        }
    };
    options
        .apply(&stream)
        .map_err(|e| failed("TCP options on the connection to", e))?;
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
