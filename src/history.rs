//! Usage over time for `GET /report/history`: successful classify requests and their average
//! processing time, per minute.
//!
//! Two parts:
//! - [`MemoryHistory`]: a fixed ring of per-minute samples (24 h of minutes, ~35 KiB), updated by
//!   every successful classify request (fresh or cached, like `/report`). In memory only: it
//!   starts empty at each start; the durable per-URL figures stay in `stats`.
//! - [`History`]: what the endpoint reads from. Today only the memory ring ([`Source::Memory`]);
//!   an Elasticsearch source plugs in as another [`Source`] variant (see there), so the handler and
//!   the response shape do not change.
//!
//! Minutes are wall-clock minutes of the injected [`Clock`] (UTC, aligned to :00 seconds), taken
//! when the request is answered, so tests can move time forward instead of sleeping.
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

/// How many minutes the ring keeps, and the most `/report/history` answers for: 24 h.
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

/// Where `/report/history` reads from: the memory ring, or, when it is configured, the report
/// documents in Elasticsearch (history across restarts and instances). The memory ring keeps
/// recording either way (it costs a mutex and an add).
#[derive(Clone)]
pub enum Source {
    Memory,
    Elasticsearch(crate::elastic::Reporter),
}

impl Source {
    /// The `source` field of the response.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Elasticsearch(_) => "elasticsearch",
        }
    }
}

/// Records every successful request into the memory ring and answers history queries from the
/// configured source. Cheap to clone.
#[derive(Clone)]
pub struct History {
    memory: MemoryHistory,
    source: Source,
}

impl History {
    /// History kept and served in memory.
    pub fn in_memory(clock: Arc<dyn Clock>) -> History {
        History {
            memory: MemoryHistory::new(clock),
            source: Source::Memory,
        }
    }

    /// History served from Elasticsearch's report documents, still recorded in memory.
    pub fn elasticsearch(clock: Arc<dyn Clock>, reporter: crate::elastic::Reporter) -> History {
        History {
            memory: MemoryHistory::new(clock),
            source: Source::Elasticsearch(reporter),
        }
    }

    /// Records one successful request answered now that took `processing_time`.
    pub fn record(&self, processing_time: Duration) {
        self.memory.record(processing_time);
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Minutes with traffic among the last `minutes` (the current, unfinished minute included),
    /// oldest first, and the name of the source that answered. When Elasticsearch cannot answer,
    /// this instance's memory ring does (the dashboard keeps working; the log says why).
    pub async fn points(&self, minutes: u32) -> (&'static str, Vec<HistoryPoint>) {
        match &self.source {
            Source::Memory => (self.source.name(), self.memory.points(minutes)),
            Source::Elasticsearch(reporter) => {
                // One minute more than asked: the first bucket only anchors the first difference.
                match reporter.history(minutes + 1).await {
                    Ok(buckets) => (self.source.name(), per_minute(&buckets)),
                    Err(e) => {
                        tracing::warn!(error = %e, "history from Elasticsearch failed; answering from memory");
                        (Source::Memory.name(), self.memory.points(minutes))
                    }
                }
            }
        }
    }
}

/// Report documents carry a running total of requests; a chart wants requests per minute: the
/// difference between consecutive minutes' totals. A total that went down means the statistics
/// restarted from zero (new data dir), so the new total is that minute's count.
fn per_minute(buckets: &[crate::elastic::HistoryPoint]) -> Vec<HistoryPoint> {
    buckets
        .windows(2)
        .map(|pair| {
            let (before, now) = (&pair[0], &pair[1]);
            HistoryPoint {
                minute: now.minute.clone(),
                requests: now
                    .requests
                    .checked_sub(before.requests)
                    .unwrap_or(now.requests),
                avg_processing_time: now.avg_processing_time,
            }
        })
        .collect()
}

/// The per-minute ring. Slot `m % MAX_MINUTES` holds minute `m` (minutes since the Unix epoch);
/// a slot still holding an older minute is reset when a newer minute lands on it, so the ring
/// never needs a sweeper and never grows.
#[derive(Clone)]
pub struct MemoryHistory {
    clock: Arc<dyn Clock>,
    // A std mutex: held for an add or a read of at most 1440 slots, never across an await.
    slots: Arc<Mutex<Vec<Slot>>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    minute: u64,
    requests: u64,
    sum_secs: f64,
}

impl MemoryHistory {
    pub fn new(clock: Arc<dyn Clock>) -> MemoryHistory {
        MemoryHistory {
            clock,
            slots: Arc::new(Mutex::new(vec![Slot::default(); MAX_MINUTES as usize])),
        }
    }

