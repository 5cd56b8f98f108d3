//! POST /classify-image {"image_url": "..."} -> {"classification", "confidence", "processing_time"}.
use bytes::Bytes;
use std::time::Instant;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::rejection::MAX_REQUEST_BODY;
use super::reply::{error_response, json_response};
use super::with;
use crate::classify::ClassifyService;
use crate::domain::{ClassifyResponse, ImageUrl};
use crate::error::ApiError;

pub fn route(
    service: ClassifyService,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("classify-image")
        .and(warp::post())
        // Taken before the body is read: processing_time runs from the request's arrival.
        .map(Instant::now)
        .and(super::header_text("content-type"))
        .and(warp::body::content_length_limit(MAX_REQUEST_BODY))
        .and(warp::body::bytes())
        .and(with(service))
        .then(handle)
}

async fn handle(
    arrived: Instant,
    content_type: Option<String>,
    body: Bytes,
    service: ClassifyService,
) -> Response {
    let result = async {
        let url = parse_request(content_type.as_deref(), &body)?;
        service.classify(&url, arrived).await
    }
    .await;
    match result {
        Ok(answer) => json_response(&ClassifyResponse::new(
            &answer.classification,
            answer.processing_time,
        )),
        Err(e) => error_response(&e),
    }
}

fn parse_request(content_type: Option<&str>, body: &[u8]) -> Result<ImageUrl, ApiError> {
    let is_json = content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("the body is not valid JSON: {e}")))?;
    let raw = match value.get("image_url") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "image_url must be a string".into(),
            ))
        }
        None => {
            return Err(ApiError::InvalidRequest(
                "expected a JSON object with an image_url field".into(),
            ))
        }
    };
    ImageUrl::parse(raw).map_err(|e| ApiError::InvalidUrl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn accepts_json_with_parameters() {
        let url = parse_request(
            Some("Application/JSON; charset=utf-8"),
            br#"{"image_url":"http://a.com/x.jpg"}"#,
        );
        assert_eq!(url.unwrap().as_str(), "http://a.com/x.jpg");
    }

    #[test]
    fn each_bad_request_has_its_code() {
        let code = |ct, body: &[u8]| parse_request(ct, body).unwrap_err().code();
        assert_eq!(code(None, b"{}"), "unsupported_media_type");
        assert_eq!(code(Some("text/plain"), b"{}"), "unsupported_media_type");
        assert_eq!(code(JSON, b"{not json"), "invalid_request");
        assert_eq!(code(JSON, b"[]"), "invalid_request");
        assert_eq!(code(JSON, br#"{"url":"http://a.com"}"#), "invalid_request");
        assert_eq!(code(JSON, br#"{"image_url":42}"#), "invalid_request");
        assert_eq!(code(JSON, br#"{"image_url":null}"#), "invalid_request");
        assert_eq!(code(JSON, br#"{"image_url":"nope"}"#), "invalid_url");
        assert_eq!(
            code(JSON, br#"{"image_url":"ftp://a.com/x"}"#),
            "invalid_url"
        );
    }
}
