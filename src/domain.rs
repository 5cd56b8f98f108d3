//! Validated request values and the classification result ("parse, don't validate").
use std::sync::Arc;

use url::Url;

/// The most predictions an answer can list (`top_k`), and so the most a cached result keeps.
pub const MAX_TOP_K: usize = 20;

/// What the model said about one image: the top-1 label and its softmax probability, and the
/// next most likely classes (up to [`MAX_TOP_K`] in all), highest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// Shared like the runners-up: a cache hit clones a reference count, not the text.
    pub label: Arc<str>,
    pub confidence: f32,
    /// Ranks 2.., shared: a cached result is cloned on every hit.
    pub runners_up: Arc<[Prediction]>,
}

/// One class and its softmax probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub label: Arc<str>,
    pub confidence: f32,
}

impl Classification {
    /// A result with no runners-up (what a one-class answer or an old cache entry holds).
    pub fn top1(label: impl Into<Arc<str>>, confidence: f32) -> Self {
        Self {
            label: label.into(),
            confidence,
            runners_up: Arc::from([]),
        }
    }

    /// The `k` most likely classes, highest first, the first being the top-1 pair.
    pub fn predictions(&self, k: usize) -> impl Iterator<Item = (&str, f32)> {
        std::iter::once((&*self.label, self.confidence))
            .chain(self.runners_up.iter().map(|p| (&*p.label, p.confidence)))
            .take(k)
    }
}

/// Why a string is not an image URL we will fetch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("image_url is not a valid absolute URL: {0}")]
    Malformed(String),
    #[error("image_url must use http or https, not {0:?}")]
    Scheme(String),
    #[error("image_url has no host")]
    NoHost,
    #[error("image_url must not carry credentials")]
    Credentials,
}

/// An absolute http(s) URL, normalized so that equal images share one cache key and one stats row.
///
/// Normalization rule (what the `url` crate's WHATWG parser does, plus dropping the fragment):
/// scheme and host lowercased, default port dropped, IP literals in any spelling
/// (`http://2130706433/`, `http://0x7f.1/`) rewritten to dotted form, `.`/`..` path segments
/// resolved, fragment dropped. Path and query are kept as they are (`?v=1` and `?v=2` differ).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageUrl(Url);

impl ImageUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let mut url = Url::parse(raw.trim()).map_err(|e| UrlError::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme(url.scheme().to_owned()));
        }
        if url.host().is_none() {
            return Err(UrlError::NoHost);
        }
        // Credentials in a URL would end up in the cache key, stats and logs.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        url.set_fragment(None);
        Ok(Self(url))
    }

    /// [`ImageUrl::parse`], remembered per thread for the last few hundred short URLs: a hot
    /// image is asked for by the same string again and again, and parsing it was 4% of a cached
    /// hit in `perf`. Parsing is a pure function, so a remembered answer is the answer.
    pub fn parse_remembered(raw: &str) -> Result<Self, UrlError> {
        /// Entries per thread, and the longest URL kept: at most 256 KiB of text per thread.
        const ENTRIES: usize = 256;
        const MAX_LEN: usize = 1024;
        thread_local! {
            static PARSED: std::cell::RefCell<std::collections::HashMap<String, ImageUrl>> =
                std::cell::RefCell::new(std::collections::HashMap::new());
        }
        if raw.len() > MAX_LEN {
            return Self::parse(raw);
        }
        if let Some(url) = PARSED.with_borrow(|parsed| parsed.get(raw).cloned()) {
            return Ok(url);
        }
        let url = Self::parse(raw)?;
        PARSED.with_borrow_mut(|parsed| {
            // Emptied when full: cheaper than tracking recency, and hot URLs come right back.
            if parsed.len() >= ENTRIES {
                parsed.clear();
            }
            parsed.insert(raw.to_owned(), url.clone());
        });
        Ok(url)
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// The normalized form: cache key, stats key, and what `/report` shows.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Display for ImageUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of an image's bytes. Every classified image is cached under it too, so the same
/// bytes behind many URLs, or uploaded again, cost one inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash([u8; 32]);

/// Storage keys of content hashes start with this; URL keys cannot (they are http(s) URLs).
const CONTENT_KEY_PREFIX: &str = "sha256:";

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key of this content in the cache and, for uploads, in the statistics.
    pub fn key(&self) -> String {
        format!("{CONTENT_KEY_PREFIX}{}", self.hex())
    }
}

