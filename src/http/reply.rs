use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::error::ApiError;

pub fn error_response(error: &ApiError) -> Response {
    warp::reply::with_status(warp::reply::json(&error.body()), error.status()).into_response()
}

pub fn json_response<T: serde::Serialize>(value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), StatusCode::OK).into_response()
}
