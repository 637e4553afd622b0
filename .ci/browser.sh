#!/usr/bin/env bash
# The built-in dashboard in a real headless Chromium: a primary and a
# secondary daemon on loopback under a writer and a consumer, driven over the
# DevTools protocol by .ci/browser.py, which also saves the screenshot
# README shows (docs/images/dashboard.png, or $SCREENSHOT).
# Installs Debian's chromium if missing; fails (never skips) without it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "browser test: FAIL: chromium is not installed" >&2
  exit 1
fi

echo "== build (release)"
cargo build --release -q -p repliq-cli
bin="${CARGO_TARGET_DIR:-target}/release/repliq"

echo "== dashboard in headless chromium"
python3 .ci/browser.py "$bin" "${SCREENSHOT:-docs/images/dashboard.png}"
