# Sourced by the scripts in scripts/: `stage LABEL CMD...` runs CMD between two lines that name it,
# the second with the seconds it took and the disk space left, so every CI log shows where the
# time goes and, when a machine runs short of disk (CI once did, in the middle of a pip install),
# how close each stage came. STAGE_PREFIX (e.g. "docker: ") tells nested scripts' stages apart.
# CMD runs under the caller's `set -e` (not in an `if`, which would switch it off inside CMD).
stage() {
  local label="${STAGE_PREFIX:-}$1"; shift
  local start=$SECONDS
  echo "=== $label"
  "$@"
  echo "=== $label: $((SECONDS - start)) s ($(disk_free) free)"
}

disk_free() { df -h --output=avail . 2>/dev/null | tail -n1 | tr -d ' '; }
