//! The whole path (HTTP download, decode, resize, model) against golden.json, for both filters.
use crate::helpers::{golden, spawn_app_with};
use warp::http::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_photo_over_http_matches_the_reference() {
    let golden = golden();
    for (filter, key) in [("nearest", "pil_nearest"), ("bilinear", "pil_bilinear")] {
        let app = spawn_app_with(&["--resize-filter", filter]).await;
        for (name, entry) in golden["images"].as_object().unwrap() {
            let file = entry["file"].as_str().unwrap();
            let (status, body) = app.classify_fixture(&format!("/{file}")).await;
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            let top1 = &entry[key]["top5"][0];
            let label = body["classification"].as_str().unwrap();
            // Every top-1 matches, JPEGs included, although our decoder (zune-jpeg) and the
            // reference's (libjpeg-turbo) differ slightly in their pixels.
            assert_eq!(label, top1["label"].as_str().unwrap(), "{name} ({filter})");
            if entry["format"] == "BMP" {
                // BMP decoding is exact, so only the 3-decimal rounding separates us.
                let got: f64 = body["confidence"].as_str().unwrap().parse().unwrap();
                let want = top1["prob"].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 0.01,
                    "{name} ({filter}): {got} vs {want}"
                );
            }
        }
    }
}

/// `--jpeg-dct-scaling` reaches the pipeline: the 1080p cat is decoded at 1/4 scale, which moves
/// its confidence from 0.621 to 0.605 (tests/jpeg_dct_scaling.rs prints every photo's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_dct_scaling_flag_reaches_the_pipeline() {
    let app = spawn_app_with(&["--jpeg-dct-scaling"]).await;
    let (status, body) = app.classify_fixture("/images/cat_1080p.jpg").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat", "{body}");
    let confidence: f64 = body["confidence"].as_str().unwrap().parse().unwrap();
    assert!((confidence - 0.605).abs() < 0.004, "{body}");
}
