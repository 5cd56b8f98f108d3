//! GET /report: the 10 most requested image URLs with their counts and processing times.
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::reply::{error_response, json_response};
use super::with;
use crate::report::ReportService;

pub fn route(
    report: ReportService,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("report")
        .and(super::get_or_head())
        .and(with(report))
        .then(|report: ReportService| async move {
            match report.report().await {
                Ok(entries) => json_response(&entries),
                Err(e) => error_response(&e),
            }
        })
}
