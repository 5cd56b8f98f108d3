//! Downloads the image behind a user-supplied URL without letting that URL turn the
//! service into a proxy into its own network (SSRF) or into a memory/time sink.
//!
//! Every destination is judged by [`net_policy::is_public`]:
//! - host names by a resolver that drops non-public addresses, so the addresses we judge
//!   are exactly the ones we connect to (no DNS-rebinding window between check and use);
//! - IP literals, which never reach a resolver, before the request and on every redirect hop.
//!
//! Refusals raised inside reqwest (resolver, redirect policy) come back wrapped in
//! `reqwest::Error`; [`classify`] walks the `source()` chain to find our own [`Refusal`]
//! marker and turn it back into the right [`FetchError`].
mod net_policy;

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, ACCEPT_ENCODING};
use url::{Host, Url};

use crate::domain::ImageUrl;
use net_policy::is_public;

/// How the fetcher talks to the outside world.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Lifts the public-address rule (tests, deployments that classify intranet images).
    /// The scheme, size, redirect and timeout rules still apply.
    pub allow_private_networks: bool,
    /// Largest body accepted, in bytes.
    pub max_bytes: u64,
    /// Budget for the whole fetch: resolving, connecting, redirects, headers and body.
    pub timeout: Duration,
    /// Budget for establishing one connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Redirect hops followed before giving up.
    pub max_redirects: usize,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            allow_private_networks: false,
            max_bytes: 20 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            max_redirects: 5,
        }
    }
}

/// Why an image could not be fetched. Messages are shown to API users, so they name at
/// most the host and the upstream status, never resolved addresses or internal errors.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The destination (or a redirect hop) is not public, or a hop is not http(s).
    #[error("{0}")]
    NotAllowed(String),
    #[error("image is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The remote side failed: bad status, unreachable, TLS, too many redirects, broken body.
    #[error("{0}")]
    Upstream(String),
    #[error("timed out fetching the image")]
    Timeout,
}

/// The HTTP client could not be set up (e.g. the TLS backend failed to initialise).
#[derive(Debug, thiserror::Error)]
#[error("could not build the HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

/// Our own refusals, raised where reqwest calls back into us (resolver, redirect policy)
/// and recognised again by type on the way out, whatever reqwest wrapped them in.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("destination {0} is not a public address")]
    NotPublic(String),
    #[error("destination {0} does not resolve to a public address")]
    ResolvesToNonPublic(String),
    #[error("redirects to {0} URLs are not allowed, only http and https")]
    Scheme(String),
    #[error("too many redirects (more than {0})")]
    TooManyRedirects(usize),
    #[error("could not resolve {0}")]
    Unresolvable(String),
}

impl From<&Refusal> for FetchError {
    fn from(refusal: &Refusal) -> Self {
        match refusal {
            Refusal::NotPublic(_) | Refusal::ResolvesToNonPublic(_) | Refusal::Scheme(_) => {
                FetchError::NotAllowed(refusal.to_string())
            }
            Refusal::TooManyRedirects(_) | Refusal::Unresolvable(_) => {
                FetchError::Upstream(refusal.to_string())
            }
        }
    }
}

