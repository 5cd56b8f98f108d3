//! Classification results cached per normalized URL for a TTL (1 hour by default), in two tiers:
//! a bounded in-memory `quick_cache` in front of a redb table that survives restarts.
//!
//! - An entry carries an absolute expiry (wall-clock unix millis from the injected [`Clock`]) and
//!   is checked on every read in both tiers: an expired entry is never served.
//! - A memory miss reads the disk tier and promotes what it finds. Fresh results go to memory at
//!   once and to disk with the writer's next batch (so within one flush interval).
//! - Concurrent requests for the same uncached URL share one lookup and one `compute`
//!   ("single flight"); a failure is handed to all of them and never cached.
//! - A background task deletes expired rows from disk, reading only the expired prefix of an
//!   index ordered by expiry.
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use crate::clock::{unix_millis, Clock};
use crate::domain::{Classification, ImageUrl};
use crate::store::{Store, StoreError, CACHE, CACHE_EXPIRY};
use crate::writer::{CacheRow, Writer};

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// This call ran `compute`.
    Fresh,
    /// Served from memory.
    MemoryHit,
    /// Served from the disk tier (and promoted to memory).
    DiskHit,
    /// Waited for a concurrent call for the same URL and got its result (or error).
    Joined,
}

impl CacheOutcome {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::MemoryHit => "memory_hit",
            Self::DiskHit => "disk_hit",
            Self::Joined => "joined",
        }
    }
}

/// `Arc<str>`: the memory tier clones an entry on every hit.
#[derive(Debug, Clone)]
struct Entry {
    label: Arc<str>,
    confidence: f32,
    expires_at_ms: u64,
}

impl Entry {
    fn classification(&self) -> Classification {
        Classification {
            label: self.label.to_string(),
            confidence: self.confidence,
        }
    }
}

/// The result of a flight, type-erased because the cache is not generic over the caller's error
/// type; it holds a `Result<Classification, E>`. `None` until the flight finishes.
type Published = Option<Arc<dyn Any + Send + Sync>>;

struct Flight {
    id: u64,
    result: watch::Receiver<Published>,
}

struct Inner {
    store: Store,
    writer: Writer,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    memory: quick_cache::sync::Cache<String, Entry>,
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
}

/// Handle to the result cache. Cheap to clone.
#[derive(Clone)]
pub struct ResultCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("ttl_ms", &self.inner.ttl_ms)
            .field("memory_entries", &self.inner.memory.len())
            .finish_non_exhaustive()
    }
}

enum Role {
    Lead(watch::Sender<Published>, u64),
    /// Another flight finished with a different error type; run `compute` outside any flight.
    Alone,
}

