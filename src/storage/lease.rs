//! Leases held in this process: what a backend owned by one process (redb holds its file
//! exclusively; the in-memory backend lives inside it) needs for single flight.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::backend::Lease;
use super::StorageError;
use crate::sync::lock;

#[derive(Debug, Default)]
pub(crate) struct LocalLeases {
    /// Key → (token, expiry). Tokio's clock, so paused-time tests can expire a lease.
    held: Mutex<HashMap<String, (u64, Instant)>>,
    next_token: AtomicU64,
}

impl LocalLeases {
    /// [`super::CacheStore::try_lease`] for a backend held by this process alone.
    pub(crate) fn try_lease(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StorageError> {
        let now = Instant::now();
        let mut held = lock(&self.held);
        if held.get(key).is_some_and(|(_, expires)| *expires > now) {
            return Ok(None);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        held.insert(key.to_owned(), (token, now + ttl));
        Ok(Some(Lease {
            key: key.to_owned(),
            token,
        }))
    }

    pub(crate) fn release(&self, lease: &Lease) -> Result<(), StorageError> {
        let mut held = lock(&self.held);
        if held.get(&lease.key).is_some_and(|(t, _)| *t == lease.token) {
            held.remove(&lease.key);
        }
        Ok(())
    }
}
