//! The memory source: a fixed ring of per-minute samples (24 h of minutes, ~35 KiB), updated by
//! every successful classify request (fresh or cached, like `/report`). Per process and in memory
//! only: it starts empty at each start; the durable per-URL figures stay in `stats`.
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{unix_minute, window, HistoryPoint, HistorySource, SourceError, MAX_MINUTES};
use crate::clock::Clock;

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

    /// See [`HistorySource::points`]; `minutes` is capped at [`MAX_MINUTES`]. Never fails.
    pub fn window(&self, minutes: u32) -> Vec<HistoryPoint> {
        let window = window(unix_minute(self.clock.now()), minutes);
        let slots = self.lock();
        window
            .filter_map(|minute| {
                let slot = slots[index(minute)];
                // A slot still holding an older minute says nothing about this one.
                if slot.minute != minute {
                    return None;
                }
                HistoryPoint::new(minute, slot.requests, slot.sum_secs)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        crate::sync::lock(&self.slots)
    }
}

impl HistorySource for MemoryHistory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn points(&self, minutes: u32) -> BoxFuture<'_, Result<Vec<HistoryPoint>, SourceError>> {
        let points = self.window(minutes);
        Box::pin(async move { Ok(points) })
    }
}

fn index(minute: u64) -> usize {
    (minute % u64::from(MAX_MINUTES)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

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
            summary(&history.window(60)),
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
            |n| -> Vec<String> { history.window(n).into_iter().map(|p| p.minute).collect() };
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
        let points = history.window(MAX_MINUTES);
        assert_eq!(summary(&points), vec![("2026-11-27T19:00:00Z", 1, 0.01)]);
        // The day-old minute is out of every window, even the largest (capped at 1440).
        assert_eq!(history.window(u32::MAX).len(), 1);

        // 23 h 59 min later, the 24 h window still holds it; a minute later it does not.
        clock.advance(MINUTE * (MAX_MINUTES - 1));
        assert_eq!(history.window(MAX_MINUTES).len(), 1);
        clock.advance(MINUTE);
        assert!(history.window(MAX_MINUTES).is_empty());
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
            summary(&history.window(1)),
            vec![("2026-11-27T19:00:00Z", 1, 0.01)]
        );
    }
}
