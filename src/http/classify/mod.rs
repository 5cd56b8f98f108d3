//! POST /classify-image -> {"classification", "confidence", "processing_time"}, for an image named
//! by URL or sent in the request, in one of three forms chosen by `Content-Type`:
//! - `application/json`: `{"image_url": ...}` or `{"image_base64": ...}` ([`json`]);
//! - `multipart/form-data`: one file part named `image` ([`multipart`]);
//! - a raw body: `image/jpeg|png|gif|webp|bmp` or `application/octet-stream`.
//!
//! Uploads are read under `--max-image-bytes` (base64 under 4/3 of it), URL requests under the
//! 16 KiB of every JSON body. The format is sniffed from the bytes, never taken from the header.
mod body;
mod json;
mod metered;
mod multipart;

use bytes::Bytes;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;
use warp::http::header::CONNECTION;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::model::VERSION_HEADER;
use super::rejection::MAX_REQUEST_BODY;
use super::reply::{error_response, json_response};
use super::with;
use crate::classify::{Admission, Answer, ClassifyService};
use crate::client::TrustedProxies;
use crate::domain::{ClassifyResponse, ImageUrl, TopK};
use crate::error::ApiError;
use body::{BodyStream, Limit};
use metered::Metered;
pub use metered::Metering;

/// What to classify.
#[derive(Debug)]
enum Input {
    Url(ImageUrl),
    Upload(Bytes),
}

#[derive(Debug)]
struct Request {
    input: Input,
    top_k: Option<TopK>,
}

/// Raw bodies accepted as an image (the bytes decide the format).
const RAW_TYPES: [&str; 6] = [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/bmp",
    "application/octet-stream",
];

/// `model_version` goes out as `X-Model-Version` on every answer, errors included (they are
/// this version's answers too).
pub fn route(
    service: ClassifyService,
    model_version: HeaderValue,
    metering: Metering,
    trusted: &TrustedProxies,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("classify-image")
        .and(warp::post())
        // Taken before the body is read: processing_time runs from the request's arrival.
        .map(Instant::now)
        .and(super::client::addr(trusted))
        .and(super::header_text("authorization"))
        .map(|arrived, addr, authorization| Arrival {
            arrived,
            addr,
            authorization,
        })
        // One reference count per request (the limits and auth are two).
        .and(with(Arc::new(metering)))
        .and(super::header_text("content-type"))
        .and(super::header_text("content-length"))
        .and(super::raw_query())
        .and(warp::body::stream().map(body::boxed))
        .and(with(service))
        .then(handle)
        .map(move |mut response: Response| {
            response
                .headers_mut()
                .insert(VERSION_HEADER, model_version.clone());
            response
        })
}

/// When the request came and who sent it.
struct Arrival {
    arrived: Instant,
    addr: Option<IpAddr>,
    authorization: Option<String>,
}

async fn handle(
    arrival: Arrival,
    metering: Arc<Metering>,
    content_type: Option<String>,
    content_length: Option<String>,
    query: Option<String>,
    body: BodyStream,
    service: ClassifyService,
) -> Response {
    let Arrival {
        arrived,
        addr,
        authorization,
    } = arrival;
    let mut metered = Metered::identify(&metering, addr, authorization.as_deref()).await;
    let mut body_read = false;
    let result = async {
        // Before the body is read: a refused request costs no upload.
        metered.check_all().await?;
        // An upload is buffered only under an admission.
        let admitted = service.admit()?;
        let content_length = parse_length(content_length.as_deref())?;
        let query_top_k = top_k_param(query.as_deref())?;
        let request = read_request(
            content_type.as_deref(),
            content_length,
            body,
            service.max_image_bytes(),
        )
        .await?;
        body_read = true;
        let top_k = one_top_k(request.top_k, query_top_k)?;
        let cold = metered.check_cold();
        let answer = classify(&service, &admitted, request.input, arrived, cold).await?;
        Ok((answer, top_k))
    }
    .await;
    let mut response = match result {
        Ok((answer, top_k)) => json_response(&ClassifyResponse::new(
            &answer.classification,
            answer.processing_time,
            top_k,
        )),
        Err(e) => refusal(&e, body_read),
    };
    metered.annotate(&mut response);
    response
}

