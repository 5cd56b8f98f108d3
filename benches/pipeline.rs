//! One run, every figure with its anchor (`cargo bench --bench pipeline`):
//! - model only: frozen graph vs SavedModel, batch 1 and batch 8;
//! - decode + resize per photo size, and with `--jpeg-dct-scaling` for the two largest JPEGs;
//! - JPEG decode alone, libjpeg-turbo (the service's) against zune-jpeg through the image crate
//!   (the service's decoder before it), alternating in one run;
//! - end to end over loopback against the release binary in a process of its own (a new URL
//!   per request serving new bytes, so nothing is cached by URL or by content) at concurrency 1
//!   and 8, and uploads (raw body, new bytes each) at c=1, in rounds that alternate with their
//!   anchors: the c=1 p50s over (model batch-1 + decode/resize of cat.bmp), and the c=8
//!   throughput over model-only batch-8 throughput;
//! - SHA-256 (the content cache's key) per MiB.
/// The API tests' `classifier-api serve` process: the end-to-end rounds load the release binary
/// in a process of its own, not an `Application` in this one, where TensorFlow's thread pool is
/// process-wide and sized by the first session (the anchors'), so the server's own thread
/// settings never showed. Only part of the module is used here; the server's log lines wait in
/// its channel unread (a few hundred KB over a run).
#[path = "../tests/api/process.rs"]
#[allow(dead_code)]
mod process;

use classifier_api::classify::image::{self, DecodeLimits, PreprocessOptions, ResizeFilter};
use classifier_api::classify::model::{Engine, ModelSource, Threads, INPUT_LEN};
use classifier_api::domain::ContentHash;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use warp::Filter;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/shared"))
}

