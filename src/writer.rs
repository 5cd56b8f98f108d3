//! The one background task that writes request statistics and fresh cache entries to disk.
//!
//! Request handlers only touch an in-memory batch under a short mutex: [`Writer::record`] and
//! [`Writer::put_cache`] never wait for the disk. The task commits the batch in one redb
//! transaction every `flush_interval`, or as soon as `flush_max_updates` updates are pending, so
//! the cost of an fsync is shared by every update of the batch.
//!
//! Durability window: an update is on disk once the batch containing it is committed, i.e. within
//! one flush interval (100 ms by default). A SIGKILL or power loss can lose at most the updates of
//! the last interval (plus, if commits are failing, the batches retried since); a graceful
//! [`crate::store::Storage::shutdown`] loses nothing.
//!
//! Readers of the statistics see uncommitted updates too: each committed batch stores its sequence
//! number in the same transaction, so a reader can take a snapshot and add exactly the in-memory
//! batches the snapshot does not yet contain (see [`PendingView`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::store::{
    Store, StoreError, CACHE, CACHE_EXPIRY, STATS_TOTALS, STORAGE_META, URL_STATS,
    URL_STATS_BY_COUNT, WRITER_SEQ,
};

/// Count, min, max and sum of processing times (seconds). Merging is associative and commutative,
/// which is what lets batches be combined, retried and added to committed rows in any order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl Agg {
    pub const EMPTY: Agg = Agg {
        count: 0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        sum: 0.0,
    };

    pub fn one(secs: f64) -> Agg {
        Agg {
            count: 1,
            min: secs,
            max: secs,
            sum: secs,
        }
    }

    pub fn merge(&mut self, other: &Agg) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub(crate) fn from_row(row: (u64, f64, f64, f64)) -> Agg {
        let (count, min, max, sum) = row;
        Agg {
            count,
            min,
            max,
            sum,
        }
    }

    pub(crate) fn to_row(self) -> (u64, f64, f64, f64) {
        (self.count, self.min, self.max, self.sum)
    }
}

/// A cache entry waiting to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRow {
    pub label: String,
    pub confidence: f32,
    pub expires_at_ms: u64,
}

/// Updates not yet committed, aggregated: one stats delta per URL, one cache row per URL.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) stats: HashMap<String, Agg>,
    pub(crate) totals: Option<Agg>,
    pub(crate) cache_puts: HashMap<String, CacheRow>,
    updates: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.updates == 0
    }

    /// Puts a failed batch back in front of newer updates so the next commit retries it.
    fn absorb_failed(&mut self, failed: &Batch) {
        for (url, delta) in &failed.stats {
            self.stats
                .entry(url.clone())
                .or_insert(Agg::EMPTY)
                .merge(delta);
        }
        if let Some(t) = &failed.totals {
            self.totals.get_or_insert(Agg::EMPTY).merge(t);
        }
        for (url, row) in &failed.cache_puts {
            // A newer put for the same URL wins: it expires later.
            self.cache_puts
                .entry(url.clone())
                .or_insert_with(|| row.clone());
        }
        self.updates += failed.updates;
    }
}

struct State {
    pending: Batch,
    /// Sequence number the pending batch will be committed under.
    pending_seq: u64,
    /// The batch being committed right now, with its sequence number.
    inflight: Option<(u64, Arc<Batch>)>,
    /// `flush()` callers waiting for the pending batch to be committed.
    flush_waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    /// Set once the writer has begun its final commit; later updates are refused.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task early: batch full, flush requested.
    wake: Notify,
    max_updates: usize,
    /// Test hook: make the next N commits fail, to check that nothing is lost.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections only move data around; a panic in one leaves a usable state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Handle to the batched writer. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// What a reader must add to a committed snapshot: the batches whose updates were acknowledged but
/// may not be in the snapshot yet.
pub(crate) struct PendingView {
    inflight: Option<(u64, Arc<Batch>)>,
    pending_seq: u64,
    pending_stats: HashMap<String, Agg>,
    pending_totals: Option<Agg>,
}

impl PendingView {
    /// Per-URL deltas not contained in a snapshot whose last committed batch is `committed_seq`.
    pub(crate) fn stats_after(&self, committed_seq: u64) -> HashMap<String, Agg> {
        let mut out = HashMap::new();
        if let Some((seq, batch)) = &self.inflight {
            if *seq > committed_seq {
                for (url, d) in &batch.stats {
                    out.insert(url.clone(), *d);
                }
            }
        }
        if self.pending_seq > committed_seq {
            for (url, d) in &self.pending_stats {
                out.entry(url.clone()).or_insert(Agg::EMPTY).merge(d);
            }
        }
        out
    }

