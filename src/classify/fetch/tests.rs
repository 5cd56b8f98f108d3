//! The fetcher against a local warp server whose routes misbehave on purpose, and the
//! policy, resolver and error mapping on their own.
use super::*;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::{stream, Stream};
use tokio::net::TcpListener;
use warp::http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, USER_AGENT,
};
use warp::http::StatusCode;
use warp::path::FullPath;
use warp::reply::{Reply, Response};
use warp::Filter;

/// A tiny "image": the bytes only need to come back unchanged.
const IMAGE: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00;";
static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

fn redirect_to(location: &str) -> Response {
    with_header(StatusCode::FOUND.into_response(), LOCATION, location)
}

fn with_header(mut res: Response, name: HeaderName, value: &str) -> Response {
    let value = HeaderValue::from_str(value).expect("test header value");
    res.headers_mut().insert(name, value);
    res
}

fn streamed(
    chunks: impl Stream<Item = Result<Bytes, io::Error>> + Send + Sync + 'static,
) -> Response {
    warp::reply::stream(chunks).into_response()
}

/// The test server's answer to `path`; `port` is its own, for an absolute redirect back.
fn route(path: &str, port: u16, headers: &HeaderMap) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match path {
        "/ok" => IMAGE.into_response(),
        "/404" => StatusCode::NOT_FOUND.into_response(),
        "/500" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        // Announces a huge body, then sends nothing: only an up-front Content-Length check
        // can answer before the timeout.
        "/big" => with_header(streamed(stream::pending()), CONTENT_LENGTH, "1000000000"),
        // Chunked, no Content-Length, never ends.
        "/endless" => streamed(stream::repeat_with(|| Ok(Bytes::from_static(&ZEROS)))),
        // Chunked, exactly 3 * 1000 bytes, to probe the limit's off-by-one without
        // Content-Length.
        "/chunked" => streamed(stream::iter(
            (0..3).map(|_| Ok(Bytes::from_static(&ZEROS[..1000]))),
        )),
        // Headers and a first chunk, then silence.
        "/slow" => streamed(
            stream::once(async { Ok(Bytes::from_static(b"GIF89a")) }).chain(stream::pending()),
        ),
        // A byte every 50 ms forever: defeats a per-read timeout, must hit the total one.
        "/dribble" => streamed(stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Ok(Bytes::from_static(b"x")), ()))
        })),
        "/to-loopback" => redirect_to(&format!("http://127.0.0.1:{port}/ok")),
        "/to-ftp" => redirect_to("ftp://example.com/cat.gif"),
        "/wrongtype" => with_header(IMAGE.into_response(), CONTENT_TYPE, "text/html"),
        // Echoes the request headers that matter to the upstream.
        "/headers" => format!(
            "{}|{}",
            header(USER_AGENT).unwrap_or_default(),
            header(ACCEPT_ENCODING).unwrap_or_default()
        )
        .into_response(),
        // /redirect/N answers after exactly N redirects.
        _ => match path.strip_prefix("/redirect/").map(str::parse::<u32>) {
            Some(Ok(0)) => IMAGE.into_response(),
            Some(Ok(1)) => redirect_to("/ok"),
            Some(Ok(n)) => redirect_to(&format!("/redirect/{}", n - 1)),
            _ => StatusCode::NOT_FOUND.into_response(),
        },
    }
}

/// Starts the test server on 127.0.0.1:0 and returns its address.
async fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test server");
    let addr = listener.local_addr().expect("test server address");
    let routes = warp::path::full()
        .and(warp::header::headers_cloned())
        .map(move |path: FullPath, headers: HeaderMap| route(path.as_str(), addr.port(), &headers));
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

    // With private networks refused, `fetch` turns the loopback test server down before
    // the first request. A client with only the fetcher's redirect policy reaches it, and
    // must be refused at the redirect, with the error `fetch` would report.
    let policy_only = reqwest::Client::builder()
        .no_proxy()
        .redirect(redirect_policy(5, false))
        .build()
        .expect("client builds");
    let err = policy_only
        .get(format!("http://{addr}/to-loopback"))
        .send()
        .await
        .expect_err("the redirect to loopback is refused");
    assert_eq!(
        classify(&err),
        FetchError::NotAllowed("destination 127.0.0.1 is not a public address".into())
    );
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
