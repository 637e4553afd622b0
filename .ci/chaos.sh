#!/usr/bin/env bash
# Fault-injection smoke (issue 12): a 3-node cluster in network namespaces,
# sync and async writers, kill / pause / partition nemeses for two minutes in
# cluster mode and one in static-primary mode, each followed by the history
# checker. Needs root. Exits non-zero on FAIL.
# Extra arguments are passed to `repliq-chaos run` (e.g. --seed N).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(libfaketime)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "== build (release): repliq and repliq-chaos"
cargo build --release -q -p repliq-cli -p repliq-chaos

echo "== the clock nemesis's means: libfaketime moves a daemon's wall clock, not its monotonic one"
cargo test --release -q -p repliq-cli --test faketime -- --ignored

# Cluster mode (the tool's default: a Raft catalog, per-queue leaders,
# automatic failover), then the static-primary mode for a shorter run.
# Results and the commands to run longer by hand: docs/reliability.md.
echo "== chaos smoke: 3 nodes, cluster mode, kill,pause,partition, sync and async"
target/release/repliq-chaos run \
    --nodes 3 --duration 120s --nemesis kill,pause,partition \
    --modes sync,async --rate 20 --interval 6 \
    --out target/chaos --repliq target/release/repliq "$@"
echo "== chaos smoke: 3 nodes, static primary, kill,pause,partition, sync and async"
target/release/repliq-chaos run --static-primary \
    --nodes 3 --duration 60s --nemesis kill,pause,partition \
    --modes sync,async --rate 20 --interval 6 \
    --out target/chaos --repliq target/release/repliq "$@"