/// Downloads images under the rules of one [`FetchConfig`]. Cheap to clone (shares the
/// connection pool).
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    cfg: FetchConfig,
}

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> Result<Self, BuildError> {
        let (allow_private, max_redirects) = (cfg.allow_private_networks, cfg.max_redirects);
        let client = reqwest::Client::builder()
            .user_agent(concat!("classifier-api/", env!("CARGO_PKG_VERSION")))
            // Through a proxy the address we connect to is the proxy's, which would make the
            // resolver's filtering meaningless; HTTP(S)_PROXY in the environment must not apply.
            .no_proxy()
            // The Elasticsearch client turns on reqwest's gzip feature crate-wide; a compressed
            // body would be inflated past our byte limit's view of it, so ask for none.
            .no_gzip()
            .dns_resolver(Arc::new(PublicResolver { allow_private }))
            .redirect(redirect_policy(max_redirects, allow_private))
            // The user's URL is none of the redirect target's business.
            .referer(false)
            .connect_timeout(cfg.connect_timeout)
            // Covers the body too; `fetch` adds its own deadline on top in case a code path
            // inside reqwest does not honour it.
            .timeout(cfg.timeout)
            .build()?;
        Ok(Self { client, cfg })
    }

    /// Downloads the whole body, enforcing the destination, redirect, size and time rules.
    /// The Content-Type is not checked: the image decoder is the judge of what the bytes are.
    pub async fn fetch(&self, url: &ImageUrl) -> Result<Bytes, FetchError> {
        let url = url.as_url();
        // Hyper connects to IP literals without asking the resolver, so judge them here,
        // before any connection is attempted.
        check_destination(url, self.cfg.allow_private_networks)
            .map_err(|r| FetchError::from(&r))?;
        match tokio::time::timeout(self.cfg.timeout, self.download(url)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(FetchError::Timeout),
        }
    }

    async fn download(&self, url: &Url) -> Result<Bytes, FetchError> {
        let response = self
            .client
            .get(url.clone())
            .header(ACCEPT, "image/*, */*;q=0.5")
            // A compressed body would make the size limit apply to the compressed bytes
            // and we have no decoder enabled anyway.
            .header(ACCEPT_ENCODING, "identity")
            .send()
            .await
            .map_err(|e| classify(&e))?;

        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Upstream(format!("upstream answered {status}")));
        }

        let limit = self.cfg.max_bytes;
        let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        // Refuse before reading anything when the server admits the body is too big.
        let announced = response.content_length();
        if announced.is_some_and(|len| len > limit) {
            return Err(FetchError::TooLarge { limit });
        }

        // An announced length (already known to be within the limit) sizes the buffer once;
        // without one the buffer grows as chunks arrive, never past the limit.
        let initial = announced.map_or(0, |len| usize::try_from(len).unwrap_or(0));
        let mut body: Vec<u8> = Vec::with_capacity(initial);
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| classify(&e))?;
            let total = body.len().saturating_add(chunk.len());
            // Stop as soon as the limit is passed: the oversized chunk is never copied, and
            // dropping the stream closes the connection instead of draining the rest.
            if total > limit_usize {
                return Err(FetchError::TooLarge { limit });
            }
            reserve_within(&mut body, total, limit_usize);
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// Makes room for `needed` bytes, growing geometrically (amortised copies) but never
/// reserving more than `limit`, so an accepted body costs at most `limit` bytes of memory.
fn reserve_within(buf: &mut Vec<u8>, needed: usize, limit: usize) {
    if needed <= buf.capacity() {
        return;
    }
    let target = buf.capacity().saturating_mul(2).max(needed).min(limit);
    buf.reserve_exact(target - buf.len());
}

/// The rules every URL we are about to request must pass, apart from the resolver's.
fn check_destination(url: &Url, allow_private: bool) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme(url.scheme().to_owned()));
    }
    if allow_private {
        return Ok(());
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        // Names are judged by `PublicResolver` on the addresses actually connected to.
        Some(Host::Domain(_)) | None => return Ok(()),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(Refusal::NotPublic(
            url.host_str().unwrap_or_default().to_owned(),
        ))
    }
}

/// Hands every redirect hop to [`check_redirect`]; a refusal aborts the request and comes
/// back out of reqwest as the source of its error.
fn redirect_policy(max_redirects: usize, allow_private: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match check_redirect(
            attempt.url(),
            attempt.previous(),
            max_redirects,
            allow_private,
        ) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    })
}

