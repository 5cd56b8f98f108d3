#!/usr/bin/env bash
# Builds the Docker image with podman (no Docker engine here) and tests it for real:
#   1. ../shared/tools/container-engine-setup.sh: podman + runc and local base images (idempotent);
#   2. scripts/fetch-assets.sh: the build context must contain assets/ (the build embeds it);
#   3. podman build --pull=never -t classifier-api . (the unchanged Dockerfile), prints the size;
#   4. runs it with a published port (-p 127.0.0.1::8080) and a named volume on /data, and
#      CLASSIFIER_ALLOW_PRIVATE_NETWORKS=true because the photo comes from this host: a python
#      http.server bound to the podman bridge's gateway, which the container reaches as
#      host.containers.internal. cat.bmp must come back as Egyptian_cat;
#   5. stops that container (SIGTERM: graceful, final commit), starts a new one on the same volume
#      and asks again: the answer must come from the cache in the volume (the image server sees no
#      second download) and GET /report must count both requests.
# The containers and the volume are removed (by id / name) even on failure; the image is kept, so a
# second run only rebuilds what changed. Prints each stage's time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
image="${CLASSIFIER_IMAGE:-classifier-api}"
engine_setup="${CONTAINER_ENGINE_SETUP:-$root/../shared/tools/container-engine-setup.sh}"

STAGE_PREFIX="docker: "
# shellcheck source=scripts/lib/stage.sh
source "$root/scripts/lib/stage.sh"

tmp="$(mktemp -d)"
volume="classifier-api-test-$$-$RANDOM"
cids=()
http_pid=""
cleanup() {
  local cid
  for cid in "${cids[@]}"; do podman rm -f -t 5 "$cid" >/dev/null 2>&1 || true; done
  podman volume rm -f "$volume" >/dev/null 2>&1 || true
  if [[ -n "$http_pid" ]]; then kill "$http_pid" 2>/dev/null || true; wait "$http_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  local cid
  for cid in "${cids[@]}"; do echo "--- logs of $cid" >&2; podman logs --tail 30 "$cid" >&2 || true; done
  [[ -f "$tmp/http.log" ]] && { echo "--- image server" >&2; cat "$tmp/http.log" >&2; }
  exit 1
}

stage "container engine setup" "$engine_setup"
stage "fetch assets" ./scripts/fetch-assets.sh
# Docker's image format: the OCI format podman defaults to has no HEALTHCHECK.
stage "podman build" podman build --pull=never --format docker -t "$image" .
size="$(podman image inspect --format '{{.Size}}' "$image")"
echo "image $image: $((size / 1024 / 1024)) MiB ($size bytes)"

# Starts a container on the volume (id in $cid, recorded for cleanup) and waits until it logs that
# it is listening.
start_container() {
  cid="$(podman run -d -p 127.0.0.1::8080 -v "$volume:/data" \
    -e CLASSIFIER_ALLOW_PRIVATE_NETWORKS=true "$image")"
  cids+=("$cid")
  local deadline=$((SECONDS + 60))
  until podman logs "$cid" 2>&1 | grep -q 'listening on http://'; do
    [[ "$(podman inspect --format '{{.State.Running}}' "$cid")" == true ]] \
      || fail "container ${cid:0:12} exited"
    ((SECONDS < deadline)) || fail "container ${cid:0:12} not listening after 60 s"
    sleep 0.2
  done
}

# POST /classify-image for cat.bmp through the container's published port; prints the answer.
classify() {
  local port="$1" out
  out="$(curl -sS --max-time 30 -X POST -H 'Content-Type: application/json' \
    -d "{\"image_url\":\"$photo_url\"}" "http://127.0.0.1:$port/classify-image")" \
    || fail "request to the container failed"
  echo "$out"
  [[ "$out" == *'"classification":"Egyptian_cat"'* ]] || fail "expected Egyptian_cat, got $out"
}

downloads() { grep -c 'GET /cat.bmp' "$tmp/http.log" || true; }

first_run() {
  start_container
  cid1="$cid"
  port1="$(podman port "$cid1" 8080/tcp | sed -n "1s/.*://p")"
  [[ "$(podman exec "$cid1" id -u)" != 0 ]] || fail "the service runs as root"
  echo "container ${cid1:0:12} on 127.0.0.1:$port1"

  # The bridge exists now; serve the photos on its gateway only (not on every interface).
  local gateway
  gateway="$(podman network inspect podman --format '{{range .Subnets}}{{.Gateway}}{{end}}')"
  python3 -u -m http.server 0 --bind "$gateway" --directory "$root/fixtures/shared/images" \
    > "$tmp/http.log" 2>&1 &
  http_pid=$!
  local i http_port=""
  for ((i = 0; i < 100; i++)); do
    http_port="$(grep -m1 -oE 'port [0-9]+' "$tmp/http.log" | cut -d' ' -f2)" && [[ -n "$http_port" ]] && break
    sleep 0.1
  done
  [[ -n "$http_port" ]] || fail "image server did not start"
  photo_url="http://host.containers.internal:$http_port/cat.bmp"
  echo "photo at $photo_url ($gateway:$http_port on the host)"

  classify "$port1"
  [[ "$(downloads)" == 1 ]] || fail "expected 1 download of cat.bmp, saw $(downloads)"
  # The image's HEALTHCHECK (`classifier-api healthcheck` probing GET /healthz) passes.
  podman healthcheck run "$cid1" || fail "HEALTHCHECK failed in container ${cid1:0:12}"
  echo "healthcheck: healthy"
}
stage "run + classify" first_run

restart() {
  podman stop -t 15 "$cid1" >/dev/null
  start_container
  cid2="$cid"
  port2="$(podman port "$cid2" 8080/tcp | sed -n "1s/.*://p")"
  echo "new container ${cid2:0:12} on the same volume, 127.0.0.1:$port2"
  classify "$port2"
  [[ "$(downloads)" == 1 ]] || fail "cache lost: cat.bmp downloaded $(downloads) times"
  local report
  report="$(curl -sS --max-time 10 "http://127.0.0.1:$port2/report")"
  echo "GET /report: $report"
  [[ "$report" == *"\"image_url\":\"$photo_url\",\"count\":2,"* ]] \
    || fail "expected count 2 for $photo_url in the report"
}
stage "restart on the same volume: cache and statistics survive" restart

echo "image size: $((size / 1024 / 1024)) MiB"
echo "docker: 2 passed, 0 failed"
