//! The server's side: [`EtcdPublisher`] registers a copy under a lease and keeps it
//! alive. Server-side code, beside the catalog that reads what it writes.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;

/// What a publisher was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishOperation {
    /// Granting a lease and writing the key under it.
    Publish,
    /// Revoking the lease (and so deleting the key).
    Withdraw,
}

impl fmt::Display for PublishOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishOperation::Publish => "publish",
            PublishOperation::Withdraw => "withdraw",
        })
    }
}

/// Why [`EtcdPublisher::publish`] or [`EtcdPublisher::withdraw`] failed: which operation, on
/// which key, and the etcd error or the timeout.
///
/// ```
/// # use persistent_connection::catalog::etcd::{PublishError, PublishOperation};
/// # fn show(e: PublishError) {
/// // e.g. `etcd publish of key "/services/echo/a" failed: Unavailable: tcp connect error (...)`
/// //   or `etcd withdraw of key "/services/echo/a" timed out after 2s`
/// println!("{e}");
/// assert!(matches!(e.operation(), PublishOperation::Publish | PublishOperation::Withdraw));
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    operation: PublishOperation,
    key: String,
    timed_out: Option<Duration>,
    message: String,
}

impl PublishError {
    pub(super) fn etcd(operation: PublishOperation, key: &str, message: String) -> PublishError {
        PublishError {
            operation,
            key: key.to_owned(),
            timed_out: None,
            message,
        }
    }

    pub(super) fn timed_out(
        operation: PublishOperation,
        key: &str,
        after: Duration,
    ) -> PublishError {
        PublishError {
            operation,
            key: key.to_owned(),
            timed_out: Some(after),
            message: String::new(),
        }
    }

    /// What failed.
    pub fn operation(&self) -> PublishOperation {
        self.operation
    }

