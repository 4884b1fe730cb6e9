#!/usr/bin/env bash
# Installs the Debian packages that the build with every feature and the tests need, when
# missing (apt-get; CI runs as root, elsewhere through sudo). Run by scripts/test.sh and at
# the start of .ci/run, so that every step that builds with --all-features (docs, the
# rust-version check, clippy, the tests) finds them on a fresh machine.
set -euo pipefail

# Debian packages the tests and the build need, as `command:package` pairs (a path instead
# of a command is checked for existence):
# - redis-server: the Redis integration tests start it;
# - etcd (etcd-server): the etcd catalog's integration tests (feature `etcd`) start it;
# - protoc and Google's well-known .proto files: the etcd client crate compiles etcd's
#   protobuf definitions when the `etcd` feature is built;
# - ip (iproute2) and nft (nftables): the network lab (netlab/, issue 19) makes hosts of
#   network namespaces and injects faults with nftables rules.
needs=(
    "redis-server:redis-server"
    "etcd:etcd-server"
    "protoc:protobuf-compiler"
    "/usr/include/google/protobuf/descriptor.proto:libprotobuf-dev"
    "ip:iproute2"
    "nft:nftables"
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
