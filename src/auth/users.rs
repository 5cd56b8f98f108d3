//! The user table and password hashing. Everything here is synchronous so the CLI can call it
//! without a runtime; the async [`super::Auth`] runs it on the blocking pool.
//!
//! Each user has a *generation* baked into their tokens. Generations come from one global,
//! never-reused counter, so a user who is removed and re-added gets a new generation and their
//! old tokens stop matching, without keeping tombstones for removed names.
//!
//! A user may have one [`Role`], given when the user is added and baked into their tokens too.
//! There is no command to change it in place: remove the user and add them again (a new
//! generation, so tokens minted with the old role stop working).
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::AuthError;
use crate::localdb::schema::{AUTH_META as META, ROLES, USERS};
const NEXT_GENERATION: &str = "next_generation";

/// What a user may do beyond what any user may. A user without one is a plain user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// May read the operator endpoints (`/report`, `/report/history`, `/metrics`) when the
    /// server runs with `--ops-auth token`.
    Ops,
}

impl Role {
    /// Every role, for messages that list them.
    pub const ALL: [Role; 1] = [Role::Ops];

    /// The name stored in the database and in the token's `role(..)` fact.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ops => "ops",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|r| r.as_str()).collect();
                format!("unknown role {s:?} (known: {})", known.join(", "))
            })
    }
}

pub const MAX_USERNAME_CHARS: usize = 64;
/// Generous for passphrases, small enough that nobody can make us hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Argon2id with the OWASP-recommended defaults (19 MiB, t=2, p=1). Unit tests use the minimum
/// cost because debug-build Argon2 at full cost takes seconds per hash. Verification always
/// uses the parameters stored in the PHC string, so changing these only affects new hashes.
fn hasher() -> Argon2<'static> {
    #[cfg(not(test))]
    let params = Params::DEFAULT;
    #[cfg(test)]
    let params = Params::new(Params::MIN_M_COST, 1, 1, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes with a fresh random salt per call, so equal passwords never share a hash.
pub(crate) fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("password hashing failed: {e}")))
}

/// A hash of a random password, made once per process with the current parameters. Logins for
/// unknown users are checked against it so they cost the same as a wrong password and the
/// response time does not reveal whether the user exists.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            // The salt doubles as an unguessable password: nothing can ever match this hash.
            let secret = SaltString::generate(&mut OsRng);
            hash_password(secret.as_str()).ok()
        })
        .as_deref()
}

/// Builds the dummy hash now rather than during the first unknown-user login, which would
/// otherwise be measurably slower than the ones after it.
pub(crate) fn warm_up_dummy_hash() {
    let _ = dummy_hash();
}

/// `true` only if `stored` is present and matches. With `stored == None` the dummy hash is
/// verified anyway, purely to spend the same time.
pub(crate) fn verify_password(password: &str, stored: Option<&str>) -> bool {
    let (phc, real) = match stored {
        Some(phc) => (phc, true),
        None => match dummy_hash() {
            Some(phc) => (phc, false),
            None => return false,
        },
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        // A corrupt stored hash must not lock the process up or panic; the user simply cannot
        // log in until an admin resets them.
        tracing::error!("stored password hash is not a valid PHC string");
        return false;
    };
    let ok = hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    ok && real
}

