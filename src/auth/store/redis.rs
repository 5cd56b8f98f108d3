//! The auth tables on Redis, shared by every replica on one server and `--redis-prefix`.
//!
//! Keys (`P` is the prefix; one `{auth}` hash tag, so each script's keys share a Redis Cluster
//! slot):
//! - `P:{auth}:users`: hash, username → `"<generation> <role or -> <PHC hash>"` (a PHC string
//!   has no spaces, a role name none either);
//! - `P:{auth}:generation`: the never-reused generation counter (`INCR`);
//! - `P:{auth}:revoked`: hash, hex revocation id → revoked at (unix ms);
//! - `P:{auth}:root_key`: the generated root key (`ed25519-private/<hex>`), set once with `NX`,
//!   when no `--root-key`/`--root-key-file` is given: whoever can read Redis can sign tokens,
//!   so protect it as the key file would be (ACL, TLS, no public port);
//! - `P:{auth}:failures:<username>`: sorted set of failed-login times (ms), expiring with the
//!   throttle's window, so the throttle counts every replica's failures.
//!
//! Fail closed: a call that errors or outlasts `--redis-timeout` is `AuthError::Unavailable`
//! (`503 storage_unavailable`): no login is checked and no token admitted without the store.
use std::time::{Duration, SystemTime};

use biscuit_auth::KeyPair;
use redis::Script;

use super::TokenState;
use crate::auth::throttle::{DEFAULT_MAX_FAILURES, DEFAULT_WINDOW};
use crate::auth::users::UserRecord;
use crate::auth::{keys, AuthError, Role};
use crate::clock::unix_millis;
use crate::metrics::STORAGE_UP;
use crate::outage::Health;
use crate::redis_conn::{guarded, RedisConn};

/// KEYS users, generation; ARGV name, role, PHC. 0 if the name exists, else its generation.
const INSERT: &str = r#"
if redis.call("HEXISTS", KEYS[1], ARGV[1]) == 1 then return 0 end
local g = redis.call("INCR", KEYS[2])
redis.call("HSET", KEYS[1], ARGV[1], g .. " " .. ARGV[2] .. " " .. ARGV[3])
return g
"#;

/// KEYS users, revoked; ARGV name, then hex ids. The user's row ("" if none) and 1 if any id
/// is revoked: one snapshot for both.
const TOKEN_STATE: &str = r#"
local revoked = 0
for i = 2, #ARGV do
  if redis.call("HEXISTS", KEYS[2], ARGV[i]) == 1 then revoked = 1 break end
end
return { redis.call("HGET", KEYS[1], ARGV[1]) or "", revoked }
"#;

