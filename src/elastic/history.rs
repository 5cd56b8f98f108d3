//! The Elasticsearch source of `/report/history`: per-minute figures from the report documents
//! themselves (the same aggregation as the Kibana chart).
//!
//! A report document carries `total_requests`, a cumulative counter of the instance that sent it;
//! the per-minute request counts the endpoint answers with are the differences between
//! consecutive minutes' highest totals. That conversion lives here, with the knowledge of what
//! the documents hold. It is only right for one instance: with several, each minute's highest
//! total is the largest instance's.
use std::time::{Duration, SystemTime};

use elasticsearch::{Elasticsearch, SearchParts};
use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::client::{reply, status_error};
use super::document::{rfc3339_millis, rfc3339_seconds};
use super::{ElasticError, Reporter};
use crate::history::{HistoryPoint, HistorySource, SourceError, MAX_MINUTES};

/// One minute that has at least one report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bucket {
    /// Start of the minute (RFC 3339, UTC).
    pub minute: String,
    /// Highest `total_requests` reported during the minute: "requests served so far" as of
    /// that minute.
    pub requests_so_far: u64,
    /// Mean of `overall_avg_processing_time` over the minute's reports, in seconds.
    pub avg_processing_time: f64,
}

impl HistorySource for Reporter {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn points(&self, minutes: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>> {
        Box::pin(async move {
            // One minute more than asked: the first bucket only anchors the first difference.
            let buckets = self.buckets(minutes.min(MAX_MINUTES) + 1).await?;
            Ok(per_minute(&buckets))
        })
    }
}

impl Reporter {
    /// The buckets of the last `minutes` (at most [`MAX_MINUTES`] + 1, see
    /// [`HistorySource::points`]) that have reports, oldest first. Empty when the index does not
    /// exist yet. Uses the same client and credentials as delivery, with a timeout of at most
    /// 10 s.
    pub(crate) async fn buckets(&self, minutes: u32) -> Result<Vec<Bucket>, ElasticError> {
        fetch(
            &self.shared.client,
            &self.shared.index,
            self.shared.clock.now(),
            minutes,
            self.shared.request_timeout,
        )
        .await
    }
}

/// Requests per minute from running totals: the difference between consecutive minutes'
/// totals. A total that went down means the statistics restarted from zero (new data dir), so
/// the new total is that minute's count.
fn per_minute(buckets: &[Bucket]) -> Vec<HistoryPoint> {
    buckets
        .windows(2)
        .map(|pair| {
            let (before, now) = (&pair[0], &pair[1]);
            HistoryPoint {
                minute: now.minute.clone(),
                requests: now
                    .requests_so_far
                    .checked_sub(before.requests_so_far)
                    .unwrap_or(now.requests_so_far),
                avg_processing_time: now.avg_processing_time,
            }
        })
        .collect()
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
pub(crate) fn parse(body: &Value) -> Result<Vec<Bucket>, ElasticError> {
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
            Ok(Bucket {
                minute: rfc3339_seconds(key.max(0.0) as u64),
                requests_so_far: metric("requests").map_or(0, |v| v.max(0.0).round() as u64),
                avg_processing_time: metric("avg_processing_time").unwrap_or(0.0),
            })
        })
        .collect()
}

/// A dashboard waits for this answer: fail fast rather than after the delivery timeout.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(10);

async fn fetch(
    client: &Elasticsearch,
    index: &str,
    now: SystemTime,
    minutes: u32,
    request_timeout: Duration,
) -> Result<Vec<Bucket>, ElasticError> {
    // Bounds the number of buckets far below Elasticsearch's `search.max_buckets` (65 536).
    let minutes = minutes.min(MAX_MINUTES + 1);
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
                Bucket {
                    minute: "2026-11-26T19:00:00Z".into(),
                    requests_so_far: 7,
                    avg_processing_time: 0.25
                },
                Bucket {
                    minute: "2026-11-26T19:01:00Z".into(),
                    requests_so_far: 0,
                    avg_processing_time: 0.0
                },
            ]
        );
        assert!(parse(&json!({"hits": {}})).is_err());
    }

    #[test]
    fn running_totals_become_per_minute_counts() {
        let bucket = |minute: &str, requests_so_far, avg| Bucket {
            minute: minute.into(),
            requests_so_far,
            avg_processing_time: avg,
        };
        let got = per_minute(&[
            bucket("m0", 10, 0.1),
            bucket("m1", 15, 0.2),
            bucket("m3", 15, 0.2),
            bucket("m4", 3, 0.3), // statistics restarted
        ]);
        let requests: Vec<u64> = got.iter().map(|p| p.requests).collect();
        assert_eq!(requests, [5, 0, 3]);
        assert_eq!(got[0].minute, "m1");
        assert!((got[2].avg_processing_time - 0.3).abs() < 1e-12);
        assert!(per_minute(&[bucket("m0", 10, 0.1)]).is_empty());
    }
}
