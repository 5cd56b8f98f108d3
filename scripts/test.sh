#!/usr/bin/env bash
# Quick start, command 2: set up what is missing, then every check CI runs: formatting, clippy,
# all Rust tests (unit, integration against the real app and local servers, the Keras model
# import), the OpenAPI conformance run (schemathesis against a live server), the page's tests in
# real Chromium, and the packaging: the Docker image built and run with podman, and the
# copy-and-run bundle (made from the image's binary, so one release build serves both). Prints
# each stage's time.
# SKIP_PACKAGING=1 leaves out the two packaging stages (about 12 minutes cold) for quick runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=scripts/lib/stage.sh
source "$root/scripts/lib/stage.sh"

total=$SECONDS
stage "setup (libtensorflow, assets)" ./scripts/setup.sh
stage "test servers (osmem-server)" ./scripts/install-osmem.sh
stage "test servers (redis-server, haproxy)" ./scripts/install-test-services.sh
# tests/model_import.rs (part of cargo test) imports Keras files with it; it fails without it.
stage "keras venv (tensorflow-cpu wheel)" ./scripts/install-keras-venv.sh
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy -D warnings" cargo clippy --locked --all-targets -- -D warnings
stage "cargo test" cargo test --locked --all-targets
stage "OpenAPI conformance (schemathesis)" ./scripts/api-conformance.sh
stage "browser tests (Chromium)" ./scripts/browser-test.sh
stage "scale-out (3 replicas, Redis, HAProxy)" ./scripts/scale-out-test.sh
if [[ -z "${SKIP_PACKAGING:-}" ]]; then
  stage "docker image (podman build + run)" ./scripts/docker-test.sh
  binary_dir="$(mktemp -d)"
  container="$(podman create classifier-api)"
  podman cp "$container:/app/classifier-api" "$binary_dir/classifier-api"
  podman rm "$container" >/dev/null
  export BUNDLE_BINARY="$binary_dir/classifier-api"
  stage "copy-and-run bundle" ./scripts/bundle-test.sh
  unset BUNDLE_BINARY
  rm -rf "$binary_dir"
fi
echo "=== all tests: $((SECONDS - total)) s"
