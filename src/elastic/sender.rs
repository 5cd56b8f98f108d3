//! The background task that moves documents from the outbox to Elasticsearch.
//!
//! Delivery is at-least-once on the wire and exactly-once in the index: every document goes out
//! as a `_bulk` `create` with the `_id` fixed at enqueue time, and is removed from the outbox only
//! after Elasticsearch confirmed it. A retry of something that did arrive (the answer was lost, the
//! process died before removing it) gets `409 version_conflict_engine_exception`, which is
//! treated as delivered.
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use elasticsearch::BulkParts;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::client::{error_detail, reply};
use super::outbox::{self, Pending};
use super::template::{self, TemplateOutcome};
use super::Shared;
use crate::clock::unix_millis;

/// What Elasticsearch said about one document of a bulk request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ItemOutcome {
    Created,
    /// 409 on `create`: a previous attempt already indexed it.
    AlreadyThere,
    /// 400: the document itself is wrong for the index (mapping conflict, unparsable value).
    /// Sending it again cannot help, and keeping it would put it at the head of every batch.
    Refused(String),
    /// Anything else (429, 5xx, 404 with index auto-creation off, 403 on a read-only index, no
    /// item at all): a cluster condition that can go away.
    Retry(String),
}

/// Error types Elasticsearch reports with status 400 that are about the cluster, not the
/// document (closed index, shard limit reached when auto-creating the index, a block): retried,
/// not dead-lettered, or one such condition would dead-letter every document.
const CLUSTER_CONDITIONS: &[&str] = &[
    "index_closed_exception",
    "validation_exception",
    "cluster_block_exception",
];

/// Reads the `items` of a bulk answer, one outcome per document of `batch`, by position (bulk
/// answers keep request order); an item whose `_id` does not match is not trusted.
pub(crate) fn classify(batch: &[Pending], body: &Value) -> Vec<ItemOutcome> {
    let items = body.get("items").and_then(Value::as_array);
    batch
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            // Each item is {"create": {...}}; take the single value whatever the action key.
            let item = items
                .and_then(|items| items.get(i))
                .and_then(Value::as_object)
                .and_then(|o| o.values().next());
            let Some(item) = item else {
                return ItemOutcome::Retry("missing from the bulk answer".to_owned());
            };
            if let Some(id) = item.get("_id").and_then(Value::as_str) {
                if id != doc.id {
                    return ItemOutcome::Retry(format!("bulk answer out of order ({id})"));
                }
            }
            let status = item.get("status").and_then(Value::as_u64).unwrap_or(0);
            let detail = || item.get("error").map_or_else(String::new, error_detail);
            let error_type = item.pointer("/error/type").and_then(Value::as_str);
            match status {
                200..=299 => ItemOutcome::Created,
                409 if error_type == Some("version_conflict_engine_exception") => {
                    ItemOutcome::AlreadyThere
                }
                400 if !error_type.is_some_and(|t| CLUSTER_CONDITIONS.contains(&t)) => {
                    ItemOutcome::Refused(detail())
                }
                _ => ItemOutcome::Retry(format!("{status} {}", detail())),
            }
        })
        .collect()
}

/// The NDJSON lines of a bulk request: an action line and the stored source per document.
/// Sources are compact JSON (serde_json never writes a raw newline), as NDJSON requires.
pub(crate) fn bulk_lines(index: &str, batch: &[Pending]) -> Vec<String> {
    let mut lines = Vec::with_capacity(batch.len() * 2);
    for doc in batch {
        lines.push(json!({"create": {"_index": index, "_id": doc.id}}).to_string());
        lines.push(doc.source.clone());
    }
    lines
}

/// Result of one bulk attempt.
#[derive(Debug, Default)]
struct Delivery {
    /// Outbox keys to remove: created or already there.
    delivered: Vec<u64>,
    /// Outbox keys to dead-letter, with the reason.
    refused: Vec<(u64, String)>,
    /// Set when the request failed as a whole or some documents must be retried.
    retry: Option<String>,
    /// Set after `413 Request Entity Too Large`: send smaller batches from now on.
    shrink_to: Option<usize>,
}

async fn deliver(shared: &Shared, batch: &[Pending]) -> Delivery {
    let sent = shared
        .client
        .bulk(BulkParts::None)
        .body(bulk_lines(&shared.index, batch))
        .send()
        .await;
    let (status, body) = match reply(sent).await {
        Ok(answer) => answer,
        Err(e) => {
            return Delivery {
                retry: Some(e.to_string()),
                ..Delivery::default()
            }
        }
    };
    if status == 413 {
        return match batch {
            // A single document too large for the cluster's http.max_content_length: no
            // batch size can fix that.
            [one] => Delivery {
                refused: vec![(one.seq, "413 request too large".to_owned())],
                ..Delivery::default()
            },
            _ => Delivery {
                retry: Some(format!(
                    "413 request too large for {} documents",
                    batch.len()
                )),
                shrink_to: Some((batch.len() / 2).max(1)),
                ..Delivery::default()
            },
        };
    }
    if !(200..300).contains(&status) {
        return Delivery {
            retry: Some(format!(
                "bulk request answered {status}: {}",
                error_detail(&body)
            )),
            ..Delivery::default()
        };
    }
    let mut delivery = Delivery::default();
    let mut retries = 0usize;
    for (doc, outcome) in batch.iter().zip(classify(batch, &body)) {
        match outcome {
            ItemOutcome::Created | ItemOutcome::AlreadyThere => delivery.delivered.push(doc.seq),
            ItemOutcome::Refused(reason) => {
                tracing::warn!(id = %doc.id, reason = %reason, "elasticsearch refused a report document; moved to the dead-letter table");
                delivery.refused.push((doc.seq, reason));
            }
            ItemOutcome::Retry(reason) => {
                retries += 1;
                if delivery.retry.is_none() {
                    delivery.retry = Some(format!("document {}: {reason}", doc.id));
                }
            }
        }
    }
    if retries > 1 {
        delivery.retry = delivery
            .retry
            .map(|r| format!("{r} (and {} more)", retries - 1));
    }
    delivery
}

