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

    /// The largest body accepted, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.cfg.max_bytes
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
mod tests;
