//! POST /token (username + password -> biscuit token) and GET /secret (token -> "Hi <username>").
use serde::{Deserialize, Serialize};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::rejection::MAX_REQUEST_BODY;
use super::reply::{error_response, json_response};
use super::with;
use crate::auth::Auth;
use crate::error::ApiError;

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    /// RFC 3339, UTC.
    expires_at: String,
}

pub fn token_route(auth: Auth) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("token")
        .and(warp::post())
        .and(warp::body::content_length_limit(MAX_REQUEST_BODY))
        .and(warp::body::bytes())
        .and(with(auth))
        .then(|body: bytes::Bytes, auth: Auth| async move {
            let credentials: Credentials = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(_) => {
                    return error_response(&ApiError::InvalidRequest(
                        "expected a JSON object with string fields username and password".into(),
                    ))
                }
            };
            match auth
                .login(&credentials.username, &credentials.password)
                .await
            {
                Ok(issued) => json_response(&TokenResponse {
                    token: issued.token,
                    expires_at: humantime::format_rfc3339_seconds(issued.expires_at).to_string(),
                }),
                Err(e) => {
                    let error: ApiError = e.into();
                    metrics::counter!(crate::metrics::LOGIN_FAILURES, "reason" => error.code())
                        .increment(1);
                    error_response(&error)
                }
            }
        })
}

pub fn secret_route(auth: Auth) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("secret")
        .and(super::get_or_head())
        .and(super::header_text("authorization"))
        .and(with(auth))
        .then(|authorization: Option<String>, auth: Auth| async move {
            match auth.verify(authorization.as_deref()).await {
                Ok(identity) => warp::reply::with_header(
                    format!("Hi {}", identity.username),
                    "content-type",
                    "text/plain; charset=utf-8",
                )
                .into_response(),
                Err(e) => error_response(&e.into()),
            }
        })
}
