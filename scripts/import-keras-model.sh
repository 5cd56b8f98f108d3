#!/usr/bin/env bash
# Imports a Keras HDF5 model (the brief's MobileNet.h5, or any Keras 2.x / 3 model with the same
# interface) into a directory `classifier-api serve --model-dir OUT_DIR` serves, or that
# `CLASSIFIER_EMBED_MODEL=OUT_DIR cargo build --release` embeds:
#
#   scripts/import-keras-model.sh MODEL.h5 OUT_DIR [--labels imagenet_class_index.json] [--force]
#
# The work is done by scripts/keras_import/ (Python, with TensorFlow's Keras 3) in the venv that
# scripts/install-keras-venv.sh makes from the same tensorflow-cpu wheel the service's C library
# comes from; the first run installs it (a ~274 MB download unless the wheel is cached).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KERAS_VENV:-$root/.deps/keras-venv}"
# Its progress to stderr: stdout stays free for whoever scripts around us.
"$root/scripts/install-keras-venv.sh" >&2
export PYTHONPATH="$root/scripts${PYTHONPATH:+:$PYTHONPATH}"
exec "$venv/bin/python" -m keras_import "$@"
