//! Test helpers: a real `osmem-server` process (an in-memory OpenSearch/Elasticsearch-compatible
//! server from PyPI, installed by `scripts/install-osmem.sh`), small request helpers, and direct
//! access to the outbox tables (documents the service itself would never enqueue, dead letters).
//!
//! The binary is found at `$OSMEM_SERVER`, else `$OSMEM_SERVER_BIN` (the variable the osmem
//! Python package itself honours), else `<crate>/.deps/osmem/bin/osmem-server` (where the install
//! script puts it). Missing binary = failing test with instructions, not a silent skip.
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::Method;
use elasticsearch::Elasticsearch;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::Value;
use url::Url;

use super::client;
use super::document::{document_id, rfc3339_millis};
use super::{ElasticAuth, ElasticConfig, ElasticError, Reporter};
use crate::localdb::schema::DEAD_LETTERS;
use crate::localdb::DbError;

pub(crate) fn osmem_binary() -> PathBuf {
    for var in ["OSMEM_SERVER", "OSMEM_SERVER_BIN"] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/osmem/bin/osmem-server");
    assert!(
        local.is_file(),
        "osmem-server not found at {}: run scripts/install-osmem.sh, or set OSMEM_SERVER to the binary",
        local.display()
    );
    local
}

/// A running osmem-server. Killed on drop; it also exits by itself when this test process dies
/// (`-parent-pid`). Data lives in memory only: a restart starts empty.
pub(crate) struct Osmem {
    child: Option<Child>,
    pub url: Url,
    pub port: u16,
}

impl Osmem {
    /// On a free port of the OS's choosing.
    pub(crate) fn start() -> Osmem {
        Self::spawn("127.0.0.1:0")
    }

    /// On a given port: "the cluster comes back" at the address the reporter already uses.
    pub(crate) fn start_on(port: u16) -> Osmem {
        Self::spawn(&format!("127.0.0.1:{port}"))
    }

    fn spawn(addr: &str) -> Osmem {
        let binary = osmem_binary();
        let mut child = Command::new(&binary)
            .args(["-addr", addr, "-no-stdin-watch", "-no-ja", "-parent-pid"])
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (run scripts/install-osmem.sh or set OSMEM_SERVER)",
                    binary.display()
                )
            });
        let stdout = child.stdout.take().expect("osmem stdout");
        // Read the ready line on a thread so a hung server fails the test instead of hanging it;
        // keep draining afterwards so the server never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            let _ = std::io::copy(&mut reader.by_ref(), &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("osmem-server did not print its URL within 20 s");
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("osmem-server ready line {line:?}: {e}"));
        let url = Url::parse(ready["url"].as_str().expect("url in ready line")).unwrap();
        let port = url.port().expect("port in osmem url");
        Osmem {
            child: Some(child),
            url,
            port,
        }
    }

    /// Stops the server and starts a new, empty one on the same port.
    pub(crate) fn restart(&mut self) {
        self.stop();
        *self = Self::start_on(self.port);
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on (bound, then released). Another process could grab it in between;
/// on a test machine that is unlikely enough.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub(crate) fn local_url(port: u16) -> Url {
    Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()
}

/// Production settings with test-sized timings: retries within tens of milliseconds.
pub(crate) fn test_config(url: Url) -> ElasticConfig {
    ElasticConfig {
        batch_size: 50,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(5),
        ..ElasticConfig::new(url, "test-instance")
    }
}

/// A separate client for the test's own reads (what Kibana or an operator would do).
pub(crate) fn es(url: &Url) -> Elasticsearch {
    client::build(url.clone(), &ElasticAuth::None, Duration::from_secs(10)).unwrap()
}

pub(crate) async fn call(
    es: &Elasticsearch,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = HeaderMap::new();
    headers.insert(
        elasticsearch::http::headers::CONTENT_TYPE,
        elasticsearch::http::headers::HeaderValue::from_static("application/json"),
    );
    let sent = es
        .send(
            method,
            path,
            headers,
            None::<&()>,
            body.map(|b| b.to_string()),
            None,
        )
        .await;
    client::reply(sent).await.unwrap()
}

/// Every document of `index` (after a refresh, as a real cluster needs), as `(id, source)`.
pub(crate) async fn all_docs(es: &Elasticsearch, index: &str) -> Vec<(String, Value)> {
    let (status, _) = call(es, Method::Post, &format!("/{index}/_refresh"), None).await;
    assert_eq!(status, 200, "refresh");
    let (status, body) = call(
        es,
        Method::Post,
        &format!("/{index}/_search"),
        Some(serde_json::json!({"size": 10_000, "query": {"match_all": {}}})),
    )
    .await;
    assert_eq!(status, 200, "search: {body}");
    body["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_owned(), h["_source"].clone()))
        .collect()
}

/// Polls `done` every 10 ms; panics with `what` after `timeout`.
pub(crate) async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Enqueues any JSON object, optionally with a fixed id: how the tests produce documents the
/// cluster refuses, and retries of an already delivered id.
pub(crate) async fn enqueue_raw(
    reporter: &Reporter,
    id: Option<&str>,
    source: &Value,
) -> Result<String, ElasticError> {
    let id = id.map(str::to_owned);
    let at = reporter.shared.clock.now();
    let instance = reporter.shared.instance_id.clone();
    reporter
        .push(source.to_string(), move |seq| {
            id.unwrap_or_else(|| document_id(&instance, at, seq))
        })
        .await
}

/// A row of the dead-letter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    pub id: String,
    /// The document as it was sent (JSON).
    pub source: String,
    /// Elasticsearch's error type and reason, e.g. `mapper_parsing_exception: failed to parse ...`.
    pub reason: String,
    /// When it was refused (RFC 3339).
    pub rejected_at: String,
}

/// The oldest `limit` dead letters (blocking redb work: run it through `LocalDb::run`).
pub(crate) fn dead_letters(db: &Database, limit: usize) -> Result<Vec<DeadLetter>, DbError> {
    let txn = db.begin_read()?;
    let dead = txn.open_table(DEAD_LETTERS)?;
    let mut out = Vec::new();
    for row in dead.iter()?.take(limit) {
        let (_, v) = row?;
        let (id, source, reason, at_ms) = v.value();
        out.push(DeadLetter {
            id: id.to_owned(),
            source: source.to_owned(),
            reason: reason.to_owned(),
            rejected_at: rfc3339_millis(
                std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            ),
        });
    }
    Ok(out)
}
