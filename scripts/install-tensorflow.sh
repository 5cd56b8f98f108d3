#!/usr/bin/env bash
# Installs TensorFlow's C library (libtensorflow_cc + libtensorflow_framework) into .deps/libtensorflow
# and writes a pkg-config file for tensorflow-sys, whose own build script would otherwise try to
# download from a Google host (unreachable here, and it leaves a 0-byte tarball behind).
#
# Source: the PyPI wheel tensorflow-cpu (the only registry we can reach that carries the C API),
# kept in .deps/wheels (scripts/lib/tf-wheel.sh): install-keras-venv.sh installs the same file.
# Idempotent: does nothing when the libraries are already in place. ~10 s on a fresh machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/tf-wheel.sh
source "$root/scripts/lib/tf-wheel.sh"
dest="${TF_INSTALL_DIR:-$root/.deps/libtensorflow}"
lib="$dest/lib"
stamp="$dest/.installed-$TF_VERSION"

if [[ -f "$stamp" && -e "$lib/libtensorflow.so" && -e "$lib/libtensorflow_framework.so" ]]; then
  echo "libtensorflow $TF_VERSION already installed in $dest"
  exit 0
fi

wheel="$(tf_wheel)"

rm -rf "$dest"
mkdir -p "$lib/pkgconfig"
python3 - "$wheel" "$lib" <<'PY'
import sys, zipfile, shutil, os
wheel, lib = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
        with z.open("tensorflow/" + name) as src, open(os.path.join(lib, name), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
# Debug sections and the static symbol table (~180 MB) are never used; dynamic symbols stay.
strip --strip-unneeded "$lib/libtensorflow_cc.so.2" "$lib/libtensorflow_framework.so.2"
# The C API symbols live in libtensorflow_cc.so.2; tensorflow-sys links "-ltensorflow".
ln -sf libtensorflow_cc.so.2 "$lib/libtensorflow.so.2"
ln -sf libtensorflow_cc.so.2 "$lib/libtensorflow.so"
ln -sf libtensorflow_framework.so.2 "$lib/libtensorflow_framework.so"
# ${pcfiledir} keeps the .pc file valid wherever the tree is moved to.
cat > "$lib/pkgconfig/tensorflow.pc" <<PC
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
Name: tensorflow
Description: TensorFlow C API (from the tensorflow-cpu $TF_VERSION wheel)
Version: $TF_VERSION
Libs: -L\${libdir} -ltensorflow -ltensorflow_framework
Cflags:
PC
touch "$stamp"
du -sh "$lib" | awk '{print "libtensorflow installed: " $1 " in " $2}'
