//! `GET /model`, `X-Model-Version`, and cached results filed under the model identity: another
//! model or resize filter on the same data dir never serves the first one's answers.
use crate::helpers::{spawn_app, spawn_app_with, start_app, test_settings, FixtureServer};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

fn asset_sha256(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(relative);
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn get_model_describes_the_embedded_model_and_its_preprocessing() {
    let app = spawn_app().await;
    let (status, model) = app.get("/model").await;
    assert_eq!(status, StatusCode::OK, "{model}");
    assert_eq!(model["name"], "mobilenet_v1_1.0_224");
    assert_eq!(model["format"], "frozen_graph");
    assert_eq!(
        model["sha256"],
        asset_sha256("mobilenet_v1_1.0_224/frozen_graph.pb")
    );
    assert_eq!(
        model["labels_sha256"],
        asset_sha256("imagenet_class_index.json")
    );
    assert_eq!(model["input"], serde_json::json!([224, 224, 3]));
    assert_eq!(model["classes"], 1000);
    assert_eq!(model["resize_filter"], "nearest");
    assert_eq!(model["jpeg_dct_scaling"], false);
    assert_eq!(model["exif_orientation"], "ignore");
    assert_eq!(model["identity"].as_str().map(str::len), Some(64));

    // The other embedded form is other bytes; another filter keeps the model, not the identity.
    let saved = spawn_app_with(&[
        "--model-format",
        "saved-model",
        "--resize-filter",
        "bilinear",
    ])
    .await
    .get("/model")
    .await
    .1;
    assert_eq!(saved["format"], "saved_model");
    assert_eq!(saved["resize_filter"], "bilinear");
    assert_ne!(saved["sha256"], model["sha256"]);
    assert_ne!(saved["identity"], model["identity"]);
}

#[tokio::test]
async fn every_classify_answer_names_the_model_that_gave_it() {
    let app = spawn_app().await;
    let sha256 = app.get("/model").await.1["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let version = |response: &reqwest::Response| {
        response
            .headers()
            .get("x-model-version")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let ok = app
        .client
        .post(app.url("/classify-image"))
        .json(&serde_json::json!({ "image_url": app.fixtures.url("/images/cat.bmp") }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(version(&ok).as_deref(), Some(&sha256[..12]));
    let refused = app
        .client
        .post(app.url("/classify-image"))
        .json(&serde_json::json!({ "image_url": "not a url" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(version(&refused).as_deref(), Some(&sha256[..12]));
    // Other routes are not answers of the model.
    let report = app.client.get(app.url("/report")).send().await.unwrap();
    assert_eq!(version(&report), None);
}

#[tokio::test]
async fn the_metrics_name_the_model() {
    let app = spawn_app().await;
    let sha256 = app.get("/model").await.1["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = app.metrics_text().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("classifier_model_info{") && l.contains(&sha256))
        .unwrap_or_else(|| panic!("no classifier_model_info for {sha256} in\n{text}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(line.contains(r#"format="frozen_graph""#), "{line}");
}

/// The confidence `/classify-image` gives for the fixture at `path`, and how often the fixture
/// server has been asked for it so far.
async fn confidence_and_downloads(app: &crate::helpers::TestApp, path: &str) -> (Value, usize) {
    let (status, body) = app.classify_fixture(path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body["confidence"].clone(), app.fixtures.hits(path))
}

#[tokio::test]
async fn a_restart_with_another_filter_recomputes_and_the_first_entry_is_kept() {
    let data_dir = tempfile::tempdir().unwrap();
    let nearest = test_settings(data_dir.path(), &[]);
    let bilinear = test_settings(data_dir.path(), &["--resize-filter", "bilinear"]);
    let path = "/images/grace_hopper.bmp";

    let app = start_app(nearest.clone(), FixtureServer::start().await, data_dir).await;
    let (first, downloads) = confidence_and_downloads(&app, path).await;
    assert_eq!(downloads, 1);
    let (fixtures, data_dir) = app.stop().await;

    // Same data dir, another filter: downloaded and classified again, with its own answer.
    let app = start_app(bilinear.clone(), fixtures, data_dir).await;
    let (other, downloads) = confidence_and_downloads(&app, path).await;
    assert_eq!(
        downloads, 2,
        "another filter must not be served the nearest result"
    );
    assert_ne!(other, first, "the bilinear answer differs for this photo");
    let (fixtures, data_dir) = app.stop().await;

    // Back to the first configuration: its entry was kept, so no download.
    let app = start_app(nearest, fixtures, data_dir).await;
    let (again, downloads) = confidence_and_downloads(&app, path).await;
    assert_eq!((again, downloads), (first, 2));
    let (fixtures, data_dir) = app.stop().await;

    // And the bilinear entry too.
    let app = start_app(bilinear, fixtures, data_dir).await;
    assert_eq!(confidence_and_downloads(&app, path).await, (other, 2));
}
