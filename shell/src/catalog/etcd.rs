//! etcd as a catalog (cargo feature `etcd`): servers publish themselves under a key prefix,
//! one key per copy, each held by a lease they keep alive; clients list the prefix before
//! every attempt.
//!
//! - [`EtcdPublisher`] (server side): registers an address under a key with a lease and
//!   keeps the lease alive. A copy that stops cleanly ([`EtcdPublisher::withdraw`] or
//!   drop) revokes its lease and disappears from the catalog at once; a copy that dies
//!   (`kill -9`, a crash, a lost network) stops renewing and disappears after its TTL.
//! - [`EtcdCatalog`] (client side): a [`Catalog`] listing the values under the prefix.
//!   Every lookup is one range read with a timeout; etcd being down is a failed attempt
//!   ([`CatalogError::Lookup`] or [`CatalogError::TimedOut`]), logged, de-duplicated and
//!   retried on the persistent connection's schedule, never a panic or a hang.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdPublisher};
//! use persistent_connection::catalog::{Catalog, Pick};
//! use persistent_connection::{IoError, PersistentConnection, TcpConnection};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = ["http://127.0.0.1:2379"];
//! // In each server process:
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let me = listener.local_addr()?;
//! let publication =
//!     EtcdPublisher::publish(&endpoints, "/services/echo/copy-1", me, Duration::from_secs(2))
//!         .await?;
//!
//! // In the client:
//! let catalog = EtcdCatalog::new(&endpoints, "/services/echo/");
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     catalog.get_address::<IoError>(Pick::Random { seed: 7 }),
//!     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
//! )
//! .build();
//! let conn = pc.connected().await;
//!
//! // The server stops cleanly: its key is gone at once.
//! publication.withdraw().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, WatchOptions,
};
use tokio::task::JoinHandle;

use super::{Catalog, CatalogError, with_timeout};

/// The etcd client crate this module is built on, for direct use of etcd beside the
/// catalog (same version, no second copy in the build).
pub use etcd_client;

/// How long one etcd request of the catalog or the publisher may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

fn etcd_error(catalog: &str, e: etcd_client::Error) -> CatalogError {
    CatalogError::Lookup {
        catalog: catalog.to_owned(),
        message: describe_etcd_error(&e),
    }
}

