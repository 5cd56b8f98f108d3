//! Routes. Each endpoint is a small filter in its own file; `routes` composes them and turns every
//! rejection into the JSON error body.
mod auth;
mod classify;
mod history;
mod rejection;
mod reply;
mod report;
mod web;

use std::convert::Infallible;
use warp::{Filter, Reply};

use crate::state::AppState;

pub use reply::error_response;

pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    classify::route(state.clone())
        .or(report::route(state.clone()))
        .unify()
        .or(auth::token_route(state.clone()))
        .unify()
        .or(auth::secret_route(state.clone()))
        .unify()
        .or(history::route(state))
        .unify()
        .or(web::route())
        .unify()
        .recover(rejection::handle)
}

/// Hands the shared state to a handler.
fn with_state(state: AppState) -> impl Filter<Extract = (AppState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}
