#!/usr/bin/env bash
# Everything a build needs that git does not carry: the C build tools libjpeg-turbo's build uses
# (cmake, nasm), libtensorflow and the model assets.
# Idempotent; called by run.sh and test.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install-build-tools.sh"
"$here/install-tensorflow.sh"
"$here/fetch-assets.sh"
