#!/usr/bin/env bash
# End-to-end test of the compose cluster (deploy/compose.yaml): three real
# containers on a private network, real SIGKILL, a real network cut, a real
# cluster restart. Needs docker and docker-compose (v1) or `docker compose`,
# and the image REPLIQ_IMAGE (default repliq:ci) built beforehand:
#
#   docker build -f deploy/docker/Dockerfile -t repliq:ci .
#   deploy/test/compose-e2e.sh
#
# Scenarios, each checking counts, order and exact content (id, epoch, length
# and payload of every record, as `repliq tail --format json` prints them):
#   1. N messages appended on the primary reach both secondaries, in order,
#      over mutual TLS: every node logs "mutual TLS required" and refused no
#      connection of its peers, and a plain TCP client on the compose network
#      is refused (closed without a byte, logged by the node), and so is a
#      daemon claiming to be repliq-2 with a certificate from another CA.
#   2. A secondary killed (SIGKILL) while a writer appends, then started again,
#      catches up: same records as the primary.
#   3. A secondary cut off the network while messages are written (it reports
#      not ready), then reconnected, catches up.
#   4. The whole cluster stopped (SIGTERM, exit 0) and started again: nothing
#      lost, segment files (sha256) identical on all three nodes, replication
#      resumes.
# Prints PASS/FAIL per check and `N passed, 0 failed` at the end; exit 1 on the
# first failure (after printing the nodes' logs). Always removes its cluster,
# network and volumes (docker-compose down -v).
set -euo pipefail

cd "$(dirname "$0")/../.."
export REPLIQ_IMAGE=${REPLIQ_IMAGE:-repliq:ci}
COMPOSE_FILE=deploy/compose.yaml
PROJECT=${E2E_PROJECT:-repliq-e2e-$$-$RANDOM}
N=${E2E_MESSAGES:-1000}        # scenario 1
M=${E2E_STREAM:-1500}          # scenario 2: messages appended while a node is killed
K=${E2E_PARTITION:-500}        # scenario 3: messages appended during the partition
TIMEOUT=${E2E_TIMEOUT:-60}     # seconds for any single wait
Q=/var/lib/repliq/data/orders  # the queue (compose.yaml: queue.names)
# Host ports of the nodes' HTTP servers: chosen by docker, so that the test
# never collides with anything on the host.
export REPLIQ_HTTP_PORT_1=0 REPLIQ_HTTP_PORT_2=0 REPLIQ_HTTP_PORT_3=0

# shellcheck source=deploy/test/compose-lib.sh
source deploy/test/compose-lib.sh
work=$(mktemp -d)
t0=$SECONDS

payloads() { records "$1" | sed -E 's/.*"payload":"([^"]*)".*/\1/'; }
has_count() { [ "$(count "$1")" -eq "$2" ]; }
has_at_least() { [ "$(count "$1")" -ge "$2" ]; }
ready() { docker exec "$(cid "$1")" repliq-healthcheck /readyz; }
not_ready() { ! ready "$1"; }

# same_as_primary NODE: NODE's records are exactly the primary's.
same_as_primary() {
    records repliq-1 >"$work/primary.json"
    records "$1" >"$work/$1.json"
    cmp -s "$work/primary.json" "$work/$1.json"
}
# expect_identical NODE WHAT: asserts same_as_primary, with a diff on failure.
expect_identical() {
    if same_as_primary "$1"; then
        pass "$2 ($(wc -l <"$work/primary.json") records identical on $1 and repliq-1)"
    else
        diff "$work/primary.json" "$work/$1.json" | head -20 >&2 || true
        fail "$2: $1 differs from repliq-1 ($(wc -l <"$work/$1.json") vs $(wc -l <"$work/primary.json") records)"
    fi
}
# caught_up NODE: waits until NODE holds exactly the primary's records.
caught_up() { wait_for "$TIMEOUT" "$1 to catch up with repliq-1" same_as_primary "$1"; }

echo "compose e2e: project $PROJECT, image $REPLIQ_IMAGE"
docker image inspect "$REPLIQ_IMAGE" >/dev/null 2>&1 || fail "image $REPLIQ_IMAGE not found (build it first)"

dc up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "docker-compose up"; }
read_ids repliq-1 repliq-2 repliq-3
for n in repliq-1 repliq-2 repliq-3; do
    wait_for "$TIMEOUT" "$n healthy (HEALTHCHECK)" healthy "$n"