/// A short, stable text for an etcd error: the gRPC code and message, and the root cause
/// (e.g. `Unavailable: tcp connect error (Connection refused (os error 111))`). Stable, so
/// that a repeated failure is de-duplicated (R4).
fn describe_etcd_error(e: &etcd_client::Error) -> String {
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(status) => (
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    let mut root = None;
    while let Some(s) = source {
        root = Some(s);
        source = s.source();
    }
    if let Some(root) = root {
        let root = root.to_string();
        if !text.contains(&root) {
            text = format!("{text} ({root})");
        }
    }
    text
}

async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, etcd_client::Error> {
    // No per-request timeout in the client: every request is bounded by our own timeout
    // (one error type, `CatalogError::TimedOut`), and a keep-alive stream must not expire.
    let options = ConnectOptions::new().with_connect_timeout(timeout);
    Client::connect(endpoints, Some(options)).await
}

/// The live addresses under a key prefix in etcd, in key order: one key per published copy
/// (see [`EtcdPublisher`]). Values are parsed as `A` (default [`SocketAddr`]) with
/// `FromStr`.
///
/// A value that does not parse is skipped with a warning naming its key; if no value under
/// the prefix parses, the lookup fails with [`CatalogError::Malformed`] naming the first
/// bad key. An empty prefix fails with [`CatalogError::Empty`]. Every lookup is bounded by
/// the lookup timeout (default [`DEFAULT_TIMEOUT`]).
///
/// By default every lookup is one range read of the prefix. With
/// [`watch_cache`](EtcdCatalog::watch_cache), a background task keeps a local copy of the
/// prefix fed by an etcd watch, and lookups read it while the watch is healthy.
///
/// The etcd client is made on the first lookup and made again after a failed one, so a
/// catalog created while etcd is down works once etcd is up. Cheap to clone: clones share
/// the client and the cache; the cache's task stops when the last clone is dropped.
pub struct EtcdCatalog<A = SocketAddr> {
    inner: Arc<CatalogInner>,
    _address: PhantomData<fn() -> A>,
}

#[derive(Clone, Debug)]
struct Settings {
    endpoints: Vec<String>,
    prefix: String,
    describe: String,
    timeout: Duration,
    watch_cache: bool,
}

struct CatalogInner {
    settings: Settings,
    client: tokio::sync::Mutex<Option<Client>>,
    /// The watch-fed copy of the prefix, when enabled.
    cache: Option<Arc<Mutex<CacheState>>>,
    /// The task feeding it, started by the first lookup.
    cache_task: OnceLock<JoinHandle<()>>,
}

impl Drop for CatalogInner {
    fn drop(&mut self) {
        if let Some(task) = self.cache_task.get() {
            task.abort();
        }
    }
}

/// The local copy of the prefix: valid only while `synced` (a range read done and the watch
/// that follows it still running).
#[derive(Debug, Default)]
struct CacheState {
    synced: bool,
    kvs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl<A> Clone for EtcdCatalog<A> {
    fn clone(&self) -> Self {
        EtcdCatalog {
            inner: self.inner.clone(),
            _address: PhantomData,
        }
    }
}

impl<A> fmt::Debug for EtcdCatalog<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdCatalog")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl EtcdCatalog<SocketAddr> {
    /// A catalog of the socket addresses under `prefix`, read from the etcd cluster at
    /// `endpoints` (e.g. `["http://127.0.0.1:2379"]`). Nothing is contacted until the
    /// first lookup. Use [`parse_as`](EtcdCatalog::parse_as) for another address type.
    pub fn new(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        prefix: impl Into<String>,
    ) -> EtcdCatalog<SocketAddr> {
        let prefix = prefix.into();
        EtcdCatalog::from_settings(Settings {
            endpoints: endpoints
                .into_iter()
                .map(|e| e.as_ref().to_owned())
                .collect(),
            describe: format!("etcd prefix {prefix:?}"),
            prefix,
            timeout: DEFAULT_TIMEOUT,
            watch_cache: false,
        })
    }
}

impl<A> EtcdCatalog<A> {
    fn from_settings(settings: Settings) -> EtcdCatalog<A> {
        let cache = settings
            .watch_cache
            .then(|| Arc::new(Mutex::new(CacheState::default())));
        EtcdCatalog {
            inner: Arc::new(CatalogInner {
                settings,
                client: tokio::sync::Mutex::new(None),
                cache,
                cache_task: OnceLock::new(),
            }),
            _address: PhantomData,
        }
    }

    /// The same catalog, with values parsed as `B`.
    pub fn parse_as<B>(self) -> EtcdCatalog<B> {
        EtcdCatalog {
            inner: self.inner,
            _address: PhantomData,
        }
    }

    /// How long a lookup may take (connecting included) before the attempt fails with
    /// [`CatalogError::TimedOut`]. Returns a new catalog (clones made before keep their
    /// setting).
    pub fn lookup_timeout(self, timeout: Duration) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.timeout = timeout;
        EtcdCatalog::from_settings(settings)
    }

    /// Keep a local copy of the prefix, fed by an etcd watch, and answer lookups from it:
    /// a lookup is then a local read (no round trip to etcd). The first lookup starts the
    /// watch task on the current Tokio runtime; it stops when the last clone of the catalog
    /// is dropped.
    ///
    /// The copy is used only while the watch is healthy (the connection to etcd is checked
    /// with HTTP/2 keep-alives every second). Before the first sync and whenever the watch
    /// breaks, lookups fall back to a range read, so they fail while etcd is down exactly as
    /// without the cache, and never serve a list that etcd no longer vouches for. Returns a
    /// new catalog (clones made before keep their setting).
    pub fn watch_cache(self) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.watch_cache = true;
        EtcdCatalog::from_settings(settings)
    }

    /// Whether lookups are answered from the watch cache now: it is enabled, synced, and
    /// its watch is running.
    pub fn watch_cache_in_sync(&self) -> bool {
        self.inner
            .cache
            .as_ref()
            .is_some_and(|c| c.lock().unwrap_or_else(|p| p.into_inner()).synced)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }
}

