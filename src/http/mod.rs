//! Routes. Each endpoint is a small filter in its own file; `routes` composes them and turns every
//! rejection into the JSON error body.
mod access_log;
mod auth;
mod classify;
mod history;
mod ops;
mod rejection;
mod reply;
mod report;
mod web;

use std::convert::Infallible;
use std::time::Instant;
use warp::{Filter, Reply};

use crate::state::AppState;

pub use reply::error_response;

pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let api = classify::route(state.clone())
        .or(report::route(state.clone()))
        .unify()
        .or(auth::token_route(state.clone()))
        .unify()
        .or(auth::secret_route(state.clone()))
        .unify()
        .or(ops::routes(state.clone()))
        .unify()
        .or(history::route(state))
        .unify()
        .or(web::route())
        .unify()
        .recover(rejection::handle)
        .unify();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        // Not `header::optional::<String>`: a non-UTF-8 id would reject the whole request.
        .and(
            warp::header::headers_cloned().map(|h: warp::http::HeaderMap| {
                h.get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            }),
        )
        .and(api)
        .map(access_log::finish)
}

/// Hands the shared state to a handler.
fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
