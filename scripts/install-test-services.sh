#!/usr/bin/env bash
# The servers the tests start on free ports besides osmem-server: redis-server (the Redis
# backend's tests, the scale-out test) and haproxy (the scale-out test's load balancer).
# Debian's packages, installed when missing; their own services are not used. Idempotent.
set -euo pipefail
# shellcheck source=scripts/lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
ensure_packages "test servers" redis-server=redis-server haproxy=haproxy
redis-server --version
# sed, not head: head exits after one line and haproxy, still writing, dies of SIGPIPE,
# which pipefail turns into this script failing (it did, once, in a CI run).
haproxy -v | sed -n 1p
