#!/usr/bin/env bash
# Vendors the crates of Cargo.lock into deploy/docker/vendor, for a
# `docker build` that cannot download crates itself (no network in build
# containers, or a TLS-intercepting proxy they do not trust). The Dockerfile
# uses this directory when it exists. Run from anywhere; needs cargo and
# either network on this host or the crates in its cargo cache.
#
# Crates that the linux `repliq` binary does not build (Windows crates,
# dev-dependencies, loom, ...) are replaced by stubs that keep only their
# Cargo.toml and checksum, so that cargo still resolves the lock file while
# the build context stays small (about a third of the full vendor tree).
# Re-running is cheap: cargo vendor syncs the directory with Cargo.lock.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=deploy/docker/vendor
target=${VENDOR_TARGET:-$(rustc -vV | sed -n "s/^host: //p")}

cargo vendor --locked --versioned-dirs --quiet "$out" >/dev/null

# name-version of every package the binary builds from (normal and build deps).
needed=$(cargo tree --locked -p repliq-cli --target "$target" -e normal,build \
    --prefix none -f '{p}' | sed -E 's/ \(.*//; s/ v/-/' | sort -u)

stubbed=0 kept=0
for dir in "$out"/*/; do
    dir=${dir%/}
    crate=${dir##*/}
    if grep -qxF "$crate" <<<"$needed"; then kept=$((kept + 1)); continue; fi
    [ -f "$dir/.stub" ] && { stubbed=$((stubbed + 1)); continue; }
    pkg=$(sed -nE 's/.*"package":"([0-9a-f]+)".*/\1/p' "$dir/.cargo-checksum.json")
    find "$dir" -mindepth 1 -maxdepth 1 ! -name Cargo.toml -exec rm -rf {} +
    mkdir -p "$dir/src"
    : >"$dir/src/lib.rs"
    : >"$dir/.stub"
    printf '{"files":{},"package":"%s"}' "$pkg" >"$dir/.cargo-checksum.json"
    stubbed=$((stubbed + 1))
done
echo "vendor: $kept crates in $out, $stubbed stubbed ($(du -sh "$out" | cut -f1))"