done
wait_for "$TIMEOUT" "queue $Q on the primary" rq repliq-1 stat "$Q"
for n in repliq-2 repliq-3; do wait_for "$TIMEOUT" "$n ready" ready "$n"; done
uid=$(docker exec "$(cid repliq-1)" id -u)
[ "$uid" != 0 ] || fail "the daemon runs as root"
[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$(cid repliq-1)")" = true ] || fail "root filesystem not read-only"
pass "cluster up: 3 nodes healthy, secondaries ready, uid $uid, read-only root ($((SECONDS - t0)) s)"

# --- 1. replication of N messages ------------------------------------------
echo "== 1. $N messages through the primary reach both secondaries in order"
seq -f 'msg-%06g' 1 "$N" >"$work/expected"
rq_in repliq-1 append "$Q" <"$work/expected"
[ "$(payloads repliq-1 | tee "$work/got")" = "$(cat "$work/expected")" ] ||
    fail "primary holds $(wc -l <"$work/got") messages, expected msg-000001..msg-$(printf %06d "$N")"
pass "primary holds the $N messages in order"
for n in repliq-2 repliq-3; do
    wait_for "$TIMEOUT" "$n to receive $N messages" has_count "$n" "$N"
    payloads "$n" >"$work/got"
    cmp -s "$work/expected" "$work/got" || fail "$n: payloads differ from what was written"
    expect_identical "$n" "1. $n has the $N messages in order"
done
# The cluster runs with tls.mode required (compose.yaml): replication above
# went over mutual TLS, and a plain TCP client is refused.
expect_tls repliq-1 repliq-2 repliq-3
expect_impostor_refused repliq-1 repliq-2

# --- 2. a secondary killed while a writer appends ----------------------------
echo "== 2. repliq-2 killed mid-stream (SIGKILL), restarted, catches up"
# One `repliq append` reading lines as they come, about 2 ms apart. Half-way
# the writer waits for the gate, opened once repliq-2 is down, so that at
# least M/2 messages are written while it is down, however the timing falls.
(echo "$BASHPID" >"$work/writer.pid"
for i in $(seq 1 "$M"); do
    printf 'stream-%06d\n' "$i"
    if [ "$i" -eq $((M / 2)) ]; then
        for _ in $(seq 1 600); do [ -e "$work/gate" ] && break; sleep 0.1; done
    fi
    ((i % 10)) || sleep 0.02
done) | rq_in repliq-1 append "$Q" &
writer_pid=$!
wait_for "$TIMEOUT" "repliq-2 to receive part of the stream" has_at_least repliq-2 $((N + M / 5))
docker kill -s KILL "$(cid repliq-2)" >/dev/null || fail "docker kill repliq-2"
wait_for 10 "repliq-2 to stop" stopped repliq-2
at_kill=$(count repliq-1)
note "repliq-2 killed with $at_kill of $((N + M)) records on the primary"
touch "$work/gate"
# Let the primary move on without it.
wait_for "$TIMEOUT" "the writer to go on while repliq-2 is down" has_at_least repliq-1 $((N + M * 3 / 4))
note "repliq-2 started with $(count repliq-1) records on the primary"
docker start "$(cid repliq-2)" >/dev/null || fail "docker start repliq-2"
wait "$writer_pid" || fail "the writer's repliq append failed"
writer_pid=
total=$((N + M))
has_count repliq-1 "$total" || fail "primary holds $(count repliq-1) records, expected $total"
[ "$(payloads repliq-1 | tail -n "$M")" = "$(seq -f 'stream-%06g' 1 "$M")" ] ||
    fail "the stream is not on the primary in order"
pass "writer appended $M messages during the kill; primary holds $total in order"
caught_up repliq-2
expect_identical repliq-2 "2. repliq-2 caught up after SIGKILL and restart"
caught_up repliq-3
expect_identical repliq-3 "2. repliq-3 unaffected"
wait_for "$TIMEOUT" "repliq-2 ready again" ready repliq-2

