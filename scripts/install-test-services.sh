#!/usr/bin/env bash
# The servers the tests start on free ports besides osmem-server: redis-server (the Redis
# storage backend's contract suite). Debian's packages, installed when missing; the package's
# own service is not used. Idempotent; called by test.sh.
set -euo pipefail
# shellcheck source=scripts/lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
ensure_packages "test servers" redis-server=redis-server
redis-server --version