/// Exponential backoff with "equal jitter" (half fixed, half random) so that several instances
/// that lost the cluster at the same moment do not retry in lockstep.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        // Seeded from the clock: the jitter only has to differ between processes.
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff {
            initial,
            max,
            current: None,
            rng: seed | 1,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = match self.current {
            None => self.initial,
            Some(c) => c.saturating_mul(2).min(self.max),
        };
        self.current = Some(base);
        // xorshift64: enough randomness for jitter, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        let fraction = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }

    pub(crate) fn reset(&mut self) {
        self.current = None;
    }
}

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
        let shared = Arc::clone(&self.shared);
        loop {
            let limit = self.batch_size;
            let batch = match bounded(
                &mut self.rx,
                shared.store.run(move |db| outbox::peek(db, limit)),
            )
            .await
            {
                None => break,
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "elasticsearch outbox: cannot read pending documents");
                    if !self.pause().await {
                        break;
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                if !self.idle().await {
                    break;
                }
                continue;
            }

            // Lazily, so that a cluster that is down at start gets the template as soon as it is
            // back, before the first document can create the index with guessed types.
            if self.template_pending {
                match bounded(
                    &mut self.rx,
                    template::install(&shared.client, &shared.index),
                )
                .await
                {
                    None => break,
                    Some(TemplateOutcome::Installed) => {
                        tracing::info!(index = %shared.index, "elasticsearch index template installed");
                        self.template_pending = false;
                    }
                    Some(TemplateOutcome::Refused(why)) => {
                        tracing::warn!(index = %shared.index, error = %why, "elasticsearch refused the index template; documents are sent anyway with the cluster's own mapping");
                        self.template_pending = false;
                    }
                    Some(TemplateOutcome::Unreachable(why)) => {
                        self.failed(&why);
                        if !self.pause().await {
                            break;
                        }
                        continue;
                    }
                }
            }

            let Some(delivery) = bounded(&mut self.rx, deliver(&shared, &batch)).await else {
                break;
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
                    if !self.pause().await {
                        break;
                    }
                }
                None => self.recovered(),
            }
        }
        let depth = shared.counters.outbox_depth.load(Ordering::Relaxed);
        if depth == 0 {
            tracing::info!("elasticsearch reporter stopped; outbox empty");
        } else {
            tracing::warn!(
                pending = depth,
                "elasticsearch reporter stopped; pending documents stay in the outbox and are sent after the next start"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64) -> Pending {
        Pending {
            seq,
            id: format!("i-{seq}"),
            source: "{\"a\":1}".to_owned(),
        }
    }

    #[test]
    fn classifies_bulk_items() {
        let batch: Vec<Pending> = (0..6).map(pending).collect();
        let body = json!({"errors": true, "items": [
            {"create": {"_id": "i-0", "status": 201, "result": "created"}},
            {"create": {"_id": "i-1", "status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}},
            {"create": {"_id": "i-2", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad date"}}},
            {"create": {"_id": "i-3", "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
            {"create": {"_id": "other", "status": 201}},
        ]});
        let closed = json!({"items": [{"create": {"_id": "i-0", "status": 400,
            "error": {"type": "index_closed_exception", "reason": "closed"}}}]});
        assert!(matches!(
            &classify(&batch[..1], &closed)[0],
            ItemOutcome::Retry(_)
        ));
        let got = classify(&batch, &body);
        assert_eq!(got[0], ItemOutcome::Created);
        assert_eq!(got[1], ItemOutcome::AlreadyThere);
        assert_eq!(
            got[2],
            ItemOutcome::Refused("mapper_parsing_exception: bad date".into())
        );
        assert!(matches!(&got[3], ItemOutcome::Retry(r) if r.starts_with("429")));
        assert!(matches!(&got[4], ItemOutcome::Retry(_)), "id mismatch");
        assert!(matches!(&got[5], ItemOutcome::Retry(_)), "missing item");
    }

    #[test]
    fn bulk_lines_pair_action_and_source() {
        let lines = bulk_lines("idx", &[pending(7)]);
        assert_eq!(lines.len(), 2);
        let action: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(action, json!({"create": {"_index": "idx", "_id": "i-7"}}));
        assert_eq!(lines[1], r#"{"a":1}"#);
        assert!(!lines.iter().any(|l| l.contains('\n')));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let bases = [100u64, 200, 400, 800, 1000, 1000];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
