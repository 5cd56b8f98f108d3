use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::error::ApiError;

pub fn error_response(error: &ApiError) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(&error.body()), error.status()).into_response();
    let headers = response.headers_mut();
    if error.status() == StatusCode::UNAUTHORIZED {
        headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    if let ApiError::TooManyAttempts(secs) = error {
        headers.insert("retry-after", HeaderValue::from(*secs));
    }
    response
}

pub fn json_response<T: serde::Serialize>(value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), StatusCode::OK).into_response()
}
