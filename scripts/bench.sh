#!/usr/bin/env bash
# Every performance figure with its anchor, measured in one run on this machine:
#  1. cargo bench --bench pipeline: model only (frozen graph vs SavedModel, batch 1 and 8),
#     decode+resize per photo size, end to end over loopback at c=1 and c=8 (new URL per request);
#  2. cargo bench --bench report: top(10) with BENCH_URLS (1 000 000) distinct URLs, file size;
#     the same fill into this run's redis-server (Redis mode): top(10) and Redis memory per
#     million URLs;
#  3. HTTP with wrk (one thread, like the Python peer's figures): cached hits at 64 connections
#     against two anchors in alternating rounds (nginx-light returning the same JSON, and
#     examples/http_floor.rs: warp alone), with and without metrics+access log; cold classify
#     at c=8, GET /report p50 on the 1M-URL store, start-to-ready time and peak RSS of the
#     release binary under those loads;
#  4. Redis mode (--redis-url) against embedded mode, alternating rounds: cached hits, cold
#     classify at c=1 (p50 difference and ratio), GET /report on the 1M URLs filled in 2.
# Usage: ./scripts/bench.sh   (BENCH_URLS=100000 for a quicker run; BENCH_ROUNDS, default 3;
#        BENCH_HTTP_ONLY=1 for parts 3 and 4 without the report stores;
#        BENCH_ONLY=redis for the Redis-mode figures alone: 2 and 4, with their embedded
#        baselines, no pipeline bench and none of part 3 but the embedded /report line)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh >/dev/null
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light >/dev/null
fi
if ! command -v redis-server >/dev/null; then ./scripts/install-test-services.sh >/dev/null; fi
cargo build --release --locked --example http_floor 2>&1 | tail -1
cargo build --release --locked 2>&1 | tail -1
target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
# Copies of the binaries: a target directory shared with other checkouts may get their build
# while this runs.
cp "$target/release/classifier-api" "$target/release/examples/http_floor" "$work/"
bin="$work/classifier-api"

# only_redis: BENCH_ONLY=redis, the Redis-mode figures and their embedded baselines alone.
only_redis() { [[ "${BENCH_ONLY:-}" == redis ]]; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# This run's Redis, nothing persisted: the Redis report store (prefix $report_prefix) and every
# Redis-mode server below, each on a prefix of its own.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis_url="redis://127.0.0.1:$redis_port/"
report_prefix=report

redis_filled=
if [[ -z "${BENCH_HTTP_ONLY:-}" ]]; then
  if ! only_redis; then
    echo "## pipeline (model, decode, end to end)"
    cargo bench --locked --bench pipeline 2>/dev/null | grep -v '^$'
  fi
  echo "## report store"
  out=$(BENCH_DATA_DIR="$work/report" BENCH_REDIS_URL="$redis_url" BENCH_REDIS_PREFIX="$report_prefix" \
    cargo bench --locked --bench report 2>/dev/null | grep -v '^$')
  echo "$out"
  if grep -q '^report store in Redis' <<<"$out"; then redis_filled=1; fi
fi

# A static image server for the HTTP runs. HTTP/1.1 keep-alive, unlike `python3 -m http.server`,
# whose new connection (and thread, behind a backlog of 5) per download put a 270 ms p99 into the
# cold c=8 figures that was the image server's, not ours (83 ms with keep-alive).
# `?n=K` serves the file with its last 8 bytes replaced by K: new bytes for every K, so the cold
# runs are not answered by the content cache (same bytes at two URLs cost one inference).
python3 -u - fixtures/shared/images >"$work/http.log" 2>&1 <<'PY' &
import functools, http.server, os, sys, urllib.parse
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        n = urllib.parse.parse_qs(url.query).get("n")
        if not n:
            return super().do_GET()
        with open(os.path.join(sys.argv[1], url.path.lstrip("/")), "rb") as f:
            body = f.read()
        body = body[:-8] + int(n[0]).to_bytes(8, "little")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
print(f"serving on port {server.server_address[1]}")
server.serve_forever()
PY
pids+=($!)
for _ in $(seq 50); do grep -qs "port" "$work/http.log" && break; sleep 0.1; done
img_port=$(grep -o 'port [0-9]*' "$work/http.log" | head -1 | cut -d' ' -f2)

# start_server DATA_DIR [args...]: sets $addr, $server_pid and $ready_ms.
start_server() {
  local dir="$1"; shift
  local log="$work/server-$RANDOM.log"
  local t0; t0=$(date +%s%N)
  TF_CPP_MIN_LOG_LEVEL=3 "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir" --allow-private-networks "$@" 2>"$log" &
  server_pid=$!; pids+=("$server_pid")
  for _ in $(seq 300); do grep -qs "listening on http://" "$log" && break; sleep 0.01; done
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  addr=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's#listening on http://##')
}

cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"image_url":"http://127.0.0.1:$img_port/cat.bmp"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# load URL: 10 s of wrk at 64 connections posting post.lua's body; sets $rps and $p99.
load() {
  local out; out=$(wrk -t1 -c64 -d10s --latency -s "$work/post.lua" "$1")
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
}

# warm ADDR...: each server classifies the image once, so the loads below are cache hits.
warm() {
  local a
  for a in "$@"; do
    curl -s -X POST -H 'Content-Type: application/json' \
      -d "{\"image_url\":\"http://127.0.0.1:$img_port/cat.bmp\"}" "http://$a/classify-image" >/dev/null
  done
}

# alternate NAME=ADDR...: BENCH_ROUNDS (3) rounds, each loading every server in turn, so a slow
# minute moves them all alike; prints each round and sets $figures (req/s, round by round, in
# the order given).
alternate() {
  local r pair line
  figures=()
  for r in $(seq "${BENCH_ROUNDS:-3}"); do
    line="  round $r:"
    for pair in "$@"; do
      load "http://${pair#*=}/classify-image"
      line+=" ${pair%%=*} $rps req/s (p99 $p99) |"
      figures+=("$rps")
    done
    echo "${line% |}"
  done
}

# cached_hits LABEL: nginx, the floor and our server (one URL already in its cache) alternating;
# prints the median ratios and sets $rps_last to our median req/s.
cached_hits() {
  warm "$addr"
  alternate "nginx=127.0.0.1:$nginx_port" "warp alone=$floor_addr" "ours=$addr"
  local summary
  summary=$(python3 - "$1" "${figures[@]}" <<'PY'
import statistics, sys
label, f = sys.argv[1], [float(x) for x in sys.argv[2:]]
nginx, floor, ours = f[0::3], f[1::3], f[2::3]
med = statistics.median
print(f"cached hits, c=64 ({label}): ours {med(ours):.0f} req/s = {med([o / n for o, n in zip(ours, nginx)]):.3f} x nginx "
      f"(target >= 0.7), {med([o / w for o, w in zip(ours, floor)]):.3f} x warp alone; "
      f"warp alone = {med([w / n for w, n in zip(floor, nginx)]):.3f} x nginx (medians of {len(ours)} rounds)")
print(f"{med(ours):.0f}")
PY
)
  echo "${summary%$'\n'*}"
  rps_last="${summary##*$'\n'}"
}

# start_anchors: the anchors, started once for part 3: nginx-light answering the same route
# with a fixed answer of our size (the HTTP limit of this box), and warp alone (the floor our
# HTTP stack leaves us).
start_anchors() {
  nginx_port=$(free_port)
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  server {
    listen 127.0.0.1:$nginx_port;
    location = /classify-image { default_type application/json; return 200 '{"classification":"Egyptian_cat","confidence":"0.835","processing_time":"0.000"}'; }
  }
}
NGINX
  nginx -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" &
  pids+=($!)
  "$work/http_floor" 127.0.0.1:0 >"$work/floor.log" &
  pids+=($!)
  for _ in $(seq 50); do grep -qs "listening on" "$work/floor.log" && break; sleep 0.1; done
  floor_addr=$(grep -o 'listening on http://[0-9.:]*' "$work/floor.log" | sed 's#listening on http://##')
}

# cold_lua FILE FIRST: a new URL and new bytes per request (see the image server), so every
# request is classified; n counts from FIRST + 1.
cold_lua() {
  cat >"$1" <<LUA
counter = $2
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
    '{"image_url":"http://127.0.0.1:$img_port/cat.bmp?n=' .. counter .. '"}')
end
LUA
}
cold_lua "$work/cold.lua" 0

kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$server_pid/status"; }

