//! Where users, roles, revocations, the login throttle and (in Redis mode) the root key live:
//! [`AuthStore`], this replica's redb file or the Redis every replica shares (`--redis-url`).
//!
//! The steps of each operation (validate, refuse a duplicate before hashing, hash on the
//! blocking pool, insert) are written once here; the two arms only read and write rows.
//! Nothing is cached in a replica, so a `user remove` or `token revoke` made on one replica (or
//! by the CLI) is refused by every replica on its next request.
use std::time::{Duration, SystemTime};

use biscuit_auth::{KeyPair, PublicKey};

use super::throttle::Throttle;
use super::users::{self, UserRecord};
use super::{blocking, tokens, AuthError, Role};
use crate::clock::unix_millis;
use crate::localdb::LocalDb;

mod redis;
#[cfg(test)]
mod tests;

pub use redis::RedisAuth;

/// The auth tables of one deployment. Cheap to clone.
#[derive(Clone)]
pub enum AuthStore {
    /// The `auth_*` tables of `classifier.redb` (one process).
    Redb(LocalDb),
    /// Shared by every replica on one Redis and prefix.
    Redis(RedisAuth),
}

/// What `verify` needs, read in one snapshot: the token's user, and whether any of its blocks
/// is revoked.
pub(crate) struct TokenState {
    pub user: Option<UserRecord>,
    pub revoked: bool,
}

impl AuthStore {
    /// Adds a user with an Argon2id hash of `password`, and `role` if any.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        role: Option<Role>,
    ) -> Result<(), AuthError> {
        users::validate_new_user(name, password)?;
        // Cheap early refusal so a duplicate does not cost an Argon2 hash; the insert re-checks,
        // since another writer may have added the name meanwhile.
        if self.lookup(name).await?.is_some() {
            return Err(AuthError::UserExists(name.to_owned()));
        }
        let password = password.to_owned();
        let phc = blocking(move || users::hash_password(&password)).await?;
        let inserted = match self {
            Self::Redb(db) => {
                let (name, db) = (name.to_owned(), db.clone());
                db.run(move |db| Ok::<_, AuthError>(users::insert_user(db, &name, &phc, role)?))
                    .await?
            }
            Self::Redis(r) => r.insert_user(name, &phc, role).await?,
        };
        if !inserted {
            return Err(AuthError::UserExists(name.to_owned()));
        }
        tracing::info!(user = name, role = role.map(Role::as_str), "user added");
        Ok(())
    }

    /// Removes a user. Their outstanding tokens fail verification from then on, because
    /// `verify` looks the user up on every request (and a re-added user gets a new generation).
    pub async fn remove_user(&self, name: &str) -> Result<(), AuthError> {
        let removed = match self {
            Self::Redb(db) => {
                let name = name.to_owned();
                db.run(move |db| users::delete_user(db, &name)).await?
            }
            Self::Redis(r) => r.delete_user(name).await?,
        };
        if !removed {
            return Err(AuthError::UnknownUser(name.to_owned()));
        }
        tracing::info!(user = name, "user removed");
        Ok(())
    }

    /// All users with their roles, sorted by name.
    pub async fn list_users(&self) -> Result<Vec<(String, Option<Role>)>, AuthError> {
        match self {
            Self::Redb(db) => db.run(users::list_users).await,
            Self::Redis(r) => r.list_users().await,
        }
    }

    pub(crate) async fn lookup(&self, name: &str) -> Result<Option<UserRecord>, AuthError> {
        match self {
            Self::Redb(db) => {
                let name = name.to_owned();
                db.run(move |db| users::lookup(db, &name)).await
            }
            Self::Redis(r) => r.lookup(name).await,
        }
    }

    /// `username`'s record and whether any of `ids` is revoked, from one snapshot, so a
    /// concurrent remove + re-add cannot be half-seen.
    pub(crate) async fn token_state(
        &self,
        username: &str,
        ids: Vec<Vec<u8>>,
    ) -> Result<TokenState, AuthError> {
        match self {
            Self::Redb(db) => {
                let name = username.to_owned();
                db.run(move |db| {
                    let txn = tokens::begin_read(db)?;
                    Ok(TokenState {
                        revoked: tokens::is_revoked(&txn, &ids)?,
                        user: users::lookup_in(&txn, &name)?,
                    })
                })
                .await
            }
            Self::Redis(r) => r.token_state(username, &ids).await,
        }
    }

    /// Makes `token` (and every token attenuated from it) invalid on every replica of this
    /// store. The token must be signed by `root`.
    pub async fn revoke_token(&self, token: &str, root: &PublicKey) -> Result<(), AuthError> {
        let ids = tokens::revocation_ids(token, root)?;
        let now = unix_millis(SystemTime::now());
        match self {
            Self::Redb(db) => {
                db.run(move |db| tokens::store_revocations(db, &ids, now))
                    .await?
            }
            Self::Redis(r) => r.revoke(&ids, now).await?,
        }
        tracing::info!("token revoked");
        Ok(())
    }

    /// The root key when none is given (`--root-key`, `--root-key-file`): the redb mode's is
    /// `data_dir/root_key` (see `keys`), Redis mode's is generated once and stored there, the
    /// first replica to store one winning.
    pub async fn stored_root_key(&self, data_dir: &std::path::Path) -> Result<KeyPair, AuthError> {
        match self {
            Self::Redb(_) => {
                let dir = data_dir.to_owned();
                blocking(move || super::load_or_create_root_key(&dir, None, None)).await
            }
            Self::Redis(r) => r.root_key().await,
        }
    }

    /// The failed-login counter for this store: per process for redb, fleet-wide for Redis.
    pub(crate) fn throttle(&self) -> LoginThrottle {
        match self {
            Self::Redb(_) => LoginThrottle::Local(Throttle::default()),
            Self::Redis(r) => LoginThrottle::Shared(r.clone()),
        }
    }
}

/// Failed logins per username (see `throttle` for the rules), counted where the users are.
pub(crate) enum LoginThrottle {
    Local(Throttle),
    Shared(RedisAuth),
}

/// A counted attempt, handed back to settle it.
pub(crate) struct Attempt(Option<String>);

impl LoginThrottle {
    /// `Ok(Err(retry_after))` if `name` is locked out; else counts a provisional failure.
    pub async fn begin(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<Result<Attempt, Duration>, AuthError> {
        match self {
            Self::Local(t) => Ok(t.begin_attempt(name, now).map(|()| Attempt(None))),
            Self::Shared(r) => Ok(r.begin_attempt(name, now).await?.map(|m| Attempt(Some(m)))),
        }
    }

    /// Correct password: the user's slate is wiped.
    pub async fn succeeded(&self, name: &str) {
        match self {
            Self::Local(t) => t.succeeded(name),
            Self::Shared(r) => r.clear_failures(name).await,
        }
    }

    /// Not the caller's fault (storage trouble): the attempt is taken back.
    pub async fn forget(&self, name: &str, attempt: Attempt) {
        match (self, attempt.0) {
            (Self::Local(t), _) => t.forget_attempt(name),
            (Self::Shared(r), Some(member)) => r.forget_attempt(name, &member).await,
            (Self::Shared(_), None) => {}
        }
    }
}
