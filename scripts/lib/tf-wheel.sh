# Sourced by install-tensorflow.sh and install-keras-venv.sh: `tf_wheel` prints the path of the
# tensorflow-cpu wheel, downloading it from PyPI first if the cache does not hold it. Both scripts
# use the same file, so the C library the service links and the Python TensorFlow that imports
# Keras models are one TensorFlow, never two versions side by side.
#   TF_VERSION    which release (2.21.0)
#   TF_WHEEL_DIR  the cache, default .deps/wheels (the Docker build points it at a temp dir)
TF_VERSION="${TF_VERSION:-2.21.0}"

tf_wheel() {
  local root dir found tmp
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  dir="${TF_WHEEL_DIR:-$root/.deps/wheels}"
  found="$(compgen -G "$dir/tensorflow_cpu-$TF_VERSION-*.whl" | head -n1 || true)"
  if [[ -z "$found" ]]; then
    echo "downloading tensorflow-cpu==$TF_VERSION wheel from PyPI (~274 MB) into $dir" >&2
    mkdir -p "$dir"
    # Into a temp dir first, so an interrupted download never looks like a cached wheel.
    tmp="$(mktemp -d "$dir/.download.XXXXXX")"
    python3 -m pip download --quiet --no-deps --platform manylinux_2_27_x86_64 \
      --python-version 311 --only-binary=:all: -d "$tmp" "tensorflow-cpu==$TF_VERSION" >&2
    found="$(compgen -G "$tmp/tensorflow_cpu-$TF_VERSION-*.whl" | head -n1)"
    mv "$found" "$dir/"
    rm -rf "$tmp"
    found="$dir/$(basename "$found")"
  fi
  echo "$found"
}
