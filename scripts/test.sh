#!/usr/bin/env bash
# Quick start, command 2: set up what is missing, then every check CI runs: formatting, clippy,
# all Rust tests (unit, integration against the real app and local servers), the OpenAPI
# conformance run (schemathesis against a live server) and the page's tests in real Chromium.
# Prints each stage's time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

stage() {
  local name="$1"; shift
  local start=$SECONDS
  echo "=== $name"
  "$@"
  echo "=== $name: $((SECONDS - start)) s"
}

total=$SECONDS
stage "setup (libtensorflow, assets)" ./scripts/setup.sh
stage "test servers (osmem-server)" ./scripts/install-osmem.sh
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy -D warnings" cargo clippy --locked --all-targets -- -D warnings
stage "cargo test" cargo test --locked --all-targets
stage "OpenAPI conformance (schemathesis)" ./scripts/api-conformance.sh
stage "browser tests (Chromium)" ./scripts/browser-test.sh
echo "=== all tests: $((SECONDS - total)) s"
