//! The read side for a dashboard: per-minute request totals and processing time, from the
//! report documents themselves (the same aggregation as the Kibana chart).
use std::time::{Duration, SystemTime};

use elasticsearch::{Elasticsearch, SearchParts};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{reply, status_error};
use super::document::{rfc3339_millis, rfc3339_seconds};
use super::ElasticError;

/// One week of minutes: bounds the number of buckets far below Elasticsearch's
/// `search.max_buckets` (65 536) whatever the caller asks for.
pub const MAX_HISTORY_MINUTES: u32 = 7 * 24 * 60;

/// One minute that has at least one report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Start of the minute (RFC 3339, UTC).
    pub minute: String,
    /// Highest `total_requests` reported during the minute. `total_requests` is a cumulative
    /// counter per instance, so this is "requests served so far" as of that minute (with several
    /// instances: the largest instance's count).
    pub requests: u64,
    /// Mean of `overall_avg_processing_time` over the minute's reports, in seconds.
    pub avg_processing_time: f64,
}

/// The search body: reports of the last `minutes` before `now`, bucketed per minute. Minutes
/// without reports are left out (`min_doc_count: 1`) rather than reported as 0 requests, which
/// a cumulative counter would make look like a reset.
pub(crate) fn query(now: SystemTime, minutes: u32) -> Value {
    let from = now
        .checked_sub(Duration::from_secs(u64::from(minutes) * 60))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    json!({
        "size": 0,
        "query": {"range": {"@timestamp": {
            "gte": rfc3339_millis(from),
            "lte": rfc3339_millis(now),
        }}},
        "aggs": {"per_minute": {
            "date_histogram": {"field": "@timestamp", "fixed_interval": "1m", "min_doc_count": 1},
            "aggs": {
                "requests": {"max": {"field": "total_requests"}},
                "avg_processing_time": {"avg": {"field": "overall_avg_processing_time"}},
            },
        }},
    })
}

/// Reads the buckets of [`query`]'s answer. A metric is `null` when no report in the bucket has
/// the field; that reads as 0.
pub(crate) fn parse(body: &Value) -> Result<Vec<HistoryPoint>, ElasticError> {
    let buckets = body
        .pointer("/aggregations/per_minute/buckets")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ElasticError::Unexpected("search answer has no per_minute buckets".to_owned())
        })?;
    buckets
        .iter()
        .map(|b| {
            let key = b.get("key").and_then(Value::as_f64).ok_or_else(|| {
                ElasticError::Unexpected("histogram bucket without a numeric key".to_owned())
            })?;
            let metric = |name: &str| b.pointer(&format!("/{name}/value")).and_then(Value::as_f64);
            Ok(HistoryPoint {
                minute: rfc3339_seconds(key.max(0.0) as u64),
                requests: metric("requests").map_or(0, |v| v.max(0.0).round() as u64),
                avg_processing_time: metric("avg_processing_time").unwrap_or(0.0),
            })
        })
        .collect()
}

/// A dashboard waits for this answer: fail fast rather than after the delivery timeout.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn fetch(
    client: &Elasticsearch,
    index: &str,
    now: SystemTime,
    minutes: u32,
    request_timeout: Duration,
) -> Result<Vec<HistoryPoint>, ElasticError> {
    let minutes = minutes.min(MAX_HISTORY_MINUTES);
    if minutes == 0 {
        return Ok(Vec::new());
    }
    let indices = [index];
    let sent = client
        .search(SearchParts::Index(&indices))
        .body(query(now, minutes))
        .request_timeout(request_timeout.min(HISTORY_TIMEOUT))
        .send()
        .await;
    let (status, body) = reply(sent).await?;
    match status {
        200..=299 => parse(&body),
        // Nothing reported yet.
        404 => Ok(Vec::new()),
        _ => Err(status_error(status, &body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_covers_the_last_n_minutes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_600);
        let q = query(now, 10);
        assert_eq!(
            q["query"]["range"]["@timestamp"]["gte"],
            "2026-11-26T18:50:00.000Z"
        );
        assert_eq!(
            q["query"]["range"]["@timestamp"]["lte"],
            "2026-11-26T19:00:00.000Z"
        );
        assert_eq!(
            q["aggs"]["per_minute"]["date_histogram"]["fixed_interval"],
            "1m"
        );
    }

    #[test]
    fn parses_buckets_and_null_metrics() {
        let body = json!({"aggregations": {"per_minute": {"buckets": [
            {"key": 1_795_719_600_000u64, "doc_count": 2, "requests": {"value": 7.0},
             "avg_processing_time": {"value": 0.25}},
            {"key": 1_795_719_660_000u64, "doc_count": 1, "requests": {"value": null},
             "avg_processing_time": {"value": null}},
        ]}}});
        assert_eq!(
            parse(&body).unwrap(),
            vec![
                HistoryPoint {
                    minute: "2026-11-26T19:00:00Z".into(),
                    requests: 7,
                    avg_processing_time: 0.25
                },
                HistoryPoint {
                    minute: "2026-11-26T19:01:00Z".into(),
                    requests: 0,
                    avg_processing_time: 0.0
                },
            ]
        );
        assert!(parse(&json!({"hits": {}})).is_err());
    }
}