impl CatalogInner {
    /// One range read of the prefix. A failure drops the client so the next lookup makes
    /// a new one.
    async fn list(&self) -> Result<Vec<KeyValue>, CatalogError> {
        let s = &self.settings;
        let mut slot = self.client.lock().await;
        let mut client = match &*slot {
            Some(c) => c.clone(),
            None => {
                let c = connect(&s.endpoints, s.timeout)
                    .await
                    .map_err(|e| etcd_error(&s.describe, e))?;
                *slot = Some(c.clone());
                c
            }
        };
        drop(slot);
        match client
            .get(s.prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(mut response) => Ok(response.take_kvs()),
            Err(e) => {
                *self.client.lock().await = None;
                Err(etcd_error(&s.describe, e))
            }
        }
    }

    /// The cached listing, parsed, if the cache is enabled and in sync; starts the watch
    /// task on first use.
    fn cached<A>(&self) -> Option<Result<Vec<A>, CatalogError>>
    where
        A: FromStr,
        A::Err: fmt::Display,
    {
        let cache = self.cache.as_ref()?;
        self.cache_task
            .get_or_init(|| tokio::spawn(watch_prefix(self.settings.clone(), cache.clone())));
        let state = cache.lock().unwrap_or_else(|p| p.into_inner());
        if !state.synced {
            return None;
        }
        Some(parse_listing(
            &self.settings.describe,
            state.kvs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ))
    }
}

/// The watch task: range read, then watch from the next revision, applying every change
/// to the cache; on any error, mark the cache out of sync and start over after a pause.
async fn watch_prefix(settings: Settings, cache: Arc<Mutex<CacheState>>) {
    let pause = Duration::from_millis(200);
    loop {
        let result = sync_and_watch(&settings, &cache).await;
        cache.lock().unwrap_or_else(|p| p.into_inner()).synced = false;
        if let Err(e) = result {
            tracing::warn!(catalog = %settings.describe, error = %e, "etcd watch broke; resyncing");
        }
        tokio::time::sleep(pause).await;
    }
}

async fn sync_and_watch(
    settings: &Settings,
    cache: &Arc<Mutex<CacheState>>,
) -> Result<(), CatalogError> {
    let describe = &settings.describe;
    let err = |e| etcd_error(describe, e);
    let timeout = settings.timeout;
    let options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true);
    let read = async {
        let mut client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(err)?;
        let mut response = client
            .get(
                settings.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(err)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let kvs = response.take_kvs();
        let stream = client
            .watch(
                settings.prefix.as_bytes(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(err)?;
        Ok::<_, CatalogError>((client, kvs, stream))
    };
    let (_client, kvs, mut stream) = with_timeout(|| describe.clone(), timeout, read).await?;
    {
        let mut state = cache.lock().unwrap_or_else(|p| p.into_inner());
        state.kvs = kvs
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        state.synced = true;
    }
    while let Some(response) = stream.message().await.map_err(err)? {
        if response.canceled() {
            return Err(CatalogError::Lookup {
                catalog: describe.clone(),
                message: format!("watch cancelled: {}", response.cancel_reason()),
            });
        }
        let mut state = cache.lock().unwrap_or_else(|p| p.into_inner());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    state.kvs.insert(kv.key().to_vec(), kv.value().to_vec());
                }
                EventType::Delete => {
                    state.kvs.remove(kv.key());
                }
            }
        }
    }
    Err(CatalogError::Lookup {
        catalog: describe.clone(),
        message: "watch stream ended".to_owned(),
    })
}

/// Parses a listing of `(key, value)` pairs: the values that parse as `A`, in key order; a
/// warning for each that does not.
fn parse_listing<'a, A>(
    describe: &str,
    entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Vec<A>, CatalogError>
