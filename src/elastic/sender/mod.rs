//! The background task that moves documents from the outbox to Elasticsearch.
//!
//! Delivery is at-least-once on the wire and exactly-once in the index: every document goes out
//! as a `_bulk` `create` with the `_id` fixed at enqueue time, and is removed from the outbox only
//! after Elasticsearch confirmed it. A retry of something that did arrive (the answer was lost, the
//! process died before removing it) gets `409 version_conflict_engine_exception`, which is
//! treated as delivered.
//!
//! - `bulk.rs`: the wire format (the NDJSON request, one outcome per document of the answer).
//! - `backoff.rs`: the pause after a failure.
//! - here: the task loop, one [`Sender::step`] (peek, template, deliver, settle) at a time.
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::outbox;
use super::template::{self, TemplateOutcome};
use super::Shared;
use crate::clock::unix_millis;
use backoff::Backoff;
use bulk::{deliver, Delivery};

mod backoff;
mod bulk;

/// Runs `fut` unless the shutdown deadline passes first (`None`). Before shutdown is requested
/// there is no deadline; when it is requested mid-way, the deadline applies from then on. When
/// every [`super::Reporter`] handle is gone, stops at once.
async fn bounded<F: Future>(
    rx: &mut watch::Receiver<Option<Instant>>,
    fut: F,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let deadline = *rx.borrow_and_update();
        match deadline {
            Some(deadline) => return tokio::time::timeout_at(deadline, &mut fut).await.ok(),
            None => tokio::select! {
                out = &mut fut => return Some(out),
                changed = rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
            },
        }
    }
}

/// What the task loop does after a [`Sender::step`].
enum Next {
    /// Take the next batch at once.
    Again,
    /// Wait for a new document (the outbox is empty) or a shutdown request.
    Idle,
    /// Back off before the next attempt.
    Pause,
    /// Stop: the shutdown deadline passed, or every handle is gone.
    Stop,
}

pub(crate) struct Sender {
    shared: Arc<Shared>,
    rx: watch::Receiver<Option<Instant>>,
    backoff: Backoff,
    batch_size: usize,
    template_pending: bool,
    consecutive_failures: u64,
}

impl Sender {
    pub(crate) fn new(shared: Arc<Shared>, rx: watch::Receiver<Option<Instant>>) -> Sender {
        Sender {
            backoff: Backoff::new(shared.initial_backoff, shared.max_backoff),
            batch_size: shared.batch_size,
            template_pending: true,
            consecutive_failures: 0,
            shared,
            rx,
        }
    }

    /// Delivers until shutdown: then drains until the outbox is empty or the deadline passes.
    /// Whatever is left stays in redb for the next start, which begins by delivering it.
    pub(crate) async fn run(mut self) {
        loop {
            let go_on = match self.step().await {
                Next::Again => true,
                Next::Idle => self.idle().await,
                Next::Pause => self.pause().await,
                Next::Stop => false,
            };
            if !go_on {
                break;
            }
        }
        let depth = self.shared.counters.outbox_depth.load(Ordering::Relaxed);
        if depth == 0 {
            tracing::info!("elasticsearch reporter stopped; outbox empty");
        } else {
            tracing::warn!(
                pending = depth,
                "elasticsearch reporter stopped; pending documents stay in the outbox and are sent after the next start"
            );
        }
    }

