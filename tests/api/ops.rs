//! Operability: health, readiness, metrics, request ids, logs, graceful shutdown.
use crate::helpers::{spawn_app, FixtureServer};
use crate::process::{start_server_env, ServerProcess};
use std::time::Duration;

#[tokio::test]
async fn health_readiness_and_spec() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, body) = app.get("/readyz").await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (200, Some("ready"))
    );
    let spec = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.headers()["content-type"], "application/yaml");
    let text = spec.text().await.unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap()
    );
}

#[tokio::test]
async fn metrics_count_requests_and_stages_without_urls() {
    let app = spawn_app().await;
    app.classify_fixture("/images/cat.bmp").await;
    app.classify_fixture("/images/cat.bmp").await;
    app.classify_fixture("/status/404").await;
    let text = app.metrics_text().await;
    for needle in [
        r#"classifier_http_requests_total{route="/classify-image",status="200"}"#,
        r#"classifier_http_requests_total{route="/classify-image",status="502"}"#,
        r#"classifier_cache_lookups_total{outcome="fresh"}"#,
        r#"classifier_cache_lookups_total{outcome="memory_hit"}"#,
        "classifier_download_seconds_bucket",
        "classifier_decode_seconds_bucket",
        "classifier_inference_seconds_bucket",
        "classifier_inference_batch_size_bucket",
        "classifier_inference_queue_depth",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(
        !text.contains("cat.bmp") && !text.contains("127.0.0.1"),
        "no URLs in labels"
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let made = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(made.status(), 404);
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id.is_empty());
    let bad = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "a b")
        .send()
        .await
        .unwrap();
    assert_ne!(bad.headers()["x-request-id"], "a b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_then_exits_0() {
    let fixtures = FixtureServer::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = start(data_dir.path(), &[], vec![]).await;
    let slow = tokio::spawn(classify(&server, fixtures.url("/delayed/cat.bmp")));
    while fixtures.hits("/delayed/cat.bmp") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop(server).await;
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "in-flight request finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_request() {
    let fixtures = FixtureServer::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let server = start(data_dir.path(), &["--log-format", "json"], vec![]).await;
    let response = classify(&server, fixtures.url("/images/cat.bmp"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = stop(server).await;
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect();
    assert_eq!(access.len(), 1, "one line per request:\n{log}");
    let line = &access[0];
    assert_eq!(line["route"], "/classify-image");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "POST");
    assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(line["client"], "127.0.0.1");
}

/// Behind a trusted proxy the access line names the client it forwarded for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_forwarded_client() {
    let data_dir = tempfile::tempdir().unwrap();
    let args = &["--log-format", "json", "--trusted-proxies", "127.0.0.0/8"];
    let server = start(data_dir.path(), args, vec![]).await;
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(server.url("/healthz"))
        .header("x-forwarded-for", "2001:db8::7, 127.0.0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let log = stop(server).await;
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request")
        .unwrap_or_else(|| panic!("no access line in\n{log}"));
    assert_eq!(line["client"], "2001:db8::7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_the_environment_never_reach_the_log() {
    let data_dir = tempfile::tempdir().unwrap();
    let secret_key = biscuit_auth::KeyPair::new().private().to_prefixed_string();
    let server = start(
        data_dir.path(),
        &[
            "--log-format",
            "json",
            "--elasticsearch-url",
            "http://127.0.0.1:1",
            "--elasticsearch-username",
            "elastic",
        ],
        vec![
            ("CLASSIFIER_ROOT_KEY", secret_key.clone()),
            (
                "CLASSIFIER_ELASTICSEARCH_PASSWORD",
                "hunter2-es-pass".into(),
            ),
        ],
    )
    .await;
    let log = stop(server).await;
    assert!(!log.contains(&secret_key), "root key in the log");
    assert!(
        !log.contains("hunter2-es-pass"),
        "Elasticsearch password in the log"
    );
    // The start line prints every setting: both secrets are there, redacted.
    let starting = log
        .lines()
        .find(|l| l.contains("starting classifier-api"))
        .unwrap_or_else(|| panic!("a start line in\n{log}"));
    assert!(
        starting.contains("root_key: Some([redacted])")
            && starting.contains("elasticsearch_password: Some([redacted])"),
        "{starting}"
    );
}

/// `serve` on a fresh port; the process blocks while it starts, so off the async workers.
async fn start(
    data_dir: &std::path::Path,
    args: &'static [&'static str],
    env: Vec<(&'static str, String)>,
) -> ServerProcess {
    let dir = data_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        start_server_env(&dir, args, &env).unwrap()
    })
    .await
    .unwrap()
}

/// SIGTERM; everything it logged, start to exit. Panics unless it exits 0.
async fn stop(server: ServerProcess) -> String {
    let startup = server.startup_lines.join("\n");
    let (status, rest) = tokio::task::spawn_blocking(move || server.sigterm())
        .await
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    format!("{startup}\n{rest}")
}

fn classify(
    server: &ServerProcess,
    image_url: String,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    let request = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(server.url("/classify-image"))
        .json(&serde_json::json!({ "image_url": image_url }));
    request.send()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_command_probes_a_running_server() {
    let app = spawn_app().await;
    let probe = |listen: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_classifier-api"))
            .args(["healthcheck", "--listen", &listen])
            .status()
            .unwrap()
    };
    let up = app.addr.to_string();
    assert!(tokio::task::spawn_blocking(move || probe(up))
        .await
        .unwrap()
        .success());
    let nobody = "127.0.0.1:1".to_owned();
    assert!(!tokio::task::spawn_blocking(move || probe(nobody))
        .await
        .unwrap()
        .success());
}

/// `single_malloc_arena` in the start log: set by the binary itself, left to the operator's
/// `MALLOC_ARENA_MAX` when that is present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_malloc_arena_unless_the_operator_chose_malloc_arena_max() {
    let single_arena_logged = |env: &'static [(&'static str, &'static str)]| {
        let data_dir = tempfile::tempdir().unwrap();
        let server = start_server_env(data_dir.path(), &["--log-format", "json"], env).unwrap();
        let starting = server
            .startup_lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("starting"))
            })
            .expect("a start line");
        starting["single_malloc_arena"].as_bool()
    };
    let operators =
        tokio::task::spawn_blocking(move || single_arena_logged(&[("MALLOC_ARENA_MAX", "2")]));
    assert_eq!(operators.await.unwrap(), Some(false));
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let ours = tokio::task::spawn_blocking(move || single_arena_logged(&[]));
        assert_eq!(ours.await.unwrap(), Some(true));
    }
}
