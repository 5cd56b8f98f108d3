//! Single flight: concurrent requests for one uncached key cause one backend lookup and at most
//! one computation, in this process (a map of flights) and across processes sharing a backend
//! (the backend's lease on the key).
//!
//! - A failure reaches everyone waiting on that flight and is never cached: the next request
//!   computes again. Waiting replicas do not share another replica's errors; they compute.
//! - The computation runs in a spawned task, so a client that goes away neither cancels the
//!   work others wait for nor strands them (one that goes away during the backend lookup before
//!   it leaves its flight without a result, and a waiter leads instead). If the computation
//!   panics, the panic resumes in the request that supplied it, and the waiting requests retry
//!   with their own.
//! - A request that must compute is first charged for it ([`SingleFlight::get_or_compute_charged`],
//!   the cold rate limit): a refused leader leaves without a result, so its waiters lead or join
//!   anew, each charged on its own account, and none is given another client's refusal.
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::Classification;
use crate::error::ApiError;
use crate::storage::{Lease, ResultCache};
use crate::sync::lock;

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// This request computed it.
    Fresh,
    /// Served from memory.
    MemoryHit,
    /// Served from the storage backend (and promoted to memory).
    DiskHit,
    /// Waited for a concurrent request in this process and got its result (or error).
    Joined,
    /// Waited while another process held the lease, and found its result in the backend.
    RemoteJoined,
}

impl CacheOutcome {
    /// The `outcome` label of the cache lookup metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::MemoryHit => "memory_hit",
            Self::DiskHit => "disk_hit",
            Self::Joined => "joined",
            Self::RemoteJoined => "remote_joined",
        }
    }
}

type Outcome = Result<Classification, ApiError>;

struct Flight {
    id: u64,
    /// `None` until the flight finishes; a sender dropped without a value means it panicked.
    result: watch::Receiver<Option<Outcome>>,
}

enum Role {
    Hit(Classification),
    Wait(watch::Receiver<Option<Outcome>>),
    Lead(watch::Sender<Option<Outcome>>, u64),
}

struct Inner {
    cache: ResultCache,
    flights: Mutex<HashMap<String, Flight>>,
    next_flight: AtomicU64,
    /// How long another process may hold a key before we stop waiting for it: a crashed
    /// holder's lease runs out, and then a waiter computes.
    lease_ttl: Duration,
}

/// The cache with single flight in front. Cheap to clone.
#[derive(Clone)]
pub struct SingleFlight {
    inner: Arc<Inner>,
}

/// Polling interval while another process holds a key: starts short (a hot image is usually
/// done within tens of milliseconds) and backs off.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);

impl SingleFlight {
    pub fn new(cache: ResultCache, lease_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                flights: Mutex::new(HashMap::new()),
                next_flight: AtomicU64::new(0),
                lease_ttl,
            }),
        }
    }

    /// The classification of `key` if the memory tier has it (no lock, no I/O).
    pub fn memory_get(&self, key: &str) -> Option<Classification> {
        self.inner.cache.memory_get(key)
    }

    /// The cached classification of `key`, or `compute`'s, cached if it succeeds.
    pub async fn get_or_compute<F, Fut>(
        &self,
        key: &str,
        compute: F,
    ) -> Result<(Classification, CacheOutcome), ApiError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.get_or_compute_charged(key, std::future::ready(Ok(())), compute)
            .await
    }

    /// As [`get_or_compute`](Self::get_or_compute), but `charge` is awaited first when this
    /// request is the one that must compute (not in memory, not in the backend, no flight to
    /// join); its error is this request's answer alone.
    pub async fn get_or_compute_charged<F, Fut>(
        &self,
        key: &str,
        charge: impl Future<Output = Result<(), ApiError>>,
        compute: F,
    ) -> Result<(Classification, CacheOutcome), ApiError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        loop {
            // Fast path without the flights lock.
            if let Some(hit) = self.inner.cache.memory_get(key) {
                return Ok((hit, CacheOutcome::MemoryHit));
            }
            match self.join_or_lead(key) {
                Role::Hit(hit) => return Ok((hit, CacheOutcome::MemoryHit)),
                Role::Wait(mut result) => match result.wait_for(Option::is_some).await {
                    Ok(done) => {
                        let done = done.clone().expect("wait_for returned a finished flight");
                        return done.map(|c| (c, CacheOutcome::Joined));
                    }
                    // The leader died before publishing: lead a new flight, or join one.
                    Err(_) => continue,
                },
                Role::Lead(tx, id) => return self.lead(key, tx, id, charge, compute).await,
            }
        }
    }

    fn join_or_lead(&self, key: &str) -> Role {
        let mut flights = lock(&self.inner.flights);
        match flights.get(key) {
            // A flight whose sender is gone without a result died; replace it, don't wait on it.
            Some(f) if f.result.borrow().is_some() || !f.result.is_closed() => {
                Role::Wait(f.result.clone())
            }
            _ => {
                // Checked again under the lock: a flight that finished since the fast path
                // filled memory before leaving the map, so this cannot miss it and compute twice.
                if let Some(hit) = self.inner.cache.memory_get(key) {
                    return Role::Hit(hit);
                }
                let (tx, rx) = watch::channel(None);
                let id = self.inner.next_flight.fetch_add(1, Ordering::Relaxed);
                flights.insert(key.to_owned(), Flight { id, result: rx });
                Role::Lead(tx, id)
            }
        }
    }

    async fn lead<F, Fut>(
        &self,
        key: &str,
        tx: watch::Sender<Option<Outcome>>,
        id: u64,
        charge: impl Future<Output = Result<(), ApiError>>,
        compute: F,
    ) -> Result<(Classification, CacheOutcome), ApiError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        // Removes the flight however this ends (a refusal, a panic, a dropped request), so
        // later calls start afresh.
        let flight = FlightGuard {
            inner: Arc::clone(&self.inner),
            key: key.to_owned(),
            id,
        };
        if let Some(hit) = self.inner.cache.backend_get(key).await {
            let _ = tx.send(Some(Ok(hit.clone())));
            return Ok((hit, CacheOutcome::DiskHit));
        }
        // Refused: `tx` goes without a value, and the waiters try again on their own account.
        charge.await?;
        let inner = Arc::clone(&self.inner);
        let key = key.to_owned();
        let task = tokio::spawn(async move {
            let _flight = flight;
            let (result, outcome) = inner.lease_and_compute(&key, compute).await;
            // No one waiting is fine.
            let _ = tx.send(Some(result.clone()));
            result.map(|c| (c, outcome))
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Tasks are only cancelled when the runtime shuts down, which drops this future too.
            Err(_) => Err(ApiError::Internal),
        }
    }
}