    /// Totals delta not contained in a snapshot whose last committed batch is `committed_seq`.
    pub(crate) fn totals_after(&self, committed_seq: u64) -> Agg {
        let mut out = Agg::EMPTY;
        if let Some((seq, batch)) = &self.inflight {
            if *seq > committed_seq {
                if let Some(t) = &batch.totals {
                    out.merge(t);
                }
            }
        }
        if self.pending_seq > committed_seq {
            if let Some(t) = &self.pending_totals {
                out.merge(t);
            }
        }
        out
    }
}

/// Last committed batch sequence number in a snapshot (0 before the first commit).
pub(crate) fn committed_seq(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(STORAGE_META)?;
    Ok(meta.get(WRITER_SEQ)?.map_or(0, |g| g.value()))
}

impl Writer {
    /// Spawns the writer task. It stops when `shutdown` turns true or its sender is dropped, after
    /// committing everything pending; the task's result is that final commit's.
    pub async fn start(
        store: Store,
        flush_interval: Duration,
        max_updates: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Writer, JoinHandle<Result<(), StoreError>>), StoreError> {
        // Continue the sequence of the previous run: readers compare it with the file's.
        let last_seq = store.run(|db| committed_seq(&db.begin_read()?)).await?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Batch::default(),
                pending_seq: last_seq + 1,
                inflight: None,
                flush_waiters: Vec::new(),
                closed: false,
            }),
            wake: Notify::new(),
            max_updates: max_updates.max(1),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicUsize::new(0),
        });
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            store,
            // interval() panics on zero.
            flush_interval.max(Duration::from_millis(1)),
            shutdown,
        ));
        Ok((Writer { shared }, task))
    }

    /// Adds one successful request to the pending statistics. Never blocks on I/O.
    pub fn record(&self, url: &str, secs: f64) {
        self.update(|batch| {
            batch
                .stats
                .entry(url.to_owned())
                .or_insert(Agg::EMPTY)
                .merge(&Agg::one(secs));
            batch
                .totals
                .get_or_insert(Agg::EMPTY)
                .merge(&Agg::one(secs));
        });
    }

    /// Queues a fresh cache entry for disk. Never blocks on I/O.
    pub fn put_cache(&self, url: String, row: CacheRow) {
        self.update(|batch| {
            batch.cache_puts.insert(url, row);
        });
    }

    fn update(&self, apply: impl FnOnce(&mut Batch)) {
        let full = {
            let mut state = self.shared.lock();
            if state.closed {
                drop(state);
                tracing::warn!("storage is shut down; dropping an update");
                return;
            }
            apply(&mut state.pending);
            state.pending.updates += 1;
            state.pending.updates >= self.shared.max_updates
        };
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Commits everything submitted before this call and waits for that commit.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(StoreError::Closed);
            }
            state.flush_waiters.push(tx);
        }
        self.shared.wake.notify_one();
        // The sender is dropped unanswered only if the task died.
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// The uncommitted statistics, for readers that must reflect every acknowledged update.
    pub(crate) fn pending_view(&self) -> PendingView {
        let state = self.shared.lock();
        PendingView {
            inflight: state.inflight.clone(),
            pending_seq: state.pending_seq,
            pending_stats: state.pending.stats.clone(),
            pending_totals: state.pending.totals,
        }
    }

    #[cfg(test)]
    pub(crate) fn fail_next_commits(&self, n: usize) {
        self.shared
            .fail_commits
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Marks the writer closed however its task ends, even by a panic: updates are then refused
/// instead of piling up with no one to commit them, and waiting flushes fail instead of hanging.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        // Dropping the senders answers their flush() with `Closed`.
        state.flush_waiters.clear();
    }
}