    /// One attempt at the oldest batch of the outbox.
    async fn step(&mut self) -> Next {
        let limit = self.batch_size;
        let peeked = bounded(
            &mut self.rx,
            self.shared.store.run(move |db| outbox::peek(db, limit)),
        )
        .await;
        let batch = match peeked {
            None => return Next::Stop,
            Some(Ok(batch)) if batch.is_empty() => return Next::Idle,
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                tracing::error!(error = %e, "elasticsearch outbox: cannot read pending documents");
                return Next::Pause;
            }
        };
        if self.template_pending {
            if let Some(next) = self.install_template().await {
                return next;
            }
        }
        let Some(delivery) = bounded(&mut self.rx, deliver(&self.shared, &batch)).await else {
            return Next::Stop;
        };
        self.settle(&delivery).await;
        if let Some(size) = delivery.shrink_to {
            tracing::warn!(
                batch_size = size,
                "elasticsearch: bulk request too large; sending smaller batches"
            );
            self.batch_size = size;
        }
        match delivery.retry {
            Some(why) => {
                self.failed(&why);
                Next::Pause
            }
            None => {
                self.recovered();
                Next::Again
            }
        }
    }

    /// Lazily, so that a cluster that is down at start gets the template as soon as it is back,
    /// before the first document can create the index with guessed types. `None`: go on and
    /// deliver; otherwise what the loop does instead.
    async fn install_template(&mut self) -> Option<Next> {
        let shared = &self.shared;
        match bounded(
            &mut self.rx,
            template::install(&shared.client, &shared.index),
        )
        .await
        {
            None => Some(Next::Stop),
            Some(TemplateOutcome::Installed) => {
                tracing::info!(index = %shared.index, "elasticsearch index template installed");
                self.template_pending = false;
                None
            }
            Some(TemplateOutcome::Refused(why)) => {
                tracing::warn!(index = %shared.index, error = %why, "elasticsearch refused the index template; documents are sent anyway with the cluster's own mapping");
                self.template_pending = false;
                None
            }
            Some(TemplateOutcome::Unreachable(why)) => {
                self.failed(&why);
                Some(Next::Pause)
            }
        }
    }

    /// Removes what was delivered or refused. Not bounded by the shutdown deadline: it is one
    /// short local commit, and skipping it would only mean sending the documents again.
    async fn settle(&self, delivery: &Delivery) {
        if delivery.delivered.is_empty() && delivery.refused.is_empty() {
            return;
        }
        let delivered = delivery.delivered.clone();
        let refused = delivery.refused.clone();
        let now_ms = unix_millis(self.shared.clock.now());
        let max = self.shared.outbox_max;
        let result = self
            .shared
            .store
            .run(move |db| outbox::settle(db, &delivered, &refused, now_ms, max))
            .await;
        let counters = &self.shared.counters;
        match result {
            Ok(settled) => {
                counters.sub_depth(settled.removed);
                counters
                    .sent
                    .fetch_add(delivery.delivered.len() as u64, Ordering::Relaxed);
                counters
                    .dead_lettered
                    .fetch_add(settled.dead_lettered, Ordering::Relaxed);
                if settled.dead_dropped > 0 {
                    tracing::warn!(
                        dropped = settled.dead_dropped,
                        "elasticsearch dead-letter table full; oldest dead letters removed"
                    );
                }
            }
            // They stay in the outbox and go out again; the cluster answers 409 for those it has.
            Err(e) => {
                tracing::error!(error = %e, "elasticsearch outbox: cannot remove delivered documents; they will be sent again");
            }
        }
    }

    fn failed(&mut self, why: &str) {
        self.shared
            .counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures += 1;
        // One warning per outage, not one per retry; the counter tells the rest.
        if self.consecutive_failures == 1 {
            tracing::warn!(error = %why, "elasticsearch delivery failed; retrying with backoff");
        } else {
            tracing::debug!(error = %why, attempt = self.consecutive_failures, "elasticsearch delivery failed again");
        }
    }

    fn recovered(&mut self) {
        if self.consecutive_failures > 0 {
            tracing::info!(
                failed_attempts = self.consecutive_failures,
                "elasticsearch delivery resumed"
            );
        }
        self.consecutive_failures = 0;
        self.backoff.reset();
    }

    /// Sleeps for the next backoff delay. Returns false when the task must stop. A shutdown
    /// request cuts the sleep short, so the drain starts with an immediate attempt.
    async fn pause(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        if self.rx.borrow().is_some() {
            return bounded(&mut self.rx, tokio::time::sleep(delay))
                .await
                .is_some();
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            changed = self.rx.changed() => changed.is_ok(),
        }
    }

    /// Waits for a new document or a shutdown request. Returns false when the task must stop:
    /// shutdown was requested and the outbox is empty, or every handle is gone.
    async fn idle(&mut self) -> bool {
        if self.rx.borrow_and_update().is_some() {
            return false;
        }
        tokio::select! {
            _ = self.shared.wake.notified() => true,
            changed = self.rx.changed() => changed.is_ok(),
        }
    }
}
