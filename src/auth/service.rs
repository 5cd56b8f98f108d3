//! [`Auth`]: the async service the HTTP layer calls. All CPU-heavy work (Argon2, token crypto)
//! runs in `spawn_blocking`; the store is redb (on the blocking pool too) or Redis.
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::{KeyPair, PublicKey};

use super::store::{AuthStore, LoginThrottle};
use super::tokens::{self, IssuedToken};
use super::{blocking, users, AuthError, Role};
use crate::clock::Clock;

/// Who a valid token is for: what [`Auth::verify`] proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    /// The token's role (an authority fact, as the user had it when the token was issued);
    /// `None` for a plain user.
    pub role: Option<Role>,
}

impl Identity {
    pub fn has_role(&self, role: Role) -> bool {
        self.role == Some(role)
    }
}

/// Cheap to clone (one `Arc`); share one instance across all handlers so they share the login
/// throttle.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    store: AuthStore,
    root: KeyPair,
    public: PublicKey,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    throttle: LoginThrottle,
}

/// Hand-written so the private key can never end up in a log via `{:?}`.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("public_key", &self.inner.public.to_string())
            .field("token_ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `token_ttl` is applied at whole-second resolution (minimum 1 s). Computes the dummy
    /// password hash once up front (one Argon2 run, tens of ms), see `users::verify_password`.
    pub fn new(
        store: AuthStore,
        root: KeyPair,
        token_ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        users::warm_up_dummy_hash();
        let public = root.public();
        Self {
            inner: Arc::new(Inner {
                throttle: store.throttle(),
                store,
                root,
                public,
                ttl: token_ttl,
                clock,
            }),
        }
    }

    /// Checks the password and issues a token. Unknown users and wrong passwords give the same
    /// error after the same amount of work. More than five failures for one username within a
    /// minute gives `TooManyAttempts` without checking the password.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssuedToken, AuthError> {
        let password = password.to_owned();
        if users::validate_username(username).is_err() {
            // Cannot be a real user. Still spend the hash so malformed names are not a fast
            // path; not throttled because there is no account to protect and such names are
            // unbounded garbage we do not want as keys.
            blocking(move || {
                users::verify_password(&password, None);
                Ok(())
            })
            .await?;
            return Err(AuthError::InvalidCredentials);
        }

        let now = self.inner.clock.now();
        let attempt = self
            .inner
            .throttle
            .begin(username, now)
            .await?
            .map_err(|retry_after| {
                tracing::debug!(user = username, "login throttled");
                AuthError::TooManyAttempts { retry_after }
            })?;
        let result = self.check_password(username, password, now).await;
        match &result {
            Ok(_) => {
                self.inner.throttle.succeeded(username).await;
                tracing::info!(user = username, "login succeeded");
            }
            Err(AuthError::InvalidCredentials) => {
                tracing::debug!(user = username, "login failed");
            }
            // Storage trouble is not the user's fault; do not count it towards a lockout.
            Err(_) => self.inner.throttle.forget(username, attempt).await,
        }
        result
    }

    /// A token for `name` if `password` is theirs. Always exactly one Argon2 verification:
    /// against the user's hash, or against the dummy when the user does not exist.
    async fn check_password(
        &self,
        name: &str,
        password: String,
        now: std::time::SystemTime,
    ) -> Result<IssuedToken, AuthError> {
        if password.len() > users::MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidCredentials);
        }
        let record = self.inner.store.lookup(name).await?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        blocking(move || {
            let ok = users::verify_password(&password, record.as_ref().map(|r| r.phc.as_str()));
            match record {
                Some(r) if ok => {
                    tokens::issue(&inner.root, &name, r.generation, r.role, now, inner.ttl)
                }
                _ => Err(AuthError::InvalidCredentials),
            }
        })
        .await
    }

    /// Authenticates an `Authorization` header value and returns who the token is for.
    ///
    /// `None` or a blank header → `MissingToken`. Everything else that is wrong → `InvalidToken(reason)`: not
    /// `Bearer <token>` (scheme case-insensitive), malformed, forged, tampered, expired (by the
    /// injected clock), revoked, user removed, user removed and re-added since issue
    /// (generation mismatch), or a role other than the user's (roles change only with the
    /// generation today; this keeps it so should they ever change in place).
    pub async fn verify(&self, authorization_header: Option<&str>) -> Result<Identity, AuthError> {
        // A blank header is what some clients send when they have no token.
        let header = authorization_header
            .filter(|h| !h.trim().is_empty())
            .ok_or(AuthError::MissingToken)?;
        let token = bearer_token(header)?.to_owned();
        let now = self.inner.clock.now();
        let inner = Arc::clone(&self.inner);
        let claims = blocking(move || tokens::check(&token, &inner.public, now)).await?;
        let state = self
            .inner
            .store
            .token_state(&claims.username, claims.revocation_ids)
            .await?;
        if state.revoked {
            return Err(AuthError::InvalidToken("token revoked".into()));
        }
        match state.user {
            None => Err(AuthError::InvalidToken(format!(
                "user {:?} no longer exists",
                claims.username
            ))),
            Some(r) if r.generation != claims.generation => Err(AuthError::InvalidToken(format!(
                "user {:?} was re-created (token generation {}, current {})",
                claims.username, claims.generation, r.generation
            ))),
            Some(r) if r.role != claims.role => Err(AuthError::InvalidToken(format!(
                "user {:?} has role {:?}, the token {:?}",
                claims.username, r.role, claims.role
            ))),
            Some(_) => Ok(Identity {
                username: claims.username,
                role: claims.role,
            }),
        }
    }

    /// As [`verify`](Self::verify), and the token's user must have `role`: a valid token
    /// without it is `MissingRole`.
    pub async fn require(
        &self,
        authorization_header: Option<&str>,
        role: Role,
    ) -> Result<Identity, AuthError> {
        let identity = self.verify(authorization_header).await?;
        if identity.has_role(role) {
            Ok(identity)
        } else {
            tracing::debug!(user = identity.username, %role, "token lacks the role");
            Err(AuthError::MissingRole(role))
        }
    }
}

