//! The whole path (HTTP download, decode, resize, model) against golden.json, for both filters.
use crate::helpers::{golden, spawn_app_with};
use serde_json::json;
use warp::http::StatusCode;

/// The reference's probabilities reproduce to about 1e-5 from the same input (golden.json),
/// and every input is Pillow's bit for bit, BMP and JPEG alike; the issue allows 1e-4.
const TOLERANCE: f64 = 1e-4;

/// Whether `got`, a confidence as the API writes it (3 decimals), is what a probability within
/// `TOLERANCE` of `want` rounds to: as close as 3 decimals can show |got - want| <= 1e-4.
fn within_tolerance(got: &str, want: f64) -> bool {
    let round = |p: f64| (p * 1000.0).round() / 1000.0;
    let got: f64 = got.parse().unwrap();
    (round(want - TOLERANCE)..=round(want + TOLERANCE)).contains(&got)
}

#[test]
fn the_tolerance_is_what_three_decimals_show() {
    // 0.633422 +- 1e-4 spans 0.633322 (0.633) to 0.633522 (0.634).
    assert!(within_tolerance("0.633", 0.633422));
    assert!(within_tolerance("0.634", 0.633422));
    assert!(!within_tolerance("0.632", 0.633422));
    // 0.633322 +- 1e-4 rounds to 0.633 throughout.
    assert!(!within_tolerance("0.634", 0.633322));
    assert!(within_tolerance("1.000", 0.999905));
}

/// Every golden photo (14 BMP, 7 JPEG) over HTTP with both filters: the top-5 labels and their
/// confidences (`top_k` 5) are the reference's within `TOLERANCE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_photo_over_http_matches_the_reference() {
    let golden = golden();
    let mut checked = 0;
    for (filter, key) in [("nearest", "pil_nearest"), ("bilinear", "pil_bilinear")] {
        let app = spawn_app_with(&["--resize-filter", filter]).await;
        for (name, entry) in golden["images"].as_object().unwrap() {
            let file = entry["file"].as_str().unwrap();
            let request = json!({ "image_url": app.fixtures.url(&format!("/{file}")), "top_k": 5 });
            let (status, body) = app
                .post_classify(request.to_string().into(), Some("application/json"))
                .await;
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            let top5 = entry[key]["top5"].as_array().unwrap();
            assert_eq!(
                body["classification"], top5[0]["label"],
                "{name} ({filter})"
            );
            let got = body["confidence"].as_str().unwrap();
            let want = top5[0]["prob"].as_f64().unwrap();
            assert!(
                within_tolerance(got, want),
                "{name} ({filter}): {got} vs {want}"
            );
            let predictions = body["predictions"].as_array().unwrap();
            for reference in top5 {
                let label = &reference["label"];
                let prediction = predictions.iter().find(|p| &p["classification"] == label);
                let got = prediction.unwrap_or_else(|| panic!("{name} ({filter}): no {label}"));
                let got = got["confidence"].as_str().unwrap();
                let want = reference["prob"].as_f64().unwrap();
                assert!(
                    within_tolerance(got, want),
                    "{name} ({filter}) {label}: {got} vs {want}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 42, "21 photos x 2 filters");
}

/// `--jpeg-dct-scaling` reaches the pipeline: the 1080p cat is decoded at 1/4 scale, which moves
/// its confidence from 0.633 to 0.564 (tests/jpeg_dct_scaling.rs prints every photo's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_dct_scaling_flag_reaches_the_pipeline() {
    let app = spawn_app_with(&["--jpeg-dct-scaling"]).await;
    let (status, body) = app.classify_fixture("/images/cat_1080p.jpg").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat", "{body}");
    let confidence: f64 = body["confidence"].as_str().unwrap().parse().unwrap();
    assert!((confidence - 0.564).abs() < 0.004, "{body}");
}
