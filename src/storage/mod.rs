//! Results and statistics: the only code that knows storage backends exist.
//!
//! ```text
//! ResultCache (memory tier) ─┐                        ┌─ RedbBackend   (classifier.redb: default)
//!                            ├─> CacheStore + StatsStore ─┤
//! Stats ── Batcher (task) ───┘    (backend.rs: the seam)  └─ MemoryBackend (tests, benches)
//! ```
//!
//! [`Storage`] owns the running layer: the backend, the batching task above it and the
//! backend's own tasks. [`open`] is the one place that picks a backend.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use crate::clock::Clock;
use crate::localdb::{DbError, LocalDb};
pub use crate::redis_conn::RedisConn;

mod agg;
mod backend;
mod batcher;
mod cache;
mod dispatch;
mod history;
mod lease;
mod memory;
mod redb;
mod redis;
/// Tests' `redis-server` (unit and API tests share it; nothing in the service calls it).
#[doc(hidden)]
pub mod redis_server;
mod stats;
#[cfg(test)]
mod tests;

pub use agg::{Agg, StatsBatch};
pub use backend::{
    CacheStore, CachedResult, Lease, MinuteSnapshot, StatsStore, StorageBackend, TopSnapshot,
};
pub use cache::ResultCache;
pub use dispatch::Backend;
pub use history::SharedHistory;
pub use memory::MemoryBackend;
pub use redb::RedbBackend;
pub use redis::RedisBackend;
pub use stats::Stats;

use batcher::Batcher;

/// Why storage failed. `Clone` so one failed apply can answer every `flush()` waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("storage is shut down")]
    Closed,
    /// Redis refused, failed or did not answer in time (the message says which).
    #[error("redis: {0}")]
    Redis(String),
}

impl StorageError {
    /// A shared store that does not answer: its backend reports the outage once
    /// (`outage::Health`), so callers need not log each failed call.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Redis(_))
    }
}

/// A failed call the service works around: a warning, unless it is part of an outage the
/// backend already reported.
pub(crate) fn worked_around(e: &StorageError, what: &'static str) {
    if e.is_outage() {
        tracing::debug!(error = %e, what);
    } else {
        tracing::warn!(error = %e, what);
    }
}

/// Tunables of the storage layer. `Default` is the production setting; tests shorten intervals.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// How long a classification is served from the cache.
    pub cache_ttl: Duration,
    /// Entries kept in memory (the backend holds every unexpired entry).
    pub cache_capacity: usize,
    /// Statistics are applied at least this often. This is the durability window: a SIGKILL
    /// loses at most the requests of the last interval.
    pub flush_interval: Duration,
    /// ... or as soon as this many requests are pending, whichever comes first.
    pub flush_max_updates: usize,
    /// While applies fail (a Redis outage), at most this many URL rows wait in memory (about
    /// 200 bytes each with a typical URL); requests that need another are dropped and counted.
    /// Far above what one flush interval gathers, so it only bites during an outage.
    pub max_pending_urls: usize,
    /// How often expired cache rows are deleted (backends without native expiry).
    pub purge_interval: Duration,
    /// Rows deleted per purge transaction, so a large backlog never makes one huge commit.
    pub purge_batch: usize,
    /// Prefixes every cached result's key in the backend (the model identity's
    /// `cache_scope`): results of another model or preprocessing are never read. The memory
    /// tier needs none, since one process runs one model.
    pub cache_scope: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(3600),
            cache_capacity: 100_000,
            flush_interval: Duration::from_millis(100),
            flush_max_updates: 1024,
            max_pending_urls: 100_000,
            purge_interval: Duration::from_secs(300),
            purge_batch: 10_000,
            cache_scope: String::new(),
        }
    }
}

/// Which backend to run on.
pub enum BackendKind {
    /// The tables of this replica's `classifier.redb`.
    Redb(LocalDb),
    /// This process's memory; nothing survives a restart.
    Memory,
    /// A Redis server every replica shares (`--redis-url`), under a key prefix.
    Redis(Box<RedisTarget>),
}

/// Where the Redis backend connects, and how long a command may take.
pub struct RedisTarget {
    pub conn: RedisConn,
    pub prefix: String,
    pub timeout: Duration,
}