    /// Adds one request to the current minute.
    pub fn record(&self, processing_time: Duration) {
        let minute = unix_minute(self.clock.now());
        let mut slots = self.lock();
        let slot = &mut slots[index(minute)];
        if slot.minute > minute {
            // The clock went back more than the ring holds; this minute is already forgotten.
            return;
        }
        if slot.minute < minute {
            *slot = Slot {
                minute,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.sum_secs += processing_time.as_secs_f64();
    }

    /// See [`History::points`]; `minutes` is capped at [`MAX_MINUTES`].
    pub fn points(&self, minutes: u32) -> Vec<HistoryPoint> {
        let now = unix_minute(self.clock.now());
        let first = now.saturating_sub(u64::from(minutes.clamp(1, MAX_MINUTES)) - 1);
        let slots = self.lock();
        (first..=now)
            .filter_map(|minute| {
                let slot = slots[index(minute)];
                (slot.minute == minute && slot.requests > 0).then(|| HistoryPoint {
                    minute: format_minute(minute),
                    requests: slot.requests,
                    avg_processing_time: slot.sum_secs / slot.requests as f64,
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // A panic while holding it cannot leave a slot half-written in a harmful way.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn index(minute: u64) -> usize {
    (minute % u64::from(MAX_MINUTES)) as usize
}

fn unix_minute(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

fn format_minute(minute: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(minute * 60);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_totals_become_per_minute_counts() {
        let point = |minute: &str, requests, avg| crate::elastic::HistoryPoint {
            minute: minute.into(),
            requests,
            avg_processing_time: avg,
        };
        let got = per_minute(&[
            point("m0", 10, 0.1),
            point("m1", 15, 0.2),
            point("m3", 15, 0.2),
            point("m4", 3, 0.3), // statistics restarted
        ]);
        let requests: Vec<u64> = got.iter().map(|p| p.requests).collect();
        assert_eq!(requests, [5, 0, 3]);
        assert_eq!(got[0].minute, "m1");
        assert!((got[2].avg_processing_time - 0.3).abs() < 1e-12);
    }
    use crate::clock::ManualClock;

    const MINUTE: Duration = Duration::from_secs(60);

    /// 2026-11-26T19:00:00Z, plus `secs_into_minute`.
    fn clock(secs_into_minute: u64) -> ManualClock {
        ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_719_600 + secs_into_minute),
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn summary(points: &[HistoryPoint]) -> Vec<(&str, u64, f64)> {
        points
            .iter()
            // Rounded to microseconds: sums of float seconds are not exact.
            .map(|p| {
                let avg = (p.avg_processing_time * 1e6).round() / 1e6;
                (p.minute.as_str(), p.requests, avg)
            })
            .collect()
    }

    #[test]
    fn counts_and_averages_per_minute_oldest_first_leaving_out_quiet_minutes() {
        let clock = clock(10);
        let history = MemoryHistory::new(Arc::new(clock.clone()));
        history.record(ms(100));
        history.record(ms(300));
        clock.advance(Duration::from_secs(49)); // 19:00:59: still the same minute
        history.record(ms(200));
        clock.advance(Duration::from_secs(1) + 2 * MINUTE); // 19:03:00; 19:01 and 19:02 quiet
        history.record(ms(50));

        assert_eq!(
            summary(&history.points(60)),
            vec![
                ("2026-11-26T19:00:00Z", 3, 0.2),
                ("2026-11-26T19:03:00Z", 1, 0.05),
            ]
        );
    }

    #[test]
    fn the_window_is_the_last_n_minutes_including_the_current_one() {
        let clock = clock(30);
        let history = MemoryHistory::new(Arc::new(clock.clone()));
        for _ in 0..5 {
            history.record(ms(10));
            clock.advance(MINUTE);
        }
        // Recorded at 19:00 .. 19:04; now 19:05 (no traffic yet).
        let minutes =
            |n| -> Vec<String> { history.points(n).into_iter().map(|p| p.minute).collect() };
        assert!(minutes(1).is_empty());
        assert_eq!(minutes(2), vec!["2026-11-26T19:04:00Z"]);
        assert_eq!(
            minutes(3),
            vec!["2026-11-26T19:03:00Z", "2026-11-26T19:04:00Z"]
        );
        assert_eq!(minutes(6).len(), 5);
        assert_eq!(minutes(MAX_MINUTES).len(), 5);
    }

    #[test]
    fn keeps_24_hours_and_reuses_slots_after_that() {
        let clock = clock(0);
        let history = MemoryHistory::new(Arc::new(clock.clone()));
        history.record(ms(1000));
        history.record(ms(1000));
        // Exactly one ring later: the same slot, a new minute; the old figures must not leak in.
        clock.advance(MINUTE * MAX_MINUTES);
        history.record(ms(10));
        let points = history.points(MAX_MINUTES);
        assert_eq!(summary(&points), vec![("2026-11-27T19:00:00Z", 1, 0.01)]);
        // The day-old minute is out of every window, even the largest (capped at 1440).
        assert_eq!(history.points(u32::MAX).len(), 1);

        // 23 h 59 min later, the 24 h window still holds it; a minute later it does not.
        clock.advance(MINUTE * (MAX_MINUTES - 1));
        assert_eq!(history.points(MAX_MINUTES).len(), 1);
        clock.advance(MINUTE);
        assert!(history.points(MAX_MINUTES).is_empty());
    }

    #[test]
    fn a_clock_gone_back_past_the_ring_does_not_corrupt_newer_minutes() {
        let clock = clock(0);
        let history = MemoryHistory::new(Arc::new(clock.clone()));
        clock.advance(MINUTE * MAX_MINUTES);
        history.record(ms(10));
        let late = ManualClock::new(clock.now() - MINUTE * MAX_MINUTES);
        MemoryHistory {
            clock: Arc::new(late),
            slots: history.slots.clone(),
        }
        .record(ms(5000));
        assert_eq!(
            summary(&history.points(1)),
            vec![("2026-11-27T19:00:00Z", 1, 0.01)]
        );
    }

    #[tokio::test]
    async fn history_serves_the_memory_ring_as_source_memory() {
        let clock = clock(0);
        let history = History::in_memory(Arc::new(clock.clone()));
        assert_eq!(history.source().name(), "memory");
        assert!(history.points(60).await.1.is_empty());
        history.record(ms(40));
        let (source, points) = history.points(60).await;
        assert_eq!(source, "memory");
        assert_eq!(summary(&points), vec![("2026-11-26T19:00:00Z", 1, 0.04)]);
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