impl ResultCache {
    /// `capacity` bounds the in-memory tier (entries); the disk tier holds every unexpired entry.
    pub fn new(
        store: Store,
        writer: Writer,
        clock: Arc<dyn Clock>,
        ttl: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                writer,
                clock,
                ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                memory: quick_cache::sync::Cache::new(capacity.max(1)),
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
            }),
        }
    }

    /// Returns the cached classification of `key`, or runs `compute` and caches its success.
    ///
    /// Concurrent calls for the same uncached key run one disk lookup and at most one `compute`;
    /// the others get its result or a clone of its error (`Joined`). Errors are not cached: the
    /// next call after a failed flight computes again.
    ///
    /// The lookup and `compute` run in a spawned task, so dropping the calling future (client
    /// went away) neither cancels the work the other callers wait for nor strands them. If
    /// `compute` panics, the panic resumes in the caller that supplied it and waiting callers
    /// retry with their own `compute`.
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        key: &ImageUrl,
        compute: F,
    ) -> Result<(Classification, CacheOutcome), E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Classification, E>> + Send + 'static,
        E: Clone + Send + Sync + 'static,
    {
        let key = key.as_str();
        let role = loop {
            // Fast path without the flights lock.
            if let Some(hit) = self.inner.memory_get(key) {
                return Ok((hit, CacheOutcome::MemoryHit));
            }
            let mut waiting = {
                let mut flights = self.inner.lock_flights();
                match flights.get(key) {
                    // A flight whose sender is gone without a result died (its compute panicked);
                    // replace it rather than wait on it.
                    Some(f) if f.result.borrow().is_some() || !f.result.is_closed() => {
                        f.result.clone()
                    }
                    _ => {
                        // Checked again under the lock: a flight that finished since the check
                        // above filled memory before leaving the map, so this cannot miss it and
                        // compute a second time.
                        if let Some(hit) = self.inner.memory_get(key) {
                            return Ok((hit, CacheOutcome::MemoryHit));
                        }
                        let (tx, rx) = watch::channel(None);
                        let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
                        flights.insert(key.to_owned(), Flight { id, result: rx });
                        break Role::Lead(tx, id);
                    }
                }
            };
            let published = match waiting.wait_for(Option::is_some).await {
                Ok(value) => value.clone(),
                // The leader died before publishing: try again (lead a new flight, or join one).
                Err(_) => continue,
            };
            match published
                .as_deref()
                .and_then(|any| any.downcast_ref::<Result<Classification, E>>())
            {
                Some(result) => return result.clone().map(|c| (c, CacheOutcome::Joined)),
                None => break Role::Alone,
            }
        };

        match role {
            Role::Alone => {
                let (result, outcome) = self.inner.lookup_or_compute(key, compute).await;
                result.map(|c| (c, outcome))
            }
            Role::Lead(tx, id) => {
                let inner = Arc::clone(&self.inner);
                let key = key.to_owned();
                let task = tokio::spawn(async move {
                    // Removes the flight even if compute panics, so later calls start afresh.
                    let _flight = FlightGuard {
                        inner: Arc::clone(&inner),
                        key: key.clone(),
                        id,
                    };
                    let (result, outcome) = inner.lookup_or_compute(&key, compute).await;
                    // Ignore the error: no one waiting is fine.
                    let _ = tx.send(Some(Arc::new(result.clone())));
                    (result, outcome)
                });
                match task.await {
                    Ok((result, outcome)) => result.map(|c| (c, outcome)),
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // Tasks are only cancelled when the runtime shuts down, which also drops this
                    // future; there is no `E` to return here.
                    Err(e) => panic!("classification task cancelled: {e}"),
                }
            }
        }
    }

    /// Deletes every expired row from the disk tier, in transactions of at most `chunk` rows.
    /// Returns how many rows were deleted. Runs periodically in the background; public so
    /// operators and tests can trigger it.
    pub async fn purge_expired(&self, chunk: usize) -> Result<usize, StoreError> {
        let chunk = chunk.max(1);
        let mut total = 0;
        loop {
            let now = self.inner.now_ms();
            let removed = self
                .inner
                .store
                .run(move |db| purge_chunk(db, now, chunk))
                .await?;
            total += removed;
            if removed < chunk {
                return Ok(total);
            }
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        unix_millis(self.clock.now())
    }

    fn lock_flights(&self) -> MutexGuard<'_, HashMap<String, Flight>> {
        // Critical sections only insert/remove map entries; a poisoned map is still consistent.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn memory_get(&self, key: &str) -> Option<Classification> {
        let entry = self.memory.get(key)?;
        let now = self.now_ms();
        if now < entry.expires_at_ms {
            return Some(entry.classification());
        }
        // Only remove what we saw expire, not a fresh entry inserted meanwhile.
        self.memory.remove_if(key, |e| e.expires_at_ms <= now);
        metrics::counter!(crate::metrics::CACHE_EXPIRED).increment(1);
        None
    }

    async fn disk_get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_owned();
        self.store
            .run(move |db| {
                let txn = db.begin_read()?;
                let table = txn.open_table(CACHE)?;
                Ok(table.get(key.as_str())?.map(|g| {
                    let (label, confidence, expires_at_ms) = g.value();
                    Entry {
                        label: Arc::from(label),
                        confidence,
                        expires_at_ms,
                    }
                }))
            })
            .await
    }

    /// Disk tier, then `compute`. Runs once per flight.
    async fn lookup_or_compute<F, Fut, E>(
        &self,
        key: &str,
        compute: F,
    ) -> (Result<Classification, E>, CacheOutcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Classification, E>>,
    {
        match self.disk_get(key).await {
            Ok(Some(entry)) if self.now_ms() < entry.expires_at_ms => {
                let hit = entry.classification();
                // Keep the disk expiry: promotion must not extend the entry's life.
                self.memory.insert(key.to_owned(), entry);
                return (Ok(hit), CacheOutcome::DiskHit);
            }
            // Expired rows are left to the purge; the fresh result below overwrites it anyway.
            Ok(Some(_)) => metrics::counter!(crate::metrics::CACHE_EXPIRED).increment(1),
            Ok(None) => {}
            // The cache is an optimization: a failed read costs a recomputation, not the request.
            Err(e) => tracing::warn!(error = %e, url = key, "reading cached result failed"),
        }
        let result = compute().await;
        if let Ok(c) = &result {
            let expires_at_ms = self.now_ms().saturating_add(self.ttl_ms);
            self.memory.insert(
                key.to_owned(),
                Entry {
                    label: Arc::from(c.label.as_str()),
                    confidence: c.confidence,
                    expires_at_ms,
                },
            );
            self.writer.put_cache(
                key.to_owned(),
                CacheRow {
                    label: c.label.clone(),
                    confidence: c.confidence,
                    expires_at_ms,
                },
            );
        }
        (result, CacheOutcome::Fresh)
    }
}

