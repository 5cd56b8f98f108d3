//! Rejections (warp's "this route did not match or could not read the request") as JSON errors.
use std::convert::Infallible;
use warp::reject::{InvalidHeader, LengthRequired, MethodNotAllowed, PayloadTooLarge, Rejection};
use warp::reply::Response;

use super::reply::error_response;
use crate::error::ApiError;

/// Request bodies are tiny JSON objects; anything bigger is refused before it is read.
pub const MAX_REQUEST_BODY: u64 = 16 * 1024;

pub async fn handle(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::NotFound
    } else if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::RequestTooLarge(MAX_REQUEST_BODY)
    } else if rejection.find::<LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if rejection.find::<InvalidHeader>().is_some() {
        ApiError::InvalidRequest("a request header is malformed".into())
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        ApiError::Internal
    };
    Ok(error_response(&error))
}
