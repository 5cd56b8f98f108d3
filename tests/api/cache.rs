//! The per-URL cache: TTL on an injected clock, single flight, errors never cached, restarts.
use crate::helpers::{error_code, spawn_app, start_app, test_settings, FixtureServer};
use classifier_api::clock::ManualClock;
use std::time::{Duration, SystemTime};
use warp::http::StatusCode;

#[tokio::test]
async fn fresh_then_cached_then_expired_downloads_again() {
    let clock = ManualClock::new(SystemTime::now());
    let app = crate::helpers::spawn_app_with_clock(&clock, &["--cache-ttl", "1h"]).await;
    let path = "/images/cat.bmp";

    let (status, first) = app.classify_fixture(path).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(app.fixtures.hits(path), 1);

    // The same image under another spelling of the URL is the same cache entry.
    let respelled = app.fixtures.url(path).replace("http://", "HTTP://") + "#fragment";
    clock.advance(Duration::from_secs(3599));
    let (status, second) = app.classify(&respelled).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.fixtures.hits(path), 1, "served from the cache");
    assert_eq!(second["classification"], first["classification"]);
    assert_eq!(second["confidence"], first["confidence"]);
    assert_eq!(
        second.as_object().unwrap().len(),
        3,
        "same shape when cached"
    );

    // A different query string is a different image.
    let (status, _) = app.classify_fixture(&format!("{path}?v=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.fixtures.hits(path), 2);

    clock.advance(Duration::from_secs(2));
    let (status, _) = app.classify_fixture(path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.fixtures.hits(path),
        3,
        "expired after an hour: downloaded again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_download_once() {
    let app = spawn_app().await;
    let url = app.fixtures.url("/delayed/cat.bmp");
    let answers = futures_util::future::join_all((0..50).map(|_| app.classify(&url))).await;
    assert_eq!(app.fixtures.hits("/delayed/cat.bmp"), 1);
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["classification"], "Egyptian_cat");
        assert_eq!(body["confidence"], answers[0].1["confidence"]);
    }
    let report = app.report().await;
    assert_eq!(report[0]["count"], 50, "every answer counts, joined or not");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_every_waiter_and_are_not_cached() {
    let app = spawn_app().await;
    let url = app.fixtures.url("/status/404");
    let answers = futures_util::future::join_all((0..10).map(|_| app.classify(&url))).await;
    for (status, body) in &answers {
        assert_eq!(
            (*status, error_code(body)),
            (StatusCode::BAD_GATEWAY, "upstream_error")
        );
    }
    let first_round = app.fixtures.hits("/status/404");
    assert!(first_round >= 1);
    let (status, _) = app.classify(&url).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        app.fixtures.hits("/status/404"),
        first_round + 1,
        "errors are not cached"
    );
    assert!(
        app.report().await.is_empty(),
        "failed requests are not counted"
    );
}

#[tokio::test]
async fn cache_and_report_survive_a_graceful_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(data_dir.path(), &[]);
    let app = start_app(settings.clone(), FixtureServer::start().await, data_dir).await;
    for _ in 0..3 {
        assert_eq!(
            app.classify_fixture("/images/cat.bmp").await.0,
            StatusCode::OK
        );
    }
    let report_before = app.report().await;
    let (fixtures, data_dir) = app.stop().await;

    let app = start_app(settings, fixtures, data_dir).await;
    assert_eq!(app.report().await, report_before);
    let (status, body) = app.classify_fixture("/images/cat.bmp").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        app.fixtures.hits("/images/cat.bmp"),
        1,
        "served from disk after the restart"
    );
    assert_eq!(app.report().await[0]["count"], 4);
}