impl Inner {
    /// The computation under the backend's lease (after the backend tier missed). Runs once per
    /// flight.
    async fn lease_and_compute<F, Fut>(&self, key: &str, compute: F) -> (Outcome, CacheOutcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        match self.cache.try_lease(key, self.lease_ttl).await {
            Ok(Some(lease)) => (
                self.compute_and_cache(key, compute, Some(lease)).await,
                CacheOutcome::Fresh,
            ),
            Ok(None) => self.wait_for_holder(key, compute).await,
            // Without the backend there is no one to coordinate with: compute here.
            Err(e) => {
                crate::storage::worked_around(&e, "lease unavailable; computing without it");
                (
                    self.compute_and_cache(key, compute, None).await,
                    CacheOutcome::Fresh,
                )
            }
        }
    }

    /// Another process holds the key: wait for its result, bounded by the lease. If the lease
    /// goes away without a result (the holder failed), try to take it; past the bound, compute.
    async fn wait_for_holder<F, Fut>(&self, key: &str, compute: F) -> (Outcome, CacheOutcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let give_up = tokio::time::Instant::now() + self.lease_ttl;
        let mut pause = POLL_FIRST;
        let mut lease = None;
        while lease.is_none() && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            if let Some(hit) = self.cache.backend_get(key).await {
                return (Ok(hit), CacheOutcome::RemoteJoined);
            }
            match self.cache.try_lease(key, self.lease_ttl).await {
                Ok(taken) => lease = taken,
                Err(_) => break,
            }
        }
        (
            self.compute_and_cache(key, compute, lease).await,
            CacheOutcome::Fresh,
        )
    }

    /// Computes, caches a success, then gives the lease back: in that order, so a process that
    /// sees the lease gone finds the result.
    async fn compute_and_cache<F, Fut>(
        &self,
        key: &str,
        compute: F,
        lease: Option<Lease>,
    ) -> Outcome
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let mut held = HeldLease {
            cache: self.cache.clone(),
            lease,
        };
        let result = compute().await;
        if let Ok(c) = &result {
            self.cache.insert(key, c).await;
        }
        if let Some(lease) = held.lease.take() {
            self.cache.release(lease).await;
        }
        result
    }
}

/// Releases a lease whose computation panicked or was dropped, so the next request for the key
/// need not wait for it to expire.
struct HeldLease {
    cache: ResultCache,
    lease: Option<Lease>,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let cache = self.cache.clone();
            tokio::spawn(async move { cache.release(lease).await });
        }
    }
}

struct FlightGuard {
    inner: Arc<Inner>,
    key: String,
    id: u64,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut flights = lock(&self.inner.flights);
        // Only our own flight: a dead one may already have been replaced by a newer flight.
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::{BackendKind, CacheStore, CachedResult, Storage, StorageConfig};
    use std::pin::Pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::SystemTime;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const LEASE: Duration = Duration::from_secs(30);

