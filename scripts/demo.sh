#!/usr/bin/env bash
# The main job: what a newcomer runs to see the project work.
# Until the Tokio shell's live failover demo (issue 3) and the simulator (issue 4) land,
# it drives the core machine through a scripted failover history.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p persistent-connection-core --example walkthrough
