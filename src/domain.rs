//! Validated request values and the classification result ("parse, don't validate").
use url::Url;

/// What the model said about one image: the top-1 label and its softmax probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub label: String,
    pub confidence: f32,
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

/// The answer's wire form, which clients parse as openapi.yaml documents it (so it must not change
/// shape): every value is a string, confidence and seconds with 3 decimals
/// (`{"classification":"tabby","confidence":"0.554","processing_time":"4.731"}`).
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ClassifyResponse {
    pub classification: String,
    pub confidence: String,
    pub processing_time: String,
}

impl ClassifyResponse {
    pub fn new(classification: &Classification, processing_time: std::time::Duration) -> Self {
        Self {
            classification: classification.label.clone(),
            confidence: format!("{:.3}", classification.confidence),
            processing_time: format!("{:.3}", processing_time.as_secs_f64()),
        }
    }
}

/// One row of `/report`: a URL and its processing times in seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UrlStats {
    pub image_url: String,
    pub count: u64,
    pub min_processing_time: f64,
    pub max_processing_time: f64,
    pub avg_processing_time: f64,
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
