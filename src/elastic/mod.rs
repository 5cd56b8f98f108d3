//! Elasticsearch monitoring: one document per `GET /report` call, never lost, never in the way.
//!
//! ```text
//! /report ── Reporter::enqueue ──> outbox (durable) ──────────────> sender task ──> POST /_bulk
//!              (one local commit or          redb: es_outbox_v1       (create + fixed _id,
//!               two Redis calls,             redis: P:{es}:*           backoff while ES is away)
//!               never waits for ES)
//! ```
//!
//! - [`Reporter::enqueue`] stores the document in the outbox ([`OutboxStore`]: its own small redb
//!   write transaction on the blocking pool, or, with `--redis-url`, the outbox every replica
//!   shares in Redis) and wakes the sender. When it returns `Ok`, the document is durable and
//!   will reach Elasticsearch eventually, across restarts. It never talks to Elasticsearch, so
//!   `/report` is as fast with the cluster down as with it up. It can only fail if the outbox's
//!   storage fails; the handler should log that and answer anyway.
//! - The outbox is bounded ([`ElasticConfig::outbox_max`]): past the bound the oldest documents
//!   are dropped, counted in `dropped`, with a warning.
//! - The sender delivers the oldest documents first, in `_bulk` batches of `create` actions with
//!   the id fixed at enqueue time, so a retry can never index a document twice (409 on `create`
//!   means "already there" and counts as delivered). Whole-request failures (cluster down,
//!   timeouts, 429, 5xx, auth) back off exponentially up to `max_backoff`. Documents refused with
//!   400 (mapping errors) move to the dead-letter table, counted, not retried. On Redis, one
//!   replica's sender works at a time (a lease: `outbox/redis.rs`).
//! - At first delivery the index template is installed (warning and carry on if refused).
//! - [`Reporter::shutdown`] drains within a deadline; the rest stays in the outbox and goes out
//!   after the next start.
//! - The reporter is also the Elasticsearch source of `/report/history` (`history.rs`: a
//!   per-minute `date_histogram` over the report documents).
//!
//! Embedded mode: tables in the service's `classifier.redb`, next to the storage layer's:
//!
//! | table               | key               | value                                   |
//! |---------------------|-------------------|-----------------------------------------|
//! | `es_outbox_v1`      | sequence          | (document id, JSON source)              |
//! | `es_dead_letter_v1` | sequence          | (document id, JSON source, reason, ms)  |
//! | `es_meta_v1`        | name              | u64 (`next_seq`)                        |
//!
//! Redis mode: the same rows under `<prefix>:{es}:*`, described in `outbox/redis.rs`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use elasticsearch::Elasticsearch;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::domain::{Totals, UrlStats};
use crate::localdb::DbError;

mod client;
mod config;
mod document;
mod history;
mod outbox;
mod sender;
mod template;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_redis;

pub use config::{ElasticAuth, ElasticConfig};
pub use document::ReportDocument;
pub use outbox::{OutboxStore, RedisOutbox, RedisOutboxError};

