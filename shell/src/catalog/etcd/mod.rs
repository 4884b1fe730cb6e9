//! etcd as a catalog (cargo feature `etcd`): servers publish themselves under a key prefix,
//! one key per copy, each held by a lease they keep alive; clients list the prefix before
//! every attempt.
//!
//! - [`EtcdPublisher`] (server side): registers a [`SocketAddr`](std::net::SocketAddr) under a key with a lease
//!   and keeps the lease alive. [`publish`](EtcdPublisher::publish) fails if etcd cannot be
//!   reached now; [`start`](EtcdPublisher::start) keeps trying until it can (a server that
//!   starts before etcd, or while etcd is down), logging what happens. A copy that stops
//!   cleanly ([`EtcdPublisher::withdraw`] or drop) revokes its lease and disappears from the
//!   catalog at once; a copy that dies (`kill -9`, a crash, a lost network) stops renewing
//!   and disappears after its TTL. [`EtcdPublisher::drain_until`] withdraws and then waits
//!   for the clients to move (see [rolling deploys](#rolling-deploys-drain-then-stop)).
//! - [`EtcdCatalog`] (client side): a [`Catalog`](crate::catalog::Catalog) listing the values under the prefix.
//!   Every lookup is one range read with a timeout (or, with
//!   [`watch_cache`](EtcdCatalog::watch_cache), a read of a watch-fed copy). While etcd
//!   cannot answer, it fails static: it serves the last list etcd vouched for (see
//!   [below](#when-etcd-cannot-answer-fail-static)); a lookup with nothing to serve is a
//!   failed attempt ([`CatalogError::Lookup`](crate::catalog::CatalogError::Lookup) or [`CatalogError::TimedOut`](crate::catalog::CatalogError::TimedOut)), de-duplicated and
//!   retried on the persistent connection's schedule, never a panic or a hang.
//!   [`EtcdCatalog::changed`] resolves when the listed set changes (a copy published or
//!   withdrawn, a lease revoked or expired), from an etcd watch: how a client learns that
//!   the copy it is connected to was withdrawn.
//! - [`EtcdOptions`]: how both reach the cluster: endpoints, user and password, TLS
//!   (cargo feature `etcd-tls`), and the timeout of each request.
//!
//! # Keys and prefixes
//!
//! A catalog's prefix is a directory: [`EtcdCatalog::new`] adds the trailing `/` when it is
//! missing, so `"/services/echo"` lists `/services/echo/copy-1` but never
//! `/services/echo-admin/…`. Publish each copy under its own key below it.
//!
//! # Timeouts: the catalog's and the builder's
//!
//! Each etcd request of the catalog (connecting included) and of the publisher is bounded
//! by [`EtcdOptions::timeout`] (default [`DEFAULT_TIMEOUT`], 2 s): a lookup that runs out
//! fails with [`CatalogError::TimedOut`](crate::catalog::CatalogError::TimedOut) naming the catalog (with several members, each try
//! gets an equal share, and a lookup no member answered fails with
//! [`CatalogError::Lookup`](crate::catalog::CatalogError::Lookup) listing each member's answer), and the catalog starts its etcd
//! clients afresh (a client stuck on a dead member is replaced). The persistent connection's
//! own [`lookup_timeout`](crate::Builder::lookup_timeout) (default 10 s) is a backstop for
//! any `get_address`; **keep the catalog's timeout below it** (the defaults are). If the
//! builder's is shorter, it cuts the lookup first: the failure is then the builder's
//! [`Error::LookupTimedOut`](crate::Error::LookupTimedOut), which names no catalog, so the
//! catalog logs a warning naming itself and its timeout, and starts its client afresh all
//! the same.
//!
//! # When etcd cannot answer: fail static
//!
//! A registry that is down, frozen, cut off or without quorum says nothing about the
//! service's copies, and a listed copy that died costs at most one refused connect (the
//! picker then tries the others). So, as Envoy and gRPC's xDS clients do with their last
//! configuration, the catalog keeps serving **the last list etcd vouched for** while etcd
//! cannot answer, for at most [`EtcdCatalog::max_staleness`] (default
//! [`DEFAULT_MAX_STALENESS`], 5 minutes), and a lookup fails only when nothing was ever
//! listed or the list has outlived that bound. A client whose copy dies during an etcd
//! outage thus reaches another listed copy, instead of waiting for etcd.
//!
//! - With [`watch_cache`](EtcdCatalog::watch_cache), the watch notices the outage (its
//!   check every half request timeout fails), and every lookup meanwhile is answered at
//!   once from the copy: in this crate's tests, a client reached the other copy about
//!   1 ms after its copy died, etcd frozen (`SIGSTOP`) or a three-member cluster without
//!   quorum.
//! - With range reads (the default), the first lookup of an outage waits for its request
//!   timeout and then serves the last list; the lookups after it serve it at once, while
//!   a range read in the background every 200 ms looks for etcd's return.
//!
//! The outage is said once in the log: a warning when it starts (why, how many copies are
//! served, how old the list is), a warning if the list outlives the bound, and an info line
//! when etcd answers again; failures in between go to debug. [`EtcdCatalog::staleness`]
//! tells a health check or a metric how old the list served is (`None` while etcd
//! answers). Set [`max_staleness`](EtcdCatalog::max_staleness) to [`Duration::ZERO`] for
//! the old behaviour (every lookup during an outage fails), or to [`Duration::MAX`] to
//! serve the last list for as long as the outage lasts.
//!
//! # Rolling deploys: drain, then stop
//!
//! To replace the copies of a service one at a time without failing a request, for each
//! copy in turn:
//!
//! 1. **Withdraw and drain**: [`EtcdPublisher::drain_until`]`(grace, idle)` revokes the
//!    copy's lease — its key is gone at once, and every client watching the prefix learns
//!    it within the watch's latency ([`EtcdCatalog::changed`], about 2–6 ms on one host) —
//!    then waits until `idle` resolves (the server's own signal that its clients have
//!    moved, e.g. its count of open connections reaching 0) or `grace` has passed.
//! 2. **The clients hand over**: a persistent connection whose copy was withdrawn connects
//!    to another listed copy and only then leaves this one (make-before-break, issue 26;
//!    being built), so requests keep flowing on the old connection until the new one is
//!    up. Until then, a client moves when the server closes its connection (step 3).
//! 3. **Stop the server** gracefully: finish the requests in flight, close the connections
//!    left.
//! 4. **Start the new version** (on a new port if you like) and
//!    [`publish`](EtcdPublisher::publish) it; wait until it is published (and ready)
//!    before draining the next copy, so that a listed copy is always there to move to.
//!
//! Choose `grace` above the time your clients take to move (one request period plus a
//! connect) and below what the deploy can afford per copy: 1–10 s is usual.
//!
//! ```no_run
//! # use std::net::SocketAddr;
//! # use std::time::Duration;
//! # use persistent_connection::catalog::etcd::{EtcdOptions, EtcdPublisher};
//! # async fn demo(
//! #     publisher: EtcdPublisher,
//! #     mut open_connections: tokio::sync::watch::Receiver<usize>,
//! #     new_address: SocketAddr,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdOptions::new(["http://10.0.0.1:2379"]);
//! // 1–2. Withdraw; wait until no client is connected any more, at most 5 s.
//! let idle = async move {
//!     let _ = open_connections.wait_for(|n| *n == 0).await;
//! };
//! publisher.drain_until(Duration::from_secs(5), idle).await?;
//! // 3. Stop the old server here (gracefully), then
//! // 4. start the new one and publish it before going on to the next copy.
//! let next = EtcdPublisher::publish_with(
//!     etcd,
//!     "/services/echo/copy-1",
//!     new_address,
//!     Duration::from_secs(15),
//! )
//! .await?;
//! # drop(next);
//! # Ok(())
//! # }
//! ```
//!
//! # Choosing the TTL
//!
//! A lease must outlive every etcd stall you want to ride out: while etcd cannot renew it
//! (a leader election, a member restarting, a slow disk, a network partition) the TTL is
//! all a copy has, and etcd expires every lease that runs out at once — every copy of the
//! service disappears together, although they all still run. An election alone takes one
//! to two election timeouts (1 s each by default) and a member that restarts takes
//! seconds, so take **at least 10 s** (15–30 s on a loaded or distant cluster; Kubernetes'
//! leader leases use 15 s). What a long TTL costs is small here: a copy killed without
//! withdrawing stays listed until its TTL runs out, but the picker moves on after one
//! refused connect and tries every other listed copy before it comes back to it. Short
//! TTLs (1–2 s, as in this crate's tests) only suit a local single-member etcd.
//!
//! # Example
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher};
//! use persistent_connection::catalog::{Catalog, Pick};
//! use persistent_connection::{IoError, PersistentConnection, TcpConnection};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdOptions::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
//!     .user("echo", "secret")
//!     .timeout(Duration::from_secs(1));
//! // In each server process: publish, and keep trying while etcd is unreachable.
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:7000").await?;
//! let me: SocketAddr = "10.0.1.5:7000".parse()?;
//! let publication =
//!     EtcdPublisher::start(etcd.clone(), "/services/echo/copy-1", me, Duration::from_secs(15));
//!
//! // In the client:
//! let catalog = EtcdCatalog::with_options(etcd, "/services/echo");
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
//!
//! What a publisher publishes is what the catalog parses: a [`SocketAddr`](std::net::SocketAddr), so a host name
//! cannot be published by mistake and then skipped as malformed by every client:
//!
//! ```compile_fail
//! # use std::time::Duration;
//! # use persistent_connection::catalog::etcd::EtcdPublisher;
//! # async fn demo() {
//! // Does not compile: "localhost:7000" is not a SocketAddr.
//! let p = EtcdPublisher::publish(["http://127.0.0.1:2379"], "/services/echo/a",
//!     "localhost:7000", Duration::from_secs(15)).await;
//! # }
//! ```
//!
//! # TLS
//!
//! With the cargo feature `etcd-tls`, `EtcdOptions::tls` reaches the members over TLS
//! (`https://` endpoints): `EtcdTls` gives the certificate authority that verifies them
//! (etcd's `--cert-file` must chain to it and name the endpoint's host, or the name set
//! with `EtcdTls::domain_name`) and, for etcd started with `--client-cert-auth` (or with
//! any `--trusted-ca-file`, which makes etcd ask every client for a certificate), a client
//! certificate and key it signed. The feature uses the etcd client's rustls flavour with
//! the `ring` provider, the same rustls as the `tls` feature: no OpenSSL, no second crypto
//! provider. TLS goes with user and password, or replaces them (etcd then takes the user
//! name from the client certificate's common name).
//!
//! A TLS failure is a failed lookup or publish like any other, bounded by the request
//! timeout, logged and retried: the message says `TLS with <endpoint> failed` and why
//! (e.g. `invalid peer certificate: UnknownIssuer`, a CA that is not PEM, an `http://`
//! endpoint with TLS settings). etcd refuses a client certificate (or the lack of one)
//! after the TLS 1.3 handshake, usually by closing the connection: with TLS on, a closed
//! connection says so, with a hint to check the client certificate.
//!
#![cfg_attr(feature = "etcd-tls", doc = "```no_run")]
#![cfg_attr(not(feature = "etcd-tls"), doc = "```ignore")]
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::etcd::{EtcdCatalog, EtcdOptions, EtcdPublisher, EtcdTls};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // The CA that signed the members' certificates, and this client's certificate and key
//! // (mutual TLS; leave `client_identity` out if etcd does not check client certificates).
//! let tls = EtcdTls::new(std::fs::read("/etc/etcd/pki/ca.pem")?)
//!     .client_identity(
//!         std::fs::read("/etc/echo/etcd-client.pem")?,
//!         std::fs::read("/etc/echo/etcd-client-key.pem")?,
//!     );
//! let etcd = EtcdOptions::new(["https://10.0.0.1:2379", "https://10.0.0.2:2379"])
//!     .tls(tls)
//!     .timeout(Duration::from_secs(1));
//! let me: SocketAddr = "10.0.1.5:7000".parse()?;
//! let publication =
//!     EtcdPublisher::publish_with(etcd.clone(), "/services/echo/copy-1", me, Duration::from_secs(15))
//!         .await?;
//! let catalog = EtcdCatalog::with_options(etcd, "/services/echo");
//! # Ok(())
//! # }
//! ```