async fn run(
    shared: Arc<Shared>,
    store: Store,
    flush_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let _close = CloseOnExit(Arc::clone(&shared));
    // First commit one interval after start (`interval` would fire at once).
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + flush_interval, flush_interval);
    // After a slow commit, wait a full interval rather than firing a burst of catch-up ticks.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shared.wake.notified() => false,
            // Err: the Storage (sender) is gone, which also means stop.
            changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
        };
        if stopping {
            // Refuse new updates first, so the final commit really is final.
            shared.lock().closed = true;
            let result = commit_pending(&shared, &store).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "final storage commit failed; the last updates are lost");
            }
            // Flushes registered before closing were answered by the final commit; later ones
            // were refused by the `closed` check.
            return result;
        }
        if let Err(e) = commit_pending(&shared, &store).await {
            // Kept in memory and retried with the next batch; see commit_pending.
            tracing::error!(error = %e, "storage commit failed; will retry with the next batch");
        }
    }
}

/// Commits the pending batch, if any, and answers the flushes waiting for it. On failure the batch
/// is merged back into the pending one so the next commit retries it.
async fn commit_pending(shared: &Arc<Shared>, store: &Store) -> Result<(), StoreError> {
    let (seq, batch, waiters) = {
        let mut state = shared.lock();
        let waiters = std::mem::take(&mut state.flush_waiters);
        if state.pending.is_empty() {
            drop(state);
            for w in waiters {
                let _ = w.send(Ok(()));
            }
            return Ok(());
        }
        let batch = Arc::new(std::mem::take(&mut state.pending));
        let seq = state.pending_seq;
        state.pending_seq += 1;
        // Stays visible to readers until it is in the file (or back in `pending`).
        state.inflight = Some((seq, Arc::clone(&batch)));
        (seq, batch, waiters)
    };

    #[cfg(test)]
    let inject_failure = shared
        .fail_commits
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        )
        .is_ok();
    #[cfg(not(test))]
    let inject_failure = false;

    let to_write = Arc::clone(&batch);
    let result = if inject_failure {
        Err(StoreError::Task("injected commit failure".into()))
    } else {
        store.run(move |db| write_batch(db, seq, &to_write)).await
    };

    {
        let mut state = shared.lock();
        state.inflight = None;
        if result.is_err() {
            state.pending.absorb_failed(&batch);
        }
    }
    for w in waiters {
        let _ = w.send(result.clone());
    }
    result
}

fn write_batch(db: &Database, seq: u64, batch: &Batch) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut cache = txn.open_table(CACHE)?;
        let mut expiry = txn.open_table(CACHE_EXPIRY)?;
        for (url, row) in &batch.cache_puts {
            let old_expiry = cache
                .insert(
                    url.as_str(),
                    (row.label.as_str(), row.confidence, row.expires_at_ms),
                )?
                .map(|g| g.value().2);
            // Keep the index exact: one expiry key per cache row.
            if let Some(old) = old_expiry {
                if old != row.expires_at_ms {
                    expiry.remove((old, url.as_str()))?;
                }
            }
            expiry.insert((row.expires_at_ms, url.as_str()), ())?;
        }

        let mut stats = txn.open_table(URL_STATS)?;
        let mut by_count = txn.open_table(URL_STATS_BY_COUNT)?;
        for (url, delta) in &batch.stats {
            let old = stats.get(url.as_str())?.map(|g| Agg::from_row(g.value()));
            let mut new = old.unwrap_or(Agg::EMPTY);
            new.merge(delta);
            stats.insert(url.as_str(), new.to_row())?;
            // The index key embeds the count, so a count change moves the key.
            if let Some(old) = old {
                by_count.remove((u64::MAX - old.count, url.as_str()))?;
            }
            by_count.insert((u64::MAX - new.count, url.as_str()), ())?;
        }

        if let Some(delta) = &batch.totals {
            let mut totals = txn.open_table(STATS_TOTALS)?;
            let mut new = totals
                .get(())?
                .map_or(Agg::EMPTY, |g| Agg::from_row(g.value()));
            new.merge(delta);
            totals.insert((), new.to_row())?;
        }

        txn.open_table(STORAGE_META)?.insert(WRITER_SEQ, seq)?;
    }
    txn.commit()?;
    Ok(())
}
