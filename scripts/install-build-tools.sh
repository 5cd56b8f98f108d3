#!/usr/bin/env bash
# The C build tools the crate's build needs besides a Rust toolchain: cmake and nasm, with which
# turbojpeg-sys builds libjpeg-turbo (the JPEG decoder) from its bundled source, SIMD code
# included, and links it statically. Debian's packages, installed when missing. Idempotent;
# called by setup.sh.
set -euo pipefail
# shellcheck source=scripts/lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
ensure_packages "libjpeg-turbo's build" cmake=cmake nasm=nasm