/// The redirect policy: `previous` holds the original URL and every hop already followed,
/// so its length is the number of the redirect being asked for.
fn check_redirect(
    next: &Url,
    previous: &[Url],
    max_redirects: usize,
    allow_private: bool,
) -> Result<(), Refusal> {
    if previous.len() > max_redirects {
        return Err(Refusal::TooManyRedirects(max_redirects));
    }
    check_destination(next, allow_private)
}

/// Resolves with the system resolver, then hands hyper only the public addresses, so the
/// connection can only go to an address that passed the check.
struct PublicResolver {
    allow_private: bool,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_public(name.as_str(), allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

async fn resolve_public(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, Refusal> {
    // Port 0: reqwest substitutes the URL's port.
    let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            tracing::debug!(host, error = %err, "DNS lookup failed");
            return Err(Refusal::Unresolvable(host.to_owned()));
        }
    };
    let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
        .into_iter()
        .partition(|addr| allow_private || is_public(addr.ip()));
    if !refused.is_empty() {
        tracing::debug!(host, ?refused, "dropped non-public addresses");
    }
    if allowed.is_empty() {
        return Err(if refused.is_empty() {
            Refusal::Unresolvable(host.to_owned())
        } else {
            Refusal::ResolvesToNonPublic(host.to_owned())
        });
    }
    Ok(allowed)
}

/// Turns a reqwest error into what the API user should hear. Our own refusals win; then
/// reqwest's own classification. Details (addresses, OS and TLS errors) only go to the log.
fn classify(err: &reqwest::Error) -> FetchError {
    tracing::debug!(error = ?err, "image fetch failed");
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    let mut refused_connection = false;
    while let Some(e) = cause {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return refusal.into();
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            refused_connection |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = e.source();
    }
    if err.is_timeout() {
        return FetchError::Timeout;
    }
    let host = err
        .url()
        .and_then(Url::host_str)
        .unwrap_or("the image host");
    let message = if refused_connection {
        format!("{host} refused the connection")
    } else if err.is_connect() {
        // Also TLS handshake and certificate failures: they happen inside the connector.
        format!("could not connect to {host}")
    } else if err.is_body() || err.is_decode() {
        format!("the connection to {host} broke while reading the image")
    } else if err.is_redirect() {
        format!("{host} sent an unusable redirect")
    } else {
        format!("the request to {host} failed")
    };
    FetchError::Upstream(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use futures_util::stream;
    use tokio::net::TcpListener;
    use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
    use warp::http::{HeaderValue, StatusCode};
    use warp::reply::{Reply, Response};
    use warp::Filter;

    /// A tiny "image": the bytes only need to come back unchanged.
    const IMAGE: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00;";
    static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

    fn redirect_to(location: &str) -> Response {
        let mut res = StatusCode::FOUND.into_response();
        let value =
            HeaderValue::from_str(location).expect("test redirect target is a header value");
        res.headers_mut().insert(LOCATION, value);
        res
    }

    /// Starts the test server on 127.0.0.1:0 and returns its address.
    async fn start_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        let addr = listener.local_addr().expect("test server address");
        let port = addr.port();

        let ok = warp::path!("ok").map(|| IMAGE.into_response());
        let not_found = warp::path!("404").map(|| StatusCode::NOT_FOUND.into_response());
        let failing = warp::path!("500").map(|| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        // Announces a huge body, then sends nothing: only an up-front Content-Length check
        // can answer before the timeout.
        let big = warp::path!("big").map(|| {
            let mut res =
                warp::reply::stream(stream::pending::<Result<Bytes, io::Error>>()).into_response();
            res.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from_static("1000000000"));
            res
        });
        // Chunked, no Content-Length, never ends.
        let endless = warp::path!("endless").map(|| {
            let chunks = stream::repeat_with(|| Ok::<_, io::Error>(Bytes::from_static(&ZEROS)));
            warp::reply::stream(chunks).into_response()
        });
        // Chunked, exactly 3 * 1000 bytes, to probe the limit's off-by-one without Content-Length.
        let chunked = warp::path!("chunked").map(|| {
            let chunks = stream::iter(
                (0..3).map(|_| Ok::<_, io::Error>(Bytes::from_static(&ZEROS[..1000]))),
            );
            warp::reply::stream(chunks).into_response()
        });
        // Headers and a first chunk, then silence.
        let slow = warp::path!("slow").map(|| {
            let chunks = stream::once(futures_util::future::ready(Ok::<_, io::Error>(
                Bytes::from_static(b"GIF89a"),
            )))
            .chain(stream::pending());
            warp::reply::stream(chunks).into_response()
        });
        // A byte every 50 ms forever: defeats a per-read timeout, must hit the total one.
        let dribble = warp::path!("dribble").map(|| {
            let chunks = stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, io::Error>(Bytes::from_static(b"x")), ()))
            });
            warp::reply::stream(chunks).into_response()
        });
        // /redirect/N answers after exactly N redirects.
        let redirects = warp::path!("redirect" / u32).map(|n: u32| match n {
            0 => IMAGE.into_response(),
            1 => redirect_to("/ok"),
            n => redirect_to(&format!("/redirect/{}", n - 1)),
        });
        let to_loopback = warp::path!("to-loopback")
            .map(move || redirect_to(&format!("http://127.0.0.1:{port}/ok")));
        let to_ftp = warp::path!("to-ftp").map(|| redirect_to("ftp://example.com/cat.gif"));
        let wrong_type = warp::path!("wrongtype").map(|| {
            let mut res = IMAGE.into_response();
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            res
        });
        // Echoes the request headers that matter to the upstream.
        let headers = warp::path!("headers")
            .and(warp::header::optional::<String>("user-agent"))
            .and(warp::header::optional::<String>("accept-encoding"))
            .map(|ua: Option<String>, enc: Option<String>| {
                format!("{}|{}", ua.unwrap_or_default(), enc.unwrap_or_default()).into_response()
            });

        let routes = ok
            .or(not_found)
            .or(failing)
            .or(big)
            .or(endless)
            .or(chunked)
            .or(slow)
            .or(dribble)
            .or(redirects)
            .or(to_loopback)
            .or(to_ftp)
            .or(wrong_type)
            .or(headers);
        tokio::spawn(warp::serve(routes).incoming(listener).run());
        addr
    }

    /// A listener that only counts TCP connections, to prove none was attempted.
    async fn start_counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind counter");
        let addr = listener.local_addr().expect("counter address");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        });
        (addr, count)
    }

    fn config(allow_private: bool) -> FetchConfig {
        FetchConfig {
            allow_private_networks: allow_private,
            max_bytes: 64 * 1024,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_redirects: 5,
        }
    }

    fn fetcher(cfg: FetchConfig) -> Fetcher {
        Fetcher::new(cfg).expect("client builds")
    }

    fn image_url(raw: &str) -> ImageUrl {
        ImageUrl::parse(raw).unwrap_or_else(|e| panic!("test URL {raw}: {e}"))
    }

    fn local(addr: SocketAddr, path: &str) -> ImageUrl {
        image_url(&format!("http://{addr}{path}"))
    }

    fn assert_not_allowed(result: Result<Bytes, FetchError>) -> String {
        match result {
            Err(FetchError::NotAllowed(msg)) => msg,
            other => panic!("expected NotAllowed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn fetches_the_body() {
        let addr = start_server().await;
        let body = fetcher(config(true)).fetch(&local(addr, "/ok")).await;
        assert_eq!(body.as_deref(), Ok(IMAGE));
    }

    #[tokio::test]
    async fn content_type_is_not_judged() {
        let addr = start_server().await;
        let body = fetcher(config(true))
            .fetch(&local(addr, "/wrongtype"))
            .await;
        assert_eq!(body.as_deref(), Ok(IMAGE));
    }

    #[tokio::test]
    async fn sends_our_user_agent_and_asks_for_no_compression() {
        let addr = start_server().await;
        let body = fetcher(config(true))
            .fetch(&local(addr, "/headers"))
            .await
            .expect("headers route answers");
        let text = String::from_utf8_lossy(&body);
        let expected = concat!("classifier-api/", env!("CARGO_PKG_VERSION"), "|identity");
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn error_statuses_are_upstream_errors_naming_the_status() {
        let addr = start_server().await;
        let f = fetcher(config(true));
        assert_eq!(
            f.fetch(&local(addr, "/404")).await,
            Err(FetchError::Upstream(
                "upstream answered 404 Not Found".into()
            ))
        );
        assert_eq!(
            f.fetch(&local(addr, "/500")).await,
            Err(FetchError::Upstream(
                "upstream answered 500 Internal Server Error".into()
            ))
        );
    }

    #[tokio::test]
    async fn announced_oversize_body_is_refused_before_reading() {
        let addr = start_server().await;
        let started = Instant::now();
        let result = fetcher(config(true)).fetch(&local(addr, "/big")).await;
        assert_eq!(result, Err(FetchError::TooLarge { limit: 64 * 1024 }));
        // The body never arrives, so anything but the header check would wait for the timeout.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn endless_body_stops_at_the_limit() {
        let addr = start_server().await;
        let started = Instant::now();
        let result = fetcher(config(true)).fetch(&local(addr, "/endless")).await;
        assert_eq!(result, Err(FetchError::TooLarge { limit: 64 * 1024 }));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn limit_is_inclusive_with_and_without_content_length() {
        let addr = start_server().await;
        let len = IMAGE.len() as u64;
        let at_limit = fetcher(FetchConfig {
            max_bytes: len,
            ..config(true)
        });
        assert_eq!(
            at_limit.fetch(&local(addr, "/ok")).await.as_deref(),
            Ok(IMAGE)
        );
        let below = fetcher(FetchConfig {
            max_bytes: len - 1,
            ..config(true)
        });
        assert_eq!(
            below.fetch(&local(addr, "/ok")).await,
            Err(FetchError::TooLarge { limit: len - 1 })
        );

        let streamed = fetcher(FetchConfig {
            max_bytes: 3000,
            ..config(true)
        });
        let body = streamed.fetch(&local(addr, "/chunked")).await;
        assert_eq!(body.map(|b| b.len()), Ok(3000));
        let streamed_below = fetcher(FetchConfig {
            max_bytes: 2999,
            ..config(true)
        });
        assert_eq!(
            streamed_below.fetch(&local(addr, "/chunked")).await,
            Err(FetchError::TooLarge { limit: 2999 })
        );
    }

    #[tokio::test]
    async fn stalled_and_dribbling_bodies_time_out() {
        let addr = start_server().await;
        let f = fetcher(FetchConfig {
            timeout: Duration::from_millis(500),
            ..config(true)
        });
        for path in ["/slow", "/dribble"] {
            let started = Instant::now();
            assert_eq!(
                f.fetch(&local(addr, path)).await,
                Err(FetchError::Timeout),
                "{path}"
            );
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(2), "{path} took {elapsed:?}");
        }
    }

    #[tokio::test]
    async fn follows_up_to_max_redirects() {
        let addr = start_server().await;
        let f = fetcher(config(true));
        for n in 0..=5 {
            let path = format!("/redirect/{n}");
            assert_eq!(
                f.fetch(&local(addr, &path)).await.as_deref(),
                Ok(IMAGE),
                "{path}"
            );
        }
        assert_eq!(
            f.fetch(&local(addr, "/redirect/6")).await,
            Err(FetchError::Upstream(
                "too many redirects (more than 5)".into()
            ))
        );
    }

    #[tokio::test]
    async fn redirect_to_loopback_is_followed_only_when_private_is_allowed() {
        let addr = start_server().await;
        let body = fetcher(config(true))
            .fetch(&local(addr, "/to-loopback"))
            .await;
        assert_eq!(body.as_deref(), Ok(IMAGE));
        // With private networks refused, the first hop is already loopback; the per-hop
        // check itself is covered by `redirect_policy_judges_every_hop`.
    }

    #[tokio::test]
    async fn redirect_to_non_http_scheme_is_refused_even_when_private_is_allowed() {
        let addr = start_server().await;
        let msg = assert_not_allowed(fetcher(config(true)).fetch(&local(addr, "/to-ftp")).await);
        assert_eq!(
            msg,
            "redirects to ftp URLs are not allowed, only http and https"
        );
    }

    #[tokio::test]
    async fn non_public_literals_are_refused_without_connecting() {
        let (addr, connections) = start_counting_listener().await;
        let f = fetcher(config(false));
        let cases = [
            (format!("http://{addr}/ok"), "127.0.0.1"),
            ("http://2130706433/".to_owned(), "127.0.0.1"),
            ("http://[::ffff:127.0.0.1]/".to_owned(), "[::ffff:7f00:1]"),
            (
                "http://169.254.169.254/latest/meta-data/".to_owned(),
                "169.254.169.254",
            ),
            ("https://[::1]/".to_owned(), "[::1]"),
            ("http://10.0.0.1/".to_owned(), "10.0.0.1"),
        ];
        for (raw, host) in cases {
            let msg = assert_not_allowed(f.fetch(&image_url(&raw)).await);
            assert_eq!(
                msg,
                format!("destination {host} is not a public address"),
                "{raw}"
            );
        }
        tokio::task::yield_now().await;
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn non_public_literals_work_when_private_is_allowed() {
        let addr = start_server().await;
        let port = addr.port();
        let f = fetcher(config(true));
        for raw in [
            format!("http://127.0.0.1:{port}/ok"),
            format!("http://2130706433:{port}/ok"),
            format!("http://[::ffff:127.0.0.1]:{port}/ok"),
        ] {
            assert_eq!(
                f.fetch(&image_url(&raw)).await.as_deref(),
                Ok(IMAGE),
                "{raw}"
            );
        }
    }

    #[tokio::test]
    async fn names_resolving_to_non_public_addresses_are_refused() {
        let (addr, connections) = start_counting_listener().await;
        let port = addr.port();
        let f = fetcher(config(false));
        for raw in [
            format!("http://localhost:{port}/ok"),
            format!("https://localhost:{port}/ok"),
        ] {
            let msg = assert_not_allowed(f.fetch(&image_url(&raw)).await);
            assert_eq!(
                msg,
                "destination localhost does not resolve to a public address"
            );
        }
        tokio::task::yield_now().await;
        assert_eq!(connections.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_work_when_allowed() {
        let addr = start_server().await;
        let url = image_url(&format!("http://localhost:{}/ok", addr.port()));
        assert_eq!(
            fetcher(config(true)).fetch(&url).await.as_deref(),
            Ok(IMAGE)
        );
    }

    #[tokio::test]
    async fn resolver_drops_non_public_addresses() {
        let name: Name = "localhost".parse().expect("valid name");
        let refused = PublicResolver {
            allow_private: false,
        }
        .resolve(name)
        .await;
        let err = refused.err().expect("localhost has no public address");
        assert!(
            matches!(err.downcast_ref::<Refusal>(), Some(Refusal::ResolvesToNonPublic(h)) if h == "localhost"),
            "{err:?}"
        );

        let allowed = resolve_public("localhost", true)
            .await
            .expect("localhost resolves");
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
        assert!(!allowed.is_empty());
    }

    #[tokio::test]
    async fn closed_port_is_an_upstream_error() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("address").port()
        };
        let url = image_url(&format!("http://127.0.0.1:{port}/ok"));
        assert_eq!(
            fetcher(config(true)).fetch(&url).await,
            Err(FetchError::Upstream(
                "127.0.0.1 refused the connection".into()
            ))
        );
    }

    #[tokio::test]
    async fn unresolvable_name_is_an_upstream_error() {
        // `.invalid` never resolves (RFC 6761); the resolver answers at once offline too.
        let url = image_url("http://no-such-host.invalid/cat.gif");
        assert_eq!(
            fetcher(config(false)).fetch(&url).await,
            Err(FetchError::Upstream(
                "could not resolve no-such-host.invalid".into()
            ))
        );
    }

    #[test]
    fn redirect_policy_judges_every_hop() {
        let u = |s: &str| Url::parse(s).expect("test URL");
        let start = [u("https://images.example/cat")];
        let allowed = |next: &str, private: bool| check_redirect(&u(next), &start, 5, private);

        for next in [
            "http://127.0.0.1:8080/ok",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://192.168.1.1/",
            "http://2130706433/",
        ] {
            assert!(
                matches!(allowed(next, false), Err(Refusal::NotPublic(_))),
                "{next}"
            );
            assert!(allowed(next, true).is_ok(), "{next} with private allowed");
        }
        // Public literals pass; names are left to the resolver.
        for next in [
            "http://93.184.216.34/cat",
            "https://cdn.example/cat",
            "http://localhost/",
        ] {
            assert!(allowed(next, false).is_ok(), "{next}");
        }
        for next in [
            "ftp://example.com/cat",
            "file:///etc/passwd",
            "data:image/gif,GIF89a",
        ] {
            for private in [false, true] {
                assert!(
                    matches!(allowed(next, private), Err(Refusal::Scheme(_))),
                    "{next}"
                );
            }
        }

        // `previous` is the original URL plus the hops taken: the 5th redirect is allowed,
        // the 6th is not, whatever the private setting.
        let hops: Vec<Url> = (0..6)
            .map(|i| u(&format!("https://a.example/{i}")))
            .collect();
        let next = u("https://a.example/next");
        assert!(check_redirect(&next, &hops[..5], 5, false).is_ok());
        for private in [false, true] {
            assert!(matches!(
                check_redirect(&next, &hops, 5, private),
                Err(Refusal::TooManyRedirects(5))
            ));
        }
    }

    #[test]
    fn refusals_map_to_the_right_variant() {
        let cases = [
            (Refusal::NotPublic("10.0.0.1".into()), "NotAllowed"),
            (
                Refusal::ResolvesToNonPublic("intranet".into()),
                "NotAllowed",
            ),
            (Refusal::Scheme("ftp".into()), "NotAllowed"),
            (Refusal::TooManyRedirects(5), "Upstream"),
            (Refusal::Unresolvable("x.invalid".into()), "Upstream"),
        ];
        for (refusal, variant) in cases {
            let mapped = FetchError::from(&refusal);
            let got = match &mapped {
                FetchError::NotAllowed(_) => "NotAllowed",
                FetchError::Upstream(_) => "Upstream",
                _ => "other",
            };
            assert_eq!(got, variant, "{refusal:?}");
            assert_eq!(mapped.to_string(), refusal.to_string());
        }
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            FetchError::TooLarge { limit: 20_971_520 }.to_string(),
            "image is larger than 20971520 bytes"
        );
        assert_eq!(
            FetchError::Timeout.to_string(),
            "timed out fetching the image"
        );
        assert_eq!(
            FetchError::from(&Refusal::NotPublic("127.0.0.1".into())).to_string(),
            "destination 127.0.0.1 is not a public address"
        );
    }

    #[test]
    fn buffer_growth_never_reserves_past_the_limit() {
        let limit = 10_000;
        let mut buf = Vec::new();
        for _ in 0..10 {
            let needed = buf.len() + 1000;
            reserve_within(&mut buf, needed, limit);
            buf.extend_from_slice(&[0; 1000]);
            assert!(buf.capacity() <= limit, "capacity {}", buf.capacity());
        }
        assert_eq!(buf.len(), limit);
    }
}
