//! One `_bulk` delivery attempt: the NDJSON request, and what the answer says about each document.
use elasticsearch::BulkParts;
use serde_json::{json, Value};

use crate::elastic::client::{error_detail, reply};
use crate::elastic::outbox::Pending;
use crate::elastic::Shared;

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
pub(super) struct Delivery {
    /// Outbox keys to remove: created or already there.
    pub delivered: Vec<u64>,
    /// Outbox keys to dead-letter, with the reason.
    pub refused: Vec<(u64, String)>,
    /// Set when the request failed as a whole or some documents must be retried.
    pub retry: Option<String>,
    /// Set after `413 Request Entity Too Large`: send smaller batches from now on.
    pub shrink_to: Option<usize>,
}

impl Delivery {
    fn retry(why: String) -> Delivery {
        Delivery {
            retry: Some(why),
            ..Delivery::default()
        }
    }
}

/// Sends `batch` as one bulk request and says what became of each document.
pub(super) async fn deliver(shared: &Shared, batch: &[Pending]) -> Delivery {
    let sent = shared
        .client
        .bulk(BulkParts::None)
        .body(bulk_lines(&shared.index, batch))
        .send()
        .await;
    match reply(sent).await {
        Err(e) => Delivery::retry(e.to_string()),
        Ok((200..=299, body)) => per_item(batch, &body),
        Ok((status, body)) => whole_request(status, &body, batch),
    }
}

/// The request failed as a whole: nothing of `batch` was indexed.
fn whole_request(status: u16, body: &Value, batch: &[Pending]) -> Delivery {
    match (status, batch) {
        // A single document too large for the cluster's http.max_content_length: no batch size
        // can fix that.
        (413, [one]) => Delivery {
            refused: vec![(one.seq, "413 request too large".to_owned())],
            ..Delivery::default()
        },
        (413, _) => Delivery {
            shrink_to: Some((batch.len() / 2).max(1)),
            ..Delivery::retry(format!(
                "413 request too large for {} documents",
                batch.len()
            ))
        },
        _ => Delivery::retry(format!(
            "bulk request answered {status}: {}",
            error_detail(body)
        )),
    }
}

/// The request went through: each document has its own outcome in the answer's `items`.
fn per_item(batch: &[Pending], body: &Value) -> Delivery {
    let mut delivery = Delivery::default();
    let mut retries = 0usize;
    for (doc, outcome) in batch.iter().zip(classify(batch, body)) {
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
    fn a_refused_request_is_retried_smaller_or_dead_letters_a_lone_document() {
        let four: Vec<Pending> = (0..4).map(pending).collect();
        let too_large = whole_request(413, &json!({}), &four);
        assert_eq!(too_large.shrink_to, Some(2));
        assert!(too_large.retry.unwrap().contains("4 documents"));
        assert!(too_large.refused.is_empty() && too_large.delivered.is_empty());

        let lone = whole_request(413, &json!({}), &four[..1]);
        assert_eq!(lone.refused, [(0, "413 request too large".to_owned())]);
        assert_eq!((lone.retry, lone.shrink_to), (None, None));

        let down = whole_request(503, &json!({"error": {"type": "t", "reason": "r"}}), &four);
        assert_eq!(
            down.retry.as_deref(),
            Some("bulk request answered 503: t: r")
        );
        assert_eq!(down.shrink_to, None);
    }

    #[test]
    fn per_item_outcomes_split_the_batch() {
        let batch: Vec<Pending> = (0..4).map(pending).collect();
        let body = json!({"items": [
            {"create": {"_id": "i-0", "status": 201}},
            {"create": {"_id": "i-1", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "x"}}},
            {"create": {"_id": "i-2", "status": 429}},
        ]});
        let got = per_item(&batch, &body);
        assert_eq!(got.delivered, [0]);
        assert_eq!(got.refused, [(1, "mapper_parsing_exception: x".to_owned())]);
        let retry = got.retry.unwrap();
        assert!(
            retry.starts_with("document i-2: 429") && retry.ends_with("(and 1 more)"),
            "{retry}"
        );
    }
}
