//! Keeps a connection to a service alive, on Tokio: looks the address up before every
//! attempt (so it fails over between redundant servers listed in a catalog), connects,
//! tells you what happens through events it *awaits*, retries on a jittered schedule
//! counted from each attempt's start, and closes promptly. It follows Jane Street's OCaml
//! `Persistent_connection_kernel`; the contract is the project's behaviour document (rules
//! R1–R17, guarantees S1–S8), shipped as [`core::behaviour`] (`docs/behaviour.md` in the
//! repository).
//!
//! This crate is the thin Tokio driver and public API; every decision lives in the sans-IO
//! machine of [`persistent_connection_core`] (re-exported as [`core`]).
//!
//! # Where things live
//!
//! - [`PersistentConnection::builder`] → [`Builder`] → [`PersistentConnection`], the handle:
//!   waiters (`connected()`, R9; `connected_or_failed_to_connect()`, R10), queries
//!   (`current_connection()`, `state()`, `stats()`), `events()` (an [`EventStream`] of
//!   [`Event`]s) and `close()`. [`ConnectContext`] is what `connect` receives (R12);
//!   [`Error`] wraps your error with what the shell adds (a panic, a timeout).
//! - [`conn`]: [`Closable`], what a connection must offer, and the ready connection types:
//!   [`TcpConnection`] with its [`conn::TcpOptions`], `conn::tls` (feature `tls`),
//!   [`conn::HealthChecked`] (closes a connection whose checks keep failing),
//!   [`conn::Driven`], and `conn::http2` / `conn::grpc_health` (features `http2`,
//!   `grpc-health`: an HTTP/2 connection for tonic and hyper, the gRPC health check).
//! - [`catalog`]: ready `get_address` sources that list redundant copies of a service
//!   (a static list, DNS, etcd) and pick one per attempt; `catalog::connector` (feature
//!   `connector`) hands a catalog to hyper's and tonic's own clients.
//!   [`PersistentConnection::with_catalog`] *follows* the catalog: a copy withdrawn or a
//!   preferred copy back is handed over to make-before-break (R15), a new copy ends a wait
//!   (R16), another copy replaces a young connection at once (R17).
//! - `tower` and `metrics` (features of the same names): a `tower::Service` over a
//!   persistent connection, and its counters through the `metrics` facade.
//! - [`guide`]: the defaults and what they mean, what notices which failure and how fast,
//!   the settings recommended for fast failover, a failover step by step, and deploys (a
//!   rolling deploy through etcd with `with_catalog`'s defaults: 0 failed requests, the
//!   longest gap that of a hand-rolled loop; how to drain a copy).
//!
//! Inside, `runtime/` carries the machine on one Tokio task (and the catalog follower
//! beside it) and decides nothing.
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
//! .retry_policy(Duration::from_millis(20))
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

// The user's guide, as docs only.
pub mod guide;

// Integrations, each behind its cargo feature.
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "tower")]
pub mod tower;

pub use persistent_connection_core as core;
pub use persistent_connection_core::{AttemptError, RetryPolicy};

pub use builder::{
    Builder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_EVENT_CAPACITY, DEFAULT_HANDOVER_GRACE,
    DEFAULT_LOOKUP_TIMEOUT, MAX_EVENT_CAPACITY,
};
pub use conn::{Closable, TcpConnection};
pub use error::{AttemptOutcome, Callback, Error, IoError, Keyed};
pub use events::{Event, EventStream, Lagged};
pub use handle::{PersistentConnection, WeakPersistentConnection};
pub use runtime::callbacks::ConnectContext;
pub use status::{State, Stats};
