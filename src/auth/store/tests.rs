//! The auth store's contract, run on redb and on a real Redis (each test its own prefix), then
//! what only the shared store promises: replicas that see each other's users, tokens,
//! revocations and failed logins, one root key, and failing closed while Redis is away.
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use biscuit_auth::KeyPair;

use super::*;
use crate::auth::users::verify_password;
use crate::auth::Auth;
use crate::clock::ManualClock;
use crate::redis_conn::RedisConn;
use crate::storage::redis_server::{self, RedisServer};

/// A store and what keeps it alive.
struct On {
    store: AuthStore,
    _dir: Option<tempfile::TempDir>,
}

fn redb() -> On {
    let (dir, db) = crate::auth::test_util::temp_db();
    On {
        store: AuthStore::Redb(db),
        _dir: Some(dir),
    }
}

fn redis_store(prefix: &str) -> AuthStore {
    let conn = redis_server::shared().conn();
    AuthStore::Redis(RedisAuth::new(conn, prefix, Duration::from_secs(5)))
}

fn redis() -> On {
    On {
        store: redis_store(&redis_server::unique_prefix()),
        _dir: None,
    }
}

macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod on_redb {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::redb()).await
            })*
        }
        mod on_redis {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::redis()).await
            })*
        }
    };
}

contract!(
    add_list_remove,
    salts_are_per_user,
    duplicates_and_bad_names_or_passwords_are_refused,
    generations_are_never_reused,
    roles_are_stored_listed_and_go_with_the_user,
    revocations_are_seen_with_the_user,
);

async fn names(store: &AuthStore) -> Vec<String> {
    let users = store.list_users().await.expect("list");
    users.into_iter().map(|(name, _)| name).collect()
}

async fn add_list_remove(on: On) {
    let s = &on.store;
    assert!(s.list_users().await.expect("list").is_empty());
    s.add_user("bob", "pw-b", None).await.expect("add bob");
    s.add_user("alice", "pw-a", None).await.expect("add alice");
    assert_eq!(names(s).await, ["alice", "bob"]);

    let rec = s.lookup("alice").await.expect("lookup").expect("alice");
    assert!(rec.phc.starts_with("$argon2id$"));
    assert!(verify_password("pw-a", Some(&rec.phc)));
    assert!(!verify_password("pw-b", Some(&rec.phc)));

    s.remove_user("bob").await.expect("remove");
    assert_eq!(names(s).await, ["alice"]);
    let err = s.remove_user("bob").await.expect_err("already gone");
    assert!(matches!(err, AuthError::UnknownUser(ref n) if n == "bob"));
    assert!(s.lookup("bob").await.expect("lookup").is_none());
}

async fn salts_are_per_user(on: On) {
    let s = &on.store;
    s.add_user("a", "same", None).await.expect("add");
    s.add_user("b", "same", None).await.expect("add");
    let a = s.lookup("a").await.expect("lookup").expect("a");
    let b = s.lookup("b").await.expect("lookup").expect("b");
    assert_ne!(a.phc, b.phc);
}

async fn duplicates_and_bad_names_or_passwords_are_refused(on: On) {
    let s = &on.store;
    s.add_user("alice", "pw", None).await.expect("add");
    let err = s.add_user("alice", "other", None).await.expect_err("dup");
    assert_eq!(err.to_string(), "user alice already exists");
    let too_long = "x".repeat(65);
    for bad in [
        "", " alice", "alice ", "\talice", "al\nice", "a\u{7f}b", &too_long,
    ] {
        let err = s.add_user(bad, "pw", None).await.expect_err(bad);
        assert!(matches!(err, AuthError::InvalidUsername(_)), "{bad:?}");
    }
    let long = "p".repeat(users::MAX_PASSWORD_BYTES + 1);
    for bad in ["", long.as_str()] {
        let err = s.add_user("carol", bad, None).await.expect_err("bad pw");
        assert!(matches!(err, AuthError::InvalidPassword(_)));
    }
    // Boundaries that must be accepted: 64 chars (multi-byte), inner spaces, unicode.
    s.add_user(&"é".repeat(64), "pw", None)
        .await
        .expect("64 chars");
    s.add_user("ann marie", "pw", None)
        .await
        .expect("inner space");
    assert_eq!(s.list_users().await.expect("list").len(), 3);
}

