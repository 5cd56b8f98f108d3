//! What the service can be told: every flag also reads a `CLASSIFIER_*` variable. The commands
//! these settings go with are in `cli`.
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::auth::{load_or_create_root_key, AuthStore, KeyPair};
use crate::classify::image::ResizeFilter;
use crate::client::TrustedProxies;
use crate::ratelimit::{RateLimitConfig, RateSetting};
use crate::redis_conn::RedisSpec;

/// A value that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelFormat {
    /// The embedded frozen GraphDef, imported from memory (faster to load and to run).
    FrozenGraph,
    /// The embedded SavedModel (extracted to a temp dir at start).
    SavedModel,
}

/// What `--exif-orientation` does with the orientation tag of JPEG, PNG and WebP images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExifOrientation {
    /// Classify the pixels as stored, as Keras `load_img` does.
    Ignore,
    /// Turn the image upright first, as a photo viewer shows it.
    Apply,
}

/// Who may read the operator endpoints (`/report`, `/report/history`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OpsAuth {
    /// Anyone who can reach the service (the behaviour before the setting existed).
    None,
    /// A bearer token of a user with the `ops` role: none or an invalid one is `401`, a valid
    /// one without the role `403 forbidden`.
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--redis-url`: one URL, or with `--redis-cluster` a comma-separated list of seed nodes,
/// each checked at parse time. `Debug` shows them with the password replaced.
#[derive(Clone)]
pub struct RedisUrl {
    urls: Vec<String>,
    redacted: String,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl RedisUrl {
    /// Where to connect: one server, or (`cluster`) the cluster these nodes belong to.
    pub fn spec(&self, cluster: bool) -> Result<RedisSpec, String> {
        match (cluster, self.urls.as_slice()) {
            (true, nodes) => Ok(RedisSpec::Cluster(nodes.to_vec())),
            (false, [one]) => Ok(RedisSpec::Single(one.clone())),
            (false, _) => {
                Err("several Redis URLs name a cluster's nodes: add --redis-cluster".into())
            }
        }
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut redacted = Vec::new();
        let urls: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        for text in &urls {
            let mut url = url::Url::parse(text)
                .map_err(|e| format!("not a URL ({e}); e.g. redis://127.0.0.1:6379/0"))?;
            if !matches!(url.scheme(), "redis" | "rediss") {
                return Err("the scheme must be redis:// or rediss:// (TLS)".into());
            }
            redis::Client::open(text.as_str()).map_err(|e| format!("not a Redis URL: {e}"))?;
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            redacted.push(url.to_string());
        }
        if urls.is_empty() {
            return Err("no URL given".into());
        }
        Ok(Self {
            urls,
            redacted: redacted.join(","),
        })
    }
}

/// The pages allowed to call the API, from `--cors-origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS at all: answers carry no CORS headers (an empty value, the default).
    Off,
    /// `*`: any page.
    Any,
    /// Each in the form browsers send in `Origin`: lower case, no default port, no path.
    Only(Vec<String>),
}

impl std::str::FromStr for CorsOrigins {
    type Err = String;

    /// `*`, or comma-separated `scheme://host[:port]` (http or https); empty items are skipped,
    /// and nothing at all is `Off` (so an empty `CLASSIFIER_CORS_ORIGINS=` means unset).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if items == ["*"] {
            return Ok(Self::Any);
        }
        if items.contains(&"*") {
            return Err("`*` allows every origin; give it alone, not in a list".into());
        }
        if items.is_empty() {
            return Ok(Self::Off);
        }
        items
            .into_iter()
            .map(parse_origin)
            .collect::<Result<_, _>>()
            .map(Self::Only)
    }
}

/// One origin as a browser serializes it, or why the text is not one.
fn parse_origin(text: &str) -> Result<String, String> {
    let bad =
        |why: &str| format!("`{text}` is not an origin: {why} (e.g. https://promo.example.com)");
    // The URL parser reads "https://a.com/" as "https://a.com"; only the text shows a path.
    let Some((_, authority)) = text.split_once("://") else {
        return Err(bad("it must start with http:// or https://"));
    };
    if authority.contains(['/', '\\', '?', '#']) {
        return Err(bad("nothing may follow host[:port], not even a /"));
    }
    if authority.contains('@') {
        return Err(bad("it must not hold a user name or password"));
    }
    let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    Ok(url.origin().ascii_serialization())
}