where
    A: FromStr,
    A::Err: fmt::Display,
{
    let mut listed = Vec::new();
    let mut first_bad = None;
    for (key, value) in entries {
        let value = String::from_utf8_lossy(value);
        match value.trim().parse::<A>() {
            Ok(a) => listed.push(a),
            Err(e) => {
                let key = String::from_utf8_lossy(key).into_owned();
                tracing::warn!(
                    catalog = describe,
                    key = %key,
                    value = %value,
                    error = %e,
                    "skipping a malformed address in the catalog"
                );
                first_bad.get_or_insert(CatalogError::Malformed {
                    key,
                    value: value.into_owned(),
                    reason: e.to_string(),
                });
            }
        }
    }
    if listed.is_empty() {
        return Err(first_bad.unwrap_or_else(|| CatalogError::Empty {
            catalog: describe.to_owned(),
        }));
    }
    Ok(listed)
}

impl<A> Catalog for EtcdCatalog<A>
where
    A: FromStr + Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    A::Err: fmt::Display,
{
    type Address = A;

    fn lookup(&self) -> impl Future<Output = Result<Vec<A>, CatalogError>> + Send {
        let inner = self.inner.clone();
        async move {
            if let Some(listed) = inner.cached() {
                return listed;
            }
            let describe = inner.settings.describe.clone();
            let timeout = inner.settings.timeout;
            let listed = with_timeout(|| describe.clone(), timeout, inner.list()).await;
            match listed {
                Ok(kvs) => parse_listing(
                    &inner.settings.describe,
                    kvs.iter().map(|kv| (kv.key(), kv.value())),
                ),
                Err(e) => {
                    if matches!(e, CatalogError::TimedOut { .. }) {
                        // The client may be stuck on a dead endpoint: start afresh.
                        *inner.client.lock().await = None;
                    }
                    Err(e)
                }
            }
        }
    }
}

/// A server's entry in an etcd catalog: `key = address`, attached to a lease of `ttl` that a
/// background task keeps alive (renewing every third of the TTL).
///
/// - [`withdraw`](EtcdPublisher::withdraw) (or dropping the publisher inside a Tokio
///   runtime) revokes the lease: the key is deleted at once.
/// - If the process dies, renewals stop and etcd deletes the key when the TTL runs out.
/// - If etcd is unreachable for a while, the task keeps trying; if the lease expired
///   meanwhile (or was revoked by someone else), it grants a new one and writes the key
///   again, so a copy that outlives an etcd outage is listed again once etcd is back.
///
/// etcd rounds the TTL up to whole seconds and to its own minimum (about 1.5 × its
/// election timeout). Give each copy its own key under the catalog's prefix (two
/// publishers of one key overwrite each other).
pub struct EtcdPublisher {
    key: String,
    lease: Arc<AtomicI64>,
    client: Client,
    timeout: Duration,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for EtcdPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdPublisher")
            .field("key", &self.key)
            .field("lease", &self.lease_id())
            .finish_non_exhaustive()
    }
}

fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Grants a lease and writes `key = value` under it; returns the lease id.
async fn register(
    client: &mut Client,
    key: &str,
    value: &str,
    ttl: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl, None).await?.id();
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        let _ = client.lease_revoke(lease).await;
        return Err(e);
    }
    Ok(lease)
}

