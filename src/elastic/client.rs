//! The Elasticsearch client and the few response helpers the reporter needs. The official
//! `elasticsearch` crate returns `Ok` for every HTTP status; only transport failures are `Err`.
//! That split is what the sender's retry policy is built on.
use std::time::Duration;

use elasticsearch::auth::Credentials;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::Elasticsearch;
use serde_json::Value;
use url::Url;

use super::{ElasticAuth, ElasticError};

/// Longest piece of a response body quoted in an error or log line.
const MAX_DETAIL: usize = 500;

/// A client for one node (or a load balancer in front of the cluster). Single-node pool on
/// purpose: the sniffing pool's reseed path panics on unexpected `_nodes` answers, and behind
/// Docker or a cloud endpoint the published node addresses are usually not reachable anyway.
pub(crate) fn build(
    url: Url,
    auth: &ElasticAuth,
    timeout: Duration,
) -> Result<Elasticsearch, ElasticError> {
    // No proxies from the environment (like the image fetcher): the cluster is a fixed, known
    // address, and an inherited HTTP_PROXY would silently reroute (or break) delivery.
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
        .timeout(timeout)
        .disable_proxy();
    builder = match auth {
        ElasticAuth::None => builder,
        ElasticAuth::Basic { username, password } => builder.auth(Credentials::Basic(
            username.clone(),
            password.expose().to_owned(),
        )),
        ElasticAuth::ApiKey(key) => {
            builder.auth(Credentials::EncodedApiKey(key.expose().to_owned()))
        }
    };
    let transport = builder
        .build()
        .map_err(|e| ElasticError::Config(format!("cannot build elasticsearch client: {e}")))?;
    Ok(Elasticsearch::new(transport))
}

/// Status and JSON body of a response. A body that is not JSON (a proxy's HTML error page) is
/// kept as a truncated string so it can still be quoted.
pub(crate) async fn reply(
    sent: Result<Response, elasticsearch::Error>,
) -> Result<(u16, Value), ElasticError> {
    let response = sent.map_err(|e| ElasticError::Unreachable(e.to_string()))?;
    let status = response.status_code().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| ElasticError::Unreachable(format!("reading the response failed: {e}")))?;
    let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(truncate(&text)));
    Ok((status, body))
}

/// `type: reason` of an Elasticsearch error object (`{"error": {...}}` or a bulk item's
/// `error`), else the body itself, truncated.
pub(crate) fn error_detail(body: &Value) -> String {
    let err = body.get("error").unwrap_or(body);
    match (
        err.get("type").and_then(Value::as_str),
        err.get("reason").and_then(Value::as_str),
    ) {
        (Some(ty), Some(reason)) => truncate(&format!("{ty}: {reason}")),
        (Some(ty), None) => ty.to_owned(),
        _ => match err {
            Value::String(s) => truncate(s),
            other => truncate(&other.to_string()),
        },
    }
}

pub(crate) fn status_error(status: u16, body: &Value) -> ElasticError {
    ElasticError::Status {
        status,
        detail: error_detail(body),
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_owned();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_quote_type_and_reason() {
        let body =
            json!({"error": {"type": "mapper_parsing_exception", "reason": "bad"}, "status": 400});
        assert_eq!(error_detail(&body), "mapper_parsing_exception: bad");
        let item = json!({"type": "version_conflict_engine_exception", "reason": "exists"});
        assert_eq!(
            error_detail(&item),
            "version_conflict_engine_exception: exists"
        );
        assert_eq!(
            error_detail(&json!("<html>bad gateway</html>")),
            "<html>bad gateway</html>"
        );
        assert_eq!(error_detail(&json!({"error": "plain"})), "plain");
        let long = "é".repeat(400);
        assert!(error_detail(&Value::String(long)).ends_with("..."));
    }
}
