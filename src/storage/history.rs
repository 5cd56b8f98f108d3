//! `/report/history` from the statistics store, for a backend that keeps per-minute figures
//! (Redis): every replica's requests, since each batch carries its minutes and the store adds
//! them exactly once with the batch (see `redis.rs`). This replica's requests not applied yet
//! are added, as for `/report`.
use futures_util::future::BoxFuture;

use super::backend::StatsStore;
use super::dispatch::Backend;
use super::stats::Stats;
use crate::history::{unix_minute, window, HistoryPoint, HistorySource, SourceError};

/// A [`HistorySource`] on [`Stats`]; made by [`super::Storage::shared_history`].
pub struct SharedHistory<B = Backend> {
    stats: Stats<B>,
}

impl<B: StatsStore> SharedHistory<B> {
    pub(super) fn new(stats: Stats<B>) -> Self {
        Self { stats }
    }

    async fn window(&self, minutes: u32) -> Result<Vec<HistoryPoint>, SourceError> {
        let window = window(unix_minute(self.stats.clock.now()), minutes);
        let found = self.stats.minutes(*window.start(), *window.end()).await?;
        Ok(found
            .into_iter()
            .filter_map(|(minute, agg)| HistoryPoint::new(minute, agg.count, agg.sum))
            .collect())
    }
}

impl<B: StatsStore> HistorySource for SharedHistory<B> {
    fn name(&self) -> &'static str {
        // The only backend that keeps minutes.
        "redis"
    }

    fn points(&self, minutes: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>> {
        Box::pin(self.window(minutes))
    }
}
