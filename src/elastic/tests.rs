//! End-to-end tests: real redb in temp dirs, a real osmem-server process per test.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elasticsearch::http::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::test_support::{
    all_docs, call, enqueue_raw, es, free_port, local_url, test_config, wait_until, Osmem,
};
use super::*;
use crate::clock::{ManualClock, SystemClock};
use crate::history::HistorySource;
use crate::localdb::LocalDb;

const INDEX: &str = ElasticConfig::DEFAULT_INDEX;
const WAIT: Duration = Duration::from_secs(15);

async fn open_store(dir: &std::path::Path) -> LocalDb {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || LocalDb::open(&dir))
        .await
        .unwrap()
        .unwrap()
}

fn entries(n: u64) -> Vec<UrlStats> {
    (0..n)
        .map(|i| UrlStats {
            image_url: Some(format!("http://img.example/{i}.jpg")),
            upload_sha256: None,
            count: 10 - i,
            min_processing_time: 0.1,
            max_processing_time: 0.9,
            avg_processing_time: 0.5,
        })
        .collect()
}

fn totals(count: u64, avg: f64) -> Totals {
    Totals {
        count,
        min_processing_time: 0.05,
        max_processing_time: 2.0,
        avg_processing_time: avg,
    }
}

/// 2026-11-26T19:00:00Z, a minute boundary.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_600)
}

