//! The classify use case: admission, the cache with single flight, the pipeline on a miss, then
//! the request's place in the statistics and the history.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::flight::SingleFlight;
use super::pipeline::Pipeline;
use crate::domain::{Classification, ImageUrl};
use crate::error::ApiError;
use crate::history::History;
use crate::storage::Stats;

/// A classification and how long the request took.
pub struct Answer {
    pub classification: Classification,
    pub processing_time: Duration,
}

/// Handle to the classify service. Cheap to clone.
#[derive(Clone)]
pub struct ClassifyService {
    pipeline: Pipeline,
    flight: SingleFlight,
    stats: Stats,
    history: History,
    /// Caps classify requests in progress; when none is left, answer 503 at once rather than
    /// queue without bound behind a model that cannot go faster.
    permits: Arc<Semaphore>,
}

impl ClassifyService {
    pub fn new(
        pipeline: Pipeline,
        flight: SingleFlight,
        stats: Stats,
        history: History,
        max_concurrent: usize,
    ) -> Self {
        Self {
            pipeline,
            flight,
            stats,
            history,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Cached or fresh (one download per URL however many ask at once); counted in the stats and
    /// the history only when it succeeds.
    pub async fn classify(&self, url: &ImageUrl, arrived: Instant) -> Result<Answer, ApiError> {
        let _permit = self
            .permits
            .try_acquire()
            .map_err(|_| ApiError::Overloaded)?;
        let pipeline = self.pipeline.clone();
        let key = url.clone();
        let (classification, outcome) = self
            .flight
            .get_or_compute(url.as_str(), move || async move {
                pipeline.classify_url(&key).await
            })
            .await?;
        let processing_time = arrived.elapsed();
        metrics::counter!(crate::metrics::CACHE_LOOKUPS, "outcome" => outcome.label()).increment(1);
        self.stats.record(url, processing_time);
        self.history.record(processing_time);
        Ok(Answer {
            classification,
            processing_time,
        })
    }
}