mod catalog;
mod options;
mod publisher;
mod state;
#[cfg(feature = "etcd-tls")]
mod tls;
mod watch;

use std::future::Future;
use std::time::Duration;

use crate::guard::Guarded;

/// The etcd client crate this module is built on, for direct use of etcd beside the
/// catalog (same version, no second copy in the build).
pub use etcd_client;

pub use catalog::{DEFAULT_MAX_STALENESS, EtcdCatalog};
pub use options::{DEFAULT_TIMEOUT, EtcdOptions};
pub use publisher::{Drained, EtcdPublisher, PublishError, PublishOperation};
#[cfg(feature = "etcd-tls")]
pub use tls::EtcdTls;

/// Runs the task made by `make` under the crate's panic guard (R13): if it panics, the
/// panic is logged at warn, `on_panic` runs, and a fresh task is made after a second. The
/// publisher's and the watch's tasks run no user code, only the etcd client and this
/// module; the guard keeps a panic there from silently ending them (a key no longer
/// renewed, a cache no longer fed).
pub(super) async fn guarded_task<F, Fut>(what: &'static str, mut make: F, on_panic: impl Fn())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match Guarded::boxed(what, make()).await {
            Ok(()) => return,
            Err(panic) => {
                on_panic();
                tracing::warn!(%panic, "the {what} task panicked; starting it again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A panic in a guarded task is logged and the task is made afresh, after `on_panic`.
    #[tokio::test(start_paused = true)]
    async fn a_guarded_task_that_panics_starts_again() {
        let runs = Arc::new(Mutex::new(0));
        let panics = Arc::new(Mutex::new(0));
        let (r, p) = (runs.clone(), panics.clone());
        guarded_task(
            "test",
            move || {
                let r = r.clone();
                async move {
                    let n = {
                        let mut runs = r.lock().unwrap();
                        *runs += 1;
                        *runs
                    };
                    assert!(n >= 3, "run {n} panics");
                }
            },
            move || *p.lock().unwrap() += 1,
        )
        .await;
        assert_eq!(*runs.lock().unwrap(), 3);
        assert_eq!(*panics.lock().unwrap(), 2);
    }
}