async fn enqueue_n(reporter: &Reporter, n: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let doc = reporter.document(entries(3), &totals(i + 1, 0.25));
        ids.push(reporter.enqueue(&doc).await.unwrap());
    }
    ids
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_enqueue_becomes_exactly_one_mapped_document() {
    let server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let config = ElasticConfig {
        batch_size: 7, // several bulk requests
        ..test_config(server.url.clone())
    };
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(clock.clone()),
        config,
    )
    .await
    .unwrap();

    let mut ids = Vec::new();
    for i in 0..20u64 {
        clock.advance(Duration::from_secs(1));
        let doc = reporter.document(entries(3), &totals(100 + i, 0.25));
        ids.push(reporter.enqueue(&doc).await.unwrap());
    }
    wait_until("20 documents sent", WAIT, || {
        let s = reporter.stats();
        s.sent == 20 && s.outbox_depth == 0
    })
    .await;

    let client = es(&server.url);
    let docs = all_docs(&client, INDEX).await;
    assert_eq!(docs.len(), 20);
    let got: BTreeSet<&str> = docs.iter().map(|(id, _)| id.as_str()).collect();
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    assert!(
        ids[0].starts_with("test-instance-1795719601000-"),
        "{}",
        ids[0]
    );

    // Fields and JSON types, as the report returned them plus the flat numbers.
    let (_, first) = docs.iter().find(|(id, _)| id == &ids[0]).unwrap();
    assert_eq!(first["@timestamp"], "2026-11-26T19:00:01.000Z");
    assert_eq!(first["instance_id"], "test-instance");
    assert_eq!(first["entries"].as_array().unwrap().len(), 3);
    assert_eq!(first["entries"][0]["image_url"], "http://img.example/0.jpg");
    assert_eq!(first["entries"][0]["count"], 10);
    assert_eq!(first["entries"][0]["avg_processing_time"], 0.5);
    assert_eq!(first["entries_returned"], 3);
    assert_eq!(first["top_count"], 10);
    assert_eq!(first["total_requests"], 100);
    assert!(first["total_requests"].is_u64());
    assert_eq!(first["overall_min_processing_time"], 0.05);
    assert_eq!(first["overall_max_processing_time"], 2.0);
    assert_eq!(first["overall_avg_processing_time"], 0.25);

    // The template's mapping was applied to the index.
    let (status, mapping) = call(&client, Method::Get, &format!("/{INDEX}/_mapping"), None).await;
    assert_eq!(status, 200);
    let props = &mapping[INDEX]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date");
    assert_eq!(props["instance_id"]["type"], "keyword");
    assert_eq!(
        props["entries"]["properties"]["image_url"]["type"],
        "keyword"
    );
    assert_eq!(props["total_requests"]["type"], "long");
    assert_eq!(props["overall_avg_processing_time"]["type"], "double");

    // A numeric (epoch millis) range only matches if @timestamp really is a date: documents
    // 1..=5 are at t0+1s ..= t0+5s.
    let from = 1_795_719_600_000u64 + 1_000;
    let (status, body) = call(
        &client,
        Method::Post,
        &format!("/{INDEX}/_search"),
        Some(json!({"size": 100, "query": {"range": {"@timestamp": {
            "gte": from, "lte": from + 4_000, "format": "epoch_millis"}}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hits"]["hits"].as_array().unwrap().len(), 5);

    let stats = reporter.shutdown(soon()).await;
    assert_eq!(
        stats,
        ReporterStats {
            outbox_depth: 0,
            sent: 20,
            failed_attempts: 0,
            dead_lettered: 0,
            dropped: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_the_dashboard_aggregation() {
    let server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(t0());
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(clock.clone()),
        test_config(server.url.clone()),
    )
    .await
    .unwrap();
    // No index yet: an empty history, not an error.
    assert_eq!(reporter.buckets(10).await.unwrap(), Vec::new());

    // (seconds after t0, total_requests, overall_avg_processing_time)
    let reports = [(10, 3, 0.2), (40, 5, 0.4), (65, 8, 0.3), (180, 9, 0.5)];
    let mut at = 0;
    for (secs, count, avg) in reports {
        clock.advance(Duration::from_secs(secs - at));
        at = secs;
        let doc = reporter.document(entries(2), &totals(count, avg));
        reporter.enqueue(&doc).await.unwrap();
    }
    wait_until("4 documents sent", WAIT, || reporter.stats().sent == 4).await;
    clock.advance(Duration::from_secs(30)); // now = 19:03:30

    let point = |minute: &str, requests_so_far, avg| history::Bucket {
        minute: minute.to_owned(),
        requests_so_far,
        avg_processing_time: avg,
    };
    let history = reporter.buckets(10).await.unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
    // 19:00 holds two reports: max(3, 5) requests, mean(0.2, 0.4) processing time.
    assert_eq!(history[0].minute, "2026-11-26T19:00:00Z");
    assert_eq!(history[0].requests_so_far, 5);
    assert!(
        (history[0].avg_processing_time - 0.3).abs() < 1e-9,
        "{history:?}"
    );
    assert_eq!(history[1], point("2026-11-26T19:01:00Z", 8, 0.3));
    assert_eq!(history[2], point("2026-11-26T19:03:00Z", 9, 0.5));
    // The last 2 minutes (19:01:30 .. 19:03:30) hold only the 19:03 report.
    assert_eq!(
        reporter.buckets(2).await.unwrap(),
        vec![point("2026-11-26T19:03:00Z", 9, 0.5)]
    );
    assert!(reporter.buckets(0).await.unwrap().is_empty());
    // As /report/history answers: requests per minute, the first bucket only anchoring.
    let per_minute: Vec<(String, u64)> = HistorySource::points(&reporter, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.minute, p.requests))
        .collect();
    assert_eq!(
        per_minute,
        [
            ("2026-11-26T19:01:00Z".to_owned(), 3),
            ("2026-11-26T19:03:00Z".to_owned(), 1)
        ]
    );
    reporter.shutdown(soon()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_down_then_back_gets_everything_exactly_once() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(local_url(port)),
    )
    .await
    .unwrap();

    let started = Instant::now();
    let ids = enqueue_n(&reporter, 100).await;
    let took = started.elapsed();
    eprintln!("100 enqueues with the cluster down took {took:?}");
    // Generous sanity bound: each enqueue is one local commit and never waits for the cluster.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(reporter.stats().outbox_depth, 100);
    wait_until("failed attempts while down", WAIT, || {
        reporter.stats().failed_attempts >= 3
    })
    .await;
    assert_eq!(reporter.stats().sent, 0);
    assert_eq!(reporter.stats().outbox_depth, 100);

    let server = Osmem::start_on(port);
    wait_until(
        "100 documents sent after the cluster came back",
        WAIT,
        || {
            let s = reporter.stats();
            s.sent == 100 && s.outbox_depth == 0
        },
    )
    .await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    assert_eq!(docs.len(), 100);
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids.into_iter().collect::<BTreeSet<_>>());
    let stats = reporter.shutdown(soon()).await;
    assert_eq!(
        (stats.sent, stats.dead_lettered, stats.dropped),
        (100, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lost_mid_run_is_retried_until_it_is_back() {
    let mut server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(server.url.clone()),
    )
    .await
    .unwrap();
    enqueue_n(&reporter, 3).await;
    wait_until("3 sent", WAIT, || reporter.stats().sent == 3).await;

    server.stop();
    let later = enqueue_n(&reporter, 4).await;
    wait_until("failed attempts while away", WAIT, || {
        reporter.stats().failed_attempts >= 2
    })
    .await;
    assert_eq!(reporter.stats().outbox_depth, 4);

    // osmem keeps nothing across a restart, so the new server holds exactly what was queued
    // while the old one was gone. (It also lost the template, which a real cluster keeps in its
    // cluster state; the reporter installs the template once per process, so here the new index
    // is mapped dynamically. Irrelevant to what this test checks.)
    server.restart();
    wait_until("4 more sent", WAIT, || {
        let s = reporter.stats();
        s.sent == 7 && s.outbox_depth == 0
    })
    .await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, later.into_iter().collect::<BTreeSet<_>>());
    reporter.shutdown(soon()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_left_at_shutdown_is_delivered_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let ids = {
        let reporter = Reporter::start(
            open_store(tmp.path()).await,
            Arc::new(SystemClock),
            test_config(local_url(port)),
        )
        .await
        .unwrap();
        let ids = enqueue_n(&reporter, 5).await;
        let started = Instant::now();
        let stats = reporter
            .shutdown(Instant::now() + Duration::from_millis(300))
            .await;
        let took = started.elapsed();
        eprintln!("shutdown with the cluster down took {took:?} (deadline 300 ms)");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_eq!((stats.outbox_depth, stats.sent), (5, 0));
        // Enqueued after shutdown: kept for the next start too.
        let late = reporter.document(entries(1), &totals(6, 0.1));
        let mut ids = ids;
        ids.push(reporter.enqueue(&late).await.unwrap());
        ids
        // Reporter and store dropped here: the database file is closed.
    };

    let server = Osmem::start_on(port);
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(local_url(port)),
    )
    .await
    .unwrap();
    assert!(
        reporter.stats().outbox_depth > 0,
        "outbox survived the restart"
    );
    wait_until("6 documents sent after restart", WAIT, || {
        let s = reporter.stats();
        s.sent == 6 && s.outbox_depth == 0
    })
    .await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids.into_iter().collect::<BTreeSet<_>>());
    reporter.shutdown(soon()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_documents_are_dead_lettered_and_the_rest_flows() {
    let server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(server.url.clone()),
    )
    .await
    .unwrap();
    // A good document first, so the index exists with the template's mapping.
    enqueue_n(&reporter, 1).await;
    wait_until("first document sent", WAIT, || reporter.stats().sent == 1).await;

    let bad_date = enqueue_raw(
        &reporter,
        None,
        &json!({"@timestamp": "not a date", "total_requests": 1}),
    )
    .await
    .unwrap();
    let bad_number = enqueue_raw(
        &reporter,
        None,
        &json!({"@timestamp": "2026-11-26T19:00:00Z", "total_requests": "abc"}),
    )
    .await
    .unwrap();
    let good = enqueue_n(&reporter, 1).await;
    wait_until("bad ones dead-lettered, good one sent", WAIT, || {
        let s = reporter.stats();
        s.sent == 2 && s.dead_lettered == 2 && s.outbox_depth == 0
    })
    .await;

    let dead = reporter.shared.store.dead_letters(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [bad_date.as_str(), bad_number.as_str()]
    );
    for d in &dead {
        assert!(
            d.reason.contains("mapper_parsing_exception"),
            "{}",
            d.reason
        );
        assert!(serde_json::from_str::<Value>(&d.source).is_ok());
    }
    assert!(dead[0].source.contains("not a date"));

    // Not retried: nothing changes while the sender idles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = reporter.stats();
    assert_eq!(
        (stats.sent, stats.dead_lettered, stats.failed_attempts),
        (2, 2, 0)
    );
    let docs = all_docs(&es(&server.url), INDEX).await;
    assert_eq!(docs.len(), 2);
    assert!(docs.iter().any(|(id, _)| id == &good[0]));
    reporter.shutdown(soon()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbox_drops_the_oldest() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let config = ElasticConfig {
        outbox_max: 5,
        ..test_config(local_url(port))
    };
    let reporter = Reporter::start(open_store(tmp.path()).await, Arc::new(SystemClock), config)
        .await
        .unwrap();
    let ids = enqueue_n(&reporter, 8).await;
    let stats = reporter.stats();
    assert_eq!((stats.outbox_depth, stats.dropped), (5, 3));
    let waiting: Vec<String> = reporter
        .shared
        .store
        .pending(100)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(waiting, ids[3..]);

    // And exactly those (the newest five) arrive once the cluster is there.
    let server = Osmem::start_on(port);
    wait_until("5 sent", WAIT, || reporter.stats().sent == 5).await;
    let docs = all_docs(&es(&server.url), INDEX).await;
    let got: BTreeSet<String> = docs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, ids[3..].iter().cloned().collect::<BTreeSet<_>>());
    reporter.shutdown(soon()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_twice_is_still_one_document() {
    let server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(server.url.clone()),
    )
    .await
    .unwrap();
    let doc = json!({"@timestamp": "2026-11-26T19:00:00Z", "total_requests": 1});
    // Delivered, then sent again as a retry after a lost answer would be.
    enqueue_raw(&reporter, Some("dup-1"), &doc).await.unwrap();
    wait_until("first copy sent", WAIT, || reporter.stats().sent == 1).await;
    enqueue_raw(&reporter, Some("dup-1"), &doc).await.unwrap();
    wait_until("second copy acknowledged", WAIT, || {
        reporter.stats().sent == 2
    })
    .await;
    // Twice in the same bulk request.
    enqueue_raw(&reporter, Some("dup-2"), &doc).await.unwrap();
    enqueue_raw(&reporter, Some("dup-2"), &doc).await.unwrap();
    wait_until("both copies acknowledged", WAIT, || {
        reporter.stats().sent == 4
    })
    .await;

    let docs = all_docs(&es(&server.url), INDEX).await;
    let mut ids: Vec<String> = docs.into_iter().map(|(id, _)| id).collect();
    ids.sort();
    assert_eq!(ids, ["dup-1", "dup-2"]);
    let stats = reporter.shutdown(soon()).await;
    assert_eq!(
        (
            stats.dead_lettered,
            stats.failed_attempts,
            stats.outbox_depth
        ),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_outbox_when_the_cluster_is_up() {
    let server = Osmem::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = ElasticConfig {
        batch_size: 10,
        ..test_config(server.url.clone())
    };
    let reporter = Reporter::start(open_store(tmp.path()).await, Arc::new(SystemClock), config)
        .await
        .unwrap();
    enqueue_n(&reporter, 60).await;
    let stats = reporter.shutdown(soon()).await;
    assert_eq!((stats.outbox_depth, stats.sent), (0, 60));
    assert_eq!(all_docs(&es(&server.url), INDEX).await.len(), 60);
    // Idempotent.
    assert_eq!(reporter.shutdown(soon()).await, stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_template_is_a_warning_not_a_failure() {
    let server = Osmem::start();
    let client = es(&server.url);
    // Same pattern, same priority: Elasticsearch refuses our template as ambiguous.
    let (status, _) = call(
        &client,
        Method::Put,
        "/_index_template/someone-else",
        Some(
            json!({"index_patterns": ["classifier-reports*"], "priority": 200,
                    "template": {"mappings": {"properties": {"note": {"type": "keyword"}}}}}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let tmp = tempfile::tempdir().unwrap();
    let reporter = Reporter::start(
        open_store(tmp.path()).await,
        Arc::new(SystemClock),
        test_config(server.url.clone()),
    )
    .await
    .unwrap();
    enqueue_n(&reporter, 3).await;
    wait_until("sent despite the refused template", WAIT, || {
        reporter.stats().sent == 3
    })
    .await;
    assert_eq!(reporter.stats().failed_attempts, 0);
    let (_, ours) = call(
        &client,
        Method::Get,
        "/_index_template/classifier-reports",
        None,
    )
    .await;
    assert!(
        ours.get("index_templates").is_none_or(|t| t == &json!([])),
        "{ours}"
    );
    reporter.shutdown(soon()).await;
}

#[tokio::test]
async fn invalid_config_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ElasticConfig {
        index: "Not Valid".into(),
        ..test_config(local_url(9))
    };
    let err = Reporter::start(open_store(tmp.path()).await, Arc::new(SystemClock), config)
        .await
        .unwrap_err();
    assert!(matches!(err, ElasticError::Config(_)), "{err}");
}

/// The Kibana saved objects cannot be imported here (no Kibana), so check what an import would
/// trip over: JSON, stable ids, resolvable references, and fields that the template maps.
#[test]
fn kibana_saved_objects_are_consistent() {
    let ndjson = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kibana/classifier-api.ndjson"
    ));
    let objects: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| (o["type"].as_str().unwrap(), o["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ids,
        [
            ("index-pattern", "classifier-api-reports"),
            ("visualization", "classifier-api-requests-per-minute"),
            ("visualization", "classifier-api-reports-per-minute"),
            ("dashboard", "classifier-api-dashboard"),
        ]
    );
    for o in &objects {
        for r in o["references"].as_array().unwrap() {
            let target = (r["type"].as_str().unwrap(), r["id"].as_str().unwrap());
            assert!(ids.contains(&target), "dangling reference {r}");
        }
    }

    let data_view = &objects[0]["attributes"];
    assert_eq!(data_view["title"], format!("{INDEX}*"));
    assert_eq!(data_view["timeFieldName"], "@timestamp");

    let mapped = template::mappings();
    let field_type = |field: &str| -> Value {
        mapped["properties"]
            .pointer(&format!("/{}/type", field.replace('.', "/properties/")))
            .cloned()
            .unwrap_or(Value::Null)
    };
    for vis in &objects[1..3] {
        let state: Value =
            serde_json::from_str(vis["attributes"]["visState"].as_str().unwrap()).unwrap();
        let source = vis["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"]
            .as_str()
            .unwrap();
        let source: Value = serde_json::from_str(source).unwrap();
        assert_eq!(source["indexRefName"], vis["references"][0]["name"]);
        for agg in state["aggs"].as_array().unwrap() {
            if let Some(field) = agg["params"]["field"].as_str() {
                let ty = field_type(field);
                let ok = match agg["type"].as_str().unwrap() {
                    "max" | "avg" => ty == "long" || ty == "double",
                    "date_histogram" => ty == "date" && agg["params"]["interval"] == "m",
                    "terms" => ty == "keyword",
                    other => panic!("unexpected aggregation {other}"),
                };
                assert!(ok, "{} on {field} ({ty})", agg["type"]);
            }
        }
    }

    let dashboard = &objects[3];
    let panels: Vec<Value> =
        serde_json::from_str(dashboard["attributes"]["panelsJSON"].as_str().unwrap()).unwrap();
    let ref_names: Vec<&str> = dashboard["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for p in &panels {
        let name = format!(
            "{}:{}",
            p["panelIndex"].as_str().unwrap(),
            p["panelRefName"].as_str().unwrap()
        );
        assert!(ref_names.contains(&name.as_str()), "{name}");
    }
    assert_eq!(panels.len(), 2);
}
