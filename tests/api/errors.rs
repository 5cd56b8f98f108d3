//! Every error code of the table, through HTTP, with its status and JSON body.
use crate::helpers::{error_code, spawn_app, spawn_app_with};
use warp::http::StatusCode;

#[tokio::test]
async fn bad_requests_are_400_415_or_413() {
    let app = spawn_app().await;
    let cases: &[(&[u8], Option<&str>, StatusCode, &str)] = &[
        (
            b"{not json",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            br#"{"image_url": 5}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            br#"{}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            br#"{"image_url": "nope"}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_url",
        ),
        (
            br#"{"image_url": "file:///etc/passwd"}"#,
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_url",
        ),
        (
            br#"{"image_url": "http://a.com/x"}"#,
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            br#"{"image_url": "http://a.com/x"}"#,
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for &(body, content_type, status, code) in cases {
        let (got, answer) = app.post_classify(body.to_vec().into(), content_type).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let huge = format!(r#"{{"image_url": "http://a.com/{}"}}"#, "x".repeat(20_000));
    let (status, body) = app
        .post_classify(huge.into(), Some("application/json"))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large")
    );
}

#[tokio::test]
async fn upstream_failures_are_502_504_413_422() {
    let app = spawn_app_with(&["--fetch-timeout", "1s", "--max-image-bytes", "1000000"]).await;
    let cases = [
        ("/status/404", StatusCode::BAD_GATEWAY, "upstream_error"),
        ("/status/500", StatusCode::BAD_GATEWAY, "upstream_error"),
        ("/redirect/6", StatusCode::BAD_GATEWAY, "upstream_error"),
        ("/slow", StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
        ("/endless", StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        (
            "/text",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_image",
        ),
        (
            "/gen/truncated.png",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_image",
        ),
    ];
    for (path, status, code) in cases {
        let (got, body) = app.classify_fixture(path).await;
        assert_eq!((got, error_code(&body)), (status, code), "{path}: {body}");
    }
    // Nothing listens on port 1.
    let (got, body) = app.classify("http://127.0.0.1:1/x.jpg").await;
    assert_eq!(
        (got, error_code(&body)),
        (StatusCode::BAD_GATEWAY, "upstream_error"),
        "{body}"
    );
}

#[tokio::test]
async fn images_over_the_limits_are_413() {
    // cat.bmp is 523 914 bytes; wide.png claims 60 million pixels in a few kB.
    let app = spawn_app_with(&[
        "--max-image-bytes",
        "100000",
        "--max-image-pixels",
        "1000000",
    ])
    .await;
    for path in ["/images/cat.bmp", "/gen/wide.png"] {
        let (got, body) = app.classify_fixture(path).await;
        assert_eq!(
            (got, error_code(&body)),
            (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nope").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, body) = app.get("/classify-image").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn overload_answers_503_at_once() {
    // One request slot: while /slow holds it, the next request is refused rather than queued.
    let app = spawn_app_with(&["--max-concurrent-requests", "1", "--fetch-timeout", "3s"]).await;
    let slow = app.hold_a_slot().await;
    let started = std::time::Instant::now();
    let (status, body) = app.classify_fixture("/images/cat.bmp").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refusal must be fast"
    );
    slow.abort();
}

#[tokio::test]
async fn wrong_methods_list_the_allowed_ones_and_head_works() {
    let app = spawn_app().await;
    let wrong = app
        .client
        .get(app.url("/classify-image"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.headers()["allow"], "POST");
    let wrong = app.client.delete(app.url("/report")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert_eq!(wrong.headers()["allow"], "GET, HEAD");
    let head = app.client.head(app.url("/report")).send().await.unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn headers_that_are_not_utf8_are_refused_for_what_they_are() {
    let app = spawn_app().await;
    let bad = warp::http::HeaderValue::from_bytes(b"Bearer \xe9").unwrap();
    let response = app
        .client
        .get(app.url("/secret"))
        .header("authorization", bad)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let bad_type = warp::http::HeaderValue::from_bytes(b"application/json\xe9").unwrap();
    let response = app
        .client
        .post(app.url("/classify-image"))
        .header("content-type", bad_type)
        .body(r#"{"image_url":"http://a.com/x.jpg"}"#)
        .send()
        .await
        .unwrap();
    let (status, body) = crate::helpers::read_json(response).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
}
