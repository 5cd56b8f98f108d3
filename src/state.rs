//! What every handler shares. Cheap to clone: everything inside is a handle.
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::cache::{CacheOutcome, ResultCache};
use crate::classify::pipeline::Pipeline;
use crate::domain::{Classification, ImageUrl};
use crate::elastic::Reporter;
use crate::error::ApiError;
use crate::history::History;
use crate::stats::Stats;

#[derive(Clone)]
pub struct AppState {
    pub auth: Auth,
    pub pipeline: Pipeline,
    pub cache: ResultCache,
    pub stats: Stats,
    /// Set when Elasticsearch reporting is configured.
    pub reporter: Option<Reporter>,
    /// Requests per minute for `/report/history`.
    pub history: History,
    /// Caps classify requests in progress; when none is left, answer 503 at once rather than
    /// queueing without bound (TEI's `try_acquire_permit`).
    pub permits: Arc<Semaphore>,
    /// True from the end of start-up until shutdown begins: what `/readyz` reports.
    pub ready: Arc<AtomicBool>,
    /// `None` when metrics are disabled.
    pub metrics: Option<PrometheusHandle>,
}

/// A classification and how long the request took.
pub struct Answer {
    pub classification: Classification,
    pub outcome: CacheOutcome,
    pub processing_time: Duration,
}

impl AppState {
    /// Cached or fresh (one download per URL however many ask at once); counted in the stats
    /// only when it succeeds.
    pub async fn classify(&self, url: &ImageUrl, arrived: Instant) -> Result<Answer, ApiError> {
        let _permit = self
            .permits
            .try_acquire()
            .map_err(|_| ApiError::Overloaded)?;
        let pipeline = self.pipeline.clone();
        let key = url.clone();
        let (classification, outcome) = self
            .cache
            .get_or_compute(
                url,
                move || async move { pipeline.classify_url(&key).await },
            )
            .await?;
        let processing_time = arrived.elapsed();
        metrics::counter!(crate::metrics::CACHE_LOOKUPS, "outcome" => outcome.label()).increment(1);
        self.stats.record(url, processing_time);
        self.history.record(processing_time);
        Ok(Answer {
            classification,
            outcome,
            processing_time,
        })
    }
}
