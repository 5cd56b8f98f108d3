#!/usr/bin/env bash
# The page at GET / in real Chromium: installs what is missing (Debian's chromium, the test's npm
# packages, libtensorflow and assets), builds the debug binary, then runs tests/browser with node's
# test runner. Idempotent; CI runs it after scripts/test.sh (so the build is mostly reused).
#
#   ./scripts/browser-test.sh                      screenshot to target/browser-test/dashboard.png
#   UPDATE_SCREENSHOT=1 ./scripts/browser-test.sh  ... to docs/dashboard.png (the readme's picture)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=scripts/lib/stage.sh
source "$root/scripts/lib/stage.sh"

install_chromium() {
  if [[ -x /usr/bin/chromium ]]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null)"
    return
  fi
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends chromium
}

npm_ci() {
  # playwright-core only drives a browser; it downloads none.
  (cd tests/browser && npm ci --no-audit --no-fund)
}

run_tests() {
  local shot="$root/target/browser-test/dashboard.png"
  [[ "${UPDATE_SCREENSHOT:-}" == 1 ]] && shot="$root/docs/dashboard.png"
  # Where cargo put it: CARGO_TARGET_DIR (a build dir shared between checkouts), relative to root.
  local bin="${CARGO_TARGET_DIR:-target}/debug/classifier-api"
  [[ $bin == /* ]] || bin="$root/$bin"
  (cd tests/browser && CLASSIFIER_BIN="$bin" SCREENSHOT="$shot" \
    node --test --test-concurrency=1 --test-timeout=300000)
  echo "screenshot: $shot"
}

stage "chromium (Debian)" install_chromium
stage "npm ci (tests/browser)" npm_ci
stage "setup (libtensorflow, assets)" ./scripts/setup.sh
# target/debug/classifier-api, built as `cargo test` builds it for tests/api (same features, so
# after scripts/test.sh this compiles nothing; `cargo build --bin` would rebuild a dozen crates
# without the dev-dependencies' features).
stage "cargo build (debug binary)" cargo test --locked --no-run --test api
stage "browser tests" run_tests
