//! What the tests, the benchmarks, the network lab and the examples share, in one crate
//! that Cargo can see (none of it is compiled into another target by `#[path]`). Not
//! published.
//!
//! | module | what | feature |
//! | --- | --- | --- |
//! | [`echo`] | the echo client (`EchoConn`, one request id per reply) and its servers' wire formats | — |
//! | [`etcd`] | a real `etcd` child process on free ports of 127.0.0.1 (plain or TLS) | — |
//! | `certs` | a certificate authority and certificates made at test time | `certs` |
//! | `redis` | a real `redis-server` child process, the Redis client kept alive, its failover drill | `redis` (TLS: `tls`) |
//! | `stubborn` | stubborn-io over a stream that looks its address up at every reconnect | `stubborn` |
//! | `http` | hyper servers that can be killed, and the HTTP failover drill through `CatalogConnector` | `hyper` |
//!
//! The child servers need their binaries on the `PATH` (Debian's `redis-server` and
//! `etcd-server`; `scripts/needs.sh` installs them); a missing one is an error that says
//! so, never a skip.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "certs")]
pub mod certs;
pub mod echo;
pub mod etcd;
#[cfg(feature = "hyper")]
pub mod http;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "stubborn")]
pub mod stubborn;
