use warp::http::header::RETRY_AFTER;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use crate::error::ApiError;

/// `Retry-After` on a 503, in seconds. Being busy (`overloaded`) lasts until some request in
/// progress finishes, often within a second; one second, the smallest whole value the header
/// can carry, lets a client come back soon without retrying in a tight loop.
const RETRY_UNAVAILABLE_SECS: u64 = 1;

pub fn error_response(error: &ApiError) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(&error.body()), error.status()).into_response();
    let headers = response.headers_mut();
    if error.status() == StatusCode::UNAUTHORIZED {
        headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
    }
    if let ApiError::TooManyAttempts(secs) | ApiError::RateLimited(_, secs) = error {
        headers.insert(RETRY_AFTER, HeaderValue::from(*secs));
    }
    unavailable_says_when(&mut response);
    response
}

/// Every 503 tells the client when to try again (HTTP suggests it; front ends and load
/// balancers back off by it).
pub fn unavailable_says_when(response: &mut Response) {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(RETRY_UNAVAILABLE_SECS));
    }
}

pub fn json_response<T: serde::Serialize>(value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), StatusCode::OK).into_response()
}
