//! GET /report/history?minutes=N: successful classify requests and their average processing time
//! per minute over the last N minutes (see `crate::history`).
use serde::Serialize;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::ops_auth::{admitted, OpsGate};
use super::reply::{error_response, json_response};
use super::with;
use crate::error::ApiError;
use crate::history::History;
use crate::history::{HistoryPoint, MAX_MINUTES};

/// The window when the query names none: the last hour.
pub const DEFAULT_MINUTES: u32 = 60;

#[derive(Serialize)]
struct HistoryResponse {
    /// `redis` (the fleet's figures) with `--redis-url`; else `elasticsearch` (the report
    /// documents) when it is configured and answers, else `memory` (this process's ring).
    source: &'static str,
    minutes: u32,
    /// Oldest first; minutes without traffic are left out.
    points: Vec<HistoryPoint>,
}

pub fn route(
    history: History,
    gate: OpsGate,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("report" / "history")
        .and(super::get_or_head())
        .and(admitted(gate))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(with(history))
        .then(handle)
}

async fn handle(admitted: Result<(), ApiError>, query: String, history: History) -> Response {
    if let Err(refused) = admitted {
        return error_response(&refused);
    }
    let minutes = match parse_minutes(&query) {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    match history.points(minutes).await {
        Ok((source, points)) => json_response(&HistoryResponse {
            source,
            minutes,
            points,
        }),
        Err(e) => error_response(&ApiError::from(e)),
    }
}

/// `minutes` from the query string: a whole number in 1..=1440, 60 when absent. Other parameters
/// are ignored.
fn parse_minutes(query: &str) -> Result<u32, ApiError> {
    let values: Vec<_> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "minutes")
        .map(|(_, v)| v)
        .collect();
    match values.as_slice() {
        [] => Ok(DEFAULT_MINUTES),
        [one] => one
            .parse::<u32>()
            .ok()
            .filter(|m| (1..=MAX_MINUTES).contains(m))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "minutes must be a whole number from 1 to {MAX_MINUTES}, not {one:?}"
                ))
            }),
        _ => Err(ApiError::InvalidRequest("give minutes at most once".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_defaults_to_an_hour_and_accepts_1_to_1440() {
        assert_eq!(parse_minutes("").unwrap(), 60);
        assert_eq!(parse_minutes("other=1").unwrap(), 60);
        assert_eq!(parse_minutes("minutes=1").unwrap(), 1);
        assert_eq!(parse_minutes("minutes=1440&x=y").unwrap(), 1440);
        assert_eq!(parse_minutes("minutes=%31%35").unwrap(), 15);
    }

    #[test]
    fn bad_minutes_are_invalid_requests_saying_what_is_allowed() {
        for query in [
            "minutes=0",
            "minutes=1441",
            "minutes=-5",
            "minutes=1.5",
            "minutes=abc",
            "minutes=",
            "minutes",
            "minutes=99999999999",
            "minutes=5&minutes=6",
        ] {
            let e = parse_minutes(query).unwrap_err();
            assert_eq!(e.code(), "invalid_request", "{query}");
            assert!(e.to_string().contains("minutes"), "{query}: {e}");
        }
        assert!(parse_minutes("minutes=0")
            .unwrap_err()
            .to_string()
            .contains("from 1 to 1440"));
    }
}
