//! The etcd catalog: [`EtcdCatalog`] lists the copies published under a prefix, by range
//! reads or from a watch-fed cache, and keeps serving the last list etcd vouched for while
//! etcd cannot answer (fail static).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::state::*;
use super::watch::*;
use super::*;
use crate::catalog::{Catalog, CatalogError, with_timeout};

/// How long an [`EtcdCatalog`] keeps serving the last list etcd vouched for while etcd
/// cannot answer, by default: 5 minutes (see [`EtcdCatalog::max_staleness`]).
///
/// Long enough to ride out what etcd does in ordinary life — an election (a second or
/// two), a member restarting or being replaced, a network partition healing, a cluster
/// restored from a snapshot (minutes) — without a single failed lookup. Short enough that a
/// client cut off from etcd for longer says so by failing, before a rolling deploy it did
/// not see has likely moved every copy it lists and their ports may serve something else.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(300);

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
/// **Fail static.** While etcd cannot answer (down, frozen, cut off, without quorum), a
/// lookup returns the last list etcd vouched for rather than an error, for at most
/// [`max_staleness`](EtcdCatalog::max_staleness) (default [`DEFAULT_MAX_STALENESS`]); it
/// fails only when nothing was ever listed or that bound has passed. A registry that cannot
/// answer says nothing about the service's copies, and a copy that died meanwhile costs one
/// refused connect (the picker then tries the others). The outage is logged once (warn) when
/// it starts, once more if the bound passes, and once (info) when etcd answers again;
/// [`staleness`](EtcdCatalog::staleness) says whether the catalog serves a stale list now.
///
/// [`changed`](EtcdCatalog::changed) resolves when the listed set changes (a copy published
/// or withdrawn, a lease expired), from an etcd watch.
///
/// The etcd client is made on the first lookup and made again after a failed one, so a
/// catalog created while etcd is down works once etcd is up. Cheap to clone: clones share
/// the client, the last list and the watch; the watch task stops when the last clone is
/// dropped.
pub struct EtcdCatalog<A = SocketAddr> {
    inner: Arc<CatalogInner>,
    _address: PhantomData<fn() -> A>,
}

pub(super) struct CatalogInner {
    settings: Settings,
    /// One client per member (made on first use, dropped when it fails).
    clients: tokio::sync::Mutex<Vec<Option<Client>>>,
    /// The member that answered last: the next lookup asks it first.
    preferred: AtomicUsize,
    /// The last list etcd vouched for, shared with the watch task.
    shared: Arc<Shared>,
    /// The watch task, started by `watch_cache()` inside a runtime, else by the first
    /// lookup (with the cache) or the first `changed()`.
    watch_task: OnceLock<JoinHandle<()>>,
    /// The task of range reads that looks for etcd's return runs (during an outage,
    /// without the watch cache).
    refreshing: AtomicBool,
}

impl Drop for CatalogInner {
    fn drop(&mut self) {
        if let Some(task) = self.watch_task.get() {
            task.abort();
        }
    }
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
    ///
    /// The catalog names itself in its errors and logs as `etcd prefix "<prefix>"`, with
    /// ` at <endpoint>` when there is one endpoint (with several, a failure lists each
    /// member's answer).
    pub fn with_options(options: EtcdOptions, prefix: impl Into<String>) -> EtcdCatalog {
        let prefix = directory(prefix.into());
        let describe = match options.endpoints() {
            [one] => format!("etcd prefix {prefix:?} at {one}"),
            _ => format!("etcd prefix {prefix:?}"),
        };
        EtcdCatalog::from_settings(Settings {
            options,
            describe,
            prefix,
            watch_cache: false,
            max_staleness: DEFAULT_MAX_STALENESS,
        })
    }
}

