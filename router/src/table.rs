//! The route table: for each app, the web dynos that serve it or the reason none does.
//!
//! The scheduler writes it (`set`, `remove`, `replace_all`); every request reads it once,
//! and a held request (app booting or sleeping) waits on its app's watch channel, so a
//! `set(app, Serving(..))` releases held requests at once, without polling.
//!
//! A backend that leaves the table keeps living while requests to it are in flight: each
//! request holds an `Arc` of it, so in-flight requests finish on it, its idle pooled
//! connections close when the last one ends, and `in_flight(id)` stays true until then.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use tokio::sync::watch;

use crate::certs::{CertError, CertStore, TlsCert};
use crate::pool::IdlePool;

/// One up web dyno the router may send requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The dyno's unique id: in-flight counts and pooled connections follow it.
    pub id: String,
    /// The dyno's name as logged (`web.1`).
    pub name: String,
    /// Where the dyno's `$PORT` is published.
    pub addr: SocketAddr,
}

/// What the router does with a request for an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppRoute {
    /// The up web dynos. An empty list is taken as `Booting`: there is nothing to send to
    /// yet, and holding is kinder than refusing.
    Serving(Vec<Backend>),
    /// Web dynos exist but none is up yet: hold requests until `Serving`, up to
    /// `boot_hold`, then H20.
    Booting,
    /// An idle app put to sleep: call `Hooks::wake` and hold like `Booting`.
    Sleeping,
    /// Every web dyno crashed: H10.
    Crashed,
    /// Web is scaled to zero: H14.
    NoWebDynos,
    /// The app's owner put it in maintenance: Heroku's maintenance page, H80. Its dynos keep
    /// running (one-offs too); only the router stops sending it requests.
    Maintenance,
}

/// The route table, shared by the scheduler and the router. Cloning is cheap.
#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    apps: RwLock<HashMap<String, Arc<AppSlot>>>,
    /// Every backend alive (in the table or with requests in flight), by dyno id.
    backends: Mutex<HashMap<String, Weak<BackendShared>>>,
    /// Custom domains (`www.example.com`) and the app each is for.
    domains: RwLock<HashMap<String, String>>,
    /// What HTTPS serves, by SNI.
    certs: Arc<CertStore>,
    /// ACME HTTP-01 challenges being answered: token to key authorization.
    challenges: RwLock<HashMap<String, String>>,
}

/// The router's view of an app's route, as requests see it.
#[derive(Clone)]
pub(crate) enum Route {
    Serving(Arc<[Arc<BackendShared>]>),
    Booting,
    Sleeping,
    Crashed,
    NoWebDynos,
    Maintenance,
    /// The app left the table while requests were held for it.
    Removed,
}

/// A backend with what the router keeps about it across table updates.
pub(crate) struct BackendShared {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    /// Shared by every `BackendShared` built for the same dyno id, so the count survives a
    /// table update that changes the dyno's name or address.
    in_flight: Arc<AtomicUsize>,
    pub(crate) pool: IdlePool,
}

