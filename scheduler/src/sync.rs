//! Two small things the services share: a lock that survives a poisoned mutex, and the
//! doorbell that asks the reconcile loop to run.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Locks a std mutex, going on if a panicking thread poisoned it (the maps stay usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the reconcile loop to run soon. The services that change what the reconciler
/// reads (a woken app, a release gone live) ring it; the loop is level-triggered, so it
/// is never told why.
#[derive(Debug, Clone, Default)]
pub struct Poke(Arc<Notify>);

impl Poke {
    pub fn poke(&self) {
        self.0.notify_one();
    }

    /// Until the next poke (one poke made while nobody waited is kept).
    pub(crate) async fn poked(&self) {
        self.0.notified().await;
    }
}
