//! [`Backend`]: the one value the service holds for "the storage backend", an enum over the
//! implementations this build has (no `dyn`, no boxed futures). Only this file and
//! [`super::open`] name them; each trait method is one `match`.
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::agg::{Agg, StatsBatch};
use super::backend::{CacheStore, CachedResult, Lease, StatsStore, StorageBackend, TopSnapshot};
use super::memory::MemoryBackend;
use super::redb::RedbBackend;
use super::redis::RedisBackend;
use super::{StorageConfig, StorageError};

/// The backends this build has.
#[derive(Debug)]
pub enum Backend {
    Redb(RedbBackend),
    Memory(MemoryBackend),
    Redis(RedisBackend),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Backend::Redb($b) => $call.await,
            Backend::Memory($b) => $call.await,
            Backend::Redis($b) => $call.await,
        }
    };
}

impl CacheStore for Backend {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, StorageError> {
        dispatch!(self, b => b.get(key))
    }
    async fn put(&self, key: &str, entry: CachedResult) -> Result<(), StorageError> {
        dispatch!(self, b => b.put(key, entry))
    }
    async fn try_lease(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StorageError> {
        dispatch!(self, b => b.try_lease(key, ttl))
    }
    async fn release(&self, lease: Lease) -> Result<(), StorageError> {
        dispatch!(self, b => b.release(lease))
    }
}

impl StatsStore for Backend {
    async fn apply(&self, seq: u64, batch: Arc<StatsBatch>) -> Result<(), StorageError> {
        dispatch!(self, b => b.apply(seq, batch))
    }
    async fn top(&self, n: usize, named: Vec<String>) -> Result<TopSnapshot, StorageError> {
        dispatch!(self, b => b.top(n, named))
    }
    async fn totals(&self) -> Result<(Agg, u64), StorageError> {
        dispatch!(self, b => b.totals())
    }
}

impl StorageBackend for Backend {
    fn start_tasks(
        self: &Arc<Self>,
        config: &StorageConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        match &**self {
            Backend::Redb(b) => b.spawn_tasks(config, shutdown),
            Backend::Memory(_) | Backend::Redis(_) => Vec::new(),
        }
    }
}
