#!/usr/bin/env bash
# End-to-end test of the compose cluster in cluster mode
# (deploy/compose-cluster.yaml): three real containers, a Raft catalog, real
# SIGKILL and a real network cut of a queue's leader. Needs docker and
# docker-compose (v1) or `docker compose`, python3, and the image REPLIQ_IMAGE
# (default repliq:ci) built beforehand:
#
#   docker build -f deploy/docker/Dockerfile -t repliq:ci .
#   deploy/test/compose-cluster-e2e.sh
#
# Scenarios (records compared as `repliq tail --format json` prints them:
# id, epoch, length and payload):
#   1. The cluster forms; a queue created on repliq-1 is led by it and
#      replicated to both others; a local append on a follower is refused
#      with an error naming the leader. All of it over mutual TLS: every
#      node logs "mutual TLS required" and refused no connection of its
#      peers, and a plain TCP client on the compose network is refused, and
#      so is a daemon claiming to be repliq-2 with another CA's certificate.
#   2. The leader killed (SIGKILL): another member takes appends (the time is
#      printed), holding every record the old leader had replicated; the old
#      leader restarts, and follows with the new leader's log.
#   3. The current leader cut off the network: its local writers are refused
#      once its lease runs out; the majority elects a leader that takes
#      appends; after the cut heals, the old leader holds the new leader's log
#      exactly, and on every node epochs never go down along the log (no
#      record of an old epoch after a newer epoch's first id).
# Prints PASS/FAIL per check and `N passed, 0 failed` at the end; exit 1 on the
# first failure (after printing the nodes' logs). Always removes its cluster,
# network and volumes.
set -euo pipefail

cd "$(dirname "$0")/../.."
export REPLIQ_IMAGE=${REPLIQ_IMAGE:-repliq:ci}
COMPOSE_FILE=deploy/compose-cluster.yaml
PROJECT=${E2E_PROJECT:-repliq-cluster-e2e-$$-$RANDOM}
N=${E2E_MESSAGES:-500}
TIMEOUT=${E2E_TIMEOUT:-90}     # seconds for any single wait
Q=/var/lib/repliq/data/orders
NODES=(repliq-1 repliq-2 repliq-3)
export REPLIQ_HTTP_PORT_1=0 REPLIQ_HTTP_PORT_2=0 REPLIQ_HTTP_PORT_3=0

# shellcheck source=deploy/test/compose-lib.sh
source deploy/test/compose-lib.sh
work=$(mktemp -d)
t0=$SECONDS

now_ms() { date +%s%3N; }

# cluster_json NODE: the catalog as NODE serves it.
cluster_json() { rq "$1" cluster status 127.0.0.1:8080 --json; }
# formed NODE: NODE's catalog lists the three members, each with a report.
formed() {
    cluster_json "$1" | python3 -c '
import json, sys
c = json.load(sys.stdin).get("catalog") or {}
ms = c.get("members") or []
sys.exit(0 if len(ms) == 3 and all(m.get("last_report") is not None for m in ms) else 1)'
}
# leader_as_seen_by NODE: "LEADER EPOCH" of the queue in NODE's catalog.
leader_as_seen_by() {
    cluster_json "$1" | python3 -c '
import json, sys
c = json.load(sys.stdin).get("catalog") or {}
for q in c.get("queues") or []:
    if q["name"] == "orders" and q.get("leader"):
        print(q["leader"], q["epoch"]); sys.exit(0)
sys.exit(1)'
}
# led_by NODE LEADER [MIN_EPOCH]: NODE's catalog names LEADER, epoch >= MIN_EPOCH.
led_by() {
    local got
    got=$(leader_as_seen_by "$1") || return 1
    [ "${got% *}" = "$2" ] && [ "${got#* }" -ge "${3:-1}" ]
}
# same_records A B: A's and B's records are identical.
same_records() {
    records "$1" >"$work/$1.json"
    records "$2" >"$work/$2.json"
    cmp -s "$work/$1.json" "$work/$2.json"
}
# epochs_never_go_down NODE: along NODE's log, epochs are non-decreasing.
epochs_never_go_down() {
    records "$1" | python3 -c '
import json, sys
last = 0
for n, line in enumerate(sys.stdin):
    e = json.loads(line)["epoch"]
    if e < last:
        print(f"record {n}: epoch {e} after epoch {last}"); sys.exit(1)
    last = e'
}
# take_appends NODE VALUE: a local append on NODE succeeds.
take_appends() { rq "$1" append "$Q" "$2"; }

echo "compose cluster e2e: project $PROJECT, image $REPLIQ_IMAGE"
docker image inspect "$REPLIQ_IMAGE" >/dev/null 2>&1 || fail "image $REPLIQ_IMAGE not found (build it first)"
dc up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "docker-compose up"; }
read_ids "${NODES[@]}"
for n in "${NODES[@]}"; do wait_for "$TIMEOUT" "$n healthy" healthy "$n"; done
for n in "${NODES[@]}"; do wait_for "$TIMEOUT" "$n's catalog to list 3 reporting members" formed "$n"; done
pass "cluster formed: 3 members in every node's catalog ($((SECONDS - t0)) s)"

