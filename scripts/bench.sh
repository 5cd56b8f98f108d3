#!/usr/bin/env bash
# Every performance figure with its anchor, measured in one run on this machine:
#  1. cargo bench --bench pipeline: model only (frozen graph vs SavedModel, batch 1 and 8),
#     decode+resize per photo size, end to end over loopback at c=1 and c=8 (new URL per request);
#  2. cargo bench --bench report: top(10) with BENCH_URLS (1 000 000) distinct URLs, file size;
#  3. HTTP with wrk (one thread, like the Python peer's figures): cached hits at 64 connections
#     against two anchors in alternating rounds (nginx-light returning the same JSON, and
#     examples/http_floor.rs: warp alone), with and without metrics+access log; cold classify
#     at c=8, GET /report p50 on the 1M-URL store, start-to-ready time and peak RSS of the
#     release binary under those loads.
# Usage: ./scripts/bench.sh   (BENCH_URLS=100000 for a quicker run; BENCH_ROUNDS, default 3;
#        BENCH_HTTP_ONLY=1 for part 3 without the report store)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh >/dev/null
if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk nginx-light >/dev/null
fi
cargo build --release --locked --example http_floor 2>&1 | tail -1
cargo build --release --locked 2>&1 | tail -1
bin="$root/target/release/classifier-api"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

if [[ -z "${BENCH_HTTP_ONLY:-}" ]]; then
  echo "## pipeline (model, decode, end to end)"
  cargo bench --locked --bench pipeline 2>/dev/null | grep -v '^$'
  echo "## report store"
  BENCH_DATA_DIR="$work/report" cargo bench --locked --bench report 2>/dev/null | grep -v '^$'
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
for _ in $(seq 50); do grep -q "port" "$work/http.log" && break; sleep 0.1; done
img_port=$(grep -o 'port [0-9]*' "$work/http.log" | head -1 | cut -d' ' -f2)

# start_server DATA_DIR [args...]: sets $addr, $server_pid and $ready_ms.
start_server() {
  local dir="$1"; shift
  local log="$work/server-$RANDOM.log"
  local t0; t0=$(date +%s%N)
  TF_CPP_MIN_LOG_LEVEL=3 "$bin" serve --listen 127.0.0.1:0 --data-dir "$dir" --allow-private-networks "$@" 2>"$log" &
  server_pid=$!; pids+=("$server_pid")
  for _ in $(seq 300); do grep -q "listening on http://" "$log" && break; sleep 0.01; done
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

# The anchors, started once: nginx-light answering the same route with a fixed answer of our
# size (the HTTP limit of this box), and warp alone (the floor our HTTP stack leaves us).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
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
"$root/target/release/examples/http_floor" 127.0.0.1:0 >"$work/floor.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/floor.log" && break; sleep 0.1; done
floor_addr=$(grep -o 'listening on http://[0-9.:]*' "$work/floor.log" | sed 's#listening on http://##')

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

# A new URL and new bytes per request (see the image server), so every request is classified.
cat >"$work/cold.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"},
    '{"image_url":"http://127.0.0.1:$img_port/cat.bmp?n=' .. counter .. '"}')
end
LUA

kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$server_pid/status"; }

echo "## HTTP (wrk -t1)"
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

# Redis mode (--redis-url): cached hits against embedded mode (both from the memory tier), and
# the cost of a rate-limit check on Redis (limits on there against off, alternating rounds).
if ! command -v redis-server >/dev/null; then ./scripts/install-test-services.sh >/dev/null; fi
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis_url="redis://127.0.0.1:$redis_port/"
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
echo "peak RSS (VmHWM) after start, cold c=8 and cached-hit loads: $((rss / 1024)) MiB (target < 400 MB = 381 MiB)"

[[ -n "${BENCH_HTTP_ONLY:-}" ]] && exit 0
start_server "$work/report"
out=$(wrk -t1 -c1 -d5s --latency "http://$addr/report")
echo "GET /report, c=1, 5 s, store filled above: p50 $(echo "$out" | awk '$1=="50%" {print $2}'), p99 $(echo "$out" | awk '$1=="99%" {print $2}'), $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s"
echo "peak RSS (VmHWM) of that server, 1M-URL store: $(( $(kib VmHWM) / 1024 )) MiB"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
