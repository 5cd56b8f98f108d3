#!/usr/bin/env bash
# Builds the copy-and-run bundle dist/classifier-api-<version>-x86_64-linux.tar.gz:
#   classifier-api-<version>-x86_64-linux/
#     classifier-api                    the release binary (model and labels embedded)
#     lib/libtensorflow_cc.so.2         TensorFlow's C library (real files, not symlinks)
#     lib/libtensorflow_framework.so.2
#     README.txt
# The binary finds lib/ through its `$ORIGIN/lib` rpath. build.rs also gives it an absolute rpath
# to this checkout's .deps/libtensorflow/lib (for `cargo run`); the bundled copy has that entry
# removed with patchelf, so the bundle can only ever load its own lib/ and carries no build path.
# Reuses an existing release build (cargo does nothing when it is up to date). Prints the size.
# BUNDLE_BINARY=path bundles that binary instead of building one (CI passes the one from the
# Docker image it just built: same sources, same Debian 12 glibc, one release build saved).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v patchelf >/dev/null; then
  echo "installing patchelf (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q patchelf >/dev/null
fi

./scripts/setup.sh
binary="${BUNDLE_BINARY:-}"
if [[ -z "$binary" ]]; then
  cargo build --release --locked
  binary=target/release/classifier-api
fi

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
[[ -n "$version" ]] || { echo "error: no version in Cargo.toml" >&2; exit 1; }
name="classifier-api-$version-x86_64-linux"
tf="$root/.deps/libtensorflow/lib"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/lib"
cp "$binary" "$stage/$name/classifier-api"
cp -L "$tf/libtensorflow_cc.so.2" "$tf/libtensorflow_framework.so.2" "$stage/$name/lib/"
# shellcheck disable=SC2016  # a literal $ORIGIN for the dynamic loader
patchelf --set-rpath '$ORIGIN/lib' "$stage/$name/classifier-api"
cat > "$stage/$name/README.txt" <<EOF
classifier-api $version (x86_64 Linux, glibc 2.27 or newer)

Keep lib/ next to the binary: it finds TensorFlow there (rpath \$ORIGIN/lib), nothing to install.

  ./classifier-api classify photo.jpg                    # one image, JSON on stdout
  ./classifier-api serve --listen 0.0.0.0:8080 --data-dir ./data
  curl -s -X POST -H 'Content-Type: application/json' \\
    -d '{"image_url":"https://example.com/cat.jpg"}' http://localhost:8080/classify-image

Every flag also reads a CLASSIFIER_* environment variable; ./classifier-api --help lists them.
EOF

mkdir -p dist
out="dist/$name.tar.gz"
tar -C "$stage" -czf "$out.tmp" "$name"
mv "$out.tmp" "$out"
echo "bundle: $out ($(du -h "$out" | cut -f1), unpacked $(du -sh "$stage/$name" | cut -f1))"
