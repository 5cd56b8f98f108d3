//! Where the outbox and its dead letters live: this replica's redb file (embedded mode), or Redis
//! (`--redis-url`), where every replica shares one outbox and no replica needs a disk.
//!
//! [`OutboxStore`] is the seam the reporter and the sender see. Both arms keep the same contract:
//!
//! - `push` gives the document a sequence number that is never handed out twice (the redb meta
//!   row; Redis `INCR` on one key for all replicas), builds the fixed `_id` from it, stores both,
//!   and drops the oldest documents beyond the bound in the same atomic step.
//! - `peek` reads the oldest documents without removing them: a document leaves the outbox only
//!   once Elasticsearch confirmed it (`settle`), so a crash in between resends it, and `create`
//!   with the same `_id` turns the resend into a harmless 409.
//! - `settle` removes delivered documents and moves refused ones to the dead letters, bounded
//!   too, atomically.
//! - `take_turn` / `end_turn`: who may send. One process owns a redb file, so it always may; on
//!   Redis a lease lets one replica send at a time (see `redis.rs`).
//!
//! - `redb.rs`: the blocking table functions, run through [`LocalDb::run`].
//! - `redis.rs`: [`RedisOutbox`], keys and Lua scripts.
use std::time::Duration;

use crate::localdb::LocalDb;

use super::ElasticError;

mod redb;
pub mod redis;
#[cfg(test)]
pub(crate) mod redis_tests;

pub use redis::{RedisOutbox, RedisOutboxError};

/// A document waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub seq: u64,
    pub id: String,
    pub source: String,
}

/// Result of a push.
#[derive(Debug)]
pub(crate) struct Pushed {
    pub id: String,
    /// Oldest documents removed to respect the bound (0 or 1 in steady state).
    pub dropped: u64,
    /// The outbox's depth right after, when it is shared (Redis) and so cannot be followed by
    /// this process's own deltas. `None` for redb, where this process is the only writer.
    pub depth: Option<u64>,
}

/// Result of a peek: the oldest documents, and the depth when it is shared (as in [`Pushed`]).
#[derive(Debug, Default)]
pub(crate) struct Peeked {
    pub batch: Vec<Pending>,
    pub depth: Option<u64>,
}

/// Result of a settle.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// Rows that left the outbox (delivered or dead-lettered). Rows that were already gone
    /// (dropped by the bound while in flight) are not counted.
    pub removed: u64,
    /// Rows moved to the dead-letter table.
    pub dead_lettered: u64,
    /// Oldest dead letters removed to respect the bound.
    pub dead_dropped: u64,
    /// The outbox's depth right after, when it is shared (as in [`Pushed`]).
    pub depth: Option<u64>,
}

/// The outbox's storage: hand one to [`super::Reporter::start`] (a [`LocalDb`] converts).
pub enum OutboxStore {
    /// Embedded mode: tables in this replica's `classifier.redb`.
    Redb(LocalDb),
    /// `--redis-url`: one outbox for every replica on the same Redis and prefix (boxed: its
    /// scripts make it large, and the store is made once).
    Redis(Box<RedisOutbox>),
}

impl From<LocalDb> for OutboxStore {
    fn from(db: LocalDb) -> Self {
        Self::Redb(db)
    }
}

impl From<RedisOutbox> for OutboxStore {
    fn from(outbox: RedisOutbox) -> Self {
        Self::Redis(Box::new(outbox))
    }
}

impl OutboxStore {
    /// For the start-up log.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Redb(_) => "redb",
            Self::Redis(_) => "redis",
        }
    }

    /// Prepares the storage (tables, sequence repair) and returns the outbox depth.
    pub(crate) async fn init(&self) -> Result<u64, ElasticError> {
        match self {
            Self::Redb(db) => Ok(db.run(redb::init).await?),
            Self::Redis(r) => Ok(r.init().await?),
        }
    }

    /// Stores `source` under the id `make_id` builds from its sequence number, durably, keeping
    /// at most `max` documents (the oldest go).
    pub(crate) async fn push(
        &self,
        source: String,
        max: usize,
        make_id: impl FnOnce(u64) -> String + Send + 'static,
    ) -> Result<Pushed, ElasticError> {
        match self {
            Self::Redb(db) => Ok(db
                .run(move |db| redb::push(db, &source, max, make_id))
                .await?),
            Self::Redis(r) => Ok(r.push(&source, max, make_id).await?),
        }
    }

    /// The oldest `limit` documents, left in place.
    pub(crate) async fn peek(&self, limit: usize) -> Result<Peeked, ElasticError> {
        match self {
            Self::Redb(db) => Ok(Peeked {
                batch: db.run(move |db| redb::peek(db, limit)).await?,
                depth: None,
            }),
            Self::Redis(r) => Ok(r.peek(limit).await?),
        }
    }

    /// Removes `delivered`, moves `refused` (seq, reason) to the dead letters (at most
    /// `max_dead` kept), in one atomic step. Sequence numbers no longer there are skipped.
    pub(crate) async fn settle(
        &self,
        delivered: Vec<u64>,
        refused: Vec<(u64, String)>,
        now_ms: u64,
        max_dead: usize,
    ) -> Result<Settled, ElasticError> {
        match self {
            Self::Redb(db) => Ok(db
                .run(move |db| redb::settle(db, &delivered, &refused, now_ms, max_dead))
                .await?),
            Self::Redis(r) => Ok(r.settle(&delivered, &refused, now_ms, max_dead).await?),
        }
    }

    /// Whether this sender may send now, for up to `ttl` (renewed by calling again). Always
    /// for redb: one process owns the file.
    pub(crate) async fn take_turn(&self, ttl: Duration) -> Result<bool, ElasticError> {
        match self {
            Self::Redb(_) => Ok(true),
            Self::Redis(r) => Ok(r.take_turn(ttl).await?),
        }
    }

    /// Gives the turn up (idle, or stopping) so another replica need not wait for it to expire.
    /// Best effort: an expired turn frees itself.
    pub(crate) async fn end_turn(&self) {
        if let Self::Redis(r) = self {
            // Already logged by the outbox's health; the lease expires by itself.
            let _ = r.end_turn().await;
        }
    }

    /// How often an idle sender looks again without being woken: never for redb (only this
    /// process enqueues, and it wakes its sender); on Redis other replicas enqueue too, and a
    /// replica that stopped may have left documents behind.
    pub(crate) fn poll_interval(&self) -> Option<Duration> {
        match self {
            Self::Redb(_) => None,
            Self::Redis(_) => Some(redis::IDLE_POLL),
        }
    }

    /// The oldest `limit` dead letters.
    #[cfg(test)]
    pub(crate) async fn dead_letters(
        &self,
        limit: usize,
    ) -> Result<Vec<super::test_support::DeadLetter>, ElasticError> {
        match self {
            Self::Redb(db) => Ok(db
                .run(move |db| super::test_support::dead_letters(db, limit))
                .await?),
            Self::Redis(r) => Ok(r.dead_letters(limit).await?),
        }
    }

    /// The waiting documents, oldest first (at most `limit`).
    #[cfg(test)]
    pub(crate) async fn pending(&self, limit: usize) -> Vec<Pending> {
        self.peek(limit).await.expect("outbox readable").batch
    }
}