impl<A> EtcdCatalog<A> {
    pub(super) fn from_settings(settings: Settings) -> EtcdCatalog<A> {
        let members = settings.options.endpoints.len().max(1);
        let shared = Arc::new(Shared {
            describe: settings.describe.clone(),
            max_staleness: settings.max_staleness,
            known: Mutex::new(Known::default()),
            changes: watch::channel(0).0,
            cancel_warned: AtomicBool::new(false),
        });
        let inner = Arc::new(CatalogInner {
            settings,
            clients: tokio::sync::Mutex::new(vec![None; members]),
            preferred: AtomicUsize::new(0),
            shared,
            watch_task: OnceLock::new(),
            refreshing: AtomicBool::new(false),
        });
        if inner.settings.watch_cache && tokio::runtime::Handle::try_current().is_ok() {
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

    /// How long the catalog keeps serving the last list etcd vouched for while etcd cannot
    /// answer (default [`DEFAULT_MAX_STALENESS`], 5 minutes): a lookup then returns that
    /// list, and fails only if nothing was ever listed or the list is older than this.
    /// [`Duration::MAX`] serves it for as long as the outage lasts (as Envoy and gRPC's xDS
    /// clients do with their last configuration); [`Duration::ZERO`] never serves a list
    /// etcd has not just vouched for: every lookup during an outage fails. Returns a new
    /// catalog (clones made before keep their setting).
    ///
    /// The list's age counts from etcd's last answer: a range read, the watch's sync, each
    /// change it delivers and each of its checks (every half request timeout).
    ///
    /// ```
    /// use std::time::Duration;
    /// use persistent_connection::catalog::etcd::{DEFAULT_MAX_STALENESS, EtcdCatalog};
    ///
    /// let catalog = EtcdCatalog::new(["http://127.0.0.1:2379"], "/services/echo")
    ///     .max_staleness(Duration::from_secs(60));
    /// assert_eq!(catalog.max_staleness_bound(), Duration::from_secs(60));
    /// assert_eq!(DEFAULT_MAX_STALENESS, Duration::from_secs(300));
    /// ```
    pub fn max_staleness(self, bound: Duration) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.max_staleness = bound;
        EtcdCatalog::from_settings(settings)
    }

    /// The bound set with [`max_staleness`](EtcdCatalog::max_staleness).
    pub fn max_staleness_bound(&self) -> Duration {
        self.inner.settings.max_staleness
    }

    /// Keep a local copy of the prefix, fed by an etcd watch, and answer lookups from it:
    /// a lookup is then a local read (no round trip to etcd). The watch task starts at
    /// once when called inside a Tokio runtime (else at the first lookup, on the runtime
    /// that runs it), so the copy is usually in sync before the first attempt; it stops
    /// when the last clone of the catalog is dropped.
    ///
    /// The watch is checked: the connection to etcd with HTTP/2 keep-alives every second,
    /// and every half request timeout the cluster must vouch for the copy (a linearizable
    /// count of the prefix, which fails at once without quorum). When the watch or a check
    /// fails, the copy is no longer in sync, and the catalog fails static: lookups go on
    /// answering from the copy at once — as the last list etcd vouched for, bounded by
    /// [`max_staleness`](EtcdCatalog::max_staleness) — while the watch resyncs. Before the
    /// first sync, and once the bound has passed, lookups fall back to range reads. So a
    /// client whose copy dies while etcd is frozen or without quorum reaches another listed
    /// copy at once, not after etcd is back. Returns a new catalog (clones made before keep
    /// their setting).
    pub fn watch_cache(self) -> EtcdCatalog<A> {
        let mut settings = self.inner.settings.clone();
        settings.watch_cache = true;
        EtcdCatalog::from_settings(settings)
    }

    /// Whether the watch is in sync now (its copy current, vouched for by the cluster
    /// within the last half request timeout): with [`watch_cache`](EtcdCatalog::watch_cache),
    /// lookups are then answered from it as fresh.
    pub fn watch_cache_in_sync(&self) -> bool {
        self.inner.shared.known().synced
    }

    /// How stale the list this catalog serves is: while etcd cannot answer (or the watch is
    /// out of sync), how long ago etcd last vouched for the list (lookups serve it while
    /// that is below [`max_staleness`](EtcdCatalog::max_staleness)); `None` while etcd
    /// answers, and when no list was ever known. For a health endpoint or a metric: a
    /// client running on a stale list works, but its operator should know.
    ///
    /// An outage is noticed by a failed lookup (without the watch cache) or by the watch
    /// (with it, or once [`changed`](EtcdCatalog::changed) has started it), and ends at
    /// etcd's next answer.
    pub fn staleness(&self) -> Option<Duration> {
        self.inner.shared.staleness()
    }

    /// Resolves when the listed set may have changed: after the catalog's etcd watch
    /// applied a put or a delete under the prefix (a copy published or withdrawn, a lease
    /// revoked or expired), or a resync or a lookup found a different list (the first list
    /// ever found counts as one). It does not resolve for a list that stays the same, nor
    /// when etcd becomes unreachable (the last list is still served; see
    /// [`staleness`](EtcdCatalog::staleness)). This is what lets a persistent connection
    /// move off a copy that was withdrawn while it was connected to it (issue 26's
    /// handover).
    ///
    /// It counts from the call, not from the first poll: take the future before looking
    /// the catalog up, and no change in between is missed. The first call starts the
    /// catalog's watch task (one etcd watch stream and a check every half request timeout,
    /// shared by every clone; it stops when the last clone is dropped), on the runtime that
    /// polls the future; without [`watch_cache`](EtcdCatalog::watch_cache), lookups still
    /// read etcd. A change is seen within the watch's latency (a few milliseconds on a
    /// LAN).
    ///
    /// ```no_run
    /// use persistent_connection::catalog::Catalog;
    /// use persistent_connection::catalog::etcd::EtcdCatalog;
    ///
    /// # async fn demo() {
    /// let catalog = EtcdCatalog::new(["http://127.0.0.1:2379"], "/services/echo");
    /// loop {
    ///     let changed = catalog.changed();
    ///     println!("listed: {:?}", catalog.lookup().await);
    ///     changed.await;
    /// }
    /// # }
    /// ```
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.inner.shared.changes.subscribe();
        let inner: Weak<CatalogInner> = Arc::downgrade(&self.inner);
        async move {
            if let Some(inner) = inner.upgrade() {
                inner.start_watch();
            }
            if changes.changed().await.is_err() {
                // The catalog is gone: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
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
    pub(super) async fn list(&self) -> Result<Listing, CatalogError> {
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
                Ok(listing) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(listing);
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

    /// One range read from member `i` (its client made if needed); the error's text. The
    /// text does not name the member: the catalog's name does when it has one member, and
    /// [`list`](Self::list) does with several.
    pub(super) async fn list_at(&self, i: usize) -> Result<Listing, String> {
        let s = &self.settings;
        let endpoint = s.options.endpoints.get(i..=i).unwrap_or_default();
        let mut slots = self.clients.lock().await;
        let mut client = match slots.get(i).cloned().flatten() {
            Some(c) => c,
            None => {
                let c =
                    async { Client::connect(endpoint, Some(s.options.connect_options()?)).await }
                        .await
                        .map_err(|e| s.options.describe(&[], &e))?;
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
            Ok(mut response) => {
                let revision = response.header().map_or(0, |h| h.revision());
                Ok((revision, response.take_kvs()))
            }
            Err(e) => {
                self.forget(i).await;
                Err(s.options.describe(&[], &e))
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

    /// Starts the watch task if it is not running yet (on the current runtime).
    pub(super) fn start_watch(&self) {
        self.watch_task.get_or_init(|| {
            let settings = self.settings.clone();
            let shared = self.shared.clone();
            let unsync = self.shared.clone();
            tokio::spawn(guarded_task(
                "etcd watch",
                move || watch_prefix(settings.clone(), shared.clone()),
                move || unsync.known().synced = false,
            ))
        });
    }

    /// A lookup answered without asking etcd: from the watch cache while it is in sync
    /// (starting its task on first use), or the last list while etcd cannot answer (within
    /// `max_staleness`; the watch, or without the cache a task of range reads, looks for
    /// etcd's return meanwhile). `None`: ask etcd.
    pub(super) fn answer_locally<A>(self: &Arc<Self>) -> Option<Result<Vec<A>, CatalogError>>
    where
        A: FromStr,
        A::Err: fmt::Display,
    {
        if self.settings.watch_cache {
            self.start_watch();
            let known = self.shared.known();
            if known.synced {
                return Some(parse_listing(&self.settings.describe, entries(&known.kvs)));
            }
        }
        let stale = self.shared.stale()?;
        Some(parse_listing(&self.settings.describe, entries(&stale)))
    }

    /// Range reads in the background until etcd answers (at most one such task; each try
    /// bounded by the request timeout, 200 ms apart): without the watch, this is how the
    /// catalog learns that an outage has ended, asked or not. Stops when etcd answers, or
    /// when the last clone of the catalog is dropped.
    pub(super) fn recover_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.shared.known().outage.is_none() {
                    inner.refreshing.store(false, Ordering::Release);
                    return;
                }
                let describe = inner.settings.describe.clone();
                let timeout = inner.settings.options.timeout;
                match with_timeout(|| describe, timeout, inner.list()).await {
                    Ok(listing) => {
                        inner.shared.vouched(Some(listing_map(listing)));
                        inner.refreshing.store(false, Ordering::Release);
                        return;
                    }
                    Err(e) => {
                        if matches!(e, CatalogError::TimedOut { .. }) {
                            inner.forget_all_now();
                        }
                        inner.shared.failed(&e.to_string());
                    }
                }
            }
        });
    }
}

/// Armed while a lookup runs: a lookup dropped before it finished was cut short by its
/// caller (the builder's lookup timeout, or a close). It says so in the log, naming the
/// catalog and its own timeout — at warn once until etcd answers again, then at debug —
/// and starts the client afresh as the catalog's own timeout would have (the client may be
/// stuck on a dead member).
pub(super) struct LookupInFlight {
    inner: Arc<CatalogInner>,
    started: Instant,
    armed: bool,
}

impl Drop for LookupInFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let settings = &self.inner.settings;
        if self
            .inner
            .shared
            .cancel_warned
            .swap(true, Ordering::Relaxed)
        {
            tracing::debug!(
                catalog = %settings.describe,
                after = ?self.started.elapsed(),
                "etcd lookup cancelled before it finished, again"
            );
        } else {
            tracing::warn!(
                catalog = %settings.describe,
                after = ?self.started.elapsed(),
                lookup_timeout = ?settings.options.timeout,
                "etcd lookup cancelled before it finished: the persistent connection's \
                 lookup_timeout is shorter than this catalog's (set it above), or it was \
                 closed; the catalog's etcd client is started afresh (said once until etcd \
                 answers again)"
            );
        }
        self.inner.forget_all_now();
    }
}

impl<A> Catalog for EtcdCatalog<A>
where
    A: FromStr + Clone + PartialEq + fmt::Debug + Send + Sync + 'static,
    A::Err: fmt::Display,
{
    type Address = A;

    /// The etcd watch saw a key put or deleted under the prefix, a lease expire, or a
    /// resync change the listing ([`EtcdCatalog::changed`]).
    fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        EtcdCatalog::changed(self)
    }

    fn lookup(&self) -> impl Future<Output = Result<Vec<A>, CatalogError>> + Send {
        let inner = self.inner.clone();
        async move {
            if let Some(listed) = inner.answer_locally() {
                return listed;
            }
            let mut in_flight = LookupInFlight {
                inner: inner.clone(),
                started: Instant::now(),
                armed: true,
            };
            let describe = &inner.settings.describe;
            let timeout = inner.settings.options.timeout;
            let listed = with_timeout(|| describe.clone(), timeout, inner.list()).await;
            in_flight.armed = false;
            match listed {
                Ok(listing) => {
                    let (revision, kvs) = listing_map(listing);
                    let parsed = parse_listing(describe, entries(&kvs));
                    inner.shared.vouched(Some((revision, kvs)));
                    parsed
                }
                Err(e) => {
                    if matches!(e, CatalogError::TimedOut { .. }) {
                        // A client may be stuck on a dead endpoint: start afresh.
                        inner.forget_all_now();
                    }
                    // Fail static: the last list etcd vouched for, if there is one.
                    inner.shared.failed(&e.to_string());
                    if !inner.settings.watch_cache {
                        inner.recover_in_background();
                    }
                    match inner.shared.stale() {
                        Some(stale) => parse_listing(describe, entries(&stale)),
                        None => Err(e),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_staleness: Duration) -> Shared {
        Shared {
            describe: "etcd prefix \"/p/\"".into(),
            max_staleness,
            known: Mutex::new(Known::default()),
            changes: watch::channel(0).0,
            cancel_warned: AtomicBool::new(false),
        }
    }

    fn one(key: &str, value: &str) -> Kvs {
        [(key.as_bytes().to_vec(), value.as_bytes().to_vec())].into()
    }

    /// Fail static, on the paused clock: the last list is served only during an outage,
    /// only while it is younger than the bound, and never when nothing was known; an older
    /// range read does not replace a newer list; a new list wakes `changed()`, the same
    /// list does not.
    #[tokio::test(start_paused = true)]
    async fn the_last_list_is_served_during_an_outage_until_max_staleness() {
        let s = shared(Duration::from_secs(10));
        s.failed("down");
        assert_eq!(s.stale(), None, "nothing known");
        assert_eq!(s.staleness(), None);
        let mut changes = s.changes.subscribe();
        s.vouched(Some((5, one("/p/a", "1"))));
        assert!(changes.has_changed().unwrap(), "a new list is a change");
        changes.mark_unchanged();
        assert_eq!(s.stale(), None, "etcd answers: nothing stale");
        s.vouched(Some((6, one("/p/a", "1"))));
        assert!(!changes.has_changed().unwrap(), "the same list is not");
        s.vouched(Some((4, Kvs::new())));
        assert_eq!(
            s.known().kvs,
            one("/p/a", "1"),
            "an older read is not stored"
        );

        tokio::time::advance(Duration::from_secs(3)).await;
        s.failed("down");
        s.failed("still down");
        assert_eq!(s.known().outage.as_ref().unwrap().failures, 2);
        assert_eq!(s.stale(), Some(one("/p/a", "1")));
        assert_eq!(s.staleness(), Some(Duration::from_secs(3)));
        tokio::time::advance(Duration::from_millis(6999)).await;
        assert!(s.stale().is_some(), "younger than the bound");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.stale(), None, "as old as the bound");
        assert!(s.known().outage.as_ref().unwrap().expired);
        assert_eq!(s.staleness(), Some(Duration::from_secs(10)));
        s.vouched(None);
        assert_eq!(s.staleness(), None, "etcd answers again");
        assert!(s.known().outage.is_none());
    }

    /// `max_staleness(ZERO)` never serves a list etcd has not just vouched for; an empty
    /// last list is nothing to serve.
    #[tokio::test(start_paused = true)]
    async fn a_zero_bound_or_an_empty_list_serves_nothing() {
        let s = shared(Duration::ZERO);
        s.vouched(Some((1, one("/p/a", "1"))));
        s.failed("down");
        assert_eq!(s.stale(), None);
        let s = shared(Duration::MAX);
        s.vouched(Some((1, Kvs::new())));
        s.failed("down");
        assert_eq!(s.stale(), None);
    }

    #[test]
    pub(super) fn a_prefix_is_a_directory() {
        assert_eq!(directory("/services/echo".into()), "/services/echo/");
        assert_eq!(directory("/services/echo/".into()), "/services/echo/");
        assert_eq!(directory(String::new()), "/");
    }
}