impl Settings {
    /// The four limits; a user's unset one is derived from the address limit in `ratelimit`.
    pub fn rate_limits(&self) -> RateLimitConfig {
        RateLimitConfig {
            all: self.rate_limit.0,
            cold: self.rate_limit_cold.0,
            user_all: self.rate_limit_user.map(|r| r.0),
            user_cold: self.rate_limit_user_cold.map(|r| r.0),
        }
    }

    /// The root key given by `--root-key` (env) or `--root-key-file`, in that order; `None` if
    /// neither is set. Here because both the server and the offline commands need it.
    pub fn given_root_key(&self) -> anyhow::Result<Option<KeyPair>> {
        if self.root_key.is_none() && self.root_key_file.is_none() {
            return Ok(None);
        }
        load_or_create_root_key(
            &self.data_dir,
            self.root_key_file.as_deref(),
            self.root_key.as_ref().map(Secret::expose),
        )
        .map(Some)
        .context("loading the root key")
    }

    /// The given root key, else the one `store` keeps: `<data-dir>/root_key` (created on first
    /// use) for redb, a key stored in Redis (the first replica's) in Redis mode.
    pub async fn root_key(&self, store: &AuthStore) -> anyhow::Result<KeyPair> {
        if let Some(key) = self.given_root_key()? {
            return Ok(key);
        }
        store
            .stored_root_key(&self.data_dir)
            .await
            .context("loading the root key")
    }
}