    async fn storage() -> Storage {
        let clock = ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        crate::storage::open(
            BackendKind::Memory,
            Arc::new(clock),
            StorageConfig::default(),
        )
        .await
        .unwrap()
    }

    fn cat() -> Classification {
        Classification::top1("tabby cat", 0.875)
    }

    type Compute = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send>;

    /// A computation that counts its calls, tells `started` it began, waits for `gate`, and
    /// returns `result`.
    fn gated(
        calls: &Arc<AtomicUsize>,
        started: Option<oneshot::Sender<()>>,
        gate: &watch::Receiver<bool>,
        result: Outcome,
    ) -> Compute {
        let (calls, mut gate) = (Arc::clone(calls), gate.clone());
        Box::new(move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if let Some(started) = started {
                    let _ = started.send(());
                }
                let _ = gate.wait_for(|open| *open).await;
                result
            })
        })
    }

    fn open_gate() -> (watch::Sender<bool>, watch::Receiver<bool>) {
        watch::channel(true)
    }

    struct Fixture {
        storage: Storage,
        flight: SingleFlight,
        calls: Arc<AtomicUsize>,
    }

    type Answer = Result<(Classification, CacheOutcome), ApiError>;

    async fn fixture(lease_ttl: Duration) -> Fixture {
        let storage = storage().await;
        Fixture {
            flight: SingleFlight::new(storage.cache().clone(), lease_ttl),
            storage,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    impl Fixture {
        /// A request for "k" whose computation waits for `gate` and returns `result`.
        fn spawn(&self, gate: &watch::Receiver<bool>, result: Outcome) -> JoinHandle<Answer> {
            let compute = gated(&self.calls, None, gate, result);
            let flight = self.flight.clone();
            tokio::spawn(async move { flight.get_or_compute("k", compute).await })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// Lets every spawned task run until it waits (the tests use the current-thread runtime).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_compute_once() {
        let f = fixture(LEASE).await;
        let (gate_tx, gate) = watch::channel(false);
        let requests: Vec<_> = (0..50).map(|_| f.spawn(&gate, Ok(cat()))).collect();
        gate_tx.send_replace(true);
        let mut fresh = 0;
        for r in requests {
            let (c, o) = r.await.unwrap().unwrap();
            assert_eq!(c, cat());
            match o {
                CacheOutcome::Fresh => fresh += 1,
                CacheOutcome::Joined | CacheOutcome::MemoryHit => {}
                other => panic!("nothing was stored or leased elsewhere: {other:?}"),
            }
        }
        assert_eq!((fresh, f.calls()), (1, 1));
    }

    #[tokio::test]
    async fn a_failure_reaches_every_waiter_and_is_not_cached() {
        let f = fixture(LEASE).await;
        let (gate_tx, gate) = watch::channel(false);
        let failure = Err(ApiError::Upstream("the image server answered 404".into()));
        let requests: Vec<_> = (0..20).map(|_| f.spawn(&gate, failure.clone())).collect();
        settle().await;
        gate_tx.send_replace(true);
        for r in requests {
            let r = r.await.unwrap();
            assert!(
                matches!(&r, Err(ApiError::Upstream(m)) if m.contains("404")),
                "{r:?}"
            );
        }
        assert_eq!(f.calls(), 1);
        assert_eq!(f.storage.backend().get("k").await.unwrap(), None);
        let (_, o) = f.spawn(&open_gate().1, Ok(cat())).await.unwrap().unwrap();
        assert_eq!((o, f.calls()), (CacheOutcome::Fresh, 2));
    }

    /// Only the request that computes pays: joiners, memory hits and backend hits are free, and
    /// a refusal is its own request's answer, never shared or cached.
    #[tokio::test]
    async fn only_the_computing_request_is_charged() {
        let f = fixture(LEASE).await;
        let charged = Arc::new(AtomicUsize::new(0));
        let charge = |allow: bool| {
            let charged = Arc::clone(&charged);
            async move {
                charged.fetch_add(1, Ordering::SeqCst);
                if allow {
                    Ok(())
                } else {
                    Err(ApiError::Overloaded)
                }
            }
        };
        let (gate_tx, gate) = watch::channel(false);
        let refused = f
            .flight
            .get_or_compute_charged("k", charge(false), gated(&f.calls, None, &gate, Ok(cat())))
            .await;
        assert!(matches!(refused, Err(ApiError::Overloaded)), "{refused:?}");
        assert_eq!((f.calls(), charged.load(Ordering::SeqCst)), (0, 1));
        let requests: Vec<_> = (0..5)
            .map(|_| {
                let (flight, compute) = (f.flight.clone(), gated(&f.calls, None, &gate, Ok(cat())));
                let charge = charge(true);
                tokio::spawn(
                    async move { flight.get_or_compute_charged("k", charge, compute).await },
                )
            })
            .collect();
        settle().await;
        gate_tx.send_replace(true);
        for r in requests {
            assert_eq!(r.await.unwrap().unwrap().0, cat());
        }
        assert_eq!((f.calls(), charged.load(Ordering::SeqCst)), (1, 2));
        // A memory hit is not asked, nor is a backend hit (another replica's result).
        let hit = f.flight.get_or_compute_charged(
            "k",
            charge(false),
            gated(&f.calls, None, &gate, Ok(cat())),
        );
        assert_eq!(hit.await.unwrap().1, CacheOutcome::MemoryHit);
        let entry = CachedResult {
            label: "computed elsewhere".into(),
            confidence: 0.5,
            runners_up: Arc::from([]),
            expires_at_ms: u64::MAX,
        };
        f.storage.backend().put("k2", entry).await.unwrap();
        let hit = f.flight.get_or_compute_charged(
            "k2",
            charge(false),
            gated(&f.calls, None, &gate, Ok(cat())),
        );
        assert_eq!(hit.await.unwrap().1, CacheOutcome::DiskHit);
        assert_eq!(charged.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dropped_leader_does_not_strand_its_waiters() {
        let f = fixture(LEASE).await;
        let (gate_tx, gate) = watch::channel(false);
        let (started_tx, started) = oneshot::channel();
        let leader = {
            let compute = gated(&f.calls, Some(started_tx), &gate, Ok(cat()));
            let flight = f.flight.clone();
            tokio::spawn(async move { flight.get_or_compute("k", compute).await })
        };
        started.await.unwrap();
        let waiters: Vec<_> = (0..5).map(|_| f.spawn(&gate, Ok(cat()))).collect();
        settle().await;
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        gate_tx.send_replace(true);
        for r in waiters {
            assert_eq!(r.await.unwrap().unwrap(), (cat(), CacheOutcome::Joined));
        }
        assert_eq!(f.calls(), 1);
    }

    #[tokio::test]
    async fn a_panicking_computation_lets_waiters_retry() {
        let f = fixture(LEASE).await;
        let (gate_tx, mut gate) = watch::channel(false);
        let (started_tx, started) = oneshot::channel();
        let leader = {
            let flight = f.flight.clone();
            tokio::spawn(async move {
                flight
                    .get_or_compute("k", move || async move {
                        let _ = started_tx.send(());
                        let _ = gate.wait_for(|open| *open).await;
                        panic!("model crashed")
                    })
                    .await
            })
        };
        started.await.unwrap();
        let waiter = f.spawn(&open_gate().1, Ok(cat()));
        settle().await;
        gate_tx.send_replace(true);
        // The panic surfaces in the request whose computation panicked...
        assert!(leader.await.unwrap_err().is_panic());
        // ...and the waiter computes with its own instead of hanging.
        let result = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        let answer = result.unwrap().unwrap().unwrap();
        assert_eq!((answer, f.calls()), ((cat(), CacheOutcome::Fresh), 1));
    }

    #[tokio::test]
    async fn a_key_leased_elsewhere_is_waited_for_not_computed() {
        let f = fixture(LEASE).await;
        // Another process holds the lease on "k".
        let backend = f.storage.backend();
        let elsewhere = backend.try_lease("k", LEASE).await.unwrap().unwrap();
        let waiter = f.spawn(&open_gate().1, Ok(cat()));
        settle().await;
        // It finishes: result first, then the lease.
        let entry = CachedResult {
            label: "computed elsewhere".into(),
            confidence: 0.5,
            runners_up: Arc::from([]),
            expires_at_ms: u64::MAX,
        };
        backend.put("k", entry).await.unwrap();
        backend.release(elsewhere).await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        let (c, o) = result.unwrap().unwrap().unwrap();
        assert_eq!(
            (&*c.label, o),
            ("computed elsewhere", CacheOutcome::RemoteJoined)
        );
        assert_eq!(f.calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_never_released_expires_and_then_a_waiter_computes() {
        let f = fixture(Duration::from_secs(2)).await;
        // A holder that crashed: its lease is never released.
        let backend = f.storage.backend();
        let _crashed = backend
            .try_lease("k", Duration::from_secs(1))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let (_, o) = f.spawn(&open_gate().1, Ok(cat())).await.unwrap().unwrap();
        assert_eq!((o, f.calls()), (CacheOutcome::Fresh, 1));
        // Computed once the crashed holder's lease ran out, not before.
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
