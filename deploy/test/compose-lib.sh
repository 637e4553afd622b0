# Shared by the compose end-to-end tests (compose-e2e.sh, compose-cluster-e2e.sh);
# sourced, never run. The caller sets PROJECT, COMPOSE_FILE, Q (the queue's
# directory in the containers), work (a temporary directory) and t0, and
# fills `ids` (container id by service) after `dc up`.

if docker-compose version >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "FAIL: neither docker-compose nor docker compose found" >&2
    exit 1
fi
dc() { "${compose[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

passed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() {
    echo "FAIL: $*" >&2
    echo "$passed passed, 1 failed"
    exit 1
}
note() { printf '  [%3ds] %s\n' "$((SECONDS - t0))" "$*"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds.
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.2
    done
}

# Container ids by service, read once after `up` (they survive kill, stop
# and start; docker-compose itself is slow to ask).
declare -A ids=()
cid() { echo "${ids[$1]}"; }
# read_ids SERVICE...: fills `ids` from `dc ps`.
read_ids() {
    local n
    for n in "$@"; do
        ids[$n]=$(dc ps -a -q "$n")
        [ -n "${ids[$n]}" ] || fail "no container for $n"
    done
}
# rq NODE ARGS...: runs the repliq CLI inside NODE's container;
# rq_in reads standard input.
rq() {
    local node=$1
    shift
    docker exec "$(cid "$node")" repliq "$@"
}
rq_in() {
    local node=$1
    shift
    docker exec -i "$(cid "$node")" repliq "$@"
}
# records NODE: the queue's records as JSON lines (id, epoch, len, payload).
records() { rq "$1" tail "$Q" --format json; }
count() { records "$1" | wc -l; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$1")")" = healthy ]; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$(cid "$1")")" = true ]; }
stopped() { ! running "$1"; }
# network_of NODE: the name of NODE's (first) network.
network_of() {
    docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid "$1")" | awk '{print $1}'
}

# A writer process to stop on exit (compose-e2e.sh's streaming writer).
writer_pid=
# On exit: stop the writer, print the nodes' logs on failure, and remove the
# cluster, its network and volumes, and `work`.
cleanup() {
    local rc=$?
    if [ -n "$writer_pid" ]; then
        kill "$writer_pid" "$(cat "$work/writer.pid" 2>/dev/null)" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ]; then
        echo "--- logs of the nodes (last 60 lines each)"
        dc logs --no-color --tail=60 2>&1 || true
    fi
    dc down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -E
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2; echo "$passed passed, 1 failed"' ERR
