//! POST /token and GET /secret over HTTP, with users made by the real CLI.
use crate::helpers::{
    error_code, start_app, start_app_with_clock, test_settings, FixtureServer, TestApp,
};
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair, PublicKey};
use classifier_api::clock::ManualClock;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use warp::http::StatusCode;

/// Runs `classifier-api ARGS --data-dir DIR` with `stdin` piped in.
pub(crate) fn cli(data_dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_classifier-api"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub(crate) fn add_user(data_dir: &Path, name: &str, password: &str) {
    add_user_with(data_dir, name, password, &[]);
}

/// `user add NAME --password-stdin EXTRA...`, which must succeed; what it printed on stderr.
pub(crate) fn add_user_with(data_dir: &Path, name: &str, password: &str, extra: &[&str]) -> String {
    let mut args = vec!["user", "add", name, "--password-stdin"];
    args.extend_from_slice(extra);
    let out = cli(data_dir, &args, password, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

async fn app_with_alice(clock: Option<ManualClock>) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    add_user(data_dir.path(), "alice", "s3cret-pass");
    let settings = test_settings(data_dir.path(), &[]);
    let fixtures = FixtureServer::start().await;
    match clock {
        Some(clock) => start_app_with_clock(settings, fixtures, data_dir, Arc::new(clock)).await,
        None => start_app(settings, fixtures, data_dir).await,
    }
}

impl TestApp {
    pub(crate) async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/token"))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let response = self.login("alice", "s3cret-pass").await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
        body["token"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn secret(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(self.url("/secret"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap()
    }

    /// Asserts a 401 with `WWW-Authenticate: Bearer` and the given code.
    async fn assert_refused(&self, authorization: Option<&str>, code: &str) {
        let response = self.secret(authorization).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED.as_u16(),
            "{authorization:?}"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), code, "{authorization:?}");
    }

    fn public_key(&self) -> PublicKey {
        let out = cli(self.data_dir.path(), &["key", "public"], "", &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

pub(crate) fn attenuate(token: &str, public: PublicKey, code: &str) -> String {
    let block = BlockBuilder::new().code(code).unwrap();
    Biscuit::from_base64(token, public)
        .unwrap()
        .append(block)
        .unwrap()
        .to_base64()
        .unwrap()
}

#[tokio::test]
async fn a_user_logs_in_and_is_greeted() {
    let app = app_with_alice(None).await;
    let token = app.token().await;
    let response = app.secret(Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(response.text().await.unwrap(), "Hi alice");
}

#[tokio::test]
async fn every_bad_token_is_401() {
    let app = app_with_alice(None).await;
    let token = app.token().await;
    app.assert_refused(None, "missing_token").await;
    app.assert_refused(Some(""), "missing_token").await;
    app.assert_refused(Some(&format!("Basic {token}")), "invalid_token")
        .await;
    app.assert_refused(Some("Bearer not-a-token"), "invalid_token")
        .await;
    // Tampered: one character of the signature part changed.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    app.assert_refused(
        Some(&format!("Bearer {}", String::from_utf8(tampered).unwrap())),
        "invalid_token",
    )
    .await;
    // Forged: the right facts, signed by another key.
    let forged = biscuit_auth::macros::biscuit!(r#"user("alice"); generation(0);"#)
        .build(&KeyPair::new())
        .unwrap()
        .to_base64()
        .unwrap();
    app.assert_refused(Some(&format!("Bearer {forged}")), "invalid_token")
        .await;
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same_and_are_throttled() {
    let app = app_with_alice(None).await;
    let wrong = app.login("alice", "nope").await;
    let unknown = app.login("mallory", "nope").await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let (wrong, unknown): (serde_json::Value, serde_json::Value) =
        (wrong.json().await.unwrap(), unknown.json().await.unwrap());
    assert_eq!(wrong, unknown);
    assert_eq!(error_code(&wrong), "invalid_credentials");
    for _ in 0..4 {
        assert_eq!(app.login("alice", "nope").await.status(), 401);
    }
    let throttled = app.login("alice", "s3cret-pass").await;
    assert_eq!(throttled.status(), 429);
    assert!(
        throttled.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert_eq!(error_code(&body), "too_many_attempts");
    let bad_body = app
        .client
        .post(app.url("/token"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_body.status(), 400);
}

#[tokio::test]
async fn tokens_expire_on_the_clock() {
    let clock = ManualClock::new(SystemTime::now());
    let app = app_with_alice(Some(clock.clone())).await;
    let bearer = format!("Bearer {}", app.token().await);
    clock.advance(Duration::from_secs(3590));
    assert_eq!(app.secret(Some(&bearer)).await.status(), 200);
    clock.advance(Duration::from_secs(20));
    app.assert_refused(Some(&bearer), "invalid_token").await;
}

#[tokio::test]
async fn revoked_and_removed_users_tokens_fail_and_tokens_survive_restarts() {
    let app = app_with_alice(None).await;
    let first = app.token().await;
    let second = app.token().await;
    let data_path = app.data_dir.path().to_owned();

    // The CLI cannot open the database while the server holds it, and says why.
    let out = cli(
        &data_path,
        &["user", "add", "bob", "--password-stdin"],
        "pw-bob-123",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (fixtures, data_dir) = app.stop().await;
    let out = cli(&data_path, &["token", "revoke", &first], "", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app = start_app(test_settings(&data_path, &[]), fixtures, data_dir).await;
    app.assert_refused(Some(&format!("Bearer {first}")), "invalid_token")
        .await;
    // Issued before the restart, signed by the persisted root key: still good.
    assert_eq!(
        app.secret(Some(&format!("Bearer {second}"))).await.status(),
        200
    );

    let (fixtures, data_dir) = app.stop().await;
    let out = cli(&data_path, &["user", "remove", "alice"], "", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&data_path, &["user", "list"], "", &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let app = start_app(test_settings(&data_path, &[]), fixtures, data_dir).await;
    app.assert_refused(Some(&format!("Bearer {second}")), "invalid_token")
        .await;
}

#[tokio::test]
async fn attenuated_tokens_work_while_their_checks_pass() {
    let app = app_with_alice(None).await;
    let token = app.token().await;
    let public = app.public_key();
    let read_only = attenuate(&token, public, r#"check if operation("read");"#);
    assert_eq!(
        app.secret(Some(&format!("Bearer {read_only}")))
            .await
            .status(),
        200
    );
    let past = attenuate(
        &token,
        public,
        "check if time($t), $t < 2020-01-01T00:00:00Z;",
    );
    app.assert_refused(Some(&format!("Bearer {past}")), "invalid_token")
        .await;
}

#[tokio::test]
async fn root_key_from_the_environment_signs_the_tokens() {
    let key = KeyPair::new();
    let private = key.private().to_prefixed_string();
    let data_dir = tempfile::tempdir().unwrap();
    add_user(data_dir.path(), "alice", "s3cret-pass");
    let out = cli(
        data_dir.path(),
        &["key", "public"],
        "",
        &[("CLASSIFIER_ROOT_KEY", &private)],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        key.public().to_string()
    );
    assert!(
        !data_dir.path().join("root_key").exists(),
        "no key generated when one is given"
    );

    let mut settings = test_settings(data_dir.path(), &[]);
    settings.root_key = Some(private.parse().unwrap());
    let app = start_app(settings, FixtureServer::start().await, data_dir).await;
    let token = app.token().await;
    assert!(
        Biscuit::from_base64(&token, key.public()).is_ok(),
        "verifiable with the given key"
    );
}