# --- 3. a secondary cut off the network -------------------------------------
echo "== 3. repliq-3 disconnected from the network, written to, reconnected"
net=$(network_of repliq-3)
[ -n "$net" ] || fail "cannot find repliq-3's network"
before=$(count repliq-3)
docker network disconnect "$net" "$(cid repliq-3)" || fail "docker network disconnect"
seq -f 'cut-%06g' 1 "$K" | rq_in repliq-1 append "$Q"
total=$((total + K))
wait_for "$TIMEOUT" "repliq-2 to receive the $K messages" has_count repliq-2 "$total"
# The cut is real: repliq-3 notices (not ready) and received nothing.
wait_for "$TIMEOUT" "repliq-3 to report not ready while cut off" not_ready repliq-3
[ "$(count repliq-3)" -eq "$before" ] || fail "repliq-3 received records while disconnected"
pass "repliq-3 cut off: not ready, still $before records while the primary has $total"
docker network connect --alias repliq-3 "$net" "$(cid repliq-3)" || fail "docker network connect"
caught_up repliq-3
expect_identical repliq-3 "3. repliq-3 caught up after the partition healed"
wait_for "$TIMEOUT" "repliq-3 ready again" ready repliq-3
expect_identical repliq-2 "3. repliq-2 unaffected"

# --- 4. whole-cluster restart -----------------------------------------------
echo "== 4. the cluster stopped (SIGTERM) and started again"
records repliq-1 >"$work/before.json"
dc stop -t 20 >/dev/null 2>&1 || fail "docker-compose stop"
for n in repliq-1 repliq-2 repliq-3; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$(cid "$n")")
    [ "$code" = 0 ] || fail "$n exited with $code on SIGTERM, expected 0"
done
pass "all three daemons exited 0 on SIGTERM"
dc start >/dev/null 2>&1 || fail "docker-compose start"
for n in repliq-1 repliq-2 repliq-3; do wait_for "$TIMEOUT" "$n healthy after restart" healthy "$n"; done
for n in repliq-2 repliq-3; do wait_for "$TIMEOUT" "$n ready after restart" ready "$n"; done
records repliq-1 >"$work/after.json"
cmp -s "$work/before.json" "$work/after.json" || fail "the primary's records changed across the restart"
for n in repliq-2 repliq-3; do expect_identical "$n" "4. $n lost nothing across the restart"; done
# Every segment file on every node: name, sha256, and whether it holds any
# frame (anything but zeros after its 64-byte header). A writing process
# prepares (creates and preallocates) the segment after the one it writes to,
# so a node may have an empty segment more than another: segments present on
# every node must be identical, any other must be empty.
for n in repliq-1 repliq-2 repliq-3; do
    docker exec "$(cid "$n")" sh -c 'cd "$1" && for f in *.seg; do
        h=$(sha256sum <"$f" | cut -c1-64)
        if cmp -s -i 64 -n "$(($(stat -c %s "$f") - 64))" "$f" /dev/zero; then z=empty; else z=data; fi
        echo "$f $h $z"
    done' sh "$Q" | sed "s/^/$n /" >>"$work/segments"
done
verdict=$(awk '
    { nodes[$1]; seen[$2]++; hash[$2, $1] = $3; kind[$2, $1] = $4 }
    END {
        nn = length(nodes)
        for (s in seen) {
            if (seen[s] == nn) {
                common++
                h = ""
                for (n in nodes) {
                    if (h == "") h = hash[s, n]
                    else if (hash[s, n] != h) { print "differs: " s; bad = 1 }
                }
                if (kind[s, n] == "data") withdata++
            } else {
                for (n in nodes) if ((s, n) in kind && kind[s, n] != "empty") { print "only on some nodes, with data: " s " on " n; bad = 1 }
                extra++
            }
        }
        if (!common) { print "no segment common to all nodes"; bad = 1 }
        if (!bad) printf "ok %d %d %d\n", common, withdata, extra
    }' "$work/segments")
case "$verdict" in
    ok\ *) read -r _ common withdata extra <<<"$verdict" ;;
    *) cat "$work/segments" >&2; fail "segment files differ: $verdict" ;;
esac
sums=$(awk '{ seen[$2]++; h[$2] = substr($3, 1, 12) }
    END { for (s in seen) if (seen[s] == 3) { printf "%s%s=%s", sep, s, h[s]; sep = ", " } }' "$work/segments")
pass "4. segment files identical on the three nodes: $common segment(s) on all ($withdata with data; $sums), $extra prepared empty segment(s) elsewhere"
rq repliq-1 append "$Q" after-restart
total=$((total + 1))
for n in repliq-2 repliq-3; do
    wait_for "$TIMEOUT" "$n to receive a message written after the restart" has_count "$n" "$total"
    expect_identical "$n" "4. replication resumed on $n"
done

echo "compose e2e: all scenarios passed in $((SECONDS - t0)) s"
echo "$passed passed, 0 failed"
