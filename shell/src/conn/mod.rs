//! The connections a persistent connection keeps: [`Closable`] (what the machine needs of a
//! connection) and the ready connection types.
//!
//! - [`TcpConnection`] and its [`TcpOptions`] (`tcp/`): a TCP stream that notices the peer
//!   closing;
//! - `tls` (feature `tls`): the same over rustls;
//! - [`HealthChecked`] (`health.rs`): closes a connection whose checks keep failing (S7);
//! - [`Driven`] (`driven.rs`): closes a client's connection when its driver future ends;
//! - [`CloseSignal`] and [`WithCloseSignal`] (`closable.rs`): any handle plus a close signal;
//!   [`CloseWakers`] for a type of one's own that implements
//!   [`Closable::poll_close_finished`];
//! - `http2` (feature `http2`): hyper's HTTP/2 client connection over any of them, for
//!   tonic and hyper, whose close fails the calls in flight;
//! - `grpc_health` (feature `grpc-health`): the `grpc.health.v1` check for [`HealthChecked`].

pub(crate) mod closable;
pub(crate) mod driven;
#[cfg(feature = "grpc-health")]
pub mod grpc_health;
pub(crate) mod health;
#[cfg(feature = "http2")]
pub mod http2;
pub(crate) mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

pub use closable::{Closable, CloseSignal, CloseWakers, WithCloseSignal};
pub use driven::Driven;
pub use health::{HealthCheck, HealthChecked};
pub use tcp::{DEFAULT_KEEPALIVE, DEFAULT_USER_TIMEOUT, Keepalive, TcpConnection, TcpOptions};
