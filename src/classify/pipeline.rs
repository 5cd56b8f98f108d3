//! The classification itself, without caching: download, decode + resize (off the async workers),
//! then inference on the model thread.
use bytes::Bytes;
use std::time::Instant;

use crate::classify::fetch::Fetcher;
use crate::classify::image::{self, DecodeLimits, PreprocessError, PreprocessOptions};
use crate::classify::model::{Classifier, INPUT_LEN};
use crate::domain::{Classification, ImageUrl};
use crate::error::ApiError;
use crate::metrics as metrics_names;

#[derive(Clone)]
pub struct Pipeline {
    pub fetcher: Fetcher,
    pub classifier: Classifier,
    pub limits: DecodeLimits,
    /// Resize filter, `--jpeg-dct-scaling` and `--exif-orientation`.
    pub options: PreprocessOptions,
}

impl Pipeline {
    #[tracing::instrument(name = "classify_url", skip(self), fields(url = %url))]
    pub async fn classify_url(&self, url: &ImageUrl) -> Result<Classification, ApiError> {
        let bytes = self.download(url).await?;
        self.classify_bytes(bytes).await
    }

    pub async fn download(&self, url: &ImageUrl) -> Result<Bytes, ApiError> {
        let started = Instant::now();
        let bytes = self.fetcher.fetch(url).await?;
        metrics::histogram!(metrics_names::DOWNLOAD_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(bytes)
    }

    pub async fn classify_bytes(&self, bytes: Bytes) -> Result<Classification, ApiError> {
        self.classify_decoded(self.start_decoding(bytes)).await
    }

    /// Starts decode + resize on the blocking pool and returns at once, so that the caller can
    /// hash the same bytes meanwhile: on two cores at c=1 the two overlap instead of queueing.
    pub fn start_decoding(&self, bytes: Bytes) -> Decoding {
        let (limits, options) = (self.limits, self.options);
        let started = Instant::now();
        // Decoding a large JPEG takes milliseconds of CPU: keep it off tokio's workers.
        Decoding(tokio::task::spawn_blocking(move || {
            let mut input = vec![0.0f32; INPUT_LEN].into_boxed_slice();
            let decoded = image::preprocess(&bytes, &limits, &options, &mut input).map(|()| input);
            // Measured here, not where it is awaited: the caller may be busy hashing.
            metrics::histogram!(metrics_names::DECODE_SECONDS)
                .record(started.elapsed().as_secs_f64());
            decoded
        }))
    }

    /// Inference on what [`start_decoding`](Self::start_decoding) produces, or its error.
    pub async fn classify_decoded(&self, decoding: Decoding) -> Result<Classification, ApiError> {
        let input = decoding.0.await.map_err(|e| {
            tracing::error!(error = %e, "preprocessing task failed");
            ApiError::Internal
        })??;
        let started = Instant::now();
        let classification = self.classifier.classify(input).await?;
        metrics::histogram!(metrics_names::INFERENCE_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(classification)
    }
}

/// A decode + resize in progress. Dropping it does not stop it (the blocking pool cannot), it
/// only discards its result: what happens when the bytes' classification turns out cached.
pub struct Decoding(tokio::task::JoinHandle<Result<Box<[f32]>, PreprocessError>>);