/// Starts the storage layer on the chosen backend.
pub async fn open(
    kind: BackendKind,
    clock: Arc<dyn Clock>,
    config: StorageConfig,
) -> Result<Storage, StorageError> {
    let backend = match kind {
        BackendKind::Redb(db) => Backend::Redb(RedbBackend::new(db, Arc::clone(&clock))),
        BackendKind::Memory => Backend::Memory(MemoryBackend::new()),
        BackendKind::Redis(target) => Backend::Redis(RedisBackend::new(
            target.conn,
            &target.prefix,
            Arc::clone(&clock),
            target.timeout,
        )),
    };
    Storage::start(backend, clock, config).await
}

/// A periodic tick that first fires one period from now (not at once: nothing is due at start),
/// and after a slow round waits a full period rather than firing a burst of catch-up ticks.
pub(crate) fn ticker(period: Duration) -> Interval {
    // interval() panics on zero.
    let period = period.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The running storage layer. [`Storage::shutdown`] stops its tasks after a final apply; if a
/// `Storage` is just dropped, the tasks are still told to stop and still make their final
/// writes, but nobody learns whether they succeeded.
///
/// [`ResultCache`] and [`Stats`] are cheap handles for the services; they keep the backend alive.
pub struct Storage<B: StorageBackend = Backend> {
    backend: Arc<B>,
    cache: ResultCache<B>,
    stats: Stats<B>,
    batcher: Batcher,
    shutdown: watch::Sender<bool>,
    batcher_task: Option<JoinHandle<Result<(), StorageError>>>,
    backend_tasks: Vec<JoinHandle<()>>,
}

impl<B: StorageBackend> std::fmt::Debug for Storage<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl<B: StorageBackend> Storage<B> {
    /// Starts the batching task and the backend's tasks on `backend`. Must run inside a Tokio
    /// runtime; the tasks live until [`Storage::shutdown`] or until the `Storage` is dropped.
    pub async fn start(
        backend: B,
        clock: Arc<dyn Clock>,
        config: StorageConfig,
    ) -> Result<Storage<B>, StorageError> {
        let backend = Arc::new(backend);
        // Continue the sequence the backend holds: readers compare it with their snapshot's.
        let (_, last_seq) = backend.totals().await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (batcher, batcher_task) =
            Batcher::start(Arc::clone(&backend), last_seq, &config, shutdown_rx.clone());
        let backend_tasks = backend.start_tasks(&config, shutdown_rx);
        Ok(Storage {
            cache: ResultCache::new(
                Arc::clone(&backend),
                Arc::clone(&clock),
                config.cache_ttl,
                config.cache_capacity,
                config.cache_scope.clone(),
            ),
            stats: Stats::new(Arc::clone(&backend), batcher.clone(), clock),
            backend,
            batcher,
            shutdown,
            batcher_task: Some(batcher_task),
            backend_tasks,
        })
    }

    pub fn cache(&self) -> &ResultCache<B> {
        &self.cache
    }

    pub fn stats(&self) -> &Stats<B> {
        &self.stats
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// `/report/history` for every replica, when the backend keeps per-minute figures (Redis);
    /// `None` otherwise, and this process's ring is the one to ask.
    pub fn shared_history(&self) -> Option<Arc<dyn crate::history::HistorySource>> {
        self.backend
            .keeps_minutes()
            .then(|| Arc::new(SharedHistory::new(self.stats.clone())) as _)
    }

    /// Applies every request recorded so far and waits for it.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.batcher.flush().await
    }

    /// Stops accepting requests, applies what is pending, stops every task, and returns the
    /// result of the final apply.
    pub async fn shutdown(mut self) -> Result<(), StorageError> {
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.backend_tasks) {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "storage task failed");
            }
        }
        match self.batcher_task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(DbError::Task(e.to_string()).into()),
            },
            None => Ok(()),
        }
    }
}

impl<B: StorageBackend> Drop for Storage<B> {
    fn drop(&mut self) {
        // Without shutdown(): still tell the tasks to stop, so they make their final writes.
        self.shutdown.send_replace(true);
    }
}
