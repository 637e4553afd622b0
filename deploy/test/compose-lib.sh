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

# --- mutual TLS (tls.mode required in both compose files) -------------------
# refusals NODE: how many plain TCP connections NODE has refused, as logged.
refusals() {
    docker logs "$(cid "$1")" 2>&1 | grep -c "plain TCP connection refused: tls.mode is required" || true
}
has_refused() { [ "$(refusals "$1")" -ge 1 ]; }
# plain_probe NODE: a plain TCP client on NODE's network connects to NODE's
# replication port and sends the start of a plain frame; succeeds if NODE
# closes the connection without answering a byte.
plain_probe() {
    docker run --rm --network "$(network_of "$1")" --read-only --entrypoint bash "$REPLIQ_IMAGE" -c '
        exec 3<>"/dev/tcp/$1/31337" || exit 2
        printf "\026\000\000\000plain" >&3
        read -r -t 10 -N 1 _ <&3 2>/dev/null # a reset is a close too
        rc=$?
        [ "$rc" = 1 ] && exit 0          # end of stream: closed, nothing sent
        [ "$rc" = 0 ] && echo "the node answered" >&2
        [ "$rc" -gt 128 ] && echo "the node kept the connection open" >&2
        exit 1' probe "$1"
}
# expect_tls NODE...: every NODE started with mutual TLS required and has
# refused no plain TCP connection so far (its peers, which replicated, all
# dialed with TLS); the first NODE (the primary or the queue's leader)
# served each other NODE a replication session, which with TLS required
# means over TLS, from a certificate naming that NODE; then a plain TCP
# client on the compose network is refused by the first NODE, which logs it.
expect_tls() {
    local n r
    for n in "$@"; do
        # (The logs whole into a file: `grep -q` on a pipe can end it early,
        # which pipefail reports as a failure.)
        docker logs "$(cid "$n")" >"$work/$n.log" 2>&1
        grep -q "mutual TLS required on 0.0.0.0:31337" "$work/$n.log" ||
            fail "$n did not log \"mutual TLS required\" (tls.mode is not required?)"
        r=$(refusals "$n")
        [ "$r" -eq 0 ] || fail "$n refused $r plain TCP connection(s) from its peers"
    done
    for n in "${@:2}"; do
        grep -q "secondary connected peer=$n " "$work/$1.log" ||
            fail "$1 did not log a replication session of $n"
    done
    pass "TLS: $* require mutual TLS on 31337, none refused a peer; $1 served ${*:2} over TLS"
    plain_probe "$1" || fail "a plain TCP client was not refused by $1"
    wait_for 10 "$1 to log the refused plain TCP connection" has_refused "$1"
    pass "TLS: a plain TCP client on the compose network is refused by $1 (closed, logged)"
}
# expect_impostor_refused NODE CLAIMED: a daemon on the compose network
# claiming to be CLAIMED, trusting the cluster's CA but with a certificate
# (naming CLAIMED) from a CA of its own, tries for 5 s to follow NODE: NODE
# refuses its certificate at the handshake (and logs it), and the impostor
# never follows.
expect_impostor_refused() {
    local node=$1 claimed=$2 vol before after
    vol=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/etc/repliq/tls"}}{{.Name}}{{end}}{{end}}' "$(cid "$claimed")")
    [ -n "$vol" ] || fail "no TLS volume on $claimed"
    docker logs "$(cid "$node")" >"$work/$node.log" 2>&1
    before=$(grep -c "TLS handshake refused: invalid peer certificate" "$work/$node.log" || true)
    docker run --rm --network "$(network_of "$node")" --read-only -v "$vol:/cluster-tls:ro" \
        -e NODE_NAME="$claimed" -e REPLIQ_LOG=info \
        -e REPLIQ_CONFIG="{replication: {mode: async, primary: $node, timeout_ms: 3000,
            discovery: {method: static, peers: [{name: $node, address: \"$node:31337\"}]}},
          queue: {names: [orders], persistence: {path: /var/lib/repliq/data}},
          tls: {mode: required, cert: /var/lib/repliq/own/tls.crt, key: /var/lib/repliq/own/tls.key,
                ca: /cluster-tls/ca.crt}}" \
        --entrypoint sh "$REPLIQ_IMAGE" -c '
            repliq cert ca --out /var/lib/repliq/ca >/dev/null &&
            repliq cert node "$NODE_NAME" --ca /var/lib/repliq/ca --out /var/lib/repliq/own >/dev/null &&
            exec timeout -s INT 5 repliq daemon' >"$work/impostor.log" 2>&1 || true
    grep -q "repliq daemon starting" "$work/impostor.log" ||
        { cat "$work/impostor.log" >&2; fail "the impostor daemon did not start"; }
    ! grep -q "following primary" "$work/impostor.log" ||
        fail "the impostor claiming $claimed followed $node"
    docker logs "$(cid "$node")" >"$work/$node.log" 2>&1
    after=$(grep -c "TLS handshake refused: invalid peer certificate" "$work/$node.log" || true)
    [ "$after" -gt "$before" ] || fail "$node did not refuse the impostor's certificate"
    pass "TLS: an impostor claiming $claimed with a certificate of another CA is refused by $node ($((after - before)) handshakes)"
}
