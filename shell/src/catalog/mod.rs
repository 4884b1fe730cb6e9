//! Ready `get_address` sources: catalogs where redundant copies of a service are listed,
//! and a picker that chooses one copy per attempt.
//!
//! The original's `get_address` "might look up a server's host and port in a catalog at a
//! particular path to which multiple redundant copies of a service are publishing their
//! location. If one copy dies, we get the address of another one." A [`Catalog`] is that
//! lookup: it returns every address listed now. [`Catalog::get_address`] turns it into the
//! closure the builder takes, choosing one address per attempt with a [`Pick`] policy.
//!
//! Catalogs shipped here:
//!
//! - [`StaticList`]: a fixed list of addresses.
//! - [`Dns`]: a host name resolved before every attempt (all its A/AAAA records), with its
//!   own timeout.
//! - `etcd::EtcdCatalog` (cargo feature `etcd`, off by default): the live addresses under a
//!   key prefix in etcd, where servers publish themselves with `etcd::EtcdPublisher`.
//!
//! # Which address an attempt gets
//!
//! `get_address` is only called again when the previous attempt did not leave a lasting
//! connection: its lookup or connect failed (R4), or the connection it made has closed
//! (R6). So the picker counts every address it hands out as *tried*, and the next pick
//! prefers a listed address that has not been tried yet. Once every listed address has
//! been tried, a new sweep starts (the tried set is cleared), and even then the address
//! handed out last is skipped if another one is listed. A round that meets a refused
//! address therefore tries the other published copies next, not the same one again, and
//! every copy gets a turn before any is retried. Addresses that leave the listing leave the
//! tried set too. The [`Pick`] policy decides among the candidates: the first in listing
//! order, the next after the previous pick, or a seeded random one.
//!
//! Use one `get_address()` closure per persistent connection: its tried set is that
//! connection's history.
//!
//! # Interaction with de-duplication (R3, R4)
//!
//! R3 suppresses an `ObtainedAddress` event only when an attempt obtains the same address
//! as the previous one of its round. With two or more listed addresses the picker never
//! returns the same address twice in a row, so each attempt's address is announced; with a
//! single listed address every attempt obtains it and it is announced once per round, as
//! without a catalog. R4 compares errors, not addresses: a failure is announced when it
//! differs from the previous failure of the round. [`TcpConnection`](crate::TcpConnection)'s
//! connect errors name the address, so while the picker alternates between copies that all
//! refuse, consecutive failures differ and each attempt shows an `ObtainedAddress` and a
//! `FailedToConnect` naming that copy; a connect function whose error leaves the address
//! out would show one `FailedToConnect` for the whole round. A catalog failure (etcd down,
//! a lookup timeout) does not depend on the address: it is announced once while it
//! repeats, and retried on the jittered schedule.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use persistent_connection::catalog::{Catalog, Pick, StaticList};
//! use persistent_connection::{IoError, PersistentConnection, TcpConnection};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let live = listener.local_addr().unwrap();
//! // A port nobody listens on: connecting to it is refused.
//! let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let refused = dead.local_addr().unwrap();
//! drop(dead);
//!
//! let catalog = StaticList::new([refused, live]);
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     catalog.get_address::<IoError>(Pick::InOrder),
//!     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
//! )
//! .retry_policy(std::time::Duration::from_millis(10))
//! .build();
//! // The first attempt is refused; the second goes to the other listed copy.
//! let conn = pc.connected().await;
//! assert_eq!(conn.peer_addr(), live);
//! pc.close().await;
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{IoError, Keyed};

#[cfg(feature = "connector")]
pub mod connector;
mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
mod pick;
mod static_list;

pub use dns::{Dns, IpFamily};
pub use pick::{Pick, Picker};
pub use static_list::StaticList;

/// A future as [`Catalog::get_address`]'s closure returns it.
pub type LookupFuture<A, E> = Pin<Box<dyn Future<Output = Result<A, E>> + Send + 'static>>;

