//! Usage over time for `GET /report/history`: successful classify requests and their average
//! processing time, per minute.
//!
//! - [`HistorySource`]: what the endpoint needs from a backend, the points of a window of minutes.
//! - [`MemoryHistory`] (`ring.rs`): a fixed ring of per-minute samples kept by this process,
//!   updated by every successful classify request. It is always there: it is the source when
//!   nothing else is configured, and the fallback when the configured source fails.
//! - [`History`]: records into the ring and answers from the configured source. Other sources
//!   (the report documents in Elasticsearch, the fleet's figures in Redis) implement
//!   [`HistorySource`] in their own module and are handed in at startup, so this module knows
//!   none of them.
//!
//! Minutes are wall-clock minutes of the injected [`Clock`] (UTC, aligned to :00 seconds), taken
//! when the request is answered, so tests can move time forward instead of sleeping.
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

mod ring;

pub use ring::MemoryHistory;

/// The longest window `/report/history` answers for, and so how many minutes the ring keeps:
/// 24 h. Sources never need to answer for more.
pub const MAX_MINUTES: u32 = 1440;

/// One minute with traffic. Minutes without traffic are left out (as an Elasticsearch
/// `date_histogram` with its default `min_doc_count: 1` does); clients fill the gaps with zero.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Start of the minute, RFC 3339 in UTC: `2026-11-26T19:00:00Z`.
    pub minute: String,
    /// Successful classify requests answered in that minute.
    pub requests: u64,
    /// Their mean `processing_time`, in seconds.
    pub avg_processing_time: f64,
}

impl HistoryPoint {
    /// The point of Unix minute `minute` with `requests` taking `sum_secs` in all; `None` for a
    /// minute without traffic (left out of every answer).
    pub fn new(minute: u64, requests: u64, sum_secs: f64) -> Option<HistoryPoint> {
        (requests > 0).then(|| HistoryPoint {
            minute: format_minute(minute),
            requests,
            avg_processing_time: sum_secs / requests as f64,
        })
    }
}

/// Why a source could not answer: logged when the ring stands in, else handed to the caller
/// (a source's own error type, e.g. the storage layer's, can be downcast from it).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The configured source failed and nothing stands in for it (see [`History::shared`]).
#[derive(Debug, thiserror::Error)]
#[error("history source {source_name} failed: {cause}")]
pub struct Unavailable {
    pub source_name: &'static str,
    pub cause: SourceError,
}

