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

/// Every method a route answers; a preflight may be for any path.
const ALLOW_METHODS: &str = "GET, HEAD, POST";
/// What a page may send besides the CORS-safe headers: JSON bodies, bearer tokens, its own ids.
const ALLOW_HEADERS: &str = "Content-Type, Authorization, X-Request-Id";
/// What a page's script may read besides the CORS-safe headers: the id to quote in a bug
/// report, and how long to wait after a 429 or 503.
const EXPOSE_HEADERS: &str = "X-Request-Id, Retry-After";
/// How long a browser may reuse a preflight answer, in seconds: ten minutes keeps the extra
/// round trip rare, yet a changed `--cors-origins` reaches browsers soon (Chromium caps it at 2 h).
const MAX_AGE_SECS: u32 = 600;

/// The pages allowed to call the API, from `--cors-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS at all: answers carry no CORS headers, as without this module (an empty value).
    Off,
    /// `*`: any page.
    Any,
    /// Each in the form browsers send in `Origin`: lower case, no default port, no path.
    Only(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    /// `*`, or comma-separated `scheme://host[:port]` (http or https); empty items are skipped,
    /// and nothing at all is `Off` (so an empty `CLASSIFIER_CORS_ORIGINS=` means unset).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if items == ["*"] {
            return Ok(Self::Any);
        }
        if items.contains(&"*") {
            return Err("`*` allows every origin; give it alone, not in a list".into());
        }
        if items.is_empty() {
            return Ok(Self::Off);
        }
        items
            .into_iter()
            .map(parse_origin)
            .collect::<Result<_, _>>()
            .map(Self::Only)
    }
}

/// One origin as a browser serializes it, or why the text is not one.
fn parse_origin(text: &str) -> Result<String, String> {
    let bad =
        |why: &str| format!("`{text}` is not an origin: {why} (e.g. https://promo.example.com)");
    // The URL parser reads "https://a.com/" as "https://a.com"; only the text shows a path.
    let Some((_, authority)) = text.split_once("://") else {
        return Err(bad("it must start with http:// or https://"));
    };
    if authority.contains(['/', '\\', '?', '#']) {
        return Err(bad("nothing may follow host[:port], not even a /"));
    }
    if authority.contains('@') {
        return Err(bad("it must not hold a user name or password"));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    Ok(url.origin().ascii_serialization())
}

impl CorsOrigins {
    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match self {
            Self::Off => None,
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Only(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes() == origin.as_bytes())
                .then(|| origin.clone()),
        }
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
            let allowed = for_preflight.allow(&origin);
            async move { allowed.map(preflight_response).ok_or_else(warp::reject) }
        });
    let origin = warp::header::value("origin")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
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
    if let Some(allow_origin) = origin.and_then(|o| origins.allow(&o)) {
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

    fn only(list: &[&str]) -> CorsOrigins {
        CorsOrigins::Only(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn origins_parse_to_what_browsers_send() {
        let parsed: CorsOrigins = " https://Promo.Example.com , http://127.0.0.1:8081,"
            .parse()
            .unwrap();
        assert_eq!(
            parsed,
            only(&["https://promo.example.com", "http://127.0.0.1:8081"])
        );
        // Browsers leave the scheme's default port out of `Origin`.
        let parsed: CorsOrigins = "https://a.com:443,http://[::1]:80".parse().unwrap();
        assert_eq!(parsed, only(&["https://a.com", "http://[::1]"]));
        assert_eq!("*".parse::<CorsOrigins>(), Ok(CorsOrigins::Any));
        assert_eq!("".parse::<CorsOrigins>(), Ok(CorsOrigins::Off));
        assert_eq!(" , ".parse::<CorsOrigins>(), Ok(CorsOrigins::Off));
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_reason() {
        let cases = [
            ("https://a.com/", "nothing may follow"),
            ("https://a.com/app", "nothing may follow"),
            ("https://a.com?x", "nothing may follow"),
            ("https://u:p@a.com", "user name"),
            ("a.com", "must start with"),
            ("ftp://a.com", "http or https"),
            ("https://", "empty host"),
            ("https://a.com:99999", "port"),
            ("*,https://a.com", "alone"),
        ];
        for (text, why) in cases {
            let error = text.parse::<CorsOrigins>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

    #[test]
    fn only_listed_origins_match_and_any_sends_a_star() {
        let listed = only(&["https://a.com"]);
        let from = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(
            listed.allow(&from("https://a.com")),
            Some(from("https://a.com"))
        );
        for other in [
            "https://b.com",
            "http://a.com",
            "https://a.com:8443",
            "null",
        ] {
            assert_eq!(listed.allow(&from(other)), None, "{other}");
        }
        assert_eq!(CorsOrigins::Any.allow(&from("null")), Some(from("*")));
        assert_eq!(CorsOrigins::Off.allow(&from("https://a.com")), None);
    }
}
