# Sourced by the scripts in scripts/: `stage LABEL CMD...` runs CMD between two lines that name it,
# the second with the seconds it took, so every CI log shows where the time goes. STAGE_PREFIX
# (e.g. "docker: ") tells nested scripts' stages apart.
stage() {
  local label="${STAGE_PREFIX:-}$1"; shift
  local start=$SECONDS
  echo "=== $label"
  "$@"
  echo "=== $label: $((SECONDS - start)) s"
}