async fn generations_are_never_reused(on: On) {
    let s = &on.store;
    s.add_user("alice", "pw", None).await.expect("add");
    let generation = || async {
        s.lookup("alice")
            .await
            .expect("l")
            .expect("alice")
            .generation
    };
    let g1 = generation().await;
    s.remove_user("alice").await.expect("remove");
    s.add_user("alice", "pw", None).await.expect("re-add");
    assert!(generation().await > g1);
}

async fn roles_are_stored_listed_and_go_with_the_user(on: On) {
    let s = &on.store;
    s.add_user("ops-bot", "pw", Some(Role::Ops))
        .await
        .expect("ops");
    s.add_user("alice", "pw", None).await.expect("plain");
    assert_eq!(
        s.list_users().await.expect("list"),
        [
            ("alice".to_owned(), None),
            ("ops-bot".to_owned(), Some(Role::Ops))
        ]
    );
    let role =
        |name: &'static str| async move { s.lookup(name).await.expect("l").expect("exists").role };
    assert_eq!(role("ops-bot").await, Some(Role::Ops));
    assert_eq!(role("alice").await, None);
    // Re-added without the role: a plain user (and a new generation).
    s.remove_user("ops-bot").await.expect("remove");
    s.add_user("ops-bot", "pw", None).await.expect("re-add");
    assert_eq!(role("ops-bot").await, None);
}

async fn revocations_are_seen_with_the_user(on: On) {
    let s = &on.store;
    s.add_user("alice", "pw", None).await.expect("add");
    let root = KeyPair::new();
    let now = SystemTime::now();
    let issue = || {
        let ttl = Duration::from_secs(60);
        tokens::issue(&root, "alice", 1, None, now, ttl).expect("issue")
    };
    let (revoked, kept) = (issue().token, issue().token);
    s.revoke_token(&revoked, &root.public())
        .await
        .expect("revoke");
    for (token, want) in [(&revoked, true), (&kept, false)] {
        let ids = tokens::revocation_ids(token, &root.public()).expect("ids");
        let state = s.token_state("alice", ids).await.expect("state");
        assert_eq!(state.revoked, want);
        assert!(state.user.is_some());
    }
    let foreign = KeyPair::new().public();
    let err = s.revoke_token(&kept, &foreign).await.expect_err("foreign");
    assert!(matches!(err, AuthError::InvalidToken(_)), "{err:?}");
}

/// Two replicas' `Auth` on one Redis prefix, with the same root key and a manual clock.
fn two_replicas(prefix: &str, root: &KeyPair) -> (Auth, Auth, ManualClock) {
    let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    let private = root.private().to_prefixed_string();
    let replica = || {
        let key = crate::auth::keys::parse_private_key(&private).expect("key");
        let ttl = Duration::from_secs(3600);
        Auth::new(redis_store(prefix), key, ttl, Arc::new(clock.clone()))
    };
    (replica(), replica(), clock)
}

#[tokio::test]
async fn a_token_from_one_replica_works_on_another_until_revoked_or_removed() {
    let prefix = redis_server::unique_prefix();
    let root = KeyPair::new();
    let (a, b, _) = two_replicas(&prefix, &root);
    let admin = redis_store(&prefix); // the CLI, as a third client
    admin.add_user("alice", "pw", None).await.expect("add");
    let bearer = |t: &str| format!("Bearer {t}");
    let first = a.login("alice", "pw").await.expect("login on a").token;
    let second = a.login("alice", "pw").await.expect("login on a").token;
    assert_eq!(
        b.verify(Some(&bearer(&first))).await.expect("b").username,
        "alice"
    );

    admin
        .revoke_token(&first, &root.public())
        .await
        .expect("revoke");
    for replica in [&a, &b] {
        let e = replica
            .verify(Some(&bearer(&first)))
            .await
            .expect_err("revoked");
        assert!(matches!(e, AuthError::InvalidToken(_)), "{e:?}");
        replica
            .verify(Some(&bearer(&second)))
            .await
            .expect("other token");
    }
    admin.remove_user("alice").await.expect("remove");
    let e = b.verify(Some(&bearer(&second))).await.expect_err("removed");
    assert!(matches!(e, AuthError::InvalidToken(_)), "{e:?}");
}

