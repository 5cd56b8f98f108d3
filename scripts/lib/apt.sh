# shellcheck shell=bash
# ensure_packages WHY COMMAND=PACKAGE...: installs with apt-get (as root, or through sudo) the
# Debian packages whose command is missing; prints what is there otherwise. Idempotent.
ensure_packages() {
  local why="$1"; shift
  local missing=() have=() pair
  for pair in "$@"; do
    if command -v "${pair%%=*}" >/dev/null; then have+=("${pair%%=*}"); else missing+=("${pair#*=}"); fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "already installed ($why): ${have[*]}"
    return 0
  fi
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  echo "installing ${missing[*]} ($why) with apt-get"
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}