struct FlightGuard {
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = self.inner.lock_flights();
        // Only our own flight: a dead one may already have been replaced by a newer flight.
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

/// Deletes up to `limit` rows that expired at or before `now`, from the cache table and the
/// expiry index, in one transaction.
fn purge_chunk(db: &Database, now: u64, limit: usize) -> Result<usize, StoreError> {
    let txn = db.begin_write()?;
    let removed;
    {
        let mut expiry = txn.open_table(CACHE_EXPIRY)?;
        let mut cache = txn.open_table(CACHE)?;
        // Keys sort by expiry first, so everything below (now + 1, "") has expired.
        let mut expired: Vec<(u64, String)> = Vec::new();
        for item in expiry
            .range::<(u64, &str)>(..(now.saturating_add(1), ""))?
            .take(limit)
        {
            let (key, _) = item?;
            let (expires_at_ms, url) = key.value();
            expired.push((expires_at_ms, url.to_owned()));
        }
        for (expires_at_ms, url) in &expired {
            expiry.remove((*expires_at_ms, url.as_str()))?;
            // Defensive: only delete the row this index key belongs to.
            let current = cache.get(url.as_str())?.map(|g| g.value().2);
            if current == Some(*expires_at_ms) {
                cache.remove(url.as_str())?;
            }
        }
        removed = expired.len();
    }
    txn.commit()?;
    Ok(removed)
}

/// Background task: purge expired rows every `every` until `shutdown` turns true (or its sender
/// is dropped). The first run is one interval after start, not at once: expired rows are never
/// served anyway, and startup stays quick.
pub(crate) async fn run_purge(
    cache: ResultCache,
    every: Duration,
    chunk: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match cache.purge_expired(chunk).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged expired cache rows"),
            // Retried at the next tick; expired rows are never served meanwhile.
            Err(e) => tracing::error!(error = %e, "purging expired cache rows failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{Storage, StorageConfig};
    use redb::ReadableTableMetadata;
    use std::sync::atomic::AtomicUsize;
    use std::time::SystemTime;

    const HOUR: Duration = Duration::from_secs(3600);

    fn url(s: &str) -> ImageUrl {
        ImageUrl::parse(s).unwrap()
    }

    fn clock() -> ManualClock {
        ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    fn config() -> StorageConfig {
        StorageConfig {
            // Only explicit flushes/shutdown commit, and the purge runs only when asked.
            flush_interval: HOUR,
            purge_interval: HOUR * 24,
            ..StorageConfig::default()
        }
    }

    async fn open(dir: &std::path::Path, clock: &ManualClock, config: StorageConfig) -> Storage {
        Storage::open(dir, Arc::new(clock.clone()), config)
            .await
            .unwrap()
    }

    fn cat() -> Classification {
        Classification {
            label: "tabby cat".into(),
            confidence: 0.875,
        }
    }

    /// A compute that counts its calls and returns `cat()` after `delay`.
    /// One `get_or_compute` with the counting closure: the call most tests repeat.
    async fn lookup(
        cache: &ResultCache,
        key: &ImageUrl,
        calls: &Arc<AtomicUsize>,
    ) -> (Classification, CacheOutcome) {
        cache
            .get_or_compute(key, counting(calls, Duration::ZERO))
            .await
            .unwrap()
    }

    fn counting(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
    ) -> impl FnOnce()
        -> std::pin::Pin<Box<dyn Future<Output = Result<Classification, String>> + Send>>
           + Send
           + 'static {
        let calls = Arc::clone(calls);
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                Ok(cat())
            })
        }
    }

    fn disk_rows(store: &Store) -> (Vec<String>, Vec<(u64, String)>) {
        let txn = store.database().begin_read().unwrap();
        let cache = txn.open_table(CACHE).unwrap();
        let expiry = txn.open_table(CACHE_EXPIRY).unwrap();
        let rows = cache
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_owned())
            .collect();
        let idx = expiry
            .iter()
            .unwrap()
            .map(|e| {
                let (k, _) = e.unwrap();
                let (t, u) = k.value();
                (t, u.to_owned())
            })
            .collect();
        (rows, idx)
    }

    #[tokio::test]
    async fn expired_entry_is_recomputed() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(tmp.path(), &clock, config()).await;
        let cache = storage.cache();
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/cat.jpg");

        let (c, o) = lookup(cache, &key, &calls).await;
        assert_eq!((c, o), (cat(), CacheOutcome::Fresh));
        let (_, o) = lookup(cache, &key, &calls).await;
        assert_eq!(o, CacheOutcome::MemoryHit);

        // One millisecond before expiry: still served.
        clock.advance(HOUR - Duration::from_millis(1));
        let (_, o) = lookup(cache, &key, &calls).await;
        assert_eq!(o, CacheOutcome::MemoryHit);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // At expiry: neither memory nor disk (flushed, same expiry) may serve it.
        storage.flush().await.unwrap();
        clock.advance(Duration::from_millis(1));
        let (_, o) = lookup(cache, &key, &calls).await;
        assert_eq!(o, CacheOutcome::Fresh);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn restart_serves_unexpired_entries_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let calls = Arc::new(AtomicUsize::new(0));
        let early = url("http://img/early.jpg");
        let late = url("http://img/late.jpg");
        {
            let storage = open(tmp.path(), &clock, config()).await;
            lookup(storage.cache(), &early, &calls).await;
            clock.advance(HOUR / 2);
            lookup(storage.cache(), &late, &calls).await;
            // Not flushed: shutdown commits the pending puts.
            storage.shutdown().await.unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let storage = open(tmp.path(), &clock, config()).await;
        let cache = storage.cache();
        let (c, o) = lookup(cache, &early, &calls).await;
        assert_eq!((c, o), (cat(), CacheOutcome::DiskHit));
        let (_, o) = lookup(cache, &early, &calls).await;
        assert_eq!(o, CacheOutcome::MemoryHit);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // `early` is now past its TTL on disk and in memory (promotion kept its expiry);
        // `late` still has half an hour.
        clock.advance(HOUR / 2);
        let (_, o) = lookup(cache, &early, &calls).await;
        assert_eq!(o, CacheOutcome::Fresh);
        let (_, o) = lookup(cache, &late, &calls).await;
        assert_eq!(o, CacheOutcome::DiskHit);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn expired_on_disk_is_recomputed_after_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/old.jpg");
        let storage = open(tmp.path(), &clock, config()).await;
        lookup(storage.cache(), &key, &calls).await;
        storage.shutdown().await.unwrap();

        clock.advance(HOUR * 2);
        let storage = open(tmp.path(), &clock, config()).await;
        let (_, o) = lookup(storage.cache(), &key, &calls).await;
        assert_eq!(o, CacheOutcome::Fresh);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_compute_once() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(tmp.path(), &clock, config()).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/popular.jpg");

        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let cache = storage.cache().clone();
            let key = key.clone();
            let compute = counting(&calls, Duration::from_millis(50));
            set.spawn(async move { cache.get_or_compute(&key, compute).await });
        }
        let results: Vec<_> = set.join_all().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(results.len(), 50);
        let mut fresh = 0;
        for r in results {
            let (c, o) = r.unwrap();
            assert_eq!(c, cat());
            match o {
                CacheOutcome::Fresh => fresh += 1,
                CacheOutcome::Joined | CacheOutcome::MemoryHit => {}
                CacheOutcome::DiskHit => panic!("nothing was on disk"),
            }
        }
        assert_eq!(fresh, 1);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_failure_reaches_everyone_and_is_not_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(tmp.path(), &clock, config()).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/broken.jpg");

        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let cache = storage.cache().clone();
            let key = key.clone();
            let calls = Arc::clone(&calls);
            set.spawn(async move {
                cache
                    .get_or_compute(&key, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err::<Classification, String>("download failed: 404".into())
                    })
                    .await
            });
        }
        for r in set.join_all().await {
            assert_eq!(r.unwrap_err(), "download failed: 404");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Nothing cached, in memory or on disk.
        storage.flush().await.unwrap();
        assert_eq!(disk_rows(storage.store()), (vec![], vec![]));
        let (_, o) = lookup(storage.cache(), &key, &calls).await;
        assert_eq!(o, CacheOutcome::Fresh);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn dropped_leader_does_not_strand_waiters() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(tmp.path(), &clock, config()).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/slow.jpg");

        let leader = {
            let cache = storage.cache().clone();
            let key = key.clone();
            let compute = counting(&calls, Duration::from_millis(100));
            tokio::spawn(async move { cache.get_or_compute(&key, compute).await })
        };
        // Let the leader start its flight, then attach waiters and drop the leader's request.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let cache = storage.cache().clone();
            let key = key.clone();
            let compute = counting(&calls, Duration::ZERO);
            waiters.spawn(async move { cache.get_or_compute(&key, compute).await });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());

        let results = tokio::time::timeout(Duration::from_secs(5), waiters.join_all())
            .await
            .expect("waiters hung after the leader was dropped");
        for r in results {
            assert_eq!(r.unwrap(), (cat(), CacheOutcome::Joined));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn panicking_compute_lets_waiters_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(tmp.path(), &clock, config()).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let key = url("http://img/panic.jpg");

        let leader = {
            let cache = storage.cache().clone();
            let key = key.clone();
            tokio::spawn(async move {
                cache
                    .get_or_compute(&key, || async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        panic!("model crashed");
                        #[allow(unreachable_code)]
                        Ok::<Classification, String>(cat())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let cache = storage.cache().clone();
            let key = key.clone();
            let compute = counting(&calls, Duration::ZERO);
            tokio::spawn(async move { cache.get_or_compute(&key, compute).await })
        };
        // The panic surfaces in the caller whose compute panicked...
        assert!(leader.await.unwrap_err().is_panic());
        // ...and the waiter recomputes with its own closure instead of hanging.
        let (c, o) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!((c, o), (cat(), CacheOutcome::Fresh));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn purge_removes_expired_rows_and_index_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let start = unix_millis(clock.now());
        let storage = open(tmp.path(), &clock, config()).await;
        let cache = storage.cache();
        let calls = Arc::new(AtomicUsize::new(0));
        for i in 0..5 {
            cache
                .get_or_compute(
                    &url(&format!("http://img/a{i}.jpg")),
                    counting(&calls, Duration::ZERO),
                )
                .await
                .unwrap();
        }
        clock.advance(HOUR / 2);
        cache
            .get_or_compute(&url("http://img/b.jpg"), counting(&calls, Duration::ZERO))
            .await
            .unwrap();
        storage.flush().await.unwrap();
        let (rows, idx) = disk_rows(storage.store());
        assert_eq!((rows.len(), idx.len()), (6, 6));

        // Nothing has expired yet.
        assert_eq!(cache.purge_expired(2).await.unwrap(), 0);

        // The a* entries expire; purged in chunks of 2 (3 transactions).
        clock.advance(HOUR / 2);
        assert_eq!(cache.purge_expired(2).await.unwrap(), 5);
        let (rows, idx) = disk_rows(storage.store());
        assert_eq!(rows, vec!["http://img/b.jpg".to_owned()]);
        let half_hour_ms = HOUR.as_millis() as u64 / 2;
        assert_eq!(
            idx,
            vec![(start + 3 * half_hour_ms, "http://img/b.jpg".to_owned())]
        );

        // Recomputing an expired URL replaces its index key instead of adding a second one.
        clock.advance(HOUR);
        cache
            .get_or_compute(&url("http://img/b.jpg"), counting(&calls, Duration::ZERO))
            .await
            .unwrap();
        storage.flush().await.unwrap();
        let (rows, idx) = disk_rows(storage.store());
        assert_eq!((rows.len(), idx.len()), (1, 1));
        assert_eq!(cache.purge_expired(2).await.unwrap(), 0);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn background_task_purges() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = clock();
        let storage = open(
            tmp.path(),
            &clock,
            StorageConfig {
                purge_interval: Duration::from_millis(20),
                ..config()
            },
        )
        .await;
        let calls = Arc::new(AtomicUsize::new(0));
        storage
            .cache()
            .get_or_compute(&url("http://img/x.jpg"), counting(&calls, Duration::ZERO))
            .await
            .unwrap();
        storage.flush().await.unwrap();
        clock.advance(HOUR);
        for _ in 0..500 {
            let txn = storage.store().database().begin_read().unwrap();
            if txn.open_table(CACHE).unwrap().is_empty().unwrap()
                && txn.open_table(CACHE_EXPIRY).unwrap().is_empty().unwrap()
            {
                storage.shutdown().await.unwrap();
                return;
            }
            drop(txn);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("background purge did not remove the expired row");
    }
}
