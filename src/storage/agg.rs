//! The numbers behind `/report`: count, min, max and sum of processing times, and the batch of them
//! a replica hands its statistics backend.
use std::collections::{BTreeMap, HashMap};

use crate::domain::{report_subject, Totals, UrlStats};

/// Count, min, max and sum of processing times (seconds). Merging is associative and commutative,
/// which is what lets batches be combined, retried and added to stored rows in any order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl Agg {
    pub const EMPTY: Agg = Agg {
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
    };

    pub fn one(secs: f64) -> Agg {
        Agg {
            count: 1,
            min: secs,
            max: secs,
            sum: secs,
        }
    }

    pub fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// The report's figures. All 0 for an empty aggregate: JSON has no infinity.
    pub fn totals(&self) -> Totals {
        if self.count == 0 {
            return Totals {
                count: 0,
                min_processing_time: 0.0,
                max_processing_time: 0.0,
                avg_processing_time: 0.0,
            };
        }
        Totals {
            count: self.count,
            min_processing_time: self.min,
            max_processing_time: self.max,
            avg_processing_time: self.sum / self.count as f64,
        }
    }

    /// The report row of the statistics key `key` (a URL, or an upload's content key).
    pub fn url_stats(&self, key: &str) -> UrlStats {
        let t = self.totals();
        let (image_url, upload_sha256) = report_subject(key);
        UrlStats {
            image_url,
            upload_sha256,
            count: t.count,
            min_processing_time: t.min_processing_time,
            max_processing_time: t.max_processing_time,
            avg_processing_time: t.avg_processing_time,
        }
    }
}

/// Statistics gathered between two flushes, aggregated per URL and per minute: what
/// [`super::StatsStore::apply`] writes in one atomic step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsBatch {
    pub per_url: HashMap<String, Agg>,
    pub totals: Option<Agg>,
    /// By Unix minute of answering (`/report/history`): one or two entries per batch, one per
    /// minute while applies fail. Backends without per-minute figures ignore it.
    pub per_minute: BTreeMap<u64, Agg>,
    /// Requests recorded into this batch (the flush-early threshold counts them).
    pub requests: usize,
}

impl StatsBatch {
    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// One request for `url` that took `secs`, answered in Unix minute `minute`.
    pub fn record(&mut self, url: &str, secs: f64, minute: u64) {
        let one = Agg::one(secs);
        match self.per_url.get_mut(url) {
            Some(agg) => agg.merge(&one),
            None => {
                self.per_url.insert(url.to_owned(), one);
            }
        }
        self.totals.get_or_insert(Agg::EMPTY).merge(&one);
        self.per_minute
            .entry(minute)
            .or_insert(Agg::EMPTY)
            .merge(&one);
        self.requests += 1;
    }

    /// Adds another batch's deltas to this one.
    pub fn merge(&mut self, other: &StatsBatch) {
        for (url, delta) in &other.per_url {
            self.per_url
                .entry(url.clone())
                .or_insert(Agg::EMPTY)
                .merge(delta);
        }
        if let Some(t) = &other.totals {
            self.totals.get_or_insert(Agg::EMPTY).merge(t);
        }
        for (minute, delta) in &other.per_minute {
            self.per_minute
                .entry(*minute)
                .or_insert(Agg::EMPTY)
                .merge(delta);
        }
        self.requests += other.requests;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_exact_and_empty_reports_zero() {
        let mut batch = StatsBatch::default();
        batch.record("a", 0.25, 7);
        batch.record("a", 1.5, 8);
        batch.record("b", 0.5, 8);
        let mut other = StatsBatch::default();
        other.record("a", 0.125, 8);
        batch.merge(&other);
        let a = batch.per_url["a"];
        assert_eq!((a.count, a.min, a.max, a.sum), (3, 0.125, 1.5, 1.875));
        let minutes: Vec<_> = batch
            .per_minute
            .iter()
            .map(|(m, a)| (*m, a.count, a.sum))
            .collect();
        assert_eq!(minutes, vec![(7, 1, 0.25), (8, 3, 2.125)]);
        assert_eq!(batch.requests, 4);
        assert_eq!(batch.totals.unwrap().totals().avg_processing_time, 0.59375);
        assert_eq!(Agg::EMPTY.totals().min_processing_time, 0.0);
        assert_eq!(Agg::EMPTY.url_stats("x").max_processing_time, 0.0);
    }
}
