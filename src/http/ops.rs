//! For operators and orchestrators: liveness, readiness, Prometheus metrics, the OpenAPI spec.
//! Only `/metrics` is behind `--ops-auth`: probes and the spec stay open (orchestrators probe
//! without tokens, and the spec is public knowledge).
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::ops_auth::{admitted, OpsGate};
use super::reply::{error_response, unavailable_says_when};
use super::with;
use crate::elastic::Reporter;
use crate::error::ApiError;
use crate::metrics as names;

/// The spec in the repository, served as it is.
const OPENAPI: &str = include_str!("../../openapi.yaml");

/// What the operator endpoints read.
#[derive(Clone)]
pub struct Ops {
    /// True from the end of start-up until shutdown begins: what `/readyz` reports.
    pub ready: Arc<AtomicBool>,
    /// `None` when metrics are disabled.
    pub metrics: Option<PrometheusHandle>,
    /// Its delivery counters are copied into the metrics at scrape time.
    pub reporter: Option<Reporter>,
}

pub fn routes(
    ops: Ops,
    gate: OpsGate,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(super::get_or_head())
        .map(|| warp::reply::json(&json!({ "status": "ok" })).into_response());
    let readyz = warp::path!("readyz")
        .and(super::get_or_head())
        .and(with(ops.ready.clone()))
        .map(|ready: Arc<AtomicBool>| {
            let (body, status) = if ready.load(Ordering::Acquire) {
                ("ready", StatusCode::OK)
            } else {
                ("not_ready", StatusCode::SERVICE_UNAVAILABLE)
            };
            let mut response =
                warp::reply::with_status(warp::reply::json(&json!({ "status": body })), status)
                    .into_response();
            unavailable_says_when(&mut response);
            response
        });
    let metrics = warp::path!("metrics")
        .and(super::get_or_head())
        .and(admitted(gate))
        .and(with(ops))
        .map(|admitted: Result<(), ApiError>, ops: Ops| match admitted {
            Ok(()) => render_metrics(ops),
            Err(refused) => error_response(&refused),
        });
    let openapi = warp::path!("openapi.yaml")
        .and(super::get_or_head())
        .map(|| {
            warp::reply::with_header(OPENAPI, "content-type", "application/yaml").into_response()
        });
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(openapi)
        .unify()
}

fn render_metrics(ops: Ops) -> Response {
    let Some(handle) = &ops.metrics else {
        return error_response(&ApiError::NotFound);
    };
    // The reporter keeps its own counters; copy them at scrape time.
    if let Some(reporter) = &ops.reporter {
        let s = reporter.stats();
        metrics::gauge!(names::ES_OUTBOX_DEPTH).set(s.outbox_depth as f64);
        metrics::gauge!(names::ES_SENT).set(s.sent as f64);
        metrics::gauge!(names::ES_FAILED).set(s.failed_attempts as f64);
        metrics::gauge!(names::ES_DEAD).set(s.dead_lettered as f64);
        metrics::gauge!(names::ES_DROPPED).set(s.dropped as f64);
    }
    warp::reply::with_header(handle.render(), "content-type", "text/plain; version=0.0.4")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn not_ready_is_a_503_that_says_when_to_ask_again() {
        let ops = Ops {
            ready: Arc::new(AtomicBool::new(false)),
            metrics: None,
            reporter: None,
        };
        let response = warp::test::request()
            .path("/readyz")
            .reply(&routes(ops.clone(), OpsGate::open()))
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        ops.ready.store(true, Ordering::Release);
        let response = warp::test::request()
            .path("/readyz")
            .reply(&routes(ops, OpsGate::open()))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("retry-after").is_none());
    }
}
