//! GET /report -> one Elasticsearch document each, against a real osmem-server process
//! (installed by scripts/install-osmem.sh), never slowed or failed by Elasticsearch.
use crate::helpers::{start_app, test_settings, FixtureServer};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use warp::http::StatusCode;

/// `$OSMEM_SERVER`, else `$OSMEM_SERVER_BIN` (the variable the osmem Python package itself
/// honours), else where `scripts/install-osmem.sh` puts it: the order readme "Tests" gives, and
/// the one the unit tests' `src/elastic/test_support.rs` uses.
fn osmem_binary() -> PathBuf {
    ["OSMEM_SERVER", "OSMEM_SERVER_BIN"]
        .into_iter()
        .find_map(std::env::var_os)
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/osmem/bin/osmem-server"),
            PathBuf::from,
        )
}

struct Osmem {
    child: Child,
    url: String,
}

impl Osmem {
    fn start(addr: &str) -> Osmem {
        let binary = osmem_binary();
        let mut child = Command::new(&binary)
            .args(["-addr", addr, "-no-stdin-watch", "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-osmem.sh)", binary.display()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap();
        Osmem {
            child,
            url: ready["url"].as_str().unwrap().to_owned(),
        }
    }

    async fn documents(&self) -> Vec<Value> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .post(format!("{}/classifier-reports/_search", self.url))
            .json(&serde_json::json!({ "size": 1000, "sort": [{ "@timestamp": "asc" }] }))
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return Vec::new();
        }
        let body: Value = response.json().await.unwrap();
        body["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_source"].clone())
            .collect()
    }

    /// The `_id` of every document.
    async fn ids(&self) -> Vec<String> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = client
            .post(format!("{}/classifier-reports/_search", self.url))
            .json(&serde_json::json!({ "size": 1000 }))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["_id"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait_for_documents(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let docs = self.documents().await;
            if docs.len() >= n || Instant::now() > deadline {
                return docs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_report_call_becomes_one_document_with_the_report_in_it() {
    let es = Osmem::start("127.0.0.1:0");
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(
        data_dir.path(),
        &["--elasticsearch-url", &es.url, "--instance-id", "test-1"],
    );
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let model_sha256 = app.get("/model").await.1["sha256"].clone();
    assert_eq!(model_sha256.as_str().map(str::len), Some(64));
    for _ in 0..2 {
        assert_eq!(
            app.classify_fixture("/images/cat.bmp").await.0,
            StatusCode::OK
        );
    }
    // An upload: its row (image_url null, upload_sha256) goes into the document as it is.
    let bird = std::fs::read(crate::helpers::fixtures_dir().join("images/bird.bmp")).unwrap();
    let (status, body) = app.post_classify(bird.into(), Some("image/bmp")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut reports = Vec::new();
    for _ in 0..3 {
        reports.push(app.report().await);
    }
    let docs = es.wait_for_documents(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        es.documents().await.len(),
        3,
        "exactly one document per call"
    );
    for (doc, report) in docs.iter().zip(&reports) {
        assert_eq!(&doc["entries"], &Value::Array(report.clone()));
        assert_eq!(doc["instance_id"], "test-1");
        assert_eq!(doc["model_sha256"], model_sha256);
        assert_eq!(doc["entries_returned"], 2);
        assert_eq!(doc["entries"][1]["image_url"], Value::Null);
        assert_eq!(
            doc["entries"][1]["upload_sha256"].as_str().unwrap().len(),
            64
        );
        assert_eq!(doc["top_count"], 2);
        assert_eq!(doc["total_requests"], 3);
        assert!(doc["overall_avg_processing_time"].as_f64().unwrap() > 0.0);
        assert!(doc["@timestamp"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_down_never_slows_the_report_and_documents_arrive_later() {
    // Reserve a port, then leave it closed: "Elasticsearch is down".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(data_dir.path(), &["--elasticsearch-url", &url]);
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let started = Instant::now();
    for _ in 0..5 {
        app.report().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "report waited for Elasticsearch"
    );
    let es = Osmem::start(&format!("127.0.0.1:{port}"));
    assert_eq!(es.wait_for_documents(5).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_comes_from_the_report_documents_when_elasticsearch_is_configured() {
    use classifier_api::clock::ManualClock;
    let es = Osmem::start("127.0.0.1:0");
    let clock = ManualClock::new(std::time::SystemTime::now());
    let app = crate::helpers::spawn_app_with_clock(&clock, &["--elasticsearch-url", &es.url]).await;
    app.report().await; // anchors: 0 requests so far
    clock.advance(Duration::from_secs(60));
    for path in ["/images/cat.bmp", "/images/cat.bmp", "/images/bird.bmp"] {
        assert_eq!(app.classify_fixture(path).await.0, StatusCode::OK);
    }
    app.report().await;
    es.wait_for_documents(2).await;
    let (status, body) = app.get("/report/history?minutes=10").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], "elasticsearch");
    let points = body["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{body}");
    assert_eq!(points[0]["requests"], 3, "{body}");
    assert!(points[0]["avg_processing_time"].as_f64().unwrap() > 0.0);
}

/// A replica with `--redis-url`: its outbox is the one in Redis under `prefix`. Every replica
/// gets the same instance id, so only the shared sequence keeps their document ids apart.
async fn redis_replica(
    redis: &classifier_api::storage::redis_server::RedisServer,
    es: &Osmem,
) -> crate::helpers::TestApp {
    let extra = ["--elasticsearch-url", &es.url, "--instance-id", "same-host"];
    let (settings, data_dir) = crate::redis::replica_settings(redis, "p", &extra);
    start_app(settings, FixtureServer::start().await, data_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis_deliver_each_report_document_once() {
    let redis = classifier_api::storage::redis_server::RedisServer::start();
    let es = Osmem::start("127.0.0.1:0");
    let (a, b) = (
        redis_replica(&redis, &es).await,
        redis_replica(&redis, &es).await,
    );
    a.report().await;
    b.report().await;
    es.wait_for_documents(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = es.ids().await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "two documents, distinct ids: {ids:?}");
    assert_eq!(es.documents().await.len(), 2, "none lost, none duplicated");
    assert!(ids.iter().all(|id| id.starts_with("same-host-")), "{ids:?}");
}

/// Redis gone: `/report` answers 503 (the statistics are there) and queues nothing; once Redis
/// is back on its port, the next report's document goes out without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_the_report_fails_cleanly_and_delivery_resumes_after() {
    use classifier_api::storage::redis_server::RedisServer;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let es = Osmem::start("127.0.0.1:0");
    let app = redis_replica(&redis, &es).await;
    app.report().await;
    assert_eq!(es.wait_for_documents(1).await.len(), 1);
    drop(redis);
    let response = app.client.get(app.url("/report")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/report").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the report never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(es.wait_for_documents(2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids = es.ids().await;
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{ids:?}");
    drop(redis);
}
