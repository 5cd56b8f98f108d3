#!/usr/bin/env bash
# Three replicas on one Redis behind HAProxy, then on a Redis Cluster (scripts/scale_out_test.py
# says what is checked):
# installs what is missing (redis-server, haproxy, libtensorflow and assets), builds the debug
# binary as cargo test builds it, and runs the checks. Idempotent; part of scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# shellcheck source=scripts/lib/stage.sh
source "$root/scripts/lib/stage.sh"

stage "test servers (redis-server, haproxy)" ./scripts/install-test-services.sh
stage "setup (libtensorflow, assets)" ./scripts/setup.sh
stage "cargo build (debug binary)" cargo test --locked --no-run --test api
bin="${CARGO_TARGET_DIR:-target}/debug/classifier-api"
[[ $bin == /* ]] || bin="$root/$bin"
images="$root/fixtures/shared/images"
stage "3 replicas, 1 Redis, HAProxy" python3 scripts/scale_out_test.py "$bin" "$images"
stage "3 replicas, a 3-master Redis Cluster, HAProxy" \
  python3 scripts/scale_out_test.py "$bin" "$images" cluster
