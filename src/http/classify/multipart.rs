//! The multipart form (`<input type=file>`, `FormData`): exactly one file part named `image`.
//!
//! `multer` (what warp's own `multipart` filter wraps) is used directly because the form shares
//! its route with the JSON and raw forms, and its limits are needed per part: warp's filter
//! limits only the declared `Content-Length` (refusing chunked uploads) and reports every
//! problem as the same rejection, where a client needs to hear which part was wrong.
use bytes::{Bytes, BytesMut};
use multer::{Constraints, Multipart, SizeLimit};

use super::body::{too_large, BodyStream, Limit};
use crate::error::ApiError;

/// The one part we read.
const IMAGE_PART: &str = "image";
/// Room for boundaries and part headers around the image.
const FRAMING_BYTES: u64 = 64 * 1024;

/// The limit on the whole multipart body.
pub fn limit(max_image_bytes: u64) -> Limit {
    Limit {
        bytes: max_image_bytes + FRAMING_BYTES,
        max_image_bytes,
    }
}

/// The bytes of the `image` part. `content_type` is the request's, with its boundary.
pub async fn read_image(
    body: BodyStream,
    content_type: &str,
    content_length: Option<u64>,
    max_image_bytes: u64,
) -> Result<Bytes, ApiError> {
    let whole = limit(max_image_bytes);
    whole.check_declared(content_length)?;
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::InvalidRequest("multipart/form-data needs a boundary parameter".into())
    })?;
    let constraints = Constraints::new().size_limit(
        SizeLimit::new()
            .whole_stream(whole.bytes)
            .per_field(max_image_bytes),
    );
    let mut form = Multipart::with_constraints(body, boundary, constraints);
    let mut image = None;
    while let Some(mut part) = form
        .next_field()
        .await
        .map_err(|e| malformed(e, max_image_bytes))?
    {
        match part.name() {
            Some(IMAGE_PART) if image.is_none() => {}
            Some(IMAGE_PART) => return Err(invalid("more than one part named image")),
            Some(other) => {
                return Err(invalid(&format!(
                    "unexpected part {other:?}; send one file part named image"
                )))
            }
            None => {
                return Err(invalid(
                    "a part has no name; send one file part named image",
                ))
            }
        }
        let mut bytes = BytesMut::new();
        while let Some(chunk) = part
            .chunk()
            .await
            .map_err(|e| malformed(e, max_image_bytes))?
        {
            bytes.extend_from_slice(&chunk);
        }
        image = Some(bytes.freeze());
    }
    match image {
        Some(bytes) if bytes.is_empty() => Err(invalid("the image part is empty")),
        Some(bytes) => Ok(bytes),
        None => Err(invalid(
            "no part named image; send one file part named image",
        )),
    }
}

fn invalid(problem: &str) -> ApiError {
    ApiError::InvalidRequest(format!("multipart body: {problem}"))
}

fn malformed(e: multer::Error, max_image_bytes: u64) -> ApiError {
    match e {
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            too_large(max_image_bytes)
        }
        other => invalid(&format!("malformed ({other})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(text: &str) -> BodyStream {
        let chunk: Result<Bytes, warp::Error> = Ok(Bytes::from(text.replace('\n', "\r\n")));
        Box::pin(futures_util::stream::iter([chunk]))
    }

    fn part(name: &str, data: &str) -> String {
        format!(
            "--XyZ\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\n\
             Content-Type: application/octet-stream\n\n{data}\n"
        )
    }

    async fn read(text: &str) -> Result<Bytes, ApiError> {
        read_image(body(text), CT, None, 8).await
    }

    async fn problem(text: &str) -> String {
        let e = read(text).await.unwrap_err();
        assert_eq!(e.code(), "invalid_request", "{e}");
        e.to_string()
    }

    #[tokio::test]
    async fn one_image_part_is_read() {
        let form = format!("{}--XyZ--\n", part("image", "GIF89a"));
        assert_eq!(read(&form).await.unwrap(), Bytes::from_static(b"GIF89a"));
    }

    #[tokio::test]
    async fn each_wrong_form_names_its_problem() {
        let two = format!("{}{}--XyZ--\n", part("image", "a"), part("image", "b"));
        assert!(problem(&two).await.contains("more than one"));
        let other = format!("{}--XyZ--\n", part("file", "a"));
        assert!(problem(&other).await.contains("\"file\""));
        assert!(problem("--XyZ--\n").await.contains("no part named image"));
        let empty = format!("{}--XyZ--\n", part("image", ""));
        assert!(problem(&empty).await.contains("empty"));
        // Truncated: the closing boundary never comes.
        let cut = "--XyZ\nContent-Disposition: form-data; name=\"image\"\n\nGIF8";
        assert!(problem(cut).await.contains("malformed"));
        // The body's boundary is not the one the header names.
        let other_boundary = format!("{}--XyZ--\n", part("image", "a")).replace("XyZ", "Other");
        problem(&other_boundary).await;
        let e = read_image(body("x"), "multipart/form-data", None, 8).await;
        assert!(e.unwrap_err().to_string().contains("boundary"));
    }

    #[tokio::test]
    async fn an_image_over_the_limit_is_too_large() {
        let form = format!("{}--XyZ--\n", part("image", "123456789"));
        assert_eq!(read(&form).await.unwrap_err().code(), "image_too_large");
        let declared = read_image(body("x"), CT, Some(8 + FRAMING_BYTES + 1), 8).await;
        assert_eq!(declared.unwrap_err().code(), "image_too_large");
    }
}
