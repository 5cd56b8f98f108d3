//! Prometheus metrics: names in one place, the recorder installed once per process.
//! Labels stay low-cardinality: routes, statuses and outcomes, never URLs or usernames.
//!
//! The per-request figures go through handles each thread registers once ([`record_request`],
//! [`count_outcome`]): the `counter!` macro builds the key and looks it up in the registry on
//! every call, which was 4% of a cached hit in `perf`.
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;

pub const HTTP_REQUESTS: &str = "classifier_http_requests_total";
pub const HTTP_DURATION: &str = "classifier_http_request_duration_seconds";
pub const DOWNLOAD_SECONDS: &str = "classifier_download_seconds";
pub const DECODE_SECONDS: &str = "classifier_decode_seconds";
pub const INFERENCE_SECONDS: &str = "classifier_inference_seconds";
pub const INFERENCE_BATCH: &str = "classifier_inference_batch_size";
pub const INFERENCE_QUEUE: &str = "classifier_inference_queue_depth";
pub const CACHE_LOOKUPS: &str = "classifier_cache_lookups_total";
pub const CONTENT_LOOKUPS: &str = "classifier_content_cache_lookups_total";
pub const CACHE_EXPIRED: &str = "classifier_cache_expired_total";
pub const LOGIN_FAILURES: &str = "classifier_login_failures_total";
/// 1 while the shared store (Redis, with `--redis-url`) answers, 0 during an outage.
pub const STORAGE_UP: &str = "classifier_storage_up";
/// Requests left out of the statistics because too many URLs waited for an apply (an outage).
pub const STATS_DROPPED: &str = "classifier_stats_dropped_total";
/// 1, labelled with the model's SHA-256, name, format and resize filter (see `GET /model`).
pub const MODEL_INFO: &str = "classifier_model_info";
pub const ES_OUTBOX_DEPTH: &str = "classifier_es_outbox_depth";
pub const ES_SENT: &str = "classifier_es_documents_sent";
pub const ES_FAILED: &str = "classifier_es_failed_attempts";
pub const ES_DEAD: &str = "classifier_es_documents_dead_lettered";
pub const ES_DROPPED: &str = "classifier_es_documents_dropped";

/// Seconds: from a cached hit (sub-millisecond) to a slow download (the 10 s default timeout).
const SECONDS_BUCKETS: &[f64] = &[
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder (the `metrics` facade allows one). `None` if another recorder was
/// installed first, in which case `/metrics` reports itself unavailable.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(INFERENCE_BATCH.into()),
                        BATCH_BUCKETS,
                    )
                })
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder installed with `install_recorder` keeps every histogram sample until someone runs
/// its upkeep, which a scrape does, so without scrapes its memory grew without bound: 2 MB a
/// second at 100 000 cached hits a second (peak RSS 404 MiB after a minute of them). A thread,
/// not a task: the recorder is the process's, and outlives any runtime (tests start many).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for scrapes");
    }
}

/// Whether this process's recorder is installed. Until it is, a handle would be a no-op one for
/// good, so none is kept.
fn recording() -> bool {
    matches!(HANDLE.get(), Some(Some(_)))
}

/// Per (route, status): the request counter and the route's duration histogram.
type RequestHandles = HashMap<(&'static str, u16), (Counter, Histogram)>;

thread_local! {
    /// Bounded: routes are a closed set, and statuses the few this server answers.
    static REQUEST_HANDLES: RefCell<RequestHandles> = RefCell::new(HashMap::new());
    /// Bounded: two metric names, five outcomes.
    static OUTCOME_HANDLES: RefCell<HashMap<(&'static str, &'static str), Counter>> =
        RefCell::new(HashMap::new());
}

/// One answered request: [`HTTP_REQUESTS`]`{route, status}` and [`HTTP_DURATION`]`{route}`.
pub fn record_request(route: &'static str, status: u16, seconds: f64) {
    let register = || {
        (
            metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => status.to_string()),
            metrics::histogram!(HTTP_DURATION, "route" => route),
        )
    };
    with_handle(
        &REQUEST_HANDLES,
        (route, status),
        register,
        |(requests, duration)| {
            requests.increment(1);
            duration.record(seconds);
        },
    );
}

/// One cache lookup: `name{outcome}` + 1 (`name` is [`CACHE_LOOKUPS`] or [`CONTENT_LOOKUPS`]).
pub fn count_outcome(name: &'static str, outcome: &'static str) {
    let register = || metrics::counter!(name, "outcome" => outcome);
    with_handle(&OUTCOME_HANDLES, (name, outcome), register, |c| {
        c.increment(1)
    });
}

/// `record` on this thread's handle for `key`, registered first if this thread has none yet.
fn with_handle<K: Eq + std::hash::Hash, H>(
    handles: &'static std::thread::LocalKey<RefCell<HashMap<K, H>>>,
    key: K,
    register: impl FnOnce() -> H,
    record: impl FnOnce(&H),
) {
    if recording() {
        handles.with_borrow_mut(|handles| record(handles.entry(key).or_insert_with(register)));
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_storage();
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route and status");
    describe_gauge!(
        MODEL_INFO,
        "the model serving (1), by its sha256, name, format and resize filter"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request duration by route"
    );
    describe_histogram!(DOWNLOAD_SECONDS, Unit::Seconds, "image download time");
    describe_histogram!(
        DECODE_SECONDS,
        Unit::Seconds,
        "decode + resize + scale time"
    );
    describe_histogram!(
        INFERENCE_SECONDS,
        Unit::Seconds,
        "time from queueing to result, per image"
    );
    describe_histogram!(INFERENCE_BATCH, "images per TensorFlow session run");
    describe_gauge!(INFERENCE_QUEUE, "images waiting for an inference thread");
    describe_counter!(
        CACHE_LOOKUPS,
        "classifications by outcome: fresh (miss), memory_hit, disk_hit, joined (single flight)"
    );
    describe_counter!(
        CONTENT_LOOKUPS,
        "lookups by content hash (uploads, and downloads that missed the URL cache) by outcome"
    );
    describe_counter!(CACHE_EXPIRED, "cache entries found expired on read");
    describe_counter!(LOGIN_FAILURES, "failed POST /token by reason");
    describe_gauge!(
        ES_OUTBOX_DEPTH,
        "report documents waiting for Elasticsearch"
    );
    describe_gauge!(
        ES_SENT,
        "report documents delivered to Elasticsearch since start"
    );
    describe_gauge!(
        ES_FAILED,
        "failed Elasticsearch delivery attempts since start"
    );
    describe_gauge!(
        ES_DEAD,
        "report documents Elasticsearch refused for good since start"
    );
    describe_gauge!(
        ES_DROPPED,
        "report documents dropped from a full outbox since start"
    );
}

/// The shared store's: its health, and what its outages cost.
fn describe_storage() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        STORAGE_UP,
        "1 while the shared store (Redis) answers, 0 during an outage"
    );
    describe_counter!(
        STATS_DROPPED,
        "requests left out of /report and /report/history: too many URLs waiting while the store did not answer"
    );
}
