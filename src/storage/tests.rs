//! The storage contract, run against every backend, and the redb backend's own guarantees
//! (durability across restarts, write-behind, purge, the on-disk format).
//!
//! Faults are injected by wrapping a backend ([`Failing`]), never by hooks in production types.
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ::redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::clock::{ManualClock, SystemClock};
use crate::domain::{Classification, ImageUrl, Prediction, Subject};
use crate::localdb::schema::{CACHE, CACHE_EXPIRY, URL_STATS, URL_STATS_BY_COUNT};
use crate::redis_conn::RedisConn;

const HOUR: Duration = Duration::from_secs(3600);
/// A flush interval long enough that nothing is applied unless a test asks for it.
const NEVER: Duration = Duration::from_secs(24 * 3600);

type Make<B> = fn(&Path, Arc<dyn Clock>) -> B;

fn on_memory(_: &Path, _: Arc<dyn Clock>) -> MemoryBackend {
    MemoryBackend::new()
}

fn on_redb(dir: &Path, clock: Arc<dyn Clock>) -> RedbBackend {
    RedbBackend::new(LocalDb::open(dir).unwrap(), clock)
}

fn on_redis(_: &Path, clock: Arc<dyn Clock>) -> RedisBackend {
    on_redis_prefix(&redis_server::unique_prefix(), clock)
}

fn on_redis_prefix(prefix: &str, clock: Arc<dyn Clock>) -> RedisBackend {
    let conn = redis_server::shared().conn();
    RedisBackend::new(conn, prefix, clock, Duration::from_secs(5))
}

/// Two replicas' backends on `prefix`.
fn two_redis_replicas(prefix: &str) -> (RedisBackend, RedisBackend) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    (
        on_redis_prefix(prefix, Arc::clone(&clock)),
        on_redis_prefix(prefix, clock),
    )
}

fn url(s: &str) -> Subject {
    Subject::Url(ImageUrl::parse(s).unwrap())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cat() -> Classification {
    Classification {
        label: "tabby cat".into(),
        confidence: 0.875,
        runners_up: Arc::from([Prediction {
            label: "tiger cat".into(),
            confidence: 0.125,
        }]),
    }
}

fn agg(times: &[f64]) -> Agg {
    let mut a = Agg::EMPTY;
    for t in times {
        a.merge(&Agg::one(*t));
    }
    a
}

fn config() -> StorageConfig {
    StorageConfig {
        flush_interval: NEVER,
        purge_interval: NEVER,
        ..StorageConfig::default()
    }
}

struct Harness<B: StorageBackend> {
    dir: tempfile::TempDir,
    clock: ManualClock,
    storage: Storage<B>,
}

async fn start<B: StorageBackend>(make: impl FnOnce(&Path, Arc<dyn Clock>) -> B) -> Harness<B> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let backend = make(dir.path(), Arc::new(clock.clone()));
    let storage = Storage::start(backend, Arc::new(clock.clone()), config())
        .await
        .unwrap();
    Harness {
        dir,
        clock,
        storage,
    }
}

/// Wraps a backend: `fail_next(n, mode)` makes the next `n` applies fail, before or after the
/// inner backend applied them (an apply whose success was not seen).
struct Failing<B> {
    inner: Arc<B>,
    failures: AtomicUsize,
    after: std::sync::atomic::AtomicBool,
    applies: AtomicUsize,
}

impl<B> Failing<B> {
    fn new(inner: B) -> Self {
        Self {
            inner: Arc::new(inner),
            failures: AtomicUsize::new(0),
            after: false.into(),
            applies: AtomicUsize::new(0),
        }
    }

    fn fail_next(&self, n: usize, after_applying: bool) {
        self.after.store(after_applying, Ordering::SeqCst);
        self.failures.store(n, Ordering::SeqCst);
    }

    fn take_failure(&self) -> bool {
        self.failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

fn injected() -> StorageError {
    DbError::Task("injected failure".into()).into()
}

impl<B: CacheStore> CacheStore for Failing<B> {
    async fn get(&self, key: &str) -> Result<Option<CachedResult>, StorageError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, entry: CachedResult) -> Result<(), StorageError> {
        self.inner.put(key, entry).await
    }
    async fn try_lease(&self, key: &str, ttl: Duration) -> Result<Option<Lease>, StorageError> {
        self.inner.try_lease(key, ttl).await
    }
    async fn release(&self, lease: Lease) -> Result<(), StorageError> {
        self.inner.release(lease).await
    }
}

impl<B: StatsStore> StatsStore for Failing<B> {
    async fn apply(&self, seq: u64, batch: Arc<StatsBatch>) -> Result<(), StorageError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        if !self.take_failure() {
            return self.inner.apply(seq, batch).await;
        }
        if self.after.load(Ordering::SeqCst) {
            self.inner.apply(seq, batch).await?;
        }
        Err(injected())
    }
    async fn top(&self, n: usize, named: Vec<String>) -> Result<TopSnapshot, StorageError> {
        self.inner.top(n, named).await
    }
    async fn totals(&self) -> Result<(Agg, u64), StorageError> {
        self.inner.totals().await
    }
    fn keeps_minutes(&self) -> bool {
        self.inner.keeps_minutes()
    }
    async fn minutes(&self, first: u64, last: u64) -> Result<MinuteSnapshot, StorageError> {
        self.inner.minutes(first, last).await
    }
}

