#!/usr/bin/env bash
# The Python side of scripts/import-keras-model.sh: a venv in .deps/keras-venv (or $KERAS_VENV)
# with TensorFlow installed from the very tensorflow-cpu wheel install-tensorflow.sh unpacks the
# C library from (scripts/lib/tf-wheel.sh), so Keras 3 (which TensorFlow 2.21 pulls in) exports
# models with the TensorFlow the service runs. Its dependencies come from PyPI, pinned by
# scripts/keras-venv.constraints.
#
# Also tf-keras (Keras 2 for TF 2.21) for the tests, which write real Keras 2 HDF5 files with it.
# It is installed with --no-deps: it requires the distribution `tensorflow`, which pip would
# otherwise download as a second TensorFlow next to tensorflow-cpu; it runs on the one here.
#
# Idempotent: a stamp names the TensorFlow version and the constraints' hash. Cold: about a
# minute with the wheel cached (0.8 GB beside libtensorflow); warm: nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/tf-wheel.sh
source "$root/scripts/lib/tf-wheel.sh"
venv="${KERAS_VENV:-$root/.deps/keras-venv}"
constraints="$root/scripts/keras-venv.constraints"
stamp="$venv/.installed-$TF_VERSION-$(sha256sum "$constraints" | cut -c1-12)"

if [[ -f "$stamp" && -x "$venv/bin/python" ]]; then
  echo "keras venv (tensorflow-cpu $TF_VERSION) already in $venv"
  exit 0
fi

# The wheel is built for CPython 3.11 (install-tensorflow.sh downloads it for --python-version 311).
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: the tensorflow-cpu wheel is for Python 3.11; python3 is $(python3 --version 2>&1)" >&2
  exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "python3 cannot make venvs: installing python3-venv (apt-get)"
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi

# The venv's two TensorFlow libraries are the wheel's, unstripped (850 MB). install-tensorflow.sh
# made stripped copies of the very same files (606 MB): hard links to those take their place.
# Skipped if they are missing or on another file system (then the venv keeps its own).
share_libraries() {
  local lib="$root/.deps/libtensorflow/lib" tf name
  tf="$(compgen -G "$venv/lib/python3*/site-packages/tensorflow" | head -n1)"
  for name in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
    if [[ -f "$lib/$name" && -f "$tf/$name" ]] && ln -f "$lib/$name" "$tf/$name.shared" 2>/dev/null; then
      mv -f "$tf/$name.shared" "$tf/$name"
    fi
  done
}

wheel="$(tf_wheel)"
echo "creating $venv from $(basename "$wheel")"
rm -rf "$venv"
python3 -m venv "$venv"
# No pip cache: these files are installed once per machine, and disk is what CI runs short of.
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check --no-input --no-cache-dir)
"${pip[@]}" install -c "$constraints" "$wheel"
"${pip[@]}" install --no-deps "tf-keras==$TF_VERSION"
share_libraries
"$venv/bin/python" - <<'PY'
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf, keras, tf_keras, h5py
print(f"keras venv: tensorflow {tf.__version__}, keras {keras.__version__}, "
      f"tf_keras {tf_keras.__version__}, h5py {h5py.__version__}")
PY
touch "$stamp"
