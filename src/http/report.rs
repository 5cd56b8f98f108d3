//! GET /report: the 10 most requested image URLs with their counts and processing times.
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::reply::{error_response, json_response};
use super::with_state;
use crate::error::ApiError;
use crate::state::AppState;

/// How many URLs the report lists.
pub const TOP_N: usize = 10;

pub fn route(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("report")
        .and(warp::get())
        .and(with_state(state))
        .then(handle)
}

async fn handle(state: AppState) -> Response {
    match state.stats.top(TOP_N).await {
        Ok(entries) => json_response(&entries),
        Err(e) => {
            tracing::error!(error = %e, "reading the report failed");
            error_response(&ApiError::Internal)
        }
    }
}
