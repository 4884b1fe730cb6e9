#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine, then runs
# every test of the workspace with every feature on. A test never skips because a server
# is missing: this script installs the servers first (apt-get; CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Debian packages the integration tests need, as `command:package` pairs.
needs=(redis-server:redis-server)
missing=()
for pair in "${needs[@]}"; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --workspace --all-features
