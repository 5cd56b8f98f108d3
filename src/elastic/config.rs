//! Configuration of the Elasticsearch reporter. Passwords and API keys are [`Secret`]s, and the
//! configuration's `Debug` is written by hand to hide a password in the URL, so that logging it
//! never prints a credential.
use std::fmt;
use std::time::Duration;

use url::Url;

use super::ElasticError;
use crate::config::Secret;

/// How the reporter authenticates to Elasticsearch.
#[derive(Debug, Clone, Default)]
pub enum ElasticAuth {
    /// No `Authorization` header (local clusters with security disabled). Credentials written in
    /// the URL (`https://user:pass@host:9200`) are used as `Basic` in this case.
    #[default]
    None,
    /// HTTP basic authentication: native users, and AWS OpenSearch/Elasticsearch domains with
    /// fine-grained access control (the client has no SigV4 signing).
    Basic { username: String, password: Secret },
    /// An API key in the encoded form Kibana and `POST /_security/api_key` show
    /// (`base64("id:api_key")`), sent as `Authorization: ApiKey <value>`.
    ApiKey(Secret),
}

/// Settings of the reporter. Build it with [`ElasticConfig::new`] and override fields as needed.
#[derive(Clone)]
pub struct ElasticConfig {
    /// Base URL of the cluster, e.g. `http://elasticsearch:9200`. Credentials in the URL are
    /// stripped before use (and never logged); see [`ElasticAuth::None`].
    pub url: Url,
    /// Index the report documents go to. The index template covers `<index>*`.
    pub index: String,
    pub auth: ElasticAuth,
    /// Most documents kept in the outbox; beyond it the oldest are dropped (counted in
    /// `dropped`). The dead-letter table has the same bound. 100 000 reports of ~2 KiB are
    /// ~200 MiB of disk at worst, reached only after a long outage.
    pub outbox_max: usize,
    /// Identifies this process in every document (`instance_id`) and prefixes document ids, so
    /// that several instances can share one index. Must be unique per data directory.
    pub instance_id: String,
    /// The SHA-256 of the model answering (`GET /model`), put in every document so a chart can
    /// tell reports of two model versions apart.
    pub model_sha256: Option<String>,
    /// Most documents per `_bulk` request.
    pub batch_size: usize,
    /// First pause after a failed delivery; doubled per consecutive failure ...
    pub initial_backoff: Duration,
    /// ... up to this cap.
    pub max_backoff: Duration,
    /// Timeout of one HTTP request to Elasticsearch (connect to last byte), so that a silently
    /// dropped connection cannot stall delivery or shutdown.
    pub request_timeout: Duration,
}

impl ElasticConfig {
    pub const DEFAULT_INDEX: &'static str = "classifier-reports";

    /// The production defaults for a cluster at `url`.
    pub fn new(url: Url, instance_id: impl Into<String>) -> ElasticConfig {
        ElasticConfig {
            url,
            index: Self::DEFAULT_INDEX.to_owned(),
            auth: ElasticAuth::None,
            outbox_max: 100_000,
            instance_id: instance_id.into(),
            model_sha256: None,
            batch_size: 500,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Checks what Elasticsearch or redb would otherwise reject much later, one document at a
    /// time.
    pub(crate) fn validate(&self) -> Result<(), ElasticError> {
        let bad = |msg: String| Err(ElasticError::Config(msg));
        if !matches!(self.url.scheme(), "http" | "https") {
            return bad(format!(
                "elasticsearch URL must be http or https, not {}",
                self.url.scheme()
            ));
        }
        if self.url.host_str().is_none() {
            return bad("elasticsearch URL has no host".to_owned());
        }
        if let Err(why) = check_index_name(&self.index) {
            return bad(format!(
                "invalid elasticsearch index name {:?}: {why}",
                self.index
            ));
        }
        // The id prefix must leave room in Elasticsearch's 512-byte `_id` for "-<millis>-<seq>".
        if self.instance_id.is_empty() || self.instance_id.len() > 200 {
            return bad("elasticsearch instance id must be 1 to 200 bytes".to_owned());
        }
        if self.instance_id.chars().any(char::is_control) {
            return bad("elasticsearch instance id must not contain control characters".to_owned());
        }
        if self.outbox_max == 0 || self.batch_size == 0 {
            return bad("elasticsearch outbox_max and batch_size must be at least 1".to_owned());
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return bad(
                "elasticsearch backoff: initial must be > 0 and max must be >= initial".to_owned(),
            );
        }
        if self.request_timeout.is_zero() {
            return bad("elasticsearch request timeout must be > 0".to_owned());
        }
        Ok(())
    }

    /// The URL without credentials, and the credentials to use: the explicit `auth`, else those
    /// from the URL. Keeping them out of the URL keeps them out of every error message the HTTP
    /// client formats (those include the URL).
    pub(crate) fn effective(&self) -> (Url, ElasticAuth) {
        let mut url = self.url.clone();
        let from_url = if url.username().is_empty() && url.password().is_none() {
            ElasticAuth::None
        } else {
            ElasticAuth::Basic {
                username: percent_decode(url.username()),
                password: url
                    .password()
                    .map(percent_decode)
                    .unwrap_or_default()
                    .into(),
            }
        };
        // Cannot fail for http(s) URLs with a host, which validate() ensures.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let auth = match &self.auth {
            ElasticAuth::None => from_url,
            explicit => explicit.clone(),
        };
        (url, auth)
    }
}

impl fmt::Debug for ElasticConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("redacted"));
        }
        f.debug_struct("ElasticConfig")
            .field("url", &url.as_str())
            .field("index", &self.index)
            .field("auth", &self.auth)
            .field("outbox_max", &self.outbox_max)
            .field("instance_id", &self.instance_id)
            .field("batch_size", &self.batch_size)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Elasticsearch's index name rules, minus the ones only relevant to system indices.