# --- 1. a queue created on repliq-1 ----------------------------------------
echo "== 1. a queue created on repliq-1 is led by it and replicated"
rq repliq-1 create "$Q" >/dev/null
seq -f 'first-%06g' 1 "$N" | rq_in repliq-1 append "$Q"
[ "$(count repliq-1)" -eq "$N" ] || fail "repliq-1 holds $(count repliq-1) records, expected $N"
for n in repliq-2 repliq-3; do
    wait_for "$TIMEOUT" "$n to hold repliq-1's records" same_records repliq-1 "$n"
    wait_for "$TIMEOUT" "$n's catalog to name repliq-1 the leader" led_by "$n" repliq-1
done
pass "1. $N records on repliq-1, identical on repliq-2 and repliq-3; repliq-1 leads epoch 1"
refused() {
    local err
    if err=$(rq repliq-2 append "$Q" intruder 2>&1); then
        echo "accepted"
        return 1
    fi
    grep -q "the leader is repliq-1" <<<"$err"
}
wait_for "$TIMEOUT" "a follower's refusal to name the leader" refused
same_records repliq-1 repliq-2 || fail "the refused append left a trace on repliq-2"
pass "1. an append on follower repliq-2 is refused, naming repliq-1, and leaves no trace"
# tls.mode required (compose-cluster.yaml): the catalog and replication
# above went over mutual TLS, and a plain TCP client is refused.
expect_tls repliq-1 repliq-2 repliq-3
expect_impostor_refused repliq-1 repliq-2

# --- 2. the leader killed ---------------------------------------------------
echo "== 2. the leader (repliq-1) killed with SIGKILL"
records repliq-1 >"$work/acked.json"
docker kill -s KILL "$(cid repliq-1)" >/dev/null || fail "docker kill repliq-1"
wait_for 10 "repliq-1 to stop" stopped repliq-1
killed_at=$(now_ms)
new=
new_takes_appends() {
    for n in repliq-2 repliq-3; do
        if take_appends "$n" after-failover >/dev/null 2>&1; then
            new=$n
            return 0
        fi
    done
    return 1
}
deadline=$((SECONDS + TIMEOUT))
until new_takes_appends; do
    [ "$SECONDS" -lt "$deadline" ] || fail "no member took appends within ${TIMEOUT}s of the kill"
    sleep 0.1
done
note "$new took its first append $(($(now_ms) - killed_at)) ms after the kill (failover_timeout_ms 3000)"
records "$new" | head -n "$N" >"$work/new-head.json"
cmp -s "$work/acked.json" "$work/new-head.json" || fail "the new leader $new lacks records repliq-1 had replicated"
last_epoch=$(records "$new" | tail -n 1 | sed -E 's/.*"epoch":([0-9]+).*/\1/')
[ "$last_epoch" -ge 2 ] || fail "the new leader writes in epoch $last_epoch, expected a new epoch"
pass "2. $new leads epoch $last_epoch and holds all $N records repliq-1 had replicated"
docker start "$(cid repliq-1)" >/dev/null || fail "docker start repliq-1"
wait_for "$TIMEOUT" "repliq-1 healthy after restart" healthy repliq-1
wait_for "$TIMEOUT" "repliq-1 to follow $new" same_records "$new" repliq-1
for n in "${NODES[@]}"; do epochs_never_go_down "$n" || fail "$n: epochs go down along the log"; done
pass "2. repliq-1 restarted and holds $new's log exactly"

# --- 3. the leader cut off the network --------------------------------------
old=$new
echo "== 3. the leader ($old) cut off the network"
seq -f 'before-cut-%06g' 1 100 | rq_in "$old" append "$Q"
for n in "${NODES[@]}"; do
    [ "$n" = "$old" ] || wait_for "$TIMEOUT" "$n to hold $old's records" same_records "$old" "$n"
done
net=$(network_of "$old")
[ -n "$net" ] || fail "cannot find $old's network"
docker network disconnect "$net" "$(cid "$old")" || fail "docker network disconnect"
cut_at=$(now_ms)
lease_refused() {
    local err
    if err=$(rq "$old" append "$Q" on-the-cut-off-leader 2>&1); then
        return 1
    fi
    grep -Eq "not taking appends|replica" <<<"$err"
}
wait_for "$TIMEOUT" "$old to refuse local appends once its lease ran out" lease_refused
note "$old refused local appends $(($(now_ms) - cut_at)) ms after the cut"
pass "3. the cut-off leader $old refuses local appends"
others=()
for n in "${NODES[@]}"; do [ "$n" = "$old" ] || others+=("$n"); done
majority=
majority_takes_appends() {
    for n in "${others[@]}"; do
        if take_appends "$n" on-the-majority >/dev/null 2>&1; then
            majority=$n
            return 0
        fi
    done
    return 1
}
wait_for "$TIMEOUT" "a member of the majority to take appends" majority_takes_appends
pass "3. $majority leads on the majority side and takes appends"
docker network connect --alias "$old" "$net" "$(cid "$old")" || fail "docker network connect"
for n in "${NODES[@]}"; do
    [ "$n" = "$majority" ] || wait_for "$TIMEOUT" "$n to hold $majority's log" same_records "$majority" "$n"
done
for n in "${NODES[@]}"; do epochs_never_go_down "$n" || fail "$n: a record of an old epoch after a newer one"; done
pass "3. after the cut healed, all three hold $majority's log ($(count "$majority") records); epochs never go down"

echo "compose cluster e2e: all scenarios passed in $((SECONDS - t0)) s"
echo "$passed passed, 0 failed"