/// Median and 99th percentile of the samples, in ms.
fn p50_p99(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// A smoke run rather than a measurement: under `cargo test --all-targets` (cargo passes
/// `--bench` only from `cargo bench`), or with `BENCH_QUICK` set. Every path still runs once or
/// twice, so a bench that breaks fails the tests; its figures mean nothing then.
fn quick() -> bool {
    static QUICK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *QUICK.get_or_init(|| {
        !std::env::args().any(|a| a == "--bench") || std::env::var_os("BENCH_QUICK").is_some()
    })
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> Vec<f64> {
    f(); // warm
    let runs = if quick() { runs.min(2) } else { runs };
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// About the time a c=1 request spends outside the model on this machine.
const PAUSE: std::time::Duration = std::time::Duration::from_micros(1500);

fn model_only() {
    let input = vec![0.1f32; 8 * INPUT_LEN];
    for (name, source) in [
        ("frozen graph", ModelSource::EmbeddedFrozenGraph),
        ("SavedModel", ModelSource::EmbeddedSavedModel),
    ] {
        let load = Instant::now();
        let engine = Engine::load(&source, Threads::default()).unwrap();
        let load_ms = load.elapsed().as_secs_f64() * 1e3;
        let (b1, _) = p50_p99(time_ms(60, || {
            engine.run(&input[..INPUT_LEN], 1).unwrap();
        }));
        let (b8, _) = p50_p99(time_ms(15, || {
            engine.run(&input, 8).unwrap();
        }));
        // A request at c=1 reaches the model after a pause of other work (HTTP, download,
        // hash, decode), not right after the previous run as in the loop above.
        let (paused, _) = p50_p99(
            (0..if quick() { 2 } else { 60 })
                .map(|_| {
                    std::thread::sleep(PAUSE);
                    let t = Instant::now();
                    engine.run(&input[..INPUT_LEN], 1).unwrap();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        );
        println!(
            "model {name:>12}: load {load_ms:6.1} ms | batch 1 p50 {b1:5.2} ms ({:5.1} img/s) | batch 8 p50 {b8:6.2} ms ({:5.1} img/s) | batch 1 after a {:.1} ms pause p50 {paused:5.2} ms ({:.3}x)",
            1e3 / b1,
            8e3 / b8,
            PAUSE.as_secs_f64() * 1e3,
            paused / b1
        );
    }
}

/// Model-only throughput of one session run at a time against two at once (the service's
/// `--inference-threads` on 2 cores), `max_batch` 8 either way.
fn runs_at_once(quick: bool) {
    let engine =
        Arc::new(Engine::load(&ModelSource::EmbeddedFrozenGraph, Threads::default()).unwrap());
    let runs = if quick { 1 } else { 24 };
    let rate = |threads: usize, batch: usize| {
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let engine = &engine;
                scope.spawn(move || {
                    let input = vec![0.1f32; batch * INPUT_LEN];
                    for _ in 0..runs * 8 / batch / threads {
                        engine.run(&input, batch).unwrap();
                    }
                });
            }
        });
        (runs * 8) as f64 / started.elapsed().as_secs_f64()
    };
    rate(2, 4); // warm
    let (one, two) = (rate(1, 8), rate(2, 4));
    println!(
        "model frozen graph, runs at once: 1 x batch 8 {one:5.1} img/s | 2 x batch 4 {two:5.1} img/s ({:.2}x)",
        two / one
    );
}

/// Photos also timed with `--jpeg-dct-scaling` (decoded at 1/4 scale).
const DCT_SCALED: [&str; 2] = ["cat_1080p.jpg", "kite_and_cold.jpg"];

const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 50_000_000,
    max_alloc_bytes: 400_000_000,
};

fn decode_resize() {
    let mut out = vec![0.0f32; INPUT_LEN];
    for file in [
        "cat.bmp",
        "cat_720p.jpg",
        "cat_1080p.jpg",
        "kite_and_cold.jpg",
    ] {
        let bytes = std::fs::read(fixtures().join("images").join(file)).unwrap();
        for filter in [ResizeFilter::Nearest, ResizeFilter::Bilinear] {
            let mut p50_with = |jpeg_dct_scaling| {
                let options = PreprocessOptions {
                    filter,
                    jpeg_dct_scaling,
                    ..PreprocessOptions::default()
                };
                p50_p99(time_ms(30, || {
                    image::preprocess(&bytes, &LIMITS, &options, &mut out).unwrap();
                }))
                .0
            };
            let p50 = p50_with(false);
            println!("decode+resize {file:>18} {filter:>8}: p50 {p50:6.2} ms");
            if DCT_SCALED.contains(&file) {
                let scaled = p50_with(true);
                let (ratio, word) = if scaled <= p50 {
                    (p50 / scaled, "faster")
                } else {
                    (scaled / p50, "slower")
                };
                println!(
                    "   dct-scaled {file:>18} {filter:>8}: p50 {scaled:6.2} ms ({ratio:.2}x {word})"
                );
            }
        }
    }
}

/// The 720p and 1080p cats decoded to RGB (no resize) by the service (libjpeg-turbo) and by the
/// image crate's decoder (zune-jpeg, the service's before libjpeg-turbo, still a dev-dependency for
/// this comparison), in rounds that alternate the two so that a slower minute on a shared machine
/// moves both alike; p50 over all rounds.
fn jpeg_decoders(quick: bool) {
    let (rounds, runs) = if quick { (1, 3) } else { (5, 20) };
    for file in ["cat_720p.jpg", "cat_1080p.jpg"] {
        let bytes = std::fs::read(fixtures().join("images").join(file)).unwrap();
        let options = PreprocessOptions::default();
        let (mut ours, mut zune) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ours.extend(time_ms(runs, || {
                std::hint::black_box(image::decode_rgb8(&bytes, &LIMITS, &options).unwrap());
            }));
            zune.extend(time_ms(runs, || {
                let decoded =
                    ::image::load_from_memory_with_format(&bytes, ::image::ImageFormat::Jpeg);
                std::hint::black_box(decoded.unwrap().into_rgb8());
            }));
        }
        let ((ours, _), (zune, _)) = (p50_p99(ours), p50_p99(zune));
        println!(
            "jpeg decode {file:>14}: libjpeg-turbo p50 {ours:6.2} ms | zune-jpeg (image, before) p50 {zune:6.2} ms | libjpeg-turbo / zune {:.2}",
            ours / zune
        );
    }
}

