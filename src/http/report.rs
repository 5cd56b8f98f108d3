//! GET /report: the 10 most requested image URLs with their counts and processing times.
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::ops_auth::{admitted, OpsGate};
use super::reply::{error_response, json_response};
use super::with;
use crate::error::ApiError;
use crate::report::ReportService;

pub fn route(
    report: ReportService,
    gate: OpsGate,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("report")
        .and(super::get_or_head())
        .and(admitted(gate))
        .and(with(report))
        .then(
            |admitted: Result<(), ApiError>, report: ReportService| async move {
                if let Err(refused) = admitted {
                    return error_response(&refused);
                }
                match report.report().await {
                    Ok(entries) => json_response(&entries),
                    Err(e) => error_response(&e),
                }
            },
        )
}