/// Why a catalog lookup failed. Equality compares what identifies the failure (which
/// catalog, which key, the message), so repeated identical failures are de-duplicated into
/// one `FailedToConnect` event per round (R4).
///
/// Convert it into the persistent connection's error type with `From`: [`IoError`],
/// `String`, and [`Keyed<E, String>`](Keyed) for any client error `E` made from an
/// `io::Error` (`redis::RedisError`, `hyper` clients' errors…) are provided, so
/// [`Catalog::get_address`] works with them directly.
///
/// ```
/// use std::io;
/// use persistent_connection::IoError;
/// use persistent_connection::catalog::CatalogError;
///
/// let e = CatalogError::Malformed {
///     key: "/services/echo/a".into(),
///     value: "not an address".into(),
///     reason: "invalid socket address syntax".into(),
/// };
/// assert_eq!(
///     e.to_string(),
///     "malformed address under key \"/services/echo/a\": \"not an address\" \
///      (invalid socket address syntax)"
/// );
/// assert_eq!(IoError::from(e).kind(), io::ErrorKind::InvalidData);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CatalogError {
    /// The catalog lists no address.
    Empty {
        /// Which catalog, e.g. `etcd prefix "/services/echo/"`.
        catalog: String,
    },
    /// The lookup did not finish within the catalog's lookup timeout.
    TimedOut {
        /// Which catalog.
        catalog: String,
        /// The timeout.
        after: Duration,
    },
    /// The lookup itself failed: the name does not resolve, etcd is unreachable…
    Lookup {
        /// Which catalog.
        catalog: String,
        /// What went wrong.
        message: String,
    },
    /// A value under the catalog's prefix is not an address, and no other listed value is.
    Malformed {
        /// The key whose value is malformed.
        key: String,
        /// The value, lossily decoded as UTF-8.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::Empty { catalog } => write!(f, "no address listed in {catalog}"),
            CatalogError::TimedOut { catalog, after } => {
                write!(f, "lookup in {catalog} timed out after {after:?}")
            }
            CatalogError::Lookup { catalog, message } => {
                write!(f, "lookup in {catalog} failed: {message}")
            }
            CatalogError::Malformed { key, value, reason } => {
                write!(
                    f,
                    "malformed address under key {key:?}: {value:?} ({reason})"
                )
            }
        }
    }
}

impl std::error::Error for CatalogError {}

impl CatalogError {
    /// The [`io::ErrorKind`] closest to this failure: `NotFound` (empty), `TimedOut`,
    /// `InvalidData` (malformed) or `Other` (lookup).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            CatalogError::Empty { .. } => io::ErrorKind::NotFound,
            CatalogError::TimedOut { .. } => io::ErrorKind::TimedOut,
            CatalogError::Lookup { .. } => io::ErrorKind::Other,
            CatalogError::Malformed { .. } => io::ErrorKind::InvalidData,
        }
    }
}

impl From<CatalogError> for IoError {
    fn from(e: CatalogError) -> IoError {
        IoError::new(e.kind(), e.to_string())
    }
}

impl From<CatalogError> for String {
    fn from(e: CatalogError) -> String {
        e.to_string()
    }
}

/// The recommended error of a real client, `Keyed<ClientError, String>` (see [`Keyed`]):
/// the catalog failure becomes the client's own error through its `From<io::Error>`
/// ([`CatalogError::kind`] and the failure's text), keyed by that text, so a repeated
/// catalog failure is reported once (R4) and a different one is reported.
///
/// ```
/// use persistent_connection::Keyed;
/// use persistent_connection::catalog::{Catalog, CatalogError, Pick, StaticList};
///
/// type Failure = Keyed<std::io::Error, String>; // e.g. Keyed<redis::RedisError, String>
/// # tokio_test::block_on(async {
/// let get_address = StaticList::<u16>::new([]).get_address::<Failure>(Pick::InOrder);
/// let e = get_address().await.unwrap_err();
/// assert_eq!(e.key(), "no address listed in a static list");
/// assert_eq!(e.error().kind(), std::io::ErrorKind::NotFound);
/// # });
/// ```
impl<E: From<io::Error>> From<CatalogError> for Keyed<E, String> {
    fn from(e: CatalogError) -> Keyed<E, String> {
        let text = e.to_string();
        Keyed::with_key(E::from(io::Error::new(e.kind(), text.clone())), text)
    }
}

