//! The document indexed for every `GET /report`: the report itself plus flat numbers that a chart
//! can aggregate without reaching into the `entries` array.
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::clock::unix_millis;
use crate::domain::{Totals, UrlStats};

/// One report as stored in Elasticsearch. Field names are the wire names; the index template in
/// [`super::template`] maps each of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportDocument {
    /// When the report was produced (RFC 3339, UTC, millisecond precision).
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub instance_id: String,
    /// The answering model's SHA-256 (absent when the reporter was not told).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// Exactly the rows `/report` returned, with the same field names.
    pub entries: Vec<UrlStats>,
    /// `entries.len()`.
    pub entries_returned: u64,
    /// Highest `count` among the entries (0 when there are none).
    pub top_count: u64,
    /// `Totals::count`: requests recorded since the statistics began (a cumulative counter).
    pub total_requests: u64,
    pub overall_min_processing_time: f64,
    pub overall_max_processing_time: f64,
    pub overall_avg_processing_time: f64,
}

impl ReportDocument {
    pub fn new(
        at: SystemTime,
        instance_id: &str,
        model_sha256: Option<&str>,
        entries: Vec<UrlStats>,
        totals: &Totals,
    ) -> ReportDocument {
        ReportDocument {
            timestamp: rfc3339_millis(at),
            instance_id: instance_id.to_owned(),
            model_sha256: model_sha256.map(str::to_owned),
            entries_returned: entries.len() as u64,
            top_count: entries.iter().map(|e| e.count).max().unwrap_or(0),
            entries,
            total_requests: totals.count,
            overall_min_processing_time: totals.min_processing_time,
            overall_max_processing_time: totals.max_processing_time,
            overall_avg_processing_time: totals.avg_processing_time,
        }
    }
}

/// The `_id` of a document: unique across restarts and instances, fixed at enqueue time and
/// stored with the document, so every retry of the same document carries the same id (which is
/// what makes `create` idempotent). The sequence number is persisted; the time part keeps ids
/// unique even if the data directory (and with it the sequence) is wiped while the index is kept.
pub(crate) fn document_id(instance_id: &str, at: SystemTime, seq: u64) -> String {
    format!("{instance_id}-{:013}-{seq}", unix_millis(at))
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the `@timestamp` format the index template maps as a date.
pub(crate) fn rfc3339_millis(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(writable(unix_millis(t))).to_string()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a whole number of milliseconds since the epoch (histogram keys).
pub(crate) fn rfc3339_seconds(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(writable(unix_ms)).to_string()
}

/// 9999-12-31T23:59:59.999Z: humantime cannot write a later time (it panics).
const LAST_WRITABLE_MS: u64 = 253_402_300_799_999;

/// The instant `unix_ms` after the epoch, clamped to what RFC 3339 can write, so that a wrong
/// clock or an odd histogram key from the cluster cannot panic a request. (Times before 1970
/// are already clamped to the epoch by `unix_millis`.)
fn writable(unix_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms.min(LAST_WRITABLE_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339_millis(at(0)), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 (leap day) 23:59:59.999
        assert_eq!(
            rfc3339_millis(at(1_709_251_199_999)),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(at(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339_seconds(1_795_719_600_000), "2026-11-26T19:00:00Z");
        assert_eq!(rfc3339_seconds(4_102_444_800_000), "2100-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(1_795_719_600_999), "2026-11-26T19:00:00Z");
    }

    #[test]
    fn times_rfc3339_cannot_write_are_clamped() {
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_millis(before), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_seconds(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_millis(at(300_000_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn document_has_report_fields_and_flat_numbers() {
        let entries = vec![
            UrlStats {
                image_url: Some("http://img/a.jpg".into()),
                upload_sha256: None,
                count: 3,
                min_processing_time: 0.25,
                max_processing_time: 1.5,
                avg_processing_time: 0.75,
            },
            UrlStats {
                image_url: Some("http://img/b.jpg".into()),
                upload_sha256: None,
                count: 2,
                min_processing_time: 0.125,
                max_processing_time: 2.0,
                avg_processing_time: 1.0625,
            },
        ];
        let totals = Totals {
            count: 5,
            min_processing_time: 0.125,
            max_processing_time: 2.0,
            avg_processing_time: 0.875,
        };
        let doc = ReportDocument::new(
            at(1_795_719_600_123),
            "web-1",
            Some("9daf"),
            entries,
            &totals,
        );
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "@timestamp": "2026-11-26T19:00:00.123Z",
                "instance_id": "web-1",
                "model_sha256": "9daf",
                "entries": [
                    {"image_url": "http://img/a.jpg", "count": 3, "min_processing_time": 0.25,
                     "max_processing_time": 1.5, "avg_processing_time": 0.75},
                    {"image_url": "http://img/b.jpg", "count": 2, "min_processing_time": 0.125,
                     "max_processing_time": 2.0, "avg_processing_time": 1.0625},
                ],
                "entries_returned": 2,
                "top_count": 3,
                "total_requests": 5,
                "overall_min_processing_time": 0.125,
                "overall_max_processing_time": 2.0,
                "overall_avg_processing_time": 0.875,
            })
        );
    }

    #[test]
    fn empty_report_has_zero_numbers() {
        let totals = Totals {
            count: 0,
            min_processing_time: 0.0,
            max_processing_time: 0.0,
            avg_processing_time: 0.0,
        };
        let doc = ReportDocument::new(at(0), "x", None, Vec::new(), &totals);
        assert_eq!((doc.entries_returned, doc.top_count), (0, 0));
        // Not told the model: no field rather than a null.
        let json = serde_json::to_value(&doc).unwrap();
        assert!(json.get("model_sha256").is_none(), "{json}");
    }

    #[test]
    fn ids_carry_instance_time_and_sequence() {
        assert_eq!(
            document_id("web-1", at(1_795_719_600_123), 42),
            "web-1-1795719600123-42"
        );
        assert_ne!(document_id("a", at(5), 1), document_id("a", at(5), 2));
    }
}
