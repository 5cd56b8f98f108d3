//! Every table of `classifier.redb`, in one list, created when the file is opened.
//!
//! The names and types are the on-disk format: an install's existing file opens unchanged as long
//! as they stay as they are. A change of type needs a new name (the `_v1` suffix) and a migration.
//!
//! | table                   | owner          | key                     | value                               |
//! |-------------------------|----------------|-------------------------|-------------------------------------|
//! | `cache_v1`              | storage (redb) | normalized URL          | (label, confidence, expires ms)     |
//! | `cache_expiry_v1`       | storage (redb) | (expires ms, URL)       | ()                                  |
//! | `url_stats_v1`          | storage (redb) | normalized URL          | (count, min, max, sum) seconds      |
//! | `url_stats_by_count_v1` | storage (redb) | (u64::MAX - count, URL) | ()                                  |
//! | `stats_totals_v1`       | storage (redb) | ()                      | (count, min, max, sum) seconds      |
//! | `storage_meta_v1`       | storage (redb) | name                    | u64 (`writer_seq`)                  |
//! | `auth_users`            | auth           | username                | (PHC hash, generation)              |
//! | `auth_meta`             | auth           | name                    | u64 (`next_generation`)             |
//! | `auth_roles`            | auth           | username                | (role, generation)                  |
//! | `auth_revoked_tokens`   | auth           | revocation id           | revoked at (unix ms)                |
//! | `es_outbox_v1`          | elastic        | sequence                | (document id, JSON source)          |
//! | `es_dead_letter_v1`     | elastic        | sequence                | (id, JSON source, reason, ms)       |
//! | `es_meta_v1`            | elastic        | name                    | u64 (`next_seq`)                    |
//!
//! The two index tables exist so that neither purging expired entries nor the top-N report ever
//! scans every URL: both read a prefix of an ordered index instead.
use redb::{TableDefinition, WriteTransaction};

/// Cache key (normalized URL or content key) → (label, confidence, absolute expiry in unix millis,
/// the runners-up as (label, confidence), highest first).
pub(crate) const CACHE: TableDefinition<&str, CacheRow> = TableDefinition::new("cache_v2");
pub(crate) type CacheRow = (&'static str, f32, u64, Vec<(&'static str, f32)>);
/// The previous cache, top-1 only. Dropped at open (with its expiry index): its entries cannot
/// answer `top_k`, and recomputing each at most once is cheaper than serving a short list.
const CACHE_V1: TableDefinition<&str, (&str, f32, u64)> = TableDefinition::new("cache_v1");
/// (expiry in unix millis, URL) → (). Ordered by expiry, so the purge reads only the expired prefix.
pub(crate) const CACHE_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("cache_expiry_v1");
/// Normalized URL → (count, min, max, sum) of processing times in seconds.
pub(crate) const URL_STATS: TableDefinition<&str, (u64, f64, f64, f64)> =
    TableDefinition::new("url_stats_v1");
/// (u64::MAX - count, URL) → (). Ascending iteration yields count descending, then URL ascending,
/// which is exactly the report order, so the top N are the first N keys.
pub(crate) const URL_STATS_BY_COUNT: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("url_stats_by_count_v1");
/// Single row: (count, min, max, sum) across all URLs.
pub(crate) const STATS_TOTALS: TableDefinition<(), (u64, f64, f64, f64)> =
    TableDefinition::new("stats_totals_v1");
/// Small named counters of the storage layer (see [`WRITER_SEQ`]).
pub(crate) const STORAGE_META: TableDefinition<&str, u64> = TableDefinition::new("storage_meta_v1");
/// Sequence number of the last statistics batch applied. Stored in the batch's own transaction,
/// so a reader's snapshot tells exactly which in-memory batches it already contains.
pub(crate) const WRITER_SEQ: &str = "writer_seq";

/// Username → (PHC-encoded Argon2id hash, generation). The generation is baked into every token
/// minted for the user, so removing and re-adding a user invalidates the old tokens.
pub(crate) const USERS: TableDefinition<&str, (&str, u64)> = TableDefinition::new("auth_users");
/// Named counters of auth (`next_generation`).
pub(crate) const AUTH_META: TableDefinition<&str, u64> = TableDefinition::new("auth_meta");
/// Username → (role name, the user's generation) for users with a role; a user without a row is
/// a plain user, as every user was before roles existed. The role counts only while the
/// generation matches the user's: a row a binary without roles left behind when it removed and
/// re-added the user grants nothing.
pub(crate) const ROLES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("auth_roles");
/// Revocation id (block signature bytes) → when it was revoked (unix millis), kept so a future
/// cleanup job can drop entries older than the longest TTL ever configured.
pub(crate) const REVOKED: TableDefinition<&[u8], u64> = TableDefinition::new("auth_revoked_tokens");

/// Sequence → (document id, JSON source). Keys grow with every enqueue, so iteration order is
/// enqueue order: the sender sends the oldest first and the bound drops the oldest first.
pub(crate) const OUTBOX: TableDefinition<u64, (&str, &str)> = TableDefinition::new("es_outbox_v1");
/// Sequence → (document id, JSON source, Elasticsearch's reason, refused at unix millis).
pub(crate) const DEAD_LETTERS: TableDefinition<u64, (&str, &str, &str, u64)> =
    TableDefinition::new("es_dead_letter_v1");
/// Named counters of the Elasticsearch outbox.
pub(crate) const ES_META: TableDefinition<&str, u64> = TableDefinition::new("es_meta_v1");
/// Next outbox sequence number. Persisted (not derived from the outbox's last key) because the
/// outbox is empty most of the time, and reusing a number would reuse a document id that is
/// already in the index: the new document would be taken for a duplicate and silently lost.
pub(crate) const NEXT_SEQ: &str = "next_seq";

/// Opens (so creates) every table. Doing it once at open means readers never meet a missing
/// table, and a type mismatch surfaces at startup rather than mid-request.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<(), redb::TableError> {
    if txn.delete_table(CACHE_V1)? {
        txn.delete_table(CACHE_EXPIRY)?;
    }
    txn.open_table(CACHE)?;
    txn.open_table(CACHE_EXPIRY)?;
    txn.open_table(URL_STATS)?;
    txn.open_table(URL_STATS_BY_COUNT)?;
    txn.open_table(STATS_TOTALS)?;
    txn.open_table(STORAGE_META)?;
    txn.open_table(USERS)?;
    txn.open_table(AUTH_META)?;
    txn.open_table(ROLES)?;
    txn.open_table(REVOKED)?;
    txn.open_table(OUTBOX)?;
    txn.open_table(DEAD_LETTERS)?;
    txn.open_table(ES_META)?;
    Ok(())
}
