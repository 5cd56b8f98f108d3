//! Per-URL request statistics (count, min, max, average processing time) and global totals.
//!
//! [`Stats::record`] costs a hash-map update under a short mutex (the [`Batcher`] applies it
//! later). [`Stats::top`] and [`Stats::totals`] combine a backend snapshot with the batches it
//! does not contain yet, so they reflect every `record()` of this process that returned before
//! they were called. [`Stats::minutes`] does the same for the per-minute figures.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::agg::Agg;
use super::backend::StatsStore;
use super::batcher::Batcher;
use super::dispatch::Backend;
use super::StorageError;
use crate::clock::Clock;
use crate::domain::{Subject, Totals, UrlStats};
use crate::history::unix_minute;

/// Handle to the statistics. Cheap to clone.
pub struct Stats<B = Backend> {
    backend: Arc<B>,
    batcher: Batcher,
    /// Dates each request's minute (the one `/report/history` counts it in).
    pub(super) clock: Arc<dyn Clock>,
}

impl<B> Clone for Stats<B> {
    fn clone(&self) -> Self {
        Self {
            backend: Arc::clone(&self.backend),
            batcher: self.batcher.clone(),
            clock: Arc::clone(&self.clock),
        }
    }
}

impl<B> std::fmt::Debug for Stats<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl<B: StatsStore> Stats<B> {
    pub(crate) fn new(backend: Arc<B>, batcher: Batcher, clock: Arc<dyn Clock>) -> Self {
        Self {
            backend,
            batcher,
            clock,
        }
    }

    /// Records one successful classification request (fresh or cached) of `subject` answered now,
    /// that took `processing_time`. Non-blocking.
    pub fn record(&self, subject: &Subject, processing_time: Duration) {
        let minute = unix_minute(self.clock.now());
        self.batcher
            .record(&subject.key(), processing_time.as_secs_f64(), minute);
    }

    /// The `n` most requested URLs, by count descending then URL ascending.
    ///
    /// Cost: the backend's top `n` plus one row per URL with unapplied requests; independent of
    /// the number of distinct URLs. Exact because unapplied requests only raise counts: a URL
    /// outside the stored top `n` without unapplied requests still has `n` URLs ahead of it.
    pub async fn top(&self, n: usize) -> Result<Vec<UrlStats>, StorageError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // Taken before the snapshot: every acknowledged request is in this view or in the
        // snapshot, and the sequence numbers tell which.
        let view = self.batcher.pending_view();
        let snapshot = self.backend.top(n, view.urls()).await?;
        let mut rows: HashMap<String, Agg> = snapshot.top.into_iter().collect();
        for (url, delta) in view.after(snapshot.seq).per_url {
            let mut agg = rows
                .remove(&url)
                .or_else(|| snapshot.named.get(&url).copied())
                .unwrap_or(Agg::EMPTY);
            agg.merge(&delta);
            rows.insert(url, agg);
        }
        let mut rows: Vec<(String, Agg)> = rows.into_iter().collect();
        rows.sort_by(|(ua, a), (ub, b)| b.count.cmp(&a.count).then_with(|| ua.cmp(ub)));
        rows.truncate(n);
        Ok(rows
            .into_iter()
            .map(|(key, agg)| agg.url_stats(&key))
            .collect())
    }

    /// Count, min, max and average across all URLs, with the same freshness as [`Stats::top`].
    pub async fn totals(&self) -> Result<Totals, StorageError> {
        let view = self.batcher.pending_view();
        let (mut agg, seq) = self.backend.totals().await?;
        if let Some(delta) = view.after(seq).totals {
            agg.merge(&delta);
        }
        Ok(agg.totals())
    }

    /// The requests of Unix minutes `first..=last` by minute (only minutes with any), with the
    /// same freshness as [`Stats::top`]. Only the backend's if it keeps minutes
    /// ([`StatsStore::keeps_minutes`]); else just this process's unapplied ones.
    pub async fn minutes(&self, first: u64, last: u64) -> Result<BTreeMap<u64, Agg>, StorageError> {
        let view = self.batcher.pending_view();
        let snapshot = self.backend.minutes(first, last).await?;
        let mut minutes: BTreeMap<u64, Agg> = snapshot.minutes.into_iter().collect();
        for (minute, delta) in view.after(snapshot.seq).per_minute.range(first..=last) {
            minutes.entry(*minute).or_insert(Agg::EMPTY).merge(delta);
        }
        Ok(minutes)
    }
}
