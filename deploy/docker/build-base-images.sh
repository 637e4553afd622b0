#!/usr/bin/env bash
# Creates, without any container registry, the two base images that
# deploy/docker/Dockerfile builds FROM, under the tags it expects:
#
#   runtime  debian:bookworm-slim     debootstrap --variant=minbase, trimmed like the official slim
#   builder  rust:1.95-slim-bookworm  minbase + gcc, libc6-dev, ca-certificates, plus the Rust
#                                     toolchain of this machine (rustc, cargo, rustdoc, std)
#
# Both root filesystems are bootstrapped from Debian's packages (in parallel,
# on a tmpfs when one can be mounted) and imported with `docker import`.
# An image whose tag already exists is left alone, so the script is cheap to
# re-run. Needs root (debootstrap, chroot), debootstrap and docker; prints one
# line per image, and debootstrap's log only on failure.
#
# Environment (all optional):
#   RUNTIME_IMAGE   tag of the runtime base    (default debian:bookworm-slim)
#   BUILDER_IMAGE   tag of the builder base    (default rust:1.95-slim-bookworm)
#   DEBIAN_MIRROR   Debian mirror              (default http://deb.debian.org/debian)
#   DEBIAN_SUITE    Debian suite               (default bookworm)
#   RUST_TOOLCHAIN  rustup toolchain to copy   (default: the active one); its version must
#                   match the version in BUILDER_IMAGE's tag (e.g. 1.95 -> rustc 1.95.x)
#   FORCE=1         rebuild even if the tags exist
set -euo pipefail

RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
BUILDER_IMAGE=${BUILDER_IMAGE:-rust:1.95-slim-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
FORCE=${FORCE:-0}

log() { echo "base images: $*"; }
die() { echo "base images: error: $*" >&2; exit 1; }

have_image() { [ "$FORCE" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

need_runtime=1 need_builder=1
if have_image "$RUNTIME_IMAGE"; then log "$RUNTIME_IMAGE exists, skipped"; need_runtime=0; fi
if have_image "$BUILDER_IMAGE"; then log "$BUILDER_IMAGE exists, skipped"; need_builder=0; fi
[ "$need_runtime$need_builder" = 00 ] && exit 0

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it); try: sudo -E $0"
command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker not found"

# The Rust toolchain to copy into the builder: a rustup toolchain directory
# (bin/rustc, bin/cargo, lib/...), found from the rustc that rustup runs.
if [ "$need_builder" = 1 ]; then
    if command -v rustup >/dev/null; then
        rustc_bin=$(rustup which ${RUST_TOOLCHAIN:+--toolchain "$RUST_TOOLCHAIN"} rustc)
    else
        rustc_bin=$(command -v rustc) || die "neither rustup nor rustc found"
        rustc_bin=$(readlink -f "$rustc_bin")
    fi
    toolchain=$(cd "$(dirname "$rustc_bin")/.." && pwd)
    for f in bin/rustc bin/cargo lib/rustlib; do
        [ -e "$toolchain/$f" ] || die "no $f in the toolchain at $toolchain"
    done
    rust_version=$("$toolchain/bin/rustc" --version | awk '{print $2}')
    tag_version=${BUILDER_IMAGE##*:}          # 1.95-slim-bookworm
    tag_version=${tag_version%%-*}            # 1.95
    case "$rust_version" in
        "$tag_version" | "$tag_version".*) ;;
        *) die "toolchain at $toolchain is rustc $rust_version, but the tag $BUILDER_IMAGE says $tag_version (set RUST_TOOLCHAIN or BUILDER_IMAGE)" ;;
    esac
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/repliq-base.XXXXXX")
cleanup() {
    # debootstrap mounts /proc and /sys (and sometimes /dev) inside its
    # target: unmount everything below the work directory before deleting it.
    local m
    for m in $(awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$work" 2>/dev/null || true
    [ -d "$work" ] && rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT
# dpkg is several times faster on a tmpfs than on a disk that honours fsync
# (best effort: without one, the work directory's disk is used).
mount -t tmpfs -o size=4g,mode=0755 tmpfs "$work" 2>/dev/null || true

# Trims a root filesystem the way debian:*-slim is trimmed: no package
# caches or index files, no documentation, manual pages or translations.
slim() {
    local root=$1
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
        "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
    # ... and keep them out of later apt-get installs, as the official image does.
    mkdir -p "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d"
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Binary::apt::APT::Keep-Downloaded-Packages "false";
Acquire::GzipIndexes "true";
EOF
    printf 'deb %s %s main\n' "$DEBIAN_MIRROR" "$DEBIAN_SUITE" >"$root/etc/apt/sources.list"
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
}

# bootstrap NAME EXTRA_PACKAGES: a minbase root filesystem in $work/NAME.
bootstrap() {
    local name=$1 include=$2
    debootstrap --variant=minbase ${include:+--include="$include"} \
        "$DEBIAN_SUITE" "$work/$name" "$DEBIAN_MIRROR" >"$work/$name.log" 2>&1
}

# import ROOT TAG [--change ...]: the root filesystem as an image.
import() {
    local root=$1 tag=$2
    shift 2
    tar --numeric-owner -C "$root" -c . | docker import "$@" - "$tag" >/dev/null
}

start=$SECONDS
pids=()
if [ "$need_runtime" = 1 ]; then bootstrap runtime "" & pids+=("$!:runtime"); fi
if [ "$need_builder" = 1 ]; then bootstrap builder "ca-certificates,gcc,libc6-dev" & pids+=("$!:builder"); fi
failed=0
for p in "${pids[@]}"; do
    if ! wait "${p%%:*}"; then
        echo "base images: debootstrap of the ${p#*:} base failed; its log:" >&2
        tail -n 40 "$work/${p#*:}.log" >&2 || true
        failed=1
    fi
done
[ "$failed" = 0 ] || exit 1

common_changes=(--change 'CMD ["bash"]'
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')

if [ "$need_runtime" = 1 ]; then
    slim "$work/runtime"
    import "$work/runtime" "$RUNTIME_IMAGE" "${common_changes[@]}"
    log "$RUNTIME_IMAGE built ($(docker image inspect -f '{{.Size}}' "$RUNTIME_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
fi

if [ "$need_builder" = 1 ]; then
    root=$work/builder
    slim "$root"
    # The toolchain goes to /usr/local (rustc finds its sysroot at bin/..):
    # the compilers and std for the host target; no docs, no rustup.
    mkdir -p "$root/usr/local/bin" "$root/usr/local/lib" "$root/usr/local/cargo"
    for b in rustc cargo rustdoc; do
        [ -e "$toolchain/bin/$b" ] && cp -L "$toolchain/bin/$b" "$root/usr/local/bin/"
    done
    cp -a "$toolchain"/lib/. "$root/usr/local/lib/"
    rm -f "$root"/usr/local/lib/rustlib/{components,manifest-*,multirust-*,rust-installer-version}
    import "$root" "$BUILDER_IMAGE" "${common_changes[@]}" \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change "ENV RUST_VERSION=$rust_version"
    # rustc finds its libraries through $ORIGIN, which needs /proc: check in a container.
    if ! out=$(docker run --rm --network none "$BUILDER_IMAGE" sh -c 'rustc --version && cargo --version && cc --version' 2>&1); then
        docker rmi "$BUILDER_IMAGE" >/dev/null 2>&1 || true
        die "the toolchain does not run in the builder base: $out"
    fi
    log "$BUILDER_IMAGE built with rustc $rust_version ($(docker image inspect -f '{{.Size}}' "$BUILDER_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
fi
log "done in $((SECONDS - start)) s"
