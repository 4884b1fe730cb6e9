#!/usr/bin/env bash
# The network lab (issue 19), one command, as root: installs what the lab needs
# (scripts/needs.sh: iproute2, nftables), builds, runs the lab's own tests and every drill's
# test (the short pass CI runs too), then the drills' tables (netlab-drills), and tears
# everything down: every network namespace whose name starts with the lab's prefix
# (`pclab-<pid>-`) is deleted when the script ends, also after a failure or Ctrl-C, unless
# its process is still running (a lab of another run beside this one). (The
# namespaces carry the veth pairs and the nft tables with them; the lab never touches the
# root namespace's network.)
#
#   bash scripts/netlab.sh          # tables over 3 repetitions per row (a few minutes)
#   bash scripts/netlab.sh --full   # 10 repetitions per row (BENCHMARKS.md's tables)
#   bash scripts/netlab.sh --reps N --only 1,3   # any repetitions, some drills
#
# Drill 6 (the etcd catalog against a three-member etcd cluster) is a test of its own
# (netlab/tests/etcd_cluster.rs, feature `etcd`), run with NETLAB_REPS repetitions; it also
# needs `etcd` (scripts/needs.sh installs etcd-server).
#
# The tables go to stdout and to target/netlab-tables.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

reps=3
only=1,2,3,4,5,6,7
while (($#)); do
    case "$1" in
    --full) reps=10 ;;
    --reps) reps="$2"; shift ;;
    --only) only="$2"; shift ;;
    *) echo "usage: bash scripts/netlab.sh [--full] [--reps N] [--only 1,2,3,4,5,6,7]" >&2; exit 2 ;;
    esac
    shift
done

if [ "$(id -u)" -ne 0 ]; then
    echo "the network lab needs root (network namespaces, nftables): run as root" >&2
    exit 1
fi

teardown() {
    # A lab's namespaces are named pclab-<pid>-<n>-<host>, <pid> the process that made it.
    # Delete those whose process is gone (this script's runs, when it ends, also killed
    # ones); leave alone the labs of processes still running (another run of this script,
    # a `cargo test` beside it).
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pclab-' || true); do
        pid="${ns#pclab-}"
        pid="${pid%%-*}"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            continue
        fi
        # Processes started inside (servers of a test that was killed), by id.
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns delete "$ns" 2>/dev/null || true
    done
    local left
    left="$(ip netns list 2>/dev/null | awk '{print $1}' | { grep '^pclab-' || true; } | while read -r ns; do
        pid="${ns#pclab-}"; pid="${pid%%-*}"
        kill -0 "$pid" 2>/dev/null || echo "$ns"
    done)"
    if [ -n "$left" ]; then
        echo "netlab: namespaces left behind: $left" >&2
        return 1
    fi
    echo "== netlab: torn down (no pclab- namespace of a finished process left)"
}
trap teardown EXIT

bash scripts/needs.sh

echo "== build"
cargo build --release -p persistent-connection-netlab --bins
echo "== the lab's tests and the drills' short pass"
cargo test -p persistent-connection-netlab --features etcd
echo "== drill tables: $reps repetitions per row (drills $only)"
mkdir -p target
: >target/netlab-tables.md
# Drill 6 is not in netlab-drills: it runs as its test, repeated.
bin_only="$(tr ',' '\n' <<<"$only" | grep -vx 6 | paste -sd, - || true)"
if [ -n "$bin_only" ]; then
    cargo run --quiet --release -p persistent-connection-netlab --bin netlab-drills -- \
        --reps "$reps" --only "$bin_only" | tee -a target/netlab-tables.md
fi
if [[ ",$only," == *",6,"* ]]; then
    echo "== drill 6 (three-member etcd cluster): $reps repetitions"
    if ! NETLAB_REPS="$reps" cargo test -p persistent-connection-netlab --features etcd \
        --test etcd_cluster -- --nocapture >target/netlab-drill6.log 2>&1; then
        tail -n 80 target/netlab-drill6.log >&2
        echo "drill 6 failed; its whole output is in target/netlab-drill6.log" >&2
        exit 1
    fi
    grep -E '^(\||Drill 6)' target/netlab-drill6.log | tee -a target/netlab-tables.md
fi
