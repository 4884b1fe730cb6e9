//! The etcd catalog: [`EtcdCatalog`] lists the copies published under a prefix, from a
//! watch-fed cache.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions};
use tokio::task::JoinHandle;

use super::*;
use crate::catalog::{Catalog, CatalogError, with_timeout};

/// The live addresses under a key prefix in etcd, in key order: one key per published copy
/// (see [`EtcdPublisher`]). Values are parsed as `A` (default [`SocketAddr`]) with
/// `FromStr`.
///
/// The prefix always ends with `/` ([`new`](EtcdCatalog::new) adds it), so it never lists
/// another service whose name starts the same. A value that does not parse is skipped with
/// a warning naming its key; if no value under the prefix parses, the lookup fails with
/// [`CatalogError::Malformed`] naming the first bad key. An empty prefix fails with
/// [`CatalogError::Empty`]. Every lookup is bounded by the request timeout (default
/// [`DEFAULT_TIMEOUT`]; see the [module docs](super) on the builder's timeout).
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
pub(super) struct Settings {
    options: EtcdOptions,
    prefix: String,
    describe: String,
    watch_cache: bool,
}

pub(super) struct CatalogInner {
    settings: Settings,
    /// One client per member (made on first use, dropped when it fails).
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    /// The member that answered last: the next lookup asks it first.
    preferred: AtomicUsize,
    /// The watch-fed copy of the prefix, when enabled.
    cache: Option<Arc<Mutex<CacheState>>>,
    /// The task feeding it, started by `watch_cache()` inside a runtime, else by the first
    /// lookup.
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
pub(super) struct CacheState {
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

/// `prefix` as a directory: with its trailing `/`.
pub(super) fn directory(prefix: String) -> String {
    if prefix.ends_with('/') {
        prefix
    } else {
        prefix + "/"
    }
}

impl EtcdCatalog<SocketAddr> {
    /// A catalog of the socket addresses under `prefix` (a `/` is added if it does not end
    /// with one), read from the etcd cluster at `endpoints` (e.g.
    /// `["http://127.0.0.1:2379"]`). Nothing is contacted until the first lookup. Use
    /// [`parse_as`](EtcdCatalog::parse_as) for another address type.
    ///
    /// ```
    /// use persistent_connection::catalog::etcd::EtcdCatalog;
    ///
    /// let catalog = EtcdCatalog::new(["http://127.0.0.1:2379"], "/services/echo");
    /// assert_eq!(catalog.prefix(), "/services/echo/"); // never /services/echo-admin/…
    /// ```
    pub fn new(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        prefix: impl Into<String>,
    ) -> EtcdCatalog<SocketAddr> {
        EtcdCatalog::with_options(EtcdOptions::new(endpoints), prefix)
    }

