//! This project's client. Filled in once the shell's public API has landed.

use crate::peers::{Mode, Setup};

/// Runs one persistent connection.
pub async fn run(setup: Setup, _mode: Mode) {
    eprintln!("persistent-connection client not wired yet (seed {})", setup.seed);
}
