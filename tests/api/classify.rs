use crate::helpers::{spawn_app, start_app, test_settings, FixtureServer};
use warp::http::StatusCode;

#[tokio::test]
async fn classifies_a_photo_with_exactly_the_briefs_three_string_fields() {
    let app = spawn_app().await;
    let (status, body) = app.classify_fixture("/images/cat.bmp").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let fields = body.as_object().unwrap();
    assert_eq!(fields.len(), 3, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat");
    // golden.json: 0.834952 for cat.bmp with Pillow NEAREST.
    assert_eq!(body["confidence"], "0.835");
    let time = body["processing_time"].as_str().unwrap();
    assert_eq!(
        time.split('.').nth(1).map(str::len),
        Some(3),
        "3 decimals: {time}"
    );
    assert!(time.parse::<f64>().unwrap() > 0.0);
}

#[tokio::test]
async fn every_format_and_colour_type_decodes_to_the_same_cat() {
    let app = spawn_app().await;
    for path in [
        "/gen/cat.png",
        "/gen/cat.gif",
        "/gen/cat.jpg",
        "/gen/cat.webp",
        "/gen/cat-rgba.png",
        "/gen/cat-16bit.png",
        "/wrong-type",
    ] {
        let (status, body) = app.classify_fixture(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["classification"], "Egyptian_cat", "{path}: {body}");
    }
    // Grey loses the colour that tells cat breeds apart; it must still classify, as some cat.
    let (status, body) = app.classify_fixture("/gen/cat-grey.png").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["classification"].as_str().unwrap().ends_with("cat"),
        "{body}"
    );
}

#[tokio::test]
async fn follows_up_to_five_redirects() {
    let app = spawn_app().await;
    let (status, body) = app.classify_fixture("/redirect/4").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["classification"], "Egyptian_cat");
}

#[tokio::test]
async fn fixture_server_counts_hits() {
    // The cache tests rely on this counter, so it must count what the app downloads.
    let fixtures = FixtureServer::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(fixtures.url("/text")).send().await.unwrap();
    assert_eq!(fixtures.hits("/text"), 1);
    assert_eq!(fixtures.hits("/images/cat.bmp"), 0);
}

#[tokio::test]
async fn a_request_in_flight_when_shutdown_starts_still_gets_its_answer() {
    let app = spawn_app().await;
    let client = app.client.clone();
    let endpoint = app.url("/classify-image");
    let image = app.fixtures.url("/delayed/in-flight.bmp");
    let request = tokio::spawn(async move {
        client
            .post(endpoint)
            .json(&serde_json::json!({ "image_url": image }))
            .send()
            .await
    });
    while app.fixtures.hits("/delayed/in-flight.bmp") == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // The fixture holds the image back 300 ms: the request is still waiting when stop begins.
    assert!(!request.is_finished());
    let (fixtures, data_dir) = app.stop().await;
    let response = request.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    // The final commit came after it finished, so the next start counts it.
    let settings = test_settings(data_dir.path(), &[]);
    let app = start_app(settings, fixtures, data_dir).await;
    let report = app.report().await;
    assert_eq!(report.len(), 1, "{report:?}");
    assert_eq!(
        report[0]["image_url"],
        app.fixtures.url("/delayed/in-flight.bmp")
    );
    assert_eq!(report[0]["count"], 1);
}