/// Everything the service can be told. `global` so flags may stand before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(
        long,
        env = "CLASSIFIER_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Origins whose pages may call the API from a browser (CORS): comma-separated
    /// `scheme://host[:port]`, e.g. `https://promo.example.com`, or `*` for any. Unset or empty:
    /// no CORS headers, so only same-origin pages can read the answers.
    #[arg(
        long,
        env = "CLASSIFIER_CORS_ORIGINS",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub cors_origins: CorsOrigins,

    /// Proxies in front of the service whose `X-Forwarded-For` (else `Forwarded: for=`) is
    /// believed: comma-separated CIDRs or addresses, e.g. `10.0.0.0/8,127.0.0.1`. The client is
    /// then the right-most forwarded address that is not one of them. Unset: the TCP peer is the
    /// client and those headers are ignored.
    #[arg(
        long,
        env = "CLASSIFIER_TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    pub trusted_proxies: TrustedProxies,

    /// Per-client limit on all `/classify-image` requests: `N/s|min|h` with an optional
    /// `,burst=B` (default N), e.g. `600/min,burst=100`; `off` for none. Over it: 429.
    #[arg(
        long,
        env = "CLASSIFIER_RATE_LIMIT",
        default_value = "off",
        global = true
    )]
    pub rate_limit: RateSetting,

    /// Per-client limit on requests that miss the cache (a download or an inference), e.g.
    /// `30/min`; `off` for none. Only a miss is charged, before its download.
    #[arg(
        long,
        env = "CLASSIFIER_RATE_LIMIT_COLD",
        default_value = "off",
        global = true
    )]
    pub rate_limit_cold: RateSetting,

    /// The limit for a request with a valid bearer token, counted per user (default: 10 x
    /// --rate-limit; `off`: users are not limited).
    #[arg(long, env = "CLASSIFIER_RATE_LIMIT_USER", global = true)]
    pub rate_limit_user: Option<RateSetting>,

    /// The cold limit per user (default: 10 x --rate-limit-cold).
    #[arg(long, env = "CLASSIFIER_RATE_LIMIT_USER_COLD", global = true)]
    pub rate_limit_user_cold: Option<RateSetting>,

    /// Share results, single flight, statistics (so `/report`) and rate limits with every
    /// replica on this Redis: `redis://[user:pass@]host:port/db` or `rediss://` (TLS). Unset: all of it stays in
    /// the data dir. Users, tokens, history and the Elasticsearch outbox stay per replica in this
    /// build. The password is redacted in logs.
    #[arg(long, env = "CLASSIFIER_REDIS_URL", global = true)]
    pub redis_url: Option<RedisUrl>,

    /// `--redis-url` names seed nodes of a Redis Cluster (a comma-separated list is allowed).
    /// Keys a script touches together share a hash tag, so they live on one node.
    #[arg(long, env = "CLASSIFIER_REDIS_CLUSTER", global = true)]
    pub redis_cluster: bool,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(
        long,
        env = "CLASSIFIER_REDIS_PREFIX",
        default_value = "classifier",
        global = true
    )]
    pub redis_prefix: String,

    /// How long one Redis command may take before it counts as failed.
    #[arg(
        long,
        env = "CLASSIFIER_REDIS_TIMEOUT",
        default_value = "250ms",
        global = true
    )]
    pub redis_timeout: humantime::Duration,

    /// How long start-up waits for Redis to answer (retrying with backoff) before it exits.
    #[arg(
        long,
        env = "CLASSIFIER_REDIS_CONNECT_TIMEOUT",
        default_value = "30s",
        global = true
    )]
    pub redis_connect_timeout: humantime::Duration,

    /// Directory for the database (cache, statistics, users, keys).
    #[arg(
        long,
        env = "CLASSIFIER_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Allow image URLs that resolve to loopback, private, link-local and other non-public
    /// addresses (tests, private deployments). Off by default: the service fetches whatever URL
    /// the internet sends it.
    #[arg(long, env = "CLASSIFIER_ALLOW_PRIVATE_NETWORKS", global = true)]
    pub allow_private_networks: bool,

    /// Largest image download, in bytes.
    #[arg(long, env = "CLASSIFIER_MAX_IMAGE_BYTES", default_value_t = 20 * 1024 * 1024, global = true)]
    pub max_image_bytes: u64,

    /// Largest image, in pixels (width x height), checked from the header before decoding.
    #[arg(
        long,
        env = "CLASSIFIER_MAX_IMAGE_PIXELS",
        default_value_t = 50_000_000,
        global = true
    )]
    pub max_image_pixels: u64,

    /// Total time allowed for one image download (connect, headers and body).
    #[arg(
        long,
        env = "CLASSIFIER_FETCH_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub fetch_timeout: humantime::Duration,

    /// How images are resized to 224x224: `nearest` reproduces Keras `load_img` (Pillow NEAREST)
    /// bit for bit; `bilinear` is Pillow's antialiased BILINEAR.
    #[arg(
        long,
        env = "CLASSIFIER_RESIZE_FILTER",
        default_value = "nearest",
        global = true
    )]
    pub resize_filter: ResizeFilter,

    /// Decode JPEGs larger than 448x448 at 1/2, 1/4 or 1/8 scale in the IDCT (never below 224
    /// pixels on either side) before the resize: less work on large photos, but the pixels, and so
    /// the confidences, differ from Pillow's. Off by default.
    #[arg(long, env = "CLASSIFIER_JPEG_DCT_SCALING", global = true)]
    pub jpeg_dct_scaling: bool,

    /// `apply` turns JPEG, PNG and WebP images upright by their EXIF orientation before the
    /// resize, so portrait phone photos are seen as taken; `ignore` (the default) classifies the
    /// pixels as stored, as Keras `load_img` does. A missing or damaged tag counts as upright.
    #[arg(
        long,
        env = "CLASSIFIER_EXIF_ORIENTATION",
        value_enum,
        default_value = "ignore",
        global = true
    )]
    pub exif_orientation: ExifOrientation,

    /// Which form of the model to run: the embedded one's, or with --model-dir a directory that
    /// holds both (`frozen_graph.pb` and `saved_model/`).
    #[arg(
        long,
        env = "CLASSIFIER_MODEL_FORMAT",
        value_enum,
        default_value = "frozen-graph",
        global = true
    )]
    pub model_format: ModelFormat,

    /// Load a model from disk instead of the embedded one: a SavedModel directory (tag `serve`,
    /// signature `serving_default`), a frozen GraphDef (`input_1:0` -> `Identity:0`), or a
    /// directory with both (as scripts/import-keras-model.sh writes it).
    #[arg(long, env = "CLASSIFIER_MODEL_DIR", global = true)]
    pub model_dir: Option<PathBuf>,

    /// Labels for --model-dir, in `imagenet_class_index.json` form (default: the model
    /// directory's own `imagenet_class_index.json`, else the embedded ones).
    #[arg(long, env = "CLASSIFIER_LABELS", global = true)]
    pub labels: Option<PathBuf>,

    /// TensorFlow intra-op threads (0: TensorFlow's default, one per core). Unset: 1 when
    /// there are several inference threads (they already keep one session run per core; a
    /// run whose ops were also split over the cores waited for its slower half whenever a
    /// decode, the HTTP or the other run held a core), else TensorFlow's default.
    #[arg(long, env = "CLASSIFIER_INTRA_OP_THREADS", global = true)]
    pub intra_op_threads: Option<u32>,

    /// TensorFlow inter-op threads (0: TensorFlow's default).
    #[arg(
        long,
        env = "CLASSIFIER_INTER_OP_THREADS",
        default_value_t = 0,
        global = true
    )]
    pub inter_op_threads: u32,

    /// Session runs at once, each on a thread of its own (0: one per core). Two runs at once
    /// kept 2 cores busier than one run of twice the batch.
    #[arg(
        long,
        env = "CLASSIFIER_INFERENCE_THREADS",
        default_value_t = 0,
        global = true
    )]
    pub inference_threads: usize,

    /// A second TensorFlow session whose operations use every core, for a request that runs
    /// alone: with several inference threads each run gets one core, which costs a lone
    /// request about 1 ms. Off by default: the second session costs about 95 MiB of memory
    /// (peak RSS 345-372 -> 497-500 MiB).
    #[arg(
        long,
        env = "CLASSIFIER_LONE_REQUEST_SESSION",
        default_value_t = false,
        global = true
    )]
    pub lone_request_session: bool,

    /// Most images in session runs at once, split between the inference threads (requests that
    /// arrive together share one run).
    #[arg(long, env = "CLASSIFIER_MAX_BATCH", default_value_t = 8, global = true)]
    pub max_batch: usize,

    /// How long a lone request may wait for others to batch with (0: only batch what is queued).
    #[arg(
        long,
        env = "CLASSIFIER_BATCH_WAIT",
        default_value = "0s",
        global = true
    )]
    pub batch_wait: humantime::Duration,

    /// Classify requests in progress at once; beyond it requests get 503 `overloaded` at once.
    #[arg(
        long,
        env = "CLASSIFIER_MAX_CONCURRENT_REQUESTS",
        default_value_t = 256,
        global = true
    )]
    pub max_concurrent_requests: usize,

    /// How long a classification is served from the cache.
    #[arg(
        long,
        env = "CLASSIFIER_CACHE_TTL",
        default_value = "1h",
        global = true
    )]
    pub cache_ttl: humantime::Duration,

    /// Most cached results kept in memory (all unexpired ones stay on disk).
    #[arg(
        long,
        env = "CLASSIFIER_CACHE_CAPACITY",
        default_value_t = 100_000,
        global = true
    )]
    pub cache_capacity: usize,

    /// How often statistics and new cache entries are committed to disk: the most a `kill -9`
    /// can lose.
    #[arg(
        long,
        env = "CLASSIFIER_STATS_FLUSH_INTERVAL",
        default_value = "100ms",
        global = true
    )]
    pub stats_flush_interval: humantime::Duration,

    /// Who may read `/report`, `/report/history` and `/metrics`: `none` (anyone), or `token` (a
    /// bearer token of a user with the `ops` role, see `user add --role ops`).
    #[arg(
        long,
        env = "CLASSIFIER_OPS_AUTH",
        value_enum,
        default_value = "none",
        global = true
    )]
    pub ops_auth: OpsAuth,

    /// Lifetime of tokens issued by `POST /token`.
    #[arg(
        long,
        env = "CLASSIFIER_TOKEN_TTL",
        default_value = "1h",
        global = true
    )]
    pub token_ttl: humantime::Duration,

    /// The root private key tokens are signed with, from a file (default: generated on first start
    /// into `<data-dir>/root_key`, mode 0600).
    #[arg(long, env = "CLASSIFIER_ROOT_KEY_FILE", global = true)]
    pub root_key_file: Option<PathBuf>,

    /// The root private key itself (`ed25519-private/<hex>` or hex); wins over the file.
    #[arg(
        long,
        env = "CLASSIFIER_ROOT_KEY",
        hide_env_values = true,
        global = true
    )]
    pub root_key: Option<Secret>,

    /// Elasticsearch base URL; when set, every `GET /report` also becomes a document there.
    #[arg(long, env = "CLASSIFIER_ELASTICSEARCH_URL", global = true)]
    pub elasticsearch_url: Option<url::Url>,

    /// Index the report documents go to.
    #[arg(
        long,
        env = "CLASSIFIER_ELASTICSEARCH_INDEX",
        default_value = "classifier-reports",
        global = true
    )]
    pub elasticsearch_index: String,

    /// Basic-auth user for Elasticsearch (with the password below).
    #[arg(long, env = "CLASSIFIER_ELASTICSEARCH_USERNAME", global = true)]
    pub elasticsearch_username: Option<String>,

    /// Basic-auth password for Elasticsearch.
    #[arg(
        long,
        env = "CLASSIFIER_ELASTICSEARCH_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub elasticsearch_password: Option<Secret>,

    /// Elasticsearch API key (encoded form, `base64(id:key)`); wins over basic auth.
    #[arg(
        long,
        env = "CLASSIFIER_ELASTICSEARCH_API_KEY",
        hide_env_values = true,
        global = true
    )]
    pub elasticsearch_api_key: Option<Secret>,

    /// Most report documents waiting for Elasticsearch; beyond it the oldest are dropped.
    #[arg(
        long,
        env = "CLASSIFIER_ELASTICSEARCH_OUTBOX_MAX",
        default_value_t = 100_000,
        global = true
    )]
    pub elasticsearch_outbox_max: usize,

    /// This instance's name in report documents (default: the host name).
    #[arg(long, env = "CLASSIFIER_INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,

    /// After SIGTERM/SIGINT, how long requests in progress get to finish.
    #[arg(
        long,
        env = "CLASSIFIER_SHUTDOWN_TIMEOUT",
        default_value = "10s",
        global = true
    )]
    pub shutdown_timeout: humantime::Duration,

    /// Turn off the Prometheus recorder (`/metrics` then answers 404); for measuring its cost.
    #[arg(long, env = "CLASSIFIER_DISABLE_METRICS", global = true)]
    pub disable_metrics: bool,

    /// Log format.
    #[arg(
        long,
        env = "CLASSIFIER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_are_checked_and_their_password_never_printed() {
        let url: RedisUrl = "redis://app:s3cret@cache.internal:6380/2".parse().unwrap();
        assert_eq!(
            format!("{url:?}"),
            "redis://app:redacted@cache.internal:6380/2"
        );
        let tls: RedisUrl = "rediss://cache.internal/".parse().unwrap();
        assert_eq!(format!("{tls:?}"), "rediss://cache.internal/");
        for bad in [
            "cache.internal:6379",
            "http://cache.internal/",
            "redis://",
            "",
        ] {
            assert!(bad.parse::<RedisUrl>().is_err(), "{bad}");
        }
        let nodes: RedisUrl = "redis://a:7000, redis://:pw@b:7001".parse().unwrap();
        assert_eq!(
            format!("{nodes:?}"),
            "redis://a:7000,redis://:redacted@b:7001"
        );
        assert!(nodes.spec(false).is_err());
        assert!(matches!(nodes.spec(true), Ok(RedisSpec::Cluster(n)) if n.len() == 2));
        assert!(matches!(url.spec(false), Ok(RedisSpec::Single(_))));
    }

    fn only(list: &[&str]) -> CorsOrigins {
        CorsOrigins::Only(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn origins_parse_to_what_browsers_send() {
        let parsed: CorsOrigins = " https://Promo.Example.com , http://127.0.0.1:8081,"
            .parse()
            .unwrap();
        assert_eq!(
            parsed,
            only(&["https://promo.example.com", "http://127.0.0.1:8081"])
        );
        // Browsers leave the scheme's default port out of `Origin`.
        let parsed: CorsOrigins = "https://a.com:443,http://[::1]:80".parse().unwrap();
        assert_eq!(parsed, only(&["https://a.com", "http://[::1]"]));
        assert_eq!("*".parse::<CorsOrigins>(), Ok(CorsOrigins::Any));
        assert_eq!("".parse::<CorsOrigins>(), Ok(CorsOrigins::Off));
        assert_eq!(" , ".parse::<CorsOrigins>(), Ok(CorsOrigins::Off));
    }

    #[test]
    fn what_is_not_an_origin_is_refused_with_the_reason() {
        let cases = [
            ("https://a.com/", "nothing may follow"),
            ("https://a.com/app", "nothing may follow"),
            ("https://a.com?x", "nothing may follow"),
            ("https://u:p@a.com", "user name"),
            ("a.com", "must start with"),
            ("ftp://a.com", "http or https"),
            ("https://", "empty host"),
            ("https://a.com:99999", "port"),
            ("*,https://a.com", "alone"),
        ];
        for (text, why) in cases {
            let error = text.parse::<CorsOrigins>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
