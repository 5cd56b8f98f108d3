//! GET /report, and the statistics behind it across restarts, SIGKILL and bad data dirs.
use crate::helpers::{spawn_app, FixtureServer};
use crate::process::start_server;
use serde_json::Value;
use warp::http::StatusCode;

#[tokio::test]
async fn empty_store_reports_an_empty_list() {
    let app = spawn_app().await;
    assert!(app.report().await.is_empty());
}

#[tokio::test]
async fn top_ten_by_count_then_url_with_exact_times() {
    let app = spawn_app().await;
    // 12 distinct URLs (all the same photo, told apart by the query): URL i is asked i+1 times,
    // except that 10 and 11 tie with 9 asks... see `asks`.
    let asks = [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 1];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); asks.len()];
    for (i, &n) in asks.iter().enumerate() {
        for _ in 0..n {
            let (status, body) = app
                .classify_fixture(&format!("/images/cat.bmp?i={i:02}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            times[i].push(body["processing_time"].as_str().unwrap().parse().unwrap());
        }
    }
    let report = app.report().await;
    assert_eq!(report.len(), 10);
    let order: Vec<String> = report
        .iter()
        .map(|e| e["image_url"].as_str().unwrap().to_owned())
        .collect();
    let url = |i: usize| app.fixtures.url(&format!("/images/cat.bmp?i={i:02}"));
    // count desc; the three 9s in URL order; the two 1s are left out.
    let expected: Vec<String> = [8, 9, 10, 7, 6, 5, 4, 3, 2, 1]
        .iter()
        .map(|&i| url(i))
        .collect();
    assert_eq!(order, expected);
    for entry in &report {
        let i: usize = entry["image_url"]
            .as_str()
            .unwrap()
            .rsplit('=')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(entry["count"], asks[i]);
        let t = &times[i];
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.iter().copied().fold(0.0, f64::max);
        let avg = t.iter().sum::<f64>() / t.len() as f64;
        // Answers carry 3 decimals; the report keeps full precision.
        let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= 0.0006;
        assert!(
            close(&entry["min_processing_time"], min),
            "{entry} vs {t:?}"
        );
        assert!(
            close(&entry["max_processing_time"], max),
            "{entry} vs {t:?}"
        );
        assert!(
            close(&entry["avg_processing_time"], avg),
            "{entry} vs {t:?}"
        );
        assert_eq!(entry.as_object().unwrap().len(), 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_requests_survive_sigkill_beyond_one_flush_window() {
    let fixtures = FixtureServer::start().await;
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_owned();
    let image = fixtures.url("/images/cat.bmp");
    let flush = ["--stats-flush-interval", "100ms"];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let server = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || start_server(&dir, &flush).unwrap()
    })
    .await
    .unwrap();
    for _ in 0..5 {
        let response = client
            .post(server.url("/classify-image"))
            .json(&serde_json::json!({ "image_url": image }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // More than one window: everything acknowledged so far must be on disk.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    // These may or may not be lost: they are inside the last window.
    for _ in 0..3 {
        client
            .post(server.url("/classify-image"))
            .json(&serde_json::json!({ "image_url": image }))
            .send()
            .await
            .unwrap();
    }
    server.sigkill();

    let server = tokio::task::spawn_blocking(move || start_server(&dir, &flush).unwrap())
        .await
        .unwrap();
    let report: Value = client
        .get(server.url("/report"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let count = report[0]["count"].as_u64().unwrap();
    assert!((5..=8).contains(&count), "count after SIGKILL: {count}");
    // The cache entry, committed with the stats, also survived: no new download.
    let hits = fixtures.hits("/images/cat.bmp");
    client
        .post(server.url("/classify-image"))
        .json(&serde_json::json!({ "image_url": image }))
        .send()
        .await
        .unwrap();
    assert_eq!(fixtures.hits("/images/cat.bmp"), hits);
    let (status, _) = tokio::task::spawn_blocking(move || server.sigterm())
        .await
        .unwrap();
    assert!(status.success(), "graceful stop exits 0: {status}");
}

#[test]
fn a_corrupt_or_unusable_data_dir_fails_at_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("classifier.redb"), vec![0x5a; 8192]).unwrap();
    let err = start_server(dir.path(), &[])
        .err()
        .expect("must not start on a corrupt file");
    assert!(!err.starts_with("exit status: 0"), "{err}");
    assert!(err.contains("classifier.redb"), "names the file: {err}");

    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = start_server(&file, &[])
        .err()
        .expect("must not start on a file as data dir");
    assert!(!err.starts_with("exit status: 0"), "{err}");
    assert!(err.contains("not-a-dir"), "names the path: {err}");
}
