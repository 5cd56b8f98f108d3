#!/usr/bin/env bash
# API conformance: runs schemathesis against a live classifier-api with openapi.yaml and fails when
# the server answers 5xx (other than the documented upstream/overload ones), an undocumented status,
# content type, header or body, accepts invalid input, or mishandles auth / unknown methods.
#
# CI runs it after the tests (target/debug/classifier-api exists then; it is built only if missing).
# Idempotent: schemathesis goes into .deps/schemathesis-venv once. Every run uses a fresh data dir.
#
# Environment (all optional):
#   CLASSIFIER_API_BIN     binary to test (default: target/debug/classifier-api)
#   ST_MAX_EXAMPLES        fuzzing examples per operation (default 100)
#   ST_SEED                schemathesis seed, to replay a run (default: random, printed)
#   ST_WORKERS             concurrent workers (default 1: with 2, schemathesis 4.32.5 cut the fuzzing
#                          of an operation that already failed in the coverage phase to ~9 cases)
# Extra arguments go to `st run`, e.g. --include-path /token or --phases coverage.
# Artifacts (JUnit, NDJSON events, HAR of every request, server log): target/api-conformance/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ST_VERSION=4.32.5
venv="$root/.deps/schemathesis-venv"
bin="${CLASSIFIER_API_BIN:-$root/target/debug/classifier-api}"
out="$root/target/api-conformance"
total_start=$SECONDS

stage_start=$SECONDS
stage_done() { echo "=== $1: $((SECONDS - stage_start)) s"; stage_start=$SECONDS; }

# --- 1. schemathesis ------------------------------------------------------------------------------
installed_version() {
  "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true
}
if [[ "$(installed_version)" != "$ST_VERSION" ]]; then
  echo "=== installing schemathesis $ST_VERSION into $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
[[ "$(installed_version)" == "$ST_VERSION" ]] || { echo "schemathesis $ST_VERSION not installed" >&2; exit 1; }
stage_done "schemathesis $ST_VERSION"

# --- 2. the binary --------------------------------------------------------------------------------
if [[ ! -x "$bin" ]]; then
  echo "=== $bin missing: cargo build"
  cargo build --locked
fi
stage_done "binary"

# --- 3. start the server --------------------------------------------------------------------------
# Only the flags below count: settings from the caller's environment (e.g.
# CLASSIFIER_ALLOW_PRIVATE_NETWORKS) must not change what is tested.
while read -r name; do unset "$name"; done < <(compgen -e | grep '^CLASSIFIER_' | grep -v '^CLASSIFIER_API_BIN$' || true)
unset RUST_LOG

tmp="$(mktemp -d "${TMPDIR:-/tmp}/api-conformance.XXXXXX")"
server_pid=""
cleanup() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  mkdir -p "$out"
  [[ -f "$tmp/server.log" ]] && cp "$tmp/server.log" "$out/server.log"
  rm -rf "$tmp"
  echo "=== api-conformance total: $((SECONDS - total_start)) s (exit $status)"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Two users (the user commands open the database directly, so before the server starts):
# - alice / s3cret-pass, the readme's and the spec's example for POST /token, so that the examples
#   phase gets a 200 from /token (a throwaway database: the fixed password protects nothing). The
#   coverage phase then sends alice with wrong passwords, so she soon gets 429 too_many_attempts;
# - a user with a random password, never seen by the generator, that schemathesis logs in with
#   (auth.dynamic below) to get GET /secret's 200 "Hi <name>".
add_user() {
  printf '%s\n' "$2" | "$bin" user add "$1" --password-stdin --data-dir "$tmp/data" \
    >"$tmp/user-add.log" 2>&1 || { cat "$tmp/user-add.log" >&2; exit 1; }
}
add_user alice s3cret-pass
user=conformance
password="conformance-$RANDOM$RANDOM$RANDOM"
add_user "$user" "$password"

