//! How the classify stages' failures show to clients: which variant of the one table in
//! [`crate::error`] each becomes.
use super::fetch::FetchError;
use super::image::PreprocessError;
use super::model::InferError;
use crate::error::ApiError;

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotAllowed(_) => Self::UrlNotAllowed(e.to_string()),
            FetchError::TooLarge { .. } => Self::ImageTooLarge(e.to_string()),
            FetchError::Upstream(_) => Self::Upstream(e.to_string()),
            FetchError::Timeout => Self::UpstreamTimeout,
        }
    }
}

impl From<PreprocessError> for ApiError {
    fn from(e: PreprocessError) -> Self {
        match e {
            PreprocessError::TooManyPixels { .. } => Self::ImageTooLarge(e.to_string()),
            PreprocessError::Unsupported(_) | PreprocessError::Corrupt(_) => {
                Self::UnsupportedImage(e.to_string())
            }
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::Overloaded => Self::Overloaded,
            InferError::Engine(_) | InferError::Stopped => {
                tracing::error!(error = %e, "inference failed");
                Self::Internal
            }
        }
    }
}