impl<B: StorageBackend> StorageBackend for Failing<B> {
    fn start_tasks(
        self: &Arc<Self>,
        config: &StorageConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        self.inner.start_tasks(config, shutdown)
    }
}

// ---- the contract, once per backend -------------------------------------------------------

async fn expired_entry_is_never_served<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let cache = h.storage.cache();
    cache.insert("k", &cat()).await;
    h.clock.advance(HOUR - ms(1));
    assert_eq!(cache.memory_get("k"), Some(cat()));
    assert_eq!(cache.backend_get("k").await, Some(cat()));
    h.clock.advance(ms(1));
    assert_eq!(cache.memory_get("k"), None);
    assert_eq!(cache.backend_get("k").await, None);
    h.storage.shutdown().await.unwrap();
}

async fn promotion_keeps_expiry<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let expires_at_ms = crate::clock::unix_millis(h.clock.now()) + 1000;
    let entry = CachedResult {
        label: "old".into(),
        confidence: 0.5,
        runners_up: Arc::from([]),
        expires_at_ms,
    };
    h.storage.backend().put("k", entry.clone()).await.unwrap();
    assert_eq!(h.storage.backend().get("k").await.unwrap(), Some(entry));
    let cache = h.storage.cache();
    assert_eq!(cache.memory_get("k"), None);
    assert_eq!(&*cache.backend_get("k").await.unwrap().label, "old");
    // Promoted with the stored expiry, not a fresh TTL.
    assert!(cache.memory_get("k").is_some());
    h.clock.advance(ms(1000));
    assert_eq!(cache.memory_get("k"), None);
    h.storage.shutdown().await.unwrap();
}

/// The top 10 as (URL, count) pairs.
async fn top_counts<B: StorageBackend>(stats: &Stats<B>) -> Vec<(String, u64)> {
    stats
        .top(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.image_url.unwrap(), r.count))
        .collect()
}

async fn ties_order_by_url_and_top_is_limited<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let stats = h.storage.stats();
    // u00 gets 12 requests, u01 11, ... u11 1; two more URLs tie with u00.
    for i in 0..12u64 {
        for _ in 0..(12 - i) {
            stats.record(&url(&format!("http://h/u{i:02}")), ms(100));
        }
    }
    for _ in 0..12 {
        stats.record(&url("http://a/tie"), ms(100));
        stats.record(&url("http://z/tie"), ms(100));
    }
    h.storage.flush().await.unwrap();
    let got = top_counts(stats).await;
    let want: Vec<(String, u64)> = [
        ("http://a/tie", 12),
        ("http://h/u00", 12),
        ("http://z/tie", 12),
        ("http://h/u01", 11),
        ("http://h/u02", 10),
        ("http://h/u03", 9),
        ("http://h/u04", 8),
        ("http://h/u05", 7),
        ("http://h/u06", 6),
        ("http://h/u07", 5),
    ]
    .into_iter()
    .map(|(u, c)| (u.to_owned(), c))
    .collect();
    assert_eq!(got, want);
    assert_eq!(stats.top(3).await.unwrap().len(), 3);
    assert_eq!(stats.top(100).await.unwrap().len(), 14);
    assert!(stats.top(0).await.unwrap().is_empty());
    h.storage.shutdown().await.unwrap();
}

async fn min_max_avg_and_totals_are_exact<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let stats = h.storage.stats();
    let (a, b) = (url("http://img/a.jpg"), url("http://img/b.jpg"));
    for t in [250, 500, 1500] {
        stats.record(&a, ms(t));
    }
    stats.record(&b, ms(125));
    // Half applied, half pending: both sides must be combined.
    h.storage.flush().await.unwrap();
    stats.record(&b, ms(2000));
    let top = stats.top(10).await.unwrap();
    assert_eq!(top[0], agg(&[0.25, 0.5, 1.5]).url_stats(&a.key()));
    assert_eq!(top[1], agg(&[0.125, 2.0]).url_stats(&b.key()));
    assert_eq!(
        (top[0].avg_processing_time, top[1].avg_processing_time),
        (0.75, 1.0625)
    );
    let totals = stats.totals().await.unwrap();
    assert_eq!(
        (
            totals.count,
            totals.min_processing_time,
            totals.max_processing_time
        ),
        (5, 0.125, 2.0)
    );
    assert_eq!(totals.avg_processing_time, 0.875);
    let empty = start(make).await;
    assert_eq!(
        empty.storage.stats().totals().await.unwrap(),
        Agg::EMPTY.totals()
    );
    assert!(empty.storage.stats().top(10).await.unwrap().is_empty());
    empty.storage.shutdown().await.unwrap();
    h.storage.shutdown().await.unwrap();
}

