//! classifier-api: classifies the image behind a URL with MobileNet run by TensorFlow.
//!
//! # Layout
//! Dependencies point down this list, never back up.
//! - `cli`: the commands (`serve`, `classify`, `healthcheck`, and the offline `user`, `key` and
//!   `token`); `config`: the settings they share, flags and `CLASSIFIER_*` environment variables.
//! - `startup`: builds the application from the settings (database, storage, services, routes)
//!   and serves until stopped. It is the one place that wires concrete parts together.
//! - `http`: one small warp filter per endpoint; each decodes the request, calls one service and
//!   encodes the answer; every failure becomes a JSON error. `http::web` serves the page;
//!   `http::cors` lets the pages of `--cors-origins` call the API.
//! - `error`: the single table from failure to HTTP status and stable error code.
//! - `classify`: the classify use case (`ClassifyService`: admission, single flight over the
//!   cache, statistics, history) and the request's stages in order: `fetch` downloads untrusted
//!   URLs safely, `image` decodes and resizes Pillow-exactly to 224x224 in [-1, 1], `model` runs
//!   the TensorFlow session on its own thread with dynamic batching, `pipeline` chains them.
//! - `report`: the report use case (top 10, then one Elasticsearch document).
//! - `history`: requests per minute for `/report/history` behind a `HistorySource` (the in-memory
//!   ring; `elastic` implements it too).
//! - `storage`: results (memory tier over a backend) and request statistics (batched), behind the
//!   `CacheStore`/`StatsStore` seam; backends: redb (default) and in-memory.
//! - `auth`: users (argon2id) and biscuit tokens for `/token` and `/secret`.
//! - `redis_conn`: the one Redis connection (a server, or a Cluster) storage and rate limits share.
//! - `ratelimit`: per-client budgets (all requests, cache misses) on `governor`'s buckets;
//!   `client`: who the client is (the peer, or behind `--trusted-proxies` what they forwarded).
//! - `elastic`: one Elasticsearch document per `/report`, through a persistent outbox.
//! - `localdb`: the per-replica redb file: opening it, every table (`localdb::schema`), and the
//!   one blocking helper for its transactions.
//! - `rss`: gives back the memory TensorFlow's loading leaves resident (peak RSS).
//! - `metrics`: Prometheus metric names and the recorder; `telemetry`: logging; `outage`: a
//!   shared dependency's health (logged once per outage, and a gauge).
//! - `domain`: validated values (`ImageUrl`, `Classification`, report rows); `clock`: injectable
//!   time; `sync`: the one poison-tolerant lock.
//!
//! Public are the modules the binary, the integration tests and the benches use; the rest is
//! private so the layout can change without breaking them.
mod auth;
pub mod classify;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
mod elastic;
mod error;
mod history;
mod http;
pub mod localdb;
mod metrics;
mod outage;
pub mod ratelimit;
mod redis_conn;
mod report;
pub mod rss;
mod shutdown;
pub mod startup;
pub mod storage;
mod sync;
pub mod telemetry;
