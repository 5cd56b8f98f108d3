//! Prometheus metrics: names in one place, the recorder installed once per process.
//! Labels stay low-cardinality: routes, statuses and outcomes, never URLs or usernames.
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
            Some(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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
    describe_gauge!(INFERENCE_QUEUE, "images waiting for the inference thread");
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