/// KEYS failures; ARGV now ms, window ms, max failures, member. -1 and the attempt counted, or
/// the ms until the oldest failure leaves the window.
const ATTEMPT: &str = r#"
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", now - window)
if redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = tonumber(redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")[2])
  return math.max(0, window - (now - oldest))
end
redis.call("ZADD", KEYS[1], now, ARGV[4])
redis.call("PEXPIRE", KEYS[1], window)
return -1
"#;

struct Scripts {
    insert: Script,
    token_state: Script,
    attempt: Script,
}

/// Cheap to clone (the connection and an `Arc`).
#[derive(Clone)]
pub struct RedisAuth {
    conn: RedisConn,
    prefix: String,
    timeout: Duration,
    shared: std::sync::Arc<(Scripts, Health)>,
}

impl RedisAuth {
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> Self {
        let scripts = Scripts {
            insert: Script::new(INSERT),
            token_state: Script::new(TOKEN_STATE),
            attempt: Script::new(ATTEMPT),
        };
        let health = Health::new("redis (users and tokens)", Some(STORAGE_UP));
        Self {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            shared: std::sync::Arc::new((scripts, health)),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{{auth}}:{name}", self.prefix)
    }

    fn scripts(&self) -> &Scripts {
        &self.shared.0
    }

    async fn run<T, F>(&self, call: impl FnOnce(RedisConn) -> F) -> Result<T, AuthError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        guarded(&self.conn, self.timeout, &self.shared.1, call)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))
    }

    pub(super) async fn insert_user(
        &self,
        name: &str,
        phc: &str,
        role: Option<Role>,
    ) -> Result<bool, AuthError> {
        let mut call = self.scripts().insert.prepare_invoke();
        call.key(self.key("users"))
            .key(self.key("generation"))
            .arg(name)
            .arg(role.map_or("-", Role::as_str))
            .arg(phc);
        let generation: u64 = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(generation > 0)
    }

    pub(super) async fn delete_user(&self, name: &str) -> Result<bool, AuthError> {
        let users = self.key("users");
        let removed: u64 = self
            .run(|mut c| async move {
                redis::cmd("HDEL")
                    .arg(&users)
                    .arg(name)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(removed > 0)
    }

    pub(super) async fn list_users(&self) -> Result<Vec<(String, Option<Role>)>, AuthError> {
        let users = self.key("users");
        let rows: Vec<(String, String)> = self
            .run(|mut c| async move { redis::cmd("HGETALL").arg(&users).query_async(&mut c).await })
            .await?;
        let mut list = Vec::with_capacity(rows.len());
        for (name, row) in rows {
            let role = parse_row(&name, &row)?.role;
            list.push((name, role));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(list)
    }

    pub(super) async fn lookup(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        let users = self.key("users");
        let row: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("HGET")
                    .arg(&users)
                    .arg(name)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        row.map(|row| parse_row(name, &row)).transpose()
    }

    pub(super) async fn token_state(
        &self,
        name: &str,
        ids: &[Vec<u8>],
    ) -> Result<TokenState, AuthError> {
        let mut call = self.scripts().token_state.prepare_invoke();
        call.key(self.key("users"))
            .key(self.key("revoked"))
            .arg(name);
        for id in ids {
            call.arg(hex::encode(id));
        }
        let (row, revoked): (String, u8) = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let user = match row.as_str() {
            "" => None,
            row => Some(parse_row(name, row)?),
        };
        Ok(TokenState {
            user,
            revoked: revoked == 1,
        })
    }

    pub(super) async fn revoke(&self, ids: &[Vec<u8>], now_ms: u64) -> Result<(), AuthError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.key("revoked"));
        for id in ids {
            cmd.arg(hex::encode(id)).arg(now_ms);
        }
        self.run(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// The stored root key, or a new one stored now: `SET NX`, then whatever is stored (ours, or
    /// that of a replica that won the race).
    pub(super) async fn root_key(&self) -> Result<KeyPair, AuthError> {
        let key = self.key("root_key");
        let fresh = KeyPair::new().private().to_prefixed_string();
        let stored: String = self
            .run(|mut c| async move {
                let _: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(fresh)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        keys::parse_private_key(&stored)
            .map_err(|e| AuthError::Key(format!("root key stored in Redis: {e}")))
    }

    /// Counts a provisional failure for `name` unless it is locked out (`Err(retry_after)`);
    /// `Ok` holds the attempt's member, to take it back.
    pub(super) async fn begin_attempt(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<Result<String, Duration>, AuthError> {
        let now_ms = unix_millis(now);
        // Unique per attempt (process, then a counter), so concurrent attempts at the same
        // millisecond all count.
        static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let member = format!("{now_ms}-{:016x}-{n}", crate::clock::process_seed());
        let window_ms = DEFAULT_WINDOW.as_millis() as u64;
        let mut call = self.scripts().attempt.prepare_invoke();
        call.key(self.failures_key(name))
            .arg(now_ms)
            .arg(window_ms)
            .arg(DEFAULT_MAX_FAILURES)
            .arg(&member);
        let answer: i64 = self
            .run(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(match u64::try_from(answer) {
            // A replica whose clock is ahead wrote a later time: never more than the window.
            Ok(ms) => Err(Duration::from_millis(ms.min(window_ms))),
            Err(_) => Ok(member),
        })
    }

    /// Best effort: a lost clear or take-back costs the user at most one counted failure.
    pub(super) async fn clear_failures(&self, name: &str) {
        let key = self.failures_key(name);
        let _ = self
            .run(|mut c| async move { redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await })
            .await;
    }

    pub(super) async fn forget_attempt(&self, name: &str, member: &str) {
        let key = self.failures_key(name);
        let _ = self
            .run(|mut c| async move {
                redis::cmd("ZREM")
                    .arg(&key)
                    .arg(member)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
    }

    fn failures_key(&self, name: &str) -> String {
        self.key(&format!("failures:{name}"))
    }
}

/// `"<generation> <role or -> <PHC>"`. A role this binary does not know grants nothing (as in
/// the redb table).
fn parse_row(name: &str, row: &str) -> Result<UserRecord, AuthError> {
    let bad = || AuthError::Internal(format!("unreadable user row for {name:?} in Redis"));
    let mut fields = row.splitn(3, ' ');
    let generation = fields.next().and_then(|g| g.parse().ok()).ok_or_else(bad)?;
    let role = match fields.next().ok_or_else(bad)? {
        "-" => None,
        role => role
            .parse()
            .map_err(|why| tracing::warn!(user = name, "stored role ignored: {why}"))
            .ok(),
    };
    let phc = fields.next().ok_or_else(bad)?.to_owned();
    Ok(UserRecord {
        phc,
        generation,
        role,
    })
}
