//! The JSON form: `{"image_url": "..."}` or `{"image_base64": "..."}` (plain base64 or a
//! `data:image/...;base64,` URI), with an optional `"top_k"`.
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::body::too_large;
use super::{Input, Request};
use crate::domain::{ImageUrl, TopK};
use crate::error::ApiError;

/// Standard alphabet; padding optional, since some encoders drop it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The fields we read; any others are ignored. A field that is present is `Some`, even when it
/// is `null` (which its check then refuses). Read into this rather than a whole
/// `serde_json::Value` map: no allocation for the object or its keys.
#[derive(serde::Deserialize)]
struct Fields {
    #[serde(default, deserialize_with = "present")]
    image_url: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    image_base64: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    top_k: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

const EXPECTED: &str = "expected a JSON object with an image_url or image_base64 field";

/// Parses the body. `max_url_body` is the size a URL request may have (the body was read under
/// the larger base64 limit); `max_image_bytes` bounds the decoded image.
pub fn parse(body: &[u8], max_url_body: u64, max_image_bytes: u64) -> Result<Request, ApiError> {
    // serde would also read a struct from an array, by position: `["http://..."]` is not a
    // request. Anything else that is not an object fails below, as invalid JSON or of the wrong shape.
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::InvalidRequest(EXPECTED.into()));
    }
    let fields: Fields = serde_json::from_slice(body).map_err(|e| match e.classify() {
        // Valid JSON of another shape: an array, a string, a key given twice.
        serde_json::error::Category::Data => ApiError::InvalidRequest(format!("{EXPECTED} ({e})")),
        _ => ApiError::InvalidRequest(format!("the body is not valid JSON: {e}")),
    })?;
    let top_k = fields.top_k.as_ref().map(top_k).transpose()?;
    let input = match (&fields.image_url, &fields.image_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "give either image_url or image_base64, not both".into(),
            ))
        }
        (Some(url), None) => {
            if body.len() as u64 > max_url_body {
                return Err(ApiError::RequestTooLarge(max_url_body));
            }
            Input::Url(url_field(url)?)
        }
        (None, Some(data)) => Input::Upload(base64_field(data, max_image_bytes)?),
        (None, None) => return Err(ApiError::InvalidRequest(EXPECTED.into())),
    };
    Ok(Request { input, top_k })
}

fn top_k(value: &Value) -> Result<TopK, ApiError> {
    let k = value.as_u64().ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "top_k must be an integer from 1 to 20, not {value}"
        ))
    })?;
    TopK::new(k).map_err(ApiError::InvalidRequest)
}

fn url_field(value: &Value) -> Result<ImageUrl, ApiError> {
    let Value::String(raw) = value else {
        return Err(ApiError::InvalidRequest(
            "image_url must be a string".into(),
        ));
    };
    ImageUrl::parse_remembered(raw).map_err(|e| ApiError::InvalidUrl(e.to_string()))
}

fn base64_field(value: &Value, max_image_bytes: u64) -> Result<Bytes, ApiError> {
    let Value::String(text) = value else {
        return Err(ApiError::InvalidRequest(
            "image_base64 must be a string".into(),
        ));
    };
    let encoded = strip_data_uri(text)?;
    // Checked before decoding: the decoded size is known from the text's length.
    if base64::decoded_len_estimate(encoded.len()) as u64 > max_image_bytes + 2 {
        return Err(too_large(max_image_bytes));
    }
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| ApiError::InvalidRequest(format!("image_base64 is not valid base64: {e}")))?;
    if bytes.len() as u64 > max_image_bytes {
        return Err(too_large(max_image_bytes));
    }
    if bytes.is_empty() {
        return Err(ApiError::InvalidRequest("image_base64 is empty".into()));
    }
    Ok(Bytes::from(bytes))
}

