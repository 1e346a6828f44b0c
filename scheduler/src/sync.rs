//! Two small things the services share: a lock that survives a poisoned mutex, and the
//! doorbell that asks the reconcile loop to run, with what changed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use uuid::Uuid;

/// Locks a std mutex, going on if a panicking thread poisoned it (the maps stay usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What changed since the reconciler last took it: the apps and hosts named by pokes, or
/// anything at all (`all`: the next pass reads everything, see [`crate::core`]'s view).
#[derive(Debug, Default)]
pub(crate) struct Dirt {
    pub(crate) all: bool,
    pub(crate) apps: HashSet<Uuid>,
    pub(crate) hosts: HashSet<String>,
}

/// Asks the reconcile loop to run soon. The services that change what the reconciler
/// reads (a woken app, a release gone live) ring it; the loop is level-triggered, so it
/// is never told why, only where to look: a poke that names no app asks it to look at
/// everything.
#[derive(Debug, Clone, Default)]
pub struct Poke {
    bell: Arc<Notify>,
    dirt: Arc<Mutex<Dirt>>,
}

impl Poke {
    /// Something changed, anywhere.
    pub fn poke(&self) {
        lock(&self.dirt).all = true;
        self.bell.notify_one();
    }

    /// Something about these apps changed (their dynos, what they want).
    pub(crate) fn poke_apps(&self, apps: impl IntoIterator<Item = Uuid>) {
        lock(&self.dirt).apps.extend(apps);
        self.bell.notify_one();
    }

    /// Something about the dynos on this host changed (its agent connected or left).
    pub(crate) fn poke_host(&self, host: &str) {
        lock(&self.dirt).hosts.insert(host.to_owned());
        self.bell.notify_one();
    }

    /// What changed since the last take.
    pub(crate) fn take(&self) -> Dirt {
        std::mem::take(&mut *lock(&self.dirt))
    }

    /// Until the next poke (one poke made while nobody waited is kept).
    pub(crate) async fn poked(&self) {
        self.bell.notified().await;
    }
}
