//! `/report` cost with many distinct URLs (`cargo bench --bench report`): fills a store with
//! `BENCH_URLS` (default 1 000 000) distinct URLs through the real stats writer, then times
//! `top(10)` and prints the redb file size. With `BENCH_DATA_DIR` set, the filled store is left
//! there for scripts/bench.sh to serve over HTTP.
use classifier_api::clock::SystemClock;
use classifier_api::domain::{ImageUrl, Subject};
use classifier_api::localdb::LocalDb;
use classifier_api::storage::{self, BackendKind, StorageConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    // A smoke run under `cargo test --all-targets`: cargo passes `--bench` only from `cargo bench`.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        println!("smoke run (not `cargo bench`): 2 000 URLs; the figures are not measurements");
    }
    let n: usize = std::env::var("BENCH_URLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 2_000 } else { 1_000_000 });
    let kept = std::env::var_os("BENCH_DATA_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.clone().unwrap_or_else(|| temp.path().to_owned());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = StorageConfig { flush_max_updates: 50_000, ..StorageConfig::default() };
        let db = LocalDb::open(&dir).unwrap();
        let storage = storage::open(BackendKind::Redb(db), Arc::new(SystemClock), config).await.unwrap();
        let stats = storage.stats().clone();
        let fill = Instant::now();
        for i in 0..n {
            let url = Subject::Url(ImageUrl::parse(&format!("http://images.example/{i:07}.jpg")).unwrap());
            // A few popular URLs, so the top 10 is not decided by ties alone.
            let repeats = if i % 100_000 == 0 { 5 + i / 100_000 } else { 1 };
            for r in 0..repeats {
                stats.record(&url, Duration::from_micros(500 + (i % 1000) as u64 * 10 + r as u64));
            }
            if i % 50_000 == 0 {
                storage.flush().await.unwrap();
            }
        }
        storage.flush().await.unwrap();
        let fill_s = fill.elapsed().as_secs_f64();
        let mut ms = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let top = stats.top(10).await.unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(top.len(), 10);
        }
        ms.sort_by(f64::total_cmp);
        let size = std::fs::metadata(dir.join("classifier.redb")).unwrap().len();
        println!(
            "report store: {n} URLs filled in {fill_s:.1} s | top(10) p50 {:.3} ms p99 {:.3} ms | redb file {:.1} MiB ({:.1} MiB per million URLs)",
            ms[ms.len() / 2],
            ms[ms.len() * 99 / 100],
            size as f64 / 1048576.0,
            size as f64 / 1048576.0 / (n as f64 / 1e6)
        );
        storage.shutdown().await.unwrap();
    });
}
