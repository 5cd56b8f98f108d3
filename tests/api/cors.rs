//! CORS through HTTP: preflights, the headers on real answers (errors too), disallowed origins,
//! CORS off by default, and `Retry-After` on the overloaded 503 readable by a page.
use crate::helpers::{error_code, read_json, spawn_app, spawn_app_with, test_settings, TestApp};
use clap::Parser;
use classifier_api::cli::Cli;
use reqwest::header::HeaderMap;
use reqwest::Method;
use warp::http::StatusCode;

const PROMO: &str = "https://promo.example.com";
const OTHER: &str = "https://elsewhere.example.com";
const API_ROUTES: [&str; 5] = [
    "/classify-image",
    "/report",
    "/report/history",
    "/token",
    "/secret",
];

async fn with_promo_allowed() -> TestApp {
    spawn_app_with(&[
        "--cors-origins",
        "http://localhost:3000, https://Promo.example.com",
    ])
    .await
}

/// What a browser sends before a cross-origin JSON POST with a bearer token.
async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap()
}

async fn post_from(app: &TestApp, origin: &str, body: serde_json::Value) -> reqwest::Response {
    app.client
        .post(app.url("/classify-image"))
        .header("origin", origin)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

fn assert_no_cors_headers(headers: &HeaderMap) {
    let cors: Vec<_> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
}

/// The headers an allowed origin's actual answers carry, whatever their status.
fn assert_readable_by(headers: &HeaderMap, origin: &str) {
    assert_eq!(header(headers, "access-control-allow-origin"), Some(origin));
    assert_eq!(
        header(headers, "access-control-expose-headers"),
        Some("X-Request-Id, Retry-After, X-Model-Version, RateLimit, RateLimit-Policy")
    );
    assert_eq!(header(headers, "vary"), Some("Origin"));
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_204_on_every_api_route() {
    let app = with_promo_allowed().await;
    for path in API_ROUTES {
        let response = preflight(&app, path, PROMO).await;
        assert_eq!(response.status(), 204, "{path}");
        let h = response.headers();
        assert_eq!(
            header(h, "access-control-allow-origin"),
            Some(PROMO),
            "{path}"
        );
        assert_eq!(header(h, "vary"), Some("Origin"));
        assert_eq!(
            header(h, "access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert_eq!(
            header(h, "access-control-allow-headers"),
            Some("Content-Type, Authorization, X-Request-Id")
        );
        assert_eq!(header(h, "access-control-max-age"), Some("600"));
        assert!(
            h.contains_key("x-request-id"),
            "the access log still answered"
        );
        assert!(response.bytes().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_headers_and_options_keeps_its_405() {
    let app = with_promo_allowed().await;
    // As without CORS: the browser sees no Allow-Origin and blocks the request.
    let response = preflight(&app, "/classify-image", OTHER).await;
    assert_no_cors_headers(response.headers());
    assert_eq!(header(response.headers(), "allow"), Some("POST"));
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // The request itself is served; only the page's script may not read the answer.
    let response = post_from(&app, OTHER, serde_json::json!({ "image_url": "nope" })).await;
    assert_eq!(response.status(), 400);
    assert_no_cors_headers(response.headers());
    // An OPTIONS that is no preflight (no Access-Control-Request-Method) is a wrong method.
    let response = app
        .client
        .request(Method::OPTIONS, app.url("/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(header(response.headers(), "allow"), Some("GET, HEAD"));
    assert_no_cors_headers(response.headers());
}

#[tokio::test]
async fn a_classification_from_an_allowed_origin_is_readable() {
    let app = with_promo_allowed().await;
    let url = app.fixtures.url("/images/cat.bmp");
    let response = post_from(&app, PROMO, serde_json::json!({ "image_url": url })).await;
    assert_readable_by(response.headers(), PROMO);
    let (status, body) = read_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat");
}

#[tokio::test]
async fn error_answers_to_an_allowed_origin_are_readable_too() {
    let app = with_promo_allowed().await;
    // From the handler (400), from warp's rejections (404, 405), from auth (401).
    let response = post_from(&app, PROMO, serde_json::json!({ "image_url": "nope" })).await;
    assert_readable_by(response.headers(), PROMO);
    assert_eq!(error_code(&read_json(response).await.1), "invalid_url");
    let requests = [
        (Method::GET, "/nope", "not_found"),
        (Method::GET, "/classify-image", "method_not_allowed"),
        (Method::GET, "/secret", "missing_token"),
    ];
    for (method, path, code) in requests {
        let response = app
            .client
            .request(method, app.url(path))
            .header("origin", PROMO)
            .send()
            .await
            .unwrap();
        assert_readable_by(response.headers(), PROMO);
        assert_eq!(error_code(&read_json(response).await.1), code, "{path}");
    }
}

#[tokio::test]
async fn a_star_allows_any_origin() {
    let app = spawn_app_with(&["--cors-origins", "*"]).await;
    let response = preflight(&app, "/classify-image", OTHER).await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        Some("*")
    );
    let url = app.fixtures.url("/images/cat.bmp");
    let response = post_from(&app, OTHER, serde_json::json!({ "image_url": url })).await;
    assert_eq!(response.status(), 200);
    assert_readable_by(response.headers(), "*");
}

#[tokio::test]
async fn without_the_setting_there_is_no_cors_at_all() {
    let app = spawn_app().await;
    let response = preflight(&app, "/classify-image", PROMO).await;
    assert_eq!(response.status(), 405);
    assert_eq!(header(response.headers(), "allow"), Some("POST"));
    assert_no_cors_headers(response.headers());
    let response = post_from(&app, PROMO, serde_json::json!({ "image_url": "nope" })).await;
    assert_no_cors_headers(response.headers());
    assert!(!response.headers().contains_key("vary"));
}

#[tokio::test]
async fn the_overloaded_503_says_when_to_retry_and_a_page_may_read_it() {
    // One request slot: while /slow holds it, the next request is refused (as in errors.rs).
    let app = spawn_app_with(&[
        "--max-concurrent-requests",
        "1",
        "--fetch-timeout",
        "3s",
        "--cors-origins",
        PROMO,
    ])
    .await;
    let slow = app.hold_a_slot().await;
    let url = app.fixtures.url("/images/cat.bmp");
    let response = post_from(&app, PROMO, serde_json::json!({ "image_url": url })).await;
    assert_eq!(header(response.headers(), "retry-after"), Some("1"));
    assert_readable_by(response.headers(), PROMO);
    let (status, body) = read_json(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    slow.abort();
}

#[test]
fn an_origin_with_a_path_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "https://promo.example.com/",
        "promo.example.com",
        "*,https://a.com",
    ] {
        let args = ["classifier-api", "--cors-origins", bad];
        let error = Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(error.contains("--cors-origins"), "{bad}: {error}");
        assert!(error.contains(bad), "{bad}: {error}");
    }
    // An empty value, as `CLASSIFIER_CORS_ORIGINS=` gives, is the default: off.
    let settings = test_settings(dir.path(), &["--cors-origins", ""]);
    assert_eq!(format!("{:?}", settings.cors_origins), "Off");
    let settings = test_settings(dir.path(), &[]);
    assert_eq!(format!("{:?}", settings.cors_origins), "Off");
}
