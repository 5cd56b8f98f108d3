//! `--ops-auth token`: `/report`, `/report/history` and `/metrics` need a bearer token of a user
//! with the `ops` role (401 without a usable token, 403 `forbidden` for a plain user's), while
//! everything else stays open; with the default `none` nothing changes.
use crate::helpers::{error_code, start_app, test_settings, FixtureServer, TestApp};
use crate::process::start_server_env;
use crate::secret::{add_user, add_user_with, attenuate, cli};
use biscuit_auth::PublicKey;
use std::path::Path;
use warp::http::StatusCode;

const OPS_ENDPOINTS: [&str; 3] = ["/report", "/report/history?minutes=5", "/metrics"];

fn add_ops_user(data_dir: &Path, name: &str, password: &str) {
    let stderr = add_user_with(data_dir, name, password, &["--role", "ops"]);
    assert!(stderr.contains("with the ops role"), "{stderr}");
}

/// A fresh data dir with `alice` (a plain user) and `scraper` (an ops user), made by the CLI.
fn data_dir_with_users() -> tempfile::TempDir {
    let data_dir = tempfile::tempdir().unwrap();
    add_user(data_dir.path(), "alice", "alice-pass");
    add_ops_user(data_dir.path(), "scraper", "scraper-pass");
    data_dir
}

async fn locked_app() -> TestApp {
    let data_dir = data_dir_with_users();
    let settings = test_settings(data_dir.path(), &["--ops-auth", "token"]);
    start_app(settings, FixtureServer::start().await, data_dir).await
}

impl TestApp {
    async fn token_of(&self, username: &str, password: &str) -> String {
        let response = self
            .client
            .post(self.url("/token"))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login of {username}");
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// GET `path` with `token`: asserts the status and, for an error, the code and that a 401
    /// challenges for a bearer token (and a 403 does not: a token would not help).
    async fn assert_answer(&self, path: &str, token: Option<&str>, want: (u16, Option<&str>)) {
        let response = self.send_as(reqwest::Method::GET, path, token).await;
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").cloned();
        let text = response.text().await.unwrap();
        assert_eq!(status, want.0, "{path} with {token:?}: {text}");
        match want.1 {
            None => assert!(challenge.is_none(), "{path}"),
            Some(code) => {
                let body: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error_code(&body), code, "{path} with {token:?}");
                let bearer = challenge.as_ref().and_then(|v| v.to_str().ok());
                if status == 401 {
                    assert_eq!(bearer, Some("Bearer"), "{path}");
                } else {
                    assert_eq!(bearer, None, "{path}");
                }
            }
        }
    }
}

/// `key public`, before the server holds the data dir.
fn public_key(data_dir: &Path) -> PublicKey {
    let out = cli(data_dir, &["key", "public"], "", &[]);
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn each_operator_endpoint_answers_401_403_or_200_by_token() {
    let app = locked_app().await;
    let plain = app.token_of("alice", "alice-pass").await;
    let ops = app.token_of("scraper", "scraper-pass").await;
    for path in OPS_ENDPOINTS {
        app.assert_answer(path, None, (401, Some("missing_token")))
            .await;
        app.assert_answer(path, Some("not-a-token"), (401, Some("invalid_token")))
            .await;
        app.assert_answer(path, Some(&plain), (403, Some("forbidden")))
            .await;
        app.assert_answer(path, Some(&ops), (200, None)).await;
    }
    // The message says what is missing.
    let response = app
        .send_as(reqwest::Method::GET, "/report", Some(&plain))
        .await;
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`ops`"),
        "{body}"
    );
}

#[tokio::test]
async fn head_is_locked_the_same_way() {
    let app = locked_app().await;
    let plain = app.token_of("alice", "alice-pass").await;
    let ops = app.token_of("scraper", "scraper-pass").await;
    for path in OPS_ENDPOINTS {
        for (token, want) in [
            (None, 401),
            (Some(plain.as_str()), 403),
            (Some(ops.as_str()), 200),
        ] {
            let response = app.send_as(reqwest::Method::HEAD, path, token).await;
            assert_eq!(response.status().as_u16(), want, "HEAD {path} {token:?}");
            if want == 401 {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
            }
            assert!(response.bytes().await.unwrap().is_empty(), "HEAD {path}");
        }
    }
}

#[tokio::test]
async fn the_token_is_checked_before_the_query() {
    let app = locked_app().await;
    let ops = app.token_of("scraper", "scraper-pass").await;
    let path = "/report/history?minutes=0";
    app.assert_answer(path, None, (401, Some("missing_token")))
        .await;
    app.assert_answer(path, Some(&ops), (400, Some("invalid_request")))
        .await;
}

