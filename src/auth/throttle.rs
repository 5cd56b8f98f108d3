//! Failed-login limiter: at most `max_failures` failed logins per username within a sliding
//! `window`; further attempts are refused without looking at the password.
//!
//! An attempt is counted as a failure *before* the password is checked and forgiven on success.
//! Counting afterwards would let a burst of concurrent guesses all pass the check while the
//! first ones are still hashing.
//!
//! Memory is bounded: at most `capacity` usernames are tracked. When full, expired entries are
//! dropped, then the entry whose last failure is oldest. A spray of random usernames can thus
//! push out a real user's counter, but only by producing `capacity` failed logins (each one an
//! Argon2 hash on our side), which a global rate limit in front of the service should stop.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub const DEFAULT_MAX_FAILURES: usize = 5;
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Debug)]
pub(crate) struct Throttle {
    max_failures: usize,
    window: Duration,
    capacity: usize,
    /// username → failure times, oldest first, at most `max_failures` long.
    failures: Mutex<HashMap<String, VecDeque<SystemTime>>>,
}

impl Throttle {
    pub fn new(max_failures: usize, window: Duration, capacity: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` if `key` is locked out at `now`; otherwise records a provisional
    /// failure that [`Self::succeeded`] or [`Self::forget_attempt`] takes back.
    pub fn begin_attempt(&self, key: &str, now: SystemTime) -> Result<(), Duration> {
        let mut map = self.lock();
        if let Some(times) = map.get_mut(key) {
            self.expire(times, now);
            if times.len() >= self.max_failures {
                let oldest = times.front().copied().unwrap_or(now);
                return Err(self.window.saturating_sub(age(oldest, now)));
            }
            times.push_back(now);
            return Ok(());
        }
        if map.len() >= self.capacity {
            self.make_room(&mut map, now);
        }
        map.insert(key.to_owned(), VecDeque::from([now]));
        Ok(())
    }

    /// Correct password: the user's slate is wiped.
    pub fn succeeded(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The attempt failed for a reason that is not the caller's fault (storage error), so it
    /// should not count against them.
    pub fn forget_attempt(&self, key: &str) {
        let mut map = self.lock();
        if let Some(times) = map.get_mut(key) {
            times.pop_back();
            if times.is_empty() {
                map.remove(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<SystemTime>>> {
        crate::sync::lock(&self.failures)
    }

    fn expire(&self, times: &mut VecDeque<SystemTime>, now: SystemTime) {
        while times.front().is_some_and(|&t| age(t, now) >= self.window) {
            times.pop_front();
        }
    }

    fn make_room(&self, map: &mut HashMap<String, VecDeque<SystemTime>>, now: SystemTime) {
        map.retain(|_, times| times.back().is_some_and(|&t| age(t, now) < self.window));
        while map.len() >= self.capacity {
            let stalest = map
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(k, _)| k.clone());
            match stalest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FAILURES, DEFAULT_WINDOW, DEFAULT_CAPACITY)
    }
}

/// A clock stepping backwards makes a time look like it is in the future; treat it as brand new
/// rather than erroring.
fn age(t: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Usernames the throttle holds state for.
    fn tracked(th: &Throttle) -> usize {
        th.lock().len()
    }

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    #[test]
    fn locks_after_max_failures_and_unlocks_after_window() {
        let th = Throttle::default();
        let now = t0();
        for _ in 0..5 {
            th.begin_attempt("alice", now).expect("allowed");
        }
        let later = now + Duration::from_secs(10);
        let retry = th.begin_attempt("alice", later).expect_err("locked");
        assert_eq!(retry, Duration::from_secs(50));
        // Other users unaffected.
        th.begin_attempt("bob", later).expect("bob allowed");
        th.begin_attempt("alice", now + Duration::from_secs(60))
            .expect("window passed");
    }

    #[test]
    fn success_and_forget_take_attempts_back() {
        let th = Throttle::default();
        let now = t0();
        for _ in 0..4 {
            th.begin_attempt("alice", now).expect("allowed");
        }
        th.succeeded("alice");
        assert_eq!(tracked(&th), 0);
        for _ in 0..5 {
            th.begin_attempt("alice", now).expect("allowed");
            th.forget_attempt("alice");
        }
        th.begin_attempt("alice", now)
            .expect("forgotten attempts did not count");
    }

    #[test]
    fn size_is_bounded_under_username_spray() {
        let th = Throttle::new(5, DEFAULT_WINDOW, 100);
        let now = t0();
        for _ in 0..5 {
            th.begin_attempt("victim", now).expect("allowed");
        }
        for i in 0..1_000u64 {
            let t = now + Duration::from_millis(i + 1);
            th.begin_attempt(&format!("random-{i}"), t)
                .expect("allowed");
            assert!(tracked(&th) <= 100);
        }
        // Expired entries are dropped first once full.
        let much_later = now + Duration::from_secs(3600);
        th.begin_attempt("fresh", much_later).expect("allowed");
        assert_eq!(tracked(&th), 1);
    }
}