# c1_rounds KIND NAME=ADDR...: BENCH_ROUNDS (3) rounds of wrk -t1 -c1, each on every server in
# turn; KIND is "cold" (10 s of classify, every image new: server I in round R counts n from
# I * 10^12 + R * 10^9, so no two servers or rounds ever ask for the same image) or "report"
# (5 s of GET /report). Prints each round and sets $figures (p50s as wrk prints them, round by
# round, in the order given).
c1_rounds() {
  local kind="$1" r i pair out errors line
  shift
  figures=()
  for r in $(seq "${BENCH_ROUNDS:-3}"); do
    line="  round $r:"
    i=0
    for pair in "$@"; do
      i=$((i + 1))
      if [[ "$kind" == cold ]]; then
        cold_lua "$work/cold-$i.lua" $((i * 10 ** 12 + r * 10 ** 9))
        out=$(wrk -t1 -c1 -d10s --latency -s "$work/cold-$i.lua" "http://${pair#*=}/classify-image")
      else
        out=$(wrk -t1 -c1 -d5s --latency "http://${pair#*=}/report")
      fi
      errors=$(echo "$out" | awk '/Non-2xx/ {print ", " $NF " not 2xx"}')
      line+=" ${pair%%=*} p50 $(echo "$out" | awk '$1=="50%" {print $2}') (p99 $(echo "$out" | awk '$1=="99%" {print $2}'), $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s$errors) |"
      figures+=("$(echo "$out" | awk '$1=="50%" {print $2}')")
    done
    echo "${line% |}"
  done
}

# c1_summary LABEL TARGET: $figures from c1_rounds on embedded then Redis: both median p50s,
# the median of the rounds' differences and of their ratios.
c1_summary() {
  python3 - "$1" "$2" "${figures[@]}" <<'PY'
import statistics, sys
def ms(t):
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if t.endswith(unit):
            return float(t[: -len(unit)]) * scale
    raise SystemExit(f"unreadable wrk latency {t!r}")
label, target, f = sys.argv[1], sys.argv[2], [ms(x) for x in sys.argv[3:]]
emb, red = f[0::2], f[1::2]
med = statistics.median
print(f"{label}: Redis p50 {med(red):.3f} ms vs embedded {med(emb):.3f} ms, "
      f"{med([r - e for r, e in zip(red, emb)]):+.3f} ms, {med([r / e for r, e in zip(red, emb)]):.3f} x embedded "
      f"({target}; medians of {len(red)} alternating rounds)")
PY
}

if ! only_redis; then
  echo "## HTTP (wrk -t1)"
  start_anchors
  start_server "$work/hits"
  echo "start to ready (default model, release): ${ready_ms} ms; RSS then $(( $(kib VmRSS) / 1024 )) MiB, peak so far $(( $(kib VmHWM) / 1024 )) MiB"
  out=$(wrk -t1 -c8 -d10s --latency -s "$work/cold.lua" "http://$addr/classify-image")
  echo "cold classify, new URL each request, c=8, 10 s: $(echo "$out" | awk '/Requests\/sec/ {print $2}') img/s, p50 $(echo "$out" | awk '$1=="50%" {print $2}'), p99 $(echo "$out" | awk '$1=="99%" {print $2}')"
  cached_hits "metrics + access log on"
  with=$rps_last
  rss=$(kib VmHWM)
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  RUST_LOG=info,classifier_api::access=off start_server "$work/hits" --disable-metrics
  cached_hits "metrics off, access log off"
  without=$rps_last
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  python3 -c "print(f'metrics+logging overhead on cached hits: {$with}/{$without} = {$with/$without:.3f} of the throughput without')"

  # The rate limiter's cost on cached hits: two servers alike but for limits that never refuse
  # (both budgets, one client), loaded in alternating rounds.
  start_server "$work/limits-off"; off_addr=$addr; off_pid=$server_pid
  start_server "$work/limits-on" --rate-limit 1000000000/s --rate-limit-cold 1000000000/s
  on_addr=$addr; on_pid=$server_pid
  warm "$off_addr" "$on_addr"
  alternate "limits off=$off_addr" "on=$on_addr"
  python3 - "${figures[@]}" <<'PY'
import statistics, sys
f = [float(x) for x in sys.argv[1:]]
ratios = [on / off for off, on in zip(f[0::2], f[1::2])]
print(f"cached hits with rate limits on (never refusing) = {statistics.median(ratios):.3f} x off "
      f"(target >= 0.95; median of {len(ratios)} rounds)")
PY
  kill "$off_pid" "$on_pid"; wait "$off_pid" "$on_pid" 2>/dev/null || true