#[tokio::test]
async fn failed_logins_are_counted_across_replicas() {
    let prefix = redis_server::unique_prefix();
    let (a, b, clock) = two_replicas(&prefix, &KeyPair::new());
    redis_store(&prefix)
        .add_user("alice", "pw", None)
        .await
        .expect("add");
    for replica in [&a, &b, &a, &b, &a] {
        let e = replica.login("alice", "nope").await.expect_err("wrong");
        assert!(matches!(e, AuthError::InvalidCredentials), "{e:?}");
    }
    clock.advance(Duration::from_secs(10));
    match b.login("alice", "pw").await {
        Err(AuthError::TooManyAttempts { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(50));
        }
        other => panic!("expected a lockout on the other replica, got {other:?}"),
    }
    // The window slides on both: a minute after the first failure, the right password works.
    clock.advance(Duration::from_secs(51));
    a.login("alice", "pw").await.expect("after the window");
    // A success wipes the slate for every replica.
    for _ in 0..4 {
        let _ = b.login("alice", "nope").await;
    }
    b.login("alice", "pw")
        .await
        .expect("four failures are not a lockout");
}

/// A row this binary cannot read (another version's, or damage) is a clear internal error for
/// that user, never a panic, and grants nothing; an unknown role in a readable row is no role.
#[tokio::test]
async fn an_unreadable_user_row_is_an_error_not_a_panic() {
    let prefix = redis_server::unique_prefix();
    let store = redis_store(&prefix);
    let mut conn = redis_server::shared().conn();
    let users = format!("{prefix}:{{auth}}:users");
    for (name, row) in [
        ("bad", "not-a-number"),
        ("short", "7 ops"),
        ("admin", "3 admin $argon2id$x"),
    ] {
        ::redis::cmd("HSET")
            .arg(&users)
            .arg(name)
            .arg(row)
            .query_async::<()>(&mut conn)
            .await
            .expect("write the row");
    }
    for name in ["bad", "short"] {
        let e = store.lookup(name).await.err().expect(name);
        assert!(matches!(e, AuthError::Internal(_)), "{name}: {e:?}");
        let e = store.token_state(name, vec![]).await.err().expect(name);
        assert!(matches!(e, AuthError::Internal(_)), "{name}: {e:?}");
    }
    let admin = store
        .lookup("admin")
        .await
        .expect("readable")
        .expect("exists");
    assert_eq!((admin.generation, admin.role), (3, None));
    assert!(
        store.list_users().await.is_err(),
        "a listing with a bad row says so"
    );
}

#[tokio::test]
async fn the_first_stored_root_key_is_everyones() {
    let prefix = redis_server::unique_prefix();
    let dir = std::path::Path::new("/nonexistent-data-dir");
    let (one, two) = (redis_store(&prefix), redis_store(&prefix));
    let (k1, k2) = tokio::join!(one.stored_root_key(dir), two.stored_root_key(dir));
    let (k1, k2) = (k1.expect("key"), k2.expect("key"));
    assert_eq!(k1.public().to_string(), k2.public().to_string());
    let again = redis_store(&prefix)
        .stored_root_key(dir)
        .await
        .expect("key");
    assert_eq!(again.public().to_string(), k1.public().to_string());
    let other = redis_store(&redis_server::unique_prefix());
    let theirs = other.stored_root_key(dir).await.expect("key");
    assert_ne!(theirs.public().to_string(), k1.public().to_string());
}

#[tokio::test]
async fn without_redis_nothing_is_admitted_and_it_recovers_by_itself() {
    let mut server = RedisServer::start();
    let port = server.port;
    let conn = RedisConn::single(server.client(), Duration::from_millis(300)).expect("conn");
    let store = AuthStore::Redis(RedisAuth::new(conn, "outage", Duration::from_millis(300)));
    let root = KeyPair::new();
    let private = root.private().to_prefixed_string();
    let key = crate::auth::keys::parse_private_key(&private).expect("key");
    let auth = Auth::new(
        store.clone(),
        key,
        Duration::from_secs(60),
        Arc::new(crate::clock::SystemClock),
    );
    store.add_user("alice", "pw", None).await.expect("add");
    let token = auth.login("alice", "pw").await.expect("login").token;
    let header = format!("Bearer {token}");

    drop(server);
    for result in [
        auth.verify(Some(&header)).await.map(|_| ()),
        auth.login("alice", "pw").await.map(|_| ()),
        store.revoke_token(&token, &root.public()).await,
    ] {
        let e = result.expect_err("Redis is down");
        assert!(matches!(e, AuthError::Unavailable(_)), "{e:?}");
    }
    server = RedisServer::start_on(port);
    // The store is empty now (no persistence in tests): the user is gone, which is an answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match auth.verify(Some(&header)).await {
            Err(AuthError::InvalidToken(_)) => break,
            Err(AuthError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected the store back, got {other:?}"),
        }
    }
    drop(server);
}
