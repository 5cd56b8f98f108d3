//! Per-URL request statistics (count, min, max, average processing time) and global totals.
//!
//! Writes go through the batched [`Writer`]: [`Stats::record`] costs a hash-map update under a
//! short mutex, never a disk commit. Durability window: a record is on disk within one flush
//! interval (100 ms by default); a SIGKILL can lose at most the records of the last interval.
//!
//! Reads never commit either: [`Stats::top`] and [`Stats::totals`] combine a committed snapshot
//! with the writer's uncommitted deltas, so they reflect every `record()` that returned before
//! they were called.
use std::collections::HashMap;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;

use crate::domain::ImageUrl;
use crate::store::{Store, StoreError, STATS_TOTALS, URL_STATS, URL_STATS_BY_COUNT};
use crate::writer::{committed_seq, Agg, Writer};

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UrlStats {
    pub image_url: String,
    pub count: u64,
    pub min_processing_time: f64,
    pub max_processing_time: f64,
    pub avg_processing_time: f64,
}

/// Aggregates over every recorded request. All times are 0 when nothing was recorded (JSON has no
/// infinity).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub count: u64,
    pub min_processing_time: f64,
    pub max_processing_time: f64,
    pub avg_processing_time: f64,
}

impl Totals {
    fn from_agg(a: &Agg) -> Totals {
        if a.count == 0 {
            return Totals {
                count: 0,
                min_processing_time: 0.0,
                max_processing_time: 0.0,
                avg_processing_time: 0.0,
            };
        }
        Totals {
            count: a.count,
            min_processing_time: a.min,
            max_processing_time: a.max,
            avg_processing_time: a.sum / a.count as f64,
        }
    }
}

/// Handle to the statistics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stats {
    store: Store,
    writer: Writer,
}

impl Stats {
    pub fn new(store: Store, writer: Writer) -> Stats {
        Stats { store, writer }
    }

    /// Records one successful classification request (fresh or cached) of `url` that took
    /// `processing_time`. Non-blocking; committed by the writer with its next batch.
    pub fn record(&self, url: &ImageUrl, processing_time: Duration) {
        self.writer
            .record(url.as_str(), processing_time.as_secs_f64());
    }