/// Why an Elasticsearch operation failed. Messages never contain credentials: they are stripped
/// from the URL before the client is built.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    #[error("elasticsearch configuration: {0}")]
    Config(String),
    #[error("elasticsearch outbox: {0}")]
    Db(#[from] DbError),
    #[error("elasticsearch outbox on redis: {0}")]
    Redis(#[from] RedisOutboxError),
    #[error("cannot reach elasticsearch: {0}")]
    Unreachable(String),
    #[error("elasticsearch answered {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("unexpected elasticsearch answer: {0}")]
    Unexpected(String),
    #[error("cannot encode the report document: {0}")]
    Encode(String),
}

/// Counters for the metrics layer. `outbox_depth` is the current number of waiting documents
/// (also after a restart; on Redis, the shared outbox's depth as this replica last saw it); the
/// others count since this process started, for this replica's own work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ReporterStats {
    /// Documents waiting in the outbox.
    pub outbox_depth: u64,
    /// Documents Elasticsearch confirmed (created, or already there from an earlier attempt).
    pub sent: u64,
    /// Delivery attempts that failed as a whole or left documents to retry.
    pub failed_attempts: u64,
    /// Documents refused for good and moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Documents dropped unsent because the outbox was full.
    pub dropped: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub outbox_depth: AtomicU64,
    pub sent: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    /// Depth moves by deltas (not by storing the table length) so that concurrent enqueues and
    /// deliveries, whose commits can finish in either order, never leave a stale value behind.
    pub(crate) fn sub_depth(&self, n: u64) {
        let _ = self
            .outbox_depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                Some(d.saturating_sub(n))
            });
    }

    /// A shared outbox (Redis) reports its depth with every call: others enqueue and deliver
    /// too, so this replica's deltas alone would drift. The last answer seen wins.
    pub(crate) fn observe_depth(&self, depth: Option<u64>) {
        if let Some(depth) = depth {
            self.outbox_depth.store(depth, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> ReporterStats {
        ReporterStats {
            outbox_depth: self.outbox_depth.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// State shared by the handles and the sender task.
pub(crate) struct Shared {
    pub store: OutboxStore,
    pub client: Elasticsearch,
    pub clock: Arc<dyn Clock>,
    pub index: String,
    pub instance_id: String,
    pub model_sha256: Option<String>,
    pub outbox_max: usize,
    pub batch_size: usize,
    pub initial_backoff: std::time::Duration,
    pub max_backoff: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub counters: Counters,
    /// Wakes the idle sender after an enqueue. `Notify` keeps one permit, so a wake-up sent
    /// between the sender's empty read and its wait is not lost.
    pub wake: Notify,
}

/// Owns the sender task. Dropping the last [`Reporter`] drops the watch sender, which stops the
/// task at once (documents stay in the outbox).
struct Control {
    shutdown: watch::Sender<Option<Instant>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to the reporter. Cheap to clone; hand one to the `/report` handler.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
    control: Arc<Control>,
}

impl std::fmt::Debug for Reporter {
    // By hand: the client holds the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("index", &self.shared.index)
            .field("instance_id", &self.shared.instance_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Validates `config`, prepares the outbox in `store` (a [`crate::localdb::LocalDb`]'s
    /// tables, or a [`RedisOutbox`]), and starts the sender task, which first delivers whatever
    /// an earlier run left in the outbox. Does not contact Elasticsearch: a cluster that is down
    /// at start is not an error. Must run inside a Tokio runtime.
    pub async fn start(
        store: impl Into<OutboxStore>,
        clock: Arc<dyn Clock>,
        config: ElasticConfig,
    ) -> Result<Reporter, ElasticError> {
        config.validate()?;
        let store = store.into();
        let (url, auth) = config.effective();
        let client = client::build(url.clone(), &auth, config.request_timeout)?;
        let depth = store.init().await?;
        tracing::info!(
            url = %url,
            index = %config.index,
            instance_id = %config.instance_id,
            outbox = store.kind(),
            pending = depth,
            "elasticsearch reporter starting"
        );
        let counters = Counters::default();
        counters.outbox_depth.store(depth, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            store,
            client,
            clock,
            index: config.index,
            instance_id: config.instance_id,
            model_sha256: config.model_sha256,
            outbox_max: config.outbox_max,
            batch_size: config.batch_size,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            request_timeout: config.request_timeout,
            counters,
            wake: Notify::new(),
        });
        let (shutdown, rx) = watch::channel(None);
        let task = tokio::spawn(sender::Sender::new(Arc::clone(&shared), rx).run());
        Ok(Reporter {
            shared,
            control: Arc::new(Control {
                shutdown,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The document for one `/report` answer, stamped with the injected clock and this instance.
    pub fn document(&self, entries: Vec<UrlStats>, totals: &Totals) -> ReportDocument {
        ReportDocument::new(
            self.shared.clock.now(),
            &self.shared.instance_id,
            self.shared.model_sha256.as_deref(),
            entries,
            totals,
        )
    }

    /// Makes `doc` durable in the outbox and wakes the sender; returns the document's `_id`.
    /// Costs one local redb commit (fsync), or two Redis round trips, never a request to
    /// Elasticsearch. Also works after [`Reporter::shutdown`]: the document then waits for the
    /// next start (on Redis, for any replica's sender).
    pub async fn enqueue(&self, doc: &ReportDocument) -> Result<String, ElasticError> {
        let source = serde_json::to_string(doc).map_err(|e| ElasticError::Encode(e.to_string()))?;
        let at = self.shared.clock.now();
        let instance = self.shared.instance_id.clone();
        self.push(source, move |seq| document::document_id(&instance, at, seq))
            .await
    }

    /// Commits `source` to the outbox under the id `id` makes of its sequence number.
    async fn push(
        &self,
        source: String,
        id: impl FnOnce(u64) -> String + Send + 'static,
    ) -> Result<String, ElasticError> {
        let max = self.shared.outbox_max;
        let pushed = self.shared.store.push(source, max, id).await?;
        let counters = &self.shared.counters;
        counters.outbox_depth.fetch_add(1, Ordering::Relaxed);
        if pushed.dropped > 0 {
            counters.sub_depth(pushed.dropped);
            counters
                .dropped
                .fetch_add(pushed.dropped, Ordering::Relaxed);
            tracing::warn!(
                outbox_max = max,
                dropped = pushed.dropped,
                "elasticsearch outbox full; oldest report documents dropped unsent"
            );
        }
        counters.observe_depth(pushed.depth);
        self.shared.wake.notify_one();
        Ok(pushed.id)
    }

    /// Current counters (lock-free reads).
    pub fn stats(&self) -> ReporterStats {
        self.shared.counters.snapshot()
    }

    /// Stops the sender after draining the outbox, or at `deadline` (the service passes now +
    /// `startup::ES_DRAIN`), whichever comes first. An in-flight request is abandoned at the
    /// deadline; its documents stay in the outbox, and a resend after the next start is
    /// recognised by its id. Returns the final counters. Idempotent.
    pub async fn shutdown(&self, deadline: Instant) -> ReporterStats {
        self.control.shutdown.send_replace(Some(deadline));
        let task = crate::sync::lock(&self.control.task).take();
        if let Some(mut task) = task {
            // The task honours the deadline itself; the grace period only guards against a bug
            // keeping the process from exiting.
            let grace = deadline + std::time::Duration::from_secs(1);
            match tokio::time::timeout_at(grace, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "elasticsearch sender task failed"),
                Err(_) => {
                    tracing::error!("elasticsearch sender task missed its deadline; aborted");
                    task.abort();
                }
            }
        }
        self.stats()
    }
}
