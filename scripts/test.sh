#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine, then runs
# every test of the workspace with every feature on. A test never skips because a server
# is missing: this script installs the servers first (apt-get; CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

bash scripts/needs.sh

cargo test --workspace --all-features
