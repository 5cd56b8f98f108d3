//! Routes. Each endpoint is a small filter in its own file; `routes` composes them, turns every
//! rejection into the JSON error body, and wraps them in CORS and the access log.
mod access_log;
mod auth;
mod classify;
mod client;
mod cors;
mod history;
mod model;
mod ops;
mod ops_auth;
mod rejection;
mod reply;
mod report;
mod web;

use std::convert::Infallible;
use std::time::Instant;
use warp::{Filter, Reply};

use crate::auth::Auth;
use crate::classify::ClassifyService;
use crate::client::TrustedProxies;
use crate::config::CorsOrigins;
use crate::history::History;
use crate::ratelimit::RateLimits;
use crate::report::ReportService;

pub use classify::Metering;
pub use model::ModelInfo;
pub use ops::Ops;
pub use ops_auth::OpsGate;

/// What the routes are built from: one handle per concern, each handed only to its own routes.
#[derive(Clone)]
pub struct Services {
    pub classify: ClassifyService,
    pub model: ModelInfo,
    pub report: ReportService,
    pub history: History,
    pub auth: Auth,
    pub ops: Ops,
    /// Who may read `/report`, `/report/history` and `/metrics` (`--ops-auth`).
    pub ops_gate: OpsGate,
    /// The origins whose pages may call the API from a browser.
    pub cors: CorsOrigins,
    /// The proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
    /// Per-client limits on classify requests.
    pub rate_limits: RateLimits,
}

pub fn routes(
    services: Services,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let model_version = services.model.version();
    let metering = Metering {
        limits: services.rate_limits,
        auth: services.auth.clone(),
    };
    // Boxed (an `Arc`): warp keeps a copy of a filter's not-yet-tried alternatives and later
    // steps in every request's future, so without the boxes each request cloned every route's
    // handles (5% of a cached hit in `perf`); now two reference counts.
    let gate = services.ops_gate;
    let others = model::route(services.model)
        .or(report::route(services.report, gate.clone()))
        .unify()
        .or(auth::token_route(services.auth.clone()))
        .unify()
        .or(auth::secret_route(services.auth))
        .unify()
        .or(ops::routes(services.ops, gate.clone()))
        .unify()
        .or(history::route(services.history, gate))
        .unify()
        .or(web::route())
        .unify()
        .boxed();
    let trusted = &services.trusted_proxies;
    let api = classify::route(services.classify, model_version, metering, trusted)
        .or(others)
        .unify()
        .boxed()
        .recover(rejection::handle)
        .unify();
    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(header_text("x-request-id"))
        .and(client::addr(trusted))
        .and(cors::wrap(services.cors, api))
        .map(access_log::finish)
}

/// A header as text, never a rejection: `warp::header::optional::<String>` rejects a value that
/// is not visible ASCII, which would turn a client's odd byte into a 500. Such bytes become
/// U+FFFD, and the handler then refuses the value for what it is (an invalid token, a non-JSON
/// type).
fn header_text(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    header_or_raw(name, |v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `name`'s value parsed as a `T`, or `None` when the request has none; never a rejection. A
/// value that is not visible ASCII (which `warp::header::optional` rejects) goes through `raw`.
/// The header map is never copied (that was a tenth of a cached hit's time in `perf` when every
/// header read copied it), and an absent header costs no rejection (warp allocates those).
fn header_or_raw<T>(
    name: &'static str,
    raw: fn(warp::http::HeaderValue) -> T,
) -> impl Filter<Extract = (Option<T>,), Error = Infallible> + Clone
where
    T: std::str::FromStr + Send + 'static,
{
    warp::header::optional::<T>(name)
        .or(warp::header::value(name).map(move |v| Some(raw(v))))
        .unify()
        // Unreachable: the first filter takes an absent header, the second any present one.
        .or(warp::any().map(|| None))
        .unify()
}

/// The raw query string, if any (`warp::query::raw` rejects a request that has none).
fn raw_query() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::query::raw()
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
}

/// GET, and HEAD with the same headers and no body (hyper drops it), as HTTP requires.
fn get_or_head() -> impl Filter<Extract = (), Error = warp::Rejection> + Copy {
    warp::get().or(warp::head()).unify()
}

/// Gives a handler its service: a cheap handle, cloned per request.
fn with<T: Clone + Send>(x: T) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || x.clone())
}
