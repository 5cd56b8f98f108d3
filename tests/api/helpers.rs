//! Test harness: the real app on 127.0.0.1:0 and a local fixture server for the images it fetches
//! (real photos, re-encodings made here, and routes that misbehave on purpose).
use bytes::Bytes;
use clap::Parser;
use classifier_api::cli::Cli;
use classifier_api::clock::{Clock, ManualClock, SystemClock};
use classifier_api::config::Settings;
use classifier_api::startup::Application;
use futures_util::stream;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::{Response, StatusCode};
use warp::Filter;

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/shared")
}

pub fn golden() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures_dir().join("golden.json")).unwrap()).unwrap()
}

/// Settings as `serve` would parse them, for a test instance: port 0, a fresh data dir, private
/// networks allowed (the fixture server is on loopback).
pub fn test_settings(data_dir: &Path, extra: &[&str]) -> Settings {
    let mut args = vec![
        "classifier-api",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--allow-private-networks",
    ];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args).unwrap().settings
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub fixtures: FixtureServer,
    pub data_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(extra: &[&str]) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let fixtures = FixtureServer::start().await;
    start_app(test_settings(data_dir.path(), extra), fixtures, data_dir).await
}

/// As `spawn_app_with`, with the clock that judges cache expiry, token expiry and history minutes.
pub async fn spawn_app_with_clock(clock: &ManualClock, extra: &[&str]) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(data_dir.path(), extra);
    start_app_with_clock(
        settings,
        FixtureServer::start().await,
        data_dir,
        Arc::new(clock.clone()),
    )
    .await
}

pub async fn start_app(
    settings: Settings,
    fixtures: FixtureServer,
    data_dir: tempfile::TempDir,
) -> TestApp {
    start_app_with_clock(settings, fixtures, data_dir, Arc::new(SystemClock)).await
}

pub async fn start_app_with_clock(
    settings: Settings,
    fixtures: FixtureServer,
    data_dir: tempfile::TempDir,
    clock: Arc<dyn Clock>,
) -> TestApp {
    let app = Application::build_with_clock(settings, clock)
        .await
        .expect("app builds");
    let addr = app.addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        fixtures,
        data_dir,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POST /classify-image for a URL on the fixture server.
    pub async fn classify_fixture(&self, path: &str) -> (StatusCode, Value) {
        self.classify(&self.fixtures.url(path)).await
    }

    pub async fn classify(&self, image_url: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({ "image_url": image_url }).to_string();
        self.post_classify(body.into(), Some("application/json"))
            .await
    }

    pub async fn post_classify(
        &self,
        body: Bytes,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url("/classify-image")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        read_json(request.send().await.unwrap()).await
    }

    pub async fn report(&self) -> Vec<Value> {
        let (status, body) = self.get("/report").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        read_json(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// Starts a request for the fixture server's `/slow` (which answers after 30 s) and returns
    /// once it is downloading: with `--max-concurrent-requests 1` it holds the only slot until
    /// the returned task is aborted.
    pub async fn hold_a_slot(&self) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let slow_url = self.fixtures.url("/slow");
        let request = self
            .client
            .post(self.url("/classify-image"))
            .json(&serde_json::json!({ "image_url": slow_url }));
        let slow = tokio::spawn(request.send());
        while self.fixtures.hits("/slow") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        slow
    }

    /// Graceful stop; returns the data dir so a test can start again on it.
    pub async fn stop(mut self) -> (FixtureServer, tempfile::TempDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
        (self.fixtures, self.data_dir)
    }
}

pub async fn read_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(content_type.as_deref(), Some("application/json"), "{text}");
    (status, value)
}

/// Asserts the error body shape and returns its code.
pub fn error_code(body: &Value) -> &str {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error["code"].as_str().unwrap()
}

/// A local HTTP server for everything the app downloads, counting hits per path.
pub struct FixtureServer {
    pub addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    generated: tempfile::TempDir,
}