async fn reads_see_unapplied_requests<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let stats = h.storage.stats();
    for _ in 0..3 {
        stats.record(&url("http://x/pending"), ms(10));
    }
    assert_eq!(stats.top(10).await.unwrap()[0].count, 3);
    assert_eq!(stats.totals().await.unwrap().count, 3);
    // Reading applied nothing.
    assert_eq!(h.storage.backend().totals().await.unwrap(), (Agg::EMPTY, 0));

    // Stored counts plus pending ones can reorder the stored top, and a URL far outside the
    // stored top can jump into it while pending.
    for i in 0..20 {
        for _ in 0..5 {
            stats.record(&url(&format!("http://h/{i:02}")), ms(1));
        }
    }
    h.storage.flush().await.unwrap();
    for _ in 0..10 {
        stats.record(&url("http://x/pending"), ms(10));
        stats.record(&url("http://x/new"), ms(10));
    }
    let top = stats.top(2).await.unwrap();
    assert_eq!(
        (top[0].image_url.as_deref(), top[0].count),
        (Some("http://x/pending"), 13)
    );
    assert_eq!(
        (top[1].image_url.as_deref(), top[1].count),
        (Some("http://x/new"), 10)
    );
    h.storage.shutdown().await.unwrap();
}

async fn lease_is_exclusive_and_released_only_by_its_owner<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let backend = h.storage.backend();
    let first = backend.try_lease("k", HOUR).await.unwrap().expect("free");
    assert_eq!(backend.try_lease("k", HOUR).await.unwrap(), None);
    // Another key is independent.
    assert!(backend.try_lease("other", HOUR).await.unwrap().is_some());
    // A stranger's token releases nothing.
    let forged = Lease {
        key: "k".into(),
        token: first.token.wrapping_add(1000),
    };
    backend.release(forged).await.unwrap();
    assert_eq!(backend.try_lease("k", HOUR).await.unwrap(), None);
    backend.release(first.clone()).await.unwrap();
    let second = backend
        .try_lease("k", HOUR)
        .await
        .unwrap()
        .expect("released");
    assert_ne!(second.token, first.token);
    // The first owner releasing again (late) does not free the second owner's lease.
    backend.release(first).await.unwrap();
    assert_eq!(backend.try_lease("k", HOUR).await.unwrap(), None);
    h.storage.shutdown().await.unwrap();
}

async fn lease_expires<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let backend = h.storage.backend();
    tokio::time::pause();
    let _held = backend
        .try_lease("k", ms(500))
        .await
        .unwrap()
        .expect("free");
    tokio::time::advance(ms(499)).await;
    assert_eq!(backend.try_lease("k", ms(500)).await.unwrap(), None);
    tokio::time::advance(ms(1)).await;
    assert!(backend.try_lease("k", ms(500)).await.unwrap().is_some());
    tokio::time::resume();
    h.storage.shutdown().await.unwrap();
}

async fn reapplied_sequence_counts_once<B: StorageBackend>(make: Make<B>) {
    let h = start(make).await;
    let backend = h.storage.backend();
    let mut batch = StatsBatch::default();
    batch.record("http://x/1", 0.5, 0);
    let batch = Arc::new(batch);
    backend.apply(1, Arc::clone(&batch)).await.unwrap();
    backend.apply(1, Arc::clone(&batch)).await.unwrap();
    let snap = backend.top(10, vec!["http://x/1".into()]).await.unwrap();
    assert_eq!(
        (
            snap.top[0].1.count,
            snap.named["http://x/1"].count,
            snap.seq
        ),
        (1, 1, 1)
    );
    assert_eq!(backend.totals().await.unwrap().0.count, 1);
    h.storage.shutdown().await.unwrap();
}

macro_rules! contract {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::$backend).await
                }
            )*
        }
    };
}

macro_rules! contract_suite {
    ($($backend:ident),*) => {
        $(contract!($backend:
            expired_entry_is_never_served,
            promotion_keeps_expiry,
            ties_order_by_url_and_top_is_limited,
            min_max_avg_and_totals_are_exact,
            reads_see_unapplied_requests,
            lease_is_exclusive_and_released_only_by_its_owner,
            reapplied_sequence_counts_once,
            failed_apply_is_retried_without_double_counting,
        );)*
    };
}

contract_suite!(on_memory, on_redb, on_redis);
/// Leases held in this process run on tokio's clock (paused in the test); Redis's run on
/// Redis's own (`redis_leases_expire_on_redis_time`).
mod lease_expires_on_tokio_time {
    #[tokio::test]
    async fn on_memory() {
        super::lease_expires(super::on_memory).await
    }

    #[tokio::test]
    async fn on_redb() {
        super::lease_expires(super::on_redb).await
    }
}

