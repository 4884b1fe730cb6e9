#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh machine, then runs
# every test of the workspace with every feature on. A test never skips because a server
# is missing: this script installs the servers first (apt-get; CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Debian packages the tests and the build need, as `command:package` pairs (a path instead
# of a command is checked for existence):
# - redis-server: the Redis integration tests start it;
# - etcd (etcd-server): the etcd catalog's integration tests (feature `etcd`) start it;
# - protoc and Google's well-known .proto files: the etcd client crate compiles etcd's
#   protobuf definitions when the `etcd` feature is built.
needs=(
    "redis-server:redis-server"
    "etcd:etcd-server"
    "protoc:protobuf-compiler"
    "/usr/include/google/protobuf/descriptor.proto:libprotobuf-dev"
)
missing=()
for pair in "${needs[@]}"; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    if [[ "$cmd" == /* ]]; then
        [ -e "$cmd" ] || missing+=("$pkg")
    else
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    echo "== installing ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo test --workspace --all-features
