//! The embedded backend: results and statistics in the tables of `classifier.redb`
//! (see [`crate::localdb::schema`]).
//!
//! - Statistics: one write transaction per batch, which also stores the batch's sequence number,
//!   so a reader's snapshot says exactly which batches it holds.
//! - Results are written behind: `put` queues the entry in memory (visible to `get` at once) and
//!   the next statistics batch writes it in the same transaction, so one fsync covers both. A
//!   task writes what no batch took within a flush interval, and everything at shutdown.
//! - Expired rows are deleted by a periodic purge that reads only the expired prefix of an index
//!   ordered by expiry ([`purge`]).
//! - Leases live in this process: the file is held by one process at a time.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::agg::{Agg, StatsBatch};
use super::backend::{CacheStore, CachedResult, Lease, StatsStore, StorageBackend, TopSnapshot};
use super::lease::LocalLeases;
use super::{ticker, StorageConfig, StorageError};
use crate::clock::{unix_millis, Clock};
use crate::domain::Prediction;
use crate::localdb::schema::{
    CACHE, CACHE_EXPIRY, STATS_TOTALS, STORAGE_META, URL_STATS, URL_STATS_BY_COUNT, WRITER_SEQ,
};
use crate::localdb::{DbError, LocalDb};
use crate::sync::lock;

mod purge;

type Queued = Arc<Mutex<HashMap<String, CachedResult>>>;

#[derive(Debug, Clone)]
pub struct RedbBackend {
    db: LocalDb,
    clock: Arc<dyn Clock>,
    /// Results put but not yet known to be committed. An entry leaves only after a commit that
    /// wrote exactly it, so `get` never misses a put that returned.
    queued: Queued,
    leases: Arc<LocalLeases>,
}

