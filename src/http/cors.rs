//! CORS: lets pages on the origins given by `--cors-origins` call the API from a browser.
//!
//! Written here rather than with `warp::cors()`, which does not fit this API: it rejects any
//! request from an origin it does not allow (a 403, and a rejection our JSON handler would have to
//! know), where a disallowed origin must be served exactly as without CORS, leaving the blocking
//! to the browser; it answers a preflight 200, not 204; and it sends no `Vary: Origin`, so a
//! shared cache could hand one origin's answer to another.
use std::convert::Infallible;
use std::sync::Arc;
use warp::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, VARY,
};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::config::CorsOrigins;

/// Every method a route answers; a preflight may be for any path.
const ALLOW_METHODS: &str = "GET, HEAD, POST";
/// What a page may send besides the CORS-safe headers: JSON bodies, bearer tokens, its own ids.
const ALLOW_HEADERS: &str = "Content-Type, Authorization, X-Request-Id";
/// What a page's script may read besides the CORS-safe headers: the id to quote in a bug
/// report, and how long to wait after a 429 or 503.
const EXPOSE_HEADERS: &str =
    "X-Request-Id, Retry-After, X-Model-Version, RateLimit, RateLimit-Policy";
/// How long a browser may reuse a preflight answer, in seconds: ten minutes keeps the extra
/// round trip rare, yet a changed `--cors-origins` reaches browsers soon (Chromium caps it at 2 h).
const MAX_AGE_SECS: u32 = 600;

/// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
fn allow(origins: &CorsOrigins, origin: &HeaderValue) -> Option<HeaderValue> {
    match origins {
        CorsOrigins::Off => None,
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::Only(list) => list
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
            .then(|| origin.clone()),
    }
}

/// Wraps the API: answers allowed preflights itself (204) and adds the CORS headers to every
/// other answer, errors included, for an allowed origin. With CORS off, or for a disallowed
/// origin, requests go to the API and come back without CORS headers, so an `OPTIONS` that is
/// not an allowed preflight still gets the routes' 405 with `Allow`.
pub fn wrap<F>(
    origins: CorsOrigins,
    api: F,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone
where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let origins = Arc::new(origins);
    let for_preflight = origins.clone();
    let preflight = warp::options()
        .and(warp::header::value("origin"))
        // What the method is does not matter: the answer lists every method a route has.
        .and(warp::header::value("access-control-request-method"))
        .and_then(move |origin: HeaderValue, _method: HeaderValue| {
            let allowed = allow(&for_preflight, &origin);
            async move { allowed.map(preflight_response).ok_or_else(warp::reject) }
        });
    // An odd value as it is: it matches no allowed origin.
    let origin = super::header_or_raw::<HeaderValue>("origin", |v| v);
    let actual = origin
        .and(api)
        .map(move |origin, response| decorate(&origins, origin, response));
    preflight.or(actual).unify()
}

fn preflight_response(allow_origin: HeaderValue) -> Response {
    let mut response = Response::default();
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.insert(VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    response
}

/// With CORS on, every answer depends on the `Origin` sent, so every answer says so to caches.
fn decorate(
    origins: &CorsOrigins,
    origin: Option<HeaderValue>,
    mut response: Response,
) -> Response {
    if *origins == CorsOrigins::Off {
        return response;
    }
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(allow_origin) = origin.and_then(|o| allow(origins, &o)) {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_match_and_any_sends_a_star() {
        let listed = CorsOrigins::Only(vec!["https://a.com".into()]);
        let from = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            allow(&listed, &from("https://a.com")),
            Some(from("https://a.com"))
        );
        for other in [
            "https://b.com",
            "http://a.com",
            "https://a.com:8443",
            "null",
        ] {
            assert_eq!(allow(&listed, &from(other)), None, "{other}");
        }
        assert_eq!(allow(&CorsOrigins::Any, &from("null")), Some(from("*")));
        assert_eq!(allow(&CorsOrigins::Off, &from("https://a.com")), None);
    }
}
