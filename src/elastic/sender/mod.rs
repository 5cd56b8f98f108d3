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
//! - here: the task loop, one [`Sender::step`] (turn, peek, template, deliver, settle) at a time.
//!
//! On a shared (Redis) outbox the step starts by taking (or renewing) the sender turn, so one
//! replica sends at a time, and gives it up when the outbox is empty; an idle sender also looks
//! again every poll interval, since other replicas enqueue without waking it.
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::template::{self, TemplateOutcome};
use super::{ElasticError, Shared};
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
    /// The outbox's storage failed: back off too, but on a shared outbox for at most one poll
    /// interval, so that documents do not wait out an Elasticsearch-sized backoff (up to
    /// `max_backoff`) after a Redis outage is over. Plain backoff for redb.
    StorePause,
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
    /// Whether this sender last got the turn (so it gives it back when it stops).
    has_turn: bool,
}

impl Sender {
    pub(crate) fn new(shared: Arc<Shared>, rx: watch::Receiver<Option<Instant>>) -> Sender {
        Sender {
            backoff: Backoff::new(shared.initial_backoff, shared.max_backoff),
            batch_size: shared.batch_size,
            template_pending: true,
            consecutive_failures: 0,
            has_turn: false,
            shared,
            rx,
        }
    }

    /// Delivers until shutdown: then drains until the outbox is empty or the deadline passes.
    /// Whatever is left stays in the outbox for the next start (on Redis, for any replica).
    pub(crate) async fn run(mut self) {
        loop {
            let go_on = match self.step().await {
                Next::Again => true,
                Next::Idle => self.idle().await,
                Next::Pause => self.pause(None).await,
                Next::StorePause => self.pause(self.shared.store.poll_interval()).await,
                Next::Stop => false,
            };
            if !go_on {
                break;
            }
        }
        self.end_turn().await;
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
        if let Some(next) = self.take_turn().await {
            return next;
        }
        let peeked = bounded(&mut self.rx, self.shared.store.peek(self.batch_size)).await;
        let batch = match peeked {
            None => return Next::Stop,
            Some(Ok(peeked)) => {
                self.shared.counters.observe_depth(peeked.depth);
                peeked.batch
            }
            Some(Err(e)) => {
                store_failed(&e, "elasticsearch outbox: cannot read pending documents");
                return Next::StorePause;
            }
        };
        if batch.is_empty() {
            self.end_turn().await;
            return Next::Idle;
        }
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

    /// Takes or renews the turn to send. `None`: this sender has it, go on; otherwise what the
    /// loop does instead (another replica has it: idle, and look again later).
    async fn take_turn(&mut self) -> Option<Next> {
        let ttl = turn_ttl(self.shared.request_timeout);
        match bounded(&mut self.rx, self.shared.store.take_turn(ttl)).await {
            None => Some(Next::Stop),
            Some(Ok(held)) => {
                self.has_turn = held;
                (!held).then_some(Next::Idle)
            }
            Some(Err(e)) => {
                store_failed(&e, "elasticsearch outbox: cannot take the sender turn");
                Some(Next::StorePause)
            }
        }
    }

    async fn end_turn(&mut self) {
        if std::mem::take(&mut self.has_turn) {
            self.shared.store.end_turn().await;
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
        let now_ms = unix_millis(self.shared.clock.now());
        let result = self
            .shared
            .store
            .settle(
                delivery.delivered.clone(),
                delivery.refused.clone(),
                now_ms,
                self.shared.outbox_max,
            )
            .await;
        let counters = &self.shared.counters;
        match result {
            Ok(settled) => {
                counters.sub_depth(settled.removed);
                counters.observe_depth(settled.depth);
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
            Err(e) => store_failed(
                &e,
                "elasticsearch outbox: cannot remove delivered documents; they will be sent again",
            ),
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

    /// Sleeps for the next backoff delay (at most `cap`). Returns false when the task must stop.
    /// A shutdown request cuts the sleep short, so the drain starts with an immediate attempt.
    async fn pause(&mut self, cap: Option<Duration>) -> bool {
        let delay = self.backoff.next_delay();
        let delay = cap.map_or(delay, |cap| delay.min(cap));
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

    /// Waits for a new document, the store's poll interval, or a shutdown request. Returns
    /// false when the task must stop: shutdown was requested and there is nothing for this
    /// sender to do, or every handle is gone.
    async fn idle(&mut self) -> bool {
        if self.rx.borrow_and_update().is_some() {
            return false;
        }
        let poll = self.shared.store.poll_interval();
        tokio::select! {
            _ = self.shared.wake.notified() => true,
            changed = self.rx.changed() => changed.is_ok(),
            () = sleep_or_never(poll) => true,
        }
    }
}

/// How long a turn lasts unrenewed: a step is at most two requests (template, bulk) of
/// `request_timeout` each plus quick outbox calls. Should a holder stall longer, the next one's
/// overlap is harmless (`create` with fixed ids).
fn turn_ttl(request_timeout: Duration) -> Duration {
    request_timeout.saturating_mul(2) + Duration::from_secs(5)
}

async fn sleep_or_never(after: Option<Duration>) {
    match after {
        Some(after) => tokio::time::sleep(after).await,
        None => std::future::pending().await,
    }
}

/// The outbox's storage failed. A Redis outage is already logged once by the outbox's health,
/// so per-retry lines stay at debug; a redb failure is an error every time, as it always was.
fn store_failed(e: &ElasticError, what: &str) {
    match e {
        ElasticError::Redis(_) => tracing::debug!(error = %e, "{what}"),
        _ => tracing::error!(error = %e, "{what}"),
    }
}
