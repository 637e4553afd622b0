#!/usr/bin/env bash
# The container image and the compose cluster, end to end:
#   1. tools (debootstrap, docker-compose) if missing;
#   2. local base images (deploy/docker/build-base-images.sh; skipped when present);
#   3. the image repliq:ci (deploy/docker/Dockerfile), with crates vendored
#      first when build containers cannot download them;
#   4. the image itself: read-only root, non-root user, HEALTHCHECK, exit 0 on SIGTERM;
#   5. the three-node compose cluster (deploy/test/compose-e2e.sh);
#   6. the compose cluster in cluster mode: failover and partition
#      (deploy/test/compose-cluster-e2e.sh).
# Quiet unless something fails; prints each stage's duration.
# Environment: REPLIQ_CI_IMAGE (default repliq:ci); REPLIQ_DOCKER_VENDOR=auto
# (default: vendor if a build container cannot fetch from crates.io, or if
# deploy/docker/vendor already exists), always, or never.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${REPLIQ_CI_IMAGE:-repliq:ci}
VENDOR=${REPLIQ_DOCKER_VENDOR:-auto}
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
export DOCKER_BUILDKIT=0 # the classic builder: this machine has no buildx
SUDO=
[ "$(id -u)" = 0 ] || SUDO="sudo -E"

stage_start=$SECONDS
stage() {
    echo "== docker: $*"
    stage_start=$SECONDS
}
took() { echo "   ($((SECONDS - stage_start)) s)"; }
logs=$(mktemp -d)
smoke=
cleanup() {
    if [ -n "$smoke" ]; then
        docker rm -f "$smoke" >/dev/null 2>&1 || true
        docker volume rm -f "$smoke" >/dev/null 2>&1 || true
    fi
    rm -rf "$logs"
}
trap cleanup EXIT
# quietly LOG COMMAND...: runs COMMAND with its output in a log, shown on failure.
quietly() {
    local log="$logs/$1.log"
    shift
    if ! "$@" >"$log" 2>&1; then
        echo "docker: failed: $*" >&2
        tail -n 60 "$log" >&2
        exit 1
    fi
}

stage "tools"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker >/dev/null || need+=(docker.io)
docker-compose version >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
if [ "${#need[@]}" -gt 0 ]; then
    quietly apt-update $SUDO apt-get update -qq
    quietly apt-install env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
    echo "   installed: ${need[*]}"
fi
docker info >/dev/null 2>&1 || { echo "docker: the docker daemon is not reachable" >&2; exit 1; }
took

stage "base images"
$SUDO bash deploy/docker/build-base-images.sh
took

stage "image $IMAGE"
case "$VENDOR" in
    always) vendor=1 ;;
    never) vendor=0 ;;
    *)
        if [ -d deploy/docker/vendor ]; then
            vendor=1 # keep it in sync with Cargo.lock: the Dockerfile uses it when present
        elif timeout 90 docker run --rm "$BUILDER_IMAGE" cargo info --quiet itoa >/dev/null 2>&1; then
            vendor=0
        else
            echo "   build containers cannot download crates: vendoring them"
            vendor=1
        fi
        ;;
esac
if [ "$vendor" = 1 ]; then
    bash deploy/docker/vendor.sh | sed 's/^/   /'
elif [ -d deploy/docker/vendor ]; then
    rm -rf deploy/docker/vendor
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || true)
# CI checks behaviour, not speed: no LTO and parallel codegen build the image
# in about half the time. REPLIQ_CI_RELEASE_PROFILE=1 keeps the workspace's
# release profile (what a plain `docker build` uses).
profile=()
if [ "${REPLIQ_CI_RELEASE_PROFILE:-0}" != 1 ]; then
    profile=(--build-arg CARGO_PROFILE_RELEASE_LTO=false --build-arg CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16)
fi
quietly build docker build --force-rm -f deploy/docker/Dockerfile -t "$IMAGE" "${profile[@]}" \
    ${commit:+--build-arg REPLIQ_GIT_COMMIT="$commit"} .
# The classic builder keeps each build's stages as untagged images; the
# newest are this build's cache. Tag them, and delete older ones (superseded
# stages and images), so that repeated runs do not fill the disk.
for st in planner builder; do
    newest=$(docker images -q -f dangling=true -f "label=io.repliq.stage=$st" | head -n1)
    [ -n "$newest" ] && docker tag "$newest" "repliq-build-cache:$st"
done
for f in label=io.repliq.stage label=org.opencontainers.image.title=repliq; do
    docker image prune -f --filter "$f" >/dev/null
done
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')
echo "   $IMAGE: $(docker run --rm --read-only "$IMAGE" --version), $size"
took

stage "image checks: read-only root, non-root, healthcheck, SIGTERM"
uid=$(docker run --rm --read-only --entrypoint id "$IMAGE" -u)
[ "$uid" != 0 ] || { echo "docker: FAIL: the image runs as root" >&2; exit 1; }
echo "   PASS: runs as uid $uid"
# The daemon with its default configuration (a standalone primary), read-only
# root, data on a volume: healthy, a queue works, SIGTERM exits 0.
smoke=repliq-ci-smoke-$$
docker run -d --name "$smoke" --read-only -v "$smoke:/var/lib/repliq" \
    --health-interval 1s "$IMAGE" >/dev/null
deadline=$((SECONDS + 60))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$smoke")" = healthy ]; do
    if [ "$SECONDS" -ge "$deadline" ] || [ "$(docker inspect -f '{{.State.Running}}' "$smoke")" != true ]; then
        echo "docker: FAIL: the daemon did not become healthy" >&2
        docker logs "$smoke" 2>&1 | tail -20 >&2
        exit 1
    fi
    sleep 0.2
done
echo "   PASS: daemon healthy (HEALTHCHECK) on a read-only root"
q=/var/lib/repliq/data/smoke
docker exec "$smoke" repliq create "$q" >/dev/null
docker exec "$smoke" repliq append "$q" one two three
got=$(docker exec "$smoke" repliq tail "$q" --format json | sed -E 's/.*"payload":"([^"]*)".*/\1/' | paste -sd, -)
[ "$got" = one,two,three ] || { echo "docker: FAIL: read back '$got', expected one,two,three" >&2; exit 1; }
echo "   PASS: create, append and tail in the container"
docker stop -t 20 "$smoke" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$smoke")
[ "$code" = 0 ] || { echo "docker: FAIL: exit code $code on SIGTERM, expected 0" >&2; docker logs "$smoke" 2>&1 | tail -20 >&2; exit 1; }
echo "   PASS: exit 0 on SIGTERM (docker stop)"
docker rm -f "$smoke" >/dev/null
docker volume rm -f "$smoke" >/dev/null
smoke=
took

stage "compose cluster end to end"
REPLIQ_IMAGE=$IMAGE bash deploy/test/compose-e2e.sh
took

stage "compose cluster in cluster mode: failover and partition"
REPLIQ_IMAGE=$IMAGE bash deploy/test/compose-cluster-e2e.sh
took
