//! What every handler shares. Cheap to clone: everything inside is a handle.
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::domain::{Classification, ImageUrl};
use crate::error::ApiError;
use crate::pipeline::Pipeline;

#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    /// Caps classify requests in progress; when none is left, answer 503 at once rather than
    /// queueing without bound (TEI's `try_acquire_permit`).
    pub permits: Arc<Semaphore>,
}

/// A classification and how long the request took.
pub struct Answer {
    pub classification: Classification,
    pub processing_time: Duration,
}

impl AppState {
    pub async fn classify(&self, url: &ImageUrl, arrived: Instant) -> Result<Answer, ApiError> {
        let _permit = self
            .permits
            .try_acquire()
            .map_err(|_| ApiError::Overloaded)?;
        let classification = self.pipeline.classify_url(url).await?;
        Ok(Answer {
            classification,
            processing_time: arrived.elapsed(),
        })
    }
}
