#!/usr/bin/env bash
# Quick start, command 1: set up what is missing, build (release) and run the service.
# Extra arguments go to `classifier-api serve`, e.g. ./scripts/run.sh --listen 0.0.0.0:8080
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
exec cargo run --release --locked -- serve "$@"
