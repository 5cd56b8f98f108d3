//! Two replicas on one Redis (`--redis-url`): one cache, one single flight, one report.
use crate::helpers::{
    error_code, start_app, start_app_with_clock, test_settings, FixtureServer, TestApp,
};
use classifier_api::clock::ManualClock;
use classifier_api::storage::redis_server::RedisServer;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use warp::http::StatusCode;

async fn replica(redis: &RedisServer, prefix: &str) -> TestApp {
    replica_with(redis, prefix, &[]).await
}

/// A replica on `clock` (the one that dates each request's minute).
async fn replica_on(redis: &RedisServer, prefix: &str, clock: &ManualClock) -> TestApp {
    let (settings, data_dir) = replica_settings(redis, prefix, &[]);
    let fixtures = FixtureServer::start().await;
    start_app_with_clock(settings, fixtures, data_dir, Arc::new(clock.clone())).await
}

/// A replica's settings on `redis` under `prefix` (flushing statistics every 10 ms), with
/// `extra` flags, and the data dir it is given (and does not use).
pub(crate) fn replica_settings(
    redis: &RedisServer,
    prefix: &str,
    extra: &[&str],
) -> (classifier_api::config::Settings, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        url.as_str(),
        "--redis-prefix",
        prefix,
        "--stats-flush-interval",
        "10ms",
    ];
    args.extend_from_slice(extra);
    (test_settings(data_dir.path(), &args), data_dir)
}