impl BackendShared {
    /// Requests now proxied to this dyno: the load two-random-choices compares.
    pub(crate) fn load(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request counted in its dyno's in-flight number until dropped.
pub(crate) struct InFlight {
    backend: Arc<BackendShared>,
}

impl InFlight {
    pub(crate) fn new(backend: Arc<BackendShared>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { backend }
    }

    pub(crate) fn backend(&self) -> &Arc<BackendShared> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One app's entry: its route as a watch channel and its count of held requests.
pub(crate) struct AppSlot {
    pub(crate) name: Arc<str>,
    route: watch::Sender<Route>,
    held: AtomicUsize,
}

impl AppSlot {
    pub(crate) fn route(&self) -> Route {
        self.route.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Route> {
        self.route.subscribe()
    }

    /// Takes one of the app's `limit` hold places, or `None` when the backlog is full.
    pub(crate) fn try_hold(self: &Arc<Self>, limit: usize) -> Option<Hold> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Hold { slot: self.clone() })
    }
}

/// A held request's place in its app's backlog, freed when dropped (served, refused, or
/// the client went away).
pub(crate) struct Hold {
    slot: Arc<AppSlot>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.slot.held.fetch_sub(1, Ordering::AcqRel);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RouteTable {
    /// An empty table: every host is unknown (404).
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Replaces `app`'s route. Requests held for it are released if it is now `Serving`
    /// (refused if `Crashed` or `NoWebDynos`); requests in flight are not touched.
    pub fn set(&self, app: &str, route: AppRoute) {
        let route = self.intern(route);
        let mut apps = self
            .inner
            .apps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match apps.get(app) {
            Some(slot) => {
                slot.route.send_replace(route);
            }
            None => {
                apps.insert(app.to_owned(), Arc::new(new_slot(app, route)));
            }
        }
        drop(apps);
        self.forget_dead();
    }

    /// Removes `app`: its host answers 404 from now on, and so do requests held for it.
    pub fn remove(&self, app: &str) {
        let slot = self
            .inner
            .apps
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(app);
        if let Some(slot) = slot {
            slot.route.send_replace(Route::Removed);
        }
        self.forget_dead();
    }

    /// Replaces the whole table: apps in `routes` are `set`, the others removed.
    pub fn replace_all(&self, routes: HashMap<String, AppRoute>) {
        let routes: Vec<(String, Route)> = routes
            .into_iter()
            .map(|(app, route)| (app, self.intern(route)))
            .collect();
        let mut apps = self
            .inner
            .apps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut gone: HashMap<String, Arc<AppSlot>> = std::mem::take(&mut *apps);
        for (app, route) in routes {
            let slot = match gone.remove(&app) {
                Some(slot) => {
                    slot.route.send_replace(route);
                    slot
                }
                None => Arc::new(new_slot(&app, route)),
            };
            apps.insert(app, slot);
        }
        drop(apps);
        for slot in gone.into_values() {
            slot.route.send_replace(Route::Removed);
        }
        self.forget_dead();
    }

    /// Replaces the custom domains: each lowercased name (`www.example.com`) routes to its
    /// app like `APP.<domain>` does.
    pub fn set_domains(&self, domains: HashMap<String, String>) {
        let domains = domains
            .into_iter()
            .map(|(name, app)| (name.trim_end_matches('.').to_ascii_lowercase(), app))
            .collect();
        *self
            .inner
            .domains
            .write()
            .unwrap_or_else(PoisonError::into_inner) = domains;
    }

    /// Replaces the certificates HTTPS serves (chosen by SNI; later ones win a name).
    /// Returns those that cannot be used, which are left out.
    pub fn set_certs(&self, certs: &[TlsCert]) -> Vec<CertError> {
        self.inner.certs.replace(certs)
    }

    /// Replaces the ACME HTTP-01 challenges the router answers: `GET
    /// /.well-known/acme-challenge/TOKEN` on any host answers the token's key authorization.
    pub fn set_challenges(&self, challenges: HashMap<String, String>) {
        *self
            .inner
            .challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner) = challenges;
    }

    /// The app a custom domain is for.
    pub(crate) fn domain_app(&self, host: &str) -> Option<String> {
        self.inner
            .domains
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host.trim_end_matches('.'))
            .cloned()
    }

    /// The key authorization of an ACME challenge token being answered.
    pub(crate) fn challenge(&self, token: &str) -> Option<String> {
        self.inner
            .challenges
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    pub(crate) fn certs(&self) -> Arc<CertStore> {
        self.inner.certs.clone()
    }

    /// Requests now being proxied to the dyno `backend_id` (including open WebSockets),
    /// whether or not it is still in the table: stop the dyno once this reaches 0.
    pub fn in_flight(&self, backend_id: &str) -> usize {
        lock(&self.inner.backends)
            .get(backend_id)
            .and_then(Weak::upgrade)
            .map_or(0, |b| b.load())
    }

    /// Requests now held for `app` (booting or sleeping), waiting for a dyno.
    pub fn held(&self, app: &str) -> usize {
        self.slot(app)
            .map_or(0, |slot| slot.held.load(Ordering::Acquire))
    }

    pub(crate) fn slot(&self, app: &str) -> Option<Arc<AppSlot>> {
        self.inner
            .apps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(app)
            .cloned()
    }

    /// Every backend alive, for sweeping idle pooled connections.
    pub(crate) fn live_backends(&self) -> Vec<Arc<BackendShared>> {
        lock(&self.inner.backends)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Turns the scheduler's route into the router's, reusing the backends the router
    /// already knows so their in-flight counts and pooled connections carry over.
    fn intern(&self, route: AppRoute) -> Route {
        match route {
            AppRoute::Serving(backends) if backends.is_empty() => Route::Booting,
            AppRoute::Serving(backends) => {
                let mut known = lock(&self.inner.backends);
                let shared: Vec<Arc<BackendShared>> = backends
                    .into_iter()
                    .map(|b| intern_backend(&mut known, b))
                    .collect();
                Route::Serving(shared.into())
            }
            AppRoute::Booting => Route::Booting,
            AppRoute::Sleeping => Route::Sleeping,
            AppRoute::Crashed => Route::Crashed,
            AppRoute::NoWebDynos => Route::NoWebDynos,
            AppRoute::Maintenance => Route::Maintenance,
        }
    }

    /// Drops registry entries of backends neither in the table nor in flight.
    fn forget_dead(&self) {
        lock(&self.inner.backends).retain(|_, b| b.strong_count() > 0);
    }
}

fn new_slot(app: &str, route: Route) -> AppSlot {
    AppSlot {
        name: app.into(),
        route: watch::Sender::new(route),
        held: AtomicUsize::new(0),
    }
}

fn intern_backend(
    known: &mut HashMap<String, Weak<BackendShared>>,
    backend: Backend,
) -> Arc<BackendShared> {
    let existing = known.get(&backend.id).and_then(Weak::upgrade);
    if let Some(existing) = &existing {
        if existing.addr == backend.addr && existing.name == backend.name {
            return existing.clone();
        }
    }
    let shared = Arc::new(BackendShared {
        name: backend.name,
        addr: backend.addr,
        in_flight: existing.map_or_else(Default::default, |e| e.in_flight.clone()),
        pool: IdlePool::default(),
    });
    known.insert(backend.id, Arc::downgrade(&shared));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16) -> Backend {
        Backend {
            id: id.to_owned(),
            name: format!("web.{id}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn serving(route: Route) -> Arc<[Arc<BackendShared>]> {
        match route {
            Route::Serving(b) => b,
            _ => panic!("not serving"),
        }
    }

    #[test]
    fn in_flight_outlives_removal_from_the_table() {
        let table = RouteTable::new();
        table.set("a", AppRoute::Serving(vec![backend("1", 1000)]));
        let slot = table.slot("a").expect("slot");
        let guard = InFlight::new(serving(slot.route())[0].clone());
        assert_eq!(table.in_flight("1"), 1);
        table.set("a", AppRoute::Serving(vec![backend("2", 1001)]));
        assert_eq!(table.in_flight("1"), 1, "still in flight after removal");
        drop(guard);
        assert_eq!(table.in_flight("1"), 0);
        table.remove("a");
        assert_eq!(table.in_flight("1"), 0);
        assert!(table.slot("a").is_none());
    }

    #[test]
    fn same_id_keeps_its_state_across_updates() {
        let table = RouteTable::new();
        table.set("a", AppRoute::Serving(vec![backend("1", 1000)]));
        let first = serving(table.slot("a").expect("slot").route())[0].clone();
        let _guard = InFlight::new(first.clone());
        table.set("a", AppRoute::Serving(vec![backend("1", 1000)]));
        let again = serving(table.slot("a").expect("slot").route())[0].clone();
        assert!(Arc::ptr_eq(&first, &again));
        // A new address for the same dyno id: a new backend, the count carries over.
        table.set("a", AppRoute::Serving(vec![backend("1", 2000)]));
        let moved = serving(table.slot("a").expect("slot").route())[0].clone();
        assert!(!Arc::ptr_eq(&first, &moved));
        assert_eq!(moved.load(), 1);
    }

    #[test]
    fn replace_all_removes_missing_apps_and_tells_waiters() {
        let table = RouteTable::new();
        table.set("a", AppRoute::Booting);
        table.set("b", AppRoute::Crashed);
        let rx = table.slot("a").expect("slot").subscribe();
        table.replace_all(HashMap::from([("b".to_owned(), AppRoute::NoWebDynos)]));
        assert!(table.slot("a").is_none());
        assert!(matches!(*rx.borrow(), Route::Removed));
        assert!(matches!(
            table.slot("b").expect("slot").route(),
            Route::NoWebDynos
        ));
    }

    #[test]
    fn hold_places_are_limited_and_released() {
        let table = RouteTable::new();
        table.set("a", AppRoute::Booting);
        let slot = table.slot("a").expect("slot");
        let first = slot.try_hold(1).expect("first place");
        assert!(slot.try_hold(1).is_none());
        drop(first);
        assert!(slot.try_hold(1).is_some());
    }

    #[test]
    fn empty_serving_is_booting() {
        let table = RouteTable::new();
        table.set("a", AppRoute::Serving(Vec::new()));
        assert!(matches!(
            table.slot("a").expect("slot").route(),
            Route::Booting
        ));
    }
}