/// The error's answer. Refused before its body was read to the end (too large, wrong type, a
/// bad part, no admission, over a rate limit), what is left of the body would be taken for the
/// next request, so hyper drops the connection after this answer. Saying so keeps a client from
/// sending its next request on it (it would fail as an incomplete message, as a test's pooled
/// client once did).
fn refusal(error: &ApiError, body_read: bool) -> Response {
    let mut response = error_response(error);
    if !body_read {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn classify(
    service: &ClassifyService,
    admitted: &Admission<'_>,
    input: Input,
    arrived: Instant,
    cold: impl std::future::Future<Output = Result<(), ApiError>>,
) -> Result<Answer, ApiError> {
    match input {
        Input::Url(url) => service.classify_url(admitted, url, arrived, cold).await,
        Input::Upload(bytes) => {
            service
                .classify_upload(admitted, bytes, arrived, cold)
                .await
        }
    }
}

async fn read_request(
    content_type: Option<&str>,
    content_length: Option<u64>,
    body: BodyStream,
    max_image_bytes: u64,
) -> Result<Request, ApiError> {
    let full_type = content_type.unwrap_or_default();
    let media_type = full_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let input = match media_type.as_str() {
        "application/json" => {
            let body = body::read(body, content_length, &json_limit(max_image_bytes)).await?;
            return json::parse(&body, MAX_REQUEST_BODY, max_image_bytes);
        }
        "multipart/form-data" => {
            multipart::read_image(body, full_type, content_length, max_image_bytes).await?
        }
        raw if RAW_TYPES.contains(&raw) => {
            let limit = Limit {
                bytes: max_image_bytes,
                max_image_bytes,
            };
            let bytes = body::read(body, content_length, &limit).await?;
            if bytes.is_empty() {
                return Err(ApiError::InvalidRequest("the request body is empty".into()));
            }
            bytes
        }
        _ => return Err(ApiError::UnsupportedMediaType),
    };
    Ok(Request {
        input: Input::Upload(input),
        top_k: None,
    })
}

/// A JSON body may carry an image in base64: 4/3 of the image limit, plus room for the field
/// names and a `data:` prefix. URL requests are held to [`MAX_REQUEST_BODY`] once parsed.
fn json_limit(max_image_bytes: u64) -> Limit {
    Limit {
        bytes: (max_image_bytes.div_ceil(3) * 4 + 1024).max(MAX_REQUEST_BODY),
        max_image_bytes,
    }
}

fn parse_length(header: Option<&str>) -> Result<Option<u64>, ApiError> {
    header
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::InvalidRequest("the Content-Length header is not a number".into())
            })
        })
        .transpose()
}

/// `top_k` from the body or the query, not both.
fn one_top_k(body: Option<TopK>, query: Option<TopK>) -> Result<Option<TopK>, ApiError> {
    match (body, query) {
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "top_k given both in the body and in the query".into(),
        )),
        (body, query) => Ok(body.or(query)),
    }
}

/// `?top_k=N` (for multipart and raw bodies, which have no JSON field for it).
fn top_k_param(query: Option<&str>) -> Result<Option<TopK>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let mut found = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name == "top_k" {
            if found.is_some() {
                return Err(ApiError::InvalidRequest("top_k given twice".into()));
            }
            found = Some(TopK::parse(&value).map_err(ApiError::InvalidRequest)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(data: &'static [u8]) -> BodyStream {
        let chunk: Result<Bytes, warp::Error> = Ok(Bytes::from_static(data));
        Box::pin(futures_util::stream::iter([chunk]))
    }

    async fn read(content_type: Option<&str>, data: &'static [u8]) -> Result<Request, ApiError> {
        read_request(content_type, None, stream(data), 8).await
    }

    #[tokio::test]
    async fn the_content_type_chooses_the_form() {
        let json = read(
            Some("Application/JSON; charset=utf-8"),
            br#"{"image_url":"http://a.com/x.jpg"}"#,
        );
        assert!(matches!(json.await.unwrap().input, Input::Url(_)));
        for raw in RAW_TYPES {
            let r = read(Some(raw), b"GIF89a").await.unwrap();
            assert!(
                matches!(r.input, Input::Upload(b) if b == "GIF89a"),
                "{raw}"
            );
        }
        // The header does not decide the format: a PNG label on GIF bytes is still an upload.
        assert!(read(Some("image/png"), b"GIF89a").await.is_ok());
    }

    #[tokio::test]
    async fn unknown_types_missing_types_and_empty_bodies_are_refused() {
        let code = |r: Result<Request, ApiError>| r.err().map(|e| e.code());
        assert_eq!(
            code(read(None, b"{}").await),
            Some("unsupported_media_type")
        );
        assert_eq!(
            code(read(Some("text/plain"), b"{}").await),
            Some("unsupported_media_type")
        );
        assert_eq!(
            code(read(Some("image/jpeg"), b"").await),
            Some("invalid_request")
        );
        assert_eq!(
            code(read(Some("image/jpeg"), b"123456789").await),
            Some("image_too_large")
        );
    }

    #[test]
    fn top_k_from_the_query() {
        assert_eq!(top_k_param(None).unwrap(), None);
        assert_eq!(top_k_param(Some("a=1")).unwrap(), None);
        assert_eq!(
            top_k_param(Some("top_k=5")).unwrap().map(TopK::get),
            Some(5)
        );
        for bad in [
            "top_k=0",
            "top_k=21",
            "top_k=x",
            "top_k=",
            "top_k=1&top_k=2",
        ] {
            assert_eq!(
                top_k_param(Some(bad)).unwrap_err().code(),
                "invalid_request",
                "{bad}"
            );
        }
    }

    #[test]
    fn the_json_limit_fits_a_base64_image_and_a_url_request() {
        assert!(json_limit(20 * 1024 * 1024).bytes > 20 * 1024 * 1024 * 4 / 3);
        assert_eq!(json_limit(1).bytes, MAX_REQUEST_BODY);
    }
}