/// Extracts `<token>` from `Bearer <token>`. The scheme is case-insensitive (RFC 9110 §11.1);
/// any amount of whitespace may separate it from the token.
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::InvalidToken(
            "authorization scheme is not Bearer".into(),
        ));
    }
    let token = rest.trim();
    if token.is_empty() || token.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(AuthError::InvalidToken(
            "bearer credentials must be one token".into(),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use biscuit_auth::builder::Term;
    use biscuit_auth::macros::block;
    use biscuit_auth::Biscuit;

    use super::*;
    use crate::auth::test_util::temp_db;
    use crate::clock::ManualClock;

    const TTL: Duration = Duration::from_secs(3600);

    struct Fixture {
        _dir: tempfile::TempDir,
        store: AuthStore,
        clock: ManualClock,
        public: PublicKey,
        auth: Auth,
    }

    async fn fixture() -> Fixture {
        let (dir, local) = temp_db();
        let store = AuthStore::Redb(local);
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let root = KeyPair::new();
        let public = root.public();
        let auth = Auth::new(store.clone(), root, TTL, Arc::new(clock.clone()));
        store
            .add_user("alice", "correct horse", None)
            .await
            .expect("add alice");
        Fixture {
            _dir: dir,
            store,
            clock,
            public,
            auth,
        }
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    async fn login(f: &Fixture, name: &str, password: &str) -> String {
        f.auth.login(name, password).await.expect("login").token
    }

    async fn login_alice(f: &Fixture) -> String {
        login(f, "alice", "correct horse").await
    }

    /// An `ops` user, logged in: its token.
    async fn add_ops_bot(f: &Fixture) -> String {
        f.store
            .add_user("ops-bot", "pw-ops", Some(Role::Ops))
            .await
            .expect("add ops");
        login(f, "ops-bot", "pw-ops").await
    }

    fn assert_invalid(r: Result<Identity, AuthError>, why: &str) -> String {
        match r {
            Err(AuthError::InvalidToken(reason)) => reason,
            other => panic!("{why}: expected InvalidToken, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn happy_path() {
        let f = fixture().await;
        let issued = f.auth.login("alice", "correct horse").await.expect("login");
        assert_eq!(issued.expires_at, f.clock.now() + TTL);
        let user = f.auth.verify(Some(&bearer(&issued.token))).await;
        assert_eq!(user.expect("verify").username, "alice");
        // Case-insensitive scheme, extra whitespace tolerated.
        let header = format!("  bEaReR   {}  ", issued.token);
        assert_eq!(
            f.auth.verify(Some(&header)).await.expect("verify").username,
            "alice"
        );
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_look_the_same() {
        let f = fixture().await;
        let wrong = f.auth.login("alice", "nope").await.expect_err("wrong pw");
        let unknown = f.auth.login("mallory", "nope").await.expect_err("unknown");
        let malformed = f.auth.login(" bad\n", "nope").await.expect_err("malformed");
        for e in [&wrong, &unknown, &malformed] {
            assert!(matches!(e, AuthError::InvalidCredentials), "{e:?}");
        }
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(wrong.to_string(), "invalid username or password");
    }

    #[tokio::test]
    async fn throttles_after_five_failures_per_minute() {
        let f = fixture().await;
        for i in 1..=5 {
            let e = f.auth.login("alice", "nope").await.expect_err("wrong");
            assert!(
                matches!(e, AuthError::InvalidCredentials),
                "attempt {i}: {e:?}"
            );
        }
        f.clock.advance(Duration::from_secs(5));
        let e = f.auth.login("alice", "nope").await.expect_err("6th");
        match e {
            AuthError::TooManyAttempts { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(55));
            }
            other => panic!("expected TooManyAttempts, got {other:?}"),
        }
        // Even the right password is refused while locked (it is not checked).
        let e = f
            .auth
            .login("alice", "correct horse")
            .await
            .expect_err("locked");
        assert!(matches!(e, AuthError::TooManyAttempts { .. }));
        // Another username is unaffected.
        f.store.add_user("bob", "pw", None).await.expect("add bob");
        f.auth.login("bob", "pw").await.expect("bob logs in");

        f.clock.advance(Duration::from_secs(61));
        f.auth
            .login("alice", "correct horse")
            .await
            .expect("unlocked");
        // Success reset the counter: five fresh failures are allowed again.
        for _ in 0..5 {
            let e = f.auth.login("alice", "nope").await.expect_err("wrong");
            assert!(matches!(e, AuthError::InvalidCredentials));
        }
    }

    #[tokio::test]
    async fn unknown_usernames_are_throttled_too() {
        let f = fixture().await;
        for _ in 0..5 {
            f.auth.login("ghost", "x").await.expect_err("unknown");
        }
        let e = f.auth.login("ghost", "x").await.expect_err("throttled");
        assert!(matches!(e, AuthError::TooManyAttempts { .. }));
    }

    #[tokio::test]
    async fn missing_and_malformed_headers() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        for missing in [None, Some(""), Some("  ")] {
            assert!(matches!(
                f.auth.verify(missing).await,
                Err(AuthError::MissingToken)
            ));
        }
        for header in [
            "Bearer",
            "Bearer ",
            &format!("Basic {token}"),
            &format!("Token {token}"),
            &format!("Bearer {token} extra"),
            &token, // no scheme at all
            "Bearer !!!not-base64!!!",
            "Bearer AAAA",
            "Bearer aGVsbG8gd29ybGQ=", // valid base64, not a biscuit
        ] {
            assert_invalid(f.auth.verify(Some(header)).await, header);
        }
    }

    #[tokio::test]
    async fn token_from_another_key_is_refused() {
        let f = fixture().await;
        let other = Auth::new(
            f.store.clone(),
            KeyPair::new(),
            TTL,
            Arc::new(f.clock.clone()),
        );
        let foreign = other.login("alice", "correct horse").await.expect("login");
        // Sanity: the other service accepts its own token.
        other
            .verify(Some(&bearer(&foreign.token)))
            .await
            .expect("own token");
        let reason = assert_invalid(
            f.auth.verify(Some(&bearer(&foreign.token))).await,
            "foreign",
        );
        assert!(reason.contains("forged"), "{reason}");
        // Nor can it be revoked into our table.
        let err = f
            .store
            .revoke_token(&foreign.token, &f.public)
            .await
            .expect_err("foreign");
        assert!(matches!(err, AuthError::InvalidToken(_)));
    }

    #[tokio::test]
    async fn tampered_tokens_are_refused() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        let bytes = Biscuit::from_base64(&token, f.public)
            .expect("parse")
            .to_vec()
            .expect("bytes");
        // Flip one byte at a time across the whole token: payload, keys and signatures.
        for i in (0..bytes.len()).step_by(7) {
            let mut evil = bytes.clone();
            evil[i] ^= 0x01;
            let header = bearer(&b64url(&evil));
            assert_invalid(f.auth.verify(Some(&header)).await, &format!("byte {i}"));
        }
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        f.clock.advance(TTL - Duration::from_secs(1));
        f.auth
            .verify(Some(&bearer(&token)))
            .await
            .expect("still valid");
        f.clock.advance(Duration::from_secs(1));
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&token))).await, "expired");
        assert!(reason.contains("time"), "{reason}");
    }

    #[tokio::test]
    async fn revoked_token_is_refused_and_others_are_not() {
        let f = fixture().await;
        let revoked = login_alice(&f).await;
        let kept = login_alice(&f).await;
        // A token derived from the revoked one dies with it.
        let derived = attenuate(&f, &revoked, "check if operation(\"read\")");
        f.store
            .revoke_token(&revoked, &f.public)
            .await
            .expect("revoke");
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&revoked))).await, "revoked");
        assert!(reason.contains("revoked"), "{reason}");
        assert_invalid(f.auth.verify(Some(&bearer(&derived))).await, "derived");
        assert_eq!(
            f.auth
                .verify(Some(&bearer(&kept)))
                .await
                .expect("other")
                .username,
            "alice"
        );
    }

    #[tokio::test]
    async fn removed_user_token_is_refused() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        f.store.remove_user("alice").await.expect("remove");
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&token))).await, "removed");
        assert!(reason.contains("no longer exists"), "{reason}");
    }

    #[tokio::test]
    async fn re_added_user_old_token_is_refused() {
        let f = fixture().await;
        let old = login_alice(&f).await;
        f.store.remove_user("alice").await.expect("remove");
        f.store
            .add_user("alice", "new pw", None)
            .await
            .expect("re-add");
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&old))).await, "old gen");
        assert!(reason.contains("re-created"), "{reason}");
        let new = f.auth.login("alice", "new pw").await.expect("login").token;
        assert_eq!(
            f.auth
                .verify(Some(&bearer(&new)))
                .await
                .expect("new")
                .username,
            "alice"
        );
    }

    #[tokio::test]
    async fn attenuated_tokens() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        let now = f.clock.now();
        let soon = Term::Date(crate::clock::unix_millis(now) / 1000 + 30);

        // Shorter expiry: passes now, fails after 31 s although the original is still valid.
        let short = {
            let b = Biscuit::from_base64(&token, f.public).expect("parse");
            b.append(block!("check if time($t), $t < {soon};"))
                .expect("append")
                .to_base64()
                .expect("encode")
        };
        // Operation restriction matching what verify authorizes ("read")...
        let read_only = attenuate(&f, &token, "check if operation(\"read\")");
        // ...and one that can never pass here.
        let write_only = attenuate(&f, &token, "check if operation(\"write\")");

        let verify = |t: String| {
            let auth = f.auth.clone();
            async move { auth.verify(Some(&bearer(&t))).await }
        };
        assert_eq!(
            verify(short.clone()).await.expect("short ok").username,
            "alice"
        );
        assert_eq!(
            verify(read_only.clone()).await.expect("read ok").username,
            "alice"
        );
        assert_invalid(verify(write_only).await, "write-only");

        f.clock.advance(Duration::from_secs(31));
        assert_invalid(verify(short).await, "short expired");
        assert_eq!(verify(read_only).await.expect("read ok").username, "alice");
        assert_eq!(verify(token).await.expect("original ok").username, "alice");
    }

    #[tokio::test]
    async fn an_ops_users_token_carries_the_role_and_a_plain_one_does_not() {
        let f = fixture().await;
        let ops = add_ops_bot(&f).await;
        let plain = login_alice(&f).await;

        let identity = f.auth.verify(Some(&bearer(&ops))).await.expect("ops");
        assert_eq!(identity.role, Some(Role::Ops));
        let required = f.auth.require(Some(&bearer(&ops)), Role::Ops).await;
        assert_eq!(required.expect("ops may").username, "ops-bot");

        assert_eq!(
            f.auth
                .verify(Some(&bearer(&plain)))
                .await
                .expect("plain")
                .role,
            None
        );
        let refused = f.auth.require(Some(&bearer(&plain)), Role::Ops).await;
        assert!(
            matches!(refused, Err(AuthError::MissingRole(Role::Ops))),
            "{refused:?}"
        );
        // Without a valid token it is still the token that is wrong, not the role.
        for header in [None, Some("Bearer nope")] {
            let e = f
                .auth
                .require(header, Role::Ops)
                .await
                .expect_err("no token");
            assert!(
                matches!(e, AuthError::MissingToken | AuthError::InvalidToken(_)),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_attenuated_plain_token_claiming_ops_does_not_get_it() {
        let f = fixture().await;
        let plain = login_alice(&f).await;
        let claimed = attenuate_code(&f, &plain, r#"role("ops"); check if role("ops");"#);
        let identity = f.auth.verify(Some(&bearer(&claimed))).await.expect("valid");
        assert_eq!(identity.role, None);
        let refused = f.auth.require(Some(&bearer(&claimed)), Role::Ops).await;
        assert!(
            matches!(refused, Err(AuthError::MissingRole(Role::Ops))),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn ops_tokens_die_with_their_user_and_with_a_changed_role() {
        let f = fixture().await;
        let ops = add_ops_bot(&f).await;
        // Re-added as a plain user: the old ops token names a generation that is gone.
        f.store.remove_user("ops-bot").await.expect("remove");
        f.store
            .add_user("ops-bot", "pw-ops", None)
            .await
            .expect("re-add plain");
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&ops))).await, "old gen");
        assert!(reason.contains("re-created"), "{reason}");

        // A role changed in place (no command does this today) also refuses the old token.
        let plain = login(&f, "ops-bot", "pw-ops").await;
        let generation = f
            .store
            .lookup("ops-bot")
            .await
            .expect("lookup")
            .expect("exists")
            .generation;
        let AuthStore::Redb(local) = &f.store else {
            unreachable!("the fixture is on redb")
        };
        let txn = local.database().begin_write().expect("write");
        txn.open_table(crate::localdb::schema::ROLES)
            .expect("roles")
            .insert("ops-bot", ("ops", generation))
            .expect("insert");
        txn.commit().expect("commit");
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&plain))).await, "role");
        assert!(reason.contains("role"), "{reason}");
    }

    #[tokio::test]
    async fn hostile_datalog_is_refused_quickly() {
        let f = fixture().await;
        let token = login_alice(&f).await;
        // Joins over many same-named facts: unbounded CPU in biscuit without the shape check.
        let bomb = attenuate_code(
            &f,
            &token,
            "x(0); x(1); x(2); x(3); x(4); x(5); x(6); x(7); x(8); x(9);
             check if x($a), x($b), x($c), x($d), $a + $b + $c + $d == -1;",
        );
        let start = std::time::Instant::now();
        let reason = assert_invalid(f.auth.verify(Some(&bearer(&bomb))).await, "bomb");
        assert!(reason.contains("more than one"), "{reason}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn debug_does_not_leak_the_private_key() {
        let (_dir, db) = temp_db();
        let key = KeyPair::new();
        let secret = key.private().to_bytes_hex();
        let auth = Auth::new(
            AuthStore::Redb(db),
            key,
            TTL,
            Arc::new(crate::clock::SystemClock),
        );
        let dbg = format!("{auth:?}");
        assert!(!dbg.contains(&secret));
        assert!(dbg.contains("ed25519/"));
    }

    fn attenuate(f: &Fixture, token: &str, check: &str) -> String {
        attenuate_code(f, token, &format!("{check};"))
    }

    /// What a token holder does offline: append a block of their own.
    fn attenuate_code(f: &Fixture, token: &str, code: &str) -> String {
        let block = biscuit_auth::BlockBuilder::new()
            .code(code)
            .expect("datalog");
        Biscuit::from_base64(token, f.public)
            .expect("parse")
            .append(block)
            .expect("append")
            .to_base64()
            .expect("encode")
    }

    /// URL-safe base64 with padding, the alphabet biscuit uses; test-only so the crate needs no
    /// base64 dependency.
    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn b64url_matches_biscuit_encoding() {
        let root = KeyPair::new();
        let issued = tokens::issue(&root, "alice", 1, None, SystemTime::now(), TTL).expect("issue");
        let bytes = Biscuit::from_base64(&issued.token, root.public())
            .expect("parse")
            .to_vec()
            .expect("bytes");
        assert_eq!(b64url(&bytes), issued.token);
    }
}
