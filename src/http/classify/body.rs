//! Reading a request body under a byte limit: refused at once when `Content-Length` already says
//! it is too big, and cut as soon as the bytes received pass the limit otherwise (chunked
//! bodies), so no body is ever buffered past its limit.
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};

use crate::classify::fetch::FetchError;
use crate::error::ApiError;

/// The request body as warp streams it, boxed once so the readers need no generics.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

pub fn boxed<S, B>(stream: S) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    Box::pin(stream.map_ok(|mut buf| buf.copy_to_bytes(buf.remaining())))
}

/// A limit on a body that carries an image, and the image limit its error names.
#[derive(Debug, Clone)]
pub struct Limit {
    pub bytes: u64,
    pub max_image_bytes: u64,
}

impl Limit {
    /// Refuses a declared length over the limit before anything is read.
    pub fn check_declared(&self, content_length: Option<u64>) -> Result<(), ApiError> {
        match content_length {
            Some(n) if n > self.bytes => Err(self.too_large()),
            _ => Ok(()),
        }
    }

    /// Made only when needed: its message is formatted text.
    fn too_large(&self) -> ApiError {
        too_large(self.max_image_bytes)
    }
}

/// An upload over the limit answers as a download over it does.
pub fn too_large(max_image_bytes: u64) -> ApiError {
    FetchError::TooLarge {
        limit: max_image_bytes,
    }
    .into()
}

/// The whole body, or the limit's error as soon as more than `limit.bytes` have arrived.
pub async fn read(
    mut body: BodyStream,
    content_length: Option<u64>,
    limit: &Limit,
) -> Result<Bytes, ApiError> {
    limit.check_declared(content_length)?;
    // A declared length is only a hint for the allocation (it was checked above); the count of
    // bytes received is what the limit is enforced on.
    let mut buf = BytesMut::with_capacity(content_length.unwrap_or(0) as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(body_failed)?;
        if (buf.len() + chunk.len()) as u64 > limit.bytes {
            return Err(limit.too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The client went away or sent a broken body: nothing to answer but this.
pub fn body_failed(e: warp::Error) -> ApiError {
    ApiError::InvalidRequest(format!("the request body could not be read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> BodyStream {
        let items: Vec<Result<Bytes, warp::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    fn limit(bytes: u64) -> Limit {
        Limit {
            bytes,
            max_image_bytes: bytes,
        }
    }

    #[tokio::test]
    async fn reads_up_to_the_limit_exactly() {
        let body = read(chunks(&[b"ab", b"cd"]), None, &limit(4)).await;
        assert_eq!(body.unwrap(), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn one_byte_over_is_refused_whether_declared_or_not() {
        let err = read(chunks(&[b"ab", b"cde"]), None, &limit(4)).await;
        assert_eq!(err.unwrap_err().code(), "image_too_large");
        // Declared too large: refused before the (here endless) body is polled at all.
        let endless: BodyStream = Box::pin(futures_util::stream::pending());
        let err = read(endless, Some(5), &limit(4)).await;
        assert_eq!(err.unwrap_err().code(), "image_too_large");
    }

    #[tokio::test]
    async fn a_lying_content_length_does_not_raise_the_limit() {
        let err = read(chunks(&[b"abcdef"]), Some(2), &limit(4)).await;
        assert_eq!(err.unwrap_err().code(), "image_too_large");
    }
}