impl RedbBackend {
    /// `clock` judges which rows the purge may delete.
    pub fn new(db: LocalDb, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            clock,
            queued: Arc::default(),
            leases: Arc::default(),
        }
    }

    /// The write-behind task (queued results no batch took) and the purge of expired rows.
    pub(crate) fn spawn_tasks(
        &self,
        config: &StorageConfig,
        mut shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let this = self.clone();
        let (flush_every, purge_every) = (config.flush_interval, config.purge_interval);
        let purge_batch = config.purge_batch;
        vec![tokio::spawn(async move {
            let mut flush = ticker(flush_every);
            let mut purge = ticker(purge_every);
            loop {
                tokio::select! {
                    _ = flush.tick() => this.write_queued().await,
                    _ = purge.tick() => this.purge_logged(purge_batch).await,
                    _ = shutdown.changed() => {
                        this.write_queued().await;
                        return;
                    }
                }
            }
        })]
    }

    /// Deletes every expired row, in transactions of at most `chunk` rows; returns how many.
    pub async fn purge_expired(&self, chunk: usize) -> Result<usize, StorageError> {
        let now = unix_millis(self.clock.now());
        Ok(purge::purge_expired(&self.db, now, chunk).await?)
    }

    async fn purge_logged(&self, chunk: usize) {
        match self.purge_expired(chunk).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged expired cache rows"),
            // Retried at the next tick; expired rows are never served meanwhile.
            Err(e) => tracing::error!(error = %e, "purging expired cache rows failed"),
        }
    }

    async fn write_queued(&self) {
        if lock(&self.queued).is_empty() {
            return;
        }
        let queued = Arc::clone(&self.queued);
        let result = self
            .db
            .run(move |db| {
                let txn = db.begin_write()?;
                let written = write_results(&txn, &queued)?;
                txn.commit()?;
                forget_written(&queued, written);
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = result {
            // Still queued: retried at the next tick and served from the queue meanwhile.
            tracing::error!(error = %e, "writing cached results failed; will retry");
        }
    }
}

/// Writes a copy of the queued results in `txn`; returns what it wrote. Called after
/// `begin_write`, which serializes writers, so a later transaction never writes an older copy.
fn write_results(
    txn: &WriteTransaction,
    queued: &Queued,
) -> Result<Vec<(String, CachedResult)>, DbError> {
    let rows: Vec<(String, CachedResult)> = lock(queued)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut cache = txn.open_table(CACHE)?;
    let mut expiry = txn.open_table(CACHE_EXPIRY)?;
    for (url, row) in &rows {
        let old_expiry = cache
            .insert(
                url.as_str(),
                (
                    &*row.label,
                    row.confidence,
                    row.expires_at_ms,
                    row.runners_up
                        .iter()
                        .map(|p| (&*p.label, p.confidence))
                        .collect::<Vec<_>>(),
                ),
            )?
            .map(|g| g.value().2);
        // Keep the index exact: one expiry key per cache row.
        if let Some(old) = old_expiry {
            if old != row.expires_at_ms {
                expiry.remove((old, url.as_str()))?;
            }
        }
        expiry.insert((row.expires_at_ms, url.as_str()), ())?;
    }
    Ok(rows)
}

/// Drops committed results from the queue, unless a newer put replaced them meanwhile.
fn forget_written(queued: &Queued, written: Vec<(String, CachedResult)>) {
    let mut queued = lock(queued);
    for (url, row) in written {
        if queued.get(&url) == Some(&row) {
            queued.remove(&url);
        }
    }
}

fn apply_stats(txn: &WriteTransaction, seq: u64, batch: &StatsBatch) -> Result<(), DbError> {
    let mut stats = txn.open_table(URL_STATS)?;
    let mut by_count = txn.open_table(URL_STATS_BY_COUNT)?;
    for (url, delta) in &batch.per_url {
        let old = stats.get(url.as_str())?.map(|g| from_row(g.value()));
        let mut new = old.unwrap_or(Agg::EMPTY);
        new.merge(delta);
        stats.insert(url.as_str(), to_row(new))?;
        // The index key embeds the count, so a count change moves the key.
        if let Some(old) = old {
            by_count.remove((u64::MAX - old.count, url.as_str()))?;
        }
        by_count.insert((u64::MAX - new.count, url.as_str()), ())?;
    }
    if let Some(delta) = &batch.totals {
        let mut totals = txn.open_table(STATS_TOTALS)?;
        let mut new = totals.get(())?.map_or(Agg::EMPTY, |g| from_row(g.value()));
        new.merge(delta);
        totals.insert((), to_row(new))?;
    }
    txn.open_table(STORAGE_META)?.insert(WRITER_SEQ, seq)?;
    Ok(())
}

fn applied_seq(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, DbError> {
    Ok(meta.get(WRITER_SEQ)?.map_or(0, |g| g.value()))
}

fn from_row((count, min, max, sum): (u64, f64, f64, f64)) -> Agg {
    Agg {
        count,
        min,
        max,
        sum,
    }
}

fn to_row(a: Agg) -> (u64, f64, f64, f64) {
    (a.count, a.min, a.max, a.sum)
}

impl CacheStore for RedbBackend {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, StorageError> {
        if let Some(queued) = lock(&self.queued).get(key) {
            return Ok(Some(queued.clone()));
        }
        let key = key.to_owned();
        let found = self
            .db
            .run(move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(CACHE)?;
                Ok::<_, DbError>(table.get(key.as_str())?.map(|g| {
                    let (label, confidence, expires_at_ms, runners_up) = g.value();
                    CachedResult {
                        label: Arc::from(label),
                        confidence,
                        runners_up: runners_up
                            .into_iter()
                            .map(|(label, confidence)| Prediction {
                                label: Arc::from(label),
                                confidence,
                            })
                            .collect(),
                        expires_at_ms,
                    }
                }))
            })
            .await?;
        Ok(found)
    }

    async fn put(&self, key: &str, entry: CachedResult) -> Result<(), StorageError> {
        lock(&self.queued).insert(key.to_owned(), entry);
        Ok(())
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.leases.try_lease(key, ttl)
    }

    async fn release(&self, lease: Lease) -> Result<(), StorageError> {
        self.leases.release(&lease)
    }
}

impl StatsStore for RedbBackend {
    async fn apply(&self, seq: u64, batch: Arc<StatsBatch>) -> Result<(), StorageError> {
        let queued = Arc::clone(&self.queued);
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                let already = applied_seq(&txn.open_table(STORAGE_META)?)? >= seq;
                if !already {
                    apply_stats(&txn, seq, &batch)?;
                }
                // Queued results ride along: one fsync for both.
                let written = write_results(&txn, &queued)?;
                txn.commit()?;
                forget_written(&queued, written);
                Ok::<_, DbError>(())
            })
            .await?;
        Ok(())
    }

    async fn top(&self, n: usize, named: Vec<String>) -> Result<TopSnapshot, StorageError> {
        let snapshot = self
            .db
            .run(move |db| {
                let txn = db.begin_read()?;
                let seq = applied_seq(&txn.open_table(STORAGE_META)?)?;
                let stats = txn.open_table(URL_STATS)?;
                let by_count = txn.open_table(URL_STATS_BY_COUNT)?;
                let mut top = Vec::with_capacity(n);
                for entry in by_count.iter()?.take(n) {
                    let (key, _) = entry?;
                    let (_, url) = key.value();
                    match stats.get(url)? {
                        Some(row) => top.push((url.to_owned(), from_row(row.value()))),
                        // Index and rows are written in one transaction; a gap means damage.
                        None => tracing::error!(url, "stats index entry without a stats row"),
                    }
                }
                let mut rows = HashMap::new();
                for url in named {
                    if let Some(row) = stats.get(url.as_str())? {
                        rows.insert(url, from_row(row.value()));
                    }
                }
                Ok::<_, DbError>(TopSnapshot {
                    top,
                    named: rows,
                    seq,
                })
            })
            .await?;
        Ok(snapshot)
    }

    async fn totals(&self) -> Result<(Agg, u64), StorageError> {
        let totals = self
            .db
            .run(|db| {
                let txn = db.begin_read()?;
                let seq = applied_seq(&txn.open_table(STORAGE_META)?)?;
                let agg = txn
                    .open_table(STATS_TOTALS)?
                    .get(())?
                    .map_or(Agg::EMPTY, |g| from_row(g.value()));
                Ok::<_, DbError>((agg, seq))
            })
            .await?;
        Ok(totals)
    }
}

impl StorageBackend for RedbBackend {
    fn start_tasks(
        self: &Arc<Self>,
        config: &StorageConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        self.spawn_tasks(config, shutdown)
    }
}