/// A failed apply (whether or not the backend kept it) is retried under its own sequence number:
/// every request counts exactly once, and reads see it all along.
async fn failed_apply_is_retried_without_double_counting<B: StorageBackend>(make: Make<B>) {
    for after_applying in [false, true] {
        let h = start(|dir, clock| Failing::new(make(dir, clock))).await;
        let stats = h.storage.stats();
        stats.record(&url("http://f/1"), ms(100));
        h.storage.backend().fail_next(1, after_applying);
        assert!(h.storage.flush().await.is_err());
        assert_eq!(stats.top(10).await.unwrap()[0].count, 1);

        stats.record(&url("http://f/1"), ms(300));
        h.storage.flush().await.unwrap();
        let top = stats.top(10).await.unwrap();
        assert_eq!(
            (top[0].count, top[0].avg_processing_time),
            (2, 0.2),
            "{after_applying}"
        );
        let (stored, _) = h.storage.backend().totals().await.unwrap();
        assert_eq!(stored.count, 2, "after_applying={after_applying}");
        if h.storage.backend().keeps_minutes() {
            let now = crate::history::unix_minute(h.clock.now());
            let stored = h.storage.backend().minutes(now, now).await.unwrap();
            assert_eq!(
                stored.minutes,
                vec![(now, agg(&[0.1, 0.3]))],
                "{after_applying}"
            );
        }
        h.storage.shutdown().await.unwrap();
    }
}

// ---- the redb backend's own guarantees ----------------------------------------------------

/// The redb backend with a second handle on its file, to look at the tables.
struct Redb {
    h: Harness<RedbBackend>,
    db: LocalDb,
}

async fn start_redb(cfg: StorageConfig) -> Redb {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let db = LocalDb::open(dir.path()).unwrap();
    start_on(db, dir, clock, cfg).await
}

async fn start_on(
    db: LocalDb,
    dir: tempfile::TempDir,
    clock: ManualClock,
    cfg: StorageConfig,
) -> Redb {
    let backend = RedbBackend::new(db.clone(), Arc::new(clock.clone()));
    let storage = Storage::start(backend, Arc::new(clock.clone()), cfg)
        .await
        .unwrap();
    Redb {
        h: Harness {
            dir,
            clock,
            storage,
        },
        db,
    }
}

async fn reopen(r: Redb) -> Redb {
    reopen_with(r, config()).await
}

async fn reopen_with(r: Redb, cfg: StorageConfig) -> Redb {
    let Redb { h, db } = r;
    let Harness {
        dir,
        clock,
        storage,
    } = h;
    storage.shutdown().await.unwrap();
    start_on(db, dir, clock, cfg).await
}

fn disk_rows(db: &LocalDb) -> (Vec<String>, Vec<(u64, String)>) {
    let txn = db.database().begin_read().unwrap();
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
            let (key, _) = e.unwrap();
            let (t, u) = key.value();
            (t, u.to_owned())
        })
        .collect();
    (rows, idx)
}

