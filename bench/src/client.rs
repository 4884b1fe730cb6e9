//! What every bench client is given and does, whichever library it is: its [`Setup`]
//! (catalog, base delay, stop signal, seed), its [`Mode`] (requests or idle) and
//! [`stopped`], how it notices the stop. Below both [`crate::ours`] and [`crate::peers`].

use std::time::Duration;

use tokio::sync::watch;

use crate::common::{Catalog, ReplySink};

/// What a client does once connected.
#[derive(Clone)]
pub enum Mode {
    /// One request every `every`, each waiting at most `timeout` for its reply; successful
    /// replies go to `sink`.
    Requests {
        /// Request period.
        every: Duration,
        /// Reply timeout.
        timeout: Duration,
        /// Where replies go.
        sink: ReplySink,
    },
    /// Nothing: hold the connection and notice when it goes away.
    Idle,
}

/// Everything a client is given.
#[derive(Clone)]
pub struct Setup {
    /// Where to look the address up, before every attempt.
    pub catalog: Catalog,
    /// The base retry delay.
    pub delay: Duration,
    /// Becomes true when the client must stop.
    pub stop: watch::Receiver<bool>,
    /// Seed for this project's jitter (and the jittered loop's).
    pub seed: u64,
    /// This project only: pick among the listed copies with the library's own picker
    /// (`catalog::Catalog::get_address`, which skips the copy handed out last) instead of
    /// the bench catalog's random pick. The failover bench's two-copies case.
    pub picker: bool,
}

/// Resolves when `stop` becomes true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
