//! One log line and one metrics sample per request, and an `X-Request-Id` on every answer
//! (the caller's, when it sent a sane one, else a new one), so a client's report can be matched
//! to our log line.
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use warp::http::{HeaderValue, Method};
use warp::path::FullPath;
use warp::reply::Response;

use crate::telemetry::access::AccessLine;

const HEADER: &str = "x-request-id";

/// The request's route as a metrics label: a fixed set, never the raw path.
fn route_label(path: &str) -> &'static str {
    match path {
        "/classify-image" => "/classify-image",
        "/report" => "/report",
        "/report/history" => "/report/history",
        "/token" => "/token",
        "/secret" => "/secret",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/model" => "/model",
        "/openapi.yaml" => "/openapi.yaml",
        "/" => "/",
        p if p.starts_with("/web/") => "/web/*",
        _ => "other",
    }
}

/// What a 405 answer's `Allow` header lists for a known route (HTTP requires it).
fn allowed_methods(route: &str) -> Option<&'static str> {
    match route {
        "/classify-image" | "/token" => Some("POST"),
        "other" => None,
        _ => Some("GET, HEAD"),
    }
}

/// Up to 128 visible ASCII characters; anything else is replaced, not echoed into our logs.
fn accepted(id: Option<String>) -> Option<String> {
    id.filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
}

/// Unique per process (counter) and across restarts (the process seed): no dependency needed.
fn generate() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = crate::clock::process_seed();
    format!("{seed:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn finish(
    started: Instant,
    method: Method,
    path: FullPath,
    request_id: Option<String>,
    client: Option<IpAddr>,
    mut response: Response,
) -> Response {
    let id = accepted(request_id).unwrap_or_else(generate);
    let route = route_label(path.as_str());
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    crate::telemetry::access::write(&AccessLine {
        method: method.as_str(),
        route,
        status,
        elapsed,
        request_id: &id,
        client,
    });
    crate::metrics::record_request(route, status, elapsed.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    if status == 405 {
        if let Some(allow) = allowed_methods(route) {
            response
                .headers_mut()
                .insert("allow", HeaderValue::from_static(allow));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(accepted(Some("abc-123".into())).as_deref(), Some("abc-123"));
        assert_eq!(accepted(Some(String::new())), None);
        assert_eq!(accepted(Some("has space".into())), None);
        assert_eq!(accepted(Some("x".repeat(129))), None);
        assert_eq!(accepted(Some("é".into())), None);
        assert_ne!(generate(), generate());
    }

    #[test]
    fn routes_are_a_closed_set() {
        assert_eq!(route_label("/report"), "/report");
        assert_eq!(route_label("/anything/else?x=1"), "other");
        assert_eq!(allowed_methods("/token"), Some("POST"));
        assert_eq!(allowed_methods("/metrics"), Some("GET, HEAD"));
        assert_eq!(route_label("/web/app.js"), "/web/*");
    }

    /// A path added to the spec without a label here would count as `other` in the metrics and
    /// answer a wrong method without `Allow`.
    #[test]
    fn every_documented_path_has_its_own_label() {
        let spec = include_str!("../../openapi.yaml");
        let paths: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("  /")?.strip_suffix(':'))
            .collect();
        assert!(paths.len() >= 10, "{paths:?}");
        for path in paths {
            let path = format!("/{path}");
            assert_ne!(route_label(&path), "other", "{path}");
            assert!(allowed_methods(route_label(&path)).is_some(), "{path}");
        }
    }
}
