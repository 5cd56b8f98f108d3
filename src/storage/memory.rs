//! A backend that keeps everything in this process's memory: for tests and benches, and the
//! reference the contract suite holds the other backends to. Nothing survives a restart.
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::agg::{Agg, StatsBatch};
use super::backend::{CacheStore, CachedResult, Lease, StatsStore, StorageBackend, TopSnapshot};
use super::lease::LocalLeases;
use super::StorageError;
use crate::sync::lock;

#[derive(Debug)]
struct Stats {
    per_url: HashMap<String, Agg>,
    /// (u64::MAX - count, URL): ascending order is report order, as in the redb index.
    by_count: BTreeSet<(u64, String)>,
    totals: Agg,
    seq: u64,
}

#[derive(Debug)]
pub struct MemoryBackend {
    cache: Mutex<HashMap<String, CachedResult>>,
    stats: Mutex<Stats>,
    leases: LocalLeases,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            cache: Mutex::default(),
            stats: Mutex::new(Stats {
                per_url: HashMap::new(),
                by_count: BTreeSet::new(),
                totals: Agg::EMPTY,
                seq: 0,
            }),
            leases: LocalLeases::default(),
        }
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

impl CacheStore for MemoryBackend {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, StorageError> {
        Ok(lock(&self.cache).get(key).cloned())
    }

    async fn put(&self, key: &str, entry: CachedResult) -> Result<(), StorageError> {
        lock(&self.cache).insert(key.to_owned(), entry);
        Ok(())
    }

    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.leases.try_lease(key, ttl)
    }

    async fn release(&self, lease: Lease) -> Result<(), StorageError> {
        self.leases.release(&lease)
    }
}

impl StatsStore for MemoryBackend {
    async fn apply(&self, seq: u64, batch: Arc<StatsBatch>) -> Result<(), StorageError> {
        let mut stats = lock(&self.stats);
        if seq <= stats.seq {
            return Ok(());
        }
        for (url, delta) in &batch.per_url {
            let row = stats.per_url.entry(url.clone()).or_insert(Agg::EMPTY);
            let old_count = row.count;
            row.merge(delta);
            let new_count = row.count;
            stats.by_count.remove(&(u64::MAX - old_count, url.clone()));
            stats.by_count.insert((u64::MAX - new_count, url.clone()));
        }
        if let Some(t) = &batch.totals {
            stats.totals.merge(t);
        }
        stats.seq = seq;
        Ok(())
    }

    async fn top(&self, n: usize, named: Vec<String>) -> Result<TopSnapshot, StorageError> {
        let stats = lock(&self.stats);
        let top = stats
            .by_count
            .iter()
            .take(n)
            .map(|(_, url)| (url.clone(), stats.per_url[url]))
            .collect();
        let named = named
            .into_iter()
            .filter_map(|url| stats.per_url.get(&url).map(|a| (url, *a)))
            .collect();
        Ok(TopSnapshot {
            top,
            named,
            seq: stats.seq,
        })
    }

    async fn totals(&self) -> Result<(Agg, u64), StorageError> {
        let stats = lock(&self.stats);
        Ok((stats.totals, stats.seq))
    }
}

impl StorageBackend for MemoryBackend {}