    /// The key published or withdrawn.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The timeout, if the operation ran out of time (rather than failed).
    pub fn timeout(&self) -> Option<Duration> {
        self.timed_out
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PublishError { operation, key, .. } = self;
        match self.timed_out {
            Some(after) => write!(
                f,
                "etcd {operation} of key {key:?} timed out after {after:?}"
            ),
            None => write!(
                f,
                "etcd {operation} of key {key:?} failed: {}",
                self.message
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// How [`EtcdPublisher::drain_until`] (or [`drain`](EtcdPublisher::drain)) ended, after the
/// key was withdrawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Drained {
    /// The idle condition came true first: the clients have moved.
    Idle,
    /// The grace period ran out first: the server stops with clients still connected
    /// (they reconnect to another copy as after any loss of their connection).
    GraceEnded,
}

/// Runs one publisher operation under the request timeout of `options`.
pub(super) async fn bounded<T>(
    operation: PublishOperation,
    key: &str,
    options: &EtcdOptions,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, PublishError> {
    let timeout = options.timeout;
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(PublishError::etcd(
            operation,
            key,
            options.describe(&options.endpoints, &e),
        )),
        Err(_) => Err(PublishError::timed_out(operation, key, timeout)),
    }
}

/// A server's entry in an etcd catalog: `key = address`, attached to a lease of `ttl` that a
/// background task keeps alive (renewing every third of the TTL).
///
/// - [`publish`](EtcdPublisher::publish) publishes now or fails;
///   [`start`](EtcdPublisher::start) keeps trying until etcd answers (see
///   [`wait_published`](EtcdPublisher::wait_published)).
/// - [`withdraw`](EtcdPublisher::withdraw) (or dropping the publisher inside a Tokio
///   runtime) revokes the lease: the key is deleted at once.
/// - If the process dies, renewals stop and etcd deletes the key when the TTL runs out.
/// - If etcd is unreachable for a while, the task keeps trying; if the lease expired
///   meanwhile (or was revoked by someone else), it grants a new one and writes the key
///   again, so a copy that outlives an etcd outage is listed again once etcd is back.
///
/// Its task logs what happens (`tracing`): `published in etcd` at info (with the lease
/// id and how many tries it took), a failure at warn the first time it is seen and at
/// debug while it repeats, `etcd lease is gone; publishing again` at warn.
///
/// etcd rounds the TTL up to whole seconds and to its own minimum (about 1.5 × its
/// election timeout); see the [module docs](super) on choosing it (10 s or more in
/// production). Give each copy its own key under the catalog's prefix (two publishers of
/// one key overwrite each other).
pub struct EtcdPublisher {
    key: String,
    lease: watch::Receiver<i64>,
    client: Arc<Mutex<Option<Client>>>,
    options: EtcdOptions,
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

pub(super) fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Grants a lease and writes `key = value` under it; returns the lease id.
pub(super) async fn register(
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
    /// etcd cannot be reached within [`DEFAULT_TIMEOUT`]; use
    /// [`start`](EtcdPublisher::start) to keep trying instead.
    pub async fn publish(
        endpoints: impl IntoIterator<Item = impl AsRef<str>>,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> Result<EtcdPublisher, PublishError> {
        EtcdPublisher::publish_with(EtcdOptions::new(endpoints), key, address, ttl).await
    }

    /// [`publish`](EtcdPublisher::publish) with the cluster reached through `options`
    /// (user, password, timeout).
    pub async fn publish_with(
        options: EtcdOptions,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> Result<EtcdPublisher, PublishError> {
        let key = key.into();
        let value = address.to_string();
        let ttl_secs = ttl_seconds(ttl);
        let op = PublishOperation::Publish;
        let (client, lease) = bounded(op, &key, &options, async {
            let mut client = options.connect().await?;
            let lease = register(&mut client, &key, &value, ttl_secs).await?;
            Ok((client, lease))
        })
        .await?;
        tracing::info!(key = %key, lease, ttl = ttl_secs, "published in etcd");
        Ok(EtcdPublisher::spawn(
            options,
            key,
            value,
            ttl_secs,
            Some(client),
            lease,
        ))
    }

    /// Publishes `address` under `key` with a lease of `ttl` in the background, trying until
    /// etcd answers (every second, or every third of the TTL if shorter), then keeping it
    /// alive: for a server that may start before etcd, or while etcd is down. Its progress is
    /// in the logs; [`wait_published`](EtcdPublisher::wait_published) waits for the first
    /// success. Must be called inside a Tokio runtime (it spawns its task there).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use persistent_connection::catalog::etcd::{EtcdOptions, EtcdPublisher};
    /// # async fn demo() {
    /// let etcd = EtcdOptions::new(["http://127.0.0.1:2379"]);
    /// let me = "10.0.1.5:7000".parse().unwrap();
    /// let publisher = EtcdPublisher::start(etcd, "/services/echo/copy-1", me, Duration::from_secs(15));
    /// // Serve at once; the key appears as soon as etcd answers.
    /// publisher.wait_published().await;
    /// assert_ne!(publisher.lease_id(), 0);
    /// # }
    /// ```
    pub fn start(
        options: EtcdOptions,
        key: impl Into<String>,
        address: SocketAddr,
        ttl: Duration,
    ) -> EtcdPublisher {
        let key = key.into();
        tracing::info!(key = %key, "publishing in etcd");
        EtcdPublisher::spawn(options, key, address.to_string(), ttl_seconds(ttl), None, 0)
    }

    pub(super) fn spawn(
        options: EtcdOptions,
        key: String,
        value: String,
        ttl: i64,
        client: Option<Client>,
        lease: i64,
    ) -> EtcdPublisher {
        let (lease_tx, lease_rx) = watch::channel(lease);
        let client = Arc::new(Mutex::new(client));
        let keeper = Keeper {
            options: options.clone(),
            key: key.clone(),
            value,
            ttl,
            lease: Arc::new(lease_tx),
            client: client.clone(),
            last_problem: None,
            tries: 0,
        };
        let task = guarded_task("etcd publisher", move || keeper.clone().run(), || {});
        EtcdPublisher {
            key,
            lease: lease_rx,
            client,
            options,
            keeper: Some(tokio::spawn(task)),
        }
    }

    /// The key this copy is published under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the lease that holds the key now (it changes if the lease had to be
    /// granted again); 0 until the key is first published.
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Whether the key has been published (at least once).
    pub fn is_published(&self) -> bool {
        self.lease_id() != 0
    }

    /// Waits until the key has been published (at once after
    /// [`publish`](EtcdPublisher::publish)).
    pub async fn wait_published(&self) {
        let mut lease = self.lease.clone();
        // An error means the task is gone (withdrawn): nothing more to wait for.
        let _ = lease.wait_for(|id| *id != 0).await;
    }

    /// Stops keeping the lease alive and revokes it: the key is deleted at once. Fails if
    /// etcd cannot be reached within the request timeout; the key then disappears when the
    /// TTL runs out. A publisher that never got to publish has nothing to withdraw.
    pub async fn withdraw(mut self) -> Result<(), PublishError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let lease = self.lease_id();
        if lease == 0 {
            tracing::info!(key = %self.key, "withdrawn before it was ever published in etcd");
            return Ok(());
        }
        let stored = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let options = &self.options;
        bounded(PublishOperation::Withdraw, &self.key, options, async {
            let mut client = match stored {
                Some(c) => c,
                None => options.connect().await?,
            };
            client.lease_revoke(lease).await.map(drop)
        })
        .await?;
        tracing::info!(key = %self.key, "withdrawn from etcd");
        Ok(())
    }
}

impl EtcdPublisher {
    /// [`drain_until`](EtcdPublisher::drain_until) with no idle condition: withdraws, then
    /// waits the whole `grace`.
    pub async fn drain(self, grace: Duration) -> Result<Drained, PublishError> {
        self.drain_until(grace, std::future::pending()).await
    }

    /// The first step of stopping a copy without failing a request: withdraws the key
    /// (revokes the lease: the key is deleted at once, and every client watching the prefix
    /// — [`EtcdCatalog::changed`] — learns it within the watch's latency), then waits until
    /// `idle` resolves (the server says its clients have moved: e.g. no connection left)
    /// or `grace` has passed since the withdrawal, whichever comes first. The server may
    /// stop when it returns; see the [rolling-deploy recipe](super#rolling-deploys-drain-then-stop).
    ///
    /// The publisher cannot see the server's connections, hence `idle`: a future of the
    /// server's own (`std::future::pending()` for none, which is
    /// [`drain`](EtcdPublisher::drain)). It is polled only after the withdrawal.
    ///
    /// Fails at once, without waiting, if the withdrawal fails (etcd unreachable within the
    /// request timeout): renewals have stopped, so the key disappears when its TTL runs
    /// out; it is then the caller's choice to wait the TTL and the grace before stopping.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use persistent_connection::catalog::etcd::{Drained, EtcdPublisher};
    /// # async fn demo(publisher: EtcdPublisher) -> Result<(), Box<dyn std::error::Error>> {
    /// // The server counts its open connections in a watch channel.
    /// let (connections, mut open) = tokio::sync::watch::channel(0usize);
    /// # let _ = connections;
    /// let idle = async move {
    ///     let _ = open.wait_for(|n| *n == 0).await;
    /// };
    /// match publisher.drain_until(Duration::from_secs(10), idle).await? {
    ///     Drained::Idle => println!("every client moved"),
    ///     Drained::GraceEnded => println!("stopping with clients still connected"),
    ///     _ => {}
    /// }
    /// // Now stop the server.
    /// # Ok(())
    /// # }
    /// ```
    pub async fn drain_until(
        self,
        grace: Duration,
        idle: impl Future<Output = ()>,
    ) -> Result<Drained, PublishError> {
        let key = self.key.clone();
        self.withdraw().await?;
        let withdrawn = tokio::time::Instant::now();
        tracing::info!(key = %key, ?grace, "draining: withdrawn from etcd; waiting for the clients to move");
        let drained = tokio::select! {
            biased;
            () = idle => Drained::Idle,
            () = tokio::time::sleep(grace) => Drained::GraceEnded,
        };
        tracing::info!(key = %key, after = ?withdrawn.elapsed(), ?drained, "drained");
        Ok(drained)
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
        let lease = self.lease_id();
        if lease == 0 {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stored = self
                .client
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let options = self.options.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(options.timeout, async {
                    let mut client = match stored {
                        Some(c) => c,
                        None => options.connect().await?,
                    };
                    client.lease_revoke(lease).await.map(drop)
                })
                .await;
            });
        }
    }
}

/// The publisher's task: gets a client and a lease (trying until etcd answers), then renews
/// the lease every third of the TTL over one keep-alive stream; when the stream breaks,
/// starts over after a pause; whenever the lease turns out to be gone (expired during an
/// outage, or revoked by someone else), registers again. Cloned to start afresh after a
/// panic (the lease and the client are shared).
#[derive(Clone)]
pub(super) struct Keeper {
    options: EtcdOptions,
    key: String,
    value: String,
    ttl: i64,
    lease: Arc<watch::Sender<i64>>,
    /// Shared with the publisher, for `withdraw`.
    client: Arc<Mutex<Option<Client>>>,
    /// The last failure logged at warn: a repeat goes to debug (no log storm while etcd is
    /// down).
    last_problem: Option<String>,
    /// Failed tries to publish since the last success.
    tries: u32,
}

impl Keeper {
    pub(super) fn report(&mut self, problem: String) {
        if self.last_problem.as_ref() == Some(&problem) {
            tracing::debug!(key = %self.key, "{problem}; retrying");
        } else {
            tracing::warn!(key = %self.key, "{problem}; retrying");
            self.last_problem = Some(problem);
        }
    }

    pub(super) fn stored_client(&self) -> Option<Client> {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn store_client(&self, client: Option<Client>) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// Connects if needed, grants a lease and writes the key; `false` after a failure.
    pub(super) async fn register(&mut self) -> bool {
        let stored = self.stored_client();
        let options = &self.options;
        let (key, value, ttl) = (&self.key, &self.value, self.ttl);
        let result = bounded(PublishOperation::Publish, key, options, async {
            let mut client = match stored {
                Some(c) => c,
                None => options.connect().await?,
            };
            let lease = register(&mut client, key, value, ttl).await?;
            Ok((client, lease))
        })
        .await;
        match result {
            Ok((client, lease)) => {
                self.store_client(Some(client));
                self.lease.send_replace(lease);
                tracing::info!(
                    key = %self.key,
                    lease,
                    ttl = self.ttl,
                    failed_tries = self.tries,
                    "published in etcd"
                );
                self.tries = 0;
                self.last_problem = None;
                true
            }
            Err(e) => {
                // A fresh client next time: this one may be stuck on a dead member.
                self.store_client(None);
                self.tries += 1;
                self.report(e.to_string());
                false
            }
        }
    }

    /// Renews the lease over one keep-alive stream until it breaks; `true` if etcd says the
    /// lease is gone.
    pub(super) async fn renew(&mut self, client: &mut Client, id: i64, every: Duration) -> bool {
        let timeout = self.options.timeout.max(every);
        let opened = tokio::time::timeout(timeout, client.lease_keep_alive(id)).await;
        match opened {
            Ok(Ok((mut keeper, mut responses))) => loop {
                // Opening renewed once already.
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    return false;
                }
                match tokio::time::timeout(timeout, responses.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => return true,
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return false,
                }
            },
            // The client's word for a keep-alive answered with a TTL of 0.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => true,
            Ok(Err(e)) => {
                let problem = format!(
                    "etcd renewal of key {:?} failed: {}",
                    self.key,
                    self.options.describe(&self.options.endpoints, &e)
                );
                self.report(problem);
                false
            }
            Err(_) => {
                let problem = format!(
                    "etcd renewal of key {:?} timed out after {timeout:?}",
                    self.key
                );
                self.report(problem);
                false
            }
        }
    }

    pub(super) async fn run(mut self) {
        let ttl = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1));
        let every = (ttl / 3).max(Duration::from_millis(100));
        let retry = every.min(Duration::from_secs(1));
        let mut lease_gone = *self.lease.borrow() == 0;
        loop {
            if lease_gone {
                if *self.lease.borrow() != 0 {
                    tracing::warn!(key = %self.key, lease = *self.lease.borrow(), "etcd lease is gone; publishing again");
                }
                if self.register().await {
                    lease_gone = false;
                } else {
                    tokio::time::sleep(retry).await;
                }
                continue;
            }
            let id = *self.lease.borrow();
            let Some(mut client) = self.stored_client() else {
                lease_gone = true;
                continue;
            };
            lease_gone = self.renew(&mut client, id, every).await;
            if !lease_gone {
                // Ask whether the lease itself still exists: etcd answers a TTL of -1 for a
                // lease that expired or was revoked.
                let asked = tokio::time::timeout(
                    self.options.timeout.max(every),
                    client.lease_time_to_live(id, None),
                )
                .await;
                lease_gone = matches!(asked, Ok(Ok(r)) if r.ttl() <= 0);
            }
            if lease_gone {
                continue;
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn ttl_rounds_up_to_whole_seconds_and_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(300)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ttl_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(ttl_seconds(Duration::MAX), i64::MAX);
    }
}
