//! classifier-api: classifies the image behind a URL with MobileNet run by TensorFlow.
//!
//! # Layout
//! - `cli`: the commands (`serve`, `classify`, `healthcheck`, and the offline `user`, `key` and
//!   `token`); `config`: the settings they share, flags and `CLASSIFIER_*` environment variables.
//! - `startup`: builds the application (model, fetcher, listener) and serves until stopped.
//! - `http`: one small warp filter per endpoint; every failure becomes a JSON error. `http::web`
//!   serves the page for people (`web/`, embedded).
//! - `error`: the single table from failure to HTTP status and stable error code.
//! - `state`: what handlers share.
//! - `classify`: the request's stages, in order. `classify::fetch` downloads untrusted URLs
//!   safely (no private destinations, size and time limits, redirects checked hop by hop);
//!   `classify::image` decodes, resizes Pillow-exactly to 224x224 and scales to [-1, 1] (with the
//!   optional reduced-size JPEG decode, `--jpeg-dct-scaling`); `classify::model` runs the
//!   TensorFlow session on its own thread, with dynamic batching; `classify::pipeline` chains
//!   fetch -> image -> model.
//! - `store` + `writer`: the redb database and its batching writer task; `cache`: per-URL results
//!   (quick_cache over redb, TTL, single flight); `stats`: per-URL counts and times for `/report`;
//!   `history`: requests per minute for `/report/history` (in-memory ring, pluggable source).
//! - `auth`: users (argon2id) and biscuit tokens for `/token` and `/secret`.
//! - `elastic`: one Elasticsearch document per `/report`, through a persistent outbox in redb.
//! - `rss`: gives back the memory TensorFlow's loading leaves resident (peak RSS).
//! - `metrics`: Prometheus metric names and the recorder; `telemetry`: logging.
//! - `domain`: validated values (`ImageUrl`, `Classification`); `clock`: injectable time.
pub mod auth;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod elastic;
pub mod error;
pub mod history;
pub mod http;
pub mod localdb;
pub mod metrics;
pub mod report;
pub mod rss;
pub mod shutdown;
pub mod startup;
pub mod storage;
mod sync;
pub mod telemetry;
