#!/usr/bin/env bash
# Installs osmem-server, the in-memory OpenSearch/Elasticsearch-compatible server the Elasticsearch
# tests run against (src/elastic/), into .deps/osmem/bin/osmem-server.
#
# Source: the PyPI wheel osmem-server (a Go binary plus a small Python launcher we do not need).
# Only the binary is extracted: no virtualenv, nothing installed into the user's Python.
# The tests look for $OSMEM_SERVER, then $OSMEM_SERVER_BIN, then .deps/osmem/bin/osmem-server.
# Idempotent: does nothing when that version is already in place. ~2 s on a fresh machine (20 MB).
set -euo pipefail
OSMEM_VERSION="${OSMEM_VERSION:-0.1.6}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${OSMEM_INSTALL_DIR:-$root/.deps/osmem}"
bin="$dest/bin/osmem-server"
stamp="$dest/.installed-$OSMEM_VERSION"

if [[ -f "$stamp" && -x "$bin" ]]; then
  echo "osmem-server $OSMEM_VERSION already installed: $bin"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading osmem-server==$OSMEM_VERSION wheel from PyPI (~20 MB)"
# --only-binary: the wheel for this platform carries the binary; an sdist would not.
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "osmem-server==$OSMEM_VERSION"
wheel="$(ls "$tmp"/osmem_server-*.whl)"

rm -rf "$dest"
mkdir -p "$dest/bin"
python3 - "$wheel" "$bin" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("osmem_server/bin/osmem-server")]
    if not names:
        sys.exit(f"{wheel}: no osmem-server binary for this platform")
    with z.open(names[0]) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
# zipfile does not keep the executable bit.
chmod 755 "$bin"
"$bin" -version
touch "$stamp"
echo "osmem-server installed: $bin"
echo "(tests find it there; or export OSMEM_SERVER=$bin)"