/// Serves cat.bmp (512x341) under any path, so every request can use a new URL.
/// cat.bmp with its last pixels overwritten by `id`: the same work to classify, other bytes, so
/// the content cache cannot answer it.
fn unique_image(bmp: &[u8], id: usize) -> bytes::Bytes {
    let mut bytes = bmp.to_vec();
    let at = bytes.len() - 8;
    bytes[at..].copy_from_slice(&(id as u64).to_le_bytes());
    bytes.into()
}

/// Serves `/cat-<id>.bmp` as [`unique_image`] `id`.
/// SHA-256 of a 20 MiB buffer (the largest image accepted), per MiB.
fn content_hash() {
    let data = vec![0x5au8; 20 << 20];
    let (p50, _) = p50_p99(time_ms(5, || {
        std::hint::black_box(ContentHash::of(&data));
    }));
    println!("sha256 (content cache key): {:.2} ms per MiB", p50 / 20.0);
}

async fn image_server() -> std::net::SocketAddr {
    let bmp = std::fs::read(fixtures().join("images/cat.bmp")).unwrap();
    let route = warp::path::param().map(move |name: String| {
        let id = name
            .trim_start_matches("cat-")
            .trim_end_matches(".bmp")
            .parse()
            .unwrap_or(0);
        warp::http::Response::new(unique_image(&bmp, id))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

/// How the end-to-end requests name their image: a URL on the image server, or the bytes.
#[derive(Clone, Copy)]
enum Form {
    Url(std::net::SocketAddr),
    Upload,
}

async fn end_to_end(
    concurrency: usize,
    requests: usize,
    app: &str,
    form: Form,
    seq: &AtomicUsize,
) -> (f64, f64, f64) {
    let bmp: Arc<[u8]> = std::fs::read(fixtures().join("images/cat.bmp"))
        .unwrap()
        .into();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let endpoint = format!("http://{app}/classify-image");
    let started = Instant::now();
    let per_worker = requests / concurrency;
    let workers = (0..concurrency).map(|_| {
        let (client, endpoint, bmp) = (client.clone(), endpoint.clone(), Arc::clone(&bmp));
        let ids: Vec<usize> = (0..per_worker)
            .map(|_| seq.fetch_add(1, Ordering::Relaxed))
            .collect();
        tokio::spawn(async move {
            let mut ms = Vec::with_capacity(ids.len());
            for id in ids {
                let request = match form {
                    Form::Url(images) => client.post(&endpoint).json(
                        &serde_json::json!({ "image_url": format!("http://{images}/cat-{id}.bmp") }),
                    ),
                    Form::Upload => client
                        .post(&endpoint)
                        .header("content-type", "image/bmp")
                        .body(unique_image(&bmp, id)),
                };
                let t = Instant::now();
                let response = request.send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms
        })
    });
    let mut all = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        all.extend(w.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = p50_p99(all);
    (p50, p99, rate)
}

/// Rounds in which the anchors and the end-to-end runs alternate: on a shared machine a slower
/// minute then moves both sides of a ratio alike, and the median round is reported.
struct Anchored {
    engine: Engine,
    bmp: Vec<u8>,
    input: Vec<f32>,
}

impl Anchored {
    fn new() -> Self {
        Self {
            engine: Engine::load(&ModelSource::EmbeddedFrozenGraph, Threads::default()).unwrap(),
            bmp: std::fs::read(fixtures().join("images/cat.bmp")).unwrap(),
            input: vec![0.1f32; 8 * INPUT_LEN],
        }
    }

    /// p50 ms of a model-only run of `n` images.
    fn model(&self, n: usize, runs: usize) -> f64 {
        p50_p99(time_ms(runs, || {
            self.engine.run(&self.input[..n * INPUT_LEN], n).unwrap();
        }))
        .0
    }

    /// p50 ms of decode + resize of cat.bmp with the service's default options.
    fn decode(&self) -> f64 {
        let mut out = vec![0.0f32; INPUT_LEN];
        p50_p99(time_ms(20, || {
            image::preprocess(&self.bmp, &LIMITS, &PreprocessOptions::default(), &mut out).unwrap();
        }))
        .0
    }
}

/// Allocation as the server's `main.rs` sets it up, so end-to-end figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn allocate_as_the_server() {
    classifier_api::rss::single_malloc_arena();
    classifier_api::rss::fixed_mmap_threshold();
    classifier_api::rss::lean_mimalloc();
}

fn main() {
    allocate_as_the_server();
    let quick = quick();
    if quick {
        println!("smoke run (not `cargo bench`): every path once or twice; the figures are not measurements");
    }
    model_only();
    runs_at_once(quick);
    decode_resize();
    jpeg_decoders(quick);
    content_hash();
    let anchors = Anchored::new();
    let data_dir = tempfile::tempdir().unwrap();
    let server = process::start_server_env(data_dir.path(), &[], &[("TF_CPP_MIN_LOG_LEVEL", "3")])
        .expect("start the classifier-api binary");
    let addr = server.addr.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let by_url = Form::Url(image_server().await);
        let seq = Arc::new(AtomicUsize::new(0));
        let (rounds, n) = if quick { (1, 16) } else { (7, 40) };
        end_to_end(1, 10, &addr, by_url, &seq).await; // warm
        end_to_end(8, 16, &addr, by_url, &seq).await;
        end_to_end(1, 10, &addr, Form::Upload, &seq).await;
        let (mut c1_ratios, mut c8_ratios, mut upload_ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let (b1, decode) = (anchors.model(1, 40), anchors.decode());
            let (p50, p99, rate) = end_to_end(1, n, &addr, by_url, &seq).await;
            c1_ratios.push(p50 / (b1 + decode));
            println!(
                "round {round} c=1: p50 {p50:6.2} ms  p99 {p99:6.2} ms  {rate:6.1} img/s | model batch-1 {b1:.2} ms + decode/resize {decode:.2} ms | ratio {:.3}",
                p50 / (b1 + decode)
            );
            let (p50, p99, rate) = end_to_end(1, n, &addr, Form::Upload, &seq).await;
            upload_ratios.push(p50 / (b1 + decode));
            println!(
                "round {round} upload c=1: p50 {p50:6.2} ms  p99 {p99:6.2} ms  {rate:6.1} img/s | ratio {:.3}",
                p50 / (b1 + decode)
            );
            let b8 = anchors.model(8, 8);
            let (p50, p99, rate) = end_to_end(8, n * 2, &addr, by_url, &seq).await;
            c8_ratios.push(rate / (8e3 / b8));
            println!(
                "round {round} c=8: p50 {p50:6.2} ms  p99 {p99:6.2} ms  {rate:6.1} img/s | model batch-8 {:.1} img/s | ratio {:.3}",
                8e3 / b8,
                rate / (8e3 / b8)
            );
        }
        println!(
            "end-to-end c=1 p50 / (model batch-1 + decode/resize), median of {rounds} rounds: {:.3} (target <= 1.10)",
            p50_p99(c1_ratios).0
        );
        println!(
            "upload (raw body) c=1 p50 / (model batch-1 + decode/resize), median of {rounds} rounds: {:.3} (target <= 1.05)",
            p50_p99(upload_ratios).0
        );
        println!(
            "end-to-end c=8 throughput / model-only batch-8 throughput, median of {rounds} rounds: {:.3} (target >= 0.95)",
            p50_p99(c8_ratios).0
        );
    });
}