/// What a request classified, as the statistics and `/report` count it: a URL (by its normalized
/// form), or uploaded bytes (by their hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Url(ImageUrl),
    Upload(ContentHash),
}

impl Subject {
    /// The statistics key: the normalized URL, or the content key.
    pub fn key(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Url(url) => url.as_str().into(),
            Self::Upload(hash) => hash.key().into(),
        }
    }
}

/// The answer's wire form, which clients parse as openapi.yaml documents it (so it must not change
/// shape): every value is a string, confidence and seconds with 3 decimals
/// (`{"classification":"tabby","confidence":"0.554","processing_time":"4.731"}`). `predictions`
/// is there only when the request asked for `top_k`. Borrowed, and the numbers formatted as they
/// are written: a cache hit's answer copies no label and allocates no text but the body.
#[derive(Debug, serde::Serialize)]
pub struct ClassifyResponse<'a> {
    pub classification: &'a str,
    pub confidence: Decimals3<f32>,
    pub processing_time: Decimals3<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<PredictionResponse<'a>>>,
}

/// One entry of `predictions`, in the same string form as the top-level pair.
#[derive(Debug, serde::Serialize)]
pub struct PredictionResponse<'a> {
    pub classification: &'a str,
    pub confidence: Decimals3<f32>,
}

/// A number written as a JSON string with 3 decimals (`"0.554"`), straight into the output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decimals3<T>(pub T);

impl<T: std::fmt::Display> serde::Serialize for Decimals3<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:.3}", self.0))
    }
}

impl<'a> ClassifyResponse<'a> {
    pub fn new(
        classification: &'a Classification,
        processing_time: std::time::Duration,
        top_k: Option<TopK>,
    ) -> Self {
        Self {
            classification: &classification.label,
            confidence: Decimals3(classification.confidence),
            processing_time: Decimals3(processing_time.as_secs_f64()),
            predictions: top_k.map(|k| {
                classification
                    .predictions(k.get())
                    .map(|(label, confidence)| PredictionResponse {
                        classification: label,
                        confidence: Decimals3(confidence),
                    })
                    .collect()
            }),
        }
    }
}

/// How many predictions a request asked for: 1 to [`MAX_TOP_K`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK(usize);

impl TopK {
    pub fn new(k: u64) -> Result<Self, String> {
        match usize::try_from(k) {
            Ok(k @ 1..=MAX_TOP_K) => Ok(Self(k)),
            _ => Err(format!(
                "top_k must be an integer from 1 to {MAX_TOP_K}, not {k}"
            )),
        }
    }

    /// Parses the text form (`?top_k=5`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let k = text
            .parse::<u64>()
            .map_err(|_| format!("top_k must be an integer from 1 to {MAX_TOP_K}, not {text:?}"))?;
        Self::new(k)
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// One row of `/report`: what was classified and its processing times in seconds. A URL row has
/// `image_url`; an upload row has `"image_url": null` and `upload_sha256` (the hex SHA-256 of the
/// bytes), so URL rows look as they always did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UrlStats {
    pub image_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_sha256: Option<String>,
    pub count: u64,
    pub min_processing_time: f64,
    pub max_processing_time: f64,
    pub avg_processing_time: f64,
}

/// A statistics key as a report row names it: `(image_url, upload_sha256)`.
pub fn report_subject(key: &str) -> (Option<String>, Option<String>) {
    match key.strip_prefix(CONTENT_KEY_PREFIX) {
        Some(hex) => (None, Some(hex.to_owned())),
        None => (Some(key.to_owned()), None),
    }
}

