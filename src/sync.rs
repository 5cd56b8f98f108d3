//! The one way this crate takes a std mutex.
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, ignoring poisoning. Every critical section in this crate only moves data in and out
/// of maps and queues, so a panic inside one leaves the data consistent; refusing to go on after
/// it would turn one failed request into a dead service.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
