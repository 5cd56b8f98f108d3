//! The seam: what the service needs from a store of results and statistics, with the contract
//! every implementation keeps (checked by the suite in `storage/tests.rs`, run on each of them).
//!
//! Two traits, split by concern rather than by backend, because the cache and the statistics
//! have different consistency needs. The implementations live beside this file; the one
//! dispatcher the service holds is [`super::Backend`] (`dispatch.rs`).
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::agg::{Agg, StatsBatch};
use super::{StorageConfig, StorageError};
use crate::domain::Prediction;

/// A cached classification with its absolute expiry. Expiry is judged by the caller's clock
/// against `expires_at_ms` (never by a store's own TTL, which is at most garbage collection), so
/// every reader expires an entry at the same moment and an injected clock drives tests.
/// `Arc`s: the memory tier hands out a clone on every hit.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedResult {
    pub label: Arc<str>,
    pub confidence: f32,
    /// The next classes, highest first (see `Classification::runners_up`).
    pub runners_up: Arc<[Prediction]>,
    pub expires_at_ms: u64,
}

/// The right to compute one key, held by one caller at a time until released or expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: String,
    /// Proves ownership on release: a lease that expired and was granted again is not ours.
    pub token: u64,
}

/// The top of the statistics and some named rows, all from one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopSnapshot {
    /// The first `n` URLs by count descending, then URL ascending.
    pub top: Vec<(String, Agg)>,
    /// The stored rows of the URLs asked for by name (absent: never recorded).
    pub named: HashMap<String, Agg>,
    /// The last batch sequence number applied in this snapshot (0: none yet).
    pub seq: u64,
}

/// Stored per-minute figures, from one consistent snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinuteSnapshot {
    /// Minutes with any request, oldest first: (Unix minute, its requests).
    pub minutes: Vec<(u64, Agg)>,
    /// The last batch sequence number applied in this snapshot (0: none yet).
    pub seq: u64,
}

/// Classification results by key.
pub trait CacheStore: Send + Sync + 'static {
    /// The entry stored under `key`, expired or not (the caller judges expiry). Must reflect
    /// every `put` that has returned.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<CachedResult>, StorageError>> + Send;

    /// Stores `entry`, replacing any older one. Visible to `get` when the future resolves; it may
    /// become durable later (the redb backend writes it with the next statistics batch).
    fn put(
        &self,
        key: &str,
        entry: CachedResult,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Makes the caller the one computer of `key` for at most `ttl`: `Some` if no unexpired lease
    /// on `key` is held, else `None`. Exclusive across every caller sharing the store.
    fn try_lease(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<Option<Lease>, StorageError>> + Send;

    /// Gives the lease back, if it is still ours: a lease that expired and was granted to someone
    /// else is left alone.
    fn release(&self, lease: Lease) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// Per-URL request statistics and their totals.
pub trait StatsStore: Send + Sync + 'static {
    /// Adds `batch` to the stored rows and records `seq` as the last batch applied, atomically:
    /// all or nothing. Idempotent per sequence number: a `seq` at or below the stored one is
    /// already in, and applying it again changes nothing (a retry after an apply whose success
    /// was not seen never counts twice). Sequence numbers are applied in increasing order.
    fn apply(
        &self,
        seq: u64,
        batch: Arc<StatsBatch>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The first `n` URLs in report order plus the rows of `named`, with the sequence number of
    /// the snapshot they come from. Costs O(n + named), whatever the number of URLs stored.
    fn top(
        &self,
        n: usize,
        named: Vec<String>,
    ) -> impl Future<Output = Result<TopSnapshot, StorageError>> + Send;

    /// Totals over every URL, with the snapshot's sequence number.
    fn totals(&self) -> impl Future<Output = Result<(Agg, u64), StorageError>> + Send;

    /// Whether `apply` keeps the batches' per-minute figures for [`StatsStore::minutes`]. Only a
    /// store shared by replicas needs them (it serves `/report/history` for the fleet); for one
    /// process, its memory ring already has them.
    fn keeps_minutes(&self) -> bool {
        false
    }

    /// The per-minute figures of Unix minutes `first..=last` that have any requests, with the
    /// snapshot's sequence number. Empty from a store that does not keep them.
    fn minutes(
        &self,
        _first: u64,
        _last: u64,
    ) -> impl Future<Output = Result<MinuteSnapshot, StorageError>> + Send {
        async { Ok(MinuteSnapshot::default()) }
    }
}

/// A backend with the background work it needs (none by default).
pub trait StorageBackend: CacheStore + StatsStore {
    /// Starts the backend's own tasks; they stop when `shutdown` turns true, after finishing
    /// what they hold (the redb backend writes its queued cache entries).
    fn start_tasks(
        self: &Arc<Self>,
        _config: &StorageConfig,
        _shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        Vec::new()
    }
}