fn check_index_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1 to 255 bytes");
    }
    if name != name.to_lowercase() {
        return Err("must be lowercase");
    }
    if name.starts_with(['-', '_', '+', '.']) {
        return Err("must not start with -, _, + or .");
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || "\\/*?\"<>|,#:".contains(c))
    {
        return Err("must not contain whitespace or any of \\ / * ? \" < > | , # :");
    }
    Ok(())
}

/// `%XX` decoding for URL user info (no `+` rule: that is form encoding, not URL encoding).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ElasticConfig {
        ElasticConfig::new(Url::parse(url).unwrap(), "test-1")
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut c = config("https://alice:s3cr%40t@es.example:9200");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");

        c.auth = ElasticAuth::Basic {
            username: "bob".into(),
            password: "hunter2".parse().unwrap(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: [redacted]"), "{shown}");

        c.auth = ElasticAuth::ApiKey(
            "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
                .parse()
                .unwrap(),
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("VnVh"), "{shown}");
        assert!(shown.contains("ApiKey([redacted])"), "{shown}");
    }

    #[test]
    fn credentials_move_from_url_to_basic_auth() {
        let (url, auth) = config("https://alice:s3cr%40t@es.example:9200/").effective();
        assert_eq!(url.as_str(), "https://es.example:9200/");
        assert!(
            matches!(&auth, ElasticAuth::Basic { username, password }
                if username == "alice" && password.expose() == "s3cr@t"),
            "{auth:?}"
        );

        // Explicit auth wins; the URL is still cleaned.
        let mut c = config("https://alice:pw@es.example:9200/");
        c.auth = ElasticAuth::ApiKey("k".parse().unwrap());
        let (url, auth) = c.effective();
        assert_eq!(url.as_str(), "https://es.example:9200/");
        assert!(
            matches!(&auth, ElasticAuth::ApiKey(k) if k.expose() == "k"),
            "{auth:?}"
        );

        let (_, auth) = config("http://es:9200").effective();
        assert!(matches!(auth, ElasticAuth::None), "{auth:?}");
    }

    #[test]
    fn validation_catches_bad_settings() {
        assert!(config("http://es:9200").validate().is_ok());
        let mut c = config("http://es:9200");
        c.index = "Reports".into();
        assert!(c.validate().is_err());
        c.index = "a*b".into();
        assert!(c.validate().is_err());
        let mut c = config("http://es:9200");
        c.instance_id.clear();
        assert!(c.validate().is_err());
        let mut c = config("http://es:9200");
        c.outbox_max = 0;
        assert!(c.validate().is_err());
        let mut c = config("http://es:9200");
        c.max_backoff = Duration::from_millis(1);
        assert!(c.validate().is_err());
        assert!(config("ftp://es:21").validate().is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%40b%3A"), "a@b:");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