impl EtcdPublisher {
    /// Publishes `address` under `key` with a lease of `ttl`, in the etcd cluster at
    /// `endpoints`, and starts keeping it alive on the current Tokio runtime. Fails if
    /// etcd cannot be reached within [`DEFAULT_TIMEOUT`].
    pub async fn publish(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        key: impl Into<String>,
        address: impl fmt::Display,
        ttl: Duration,
    ) -> Result<EtcdPublisher, CatalogError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_owned())
            .collect();
        let key = key.into();
        let value = address.to_string();
        let ttl_secs = ttl_seconds(ttl);
        let timeout = DEFAULT_TIMEOUT;
        let describe = format!("etcd key {key:?}");
        let setup = async {
            let mut client = connect(&endpoints, timeout)
                .await
                .map_err(|e| etcd_error(&describe, e))?;
            let lease = register(&mut client, &key, &value, ttl_secs)
                .await
                .map_err(|e| etcd_error(&describe, e))?;
            Ok((client, lease))
        };
        let (client, lease) = with_timeout(|| describe.clone(), timeout, setup).await?;
        let lease = Arc::new(AtomicI64::new(lease));
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            key.clone(),
            value,
            ttl_secs,
            lease.clone(),
        ));
        tracing::info!(key = %key, ttl = ttl_secs, "published in etcd");
        Ok(EtcdPublisher {
            key,
            lease,
            client,
            timeout,
            keeper: Some(keeper),
        })
    }

    /// The key this copy is published under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the lease that holds the key now (it changes if the lease had to be
    /// granted again).
    pub fn lease_id(&self) -> i64 {
        self.lease.load(Ordering::Relaxed)
    }

    /// Stops keeping the lease alive and revokes it: the key is deleted at once. Fails if
    /// etcd cannot be reached within [`DEFAULT_TIMEOUT`]; the key then disappears when the
    /// TTL runs out.
    pub async fn withdraw(mut self) -> Result<(), CatalogError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let describe = format!("etcd key {:?}", self.key);
        let mut client = self.client.clone();
        let lease = self.lease_id();
        with_timeout(|| describe.clone(), self.timeout, async {
            client
                .lease_revoke(lease)
                .await
                .map(drop)
                .map_err(|e| etcd_error(&describe, e))
        })
        .await?;
        tracing::info!(key = %self.key, "withdrawn from etcd");
        Ok(())
    }
}

impl Drop for EtcdPublisher {
    /// Stops the renewals and, inside a Tokio runtime, revokes the lease in the background
    /// (bounded by the request timeout). Outside a runtime the key lasts until its TTL.
    fn drop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        keeper.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut client = self.client.clone();
            let lease = self.lease_id();
            let timeout = self.timeout;
            runtime.spawn(async move {
                let _ = tokio::time::timeout(timeout, client.lease_revoke(lease)).await;
            });
        }
    }
}

/// The renewal task: one keep-alive stream, a renewal every third of the TTL; when the
/// stream breaks, start over after a pause; whenever the lease turns out to be gone
/// (expired during an outage, or revoked by someone else), register again.
async fn keep_alive(
    mut client: Client,
    key: String,
    value: String,
    ttl: i64,
    lease: Arc<AtomicI64>,
) {
    let ttl_duration = Duration::from_secs(u64::try_from(ttl).unwrap_or(1));
    let every = (ttl_duration / 3).max(Duration::from_millis(100));
    let request_timeout = every.max(DEFAULT_TIMEOUT);
    loop {
        let id = lease.load(Ordering::Relaxed);
        let opened = tokio::time::timeout(request_timeout, client.lease_keep_alive(id)).await;
        let mut lease_gone = match opened {
            Ok(Ok((mut keeper, mut responses))) => loop {
                // Opening renewed once already.
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    break false;
                }
                match tokio::time::timeout(request_timeout, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => break true,
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break false,
                }
            },
            // The client's word for a keep-alive answered with a TTL of 0.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => true,
            Ok(Err(e)) => {
                tracing::warn!(key = %key, error = %describe_etcd_error(&e), "etcd keep-alive failed; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(key = %key, "etcd keep-alive timed out; retrying");
                false
            }
        };
        if !lease_gone {
            // Ask whether the lease itself still exists: etcd answers a TTL of -1 for a
            // lease that expired or was revoked.
            let asked =
                tokio::time::timeout(request_timeout, client.lease_time_to_live(id, None)).await;
            lease_gone = matches!(asked, Ok(Ok(r)) if r.ttl() <= 0);
        }
        if lease_gone {
            tracing::warn!(key = %key, lease = id, "etcd lease is gone; publishing again");
            match tokio::time::timeout(request_timeout, register(&mut client, &key, &value, ttl))
                .await
            {
                Ok(Ok(new)) => lease.store(new, Ordering::Relaxed),
                _ => tokio::time::sleep(every).await,
            }
        } else {
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds_and_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(300)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_seconds(Duration::MAX), i64::MAX);
    }
}
