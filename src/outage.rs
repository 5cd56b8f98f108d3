//! A shared dependency's health as the service sees it (Redis, for now): one warning when it
//! starts failing and one line when it is back, never one per request, plus a gauge for ops.
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Health {
    /// What is failing, in the log.
    what: &'static str,
    /// The gauge that shows it (1 up, 0 down), if any.
    gauge: Option<&'static str>,
    down: AtomicBool,
}

impl Health {
    pub const fn new(what: &'static str, gauge: Option<&'static str>) -> Self {
        Self {
            what,
            gauge,
            down: AtomicBool::new(false),
        }
    }

    /// A call succeeded.
    pub fn up(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(what = self.what, "available again");
            self.show(1.0);
        }
    }

    /// A call failed: the first failure of an outage is logged, the rest are not.
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(what = self.what, %error, "unavailable; degraded until it is back");
            self.show(0.0);
        }
    }

    fn show(&self, value: f64) {
        if let Some(gauge) = self.gauge {
            metrics::gauge!(gauge).set(value);
        }
    }
}