# No --allow-private-networks: generated URLs must never reach local services. Without internet,
# random public host names fail DNS at once (502), which the spec documents.
"$bin" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --fetch-timeout 2s --log-format json \
  2>"$tmp/server.log" &
server_pid=$!

addr=""
for _ in $(seq 600); do
  # JSON log line: {"message":"ready, listening on http://127.0.0.1:PORT","addr":"127.0.0.1:PORT",...}
  addr="$(grep -h 'listening on http://' "$tmp/server.log" 2>/dev/null \
    | sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' | head -n 1 || true)"
  [[ -n "$addr" ]] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "classifier-api exited during start-up:" >&2
    tail -n 30 "$tmp/server.log" >&2
    exit 1
  fi
  sleep 0.2
done
[[ -n "$addr" ]] || { echo "no 'listening on' line after 120 s" >&2; tail -n 30 "$tmp/server.log" >&2; exit 1; }
base="http://$addr"
stage_done "server up at $base"

# --- 4. which operations this build has -----------------------------------------------------------
# GETs marked x-optional in the spec (/, /web/{file}, /report/history: planned) answering
# 404 not_found are "not in this build": skipped, and said so. Any other GET answering 404 not_found
# (e.g. /metrics, whose documented 404 only applies with --disable-metrics) fails the run.
missing_required=0
"$venv/bin/python" - "$root/openapi.yaml" "$base" >"$tmp/skip-args" <<'PY' || missing_required=1
import json, sys, urllib.error, urllib.request
import yaml

spec, base = yaml.safe_load(open(sys.argv[1])), sys.argv[2]
status = 0
for path, item in spec["paths"].items():
    op = item.get("get")
    if not isinstance(op, dict):
        continue
    # Path parameters take their first enum value or their example; other required ones: no probe.
    url, probeable = path, True
    for p in op.get("parameters", []):
        if "$ref" in p or not p.get("required"):
            continue
        schema = p.get("schema", {})
        value = (schema.get("enum") or [p.get("example", schema.get("example"))])[0]
        if p["in"] != "path" or value is None:
            probeable = False
        else:
            url = url.replace("{%s}" % p["name"], str(value))
    if not probeable:
        continue
    try:
        urllib.request.urlopen(base + url, timeout=10).close()
        continue
    except urllib.error.HTTPError as e:
        try:
            code = json.loads(e.read())["error"]["code"]
        except Exception:
            code = None
        if (e.code, code) != (404, "not_found"):
            continue
    if op.get("x-optional"):
        print(f"skipping GET {path}: x-optional and not in this build (404 not_found)", file=sys.stderr)
        # By operation id: exact, whatever the path looks like.
        print("--exclude-operation-id")
        print(op["operationId"])
    else:
        print(f"error: GET {path} answers 404 not_found, but the spec says it exists", file=sys.stderr)
        status = 1
sys.exit(status)
PY
mapfile -t skip_args <"$tmp/skip-args"

# GET /openapi.yaml serves the spec compiled into the binary (include_str!). A difference from the
# file means the binary is older than openapi.yaml: the run still tests the file, but say so.
if "$venv/bin/python" - "$root/openapi.yaml" "$base/openapi.yaml" <<'PY'
import sys, urllib.request
try:
    served = urllib.request.urlopen(sys.argv[2], timeout=10).read()
except Exception as e:
    print(f"warning: GET /openapi.yaml failed ({e})", file=sys.stderr)
    sys.exit(0)
sys.exit(0 if served == open(sys.argv[1], "rb").read() else 1)
PY
then :; else
  echo "warning: GET /openapi.yaml differs from openapi.yaml: the binary was built from another version of it (rebuild)"
fi