impl FixtureServer {
    pub async fn start() -> Self {
        let generated = tempfile::tempdir().unwrap();
        make_reencodings(generated.path());
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let counter = hits.clone();
        let count = warp::path::full()
            .map(move |path: warp::path::FullPath| {
                *counter
                    .lock()
                    .unwrap()
                    .entry(path.as_str().to_owned())
                    .or_default() += 1;
            })
            .untuple_one();

        let photos = warp::path("images").and(warp::fs::dir(fixtures_dir().join("images")));
        let made = warp::path("gen").and(warp::fs::dir(generated.path().to_owned()));
        let status = warp::path!("status" / u16)
            .map(|code: u16| warp::reply::with_status("nope", StatusCode::from_u16(code).unwrap()));
        let text = warp::path!("text").map(|| "this is not an image");
        let slow = warp::path!("slow").then(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "too late"
        });
        // Headers at once, then a body that never ends.
        let endless = warp::path!("endless").map(|| {
            let chunks =
                stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64 * 1024])));
            warp::reply::stream(chunks)
        });
        let cat = std::fs::read(fixtures_dir().join("images/cat.bmp")).unwrap();
        let wrong_type = warp::path!("wrong-type").map(move || {
            Response::builder()
                .header("content-type", "text/html")
                .body(cat.clone())
                .unwrap()
        });
        // cat.bmp after a pause, under any name: lets concurrent requests overlap for sure.
        let cat_later = std::fs::read(fixtures_dir().join("images/cat.bmp")).unwrap();
        let delayed = warp::path!("delayed" / String).then(move |_name: String| {
            let body = cat_later.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Response::new(body)
            }
        });
        let redirect = warp::path!("redirect" / usize).map(|n: usize| {
            let next = if n == 0 {
                "/images/cat.bmp".to_owned()
            } else {
                format!("/redirect/{}", n - 1)
            };
            Response::builder()
                .status(302)
                .header("location", next)
                .body(Vec::new())
                .unwrap()
        });

        let routes = count.and(
            photos
                .map(warp::Reply::into_response)
                .or(made.map(warp::Reply::into_response))
                .unify()
                .or(status.map(warp::Reply::into_response))
                .unify()
                .or(text.map(warp::Reply::into_response))
                .unify()
                .or(slow.map(warp::Reply::into_response))
                .unify()
                .or(endless.map(warp::Reply::into_response))
                .unify()
                .or(wrong_type.map(warp::Reply::into_response))
                .unify()
                .or(redirect.map(warp::Reply::into_response))
                .unify()
                .or(delayed.map(warp::Reply::into_response))
                .unify(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        Self {
            addr,
            hits,
            generated,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `bytes` at `/gen/<name>` from now on: images a single test builds.
    pub fn add(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.generated.path().join(name), bytes).unwrap();
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// PNG, GIF and JPEG versions of cat.bmp, plus colour types the decoder must turn into RGB.
fn make_reencodings(dir: &Path) {
    let cat = image::open(fixtures_dir().join("images/cat.bmp")).unwrap();
    let save = |name: &str, img: &image::DynamicImage, format: image::ImageFormat| {
        let mut bytes = Cursor::new(Vec::new());
        img.write_to(&mut bytes, format).unwrap();
        std::fs::write(dir.join(name), bytes.into_inner()).unwrap();
    };
    save("cat.png", &cat, image::ImageFormat::Png);
    save("cat.gif", &cat, image::ImageFormat::Gif);
    save("cat.jpg", &cat, image::ImageFormat::Jpeg);
    save("cat.webp", &cat, image::ImageFormat::WebP);
    save(
        "cat-rgba.png",
        &image::DynamicImage::ImageRgba8(cat.to_rgba8()),
        image::ImageFormat::Png,
    );
    save(
        "cat-grey.png",
        &image::DynamicImage::ImageLuma8(cat.to_luma8()),
        image::ImageFormat::Png,
    );
    save(
        "cat-16bit.png",
        &image::DynamicImage::ImageRgb16(cat.to_rgb16()),
        image::ImageFormat::Png,
    );
    // A tiny image whose header claims a size over the pixel limit tests use (see errors.rs).
    save(
        "wide.png",
        &image::DynamicImage::ImageLuma8(image::GrayImage::new(20_000, 3_000)),
        image::ImageFormat::Png,
    );
    let bytes = std::fs::read(dir.join("cat.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &bytes[..bytes.len() / 3]).unwrap();
}
