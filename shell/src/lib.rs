//! Keeps a connection to a service alive, on Tokio: looks the address up before every
//! attempt (so it fails over between redundant servers listed in a catalog), connects,
//! tells you what happens through events it *awaits*, retries on a jittered schedule
//! counted from each attempt's start, and closes promptly. It follows Jane Street's OCaml
//! `Persistent_connection_kernel`; the contract is the project's behaviour document (rules
//! R1–R14, guarantees S1–S7), shipped as [`core::behaviour`] (`docs/behaviour.md` in the
//! repository).
//!
//! This crate is the thin Tokio driver and public API; every decision lives in the sans-IO
//! machine of [`persistent_connection_core`] (re-exported as [`core`]).
//!
//! # API at a glance
//!
//! - [`PersistentConnection::builder`]`(server_name, get_address, connect)` →
//!   [`Builder`]: `.on_event(f)` (async, awaited), `.retry_delay(d)` (default 10 s,
//!   jittered ±30%), `.retry_delay_fn(f)`, `.retry_delay_policy(RetryDelay)`,
//!   `.jitter(Jitter::NonRandom)`, `.retry_policy(RetryPolicy::grpc())`, `.seed(u64)`,
//!   `.connect_timeout(d)` and `.lookup_timeout(d)` (10 s each, S5), `.event_capacity(n)`,
//!   `.events()` (every event from the first, S4), then `.build()` (spawns one driver
//!   task on the current runtime) or `.build_on(&handle)`.
//!   `get_address: Fn() -> impl Future<Output = Result<A, E>>`,
//!   `connect: Fn(A, ConnectContext<E>) -> impl Future<Output = Result<C, E>>`.
//!   **`A`, `C` and `E` must each be `Clone + Debug + Send + Sync + 'static`**, `A` and `E`
//!   also `PartialEq`, `C` also [`Closable`]. Without `Debug` the compiler reports the next
//!   builder method (`retry_delay`, `build`…) as not found rather than the missing bound:
//!   derive `Debug` (or implement it by hand for a type that cannot derive it).
//! - Handle [`PersistentConnection<A, C, E>`] (cheap `Clone`; the last drop closes, R14):
//!   [`connected()`](PersistentConnection::connected) (R9),
//!   [`connected_or_failed_to_connect()`](PersistentConnection::connected_or_failed_to_connect)
//!   (R10, `Result<C, AttemptError<Error<E>>>`),
//!   [`current_connection()`](PersistentConnection::current_connection),
//!   [`with_current_connection(f)`](PersistentConnection::with_current_connection) (borrows:
//!   the accessor that scales across threads),
//!   [`close()`](PersistentConnection::close), [`is_closed()`](PersistentConnection::is_closed),
//!   [`close_finished()`](PersistentConnection::close_finished),
//!   [`close_when_current_connection_is_closed()`](PersistentConnection::close_when_current_connection_is_closed)
//!   (R11), [`events()`](PersistentConnection::events) (an [`EventStream`]: a `Stream`
//!   of the events after the call, [`Lagged`] when it fell behind, ending after close),
//!   [`downgrade()`](PersistentConnection::downgrade),
//!   [`state()`](PersistentConnection::state) ([`State`]: `Connecting`,
//!   `WaitingToRetry { next_attempt }`, `Connected`, `Closing`, `Closed`, read from the
//!   machine's own state),
//!   [`consecutive_unsuccessful_attempts()`](PersistentConnection::consecutive_unsuccessful_attempts),
//!   [`stats()`](PersistentConnection::stats) ([`Stats`]: attempts, failures,
//!   de-duplicated failures, connections, disconnections since creation, without a lock).
//!   The waiters' futures are `'static` and register when called.
//! - [`ConnectContext`] (R12): `consecutive_unsuccessful_attempts()`, `abort(error)`.
//! - [`Closable`] (`close`, `is_closed`, `close_finished`) with ready impls
//!   [`TcpConnection`] (notices the peer closing), [`CloseSignal`] and
//!   [`WithCloseSignal<T>`] (any handle plus a close signal).
//! - Real connections: [`TcpConnection`] is `AsyncRead + AsyncWrite` (works under
//!   `tokio_util::codec::Framed` and clients that take a stream), with [`TcpOptions`]
//!   (`TCP_NODELAY`, [`Keepalive`], `TCP_USER_TIMEOUT`, local address; see "Noticing
//!   failures" below); [`HealthChecked<C>`] runs a
//!   [`HealthCheck`] on any connection and closes it when the checks keep failing (S7);
//!   [`Driven<C>`] closes a client's connection when its background driver future ends;
//!   [`Keyed<E, K>`] compares failures by a key of your choice (de-duplication, R4).
//!   `examples/redis_failover.rs` keeps a real Redis client alive with them.
//! - Catalogs ([`catalog`]): ready `get_address` sources — a static list, DNS, and etcd
//!   behind the `etcd` feature (with a publisher that registers a server under a lease) —
//!   that pick among the published copies and try another one after a failure.
//! - Errors: [`Error<E>`] = `User(E) | Panicked { callback, message } | TimedOut(d) |
//!   LookupTimedOut(d)` is the machine's error type; [`IoError`] is a comparable `io::Error`.
//! - Events: [`Event<A, C, E>`] = core's `Event<A, C, Error<E>>`: `AttemptingToConnect`,
//!   `ObtainedAddress(A)`, `FailedToConnect(Error<E>)`, `Connected(C)`, `Disconnected`.
//! - Logs: a `tracing` event for every state change, failures at warn.
//! - Cargo features, each off by default (the default build pulls in none of their
//!   dependencies): `tls` — `tls::TlsConnector` and `tls::TlsConnection` (rustls, a TLS
//!   connection that notices the peer closing as [`TcpConnection`] does); `tower` —
//!   `tower::PersistentService`, a `tower::Service` over a persistent connection; `metrics`
//!   — `metrics::export`, the counters, state and failover gap through the `metrics`
//!   facade; `connector` — `connector::CatalogConnector`, a `tower::Service<Uri>` over any
//!   [`catalog::Catalog`] for hyper's and tonic's own reconnecting clients; `etcd` — the
//!   etcd catalog; `etcd-tls` — the etcd catalog over TLS (rustls, as `tls`).
//!
//! # Defaults and what they mean
//!
//! | setting | default | what you will see |
//! | --- | --- | --- |
//! | retry delay ([`Builder::retry_delay`]) | constant 10 s | attempts *start* at least the jittered delay apart; a server that keeps failing is retried every 7–13 s until close |
//! | jitter ([`Builder::jitter`]) | ±30%, uniform | clients that lost the same server do not retry in lockstep; the delay lies in `[0.7·d, 1.3·d]` |
//! | seed ([`Builder::seed`]) | from OS randomness | set one to make every delay reproducible |
//! | connect timeout ([`Builder::connect_timeout`]) | [`DEFAULT_CONNECT_TIMEOUT`] (10 s) | a `connect` that hangs (a host that drops packets, a full accept queue) fails the attempt with [`Error::TimedOut`] after 10 s; a server slower than that to accept is never reached; `Duration::MAX` waits until the OS gives up or `close()` cancels it |
//! | lookup timeout ([`Builder::lookup_timeout`]) | [`DEFAULT_LOOKUP_TIMEOUT`] (10 s) | a `get_address` that hangs fails the attempt with [`Error::LookupTimedOut`] after 10 s instead of stopping all reconnecting |
//! | event capacity ([`Builder::event_capacity`]) | [`DEFAULT_EVENT_CAPACITY`] (64) | an [`events()`](PersistentConnection::events) observer further behind is told how many it missed |
//! | `TCP_USER_TIMEOUT` ([`TcpOptions::user_timeout`], [`TcpConnection::connect`]) | [`DEFAULT_USER_TIMEOUT`] (20 s) | a connection whose sent data stays unacknowledged for 20 s (peer host gone, black hole) is reset by the kernel and replaced, instead of after ~15 min |
//! | TCP keepalive ([`TcpOptions::keepalive`]) | [`DEFAULT_KEEPALIVE`] (10 s idle, every 5 s) | an idle connection to a vanished host is reset 20–25 s after it last heard from it |
//!
//! **The delay is counted from the start of the attempt that made the connection** (R6 in
//! [`core::behaviour`]). A connection that lived longer than the delay is replaced at
//! once when it dies; one that dies young — a server that accepts and then resets, a
//! handshake that fails after connect — waits for the rest of the delay. With the default
//! 10 s, a server that accepts and drops every connection is tried about every 10 s, not
//! in a busy loop; but a short-lived connection also means up to 13 s without service. A
//! timeout longer than the delay spaces attempts by the timeout instead (the next attempt
//! waits for the previous one to fail). Choose the delay for the outage you can afford:
//!
//! - [`RetryPolicy::constant`]`(d)`: the original's policy, `d` ±30% (what
//!   [`Builder::retry_delay`] sets);
//! - [`RetryPolicy::grpc`]: 1 s, ×1.6 per consecutive failure, capped at 120 s, ±20% —
//!   fast first retries, gentle on a long outage;
//! - [`RetryDelay::exponential`] or [`Builder::retry_delay_fn`] for your own curve, and
//!   [`RetryPolicy::non_random`] / [`Jitter::NonRandom`] to drop the jitter.
//!
//! # Noticing failures
//!
//! A connection is replaced only once something notices that it is gone. What notices
//! which failure, and how fast, measured in the network lab (`netlab/`,
//! `bash scripts/netlab.sh`; tables in `BENCHMARKS.md`), with the default settings and
//! with the recommended ones below:
//!
//! | failure | noticed by | defaults | recommended |
//! | --- | --- | --- | --- |
//! | server process exits or crashes, connection reset, a firewall that rejects | the connection's reader (end of file, reset) | at once | at once |
//! | server host vanished, black hole, one-way loss — **request in flight** | `TCP_USER_TIMEOUT` ([`TcpOptions::user_timeout`]); keepalive cannot (no probe while data is unacknowledged) | 20.6 s ([`DEFAULT_USER_TIMEOUT`]; before it: never within 90 s) | the health check: 0.6 s |
//! | the same — **connection idle** | keepalive probes, bounded by the user timeout | 20.4 s ([`DEFAULT_KEEPALIVE`]) | the health check: 0.6 s |
//! | server up but hung (stopped process, deadlock): its kernel still acknowledges and answers probes | only a health check ([`HealthChecked`]) | never | 2 × (interval + timeout) at most: 0.6 s |
//! | a listed copy whose host is gone (SYNs unanswered) | the connect timeout (and the user timeout, set before connecting), then the next copy | 10 s, next attempt 10–13 s (R2) | 1 s |
//!
//! (Medians of 10 runs in the lab, from the start of the fault to the connection's close;
//! the service gap adds the reconnect, under 20 ms to a live copy.)
//!
//! Once noticed, the next attempt starts when R6 allows: at once after a connection that
//! lived longer than the retry delay, else when the delay counted from the attempt that
//! made it runs out (7–13 s with the default 10 s). So with the defaults, a connection a
//! few seconds old that is reset is replaced 5–13 s later; keep that rule in mind when a
//! health check closes a young connection, and choose the retry delay for the outage you
//! accept (a short one, or [`RetryPolicy::grpc`], 1 s first).
//!
//! **Recommended settings for fast failover** (drill 1, a black hole of the server in use
//! with live copies listed: service back within 1 s):
//!
//! - a health check on the connection, [`HealthCheck::new`]`(100 ms, 200 ms, 2)`: closes a
//!   silent or hung connection within 2 × (100 + 200) ms; use your protocol's ping (Redis
//!   `PING`, an RPC heartbeat). Its timeout must stay well above the server's worst
//!   latency and the client's scheduling delays: on a machine loaded far beyond its cores
//!   the lab saw a 200 ms check time out and move a healthy connection;
//! - [`Builder::retry_delay`]`(500 ms)`: a connection closed young is replaced within
//!   0.35–0.65 s (R6), and a server that refuses is retried twice a second;
//! - [`Builder::connect_timeout`]`(1 s)`: a listed copy that is gone costs 1 s;
//! - [`TcpOptions::user_timeout`]`(5 s)`: the kernel's own bound, for traffic the health
//!   check does not cover (keepalive stays on by default for idle connections).
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use persistent_connection::catalog::{Catalog, Pick, StaticList};
//! use persistent_connection::{
//!     HealthCheck, HealthChecked, IoError, PersistentConnection, TcpConnection, TcpOptions,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! # let copy_a = listener.local_addr().unwrap();
//! # let copy_b: SocketAddr = "127.0.0.1:9".parse().unwrap();
//! let options = TcpOptions::new().user_timeout(Duration::from_secs(5));
//! let health = HealthCheck::new(Duration::from_millis(100), Duration::from_millis(200), 2);
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     StaticList::new([copy_a, copy_b]).get_address::<IoError>(Pick::InOrder),
//!     move |addr: SocketAddr, _cx| async move {
//!         let conn = TcpConnection::connect_with(addr, &options).await?;
//!         // Your protocol's ping goes here; an error or a timeout is a failed check.
//!         Ok(HealthChecked::new(conn, health, |_conn: TcpConnection| async {
//!             Ok::<(), String>(())
//!         }))
//!     },
//! )
//! .retry_delay(Duration::from_millis(500))
//! .connect_timeout(Duration::from_secs(1))
//! .build();
//! let conn = pc.connected().await;
//! assert_eq!(conn.peer_addr(), copy_a);
//! pc.close().await;
//! # }
//! ```
//!
//! # Example
//!
//! Two echo servers on loopback, a catalog that names one of them, and a persistent
//! connection that fails over when its server goes away:
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use persistent_connection::{Closable, Event, IoError, PersistentConnection, TcpConnection};
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Servers that accept and read until end of file.
//! let mut servers = Vec::new();
//! for _ in 0..2 {
//!     let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
//!     let addr = listener.local_addr().unwrap();
//!     let task = tokio::spawn(async move {
//!         let (stream, _) = listener.accept().await.unwrap();
//!         let mut buf = [0u8; 64];
//!         while stream.readable().await.is_ok() {
//!             match stream.try_read(&mut buf) {
//!                 Ok(0) => break,
//!                 Ok(_) => {}
//!                 Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
//!                 Err(_) => break,
//!             }
//!         }
//!     });
//!     servers.push((addr, task));
//! }
//! // The catalog: where the service is published now.
//! let catalog: Arc<Mutex<SocketAddr>> = Arc::new(Mutex::new(servers[0].0));
//!
//! let lookup = catalog.clone();
//! let pc = PersistentConnection::builder(
//!     "echo",
//!     move || {
//!         let addr = *lookup.lock().unwrap();
//!         async move { Ok::<_, IoError>(addr) }
//!     },
//!     |addr: SocketAddr, _cx| TcpConnection::connect(addr),
//! )
//! .retry_delay(Duration::from_millis(20))
//! .on_event(|event| async move {
//!     if let Event::Connected(c) = &event {
//!         println!("connected to {}", c.peer_addr());
//!     } else {
//!         println!("{event:?}");
//!     }
//! })
//! .build();
//!
//! let first = pc.connected().await;
//! assert_eq!(first.peer_addr(), servers[0].0);
//!
//! // The first server dies; the catalog now names the second.
//! *catalog.lock().unwrap() = servers[1].0;
//! servers[0].1.abort();
//! first.close_finished().await; // noticed by the connection itself
//! let second = pc.connected().await;
//! assert_eq!(second.peer_addr(), servers[1].0);
//!
//! pc.close().await;
//! assert!(second.is_closed());
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

