//! GET /report/history: requests per minute from the in-memory ring, on an injected clock.
use crate::helpers::{error_code, spawn_app};
use classifier_api::clock::ManualClock;
use serde_json::Value;
use std::time::{Duration, SystemTime};
use warp::http::StatusCode;

const MINUTE: Duration = Duration::from_secs(60);

/// Now, rounded down to the minute, plus 5 s: requests made at once fall in one minute.
fn start_of_a_minute() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs / 60 * 60 + 5)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn summary(body: &Value) -> Vec<(String, u64)> {
    body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p.as_object().unwrap().len(), 3, "{p}");
            let avg = p["avg_processing_time"].as_f64().unwrap();
            assert!(avg > 0.0 && avg < 60.0, "{p}");
            (
                p["minute"].as_str().unwrap().to_owned(),
                p["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn counts_successful_requests_per_minute_in_the_window_asked_for() {
    // Arrange
    let start = start_of_a_minute();
    let clock = ManualClock::new(start);
    let app = crate::helpers::spawn_app_with_clock(&clock, &[]).await;
    let (status, body) = app.get("/report/history").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"source": "memory", "minutes": 60, "points": []})
    );

    // Act: two answers (fresh, then cached) and one failure in the first minute; one answer
    // three minutes later.
    for _ in 0..2 {
        let (status, body) = app.classify_fixture("/images/cat.bmp").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = app.classify_fixture("/status/404").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    clock.advance(3 * MINUTE);
    let (status, _) = app.classify_fixture("/gen/cat.png").await;
    assert_eq!(status, StatusCode::OK);

    // Assert
    let minute = |m: u32| rfc3339(start - Duration::from_secs(5) + m * MINUTE);
    let (status, body) = app.get("/report/history?minutes=5").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["source"], "memory");
    assert_eq!(body["minutes"], 5);
    assert_eq!(summary(&body), vec![(minute(0), 2), (minute(3), 1)]);

    // The window ends with the current minute: 1 minute holds only the last request.
    let (_, body) = app.get("/report/history?minutes=1").await;
    assert_eq!(summary(&body), vec![(minute(3), 1)]);
    // 3 minutes reach back to minute 1: the first minute is out.
    let (_, body) = app.get("/report/history?minutes=3").await;
    assert_eq!(summary(&body), vec![(minute(3), 1)]);
    let (_, body) = app.get("/report/history?minutes=4").await;
    assert_eq!(summary(&body).len(), 2);

    // A day later even the largest window is empty.
    clock.advance(24 * 60 * MINUTE);
    let (status, body) = app.get("/report/history?minutes=1440").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(summary(&body).is_empty());
}

#[tokio::test]
async fn minutes_outside_1_to_1440_are_invalid_requests() {
    let app = spawn_app().await;
    for query in [
        "minutes=0",
        "minutes=1441",
        "minutes=-1",
        "minutes=ten",
        "minutes=",
        "minutes=2.5",
    ] {
        let (status, body) = app.get(&format!("/report/history?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(error_code(&body), "invalid_request", "{query}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("1 to 1440"),
            "{body}"
        );
    }
    let (status, body) = app.get("/report/history?minutes=1440").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["minutes"], 1440);

    let response = app
        .client
        .post(app.url("/report/history"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}