/// A place where the redundant copies of a service are listed.
///
/// [`lookup`](Catalog::lookup) returns every address listed now, in a stable order (the
/// [`Pick`] policy relies on it); [`get_address`](Catalog::get_address) makes the
/// builder's `get_address` closure out of it. Implement it for your own catalog to get the
/// same picking behaviour.
///
/// ```
/// use persistent_connection::catalog::{Catalog, CatalogError, Pick};
///
/// /// Ports listed in a file, say.
/// struct Ports(Vec<u16>);
///
/// impl Catalog for Ports {
///     type Address = u16;
///     fn lookup(&self) -> impl Future<Output = Result<Vec<u16>, CatalogError>> + Send {
///         let ports = self.0.clone();
///         async move { Ok(ports) }
///     }
/// }
///
/// # tokio_test::block_on(async {
/// let get_address = Ports(vec![7000, 7001]).get_address::<String>(Pick::RoundRobin);
/// assert_eq!(get_address().await, Ok(7000));
/// assert_eq!(get_address().await, Ok(7001));
/// assert_eq!(get_address().await, Ok(7000));
/// # });
/// ```
pub trait Catalog: Send + Sync + 'static {
    /// What the catalog lists.
    type Address: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// Every address listed now. An empty list is reported by `get_address` as
    /// [`CatalogError::Empty`]; a catalog may also return that error itself, naming
    /// where it looked.
    fn lookup(&self) -> impl Future<Output = Result<Vec<Self::Address>, CatalogError>> + Send;

    /// Resolves when the listing may have changed after this call: a copy withdrawn, added
    /// or listed again. A persistent connection that follows the catalog
    /// (`Builder::follow`) then looks it up again: it hands over
    /// from a copy that is no longer listed, fails back to a more preferred copy
    /// ([`Pick::InOrder`]), and ends a wait between attempts when a copy not yet tried is
    /// listed. A spurious wake-up costs one lookup.
    ///
    /// The default never resolves: a catalog that cannot watch is looked up before each
    /// attempt only, as before. [`StaticList`] resolves on
    /// [`replace`](StaticList::replace), [`Dns`] every
    /// [`refresh`](Dns::refresh) interval if one is set, the etcd catalog when its watch
    /// sees a key put or deleted.
    fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        std::future::pending()
    }

    /// The builder's `get_address`: each call looks the catalog up and picks one listed
    /// address with `pick`, preferring addresses it has not handed out since the last
    /// sweep (see the [module docs](self)). `E` is the persistent connection's error type.
    fn get_address<E>(
        self,
        pick: Pick,
    ) -> impl Fn() -> LookupFuture<Self::Address, E> + Send + Sync + 'static
    where
        Self: Sized,
        E: From<CatalogError> + 'static,
    {
        let catalog = Arc::new(self);
        let picker = Arc::new(Mutex::new(Picker::new(pick)));
        move || {
            let catalog = catalog.clone();
            let picker = picker.clone();
            Box::pin(async move {
                let listed = catalog.lookup().await.map_err(E::from)?;
                let picked = picker
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .pick(&listed);
                picked.ok_or_else(|| {
                    E::from(CatalogError::Empty {
                        catalog: "the catalog".to_owned(),
                    })
                })
            })
        }
    }
}

/// Runs `lookup` under `timeout`, naming `catalog` in the error.
pub(crate) async fn with_timeout<T>(
    catalog: impl FnOnce() -> String,
    timeout: Duration,
    lookup: impl Future<Output = Result<T, CatalogError>>,
) -> Result<T, CatalogError> {
    match tokio::time::timeout(timeout, lookup).await {
        Ok(result) => result,
        Err(_) => Err(CatalogError::TimedOut {
            catalog: catalog(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_errors_convert_to_io_errors_of_the_right_kind() {
        let empty = CatalogError::Empty {
            catalog: "x".into(),
        };
        assert_eq!(IoError::from(empty).kind(), io::ErrorKind::NotFound);
        let t = CatalogError::TimedOut {
            catalog: "x".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(IoError::from(t.clone()).kind(), io::ErrorKind::TimedOut);
        assert_eq!(String::from(t), "lookup in x timed out after 1s");
    }
}