    /// The `n` most requested URLs, by count descending then URL ascending.
    ///
    /// Cost: reads the first `n` keys of the by-count index plus one row per URL with uncommitted
    /// updates; independent of the number of distinct URLs. This is exact because uncommitted
    /// updates only raise counts: a URL outside the committed top `n` without pending updates
    /// still has `n` URLs ahead of it.
    pub async fn top(&self, n: usize) -> Result<Vec<UrlStats>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // Taken before reading the snapshot: everything acknowledged so far is either in this view
        // or already committed, and the sequence numbers tell which.
        let view = self.writer.pending_view();
        self.store
            .run(move |db| {
                let txn = db.begin_read()?;
                let deltas = view.stats_after(committed_seq(&txn)?);
                let stats = txn.open_table(URL_STATS)?;
                let by_count = txn.open_table(URL_STATS_BY_COUNT)?;

                let mut candidates: HashMap<String, Agg> = HashMap::new();
                for entry in by_count.iter()?.take(n) {
                    let (key, _) = entry?;
                    let (_, url) = key.value();
                    let row = stats.get(url)?.map(|g| Agg::from_row(g.value()));
                    match row {
                        Some(row) => {
                            candidates.insert(url.to_owned(), row);
                        }
                        // Index and rows are written in one transaction; a gap means damage.
                        None => tracing::error!(url, "stats index entry without a stats row"),
                    }
                }
                for (url, delta) in deltas {
                    let agg = match candidates.remove(&url) {
                        Some(agg) => agg,
                        None => stats
                            .get(url.as_str())?
                            .map_or(Agg::EMPTY, |g| Agg::from_row(g.value())),
                    };
                    let mut merged = agg;
                    merged.merge(&delta);
                    candidates.insert(url, merged);
                }

                let mut rows: Vec<(String, Agg)> = candidates.into_iter().collect();
                rows.sort_by(|(ua, a), (ub, b)| b.count.cmp(&a.count).then_with(|| ua.cmp(ub)));
                rows.truncate(n);
                Ok(rows
                    .into_iter()
                    .map(|(image_url, a)| UrlStats {
                        image_url,
                        count: a.count,
                        min_processing_time: a.min,
                        max_processing_time: a.max,
                        avg_processing_time: a.sum / a.count as f64,
                    })
                    .collect())
            })
            .await
    }

    /// Count, min, max and average across all URLs, with the same freshness as [`Stats::top`].
    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let view = self.writer.pending_view();
        self.store
            .run(move |db| {
                let txn = db.begin_read()?;
                let delta = view.totals_after(committed_seq(&txn)?);
                let mut agg = txn
                    .open_table(STATS_TOTALS)?
                    .get(())?
                    .map_or(Agg::EMPTY, |g| Agg::from_row(g.value()));
                agg.merge(&delta);
                Ok(Totals::from_agg(&agg))
            })
            .await
    }

    /// Commits pending statistics (and cache entries) now and waits for the commit.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use crate::store::{Storage, StorageConfig};
    use redb::ReadableTableMetadata;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn url(s: &str) -> ImageUrl {
        ImageUrl::parse(s).unwrap()
    }

    fn config(flush_interval: Duration) -> StorageConfig {
        StorageConfig {
            flush_interval,
            ..StorageConfig::default()
        }
    }

    /// A flush interval long enough that nothing is committed unless a test asks for it.
    const NEVER: Duration = Duration::from_secs(3600);

    async fn open(dir: &std::path::Path, flush_interval: Duration) -> Storage {
        Storage::open(dir, Arc::new(SystemClock), config(flush_interval))
            .await
            .unwrap()
    }

    fn committed_rows(store: &Store) -> u64 {
        let txn = store.database().begin_read().unwrap();
        txn.open_table(URL_STATS).unwrap().len().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn orders_by_count_desc_then_url_asc_and_limits_to_n() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let stats = storage.stats();
        // 12 URLs: u00 gets 12 requests, u01 gets 11, ... u11 gets 1; plus ties below.
        for i in 0..12u64 {
            for _ in 0..(12 - i) {
                stats.record(&url(&format!("http://h/u{i:02}")), ms(100));
            }
        }
        // Ties on count 12 with u00: ordered by URL.
        for _ in 0..12 {
            stats.record(&url("http://a/tie"), ms(100));
            stats.record(&url("http://z/tie"), ms(100));
        }
        storage.flush().await.unwrap();

        let top = stats.top(10).await.unwrap();
        let got: Vec<(&str, u64)> = top
            .iter()
            .map(|r| (r.image_url.as_str(), r.count))
            .collect();
        assert_eq!(
            got,
            vec![
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
        );
        assert_eq!(stats.top(3).await.unwrap().len(), 3);
        assert_eq!(stats.top(100).await.unwrap().len(), 14);
        assert!(stats.top(0).await.unwrap().is_empty());
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn min_max_avg_and_totals_are_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let stats = storage.stats();
        let a = url("http://img/a.jpg");
        let b = url("http://img/b.jpg");
        for t in [250, 500, 1500] {
            stats.record(&a, ms(t));
        }
        stats.record(&b, ms(125));
        // Half committed, half pending: both sides must be combined.
        storage.flush().await.unwrap();
        stats.record(&b, ms(2000));

        let top = stats.top(10).await.unwrap();
        assert_eq!(
            top,
            vec![
                UrlStats {
                    image_url: "http://img/a.jpg".into(),
                    count: 3,
                    min_processing_time: 0.25,
                    max_processing_time: 1.5,
                    avg_processing_time: 0.75,
                },
                UrlStats {
                    image_url: "http://img/b.jpg".into(),
                    count: 2,
                    min_processing_time: 0.125,
                    max_processing_time: 2.0,
                    avg_processing_time: 1.0625,
                },
            ]
        );
        assert_eq!(
            stats.totals().await.unwrap(),
            Totals {
                count: 5,
                min_processing_time: 0.125,
                max_processing_time: 2.0,
                avg_processing_time: 0.875,
            }
        );
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn empty_totals_are_zero_not_infinite() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let totals = storage.stats().totals().await.unwrap();
        assert_eq!(totals.count, 0);
        assert_eq!(totals.min_processing_time, 0.0);
        assert_eq!(totals.max_processing_time, 0.0);
        assert!(storage.stats().top(10).await.unwrap().is_empty());
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn top_sees_unflushed_records_without_committing() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let stats = storage.stats();
        for _ in 0..3 {
            stats.record(&url("http://x/pending"), ms(10));
        }
        let top = stats.top(10).await.unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].count, 3);
        assert_eq!(stats.totals().await.unwrap().count, 3);
        // Reading did not commit anything.
        assert_eq!(committed_rows(storage.store()), 0);

        // Committed counts plus pending deltas can reorder the committed top list.
        for _ in 0..5 {
            stats.record(&url("http://x/committed"), ms(10));
        }
        storage.flush().await.unwrap();
        for _ in 0..4 {
            stats.record(&url("http://x/pending"), ms(10));
        }
        let top = stats.top(1).await.unwrap();
        assert_eq!(top[0].image_url, "http://x/pending");
        assert_eq!(top[0].count, 7);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn pending_url_outside_committed_top_n_is_found() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let stats = storage.stats();
        for i in 0..20 {
            for _ in 0..10 {
                stats.record(&url(&format!("http://h/{i:02}")), ms(1));
            }
        }
        stats.record(&url("http://h/zz"), ms(1));
        storage.flush().await.unwrap();
        // zz is far outside the committed top 10 (count 1), then jumps to the top while pending.
        for _ in 0..20 {
            stats.record(&url("http://h/zz"), ms(1));
        }
        let top = stats.top(10).await.unwrap();
        assert_eq!(top[0].image_url, "http://h/zz");
        assert_eq!(top[0].count, 21);
        assert_eq!(top.len(), 10);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn stats_survive_shutdown_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let storage = open(tmp.path(), NEVER).await;
            storage.stats().record(&url("http://s/1"), ms(500));
            storage.stats().record(&url("http://s/1"), ms(1500));
            storage.stats().record(&url("http://s/2"), ms(250));
            // Nothing flushed yet: shutdown must commit it.
            assert_eq!(committed_rows(storage.store()), 0);
            storage.shutdown().await.unwrap();
        }
        let storage = open(tmp.path(), NEVER).await;
        let top = storage.stats().top(10).await.unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!((top[0].image_url.as_str(), top[0].count), ("http://s/1", 2));
        assert_eq!(top[0].avg_processing_time, 1.0);
        assert_eq!(storage.stats().totals().await.unwrap().count, 3);

        // The sequence continues across restarts: new pending records are still merged.
        storage.stats().record(&url("http://s/2"), ms(250));
        storage.stats().record(&url("http://s/2"), ms(250));
        let top = storage.stats().top(1).await.unwrap();
        assert_eq!((top[0].image_url.as_str(), top[0].count), ("http://s/2", 3));
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn commits_on_interval_and_on_batch_size() {
        let tmp = tempfile::tempdir().unwrap();
        // Interval path.
        let storage = open(tmp.path(), ms(20)).await;
        storage.stats().record(&url("http://i/1"), ms(1));
        wait_until(|| committed_rows(storage.store()) == 1).await;
        storage.shutdown().await.unwrap();

        // Size path: interval is an hour, the 4th update triggers the commit.
        let cfg = StorageConfig {
            flush_max_updates: 4,
            ..config(NEVER)
        };
        let storage = Storage::open(tmp.path(), Arc::new(SystemClock), cfg)
            .await
            .unwrap();
        for i in 0..3 {
            storage
                .stats()
                .record(&url(&format!("http://b/{i}")), ms(1));
        }
        tokio::time::sleep(ms(50)).await;
        assert_eq!(committed_rows(storage.store()), 1);
        storage.stats().record(&url("http://b/3"), ms(1));
        wait_until(|| committed_rows(storage.store()) == 5).await;
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn failed_commit_keeps_updates_and_retries() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        let stats = storage.stats();
        stats.record(&url("http://f/1"), ms(100));
        storage.writer().fail_next_commits(1);
        assert!(storage.flush().await.is_err());
        // Still visible, still pending.
        assert_eq!(stats.top(10).await.unwrap()[0].count, 1);
        assert_eq!(committed_rows(storage.store()), 0);

        stats.record(&url("http://f/1"), ms(300));
        storage.flush().await.unwrap();
        assert_eq!(committed_rows(storage.store()), 1);
        let top = stats.top(10).await.unwrap();
        assert_eq!(top[0].count, 2);
        assert_eq!(top[0].avg_processing_time, 0.2);
        assert_eq!(stats.totals().await.unwrap().count, 2);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn index_holds_one_key_per_url() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = open(tmp.path(), NEVER).await;
        for round in 0..3 {
            for i in 0..=round {
                storage
                    .stats()
                    .record(&url(&format!("http://k/{i}")), ms(1));
            }
            storage.flush().await.unwrap();
        }
        let txn = storage.store().database().begin_read().unwrap();
        let idx = txn.open_table(URL_STATS_BY_COUNT).unwrap();
        let keys: Vec<(u64, String)> = idx
            .iter()
            .unwrap()
            .map(|e| {
                let (k, _) = e.unwrap();
                let (rev, url) = k.value();
                (u64::MAX - rev, url.to_owned())
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (3, "http://k/0".to_owned()),
                (2, "http://k/1".to_owned()),
                (1, "http://k/2".to_owned()),
            ]
        );
        drop(idx);
        drop(txn);
        storage.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn records_after_shutdown_are_refused_not_hung() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(
            tmp.path(),
            Arc::new(ManualClock::new(SystemTime::now())),
            config(NEVER),
        )
        .await
        .unwrap();
        let stats = storage.stats().clone();
        storage.shutdown().await.unwrap();
        stats.record(&url("http://late/1"), ms(1));
        assert!(matches!(stats.flush().await, Err(StoreError::Closed)));
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
}
