//! Classification results in two tiers: a bounded in-memory `quick_cache` in front of the
//! backend (which survives restarts, and with a shared backend is seen by every replica).
//!
//! - An entry carries an absolute expiry (wall-clock unix millis from the injected [`Clock`]),
//!   checked on every read in both tiers: an expired entry is never served.
//! - A memory miss reads the backend and promotes what it finds, keeping its expiry. Fresh
//!   results go to memory and to the backend.
//! - The cache is an optimization: a backend that fails costs a recomputation (logged), never
//!   the request. Single flight is the caller's (`classify::flight`); this tier only offers the
//!   backend's leases for it.
use std::sync::Arc;
use std::time::Duration;

use super::backend::{CacheStore, CachedResult, Lease};
use super::dispatch::Backend;
use super::StorageError;
use crate::clock::{unix_millis, Clock};
use crate::domain::Classification;

struct Inner<B> {
    backend: Arc<B>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    memory: quick_cache::sync::Cache<String, CachedResult>,
    /// See `StorageConfig::cache_scope`.
    scope: String,
}

/// Handle to the result cache. Cheap to clone.
pub struct ResultCache<B = Backend> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for ResultCache<B> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B> std::fmt::Debug for ResultCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("memory_entries", &self.inner.memory.len())
            .finish_non_exhaustive()
    }
}

fn classification(entry: &CachedResult) -> Classification {
    Classification {
        label: Arc::clone(&entry.label),
        confidence: entry.confidence,
        runners_up: Arc::clone(&entry.runners_up),
    }
}

impl<B: CacheStore> ResultCache<B> {
    /// `capacity` bounds the in-memory tier (entries); the backend holds every unexpired entry.
    /// `scope` prefixes the keys in the backend (see `StorageConfig::cache_scope`).
    pub fn new(
        backend: Arc<B>,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        capacity: usize,
        scope: String,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                clock,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                memory: quick_cache::sync::Cache::new(capacity.max(1)),
                scope,
            }),
        }
    }

    /// `key` as the backend stores it. Only a memory miss pays for the copy.
    fn stored(&self, key: &str) -> String {
        format!("{}{key}", self.inner.scope)
    }

    fn now_ms(&self) -> u64 {
        unix_millis(self.inner.clock.now())
    }

    /// The memory tier alone: no I/O, no waiting.
    pub fn memory_get(&self, key: &str) -> Option<Classification> {
        let entry = self.inner.memory.get(key)?;
        let now = self.now_ms();
        if now < entry.expires_at_ms {
            return Some(classification(&entry));
        }
        // Only remove what we saw expire, not a fresh entry inserted meanwhile.
        self.inner.memory.remove_if(key, |e| e.expires_at_ms <= now);
        metrics::counter!(crate::metrics::CACHE_EXPIRED).increment(1);
        None
    }

    /// The backend tier: an unexpired entry is promoted to memory (with its own expiry, so
    /// promotion never extends an entry's life) and returned.
    pub async fn backend_get(&self, key: &str) -> Option<Classification> {
        match self.inner.backend.get(&self.stored(key)).await {
            Ok(Some(entry)) if self.now_ms() < entry.expires_at_ms => {
                let hit = classification(&entry);
                self.inner.memory.insert(key.to_owned(), entry);
                Some(hit)
            }
            // Expired rows are left to the backend's own clean-up; a fresh put overwrites them.
            Ok(Some(_)) => {
                metrics::counter!(crate::metrics::CACHE_EXPIRED).increment(1);
                None
            }
            Ok(None) => None,
            Err(e) => {
                super::worked_around(&e, "reading a cached result failed; computing it");
                None
            }
        }
    }

    /// Caches a fresh result in both tiers for the TTL, from now.
    pub async fn insert(&self, key: &str, result: &Classification) {
        let entry = CachedResult {
            label: Arc::clone(&result.label),
            confidence: result.confidence,
            runners_up: Arc::clone(&result.runners_up),
            expires_at_ms: self.now_ms().saturating_add(self.inner.ttl_ms),
        };
        self.inner.memory.insert(key.to_owned(), entry.clone());
        if let Err(e) = self.inner.backend.put(&self.stored(key), entry).await {
            super::worked_around(&e, "storing a cached result failed; it is in memory only");
        }
    }

    /// The backend's lease on computing `key` (see [`CacheStore::try_lease`]).
    pub async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.inner.backend.try_lease(&self.stored(key), ttl).await
    }

    /// Gives a lease back; a failure only means it expires by itself.
    pub async fn release(&self, lease: Lease) {
        if let Err(e) = self.inner.backend.release(lease).await {
            super::worked_around(&e, "releasing a lease failed; it expires by itself");
        }
    }
}