    /// A catalog of the socket addresses under `prefix` (a `/` is added if it does not end
    /// with one), in the etcd cluster reached with `options` (user, password, timeout).
    pub fn with_options(options: EtcdOptions, prefix: impl Into<String>) -> EtcdCatalog {
        let prefix = directory(prefix.into());
        EtcdCatalog::from_settings(Settings {
            options,
            describe: format!("etcd prefix {prefix:?}"),
            prefix,
            watch_cache: false,
        })
    }
}

impl<A> EtcdCatalog<A> {
    pub(super) fn from_settings(settings: Settings) -> EtcdCatalog<A> {
        let cache = settings
            .watch_cache
            .then(|| Arc::new(Mutex::new(CacheState::default())));
        let members = settings.options.endpoints.len().max(1);
        let inner = Arc::new(CatalogInner {
            settings,
            clients: tokio::sync::Mutex::new(vec![None; members]),
            preferred: AtomicUsize::new(0),
            cache,
            cache_task: OnceLock::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            inner.start_watch();
        }
        EtcdCatalog {
            inner,
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
    /// [`CatalogError::TimedOut`]: sets [`EtcdOptions::timeout`]. Keep it below the
    /// persistent connection's [`lookup_timeout`](crate::Builder::lookup_timeout). Returns a
    /// new catalog (clones made before keep their setting).
    pub fn lookup_timeout(self, timeout: Duration) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.options.timeout = timeout;
        EtcdCatalog::from_settings(settings)
    }

    /// Keep a local copy of the prefix, fed by an etcd watch, and answer lookups from it:
    /// a lookup is then a local read (no round trip to etcd). The watch task starts at
    /// once when called inside a Tokio runtime (else at the first lookup, on the runtime
    /// that runs it), so the copy is usually in sync before the first attempt; it stops
    /// when the last clone of the catalog is dropped.
    ///
    /// The copy is used only while the watch is healthy: the connection to etcd is checked
    /// with HTTP/2 keep-alives every second, and every half request timeout the cluster
    /// must vouch for the copy (a linearizable count of the prefix, which fails at once
    /// without quorum). Before the first sync and whenever the watch or a check fails,
    /// lookups fall back to a range read, so they fail while etcd is down as without the
    /// cache. The copy can thus be served for at most about one request timeout after the
    /// cluster stopped vouching for it (a member died, quorum was lost); a range read
    /// never is. Returns a new catalog (clones made before keep their setting).
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

    /// The key prefix, ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.inner.settings.prefix
    }

    /// How the catalog reaches etcd.
    pub fn options(&self) -> &EtcdOptions {
        &self.inner.settings.options
    }
}

impl CatalogInner {
    /// One range read of the prefix, from one member: the one that answered last, then, if
    /// it fails, each other member in turn (each try bounded by the timeout divided by the
    /// number of members). A failed member's client is dropped, so the next try of it makes
    /// a new one. When every member fails, the error lists each member's answer in endpoint
    /// order: stable while the members' states are, so a repeated failure is announced once
    /// (R4).
    pub(super) async fn list(&self) -> Result<Vec<KeyValue>, CatalogError> {
        let s = &self.settings;
        let n = s.options.endpoints.len();
        if n <= 1 {
            return self
                .list_at(0)
                .await
                .map_err(|message| CatalogError::Lookup {
                    catalog: s.describe.clone(),
                    message,
                });
        }
        let per_try = s.options.timeout / u32::try_from(n).unwrap_or(u32::MAX);
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let outcome = match tokio::time::timeout(per_try, self.list_at(i)).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    self.forget(i).await;
                    Err(format!("timed out after {per_try:?}"))
                }
            };
            match outcome {
                Ok(kvs) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(kvs);
                }
                Err(message) => failures.push((i, message)),
            }
        }
        failures.sort_by_key(|(i, _)| *i);
        let answers: Vec<String> = failures
            .into_iter()
            .map(|(i, message)| format!("{}: {message}", s.options.endpoints[i]))
            .collect();
        Err(CatalogError::Lookup {
            catalog: s.describe.clone(),
            message: format!("no member answered ({})", answers.join("; ")),
        })
    }

    /// One range read from member `i` (its client made if needed); the error's text.
    pub(super) async fn list_at(&self, i: usize) -> Result<Vec<KeyValue>, String> {
        let s = &self.settings;
        let endpoint = s.options.endpoints.get(i..=i).unwrap_or_default();
        // With several members, `list` names the member of each answer.
        let named = if s.options.endpoints.len() > 1 {
            &[]
        } else {
            endpoint
        };
        let mut slots = self.clients.lock().await;
        let mut client = match slots.get(i).cloned().flatten() {
            Some(c) => c,
            None => {
                let c =
                    async { Client::connect(endpoint, Some(s.options.connect_options()?)).await }
                        .await
                        .map_err(|e| s.options.describe(named, &e))?;
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(c.clone());
                }
                c
            }
        };
        drop(slots);
        match client
            .get(s.prefix.as_bytes(), Some(GetOptions::new().with_prefix()))
            .await
        {
            Ok(mut response) => Ok(response.take_kvs()),
            Err(e) => {
                self.forget(i).await;
                Err(s.options.describe(named, &e))
            }
        }
    }

    /// Drops member `i`'s client: the next try makes a new one.
    pub(super) async fn forget(&self, i: usize) {
        if let Some(slot) = self.clients.lock().await.get_mut(i) {
            *slot = None;
        }
    }

    /// Drops every client (a lookup cut short may have left one stuck on a dead member);
    /// skipped if a lookup holds them now.
    pub(super) fn forget_all_now(&self) {
        if let Ok(mut slots) = self.clients.try_lock() {
            slots.iter_mut().for_each(|slot| *slot = None);
        }
    }

    /// Starts the watch task, if the cache is enabled and the task is not running yet.
    pub(super) fn start_watch(&self) {
        if let Some(cache) = &self.cache {
            self.cache_task.get_or_init(|| {
                let settings = self.settings.clone();
                let cache = cache.clone();
                let unsync = cache.clone();
                tokio::spawn(guarded_task(
                    "etcd watch",
                    move || watch_prefix(settings.clone(), cache.clone()),
                    move || unsync.lock().unwrap_or_else(|p| p.into_inner()).synced = false,
                ))
            });
        }
    }

    /// The cached listing, parsed, if the cache is enabled and in sync; starts the watch
    /// task on first use.
    pub(super) fn cached<A>(&self) -> Option<Result<Vec<A>, CatalogError>>
    where
        A: FromStr,
        A::Err: fmt::Display,
    {
        let cache = self.cache.as_ref()?;
        self.start_watch();
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
pub(super) async fn watch_prefix(settings: Settings, cache: Arc<Mutex<CacheState>>) {
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

pub(super) async fn sync_and_watch(
    settings: &Settings,
    cache: &Arc<Mutex<CacheState>>,
) -> Result<(), CatalogError> {
    let describe = &settings.describe;
    let err = |e: etcd_client::Error| CatalogError::Lookup {
        catalog: describe.clone(),
        message: settings.options.describe(&settings.options.endpoints, &e),
    };
    let timeout = settings.options.timeout;
    let options = settings
        .options
        .connect_options()
        .map_err(err)?
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true);
    let read = async {
        let mut client = Client::connect(&settings.options.endpoints, Some(options))
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
    let (mut client, kvs, mut stream) = with_timeout(|| describe.clone(), timeout, read).await?;
    {
        let mut state = cache.lock().unwrap_or_else(|p| p.into_inner());
        state.kvs = kvs
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        state.synced = true;
    }
    // Every half timeout, the cluster must vouch for the copy: a linearizable count of the
    // prefix, which fails at once without quorum (no leader). A watch stream alone can stay
    // open for seconds on a member that died or lost its cluster (found by drill 6).
    let every = (timeout / 2).max(Duration::from_millis(50));
    let mut vouch = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    vouch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let response = tokio::select! {
            message = stream.message() => match message.map_err(err)? {
                Some(response) => response,
                None => break,
            },
            _ = vouch.tick() => {
                let count = client.get(
                    settings.prefix.as_bytes(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                );
                match tokio::time::timeout(every, count).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Err(err(e)),
                    Err(_) => {
                        return Err(CatalogError::TimedOut {
                            catalog: describe.clone(),
                            after: every,
                        });
                    }
                }
            }
        };
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
pub(super) fn parse_listing<'a, A>(
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

/// Armed while a lookup runs: a lookup dropped before it finished was cut short by its
/// caller (the builder's lookup timeout, or a close). It says so in the log, naming the
/// catalog and its own timeout, and starts the client afresh as the catalog's own timeout
/// would have (the client may be stuck on a dead member).
pub(super) struct LookupInFlight {
    inner: Arc<CatalogInner>,
    started: tokio::time::Instant,
    armed: bool,
}

impl Drop for LookupInFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let settings = &self.inner.settings;
        tracing::warn!(
            catalog = %settings.describe,
            after = ?self.started.elapsed(),
            lookup_timeout = ?settings.options.timeout,
            "etcd lookup cancelled before it finished: the persistent connection's \
             lookup_timeout is shorter than this catalog's (set it above), or it was closed; \
             the catalog's etcd client is started afresh"
        );
        self.inner.forget_all_now();
    }
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
            let mut in_flight = LookupInFlight {
                inner: inner.clone(),
                started: tokio::time::Instant::now(),
                armed: true,
            };
            let describe = inner.settings.describe.clone();
            let timeout = inner.settings.options.timeout;
            let listed = with_timeout(|| describe.clone(), timeout, inner.list()).await;
            in_flight.armed = false;
            match listed {
                Ok(kvs) => parse_listing(
                    &inner.settings.describe,
                    kvs.iter().map(|kv| (kv.key(), kv.value())),
                ),
                Err(e) => {
                    if matches!(e, CatalogError::TimedOut { .. }) {
                        // A client may be stuck on a dead endpoint: start afresh.
                        inner.forget_all_now();
                    }
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn a_prefix_is_a_directory() {
        assert_eq!(directory("/services/echo".into()), "/services/echo/");
        assert_eq!(directory("/services/echo/".into()), "/services/echo/");
        assert_eq!(directory(String::new()), "/");
    }
}