/// Minutes since the Unix epoch (0 before it): the unit every source keys its figures by.
pub fn unix_minute(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Start of a Unix minute, RFC 3339 in UTC.
pub fn format_minute(minute: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(minute * 60);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The Unix minutes of the last `minutes` (capped to 1..=[`MAX_MINUTES`]) ending with `now`.
pub fn window(now: u64, minutes: u32) -> RangeInclusive<u64> {
    now.saturating_sub(u64::from(minutes.clamp(1, MAX_MINUTES)) - 1)..=now
}

/// Where the points of `/report/history` come from. Behind an `Arc<dyn _>` (chosen once at
/// startup), hence the boxed future: a query that may cross the network costs far more.
pub trait HistorySource: Send + Sync {
    /// The `source` field of the response.
    fn name(&self) -> &'static str;

    /// Minutes with traffic among the last `minutes` (1..=[`MAX_MINUTES`], the current,
    /// unfinished minute included), oldest first.
    fn points(&self, minutes: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>>;
}

/// Records every successful request into the memory ring and answers history queries from the
/// configured source. The ring keeps recording whatever the source (it costs a mutex and an
/// add), so it can answer when that source cannot; a [`History::shared`] has none. Cheap to
/// clone.
#[derive(Clone)]
pub struct History {
    ring: Option<MemoryHistory>,
    source: Arc<dyn HistorySource>,
}

impl History {
    /// History kept and served in memory.
    pub fn in_memory(clock: Arc<dyn Clock>) -> History {
        let ring = MemoryHistory::new(clock);
        History {
            source: Arc::new(ring.clone()),
            ring: Some(ring),
        }
    }

    /// History served by `source`, still recorded in memory.
    pub fn with_source(clock: Arc<dyn Clock>, source: Arc<dyn HistorySource>) -> History {
        History {
            ring: Some(MemoryHistory::new(clock)),
            source,
        }
    }

    /// History served by a `source` that records the requests itself (the fleet's figures in
    /// Redis, fed with the statistics), without a ring: this process's figures are no stand-in
    /// for the fleet's, so when it fails, [`History::points`] says so.
    pub fn shared(source: Arc<dyn HistorySource>) -> History {
        History { ring: None, source }
    }

    /// Records one successful request answered now that took `processing_time`.
    pub fn record(&self, processing_time: Duration) {
        if let Some(ring) = &self.ring {
            ring.record(processing_time);
        }
    }

    /// See [`HistorySource::points`], and the name of the source that answered. When the
    /// configured source cannot answer, this instance's memory ring does (the dashboard keeps
    /// working; the log says why); without a ring, the error is the caller's.
    pub async fn points(
        &self,
        minutes: u32,
    ) -> Result<(&'static str, Vec<HistoryPoint>), Unavailable> {
        let name = self.source.name();
        match (self.source.points(minutes).await, &self.ring) {
            (Ok(points), _) => Ok((name, points)),
            (Err(e), Some(ring)) => {
                tracing::warn!(error = %e, source = name, "history source failed; answering from memory");
                Ok((ring.name(), ring.window(minutes)))
            }
            (Err(cause), None) => Err(Unavailable {
                source_name: name,
                cause,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::SystemTime;

    fn clock() -> ManualClock {
        // 2026-11-26T19:00:00Z
        ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_600))
    }

    /// A source that is always down.
    struct Down;
    impl HistorySource for Down {
        fn name(&self) -> &'static str {
            "down"
        }
        fn points(&self, _: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>> {
            Box::pin(async { Err("unreachable".into()) })
        }
    }

    /// A source that always answers one fixed point.
    struct Fixed;
    impl HistorySource for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn points(&self, minutes: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>> {
            Box::pin(async move {
                Ok(vec![HistoryPoint {
                    minute: "m".into(),
                    requests: u64::from(minutes),
                    avg_processing_time: 0.5,
                }])
            })
        }
    }

    #[tokio::test]
    async fn history_serves_the_memory_ring_as_source_memory() {
        let history = History::in_memory(Arc::new(clock()));
        assert!(history.points(60).await.unwrap().1.is_empty());
        history.record(Duration::from_millis(40));
        let (source, points) = history.points(60).await.unwrap();
        assert_eq!(source, "memory");
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].minute, "2026-11-26T19:00:00Z");
        assert_eq!(points[0].requests, 1);
    }

    #[tokio::test]
    async fn a_configured_source_answers_and_the_ring_stands_in_when_it_fails() {
        let history = History::with_source(Arc::new(clock()), Arc::new(Fixed));
        history.record(Duration::from_millis(40));
        let (source, points) = history.points(7).await.unwrap();
        assert_eq!((source, points[0].requests), ("fixed", 7));

        let history = History::with_source(Arc::new(clock()), Arc::new(Down));
        history.record(Duration::from_millis(40));
        history.record(Duration::from_millis(60));
        let (source, points) = history.points(60).await.unwrap();
        assert_eq!(source, "memory");
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].requests, 2);
    }

    #[tokio::test]
    async fn a_shared_source_has_no_stand_in_its_failure_is_the_callers() {
        let history = History::shared(Arc::new(Down));
        history.record(Duration::from_millis(40));
        let e = history.points(60).await.unwrap_err();
        assert_eq!(e.source_name, "down");
        assert_eq!(e.cause.to_string(), "unreachable");
        let (source, _) = History::shared(Arc::new(Fixed)).points(3).await.unwrap();
        assert_eq!(source, "fixed");
    }

    #[test]
    fn a_window_is_the_last_n_minutes_capped_to_a_day() {
        assert_eq!(window(100, 1), 100..=100);
        assert_eq!(window(100, 60), 41..=100);
        assert_eq!(window(100, 0), 100..=100);
        assert_eq!(window(5000, u32::MAX), 3561..=5000);
        assert_eq!(window(3, 60), 0..=3);
        assert_eq!(HistoryPoint::new(7, 0, 0.0), None);
        assert_eq!(
            format_minute(unix_minute(SystemTime::UNIX_EPOCH)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_point_serializes_to_the_documented_shape() {
        let point = HistoryPoint {
            minute: "2026-11-26T19:00:00Z".into(),
            requests: 12,
            avg_processing_time: 0.034,
        };
        assert_eq!(
            serde_json::to_string(&point).unwrap(),
            r#"{"minute":"2026-11-26T19:00:00Z","requests":12,"avg_processing_time":0.034}"#
        );
    }
}
