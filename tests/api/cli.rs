//! `classifier-api classify FILE|URL` as a real process.
use crate::helpers::{fixtures_dir, FixtureServer};
use std::process::Command;

fn classify(args: &[&str]) -> (bool, serde_json::Value) {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_classifier-api"))
        .arg("classify")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), value)
}

#[test]
fn classifies_a_local_file() {
    let path = fixtures_dir().join("images/cat.bmp");
    let (ok, body) = classify(&[path.to_str().unwrap()]);
    assert!(ok, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat");
    assert_eq!(body["confidence"], "0.835");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifies_a_url_and_reports_errors_as_json() {
    let fixtures = FixtureServer::start().await;
    let url = fixtures.url("/images/cat.bmp");
    let missing = fixtures.url("/status/404");
    let (ok, body, refused, not_found) = tokio::task::spawn_blocking(move || {
        let (ok, body) = classify(&[&url, "--allow-private-networks"]);
        // Without the flag a loopback URL is refused, as by the service.
        let (_, refused) = classify(&[&url]);
        let (_, not_found) = classify(&[&missing, "--allow-private-networks"]);
        (ok, body, refused, not_found)
    })
    .await
    .unwrap();
    assert!(ok, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat");
    assert_eq!(refused["error"]["code"], "url_not_allowed");
    assert_eq!(not_found["error"]["code"], "upstream_error");
}

#[test]
fn a_file_that_is_not_an_image_fails_with_unsupported_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let (ok, body) = classify(&[path.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(body["error"]["code"], "unsupported_image");
}