fi

echo "## Redis mode (--redis-url) against embedded"
# Cached hits against embedded mode (both from the memory tier), and the cost of a rate-limit
# check on Redis (limits on there against off, alternating rounds).
start_server "$work/embedded"; emb_addr=$addr; emb_pid=$server_pid
start_server "$work/redis-off" --redis-url "$redis_url"; roff_addr=$addr; roff_pid=$server_pid
start_server "$work/redis-on" --redis-url "$redis_url" --redis-prefix on \
  --rate-limit 1000000000/s; ron_addr=$addr; ron_pid=$server_pid
warm "$emb_addr" "$roff_addr" "$ron_addr"
alternate "embedded=$emb_addr" "redis=$roff_addr" "redis + shared limits=$ron_addr"
python3 - "${figures[@]}" <<'PY'
import statistics, sys
f = [float(x) for x in sys.argv[1:]]
emb, off, on = f[0::3], f[1::3], f[2::3]
med = statistics.median
print(f"cached hits in Redis mode = {med([o / e for o, e in zip(off, emb)]):.3f} x embedded (target >= 0.9); "
      f"with a shared rate limit = {med([n / o for n, o in zip(on, off)]):.3f} x without, "
      f"{med([1e6 / n - 1e6 / o for n, o in zip(on, off)]):.1f} us more per request at c=64 (medians of {len(on)} rounds)")
PY
kill "$emb_pid" "$roff_pid" "$ron_pid"; wait "$emb_pid" "$roff_pid" "$ron_pid" 2>/dev/null || true

# Cold classify at c=1: new servers, the Redis one on a prefix nothing has written to, and
# images neither has seen (see c1_rounds). Each first classifies one image of its own, so the
# rounds do not pay the first download's connection.
start_server "$work/cold-embedded"; cemb_addr=$addr; cemb_pid=$server_pid
start_server "$work/cold-redis" --redis-url "$redis_url" --redis-prefix "cold-c1"
cred_addr=$addr; cred_pid=$server_pid
for pair in "1=$cemb_addr" "2=$cred_addr"; do
  curl -s -X POST -H 'Content-Type: application/json' \
    -d "{\"image_url\":\"http://127.0.0.1:$img_port/cat.bmp?n=$((${pair%%=*} * 10 ** 12))\"}" \
    "http://${pair#*=}/classify-image" >/dev/null
done
c1_rounds cold "embedded=$cemb_addr" "redis=$cred_addr"
c1_summary "cold classify, new URL and bytes each request, c=1, 10 s rounds" "target: Redis <= embedded + 1 ms"
kill "$cemb_pid" "$cred_pid"; wait "$cemb_pid" "$cred_pid" 2>/dev/null || true
if ! only_redis; then
  echo "peak RSS (VmHWM) after start, cold c=8 and cached-hit loads: $((rss / 1024)) MiB (target < 400 MB = 381 MiB)"
fi

[[ -n "${BENCH_HTTP_ONLY:-}" ]] && exit 0
start_server "$work/report"; rep_addr=$addr; rep_pid=$server_pid
out=$(wrk -t1 -c1 -d5s --latency "http://$addr/report")
echo "GET /report, c=1, 5 s, store filled above: p50 $(echo "$out" | awk '$1=="50%" {print $2}'), p99 $(echo "$out" | awk '$1=="99%" {print $2}'), $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s"
echo "peak RSS (VmHWM) of that server, 1M-URL store: $(( $(kib VmHWM) / 1024 )) MiB"
if [[ -n "$redis_filled" ]]; then
  # The same URLs in Redis (filled by the report bench above), served by a Redis-mode server;
  # alternating with the embedded server on its redb store.
  start_server "$work/report-redis" --redis-url "$redis_url" --redis-prefix "$report_prefix"
  rred_addr=$addr; rred_pid=$server_pid
  c1_rounds report "embedded=$rep_addr" "redis=$rred_addr"
  c1_summary "GET /report, c=1, 5 s rounds, ${BENCH_URLS:-1000000} URLs" "target: Redis p50 <= 2 ms"
  kill "$rred_pid"; wait "$rred_pid" 2>/dev/null || true
else
  echo "GET /report in Redis mode: skipped (the report bench filled no Redis store)"
fi
kill "$rep_pid"; wait "$rep_pid" 2>/dev/null || true
