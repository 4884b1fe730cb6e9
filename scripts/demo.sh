#!/usr/bin/env bash
# The main job: what a newcomer runs to see the project work.
# The live failover demo (about 25 s): three echo servers on 127.0.0.1, a catalog, a
# persistent connection that fails over as servers are killed and restarted; it prints
# every event with its time, each failover gap, and a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --quiet --release -p persistent-connection --example failover
# Then the simulator: 2000 seeded worlds on a virtual clock, every invariant checked after every step.
cargo run --quiet --release -p persistent-connection-sim -- --seeds 2000
