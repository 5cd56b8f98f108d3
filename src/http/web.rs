//! GET / and GET /web/<file>: the page for people (demo, QA, operators), embedded from `web/` at
//! build time. Plain HTML, CSS and JS; no CDN, nothing fetched at run time but this service's own
//! JSON endpoints (the classified image itself is loaded by the browser from the URL given, or
//! shown from the file the user chose).
use rust_embed::RustEmbed;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(RustEmbed)]
#[folder = "web/"]
struct Page;

/// Only our own script, styles and JSON; images from anywhere (that is what the form shows), and
/// `blob:` for the preview of a file the user picked, dropped or pasted (an object URL).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src http: https: data: blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

pub fn route() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let index = warp::path::end().map(|| "index.html".to_owned());
    let file = warp::path!("web" / String);
    index
        .or(file)
        .unify()
        .and(super::get_or_head())
        .and_then(|name: String| async move { serve(&name).ok_or_else(warp::reject::not_found) })
}

fn serve(name: &str) -> Option<Response> {
    let file = Page::get(name)?;
    let mut response =
        warp::reply::with_status(file.data.into_owned(), StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    // Small files, and a new binary may bring new ones: always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Image hosts need not learn who looked at their images from where.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(response)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types_and_policy() {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/web/app.js", "text/javascript; charset=utf-8"),
            ("/web/style.css", "text/css; charset=utf-8"),
        ] {
            let response = warp::test::request().path(path).reply(&route()).await;
            assert_eq!(response.status(), 200, "{path}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(!response.body().is_empty(), "{path}");
        }
    }

    #[tokio::test]
    async fn the_page_has_its_form_and_loads_nothing_from_elsewhere() {
        let response = warp::test::request().path("/").reply(&route()).await;
        let html = std::str::from_utf8(response.body()).unwrap();
        assert!(html.contains("<form"), "{html}");
        assert!(html.contains("type=\"file\""), "the upload's file input");
        assert!(html.contains("/web/app.js"));
        assert!(html.contains("/web/style.css"));
        for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(!html.contains(external), "{external}");
        }
    }

    #[tokio::test]
    async fn unknown_files_and_other_methods_are_not_served() {
        for path in [
            "/web/nope.js",
            "/web/",
            "/web/../Cargo.toml",
            "/index.html/x",
        ] {
            let rejected = warp::test::request().path(path).filter(&route()).await;
            assert!(rejected.is_err(), "{path}");
        }
        let post = warp::test::request()
            .method("POST")
            .path("/")
            .filter(&route())
            .await;
        assert!(post.is_err());
    }
}
