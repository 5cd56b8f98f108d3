//! The one background task that hands request statistics to the backend, in batches, whatever
//! the backend is.
//!
//! Request handlers only touch an in-memory batch under a short mutex: [`Batcher::record`] never
//! waits for I/O. The task applies the batch every `flush_interval`, or as soon as
//! `flush_max_updates` requests are pending, so the cost of a commit (an fsync, a round trip) is
//! shared by every request of the batch.
//!
//! Durability window: a request is in the backend once its batch is applied, i.e. within one
//! flush interval (100 ms by default). A SIGKILL can lose at most the last interval's requests
//! (plus, while applies are failing, the batch being retried); a graceful shutdown loses nothing.
//!
//! While applies fail (a Redis outage), requests keep gathering here, up to `max_pending_urls`
//! URL rows in all (pending and unapplied): a request that would need another row is dropped
//! and counted (`classifier_stats_dropped_total`), with one warning when dropping starts and one
//! line when an apply succeeds again. Requests for URLs already in the pending batch are always
//! kept: they cost no memory.
//!
//! Every batch carries a sequence number that the backend stores with it. A failed batch is
//! retried under its own number before anything newer, so a retry after an apply whose success
//! was not seen is a no-op instead of a double count; readers add exactly the batches a snapshot
//! lacks (see [`PendingView`]).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::agg::StatsBatch;
use super::backend::StatsStore;
use super::{ticker, StorageConfig, StorageError};
use crate::metrics::STATS_DROPPED;
use crate::sync::lock;

struct State {
    pending: StatsBatch,
    /// Sequence number the pending batch will be applied under.
    pending_seq: u64,
    /// A batch taken from `pending` whose apply is running or failed; retried first.
    unapplied: Option<(u64, Arc<StatsBatch>)>,
    /// `flush()` callers waiting for the pending batch to be applied.
    flush_waiters: Vec<oneshot::Sender<Result<(), StorageError>>>,
    /// Set once the task has begun its final apply; later requests are refused.
    closed: bool,
    /// Requests dropped since the rows waiting reached the bound; reported and reset once an
    /// apply succeeds.
    dropped: u64,
}

impl State {
    /// Whether a request for `url` can be kept within `max_urls` rows waiting.
    fn has_room_for(&self, url: &str, max_urls: usize) -> bool {
        let unapplied = self.unapplied.as_ref().map_or(0, |(_, b)| b.per_url.len());
        self.pending.per_url.contains_key(url) || self.pending.per_url.len() + unapplied < max_urls
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task early: batch full, flush requested.
    wake: Notify,
    max_updates: usize,
    max_urls: usize,
}

/// Handle to the batching task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// What a reader must add to a backend snapshot: the batches whose requests were acknowledged
/// but may not be in the snapshot yet.
pub(crate) struct PendingView {
    unapplied: Option<(u64, Arc<StatsBatch>)>,
    pending_seq: u64,
    pending: StatsBatch,
}

impl PendingView {
    /// URLs with requests not yet known to be applied.
    pub(crate) fn urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.pending.per_url.keys().cloned().collect();
        if let Some((_, batch)) = &self.unapplied {
            urls.extend(
                batch
                    .per_url
                    .keys()
                    .filter(|u| !self.pending.per_url.contains_key(*u))
                    .cloned(),
            );
        }
        urls
    }

    /// The requests a snapshot whose last applied batch is `applied_seq` does not contain.
    pub(crate) fn after(&self, applied_seq: u64) -> StatsBatch {
        let mut out = StatsBatch::default();
        if let Some((seq, batch)) = &self.unapplied {
            if *seq > applied_seq {
                out.merge(batch);
            }
        }
        if self.pending_seq > applied_seq {
            out.merge(&self.pending);
        }
        out
    }
}

