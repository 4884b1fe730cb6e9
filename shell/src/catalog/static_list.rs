//! A fixed list of addresses.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::{Catalog, CatalogError};

/// A fixed list of addresses: the simplest catalog, for a known set of redundant servers.
/// Cheap to clone.
///
/// ```
/// use std::net::SocketAddr;
/// use persistent_connection::catalog::{Catalog, Pick, StaticList};
///
/// # tokio_test::block_on(async {
/// let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
/// let b: SocketAddr = "127.0.0.1:7001".parse().unwrap();
/// let get_address = StaticList::new([a, b]).get_address::<String>(Pick::RoundRobin);
/// assert_eq!(get_address().await, Ok(a));
/// assert_eq!(get_address().await, Ok(b));
///
/// let none = StaticList::<SocketAddr>::new([]).get_address::<String>(Pick::InOrder);
/// assert_eq!(none().await, Err("no address listed in a static list".to_owned()));
/// # });
/// ```
#[derive(Clone)]
pub struct StaticList<A> {
    addresses: Arc<[A]>,
}

impl<A: fmt::Debug> fmt::Debug for StaticList<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StaticList").field(&self.addresses).finish()
    }
}

impl<A> StaticList<A> {
    /// A catalog that always lists `addresses`, in this order.
    pub fn new(addresses: impl IntoIterator<Item = A>) -> StaticList<A> {
        StaticList {
            addresses: addresses.into_iter().collect(),
        }
    }

    /// The listed addresses.
    pub fn addresses(&self) -> &[A] {
        &self.addresses
    }
}

impl<A> Catalog for StaticList<A>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    type Address = A;

    fn lookup(&self) -> impl Future<Output = Result<Vec<A>, CatalogError>> + Send {
        let listed = if self.addresses.is_empty() {
            Err(CatalogError::Empty {
                catalog: "a static list".to_owned(),
            })
        } else {
            Ok(self.addresses.to_vec())
        };
        std::future::ready(listed)
    }
}
