//! The classify use case: admission, the cache with single flight (by URL, then by content), the
//! pipeline on a miss, then the request's place in the statistics and the history.
//!
//! Every image is cached under its content hash as well as its URL: a URL that misses downloads,
//! hashes, and finds the result by hash if those bytes were classified before (under another URL
//! or uploaded). Uploads go straight to the content level. Both levels are single flights, so
//! concurrent requests for one URL, or for the same bytes, cause one inference.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::flight::{CacheOutcome, SingleFlight};
use super::pipeline::Pipeline;
use crate::domain::{Classification, ContentHash, ImageUrl, Subject};
use crate::error::ApiError;
use crate::history::History;
use crate::storage::Stats;

/// A classification and how long the request took.
pub struct Answer {
    pub classification: Classification,
    pub processing_time: Duration,
}

/// A request's place under `--max-concurrent-requests`, held from before its body is read (an
/// upload's bytes are buffered under it, so their memory is bounded too) to its answer.
pub struct Admission<'a> {
    _permit: SemaphorePermit<'a>,
}

/// Handle to the classify service. Cheap to clone: one reference count, since every request
/// clones it (with a handle per part, the part counts bounced between the two cores' caches:
/// 3% of a cached hit in `perf`).
#[derive(Clone)]
pub struct ClassifyService {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    flight: SingleFlight,
    stats: Stats,
    history: History,
    /// Caps classify requests in progress; when none is left, answer 503 at once rather than
    /// queue without bound behind a model that cannot go faster.
    permits: Semaphore,
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
            inner: Arc::new(Inner {
                pipeline,
                flight,
                stats,
                history,
                permits: Semaphore::new(max_concurrent.max(1)),
            }),
        }
    }

    /// The largest image accepted, downloaded or uploaded (`--max-image-bytes`).
    pub fn max_image_bytes(&self) -> u64 {
        self.inner.pipeline.fetcher.max_bytes()
    }

    /// A place for one request, or `503 overloaded` at once.
    pub fn admit(&self) -> Result<Admission<'_>, ApiError> {
        self.inner
            .permits
            .try_acquire()
            .map(|permit| Admission { _permit: permit })
            .map_err(|_| ApiError::Overloaded)
    }

    /// Cached by URL, else downloaded and classified by content (one download per URL however
    /// many ask at once). Counted under the URL, and only when it succeeds. `cold` is asked
    /// before a download (the cold rate limit); its error is the answer.
    pub async fn classify_url(
        &self,
        _admitted: &Admission<'_>,
        url: ImageUrl,
        arrived: Instant,
        cold: impl Future<Output = Result<(), ApiError>>,
    ) -> Result<Answer, ApiError> {
        let inner = &self.inner;
        // A hit in memory needs none of the handles the computation takes with it.
        if let Some(hit) = inner.flight.memory_get(url.as_str()) {
            return Ok(self.finish(Subject::Url(url), hit, CacheOutcome::MemoryHit, arrived));
        }
        let (pipeline, flight, key) = (inner.pipeline.clone(), inner.flight.clone(), url.clone());
        let (classification, outcome) = inner
            .flight
            .get_or_compute_charged(url.as_str(), cold, move || async move {
                let bytes = pipeline.download(&key).await?;
                // Decoding starts beside the hash rather than after the content lookup: at c=1
                // the second core does it meanwhile. If the content is cached after all, the
                // decode was wasted, but the request was charged already: the download was the
                // cost, whatever the content level finds.
                let decoding = pipeline.start_decoding(bytes.clone());
                let hash = content_hash(&bytes).await?;
                // The decode holds its own reference; the download need not wait for inference.
                drop(bytes);
                let compute = move || async move { pipeline.classify_decoded(decoding).await };
                by_content(&flight, hash, std::future::ready(Ok(())), compute)
                    .await
                    .map(|(c, _)| c)
            })
            .await?;
        Ok(self.finish(Subject::Url(url), classification, outcome, arrived))
    }

    /// Uploaded bytes, by their content hash. Counted under the hash, and only when it succeeds.
    /// `cold` is awaited before an inference.
    pub async fn classify_upload(
        &self,
        _admitted: &Admission<'_>,
        bytes: Bytes,
        arrived: Instant,
        cold: impl Future<Output = Result<(), ApiError>>,
    ) -> Result<Answer, ApiError> {
        let hash = content_hash(&bytes).await?;
        // Decoded only once charged (`cold`): a refused upload costs its hash, never a decode.
        let pipeline = self.inner.pipeline.clone();
        let compute = move || async move { pipeline.classify_bytes(bytes).await };
        let (classification, outcome) = by_content(&self.inner.flight, hash, cold, compute).await?;
        Ok(self.finish(Subject::Upload(hash), classification, outcome, arrived))
    }

    fn finish(
        &self,
        subject: Subject,
        classification: Classification,
        outcome: CacheOutcome,
        arrived: Instant,
    ) -> Answer {
        let processing_time = arrived.elapsed();
        crate::metrics::count_outcome(crate::metrics::CACHE_LOOKUPS, outcome.label());
        self.inner.stats.record(&subject, processing_time);
        self.inner.history.record(processing_time);
        Answer {
            classification,
            processing_time,
        }
    }
}

/// The cached classification of these bytes, or `compute`'s (one inference per content).
async fn by_content<F, Fut>(
    flight: &SingleFlight,
    hash: ContentHash,
    cold: impl Future<Output = Result<(), ApiError>>,
    compute: F,
) -> Result<(Classification, CacheOutcome), ApiError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Classification, ApiError>> + Send + 'static,
{
    let found = flight
        .get_or_compute_charged(&hash.key(), cold, compute)
        .await?;
    crate::metrics::count_outcome(crate::metrics::CONTENT_LOOKUPS, found.1.label());
    Ok(found)
}

/// SHA-256 runs at a few hundred MB/s: tens of milliseconds for a large image, so off tokio's
/// workers like decoding.
async fn content_hash(bytes: &Bytes) -> Result<ContentHash, ApiError> {
    let bytes = bytes.clone();
    tokio::task::spawn_blocking(move || ContentHash::of(&bytes))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "hashing task failed");
            ApiError::Internal
        })
}
