#!/usr/bin/env bash
# Builds the bundle (scripts/bundle.sh), extracts it into an empty temp dir and runs it there with an
# empty environment (env -i), the way someone who copied only the tarball would:
#   1. the binary's only rpath is $ORIGIN/lib, and ldd resolves both TensorFlow libraries inside the
#      extracted dir;
#   2. `classify fixtures/shared/images/cat.bmp` answers Egyptian_cat;
#   3. `serve` answers POST /classify-image for cat.bmp served by a local python http.server.
# Everything runs on loopback; the temp dir and both servers are removed even on failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

STAGE_PREFIX="bundle: "
# shellcheck source=scripts/lib/stage.sh
source "$root/scripts/lib/stage.sh"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$tmp"/*.log; do [[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}

# Waits up to $3 seconds for the regex $2 in file $1 and prints the first match.
wait_for_line() {
  local file="$1" regex="$2" limit="$3" i
  for ((i = 0; i < limit * 10; i++)); do
    if grep -m1 -oE "$regex" "$file" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

stage "build" ./scripts/bundle.sh

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
name="classifier-api-$version-x86_64-linux"
tarball="$root/dist/$name.tar.gz"
echo "bundle size: $(du -h "$tarball" | cut -f1) ($(stat -c %s "$tarball") bytes)"

extract() {
  mkdir "$tmp/x"
  tar -C "$tmp/x" -xzf "$tarball"
  [[ -d "$tmp/x/$name/lib" && ! -L "$tmp/x/$name/lib/libtensorflow_cc.so.2" ]] \
    || fail "unexpected bundle layout"
}
stage "extract" extract
dir="$tmp/x/$name"
bin="$dir/classifier-api"
images="$root/fixtures/shared/images"

check_libs() {
  local runpath
  runpath="$(readelf -d "$bin" | grep -E 'R(UN)?PATH' | sed 's/.*\[\(.*\)\]/\1/')"
  # shellcheck disable=SC2016  # a literal $ORIGIN
  [[ "$runpath" == '$ORIGIN/lib' ]] || fail "rpath is '$runpath', expected only \$ORIGIN/lib"
  env -i /usr/bin/ldd "$bin" > "$tmp/ldd.log" || fail "ldd failed"
  for lib in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
    grep -q "$lib => $dir/lib/$lib " "$tmp/ldd.log" || fail "$lib does not resolve inside $dir/lib"
  done
  grep libtensorflow "$tmp/ldd.log"
}
stage "libraries resolve inside the bundle" check_libs

classify() {
  local out
  out="$(cd "$tmp" && env -i "$bin" classify "$images/cat.bmp" 2> "$tmp/classify.log")" \
    || fail "classify exited non-zero: $out"
  echo "$out"
  [[ "$out" == *'"classification":"Egyptian_cat"'* ]] || fail "classify answered $out"
}
stage "classify cat.bmp (env -i)" classify

serve() {
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$images" > "$tmp/http.log" 2>&1 &
  pids+=($!)
  local http_port
  http_port="$(wait_for_line "$tmp/http.log" 'port [0-9]+' 10 | cut -d' ' -f2)" \
    || fail "image server did not start"

  (cd "$tmp" && exec env -i "$bin" serve --listen 127.0.0.1:0 --allow-private-networks \
    --data-dir "$tmp/data") > "$tmp/serve.log" 2>&1 &
  pids+=($!)
  local addr
  addr="$(wait_for_line "$tmp/serve.log" 'listening on http://[0-9.:]+' 60 | sed 's|.*http://||')" \
    || fail "serve did not log 'listening on http://' within 60 s"
  echo "serving on $addr, images on 127.0.0.1:$http_port"

  local out
  out="$(curl -sS --max-time 30 -X POST -H 'Content-Type: application/json' \
    -d "{\"image_url\":\"http://127.0.0.1:$http_port/cat.bmp\"}" "http://$addr/classify-image")" \
    || fail "request failed"
  echo "$out"
  [[ "$out" == *'"classification":"Egyptian_cat"'* ]] || fail "serve answered $out"
}
stage "serve + POST /classify-image (env -i)" serve

echo "bundle: 3 passed, 0 failed"
