//! GET /report: the 10 most requested image URLs with their counts and processing times.
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::reply::{error_response, json_response};
use super::with_state;
use crate::elastic::Reporter;
use crate::error::ApiError;
use crate::state::AppState;
use crate::stats::UrlStats;

/// How many URLs the report lists.
pub const TOP_N: usize = 10;

pub fn route(state: AppState) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("report")
        .and(super::get_or_head())
        .and(with_state(state))
        .then(handle)
}

async fn handle(state: AppState) -> Response {
    let entries = match state.stats.top(TOP_N).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "reading the report failed");
            return error_response(&ApiError::Internal);
        }
    };
    let response = json_response(&entries);
    if let Some(reporter) = &state.reporter {
        queue_document(reporter, &state, entries).await;
    }
    response
}

/// Writes the report's Elasticsearch document to the local outbox (a redb commit, not a network
/// call); the sender task delivers it. Whatever goes wrong here is logged, never answered.
async fn queue_document(reporter: &Reporter, state: &AppState, entries: Vec<UrlStats>) {
    let totals = match state.stats.totals().await {
        Ok(totals) => totals,
        Err(e) => {
            tracing::warn!(error = %e, "report document not queued: totals unavailable");
            return;
        }
    };
    let document = reporter.document(entries, &totals);
    if let Err(e) = reporter.enqueue(&document).await {
        tracing::warn!(error = %e, "report document not queued");
    }
}
