//! The index template: without it, Elasticsearch's dynamic mapping would index `image_url` as
//! analysed text (useless for terms aggregations) and could map the first float it sees in a
//! field that later holds integers differently across indices. A plain index template over a
//! plain index, not a data stream: the test server refuses data streams, and one index of small
//! documents (~1 KiB per `/report` call) needs no rollover for a long time.
use elasticsearch::indices::{IndicesPutIndexTemplateParts, IndicesPutMappingParts};
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use super::client::{error_detail, reply};
use super::ElasticError;

/// Above the built-in templates (`logs-*-*` etc. use 100), in case an operator widens the index
/// name into one of their patterns; equal priorities on overlapping patterns are an error.
const PRIORITY: u64 = 200;

/// What installing the template achieved.
#[derive(Debug, PartialEq)]
pub(crate) enum TemplateOutcome {
    Installed,
    /// Elasticsearch answered with an error (no permission, invalid template, ...). Documents
    /// still go out, with whatever mapping the cluster applies.
    Refused(String),
    /// No answer: try again before the next delivery.
    Unreachable(String),
}

/// The mapping of [`super::ReportDocument`]. `dynamic` stays on so a field added later is still
/// indexed (with a guessed type) rather than rejecting whole documents.
pub(crate) fn mappings() -> Value {
    let long = json!({"type": "long"});
    let double = json!({"type": "double"});
    let keyword = json!({"type": "keyword"});
    json!({
        "properties": {
            "@timestamp": {"type": "date"},
            "instance_id": keyword,
            "model_sha256": keyword,
            // Not in the report document today; mapped so a per-URL document (or a raw one) can
            // never turn it into text.
            "image_url": keyword,
            "entries": {
                "properties": {
                    "image_url": keyword,
                    // Upload rows: image_url is null, the bytes' hex SHA-256 names them.
                    "upload_sha256": keyword,
                    "count": long,
                    "min_processing_time": double,
                    "max_processing_time": double,
                    "avg_processing_time": double,
                }
            },
            "entries_returned": long,
            "top_count": long,
            "total_requests": long,
            "overall_min_processing_time": double,
            "overall_max_processing_time": double,
            "overall_avg_processing_time": double,
        }
    })
}

pub(crate) fn template_body(index: &str) -> Value {
    json!({
        "index_patterns": [format!("{index}*")],
        "priority": PRIORITY,
        "template": {"mappings": mappings()},
    })
}

/// Puts the template (named after the index), then adds the same fields to the index if it
/// already exists: a template only applies to indices created after it, and an index created
/// by an earlier version without a template would otherwise keep guessing.
pub(crate) async fn install(client: &Elasticsearch, index: &str) -> TemplateOutcome {
    let sent = client
        .indices()
        .put_index_template(IndicesPutIndexTemplateParts::Name(index))
        .body(template_body(index))
        .send()
        .await;
    match reply(sent).await {
        Err(ElasticError::Unreachable(why)) => return TemplateOutcome::Unreachable(why),
        Err(other) => return TemplateOutcome::Unreachable(other.to_string()),
        Ok((status, body)) if !(200..300).contains(&status) => {
            return TemplateOutcome::Refused(format!("{status}: {}", error_detail(&body)))
        }
        Ok(_) => {}
    }

    let indices = [index];
    let sent = client
        .indices()
        .put_mapping(IndicesPutMappingParts::Index(&indices))
        .body(mappings())
        .send()
        .await;
    match reply(sent).await {
        // 404: the index does not exist yet and will be created from the template.
        Ok((status, _)) if (200..300).contains(&status) || status == 404 => {}
        Ok((status, body)) => tracing::warn!(
            index,
            status,
            error = %error_detail(&body),
            "elasticsearch: the existing index keeps its own mapping for some report fields; \
             charts over those fields may be wrong until the index is rolled over"
        ),
        Err(e) => {
            tracing::warn!(index, error = %e, "elasticsearch: could not update the mapping of the existing index")
        }
    }
    TemplateOutcome::Installed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_covers_the_index_and_maps_every_numeric_field() {
        let body = template_body("classifier-reports");
        assert_eq!(body["index_patterns"], json!(["classifier-reports*"]));
        let props = &body["template"]["mappings"]["properties"];
        assert_eq!(props["@timestamp"]["type"], "date");
        assert_eq!(props["instance_id"]["type"], "keyword");
        for field in ["image_url", "upload_sha256"] {
            assert_eq!(props["entries"]["properties"][field]["type"], "keyword");
        }
        assert_eq!(props["total_requests"]["type"], "long");
        assert_eq!(props["overall_avg_processing_time"]["type"], "double");
        assert!(body.get("data_stream").is_none());
    }
}