async fn replica_with(redis: &RedisServer, prefix: &str, extra: &[&str]) -> TestApp {
    let (settings, data_dir) = replica_settings(redis, prefix, extra);
    start_app(settings, FixtureServer::start().await, data_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_results_single_flight_and_the_report() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis, "p").await, replica(&redis, "p").await);
    // Both replicas ask for one image served by a's fixture server, at once: one download.
    let image = a.fixtures.url("/delayed/cat.bmp");
    let requests: Vec<_> = (0..6)
        .map(|i| {
            let (client, url) = if i % 2 == 0 {
                (&a.client, a.url("/classify-image"))
            } else {
                (&b.client, b.url("/classify-image"))
            };
            client
                .post(url)
                .json(&serde_json::json!({ "image_url": image }))
                .send()
        })
        .collect();
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(
        a.fixtures.hits("/delayed/cat.bmp"),
        1,
        "one download for both replicas"
    );
    // Later requests on either are cache hits.
    assert_eq!(b.classify(&image).await.0, StatusCode::OK);
    assert_eq!(a.fixtures.hits("/delayed/cat.bmp"), 1);
    // One table: each replica's report counts all 7 once both have flushed.
    let mut counts = (0, 0);
    for _ in 0..100 {
        counts = (
            a.report().await[0]["count"].as_u64().unwrap(),
            b.report().await[0]["count"].as_u64().unwrap(),
        );
        if counts == (7, 7) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(counts, (7, 7));
    // Another prefix is another deployment on the same Redis.
    let c = replica(&redis, "other").await;
    assert!(c.report().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_classify_still_answers_and_the_report_says_503() {
    let redis = RedisServer::start();
    let app = replica(&redis, "p").await;
    assert_eq!(
        app.classify_fixture("/images/cat.bmp").await.0,
        StatusCode::OK
    );
    drop(redis);
    // A new image: computed here without the shared lease or cache.
    assert_eq!(
        app.classify_fixture("/images/bird.bmp").await.0,
        StatusCode::OK
    );
    let response = app.client.get(app.url("/report")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "storage_unavailable");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_start_with_a_clear_message() {
    let data_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://user:hunter2@127.0.0.1:{port}/");
    let args = ["--redis-url", &url, "--redis-connect-timeout", "1s"];
    let settings = test_settings(data_dir.path(), &args);
    let started = std::time::Instant::now();
    let error = classifier_api::startup::Application::build(settings)
        .await
        .err()
        .expect("refused");
    // It retried for about the second it was given, not forever.
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(700),
        "{waited:?}"
    );
    let message = format!("{error:#}");
    assert!(
        message.contains("Redis at redis://user:redacted@127.0.0.1"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_enforce_one_rate_limit_and_limit_alone_without_it() {
    let redis = RedisServer::start();
    let limit = ["--rate-limit", "3/min"];
    let (a, b) = (
        replica_with(&redis, "p", &limit).await,
        replica_with(&redis, "p", &limit).await,
    );
    assert_eq!(
        [
            statuses(&a).await,
            statuses(&b).await,
            statuses(&a).await,
            statuses(&b).await
        ],
        [200, 200, 200, 429]
    );
    // Redis gone: each replica has its own (fresh) budget, and nothing answers 5xx.
    drop(redis);
    for app in [&a, &b] {
        let seen: Vec<u16> = futures_util::future::join_all((0..4).map(|_| statuses(app))).await;
        assert_eq!(seen.iter().filter(|s| **s == 200).count(), 3, "{seen:?}");
        assert_eq!(seen.iter().filter(|s| **s == 429).count(), 1, "{seen:?}");
    }
}

async fn statuses(app: &TestApp) -> u16 {
    app.classify_fixture("/images/cat.bmp").await.0.as_u16()
}

/// Replicas often start with Redis: start-up waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_redis_that_comes_up_late() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late = tokio::task::spawn_blocking(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        RedisServer::start_on(port)
    });
    let data_dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{port}/");
    let settings = test_settings(data_dir.path(), &["--redis-url", &url]);
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let _redis = late.await.unwrap();
    assert_eq!(
        app.classify_fixture("/images/cat.bmp").await.0,
        StatusCode::OK
    );
}

/// A loaded test machine can take longer than the default 250 ms to answer a login's lookup;
/// these tests are about sharing, not timeouts.
const PATIENT: &[&str] = &["--redis-timeout", "2s"];

/// The admin CLI against the replicas' Redis, while they run.
fn redis_cli(redis: &RedisServer, prefix: &str, args: &[&str], stdin: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let url = redis.url();
    let env = [
        ("CLASSIFIER_REDIS_URL", url.as_str()),
        ("CLASSIFIER_REDIS_PREFIX", prefix),
    ];
    let out = crate::secret::cli(scratch.path(), args, stdin, &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

async fn token_on(app: &TestApp, password: &str) -> (u16, serde_json::Value) {
    let response = app.login("alice", password).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A token for alice, who must be able to log in.
async fn alice_token(app: &TestApp) -> String {
    let (status, body) = token_on(app, "pw-1").await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn secret_status(app: &TestApp, token: &str) -> u16 {
    let header = format!("Bearer {token}");
    app.secret(Some(&header)).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_users_tokens_revocations_and_the_root_key() {
    let redis = RedisServer::start();
    // Separate data dirs and no --root-key: the key can only be shared through Redis.
    let (a, b) = (
        replica_with(&redis, "p", PATIENT).await,
        replica_with(&redis, "p", PATIENT).await,
    );
    redis_cli(
        &redis,
        "p",
        &["user", "add", "alice", "--password-stdin"],
        "pw-1",
    );
    assert_eq!(redis_cli(&redis, "p", &["user", "list"], ""), "alice\n");

    let token = alice_token(&a).await;
    assert_eq!(secret_status(&b, &token).await, 200);
    let public = redis_cli(&redis, "p", &["key", "public"], "");
    let key: biscuit_auth::PublicKey = public.trim().parse().unwrap();
    biscuit_auth::Biscuit::from_base64(&token, key).expect("signed by the stored key");

    redis_cli(&redis, "p", &["token", "revoke", &token], "");
    assert_eq!(
        [
            secret_status(&a, &token).await,
            secret_status(&b, &token).await
        ],
        [401, 401]
    );
    let fresh = alice_token(&b).await;
    assert_eq!(secret_status(&a, &fresh).await, 200);
    redis_cli(&redis, "p", &["user", "remove", "alice"], "");
    assert_eq!(secret_status(&a, &fresh).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_token_and_secret_fail_closed_with_503_and_recover() {
    let redis = RedisServer::start();
    let app = replica_with(&redis, "p", PATIENT).await;
    redis_cli(
        &redis,
        "p",
        &["user", "add", "alice", "--password-stdin"],
        "pw-1",
    );
    let token = alice_token(&app).await;

    redis.pause();
    let header = format!("Bearer {token}");
    for response in [
        app.login("alice", "pw-1").await,
        app.secret(Some(&header)).await,
    ] {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "storage_unavailable");
    }
    redis.resume();
    let mut statuses = (0, 0);
    for _ in 0..50 {
        statuses = (
            token_on(&app, "pw-1").await.0,
            secret_status(&app, &token).await,
        );
        if statuses == (200, 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(statuses, (200, 200), "back without a restart");
}

/// A rolling deploy onto one shared volume: in Redis mode the data dir is not opened, so two
/// replicas on the same one both start (redb would refuse the second) and it stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_need_no_data_dir_of_their_own() {
    let redis = RedisServer::start();
    let shared = tempfile::tempdir().unwrap();
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    let mut apps = Vec::new();
    for _ in 0..2 {
        let settings = test_settings(shared.path(), &args);
        let keep = tempfile::tempdir().unwrap();
        apps.push(start_app(settings, FixtureServer::start().await, keep).await);
    }
    for app in &apps {
        assert_eq!(
            app.classify_fixture("/images/cat.bmp").await.0,
            StatusCode::OK
        );
    }
    let files: Vec<_> = std::fs::read_dir(shared.path()).unwrap().collect();
    assert!(
        files.is_empty(),
        "nothing written to the data dir: {files:?}"
    );
}

async fn history(app: &TestApp) -> (StatusCode, Value) {
    app.get("/report/history?minutes=60").await
}

/// (minute, requests) of a `/report/history` answer.
fn minutes(body: &Value) -> Vec<(String, u64)> {
    let points = body["points"].as_array().unwrap();
    points
        .iter()
        .map(|p| {
            let minute = p["minute"].as_str().unwrap().to_owned();
            (minute, p["requests"].as_u64().unwrap())
        })
        .collect()
}

/// Both replicas' histories once they agree on `expected` (statistics flush every 10 ms).
async fn agreed_history(a: &TestApp, b: &TestApp, expected: &[(String, u64)]) -> (Value, Value) {
    let mut seen = (Value::Null, Value::Null);
    for _ in 0..100 {
        seen = (history(a).await.1, history(b).await.1);
        if minutes(&seen.0) == expected && seen.0 == seen.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

/// `/report/history` on Redis is the fleet's: every replica answers the same figures, from
/// Redis; while Redis is gone it says 503 (as `/report` does), and it recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_one_fleet_history_and_503_while_redis_is_gone() {
    let redis = RedisServer::start();
    let port = redis.port;
    // 2026-11-26T19:00:10Z, then 19:02:10Z: two minutes with traffic, one quiet between.
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_610));
    let (a, b) = (
        replica_on(&redis, "h", &clock).await,
        replica_on(&redis, "h", &clock).await,
    );
    assert_eq!(
        a.classify_fixture("/images/cat.bmp").await.0,
        StatusCode::OK
    );
    assert_eq!(
        b.classify_fixture("/images/bird.bmp").await.0,
        StatusCode::OK
    );
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        b.classify_fixture("/images/cat.bmp").await.0,
        StatusCode::OK
    );
    let expected =
        [("2026-11-26T19:00:00Z", 2), ("2026-11-26T19:02:00Z", 1)].map(|(m, n)| (m.to_owned(), n));
    let (on_a, on_b) = agreed_history(&a, &b, &expected).await;
    assert_eq!(minutes(&on_a), expected, "{on_a}");
    assert_eq!(on_a, on_b, "identical on both replicas");
    assert_eq!(on_a["source"], "redis");

    drop(redis);
    let response = a.client.get(a.url("/report/history")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "storage_unavailable");

    let _redis = RedisServer::start_on(port);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = history(&a).await.0;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK, "back by itself");
}
