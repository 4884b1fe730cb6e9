#!/usr/bin/env bash
# The network lab (issue 19), one command, as root: installs what the lab needs
# (scripts/needs.sh: iproute2, nftables), builds, runs the lab's own tests and every drill's
# test (the short pass CI runs too), then the drills' tables (netlab-drills), and tears
# everything down: every network namespace whose name starts with the lab's prefix
# (`pclab-`) is deleted when the script ends, also after a failure or Ctrl-C. (The
# namespaces carry the veth pairs and the nft tables with them; the lab never touches the
# root namespace's network.)
#
#   bash scripts/netlab.sh          # tables over 3 repetitions per row (a few minutes)
#   bash scripts/netlab.sh --full   # 10 repetitions per row (BENCHMARKS.md's tables)
#   bash scripts/netlab.sh --reps N --only 1,3   # any repetitions, some drills
#
# The tables go to stdout and to target/netlab-tables.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

reps=3
only=1,2,3,4,5,7
while (($#)); do
    case "$1" in
    --full) reps=10 ;;
    --reps) reps="$2"; shift ;;
    --only) only="$2"; shift ;;
    *) echo "usage: bash scripts/netlab.sh [--full] [--reps N] [--only 1,2,3,4,5,7]" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "the network lab needs root (network namespaces, nftables): run as root" >&2
    exit 1
fi

teardown() {
    local left
    left="$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pclab-' || true)"
    for ns in $left; do
        # Processes started inside (servers of a test that was killed), by id.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    if ip netns list 2>/dev/null | grep -q '^pclab-'; then
        echo "netlab: namespaces left behind:" >&2
        ip netns list | grep '^pclab-' >&2
        return 1
    fi
    echo "== netlab: torn down (no pclab- namespace left)"
}
trap teardown EXIT

bash scripts/needs.sh

echo "== build"
cargo build --release -p persistent-connection-netlab --bins
echo "== the lab's tests and the drills' short pass"
cargo test -p persistent-connection-netlab
echo "== drill tables: $reps repetitions per row (drills $only)"
mkdir -p target
cargo run --quiet --release -p persistent-connection-netlab --bin netlab-drills -- \
    --reps "$reps" --only "$only" | tee target/netlab-tables.md
