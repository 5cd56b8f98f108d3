//! `GET /model`: which model, labels and preprocessing answer here, and the `X-Model-Version`
//! every classify answer carries, so a client or an operator in the middle of a rolling upgrade
//! can tell which version gave an answer.
use serde_json::json;
use warp::http::HeaderValue;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::with;
use crate::classify::image::SIDE;
use crate::classify::model::{ModelIdentity, PIPELINE_REVISION};

pub const VERSION_HEADER: &str = "x-model-version";

/// The answer of `GET /model`, encoded once, and the header value. Cheap to clone.
#[derive(Clone)]
pub struct ModelInfo {
    body: String,
    version: HeaderValue,
}

impl ModelInfo {
    /// `classes`: the model's output width (equal to the labels' count, checked at load).
    pub fn new(identity: &ModelIdentity, classes: usize) -> Self {
        let options = &identity.preprocessing;
        let body = json!({
            "name": identity.name,
            "sha256": identity.sha256,
            "format": identity.format.as_str(),
            "input": [SIDE, SIDE, 3],
            "classes": classes,
            "labels_sha256": identity.labels_sha256,
            "resize_filter": options.filter.to_string(),
            "jpeg_dct_scaling": options.jpeg_dct_scaling,
            "exif_orientation": if options.apply_exif_orientation { "apply" } else { "ignore" },
            "pipeline_revision": PIPELINE_REVISION,
            "identity": identity.digest,
        });
        Self {
            body: body.to_string(),
            // Hex digits only: always a valid header value.
            version: HeaderValue::from_str(identity.short_sha256())
                .expect("a hex digest is a valid header value"),
        }
    }

    pub fn version(&self) -> HeaderValue {
        self.version.clone()
    }
}

pub fn route(info: ModelInfo) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("model")
        .and(super::get_or_head())
        .and(with(info))
        .map(|info: ModelInfo| {
            warp::reply::with_header(info.body, "content-type", "application/json").into_response()
        })
}
