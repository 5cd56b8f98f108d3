//! The outbox and dead-letter tables in this replica's redb file (embedded mode). Every function
//! here is blocking redb work: [`super::OutboxStore`] calls it through
//! [`crate::localdb::LocalDb::run`], never on an async worker thread.
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

use super::{Pending, Pushed, Settled};
use crate::localdb::schema::{DEAD_LETTERS, ES_META, NEXT_SEQ, OUTBOX};
use crate::localdb::DbError;

/// Creates the tables, repairs the sequence if needed, and returns the outbox depth.
pub(crate) fn init(db: &Database) -> Result<u64, DbError> {
    let txn = db.begin_write()?;
    let depth;
    {
        let outbox = txn.open_table(OUTBOX)?;
        let dead = txn.open_table(DEAD_LETTERS)?;
        let mut meta = txn.open_table(ES_META)?;
        // The next sequence must stay above every key in use, or a new document would overwrite a
        // waiting one. It always is unless the meta row was lost; this makes that harmless.
        let above = |last: Option<u64>| last.map_or(0, |k| k.saturating_add(1));
        let floor = above(outbox.last()?.map(|(k, _)| k.value()))
            .max(above(dead.last()?.map(|(k, _)| k.value())));
        let next = meta.get(NEXT_SEQ)?.map_or(0, |g| g.value());
        if next < floor {
            meta.insert(NEXT_SEQ, floor)?;
        }
        depth = outbox.len()?;
    }
    txn.commit()?;
    Ok(depth)
}

/// Appends one document in its own (durable) transaction and drops the oldest beyond `max`.
/// `make_id` receives the document's sequence number.
pub(crate) fn push(
    db: &Database,
    source: &str,
    max: usize,
    make_id: impl FnOnce(u64) -> String,
) -> Result<Pushed, DbError> {
    let txn = db.begin_write()?;
    let pushed;
    {
        let mut meta = txn.open_table(ES_META)?;
        let seq = meta.get(NEXT_SEQ)?.map_or(0, |g| g.value());
        meta.insert(NEXT_SEQ, seq.saturating_add(1))?;
        let id = make_id(seq);
        let mut outbox = txn.open_table(OUTBOX)?;
        outbox.insert(seq, (id.as_str(), source))?;
        let dropped = trim(&mut outbox, max)?;
        pushed = Pushed {
            id,
            dropped,
            depth: None,
        };
    }
    txn.commit()?;
    Ok(pushed)
}

/// The oldest `limit` documents, without removing them.
pub(crate) fn peek(db: &Database, limit: usize) -> Result<Vec<Pending>, DbError> {
    let txn = db.begin_read()?;
    let outbox = txn.open_table(OUTBOX)?;
    let mut out = Vec::with_capacity(limit.min(1024));
    for row in outbox.iter()?.take(limit) {
        let (k, v) = row?;
        let (id, source) = v.value();
        out.push(Pending {
            seq: k.value(),
            id: id.to_owned(),
            source: source.to_owned(),
        });
    }
    Ok(out)
}

/// Removes delivered documents and moves refused ones (seq, reason) to the dead-letter table, in
/// one transaction. If this commit fails the documents are simply sent again later, which
/// `create` with the same `_id` turns into a harmless 409.
pub(crate) fn settle(
    db: &Database,
    delivered: &[u64],
    refused: &[(u64, String)],
    now_ms: u64,
    max_dead: usize,
) -> Result<Settled, DbError> {
    let txn = db.begin_write()?;
    let mut settled = Settled::default();
    {
        let mut outbox = txn.open_table(OUTBOX)?;
        let mut dead = txn.open_table(DEAD_LETTERS)?;
        for seq in delivered {
            if outbox.remove(seq)?.is_some() {
                settled.removed += 1;
            }
        }
        for (seq, reason) in refused {
            if let Some(row) = outbox.remove(seq)? {
                let (id, source) = row.value();
                dead.insert(seq, (id, source, reason.as_str(), now_ms))?;
                settled.removed += 1;
                settled.dead_lettered += 1;
            }
        }
        settled.dead_dropped = trim(&mut dead, max_dead)?;
    }
    txn.commit()?;
    Ok(settled)
}

/// Pops the lowest keys (the oldest rows) until at most `max` remain; returns how many went.
fn trim<V: redb::Value + 'static>(
    table: &mut Table<'_, u64, V>,
    max: usize,
) -> Result<u64, DbError> {
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    let mut removed = 0;
    while table.len()? > max {
        if table.pop_first()?.is_none() {
            break;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elastic::test_support::dead_letters;
    use crate::localdb::LocalDb;

    fn open() -> (tempfile::TempDir, LocalDb) {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalDb::open(tmp.path()).unwrap();
        init(store.database()).unwrap();
        (tmp, store)
    }

    #[test]
    fn push_peek_settle_round_trip() {
        let (_tmp, store) = open();
        let db = store.database();
        for i in 0..4 {
            let p = push(db, &format!("{{\"n\":{i}}}"), 10, |s| format!("id-{s}")).unwrap();
            assert_eq!((p.id, p.dropped), (format!("id-{i}"), 0));
        }
        let batch = peek(db, 3).unwrap();
        assert_eq!(
            batch.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["id-0", "id-1", "id-2"]
        );
        assert_eq!(batch[1].source, "{\"n\":1}");

        let s = settle(
            db,
            &[0, 2, 99],
            &[(1, "mapper_parsing_exception: x".into())],
            5,
            10,
        )
        .unwrap();
        assert_eq!((s.removed, s.dead_lettered, s.dead_dropped), (3, 1, 0));
        let rest = peek(db, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, "id-3");
        let dead = dead_letters(db, 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].id, "id-1");
        assert_eq!(dead[0].reason, "mapper_parsing_exception: x");
        assert_eq!(dead[0].rejected_at, "1970-01-01T00:00:00.005Z");
    }

    #[test]
    fn bound_drops_the_oldest() {
        let (_tmp, store) = open();
        let db = store.database();
        let dropped: u64 = (0..8)
            .map(|_| push(db, "{}", 5, |s| s.to_string()).unwrap().dropped)
            .sum();
        assert_eq!(dropped, 3);
        let ids: Vec<String> = peek(db, 100).unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["3", "4", "5", "6", "7"]);
    }

    #[test]
    fn sequence_survives_reopen_and_empty_outbox() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = LocalDb::open(tmp.path()).unwrap();
            init(store.database()).unwrap();
            push(store.database(), "{}", 10, |s| s.to_string()).unwrap();
            settle(store.database(), &[0], &[], 0, 10).unwrap();
        }
        let store = LocalDb::open(tmp.path()).unwrap();
        assert_eq!(init(store.database()).unwrap(), 0);
        // Not 0 again: an id already in Elasticsearch would turn the new document into a 409.
        let p = push(store.database(), "{}", 10, |s| s.to_string()).unwrap();
        assert_eq!(p.id, "1");
    }
}
