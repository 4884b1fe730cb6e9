//! A list of addresses given by the program, which it may replace.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::{Catalog, CatalogError};

/// A list of addresses given by the program: the simplest catalog, for a known set of
/// redundant servers. Cheap to clone; clones share the list, so a program that learns of
/// a change (a config reload, its own discovery) [`replace`](StaticList::replace)s it and
/// every persistent connection following the list sees the change
/// ([`Catalog::changed`]): one whose copy left the list hands over to another copy.
///
/// ```
/// use std::net::SocketAddr;
/// use persistent_connection::catalog::{Catalog, Pick, StaticList};
///
/// # tokio_test::block_on(async {
/// let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
/// let b: SocketAddr = "127.0.0.1:7001".parse().unwrap();
/// let list = StaticList::new([a, b]);
/// let get_address = list.clone().get_address::<String>(Pick::RoundRobin);
/// assert_eq!(get_address().await, Ok(a));
/// assert_eq!(get_address().await, Ok(b));
///
/// list.replace([b]); // `a` was withdrawn
/// assert_eq!(*list.addresses(), [b]);
/// assert_eq!(get_address().await, Ok(b));
///
/// let none = StaticList::<SocketAddr>::new([]).get_address::<String>(Pick::InOrder);
/// assert_eq!(none().await, Err("no address listed in a static list".to_owned()));
/// # });
/// ```
#[derive(Clone)]
pub struct StaticList<A> {
    shared: Arc<Listed<A>>,
}

struct Listed<A> {
    addresses: RwLock<Arc<[A]>>,
    /// Bumped by every replace; [`Catalog::changed`] waits for the next bump.
    version: watch::Sender<u64>,
}

impl<A: fmt::Debug> fmt::Debug for StaticList<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StaticList").field(&self.read()).finish()
    }
}

impl<A> StaticList<A> {
    /// A catalog that lists `addresses`, in this order, until replaced.
    pub fn new(addresses: impl IntoIterator<Item = A>) -> StaticList<A> {
        StaticList {
            shared: Arc::new(Listed {
                addresses: RwLock::new(addresses.into_iter().collect()),
                version: watch::Sender::new(0),
            }),
        }
    }

    /// The listed addresses, as listed now.
    pub fn addresses(&self) -> Arc<[A]> {
        self.read()
    }

    /// Lists `addresses` instead, in this order, and wakes whoever waits for a change
    /// ([`Catalog::changed`]). A persistent connection following this list then hands
    /// over from a copy that is no longer listed (make-before-break), and one waiting to
    /// retry tries a newly listed copy at once.
    pub fn replace(&self, addresses: impl IntoIterator<Item = A>) {
        let addresses: Arc<[A]> = addresses.into_iter().collect();
        *self
            .shared
            .addresses
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = addresses;
        self.shared.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn read(&self) -> Arc<[A]> {
        self.shared
            .addresses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl<A> Catalog for StaticList<A>
where
    A: Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
{
    type Address = A;

    fn lookup(&self) -> impl Future<Output = Result<Vec<A>, CatalogError>> + Send {
        let addresses = self.read();
        let listed = if addresses.is_empty() {
            Err(CatalogError::Empty {
                catalog: "a static list".to_owned(),
            })
        } else {
            Ok(addresses.to_vec())
        };
        std::future::ready(listed)
    }

    fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut version = self.shared.version.subscribe();
        version.mark_unchanged();
        async move {
            // The sender lives as long as the list: `changed` fails only once it is gone,
            // and then no change can come.
            if version.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replace_wakes_a_waiter_and_changes_the_listing() {
        let list = StaticList::new([1, 2]);
        let changed = list.changed();
        let waiter = tokio::spawn(changed);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        list.replace([2, 3]);
        waiter.await.unwrap();
        assert_eq!(list.lookup().await.unwrap(), [2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_replace_nothing_changes() {
        let list = StaticList::new([1]);
        let r = tokio::time::timeout(std::time::Duration::from_secs(3600), list.changed()).await;
        assert!(r.is_err());
    }
}