/// 1–64 characters, no control characters, no leading/trailing whitespace. Whitespace at the
/// edges is refused rather than trimmed so that what an admin types is exactly the login name.
pub fn validate_username(name: &str) -> Result<(), AuthError> {
    let invalid = |why: &str| Err(AuthError::InvalidUsername(why.to_owned()));
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.chars().count() > MAX_USERNAME_CHARS {
        return invalid("must be at most 64 characters");
    }
    if name.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return invalid("must not start or end with whitespace");
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.is_empty() {
        return Err(AuthError::InvalidPassword("must not be empty".into()));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::InvalidPassword(format!(
            "must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// What `add_user` refuses before spending a hash: a bad name or password.
pub(crate) fn validate_new_user(name: &str, password: &str) -> Result<(), AuthError> {
    validate_username(name)?;
    validate_password(password)
}

/// Inserts `name` with a new generation unless it exists (`false`): the user and their role in
/// one transaction, so a user is never seen without the role they were given.
pub(crate) fn insert_user(
    db: &Database,
    name: &str,
    phc: &str,
    role: Option<Role>,
) -> Result<bool, redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut users = txn.open_table(USERS)?;
        if users.get(name)?.is_some() {
            return Ok(false); // dropping `txn` aborts it
        }
        let mut meta = txn.open_table(META)?;
        let generation = meta.get(NEXT_GENERATION)?.map_or(1, |g| g.value());
        meta.insert(NEXT_GENERATION, generation.saturating_add(1))?;
        users.insert(name, (phc, generation))?;
        let mut roles = txn.open_table(ROLES)?;
        match role {
            Some(role) => {
                roles.insert(name, (role.as_str(), generation))?;
            }
            None => {
                roles.remove(name)?;
            }
        }
    }
    txn.commit()?;
    Ok(true)
}

/// Deletes `name`'s rows; `false` if there was no such user.
pub(crate) fn delete_user(db: &Database, name: &str) -> Result<bool, AuthError> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let removed = {
        let mut users = txn.open_table(USERS).map_err(redb::Error::from)?;
        let old = users.remove(name).map_err(redb::Error::from)?;
        let mut roles = txn.open_table(ROLES).map_err(redb::Error::from)?;
        roles.remove(name).map_err(redb::Error::from)?;
        old.is_some()
    };
    if removed {
        txn.commit().map_err(redb::Error::from)?;
    }
    Ok(removed)
}

/// All users with their roles, sorted by name (redb keeps keys ordered).
pub(crate) fn list_users(db: &Database) -> Result<Vec<(String, Option<Role>)>, AuthError> {
    let txn = db.begin_read().map_err(redb::Error::from)?;
    let users = txn.open_table(USERS).map_err(redb::Error::from)?;
    let roles = txn.open_table(ROLES).map_err(redb::Error::from)?;
    let mut list = Vec::new();
    for entry in users.iter().map_err(redb::Error::from)? {
        let (name, value) = entry.map_err(redb::Error::from)?;
        let (name, (_, generation)) = (name.value(), value.value());
        list.push((name.to_owned(), role_of(&roles, name, generation)?));
    }
    Ok(list)
}

/// A user's record as stored: PHC hash string, generation and role.
pub(crate) struct UserRecord {
    pub phc: String,
    pub generation: u64,
    pub role: Option<Role>,
}

pub(crate) fn lookup(db: &Database, name: &str) -> Result<Option<UserRecord>, AuthError> {
    let txn = db.begin_read().map_err(redb::Error::from)?;
    lookup_in(&txn, name)
}

/// Lookup inside a caller's read transaction, so `verify` sees users and revocations from one
/// consistent snapshot.
pub(crate) fn lookup_in(
    txn: &redb::ReadTransaction,
    name: &str,
) -> Result<Option<UserRecord>, AuthError> {
    let users = txn.open_table(USERS).map_err(redb::Error::from)?;
    let Some(found) = users.get(name).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    let (phc, generation) = found.value();
    let roles = txn.open_table(ROLES).map_err(redb::Error::from)?;
    Ok(Some(UserRecord {
        phc: phc.to_owned(),
        generation,
        role: role_of(&roles, name, generation)?,
    }))
}

/// The role of `name`'s current `generation`. A row for another generation (left by a binary
/// that knew no roles) or with a name this binary does not know grants nothing.
fn role_of(
    roles: &redb::ReadOnlyTable<&'static str, (&'static str, u64)>,
    name: &str,
    generation: u64,
) -> Result<Option<Role>, AuthError> {
    let Some(row) = roles.get(name).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    let (role, row_generation) = row.value();
    if row_generation != generation {
        return Ok(None);
    }
    match role.parse() {
        Ok(role) => Ok(Some(role)),
        Err(why) => {
            tracing::warn!(user = name, "stored role ignored: {why}");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    // The steps of add / remove / list are tested on both stores in `store/tests.rs`; these
    // are the redb table's own rules.
    use super::*;
    use crate::auth::test_util::temp_db;

    #[test]
    fn a_role_row_of_another_generation_or_name_grants_nothing() {
        let (_dir, db) = temp_db();
        let db = std::sync::Arc::clone(db.database());
        let phc = hash_password("pw").expect("hash");
        assert!(insert_user(&db, "alice", &phc, None).expect("add"));
        let generation = lookup(&db, "alice").expect("l").expect("alice").generation;
        let write_role = |role: &str, generation: u64| {
            let txn = db.begin_write().expect("write");
            txn.open_table(ROLES)
                .expect("roles")
                .insert("alice", (role, generation))
                .expect("insert");
            txn.commit().expect("commit");
        };
        // What a binary without roles leaves behind: it removed and re-added the user but kept
        // the row of the earlier generation.
        write_role("ops", generation - 1);
        assert_eq!(lookup(&db, "alice").expect("l").expect("alice").role, None);
        // A role a later version may know.
        write_role("admin", generation);
        assert_eq!(lookup(&db, "alice").expect("l").expect("alice").role, None);
        write_role("ops", generation);
        assert_eq!(
            lookup(&db, "alice").expect("l").expect("alice").role,
            Some(Role::Ops)
        );
    }

    #[test]
    fn role_names_parse_and_unknown_ones_say_which_exist() {
        assert_eq!("ops".parse::<Role>(), Ok(Role::Ops));
        assert_eq!(Role::Ops.to_string(), "ops");
        let err = "Ops".parse::<Role>().expect_err("case matters");
        assert!(err.contains("known: ops"), "{err}");
    }

    #[test]
    fn unknown_user_never_verifies() {
        assert!(!verify_password("anything", None));
        assert!(!verify_password("x", Some("not a phc string")));
    }
}