#[tokio::test]
async fn prometheus_scrapes_metrics_with_a_bearer_token() {
    let app = locked_app().await;
    let ops = app.token_of("scraper", "scraper-pass").await;
    // A scrape without the token first: counted like any other answer.
    app.assert_answer("/metrics", None, (401, Some("missing_token")))
        .await;
    // What Prometheus sends with `authorization: {type: Bearer, credentials_file: ...}`.
    let response = app
        .client
        .get(app.url("/metrics"))
        .header("authorization", format!("Bearer {ops}"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
        )
        .header("user-agent", "Prometheus/3.0.0")
        .header("x-prometheus-scrape-timeout-seconds", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = response.text().await.unwrap();
    for needle in [
        "# TYPE classifier_http_requests_total counter",
        r#"classifier_http_requests_total{route="/metrics",status="401"}"#,
        "classifier_model_info",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains(&ops), "no token in the metrics");
}

#[tokio::test]
async fn everything_else_stays_open() {
    let app = locked_app().await;
    for path in ["/healthz", "/readyz", "/openapi.yaml", "/model", "/"] {
        let response = app.send_as(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let (status, body) = app.classify_fixture("/images/cat.bmp").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // /secret is for any user, as before.
    let plain = app.token_of("alice", "alice-pass").await;
    let response = app
        .send_as(reqwest::Method::GET, "/secret", Some(&plain))
        .await;
    assert_eq!(response.text().await.unwrap(), "Hi alice");
}

#[tokio::test]
async fn holders_cannot_attenuate_a_plain_token_into_an_ops_one() {
    let data_dir = data_dir_with_users();
    let public = public_key(data_dir.path());
    let settings = test_settings(data_dir.path(), &["--ops-auth", "token"]);
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let plain = app.token_of("alice", "alice-pass").await;
    let claimed = attenuate(&plain, public, r#"role("ops"); check if role("ops");"#);
    app.assert_answer("/report", Some(&claimed), (403, Some("forbidden")))
        .await;
    // An ops token attenuated to read only keeps its role.
    let ops = app.token_of("scraper", "scraper-pass").await;
    let read_only = attenuate(&ops, public, r#"check if operation("read");"#);
    app.assert_answer("/metrics", Some(&read_only), (200, None))
        .await;
}

#[tokio::test]
async fn revoked_tokens_and_removed_users_are_refused() {
    let app = locked_app().await;
    let revoked = app.token_of("scraper", "scraper-pass").await;
    let kept = app.token_of("scraper", "scraper-pass").await;
    let data_path = app.data_dir.path().to_owned();
    let settings = || test_settings(&data_path, &["--ops-auth", "token"]);

    let (fixtures, data_dir) = app.stop().await;
    let out = cli(&data_path, &["token", "revoke", &revoked], "", &[]);
    assert!(out.status.success());
    let app = start_app(settings(), fixtures, data_dir).await;
    app.assert_answer("/report", Some(&revoked), (401, Some("invalid_token")))
        .await;
    app.assert_answer("/report", Some(&kept), (200, None)).await;

    // Removed, then added again as a plain user: the old ops token is refused, and the new
    // plain one is not enough.
    let (fixtures, data_dir) = app.stop().await;
    let out = cli(&data_path, &["user", "remove", "scraper"], "", &[]);
    assert!(out.status.success());
    add_user(&data_path, "scraper", "scraper-pass");
    let out = cli(&data_path, &["user", "list"], "", &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "alice\nscraper\n");
    let app = start_app(settings(), fixtures, data_dir).await;
    app.assert_answer("/metrics", Some(&kept), (401, Some("invalid_token")))
        .await;
    let now_plain = app.token_of("scraper", "scraper-pass").await;
    app.assert_answer("/metrics", Some(&now_plain), (403, Some("forbidden")))
        .await;
}

#[tokio::test]
async fn user_list_shows_roles() {
    let data_dir = data_dir_with_users();
    let out = cli(data_dir.path(), &["user", "list"], "", &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice\nscraper\tops\n"
    );
    let out = cli(
        data_dir.path(),
        &["user", "add", "bob", "--password-stdin", "--role", "admin"],
        "pw",
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown role") && stderr.contains("ops"),
        "{stderr}"
    );
}

#[tokio::test]
async fn none_is_the_default_and_ignores_tokens() {
    let data_dir = data_dir_with_users();
    let settings = test_settings(data_dir.path(), &[]);
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    for path in OPS_ENDPOINTS {
        for token in [None, Some("not-a-token")] {
            app.assert_answer(path, token, (200, None)).await;
        }
    }
}

#[tokio::test]
async fn the_environment_variable_locks_them_too() {
    let data_dir = data_dir_with_users();
    let server = start_server_env(data_dir.path(), &[], &[("CLASSIFIER_OPS_AUTH", "token")])
        .expect("server starts");
    assert!(
        server
            .startup_lines
            .iter()
            .any(|l| l.contains("ops_auth: Token")),
        "the configuration logged names the setting: {:?}",
        server.startup_lines
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in OPS_ENDPOINTS {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let healthz = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
}