# --- 5. schemathesis configuration ------------------------------------------------------------------
# Checks, and why:
#   not_a_server_error            no 5xx, except where the spec documents one as normal operation:
#                                 classify's 502/503/504 (upstream failed / overloaded / timed out)
#                                 and /readyz's 503. A 500 is always a failure.
#   status_code_conformance       every status is documented for the operation
#   content_type_conformance      every Content-Type is documented
#   response_headers_conformance  documented required headers (WWW-Authenticate, Retry-After) exist
#   response_schema_conformance   bodies match the schemas (error codes per status included)
#   negative_data_rejection       schema-invalid input is refused with 4xx
#   positive_data_acceptance      schema-valid input is not refused (for /classify-image 400 is
#                                 allowed too: ftp:// or user:pass@ URLs are schema-valid strings
#                                 the server rightly refuses; and 422: a schema-valid binary
#                                 upload is random bytes, not an image; a 415 would still fail)
#   missing_required_header       /secret without Authorization is 401
#   ignored_auth                  /secret really checks the token
#   unsupported_method            undocumented methods get 405 with an Allow header (RFC 9110)
# Left out: use_after_free, ensure_resource_availability, object_level_authorization (no resources
# are created and no links are declared: nothing for them to check), allow_header_conformance
# (only looks at OPTIONS answers that carry Allow; harmless but adds nothing today),
# max_response_time (classify legitimately waits up to --fetch-timeout).
checks="not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance"
checks+=",response_schema_conformance,negative_data_rejection,positive_data_acceptance"
checks+=",missing_required_header,ignored_auth,unsupported_method"

cat >"$tmp/schemathesis.toml" <<EOF
[auth.dynamic.openapi.bearerAuth]
path = "/token"
method = "post"
payload = { username = "$user", password = "$password" }
extract_from = "body"
extract_selector = "/token"

[[operations]]
include-operation-id = "classifyImage"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]
# Schema-valid is not enough here: "ftp://...", "http://u:p@host/" match the schema (a JSON Schema
# cannot say "WHATWG-parsable http(s) URL with a host and no credentials") and are rightly 400.
# (enabled = false would not work: checks named on the command line win over per-operation config.)
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]

# Header values with bytes 0x80-0xFF (legal obs-text, RFC 9110 5.5) in negative cases: only GET
# operations, which have no body whose strings the narrower codec would impoverish.
[[operations]]
include-method = "GET"
generation.codec = "latin-1"

[[operations]]
include-operation-id = "readyz"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]
EOF

# --- 6. run ---------------------------------------------------------------------------------------
mkdir -p "$out"
seed_args=()
[[ -n "${ST_SEED:-}" ]] && seed_args=(--seed "$ST_SEED")
echo "=== st run (schemathesis $ST_VERSION) against $base"
st_status=0
(
  cd "$tmp" # anything schemathesis writes on its own lands in the temp dir
  "$venv/bin/st" --config-file "$tmp/schemathesis.toml" run "$root/openapi.yaml" \
    --url "$base" \
    --checks "$checks" \
    --phases examples,coverage,fuzzing \
    --max-examples "${ST_MAX_EXAMPLES:-100}" \
    --workers "${ST_WORKERS:-1}" \
    --request-timeout 10 \
    --generation-database none \
    --suppress-health-check too_slow \
    --continue-on-failure \
    --no-color \
    --output-sanitize false \
    --report junit,ndjson,har --report-junit-path "$out/junit.xml" --report-ndjson-path "$out/events.ndjson" \
    --report-har-path "$out/requests.har" \
    "${seed_args[@]}" "${skip_args[@]}" "$@"
) || st_status=$?
stage_done "schemathesis"

if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "classifier-api died during the run (log: $out/server.log)" >&2
  exit 1
fi
# Errors the server logged (a 500's cause is only there). hyper's "connection error" lines are
# schemathesis' deliberately malformed requests (e.g. NUL in a header), answered 400 by hyper.
if grep '"level":"ERROR"' "$tmp/server.log" | grep -v 'server connection error' >"$tmp/errors.log"; then
  echo "--- the server logged errors (full log: $out/server.log):"
  head -n 20 "$tmp/errors.log"
fi
if [[ "$missing_required" != 0 ]]; then
  echo "error: this build lacks operations the spec requires (see above)" >&2
  exit 1
fi
exit "$st_status"
