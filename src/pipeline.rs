//! The classification itself, without caching: download, decode + resize (off the async workers),
//! then inference on the model thread.
use bytes::Bytes;

use crate::domain::{Classification, ImageUrl};
use crate::error::ApiError;
use crate::fetch::Fetcher;
use crate::model::{Classifier, INPUT_LEN};
use crate::preprocess::{self, DecodeLimits, ResizeFilter};

#[derive(Clone)]
pub struct Pipeline {
    pub fetcher: Fetcher,
    pub classifier: Classifier,
    pub limits: DecodeLimits,
    pub filter: ResizeFilter,
}

impl Pipeline {
    #[tracing::instrument(name = "classify_url", skip(self), fields(url = %url))]
    pub async fn classify_url(&self, url: &ImageUrl) -> Result<Classification, ApiError> {
        let bytes = self.fetcher.fetch(url).await?;
        self.classify_bytes(bytes).await
    }

    pub async fn classify_bytes(&self, bytes: Bytes) -> Result<Classification, ApiError> {
        let (limits, filter) = (self.limits, self.filter);
        // Decoding a large JPEG takes milliseconds of CPU: keep it off tokio's workers.
        let input = tokio::task::spawn_blocking(move || {
            let mut input = vec![0.0f32; INPUT_LEN].into_boxed_slice();
            preprocess::preprocess(&bytes, &limits, filter, &mut input).map(|()| input)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "preprocessing task failed");
            ApiError::Internal
        })??;
        Ok(self.classifier.classify(input).await?)
    }
}