// The persistent connection: what users build and hold.
mod builder;
mod error;
mod events;
mod guard;
mod handle;
mod status;

// What carries the machine on Tokio (shared state, the driver task, callbacks, waiters).
mod runtime;

// The connections it keeps, and where their copies are listed.
pub mod catalog;
pub mod conn;

// Integrations, each behind its cargo feature.
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "tower")]
pub mod tower;

pub use persistent_connection_core as core;
pub use persistent_connection_core::{AttemptError, EventKind, Jitter, RetryDelay, RetryPolicy};

pub use builder::{
    Builder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_LOOKUP_TIMEOUT,
    MAX_EVENT_CAPACITY,
};
#[cfg(feature = "connector")]
pub use catalog::connector;
#[cfg(feature = "tls")]
pub use conn::tls;
pub use conn::{
    Closable, CloseSignal, DEFAULT_KEEPALIVE, DEFAULT_USER_TIMEOUT, Driven, HealthCheck,
    HealthChecked, Keepalive, TcpConnection, TcpOptions, WithCloseSignal,
};
pub use error::{AttemptOutcome, Callback, Error, IoError, Keyed};
pub use events::{Event, EventStream, Lagged};
pub use handle::{PersistentConnection, WeakPersistentConnection};
pub use runtime::callbacks::ConnectContext;
pub use status::{State, Stats};