#[tokio::test]
async fn results_and_stats_survive_a_restart_unflushed() {
    let mut r = start_redb(config()).await;
    let h = &r.h;
    h.storage
        .cache()
        .insert("http://img/early.jpg", &cat())
        .await;
    h.clock.advance(HOUR / 2);
    h.storage
        .cache()
        .insert("http://img/late.jpg", &cat())
        .await;
    h.storage.stats().record(&url("http://s/1"), ms(500));
    h.storage.stats().record(&url("http://s/1"), ms(1500));
    // Nothing applied yet: shutdown writes it all.
    r = reopen(r).await;
    let h = r.h;
    let cache = h.storage.cache();
    assert_eq!(cache.memory_get("http://img/early.jpg"), None);
    assert_eq!(cache.backend_get("http://img/early.jpg").await, Some(cat()));
    let top = h.storage.stats().top(10).await.unwrap();
    assert_eq!((top[0].count, top[0].avg_processing_time), (2, 1.0));
    // `early` expires on its original schedule, `late` half an hour later.
    h.clock.advance(HOUR / 2);
    assert_eq!(cache.memory_get("http://img/early.jpg"), None);
    assert_eq!(cache.backend_get("http://img/late.jpg").await, Some(cat()));
    // The sequence continues across restarts: new pending records are still merged.
    h.storage.stats().record(&url("http://s/1"), ms(250));
    assert_eq!(h.storage.stats().top(1).await.unwrap()[0].count, 3);
    h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_cache_scope_reads_only_its_own_results_across_restarts() {
    let scoped = |scope: &str| StorageConfig {
        cache_scope: scope.to_owned(),
        ..config()
    };
    let r = start_redb(scoped("mAAAA:")).await;
    r.h.storage.cache().insert("http://img/a.jpg", &cat()).await;
    // Another model on the same file: a miss, and its own result beside the first.
    let r = reopen_with(r, scoped("mBBBB:")).await;
    let cache = r.h.storage.cache();
    assert_eq!(cache.backend_get("http://img/a.jpg").await, None);
    let dog = Classification {
        label: "dog".into(),
        ..cat()
    };
    cache.insert("http://img/a.jpg", &dog).await;
    assert_eq!(
        cache.backend_get("http://img/a.jpg").await,
        Some(dog.clone())
    );
    // Back to the first model: its entry was kept.
    let r = reopen_with(r, scoped("mAAAA:")).await;
    assert_eq!(
        r.h.storage.cache().backend_get("http://img/a.jpg").await,
        Some(cat())
    );
    let (mut rows, _) = disk_rows(&r.db);
    rows.sort();
    assert_eq!(rows, ["mAAAA:http://img/a.jpg", "mBBBB:http://img/a.jpg"]);
    // Leases are per scope too: two models may compute the same URL at once.
    let a =
        r.h.storage
            .cache()
            .try_lease("http://img/a.jpg", HOUR)
            .await
            .unwrap();
    assert_eq!(a.map(|l| l.key), Some("mAAAA:http://img/a.jpg".to_owned()));
    r.h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn results_are_written_behind_with_the_next_batch_or_by_themselves() {
    let r = start_redb(StorageConfig {
        flush_interval: ms(20),
        ..config()
    })
    .await;
    // No statistics at all: the backend's own task writes the queued result.
    r.h.storage
        .cache()
        .insert("http://img/alone.jpg", &cat())
        .await;
    wait_until(|| cache_rows(&r.db) == 1).await;
    r.h.storage.shutdown().await.unwrap();
}

fn cache_rows(db: &LocalDb) -> u64 {
    let txn = db.database().begin_read().unwrap();
    txn.open_table(CACHE).unwrap().len().unwrap()
}

fn stats_rows(db: &LocalDb) -> u64 {
    let txn = db.database().begin_read().unwrap();
    txn.open_table(URL_STATS).unwrap().len().unwrap()
}

#[tokio::test]
async fn purge_removes_expired_rows_and_index_keys_in_chunks() {
    let r = start_redb(config()).await;
    let h = &r.h;
    let start_ms = crate::clock::unix_millis(h.clock.now());
    for i in 0..5 {
        h.storage
            .cache()
            .insert(&format!("http://img/a{i}.jpg"), &cat())
            .await;
    }
    h.clock.advance(HOUR / 2);
    h.storage.cache().insert("http://img/b.jpg", &cat()).await;
    h.storage.stats().record(&url("http://img/b.jpg"), ms(1));
    h.storage.flush().await.unwrap();
    let (rows, idx) = disk_rows(&r.db);
    assert_eq!((rows.len(), idx.len()), (6, 6));
    let backend = h.storage.backend();
    assert_eq!(backend.purge_expired(2).await.unwrap(), 0);

    // The a* entries expire; purged in chunks of 2 (3 transactions).
    h.clock.advance(HOUR / 2);
    assert_eq!(backend.purge_expired(2).await.unwrap(), 5);
    let (rows, idx) = disk_rows(&r.db);
    assert_eq!(rows, vec!["http://img/b.jpg".to_owned()]);
    let half_hour_ms = HOUR.as_millis() as u64 / 2;
    assert_eq!(
        idx,
        vec![(start_ms + 3 * half_hour_ms, "http://img/b.jpg".to_owned())]
    );

    // Recomputing an expired URL replaces its index key instead of adding a second one.
    h.clock.advance(HOUR);
    h.storage.cache().insert("http://img/b.jpg", &cat()).await;
    h.storage.stats().record(&url("http://img/b.jpg"), ms(1));
    h.storage.flush().await.unwrap();
    let (rows, idx) = disk_rows(&r.db);
    assert_eq!((rows.len(), idx.len()), (1, 1));
    assert_eq!(backend.purge_expired(2).await.unwrap(), 0);
    r.h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn background_task_purges() {
    let r = start_redb(StorageConfig {
        flush_interval: ms(10),
        purge_interval: ms(20),
        ..config()
    })
    .await;
    r.h.storage.cache().insert("http://img/x.jpg", &cat()).await;
    wait_until(|| cache_rows(&r.db) == 1).await;
    r.h.clock.advance(HOUR);
    wait_until(|| cache_rows(&r.db) == 0).await;
    r.h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn applies_on_interval_and_on_batch_size() {
    let r = start_redb(StorageConfig {
        flush_interval: ms(20),
        ..config()
    })
    .await;
    r.h.storage.stats().record(&url("http://i/1"), ms(1));
    wait_until(|| stats_rows(&r.db) == 1).await;
    r.h.storage.shutdown().await.unwrap();

    // Size path: the interval is a day, the 4th request triggers the apply.
    let r = start_redb(StorageConfig {
        flush_max_updates: 4,
        ..config()
    })
    .await;
    for i in 0..3 {
        r.h.storage
            .stats()
            .record(&url(&format!("http://b/{i}")), ms(1));
    }
    tokio::time::sleep(ms(50)).await;
    assert_eq!(stats_rows(&r.db), 0);
    r.h.storage.stats().record(&url("http://b/3"), ms(1));
    wait_until(|| stats_rows(&r.db) == 4).await;
    r.h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn index_holds_one_key_per_url() {
    let r = start_redb(config()).await;
    let h = &r.h;
    for round in 0..3 {
        for i in 0..=round {
            h.storage
                .stats()
                .record(&url(&format!("http://k/{i}")), ms(1));
        }
        h.storage.flush().await.unwrap();
    }
    let txn = r.db.database().begin_read().unwrap();
    let keys: Vec<(u64, String)> = txn
        .open_table(URL_STATS_BY_COUNT)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (key, _) = e.unwrap();
            let (rev, url) = key.value();
            (u64::MAX - rev, url.to_owned())
        })
        .collect();
    assert_eq!(
        keys,
        [(3, "http://k/0"), (2, "http://k/1"), (1, "http://k/2")]
            .map(|(c, u)| (c, u.to_owned()))
            .to_vec()
    );
    drop(txn);
    r.h.storage.shutdown().await.unwrap();
}

#[tokio::test]
async fn requests_after_shutdown_are_refused_not_hung() {
    let h = start(on_memory).await;
    let stats = h.storage.stats().clone();
    let batcher = h.storage.batcher.clone();
    h.storage.shutdown().await.unwrap();
    stats.record(&url("http://late/1"), ms(1));
    assert!(matches!(batcher.flush().await, Err(StorageError::Closed)));
}

/// A file written by the previous version (same table names and types, spelled out here rather
/// than taken from `schema`, so a rename there fails this test) opens with its statistics; its
/// top-1-only cached results are dropped (they could not answer `top_k`) and computed again.
#[tokio::test]
async fn a_file_from_the_previous_version_opens_with_its_statistics() {
    use ::redb::TableDefinition;
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let expires = crate::clock::unix_millis(now) + 60_000;
    {
        let db = ::redb::Database::create(dir.path().join("classifier.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, (&str, f32, u64)>::new("cache_v1"))
            .unwrap()
            .insert("http://old/cat.jpg", ("tabby", 0.5f32, expires))
            .unwrap();
        txn.open_table(TableDefinition::<(u64, &str), ()>::new("cache_expiry_v1"))
            .unwrap()
            .insert((expires, "http://old/cat.jpg"), ())
            .unwrap();
        txn.open_table(TableDefinition::<&str, (u64, f64, f64, f64)>::new(
            "url_stats_v1",
        ))
        .unwrap()
        .insert("http://old/cat.jpg", (2u64, 0.25, 0.75, 1.0))
        .unwrap();
        txn.open_table(TableDefinition::<(u64, &str), ()>::new(
            "url_stats_by_count_v1",
        ))
        .unwrap()
        .insert((u64::MAX - 2, "http://old/cat.jpg"), ())
        .unwrap();
        txn.open_table(TableDefinition::<(), (u64, f64, f64, f64)>::new(
            "stats_totals_v1",
        ))
        .unwrap()
        .insert((), (2u64, 0.25, 0.75, 1.0))
        .unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("storage_meta_v1"))
            .unwrap()
            .insert("writer_seq", 41)
            .unwrap();
        txn.commit().unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
    let storage = Storage::start(on_redb(dir.path(), clock.clone()), clock, config())
        .await
        .unwrap();
    assert_eq!(
        storage.cache().backend_get("http://old/cat.jpg").await,
        None
    );
    storage.stats().record(&url("http://old/cat.jpg"), ms(500));
    storage.flush().await.unwrap();
    let top = storage.stats().top(10).await.unwrap();
    assert_eq!((top[0].count, top[0].avg_processing_time), (3, 0.5));
    assert_eq!(storage.backend().totals().await.unwrap().1, 42);
    storage.shutdown().await.unwrap();
}

async fn wait_until(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(ms(10)).await;
    }
    panic!("condition not reached within 5 s");
}

// ---- Redis: what only a shared backend must do ------------------------------------------------

#[tokio::test]
async fn redis_leases_expire_on_redis_time() {
    let backend = on_redis(Path::new(""), Arc::new(SystemClock));
    let _held = backend
        .try_lease("k", ms(200))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(backend.try_lease("k", ms(200)).await.unwrap(), None);
    tokio::time::sleep(ms(300)).await;
    assert!(backend.try_lease("k", ms(200)).await.unwrap().is_some());
}

/// Two replicas on one prefix: one cache, one set of leases, one table; each replica's batch
/// numbers are its own.
#[tokio::test]
async fn redis_replicas_share_results_leases_and_statistics() {
    let (a, b) = two_redis_replicas(&redis_server::unique_prefix());
    let entry = CachedResult {
        label: "tabby".into(),
        confidence: 0.5,
        runners_up: Arc::from([Prediction {
            label: "tiger cat".into(),
            confidence: 0.25,
        }]),
        expires_at_ms: u64::MAX / 2,
    };
    a.put("k", entry.clone()).await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), Some(entry));
    let lease = a.try_lease("new", HOUR).await.unwrap().expect("free");
    assert_eq!(b.try_lease("new", HOUR).await.unwrap(), None);
    a.release(lease).await.unwrap();
    assert!(b.try_lease("new", HOUR).await.unwrap().is_some());
    // Replica b's first batch is not "already applied" because a applied its own first one.
    let mut batch = StatsBatch::default();
    batch.record("http://x/1", 0.5, 0);
    let batch = Arc::new(batch);
    a.apply(1, Arc::clone(&batch)).await.unwrap();
    b.apply(1, Arc::clone(&batch)).await.unwrap();
    b.apply(1, batch).await.unwrap();
    let snap = a.top(10, vec![]).await.unwrap();
    assert_eq!((snap.top[0].1.count, snap.seq), (2, 1));
    assert_eq!(b.totals().await.unwrap().0.count, 2);
    // Another prefix is another deployment.
    let other = on_redis_prefix(&redis_server::unique_prefix(), Arc::new(SystemClock));
    assert_eq!(other.get("k").await.unwrap(), None);
    assert!(other.top(10, vec![]).await.unwrap().top.is_empty());
}

/// A batch's minutes are added with it, under its sequence number: a retried batch adds nothing,
/// and another replica's batch of the same number is its own.
#[tokio::test]
async fn redis_minutes_are_applied_exactly_once_with_their_batch() {
    let prefix = redis_server::unique_prefix();
    let (a, b) = two_redis_replicas(&prefix);
    assert!(a.keeps_minutes());
    let mut batch = StatsBatch::default();
    batch.record("http://x/1", 0.5, 100);
    batch.record("http://x/2", 0.25, 102);
    batch.record("http://x/1", 0.75, 102);
    let batch = Arc::new(batch);
    a.apply(1, Arc::clone(&batch)).await.unwrap();
    a.apply(1, Arc::clone(&batch)).await.unwrap();
    let snap = a.minutes(99, 103).await.unwrap();
    assert_eq!(
        snap,
        MinuteSnapshot {
            minutes: vec![(100, agg(&[0.5])), (102, agg(&[0.25, 0.75]))],
            seq: 1,
        }
    );
    b.apply(1, batch).await.unwrap();
    let counts: Vec<_> = b
        .minutes(99, 103)
        .await
        .unwrap()
        .minutes
        .iter()
        .map(|(m, a)| (*m, a.count))
        .collect();
    assert_eq!(counts, vec![(100, 2), (102, 4)]);
    // Every minute key expires a little after the longest window.
    let mut conn = redis_server::shared()
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(format!("{prefix}:{{stats}}:minute:102"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((86_400..=90_000).contains(&ttl), "{ttl}");
}

/// Two replicas on one prefix, on one (manual) clock: each one's history is the fleet's, per
/// minute, oldest first, quiet minutes left out, its own unapplied requests included.
#[tokio::test]
async fn redis_history_is_the_fleets_window_oldest_first_without_quiet_minutes() {
    let prefix = redis_server::unique_prefix();
    // 2026-11-26T19:00:10Z
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_610));
    let replica = || async {
        let backend = on_redis_prefix(&prefix, Arc::new(clock.clone()));
        Storage::start(backend, Arc::new(clock.clone()), config())
            .await
            .unwrap()
    };
    let (a, b) = (replica().await, replica().await);
    let (ha, hb) = (a.shared_history().unwrap(), b.shared_history().unwrap());
    assert_eq!(ha.name(), "redis");
    a.stats().record(&url("http://h/1"), ms(100));
    b.stats().record(&url("http://h/2"), ms(300));
    clock.advance(Duration::from_secs(3 * 60)); // 19:03:10; 19:01 and 19:02 quiet
    a.stats().record(&url("http://h/1"), ms(50));
    // Not applied yet: each replica sees its own requests only.
    let seen = |points: Vec<crate::history::HistoryPoint>| -> Vec<(String, u64, f64)> {
        points
            .into_iter()
            .map(|p| (p.minute, p.requests, p.avg_processing_time))
            .collect()
    };
    assert_eq!(
        seen(ha.points(60).await.unwrap()),
        vec![
            ("2026-11-26T19:00:00Z".into(), 1, 0.1),
            ("2026-11-26T19:03:00Z".into(), 1, 0.05),
        ]
    );
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let fleet = vec![
        ("2026-11-26T19:00:00Z".to_owned(), 2, 0.2),
        ("2026-11-26T19:03:00Z".to_owned(), 1, 0.05),
    ];
    assert_eq!(seen(ha.points(60).await.unwrap()), fleet);
    assert_eq!(seen(hb.points(60).await.unwrap()), fleet);
    // The window ends now and reaches back `minutes`, the current minute included.
    assert_eq!(seen(hb.points(1).await.unwrap()), fleet[1..]);
    assert_eq!(seen(hb.points(3).await.unwrap()), fleet[1..]);
    assert_eq!(seen(hb.points(4).await.unwrap()), fleet);
    clock.advance(Duration::from_secs(24 * 3600));
    assert!(hb.points(1440).await.unwrap().is_empty());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The other backends keep no minutes: their process's ring answers `/report/history`.
#[tokio::test]
async fn only_redis_serves_history() {
    assert!(start(on_memory).await.storage.shared_history().is_none());
    assert!(start(on_redb).await.storage.shared_history().is_none());
}

/// A Redis that is gone is an error within the timeout, never a hang; and once it is back the
/// same backend works again (the connection manager reconnects).
#[tokio::test]
async fn redis_down_is_an_error_then_it_recovers() {
    let mut server = redis_server::RedisServer::start();
    let port = server.port;
    let conn = RedisConn::single(server.client(), ms(300)).unwrap();
    let backend = RedisBackend::new(conn, "p", Arc::new(SystemClock), ms(300));
    assert_eq!(backend.get("k").await.unwrap(), None);
    drop(server);
    let started = std::time::Instant::now();
    assert!(matches!(
        backend.get("k").await,
        Err(StorageError::Redis(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    server = redis_server::RedisServer::start_on(port);
    let mut back = false;
    for _ in 0..50 {
        if backend.get("k").await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(back, "reconnected");
    drop(server);
}

/// `classifier_stats_dropped_total` as this process's recorder renders it (0 before the first).
fn stats_dropped(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("classifier_stats_dropped_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// During an outage the batcher keeps at most `max_pending_urls` rows: requests for more URLs
/// are dropped and counted; what was kept is applied, exactly, once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_buffers_up_to_the_bound_and_applies_it_when_back() {
    let metrics = crate::metrics::install().expect("this test binary's only recorder");
    let dropped_before = stats_dropped(&metrics);
    let server = redis_server::RedisServer::start();
    let port = server.port;
    let conn = RedisConn::single(server.client(), ms(300)).unwrap();
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_600));
    let backend = RedisBackend::new(conn, "p", Arc::new(clock.clone()), ms(300));
    let cfg = StorageConfig {
        max_pending_urls: 3,
        ..config()
    };
    let storage = Storage::start(backend, Arc::new(clock.clone()), cfg)
        .await
        .unwrap();
    drop(server);
    let stats = storage.stats();
    for u in ["a", "b", "c", "d", "e", "a"] {
        stats.record(&url(&format!("http://o/{u}")), ms(100));
    }
    assert!(matches!(storage.flush().await, Err(StorageError::Redis(_))));
    assert_eq!(stats_dropped(&metrics) - dropped_before, 2, "d and e");
    let _server = redis_server::RedisServer::start_on(port);
    let mut back = false;
    for _ in 0..50 {
        if storage.flush().await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(ms(100)).await;
    }
    assert!(back, "applied once Redis is back");
    let (stored, _) = storage.backend().totals().await.unwrap();
    assert_eq!(stored.count, 4);
    let top = top_counts(stats).await;
    assert_eq!(
        top,
        [("http://o/a", 2), ("http://o/b", 1), ("http://o/c", 1)].map(|(u, c)| (u.to_owned(), c))
    );
    let now = crate::history::unix_minute(clock.now());
    let minutes = storage.backend().minutes(now, now).await.unwrap().minutes;
    assert_eq!(minutes[0].1.count, 4);
    // Room again: a new URL is kept.
    stats.record(&url("http://o/f"), ms(100));
    storage.flush().await.unwrap();
    assert_eq!(stats_dropped(&metrics) - dropped_before, 2);
    storage.shutdown().await.unwrap();
}

/// A Redis Cluster is one store too: single-key commands go to their slot's node, and the
/// statistics scripts' keys share one hash tag, so each script runs on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_replicas_share_results_leases_and_statistics() {
    let cluster = redis_server::RedisCluster::start();
    let spec = crate::redis_conn::RedisSpec::Cluster(cluster.urls());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let conn = RedisConn::open(&spec, Duration::from_secs(5))
            .await
            .unwrap();
        replicas.push(RedisBackend::new(
            conn,
            "c",
            Arc::clone(&clock),
            Duration::from_secs(5),
        ));
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let entry = CachedResult {
        label: "tabby".into(),
        confidence: 0.5,
        runners_up: Arc::from([]),
        expires_at_ms: u64::MAX / 2,
    };
    // Keys chosen to land on different nodes.
    for key in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        a.put(key, entry.clone()).await.unwrap();
        assert_eq!(b.get(key).await.unwrap(), Some(entry.clone()));
        let lease = a.try_lease(key, HOUR).await.unwrap().expect("free");
        assert_eq!(b.try_lease(key, HOUR).await.unwrap(), None);
        a.release(lease).await.unwrap();
    }
    let mut batch = StatsBatch::default();
    batch.record("http://x/1", 0.5, 0);
    batch.record("http://x/2", 0.25, 0);
    let batch = Arc::new(batch);
    a.apply(1, Arc::clone(&batch)).await.unwrap();
    b.apply(1, batch).await.unwrap();
    let snap = b.top(10, vec!["http://x/2".into()]).await.unwrap();
    assert_eq!(snap.top.len(), 2);
    assert_eq!(
        (snap.top[0].1.count, snap.named["http://x/2"].count),
        (2, 2)
    );
    assert_eq!(a.totals().await.unwrap().0.count, 4);
    // The minute keys are in the script's slot too, and one MGET reads them.
    let minutes = b.minutes(0, 2).await.unwrap();
    assert_eq!((minutes.minutes.len(), minutes.minutes[0].1.count), (1, 4));
}
