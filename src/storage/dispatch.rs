//! [`Backend`]: the one value the service holds for "the storage backend", an enum over the
//! implementations this build has (no `dyn`, no boxed futures). Only this file and
//! [`super::open`] name them; each trait method is one `match`.
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::agg::{Agg, StatsBatch};
use super::backend::{
    CacheStore, CachedResult, Lease, MinuteSnapshot, StatsStore, StorageBackend, TopSnapshot,
};
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

/// `$e` on whichever backend `$self` holds, bound to `$b`.
macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Redb($b) => $e,
            Backend::Memory($b) => $e,
            Backend::Redis($b) => $e,
        }
    };
}

/// As `each!`, awaited.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        each!($self, $b => $call.await)
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
    fn keeps_minutes(&self) -> bool {
        each!(self, b => b.keeps_minutes())
    }
    async fn minutes(&self, first: u64, last: u64) -> Result<MinuteSnapshot, StorageError> {
        dispatch!(self, b => b.minutes(first, last))
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
