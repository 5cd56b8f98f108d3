//! Deletes expired cache rows from disk. Expired rows are never served (readers check expiry);
//! this only keeps the file from growing with them.
use redb::{Database, ReadableTable};

use crate::localdb::schema::{CACHE, CACHE_EXPIRY};
use crate::localdb::{DbError, LocalDb};

/// Deletes every row that expired at or before `now`, in transactions of at most `chunk` rows,
/// so a large backlog never makes one huge commit. Returns how many rows were deleted.
pub(super) async fn purge_expired(db: &LocalDb, now: u64, chunk: usize) -> Result<usize, DbError> {
    let chunk = chunk.max(1);
    let mut total = 0;
    loop {
        let removed = db.run(move |db| purge_chunk(db, now, chunk)).await?;
        total += removed;
        if removed < chunk {
            return Ok(total);
        }
    }
}

/// Deletes up to `limit` rows that expired at or before `now`, from the cache table and the
/// expiry index, in one transaction.
fn purge_chunk(db: &Database, now: u64, limit: usize) -> Result<usize, DbError> {
    let txn = db.begin_write()?;
    let removed;
    {
        let mut expiry = txn.open_table(CACHE_EXPIRY)?;
        let mut cache = txn.open_table(CACHE)?;
        // Keys sort by expiry first, so everything below (now + 1, "") has expired.
        let mut expired: Vec<(u64, String)> = Vec::new();
        for item in expiry
            .range::<(u64, &str)>(..(now.saturating_add(1), ""))?
            .take(limit)
        {
            let (key, _) = item?;
            let (expires_at_ms, url) = key.value();
            expired.push((expires_at_ms, url.to_owned()));
        }
        for (expires_at_ms, url) in &expired {
            expiry.remove((*expires_at_ms, url.as_str()))?;
            // Only delete the row this index key belongs to.
            let current = cache.get(url.as_str())?.map(|g| g.value().2);
            if current == Some(*expires_at_ms) {
                cache.remove(url.as_str())?;
            }
        }
        removed = expired.len();
    }
    txn.commit()?;
    Ok(removed)
}
