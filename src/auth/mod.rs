//! Authentication: users with Argon2id password hashes, biscuit bearer tokens signed by an
//! ed25519 root key, token revocation, and a per-username login throttle; kept in redb, or in
//! Redis shared by every replica (`--redis-url`).
//!
//! Layout:
//! - [`store`]: [`AuthStore`], where users, revocations and failed logins live (redb or Redis),
//!   and the steps of add / remove / list / revoke, written once for both.
//! - [`users`]: the redb user table, password hashing and validation, and [`Role`].
//! - [`keys`]: loading or creating the root key, rendering its public half.
//! - [`tokens`]: issuing, checking and revoking biscuit tokens.
//! - [`throttle`]: the in-memory failed-login limiter.
//! - [`service`]: [`Auth`], the cheap-to-clone async facade the HTTP layer uses.
//!
//! Error messages: `Display` of every variant the HTTP layer shows to clients is written for
//! clients. `InvalidToken`'s payload is a reason for logs only (it may quote attacker-supplied
//! Datalog), so its `Display` omits it; log the error with `{:?}` to see it.

pub mod keys;
pub mod service;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod users;

use std::time::Duration;

use crate::localdb::DbError;

pub use keys::{load_or_create_root_key, public_key_string};
pub use service::Auth;
pub use store::{AuthStore, RedisAuth};
pub use users::Role;

/// Re-exported so callers (CLI, server wiring) need no direct biscuit dependency for key types.
pub use biscuit_auth::KeyPair;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user and wrong password deliberately share this variant (and its message) so the
    /// response does not reveal which usernames exist.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("too many failed login attempts; retry in {} s", ceil_secs(*.retry_after))]
    TooManyAttempts { retry_after: Duration },
    #[error("missing bearer token")]
    MissingToken,
    /// The payload says why (expired, revoked, forged...) for the logs; clients only ever see the
    /// generic message so they cannot probe which check failed.
    #[error("invalid or expired token")]
    InvalidToken(String),
    /// A valid token whose user lacks the role the request needs.
    #[error("the token's user does not have the `{0}` role")]
    MissingRole(Role),
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    /// `add_user` refuses empty passwords (an account anyone could log into) and ones over
    /// `users::MAX_PASSWORD_BYTES` (login refuses those before hashing, so it could never log in).
    #[error("invalid password: {0}")]
    InvalidPassword(String),
    #[error("user {0} already exists")]
    UserExists(String),
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// Never contains key material, only paths and what was wrong.
    #[error("root key error: {0}")]
    Key(String),
    /// The database failed (the cause is in the message; never the user's fault).
    #[error(transparent)]
    Db(#[from] DbError),
    /// The shared store (Redis) failed or did not answer in time: nothing is admitted without
    /// it (the cause, for logs).
    #[error("the shared store is unavailable: {0}")]
    Unavailable(String),
    /// Token building or password hashing failed: a bug or a broken environment.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AuthError {
    /// Whole seconds for a `Retry-After` header, rounded up so a client that waits exactly that
    /// long is not refused again.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::TooManyAttempts { retry_after } => Some(ceil_secs(*retry_after)),
            _ => None,
        }
    }
}

/// CPU-heavy work (Argon2, token crypto, key generation) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Internal(format!("auth task failed: {e}")))?
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// redb has one error type per operation; they all convert into `redb::Error`, which is what the
/// synchronous table helpers return, and this folds it into the database error.
impl From<redb::Error> for AuthError {
    fn from(e: redb::Error) -> Self {
        Self::Db(e.into())
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::localdb::LocalDb;

    /// A real database file in a temp dir; keep the `TempDir` alive for the test's duration.
    pub fn temp_db() -> (tempfile::TempDir, LocalDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LocalDb::open(dir.path()).expect("open database");
        (dir, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_messages_are_client_safe() {
        let e = AuthError::TooManyAttempts {
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(e.retry_after_secs(), Some(2));
        assert_eq!(
            e.to_string(),
            "too many failed login attempts; retry in 2 s"
        );
        let e = AuthError::InvalidToken("expired: check if time($t) ...".into());
        assert_eq!(e.to_string(), "invalid or expired token");
        assert!(format!("{e:?}").contains("expired"));
        assert_eq!(
            AuthError::UserExists("alice".into()).to_string(),
            "user alice already exists"
        );
    }
}
