//! Images sent in the request (raw body, multipart, base64), `top_k`, and the cache by content.
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use warp::http::StatusCode;

use crate::helpers::{error_code, fixtures_dir, read_json, spawn_app, FixtureServer, TestApp};
use crate::process::start_server;

const BOUNDARY: &str = "----classifier-test-7MA4YWxkTrZu0gW";

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join("images").join(name)).unwrap()
}

/// A multipart/form-data body with one part per (name, bytes), as a browser's FormData sends.
fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"photo\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

async fn post(app: &TestApp, query: &str, body: Vec<u8>, ct: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(&format!("/classify-image{query}")))
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    read_json(response).await
}

async fn post_json(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.post_classify(body.to_string().into(), Some("application/json"))
        .await
}

fn pair(body: &Value) -> (&str, &str) {
    (
        body["classification"].as_str().unwrap(),
        body["confidence"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upload_form_gives_the_answer_the_url_gives() {
    let app = spawn_app().await;
    let (status, by_url) = app.classify_fixture("/images/hot_dog.jpg").await;
    assert_eq!(status, StatusCode::OK, "{by_url}");
    let bytes = photo("hot_dog.jpg");
    let answers = [
        post(&app, "", bytes.clone(), "image/jpeg").await,
        // The declared type is not trusted: the bytes are sniffed.
        post(&app, "", bytes.clone(), "image/png").await,
        post(&app, "", bytes.clone(), "application/octet-stream").await,
        post(&app, "", form(&[("image", &bytes)]), &multipart_type()).await,
        post_json(&app, json!({ "image_base64": base64(&bytes) })).await,
        post_json(
            &app,
            json!({ "image_base64": format!("data:image/jpeg;base64,{}", base64(&bytes)) }),
        )
        .await,
    ];
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "form {i}: {body}");
        assert_eq!(pair(body), pair(&by_url), "form {i}");
        // Without top_k: exactly the brief's three keys.
        assert_eq!(body.as_object().unwrap().len(), 3, "form {i}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_lists_the_predictions_highest_first_also_from_the_cache() {
    let app = spawn_app().await;
    let bytes = photo("cat.bmp");
    let url = app.fixtures.url("/images/cat.bmp");
    for round in 0..2 {
        // Round 1 is served from the cache, which keeps the predictions.
        let (status, raw) = post(&app, "?top_k=5", bytes.clone(), "image/bmp").await;
        assert_eq!(status, StatusCode::OK, "{raw}");
        let (status, by_url) = post_json(&app, json!({ "image_url": url, "top_k": 20 })).await;
        assert_eq!(status, StatusCode::OK, "{by_url}");
        for (body, k) in [(&raw, 5), (&by_url, 20)] {
            let list = body["predictions"].as_array().unwrap();
            assert_eq!(list.len(), k, "round {round}: {body}");
            assert_eq!(list[0]["classification"], body["classification"]);
            assert_eq!(list[0]["confidence"], body["confidence"]);
            let confidences: Vec<f64> = list
                .iter()
                .map(|p| p["confidence"].as_str().unwrap().parse().unwrap())
                .collect();
            assert!(confidences.windows(2).all(|w| w[0] >= w[1]), "{body}");
        }
        assert_eq!(raw["predictions"][1], by_url["predictions"][1]);
    }
    let (_, multipart) = post(
        &app,
        "?top_k=2",
        form(&[("image", &bytes)]),
        &multipart_type(),
    )
    .await;
    assert_eq!(
        multipart["predictions"].as_array().unwrap().len(),
        2,
        "{multipart}"
    );
    assert_eq!(app.fixtures.hits("/images/cat.bmp"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_upload_has_its_status_and_code() {
    let app = spawn_app().await;
    let gif = photo("cat.bmp");
    let mp = multipart_type();
    let truncated = {
        let mut body = form(&[("image", &gif)]);
        body.truncate(body.len() / 2);
        body
    };
    let cases: Vec<(&str, Vec<u8>, String, StatusCode, &str)> = vec![
        (
            "empty raw body",
            vec![],
            "image/jpeg".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "empty JSON body",
            vec![],
            "application/json".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "truncated multipart",
            truncated,
            mp.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "wrong boundary",
            form(&[("image", &gif)]),
            "multipart/form-data; boundary=other".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "no boundary",
            form(&[("image", &gif)]),
            "multipart/form-data".into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "two files",
            form(&[("image", &gif), ("image", &gif)]),
            mp.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "unknown part",
            form(&[("photo", &gif)]),
            mp.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "no part",
            form(&[]),
            mp.clone(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "non-image file",
            b"just some text, not an image".to_vec(),
            "application/octet-stream".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_image",
        ),
        (
            "non-image part",
            form(&[("image", b"%PDF-1.7")]),
            mp.clone(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_image",
        ),
        (
            "other content type",
            gif.clone(),
            "text/plain".into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (what, body, ct, status, code) in cases {
        let (got, answer) = post(&app, "", body, &ct).await;
        assert_eq!(
            (got, error_code(&answer)),
            (status, code),
            "{what}: {answer}"
        );
    }
    let json_cases = [
        ("invalid base64", json!({ "image_base64": "not base64!" })),
        (
            "data: URI of text",
            json!({ "image_base64": format!("data:text/plain;base64,{}", base64(&gif)) }),
        ),
        (
            "both fields",
            json!({ "image_base64": base64(&gif), "image_url": app.fixtures.url("/images/cat.bmp") }),
        ),
        (
            "top_k 0",
            json!({ "image_base64": base64(&gif), "top_k": 0 }),
        ),
        (
            "top_k 21",
            json!({ "image_base64": base64(&gif), "top_k": 21 }),
        ),
        (
            "top_k x",
            json!({ "image_base64": base64(&gif), "top_k": "x" }),
        ),
    ];
    for (what, body) in json_cases {
        let (status, answer) = post_json(&app, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(error_code(&answer), "invalid_request", "{what}");
    }
    for query in ["?top_k=0", "?top_k=21", "?top_k=x"] {
        let (status, answer) = post(&app, query, gif.clone(), "image/bmp").await;
        assert_eq!(
            (status, error_code(&answer)),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{query}"
        );
    }
    // top_k in the JSON body and in the query: which one was meant is unknown.
    let twice = json!({ "image_base64": base64(&gif), "top_k": 2 }).to_string();
    let (status, answer) = post(&app, "?top_k=2", twice.into_bytes(), "application/json").await;
    assert_eq!(
        (status, error_code(&answer)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Nothing bad was counted.
    assert!(app.report().await.is_empty());
}

/// Sends the request head, then `sent` bytes of body, and reads the answer's status line.
fn status_after(addr: &str, head: &str, sent: usize, chunked: bool) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < sent {
        let n = block.len().min(sent - written);
        let ok = if chunked {
            stream
                .write_all(format!("{n:x}\r\n").as_bytes())
                .and_then(|()| stream.write_all(&block[..n]))
                .and_then(|()| stream.write_all(b"\r\n"))
        } else {
            stream.write_all(&block[..n])
        };
        // The server may answer and close before taking everything: that is the point.
        if ok.is_err() {
            break;
        }
        written += n;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_refused_without_reading_it_all() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    let limit = 20 * 1024 * 1024;
    let tasks = [
        // Declared too large: answered with nothing of the body sent.
        (
            "raw",
            format!(
                "Content-Type: image/jpeg\r\nContent-Length: {}\r\n",
                limit + 1
            ),
            0,
            false,
        ),
        (
            "multipart",
            format!(
                "Content-Type: {}\r\nContent-Length: {}\r\n",
                multipart_type(),
                2 * limit
            ),
            0,
            false,
        ),
        (
            "base64",
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                2 * limit
            ),
            0,
            false,
        ),
        // Chunked (no length): cut once past the limit, although the client would send more.
        (
            "chunked raw",
            "Content-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n".to_owned(),
            limit + 1024 * 1024,
            true,
        ),
    ];
    for (what, headers, sent, chunked) in tasks {
        let head = format!(
            "POST /classify-image HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n"
        );
        let addr = addr.clone();
        let line = tokio::task::spawn_blocking(move || status_after(&addr, &head, sent, chunked))
            .await
            .unwrap();
        assert!(line.contains(" 413 "), "{what}: {line:?}");
    }
    // Exactly at the limit is not too large (it is just not an image).
    let (status, body) = post(&app, "", vec![0u8; limit], "image/jpeg").await;
    assert_eq!(error_code(&body), "unsupported_image", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_counted_by_hash_in_the_report() {
    let app = spawn_app().await;
    let bytes = photo("cat.bmp");
    for _ in 0..2 {
        let (status, body) = post(&app, "", bytes.clone(), "image/bmp").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    app.classify_fixture("/images/bird.bmp").await;
    let report = app.report().await;
    let hex = hex::encode(Sha256::digest(&bytes));
    assert_eq!(report[0]["image_url"], Value::Null, "{report:?}");
    assert_eq!(report[0]["upload_sha256"], hex.as_str());
    assert_eq!(report[0]["count"], 2);
    // URL rows look as they always did: no upload_sha256 key.
    assert_eq!(
        report[1]["image_url"],
        app.fixtures.url("/images/bird.bmp").as_str()
    );
    assert!(report[1].get("upload_sha256").is_none(), "{report:?}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A process of its own: `/metrics` then counts this test's inferences alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_bytes_cost_one_inference_whatever_their_url_or_upload() {
    let fixtures = FixtureServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), &[]).unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let classify = |body: Bytes, ct: &'static str| {
        let request = client
            .post(server.url("/classify-image"))
            .header("content-type", ct)
            .body(body);
        async move { read_json(request.send().await.unwrap()).await }
    };
    // (inferences, decodes) so far.
    let counts = || async {
        let text = client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (
            metric(&text, "classifier_inference_batch_size_sum"),
            metric(&text, "classifier_decode_seconds_count"),
        )
    };
    // Two URLs serving the same bytes (cat.bmp), then those bytes uploaded.
    let mut answers = Vec::new();
    for name in ["a.bmp", "b.bmp"] {
        let body = json!({ "image_url": fixtures.url(&format!("/delayed/{name}")) });
        answers.push(classify(body.to_string().into(), "application/json").await);
    }
    answers.push(classify(photo("cat.bmp").into(), "image/bmp").await);
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(pair(body), pair(&answers[0].1));
    }
    assert_eq!(
        fixtures.hits("/delayed/a.bmp") + fixtures.hits("/delayed/b.bmp"),
        2
    );
    // A downloaded image is decoded beside its hash, before the content lookup, so b.bmp was
    // decoded for nothing; an upload is decoded only after its lookup misses.
    assert_eq!(counts().await, (1.0, 2.0));
    // Eight concurrent uploads of new bytes: one more inference (single flight by hash).
    let bird: Bytes = photo("bird.bmp").into();
    let uploads = (0..8).map(|_| classify(bird.clone(), "image/bmp"));
    for (status, body) in futures_util::future::join_all(uploads).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(counts().await, (2.0, 3.0));
}

/// An upload refused before its body was read says `Connection: close`: the rest of its body
/// cannot be told from a next request, so the connection is not reused (a pooled client sending
/// its next request on it would see it closed under that request). An answer after the whole
/// body keeps the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_is_read_closes_the_connection() {
    let app = spawn_app().await;
    let connection = |r: &reqwest::Response| {
        r.headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let refused = app
        .client
        .post(app.url("/classify-image"))
        .header("content-type", "text/plain")
        .body(vec![b'x'; 256 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(connection(&refused).as_deref(), Some("close"));
    let answered = app
        .client
        .post(app.url("/classify-image"))
        .header("content-type", "image/gif")
        .body(photo("cat.bmp"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(connection(&answered), None);
}
