//! A host name resolved before every attempt.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Catalog, CatalogError, with_timeout};

/// Which address family a [`Dns`] catalog keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IpFamily {
    /// IPv4 and IPv6 records, in the resolver's order.
    #[default]
    Any,
    /// A records only.
    V4,
    /// AAAA records only.
    V6,
}

/// A host name resolved before every attempt with the system resolver
/// (`tokio::net::lookup_host`): every A/AAAA record is a listed copy, so a name with
/// several records rotates through them. The resolution has its own timeout (default
/// [`Dns::DEFAULT_TIMEOUT`]); one that expires is a failed attempt
/// ([`CatalogError::TimedOut`]).
///
/// The listing keeps the resolver's order, so [`Pick::InOrder`](super::Pick::InOrder)
/// follows the resolver's preference and fails over to the next record.
///
/// ```
/// use persistent_connection::catalog::{Catalog, Dns, IpFamily, Pick};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dns = Dns::new("localhost", 7000).family(IpFamily::V4);
/// assert_eq!(dns.lookup().await.unwrap(), ["127.0.0.1:7000".parse().unwrap()]);
/// let get_address = dns.get_address::<String>(Pick::InOrder);
/// assert_eq!(get_address().await.unwrap().port(), 7000);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Dns {
    host: Arc<str>,
    port: u16,
    timeout: Duration,
    family: IpFamily,
    refresh: Option<Duration>,
}

impl Dns {
    /// The default resolution timeout: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Resolves `host` (a name or an IP literal) and lists its addresses with `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Dns {
        Dns {
            host: host.into().into(),
            port,
            timeout: Dns::DEFAULT_TIMEOUT,
            family: IpFamily::Any,
            refresh: None,
        }
    }

    /// How long a resolution may take before the attempt fails.
    pub fn timeout(mut self, timeout: Duration) -> Dns {
        self.timeout = timeout;
        self
    }

    /// Keep only the records of this family.
    pub fn family(mut self, family: IpFamily) -> Dns {
        self.family = family;
        self
    }

    /// Resolve the name again every `interval` while a persistent connection follows it
    /// ([`Catalog::changed`] resolves after each interval), so that a record that is no
    /// longer given is noticed without waiting for the connection to break, and a new one
    /// is tried at once after a failure. Off by default: DNS has no way to announce a
    /// change, and each refresh is a query. A zero interval is taken as 1 s.
    pub fn refresh(mut self, interval: Duration) -> Dns {
        self.refresh = Some(interval.max(Duration::from_secs(1)));
        self
    }

    fn describe(&self) -> String {
        format!("DNS name {:?}", self.host)
    }
}

impl Dns {
    /// Resolves with `resolve` (the system resolver, or a stand-in in unit tests) under the
    /// timeout, keeping the records of the family, each once.
    async fn lookup_with<I>(
        &self,
        resolve: impl Future<Output = io::Result<I>>,
    ) -> Result<Vec<SocketAddr>, CatalogError>
    where
        I: Iterator<Item = SocketAddr>,
    {
        let listing = async {
            let records = resolve.await.map_err(|e| CatalogError::Lookup {
                catalog: self.describe(),
                message: e.to_string(),
            })?;
            let mut listed: Vec<SocketAddr> = Vec::new();
            for a in records {
                let keep = match self.family {
                    IpFamily::Any => true,
                    IpFamily::V4 => a.is_ipv4(),
                    IpFamily::V6 => a.is_ipv6(),
                };
                // The resolver may return a record once per socket type.
                if keep && !listed.contains(&a) {
                    listed.push(a);
                }
            }
            if listed.is_empty() {
                return Err(CatalogError::Empty {
                    catalog: self.describe(),
                });
            }
            Ok(listed)
        };
        with_timeout(|| self.describe(), self.timeout, listing).await
    }
}

impl Catalog for Dns {
    type Address = SocketAddr;

    fn lookup(&self) -> impl Future<Output = Result<Vec<SocketAddr>, CatalogError>> + Send {
        let this = self.clone();
        async move {
            let resolve = tokio::net::lookup_host((&*this.host, this.port));
            this.lookup_with(resolve).await
        }
    }

    fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let refresh = self.refresh;
        async move {
            match refresh {
                Some(interval) => tokio::time::sleep(interval).await,
                None => std::future::pending().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_resolution_that_outlasts_its_timeout_fails_with_timed_out() {
        let dns = Dns::new("example", 80).timeout(Duration::from_secs(3));
        let hung = std::future::pending::<io::Result<std::vec::IntoIter<SocketAddr>>>();
        let started = tokio::time::Instant::now();
        let e = dns.lookup_with(hung).await.unwrap_err();
        assert_eq!(
            e,
            CatalogError::TimedOut {
                catalog: "DNS name \"example\"".into(),
                after: Duration::from_secs(3)
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_resolver_error_is_a_lookup_failure_naming_the_host() {
        let dns = Dns::new("example", 80);
        let failed =
            async { Err::<std::vec::IntoIter<SocketAddr>, _>(io::Error::other("no such host")) };
        let e = dns.lookup_with(failed).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "lookup in DNS name \"example\" failed: no such host"
        );
    }

    #[tokio::test]
    async fn duplicate_records_are_listed_once_in_resolver_order() {
        let a: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let dns = Dns::new("example", 80);
        let records = async { Ok(vec![a, b, a, b].into_iter()) };
        assert_eq!(dns.lookup_with(records).await.unwrap(), [a, b]);
    }
}
