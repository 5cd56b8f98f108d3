//! `/report` cost with many distinct URLs (`cargo bench --bench report`): fills a store with
//! `BENCH_URLS` (default 1 000 000) distinct URLs through the real stats writer, then times
//! `top(10)` and prints the redb file size. With `BENCH_DATA_DIR` set, the filled store is left
//! there for scripts/bench.sh to serve over HTTP.
//!
//! With `BENCH_REDIS_URL` set, the same fill also goes to a Redis backend under
//! `BENCH_REDIS_PREFIX` (`bench-report`; it must hold no statistics yet), timed the same way,
//! with Redis's `used_memory` before and after it; the keys stay for scripts/bench.sh to serve
//! with `--redis-url … --redis-prefix …`.
use classifier_api::clock::SystemClock;
use classifier_api::domain::{ImageUrl, Subject};
use classifier_api::localdb::LocalDb;
use classifier_api::storage::{self, BackendKind, RedisConn, RedisTarget, Storage, StorageConfig};
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        redb_report(n, kept).await;
        if let Ok(url) = std::env::var("BENCH_REDIS_URL") {
            let prefix =
                std::env::var("BENCH_REDIS_PREFIX").unwrap_or_else(|_| "bench-report".into());
            redis_report(n, &url, &prefix).await;
        }
    });
}

fn config() -> StorageConfig {
    StorageConfig {
        flush_max_updates: 50_000,
        ..StorageConfig::default()
    }
}

/// Records `n` distinct URLs through the stats writer and waits until all are applied; returns
/// the seconds it took.
async fn fill(storage: &Storage, n: usize) -> f64 {
    let stats = storage.stats();
    let fill = Instant::now();
    for i in 0..n {
        let url =
            Subject::Url(ImageUrl::parse(&format!("http://images.example/{i:07}.jpg")).unwrap());
        // A few popular URLs, so the top 10 is not decided by ties alone.
        let repeats = if i % 100_000 == 0 { 5 + i / 100_000 } else { 1 };
        for r in 0..repeats {
            stats.record(
                &url,
                Duration::from_micros(500 + (i % 1000) as u64 * 10 + r as u64),
            );
        }
        if i % 50_000 == 0 {
            storage.flush().await.unwrap();
        }
    }
    storage.flush().await.unwrap();
    fill.elapsed().as_secs_f64()
}

/// `top(10)` 200 times: (p50, p99) in ms.
async fn time_top(storage: &Storage) -> (f64, f64) {
    let mut ms = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let top = storage.stats().top(10).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(top.len(), 10);
    }
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 99 / 100])
}

async fn redb_report(n: usize, kept: Option<std::path::PathBuf>) {
    let temp = tempfile::tempdir().unwrap();
    let dir = kept.unwrap_or_else(|| temp.path().to_owned());
    let db = LocalDb::open(&dir).unwrap();
    let storage = storage::open(BackendKind::Redb(db), Arc::new(SystemClock), config())
        .await
        .unwrap();
    let fill_s = fill(&storage, n).await;
    let (p50, p99) = time_top(&storage).await;
    let size = std::fs::metadata(dir.join("classifier.redb"))
        .unwrap()
        .len();
    println!(
        "report store: {n} URLs filled in {fill_s:.1} s | top(10) p50 {p50:.3} ms p99 {p99:.3} ms | redb file {:.1} MiB ({:.1} MiB per million URLs)",
        size as f64 / 1048576.0,
        size as f64 / 1048576.0 / (n as f64 / 1e6)
    );
    storage.shutdown().await.unwrap();
}

async fn redis_report(n: usize, url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut plain = client.get_multiplexed_async_connection().await.unwrap();
    let rows = format!("{prefix}:{{stats}}:rows");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&rows)
        .query_async(&mut plain)
        .await
        .unwrap();
    assert!(
        !exists,
        "{url} already holds statistics under {prefix:?}: pick another BENCH_REDIS_PREFIX"
    );
    let before = used_memory(&mut plain).await;
    // The bench's fill sends 50 000 URLs per script call: more than a command's production timeout.
    let conn = RedisConn::single(client, Duration::from_secs(60)).unwrap();
    let target = RedisTarget {
        conn,
        prefix: prefix.to_owned(),
        timeout: Duration::from_secs(60),
    };
    let kind = BackendKind::Redis(Box::new(target));
    let storage = storage::open(kind, Arc::new(SystemClock), config())
        .await
        .unwrap();
    let fill_s = fill(&storage, n).await;
    let after = used_memory(&mut plain).await;
    let (p50, p99) = time_top(&storage).await;
    let mib = after.saturating_sub(before) as f64 / 1048576.0;
    println!(
        "report store in Redis ({prefix:?}): {n} URLs filled in {fill_s:.1} s | top(10) p50 {p50:.3} ms p99 {p99:.3} ms | used_memory +{mib:.1} MiB ({:.1} MiB per million URLs)",
        mib / (n as f64 / 1e6)
    );
    storage.shutdown().await.unwrap();
}

/// `used_memory` from `INFO memory`, in bytes.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}