/// `data:image/png;base64,AAAA` → `AAAA`; plain base64 is returned as it is. A `data:` URI must
/// be base64 and of an image type: anything else cannot be what the client meant to classify.
fn strip_data_uri(text: &str) -> Result<&str, ApiError> {
    let Some(rest) = text.strip_prefix("data:") else {
        return Ok(text.trim());
    };
    let (header, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::InvalidRequest("image_base64 is a data: URI without a comma".into())
    })?;
    let mut params = header.split(';');
    let media_type = params.next().unwrap_or_default().trim();
    if !media_type.to_ascii_lowercase().starts_with("image/") {
        return Err(ApiError::InvalidRequest(format!(
            "image_base64 is a data: URI of type {media_type:?}, not an image"
        )));
    }
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(ApiError::InvalidRequest(
            "image_base64 is a data: URI that is not base64-encoded".into(),
        ));
    }
    Ok(data.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL_BODY: u64 = 16 * 1024;

    fn code(body: &str) -> &'static str {
        parse(body.as_bytes(), URL_BODY, 8).unwrap_err().code()
    }

    fn upload(body: &str) -> Vec<u8> {
        match parse(body.as_bytes(), URL_BODY, 8).unwrap().input {
            Input::Upload(bytes) => bytes.to_vec(),
            Input::Url(url) => panic!("expected an upload, got {url}"),
        }
    }

    #[test]
    fn url_requests_parse_as_before() {
        let r = parse(br#"{"image_url":"http://a.com/x.jpg"}"#, URL_BODY, 8).unwrap();
        assert!(matches!(r.input, Input::Url(u) if u.as_str() == "http://a.com/x.jpg"));
        assert_eq!(r.top_k, None);
        assert_eq!(code("{not json"), "invalid_request");
        assert_eq!(code("[]"), "invalid_request");
        // Not read by position, as serde would read a struct from an array.
        assert_eq!(code(r#" ["http://a.com/x.jpg"]"#), "invalid_request");
        assert_eq!(code(r#""http://a.com/x.jpg""#), "invalid_request");
        assert_eq!(
            code(r#"{"image_url":"http://a.com/x","image_url":"http://b.com/y"}"#),
            "invalid_request"
        );
        assert_eq!(
            code(r#"{"image_url":"http://a.com/x","image_base64":null}"#),
            "invalid_request"
        );
        assert_eq!(code(r#"{"url":"http://a.com"}"#), "invalid_request");
        assert_eq!(code(r#"{"image_url":42}"#), "invalid_request");
        assert_eq!(code(r#"{"image_url":null}"#), "invalid_request");
        assert_eq!(code(r#"{"image_url":"nope"}"#), "invalid_url");
    }

    #[test]
    fn a_url_request_keeps_its_small_limit() {
        let padded = format!(
            r#"{{"image_url":"http://a.com/x.jpg","pad":"{}"}}"#,
            "x".repeat(100)
        );
        let err = parse(padded.as_bytes(), 64, 8).unwrap_err();
        assert_eq!(err.code(), "request_too_large");
    }

    #[test]
    fn base64_plain_unpadded_and_data_uri() {
        assert_eq!(upload(r#"{"image_base64":"R0lGODlh"}"#), b"GIF89a");
        assert_eq!(upload(r#"{"image_base64":"R0lGOA"}"#), b"GIF8");
        assert_eq!(
            upload(r#"{"image_base64":"data:image/gif;base64,R0lGODlh"}"#),
            b"GIF89a"
        );
    }

    #[test]
    fn bad_base64_requests_have_their_codes() {
        assert_eq!(code(r#"{"image_base64":"%%%"}"#), "invalid_request");
        assert_eq!(code(r#"{"image_base64":""}"#), "invalid_request");
        assert_eq!(code(r#"{"image_base64":7}"#), "invalid_request");
        assert_eq!(
            code(r#"{"image_base64":"data:text/plain;base64,R0lGODlh"}"#),
            "invalid_request"
        );
        assert_eq!(
            code(r#"{"image_base64":"data:image/gif,GIF89a"}"#),
            "invalid_request"
        );
        // 9 bytes decoded, over the limit of 8.
        assert_eq!(
            code(r#"{"image_base64":"R0lGODlhR0lG"}"#),
            "image_too_large"
        );
        assert_eq!(
            code(r#"{"image_url":"http://a.com/x.jpg","image_base64":"R0lGODlh"}"#),
            "invalid_request"
        );
    }

    #[test]
    fn top_k_is_checked() {
        let r = parse(br#"{"image_url":"http://a.com/x","top_k":3}"#, URL_BODY, 8).unwrap();
        assert_eq!(r.top_k.map(TopK::get), Some(3));
        for bad in ["0", "21", "\"x\"", "2.5", "-1", "null"] {
            let body = format!(r#"{{"image_url":"http://a.com/x","top_k":{bad}}}"#);
            assert_eq!(code(&body), "invalid_request", "top_k {bad}");
        }
    }
}
