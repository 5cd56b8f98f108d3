# classifier-api: MobileNet image classification over HTTP, with the model embedded.
#
#   ./scripts/fetch-assets.sh            # the build embeds assets/ (git-ignored): fetch it first
#   docker build -t classifier-api .
#   # or embed another model, imported with scripts/import-keras-model.sh into the build context:
#   docker build --build-arg CLASSIFIER_EMBED_MODEL=models/mine -t classifier-api .
#   docker run -p 8080:8080 -v classifier-data:/data classifier-api
#
# Configuration: the same CLASSIFIER_* environment variables as outside a container (readme.md).

########## builder: libtensorflow from PyPI, then a release build ##########
FROM rust:1.95-bookworm AS builder

# install-tensorflow.sh fetches the tensorflow-cpu wheel with `pip download` (no install, so no
# --break-system-packages), unzips it with python3 and strips the libraries (binutils, already here).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# cmake and nasm, with which turbojpeg-sys builds libjpeg-turbo (static, SIMD): the same script as
# outside a container (the image has neither).
COPY scripts/install-build-tools.sh scripts/
COPY scripts/lib/apt.sh scripts/lib/
RUN ./scripts/install-build-tools.sh && rm -rf /var/lib/apt/lists/*

# 1) TensorFlow's C library into /build/.deps/libtensorflow, where .cargo/config.toml points
#    pkg-config. Depends only on the scripts: source changes never download the wheel again.
#    The wheel itself is not kept (the image needs no Python TensorFlow).
COPY scripts/install-tensorflow.sh scripts/
COPY scripts/lib/tf-wheel.sh scripts/lib/
RUN TF_WHEEL_DIR=/tmp/tf-wheel ./scripts/install-tensorflow.sh && rm -rf /tmp/tf-wheel

# 2) Every dependency, built against placeholder sources. This layer depends on the manifest, the
#    lock file, build.rs and the (sha256-pinned) assets that build.rs checks for, not on src/.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
COPY assets assets
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/pipeline.rs \
 && echo 'fn main() {}' > benches/report.rs \
 && cargo build --release --locked \
 && rm -rf src benches

# 3) The real sources and the model to embed: the shipped one, or the directory named by
#    --build-arg CLASSIFIER_EMBED_MODEL (inside the build context, as scripts/import-keras-model.sh
#    writes it; build.rs checks it). Only our crate rebuilds when it changes. COPY keeps the
#    files' own mtimes, which may be older than the placeholder build: touch the crate roots so
#    cargo rebuilds our crate (and only our crate).
ARG CLASSIFIER_EMBED_MODEL=assets/mobilenet_v1_1.0_224
# Under its own path, so the directory keeps its name (GET /model reports it).
COPY ${CLASSIFIER_EMBED_MODEL} /build/embed/${CLASSIFIER_EMBED_MODEL}/
COPY src src
COPY benches benches
COPY web web
COPY openapi.yaml ./
RUN touch src/main.rs src/lib.rs \
 && CLASSIFIER_EMBED_MODEL="/build/embed/${CLASSIFIER_EMBED_MODEL}" cargo build --release --locked \
 && cp target/release/classifier-api /classifier-api

########## runtime: the binary, the two TensorFlow libraries, CA certificates ##########
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin classifier \
 && mkdir /data \
 && chown classifier:classifier /data

# The binary's rpath includes $ORIGIN/lib (build.rs): /app/lib is found without LD_LIBRARY_PATH.
COPY --from=builder /build/.deps/libtensorflow/lib/libtensorflow_cc.so.2 \
                    /build/.deps/libtensorflow/lib/libtensorflow_framework.so.2 /app/lib/
COPY --from=builder /classifier-api /app/classifier-api

ENV CLASSIFIER_LISTEN=0.0.0.0:8080 \
    CLASSIFIER_DATA_DIR=/data \
    TF_CPP_MIN_LOG_LEVEL=2

# Cache, statistics, users and the token root key live here: keep it on a volume.
VOLUME ["/data"]
EXPOSE 8080
USER classifier:classifier
WORKDIR /data

# The image has no curl: the binary probes its own GET /healthz on CLASSIFIER_LISTEN's port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["/app/classifier-api", "healthcheck"]

ENTRYPOINT ["/app/classifier-api"]
CMD ["serve"]