/// Aggregates over every recorded request. All times are 0 when nothing was recorded (JSON has no
/// infinity).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Totals {
    pub count: u64,
    pub min_processing_time: f64,
    pub max_processing_time: f64,
    pub avg_processing_time: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_parse_answers_as_a_fresh_one() {
        let long = format!("http://a.com/{}", "x".repeat(2000));
        let cases = [
            "http://A.COM:80/x.jpg#frag",
            "http://0x7f.1/a/../b.png",
            "ftp://a.com/x",
            "http://user:pw@a.com/x",
            "not a url",
            long.as_str(),
        ];
        // Twice over, and past the per-thread capacity, so answers come from the memory too.
        for round in 0..2 {
            for raw in cases {
                assert_eq!(
                    ImageUrl::parse_remembered(raw),
                    ImageUrl::parse(raw),
                    "{raw}"
                );
            }
            for i in 0..300 {
                let raw = format!("http://a.com/{round}/{i}");
                assert_eq!(ImageUrl::parse_remembered(&raw), ImageUrl::parse(&raw));
            }
        }
        assert_eq!(
            ImageUrl::parse_remembered("http://A.COM:80/x.jpg#frag")
                .unwrap()
                .as_str(),
            "http://a.com/x.jpg"
        );
    }

    #[test]
    fn content_keys_never_collide_with_url_keys() {
        let hash = ContentHash::of(b"GIF89a");
        assert_eq!(hash.hex().len(), 64);
        assert_eq!(
            report_subject(&Subject::Upload(hash).key()),
            (None, Some(hash.hex()))
        );
        let url = ImageUrl::parse("http://a.com/sha256:x").unwrap();
        assert_eq!(
            report_subject(&Subject::Url(url).key()),
            (Some("http://a.com/sha256:x".to_owned()), None)
        );
    }

    #[test]
    fn top_k_is_one_to_twenty() {
        assert!(TopK::new(0).is_err());
        assert_eq!(TopK::new(20).unwrap().get(), 20);
        assert!(TopK::new(21).is_err());
        assert_eq!(TopK::parse("5").unwrap().get(), 5);
        assert!(TopK::parse("x").is_err());
        assert!(TopK::parse("-1").is_err());
    }

    #[test]
    fn predictions_start_with_the_top_pair_and_stop_at_k() {
        let c = Classification {
            label: "tabby".into(),
            confidence: 0.5,
            runners_up: Arc::from([Prediction {
                label: "tiger cat".into(),
                confidence: 0.25,
            }]),
        };
        let all: Vec<_> = c.predictions(5).collect();
        assert_eq!(all, [("tabby", 0.5), ("tiger cat", 0.25)]);
        assert_eq!(c.predictions(1).count(), 1);
        let body = ClassifyResponse::new(&c, std::time::Duration::from_micros(4_730_600), None);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"classification":"tabby","confidence":"0.500","processing_time":"4.731"}"#
        );
        let body = ClassifyResponse::new(&c, std::time::Duration::ZERO, TopK::new(2).ok());
        assert_eq!(
            serde_json::to_value(&body).unwrap()["predictions"][1],
            serde_json::json!({"classification": "tiger cat", "confidence": "0.250"})
        );
    }

    #[test]
    fn normalizes_case_default_port_and_fragment() {
        let a = ImageUrl::parse("http://A.com:80/x.jpg#f").unwrap();
        let b = ImageUrl::parse("http://a.com/x.jpg").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "http://a.com/x.jpg");
    }

    #[test]
    fn keeps_query_and_path_case() {
        let v1 = ImageUrl::parse("https://a.com/X.jpg?v=1").unwrap();
        let v2 = ImageUrl::parse("https://a.com/X.jpg?v=2").unwrap();
        assert_ne!(v1, v2);
        assert_eq!(v1.as_str(), "https://a.com/X.jpg?v=1");
    }

    #[test]
    fn odd_ip_spellings_become_dotted() {
        assert_eq!(
            ImageUrl::parse("http://2130706433/").unwrap().as_str(),
            "http://127.0.0.1/"
        );
        assert_eq!(
            ImageUrl::parse("http://0x7f.1/").unwrap().as_str(),
            "http://127.0.0.1/"
        );
    }

    #[test]
    fn refuses_what_is_not_an_http_url() {
        assert!(matches!(
            ImageUrl::parse("not a url"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            ImageUrl::parse("/relative.jpg"),
            Err(UrlError::Malformed(_))
        ));
        assert_eq!(
            ImageUrl::parse("ftp://a.com/x.jpg"),
            Err(UrlError::Scheme("ftp".into()))
        );
        assert_eq!(
            ImageUrl::parse("file:///etc/passwd"),
            Err(UrlError::Scheme("file".into()))
        );
        assert_eq!(
            ImageUrl::parse("http://u:p@a.com/x.jpg"),
            Err(UrlError::Credentials)
        );
    }
}
