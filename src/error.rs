//! The one table from failures to HTTP status and stable error code. Every error a client can see
//! is an `ApiError`; its JSON body is `{"error": {"code": "...", "message": "..."}}`.
//!
//! Each layer's own errors become variants here: auth and storage below, the classify stages in
//! `classify/errors.rs` (so the classify use case, which answers `ApiError`, is not also below
//! this module).
use serde::Serialize;
use warp::http::StatusCode;

use crate::auth::AuthError;
use crate::history::Unavailable;
use crate::ratelimit::Refused;
use crate::storage::StorageError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidUrl(String),
    #[error("{0}")]
    UrlNotAllowed(String),
    #[error("{0}")]
    ImageTooLarge(String),
    #[error("the request body is larger than {0} bytes")]
    RequestTooLarge(u64),
    #[error(
        "Content-Type must be application/json, multipart/form-data, \
         image/jpeg|png|gif|webp|bmp or application/octet-stream"
    )]
    UnsupportedMediaType,
    #[error("{0}")]
    UnsupportedImage(String),
    #[error("{0}")]
    Upstream(String),
    #[error("timed out fetching the image")]
    UpstreamTimeout,
    #[error("the service is busy, try again shortly")]
    Overloaded,
    /// The shared store (Redis) is unreachable; answered at once, with `Retry-After`.
    #[error("the shared store is unavailable, try again shortly")]
    StorageUnavailable,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    #[error("a Content-Length header is required")]
    LengthRequired,
    #[error("missing bearer token (Authorization: Bearer <token>)")]
    MissingToken,
    #[error("invalid or expired token")]
    InvalidToken,
    /// A valid token whose user lacks the role the endpoint needs (`.0` names it).
    #[error("this endpoint needs a token of a user with the `{0}` role")]
    Forbidden(&'static str),
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed login attempts; retry in {0} s")]
    TooManyAttempts(u64),
    /// Over a per-client rate limit: `budget` names it (`all` or `cold`), `.1` is Retry-After.
    #[error("rate limit `{0}` reached; retry in {1} s")]
    RateLimited(&'static str, u64),
    /// The cause is logged where it happens, never sent to the client.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::InvalidUrl(_) => StatusCode::BAD_REQUEST,
            Self::UrlNotAllowed(_) | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::MissingToken | Self::InvalidToken | Self::InvalidCredentials => {
                StatusCode::UNAUTHORIZED
            }
            Self::TooManyAttempts(_) | Self::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::ImageTooLarge(_) | Self::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UnsupportedImage(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Overloaded | Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidUrl(_) => "invalid_url",
            Self::UrlNotAllowed(_) => "url_not_allowed",
            Self::ImageTooLarge(_) => "image_too_large",
            Self::RequestTooLarge(_) => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnsupportedImage(_) => "unsupported_image",
            Self::Upstream(_) => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Overloaded => "overloaded",
            Self::StorageUnavailable => "storage_unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::LengthRequired => "length_required",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::Forbidden(_) => "forbidden",
            Self::InvalidCredentials => "invalid_credentials",
            Self::TooManyAttempts(_) => "too_many_attempts",
            Self::RateLimited(..) => "rate_limited",
            Self::Internal => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::MissingToken => Self::MissingToken,
            AuthError::InvalidToken(ref reason) => {
                // The reason may hold attacker-supplied Datalog: debug level, never to the client.
                tracing::debug!(reason, "token refused");
                Self::InvalidToken
            }
            AuthError::MissingRole(role) => Self::Forbidden(role.as_str()),
            AuthError::InvalidCredentials
            | AuthError::InvalidUsername(_)
            | AuthError::InvalidPassword(_)
            | AuthError::UnknownUser(_) => Self::InvalidCredentials,
            AuthError::TooManyAttempts { .. } => {
                Self::TooManyAttempts(e.retry_after_secs().unwrap_or(60))
            }
            // An outage, not a bug: the auth store logs it once.
            AuthError::Unavailable(cause) => {
                tracing::debug!(error = %cause, "shared store unavailable");
                Self::StorageUnavailable
            }
            AuthError::UserExists(_)
            | AuthError::Key(_)
            | AuthError::Db(_)
            | AuthError::Internal(_) => {
                tracing::error!(error = %e, "authentication failed internally");
                Self::Internal
            }
        }
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        Self::RateLimited(r.budget.name(), r.retry_after_secs)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            // An outage, not a bug: the client may retry; the backend logs the cause.
            StorageError::Redis(cause) => {
                tracing::debug!(error = %cause, "shared store unavailable");
                Self::StorageUnavailable
            }
            e => {
                tracing::error!(error = %e, "storage failed");
                Self::Internal
            }
        }
    }
}

/// A history source without a stand-in that failed: a storage error keeps its meaning (a Redis
/// outage is `storage_unavailable`, as for `/report`); anything else is a bug.
impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        match e.cause.downcast::<StorageError>() {
            Ok(storage) => Self::from(*storage),
            Err(cause) => {
                tracing::error!(error = %cause, source = e.source_name, "history source failed");
                Self::Internal
            }
        }
    }
}
