#!/usr/bin/env bash
# The C build tools the crate's build needs besides a Rust toolchain: cmake and nasm, with which
# turbojpeg-sys builds libjpeg-turbo (the JPEG decoder) from its bundled source, SIMD code
# included, and links it statically. Debian's packages, installed with apt-get (as root, or
# through sudo) when either command is missing. Idempotent; called by setup.sh.
set -euo pipefail
missing=()
for tool in cmake nasm; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "build tools already installed: $(cmake --version | head -1), $(nasm -v)"
  exit 0
fi
sudo=()
[[ $(id -u) -eq 0 ]] || sudo=(sudo)
echo "installing ${missing[*]} (libjpeg-turbo's build) with apt-get"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