impl Batcher {
    /// Spawns the task, with `config`'s flush interval and bounds. Sequence numbers continue
    /// after `last_seq` (what the backend holds). The task stops when `shutdown` turns true or
    /// its sender is dropped, after applying everything pending; its result is that final
    /// apply's.
    pub(crate) fn start<S: StatsStore>(
        store: Arc<S>,
        last_seq: u64,
        config: &StorageConfig,
        shutdown: watch::Receiver<bool>,
    ) -> (Batcher, JoinHandle<Result<(), StorageError>>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: StatsBatch::default(),
                pending_seq: last_seq + 1,
                unapplied: None,
                flush_waiters: Vec::new(),
                closed: false,
                dropped: 0,
            }),
            wake: Notify::new(),
            max_updates: config.flush_max_updates.max(1),
            max_urls: config.max_pending_urls.max(1),
        });
        let interval = config.flush_interval;
        let task = tokio::spawn(run(Arc::clone(&shared), store, interval, shutdown));
        (Batcher { shared }, task)
    }

    /// Adds one successful request, answered in Unix minute `minute`, to the pending batch. Never
    /// blocks on I/O.
    pub(crate) fn record(&self, url: &str, secs: f64, minute: u64) {
        let full = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                drop(state);
                tracing::warn!("storage is shut down; dropping a request's statistics");
                return;
            }
            if !state.has_room_for(url, self.shared.max_urls) {
                state.dropped += 1;
                let first = state.dropped == 1;
                drop(state);
                self.overflowed(first);
                return;
            }
            state.pending.record(url, secs, minute);
            state.pending.requests >= self.shared.max_updates
        };
        if full {
            self.shared.wake.notify_one();
        }
    }

    /// Applies everything recorded before this call and waits for that apply.
    pub(crate) async fn flush(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(StorageError::Closed);
            }
            state.flush_waiters.push(tx);
        }
        self.shared.wake.notify_one();
        // The sender is dropped unanswered only if the task died.
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// A request was dropped for want of room (rare: only while applies fail, so the `counter!`
    /// lookup per call costs nothing that matters).
    fn overflowed(&self, first: bool) {
        metrics::counter!(STATS_DROPPED).increment(1);
        if first {
            tracing::warn!(
                max_pending_urls = self.shared.max_urls,
                "statistics buffer full while they cannot be applied; dropping requests for new URLs until they can"
            );
        }
    }

    pub(crate) fn pending_view(&self) -> PendingView {
        let state = lock(&self.shared.state);
        PendingView {
            unapplied: state.unapplied.clone(),
            pending_seq: state.pending_seq,
            pending: state.pending.clone(),
        }
    }
}

/// Marks the batcher closed however its task ends, even by a panic: requests are then refused
/// instead of piling up with no one to apply them, and waiting flushes fail instead of hanging.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.closed = true;
        // Dropping the senders answers their flush() with `Closed`.
        state.flush_waiters.clear();
    }
}

async fn run<S: StatsStore>(
    shared: Arc<Shared>,
    store: Arc<S>,
    flush_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StorageError> {
    let _close = CloseOnExit(Arc::clone(&shared));
    let mut tick = ticker(flush_interval);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = shared.wake.notified() => false,
            // Err: the Storage (sender) is gone, which also means stop.
            changed = shutdown.changed() => changed.is_err() || *shutdown.borrow(),
        };
        if stopping {
            // Refuse new requests first, so the final apply really is final.
            lock(&shared.state).closed = true;
            let result = flush_round(&shared, &*store).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "final statistics apply failed; the last requests are lost");
            }
            return result;
        }
        if let Err(e) = flush_round(&shared, &*store).await {
            if e.is_outage() {
                tracing::debug!(error = %e, "applying statistics failed; kept for the next batch");
            } else {
                tracing::error!(error = %e, "applying statistics failed; will retry with the next batch");
            }
        }
    }
}

/// Applies what is waiting and answers the flushes registered before it began.
async fn flush_round<S: StatsStore>(shared: &Shared, store: &S) -> Result<(), StorageError> {
    let waiters = std::mem::take(&mut lock(&shared.state).flush_waiters);
    let result = apply_waiting(shared, store).await;
    for w in waiters {
        let _ = w.send(result.clone());
    }
    result
}

/// The failed batch first (under its own sequence number), then the pending one. On failure the
/// batch stays `unapplied` and newer requests keep gathering in `pending` behind it.
async fn apply_waiting<S: StatsStore>(shared: &Shared, store: &S) -> Result<(), StorageError> {
    let retry = lock(&shared.state).unapplied.clone();
    if let Some((seq, batch)) = retry {
        store.apply(seq, batch).await?;
        applied(shared);
    }
    let (seq, batch) = {
        let mut state = lock(&shared.state);
        if state.pending.is_empty() {
            return Ok(());
        }
        let batch = Arc::new(std::mem::take(&mut state.pending));
        let seq = state.pending_seq;
        state.pending_seq += 1;
        // Stays visible to readers until it is applied.
        state.unapplied = Some((seq, Arc::clone(&batch)));
        (seq, batch)
    };
    store.apply(seq, batch).await?;
    applied(shared);
    Ok(())
}

/// The batch in flight is in the store: it stops counting against the bound, and if requests
/// were dropped meanwhile, the log says how many, once.
fn applied(shared: &Shared) {
    let dropped = {
        let mut state = lock(&shared.state);
        state.unapplied = None;
        std::mem::take(&mut state.dropped)
    };
    if dropped > 0 {
        tracing::info!(
            dropped,
            "statistics apply again; requests dropped while their buffer was full are lost"
        );
    }
}
