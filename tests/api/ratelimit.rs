//! Per-client rate limits over HTTP: the answers, the headers, what is charged, and who the
//! client is behind a trusted proxy.
use crate::helpers::{
    error_code, spawn_app_with, start_app, test_settings, FixtureServer, TestApp,
};
use crate::secret::add_user;
use serde_json::{json, Value};
use warp::http::StatusCode;

/// A classify request for a fixture, with extra headers, as the raw response.
async fn classify(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/classify-image"))
        .json(&json!({ "image_url": app.fixtures.url(path) }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn status_and_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let body: Value = response.json().await.unwrap();
    let code = body.get("error").map(|_| error_code(&body).to_owned());
    (status, code.unwrap_or_default())
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn over_the_limit_is_a_429_that_says_when_and_every_answer_says_how_much_is_left() {
    let app = spawn_app_with(&["--rate-limit", "3/min"]).await;
    for left in [2, 1, 0] {
        let response = classify(&app, "/images/cat.bmp", &[]).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-policy"), "\"all\";q=3;w=60");
        let standing = header(&response, "ratelimit");
        assert!(
            standing.starts_with(&format!("\"all\";r={left};t=")),
            "{standing}"
        );
    }
    let response = classify(&app, "/images/cat.bmp", &[]).await;
    // One request per 20 s comes back.
    let retry: u64 = header(&response, "retry-after").parse().unwrap();
    assert!((19..=20).contains(&retry), "{retry}");
    assert!(header(&response, "ratelimit").starts_with("\"all\";r=0;t="));
    // Refused before its body was read: the connection is not reused.
    assert_eq!(header(&response, "connection"), "close");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "rate_limited");
    assert!(body["error"]["message"].as_str().unwrap().contains("`all`"));
    // Uploads draw on the same budget; other endpoints are not limited.
    let upload = app
        .client
        .post(app.url("/classify-image"))
        .header("content-type", "image/bmp")
        .body(std::fs::read(crate::helpers::fixtures_dir().join("images/cat.bmp")).unwrap());
    assert_eq!(upload.send().await.unwrap().status(), 429);
    assert_eq!(app.get("/report").await.0, StatusCode::OK);
    let metrics = app.metrics_text().await;
    assert!(metrics.contains("status=\"429\""), "{metrics}");
}

#[tokio::test]
async fn the_cold_budget_is_charged_only_by_misses_and_a_refused_miss_downloads_nothing() {
    let app = spawn_app_with(&["--rate-limit-cold", "1/h"]).await;
    let first = classify(&app, "/images/cat.bmp", &[]).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "ratelimit-policy"), "\"cold\";q=1;w=3600");
    assert!(header(&first, "ratelimit").starts_with("\"cold\";r=0;t="));
    // Cached: free, however often.
    for _ in 0..5 {
        let hit = classify(&app, "/images/cat.bmp", &[]).await;
        assert_eq!(hit.status(), 200);
        assert!(hit.headers().get("ratelimit").is_none());
    }
    // The same bytes uploaded are a content hit: free too.
    let upload = app
        .client
        .post(app.url("/classify-image"))
        .header("content-type", "application/octet-stream")
        .body(std::fs::read(crate::helpers::fixtures_dir().join("images/cat.bmp")).unwrap());
    assert_eq!(upload.send().await.unwrap().status(), 200);
    // A new image is refused before its download.
    let (status, code) = status_and_code(classify(&app, "/images/bird.bmp", &[]).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(app.fixtures.hits("/images/bird.bmp"), 0);
    assert_eq!(app.fixtures.hits("/images/cat.bmp"), 1);
    // Without a trusted proxy a forwarded address is ignored: still the same client.
    let other = classify(
        &app,
        "/images/bird.bmp",
        &[("x-forwarded-for", "198.51.100.1")],
    )
    .await;
    assert_eq!(other.status(), 429);
}

#[tokio::test]
async fn a_valid_token_is_counted_per_user_and_a_bad_one_per_address() {
    let data_dir = tempfile::tempdir().unwrap();
    add_user(data_dir.path(), "alice", "s3cret-pass");
    let settings = test_settings(
        data_dir.path(),
        &["--rate-limit", "1/min", "--rate-limit-user", "2/min"],
    );
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let login = app
        .client
        .post(app.url("/token"))
        .json(&json!({ "username": "alice", "password": "s3cret-pass" }))
        .send()
        .await
        .unwrap();
    let token: Value = login.json().await.unwrap();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let as_alice = [("authorization", bearer.as_str())];
    for _ in 0..2 {
        let response = classify(&app, "/images/cat.bmp", &as_alice).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-policy"), "\"all\";q=2;w=60");
    }
    assert_eq!(
        classify(&app, "/images/cat.bmp", &as_alice).await.status(),
        429
    );
    // The address has its own budget, which a token that does not verify draws on.
    let bad = [("authorization", "Bearer not-a-token")];
    let response = classify(&app, "/images/cat.bmp", &bad).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "ratelimit-policy"), "\"all\";q=1;w=60");
    assert_eq!(classify(&app, "/images/cat.bmp", &[]).await.status(), 429);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let app = spawn_app_with(&["--rate-limit", "1/min", "--trusted-proxies", "127.0.0.1"]).await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    assert_eq!(
        classify(&app, "/images/cat.bmp", &from("198.51.100.1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        classify(&app, "/images/cat.bmp", &from("198.51.100.1"))
            .await
            .status(),
        429
    );
    // A client's own entry left of the proxy's does not buy a new budget.
    let spoofed = [("x-forwarded-for", "203.0.113.5, 198.51.100.1")];
    assert_eq!(
        classify(&app, "/images/cat.bmp", &spoofed).await.status(),
        429
    );
    assert_eq!(
        classify(&app, "/images/cat.bmp", &from("198.51.100.2"))
            .await
            .status(),
        200
    );
    // One IPv6 host, one /64.
    let v6 = |ip: &'static str| [("forwarded", ip)];
    assert_eq!(
        classify(&app, "/images/cat.bmp", &v6("for=\"[2001:db8:1:2::1]\""))
            .await
            .status(),
        200
    );
    assert_eq!(
        classify(&app, "/images/cat.bmp", &v6("for=\"[2001:db8:1:2::9]\""))
            .await
            .status(),
        429
    );
    // A list that cannot be read counts as the proxy itself (127.0.0.1): its first request.
    assert_eq!(
        classify(&app, "/images/cat.bmp", &from("garbage"))
            .await
            .status(),
        200
    );
    assert_eq!(classify(&app, "/images/cat.bmp", &[]).await.status(), 429);
}

#[tokio::test]
async fn without_limits_no_rate_limit_headers_are_sent() {
    let app = spawn_app_with(&[]).await;
    let response = classify(&app, "/images/cat.bmp", &[]).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("ratelimit").is_none());
    assert!(response.headers().get("ratelimit-policy").is_none());
}
