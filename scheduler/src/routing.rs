//! Where the router meets the dyno manager.
//!
//! - [`routes`] turns the cluster into the router's table: an app's `up` web dynos, or why
//!   it has none (asleep, booting, crashed, scaled to zero). [`Routing`] owns the table and
//!   refreshes it after every reconcile, which every dyno report triggers, so a dyno is
//!   routed to as soon as its agent says it is up.
//! - A web dyno that is to stop leaves the table first and is only stopped (SIGTERM) once
//!   its in-flight requests are done, up to the router's request timeout: a stop never cuts
//!   a request short ([`crate::cluster::Cluster::hold_stops`]).
//! - Sleep-on-idle: [`Hooks::request`] stamps each app's last traffic; the reconcile loop
//!   puts apps whose web dynos are all eco to sleep after `sleep_after` without traffic
//!   ([`Routing::idle_apps`]); a request to a sleeping app calls [`Hooks::wake`], which
//!   wakes it while the router holds the request until a web dyno is up.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use manifold_router::{AppRoute, Backend, Hooks, RouteTable, Router};
use tokio::sync::watch;

use crate::edge::Edge;
use crate::logs::LogFeed;
use crate::metrics::Counters;
use crate::model::{Desired, Dyno, DynoState};
use crate::reconciler::{sleeps, AppDesired, HostView, Liveness};
use crate::store::Store;
use crate::sync::{lock, Poke};

/// The routing table for the cluster; `stopping` are dynos that are about to stop (they
/// take no new requests).
pub fn routes(
    hosts: &[HostView],
    dynos: &[&Dyno],
    apps: &[&AppDesired],
    stopping: &HashSet<String>,
) -> HashMap<String, AppRoute> {
    let addresses: HashMap<&str, &str> = hosts
        .iter()
        .filter(|h| h.liveness != Liveness::Lost)
        .map(|h| (h.host.id.as_str(), h.host.address.as_str()))
        .collect();
    // Each app's running web dynos, found in one walk (not one walk per app).
    let mut web_of: HashMap<uuid::Uuid, Vec<&Dyno>> = HashMap::new();
    for d in dynos.iter().filter(|d| {
        manifold_dyno::is_web(&d.process_type)
            && d.desired == Desired::Running
            && !stopping.contains(&d.id)
    }) {
        web_of.entry(d.app_id).or_default().push(d);
    }
    let mut out = HashMap::new();
    for &want in apps {
        let web = web_of.remove(&want.app.id).unwrap_or_default();
        let backends: Vec<Backend> = web
            .iter()
            .filter(|d| d.state == DynoState::Up)
            .filter_map(|d| {
                let address = addresses.get(d.host_id.as_str())?;
                Some(Backend {
                    id: d.id.clone(),
                    name: d.name.clone(),
                    addr: socket_addr(address, d.port?)?,
                })
            })
            .collect();
        let quantity = want
            .formation
            .iter()
            .find(|f| manifold_dyno::is_web(&f.process_type))
            .map_or(0, |f| f.quantity);
        let route = if want.app.maintenance {
            AppRoute::Maintenance
        } else if !backends.is_empty() {
            AppRoute::Serving(backends)
        } else if want.app.sleeping && quantity > 0 {
            AppRoute::Sleeping
        } else if quantity == 0 || want.release.is_none() {
            AppRoute::NoWebDynos
        } else if !web.is_empty() && web.iter().all(|d| d.state == DynoState::Crashed) {
            AppRoute::Crashed
        } else {
            AppRoute::Booting
        };
        out.insert(want.app.name.clone(), route);
    }
    out
}

/// Whether the app may be put to sleep when idle: awake, deployed, with web dynos that are
/// all eco.
pub(crate) fn sleepy(want: &AppDesired) -> bool {
    let web = want
        .formation
        .iter()
        .find(|f| manifold_dyno::is_web(&f.process_type));
    !want.app.sleeping
        && want.release.is_some()
        && web.is_some_and(|f| f.quantity > 0 && sleeps(&f.size))
}

/// `host:port` for a host's address, which is usually an IP and may be a name.
fn socket_addr(address: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    (address, port).to_socket_addrs().ok()?.next()
}

/// A following router not heard from for this long is taken as gone (it asks again at least
/// every long poll, [`crate::followers::LONG_POLL`]).
const FOLLOWER_GONE: Duration = Duration::from_secs(60);

/// How often [`Routing::followers_caught_up`] looks again.
const FOLLOWER_POLL: Duration = Duration::from_millis(20);

/// What routers are given: routes, and the edge (domains, certificates, challenges).
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    pub(crate) version: u64,
    pub(crate) routes: HashMap<String, AppRoute>,
    pub(crate) edge: Edge,
}

/// The routing side of the scheduler: the router's table and what it was built from, and
/// each app's traffic, sleep and wake.
pub struct Routing {
    store: Arc<dyn Store>,
    logs: Arc<LogFeed>,
    counters: Arc<Counters>,
    poke: Poke,
    /// Apps whose web dynos are eco sleep after this long without a request (`None`: never).
    sleep_after: Option<Duration>,
    /// The router's table, refreshed after every reconcile.
    table: RouteTable,
    /// The table and the edge as last published, with a version that changes with either
    /// (what routers that follow the scheduler from other processes long-poll, see
    /// [`crate::followers`]).
    published: Mutex<Published>,
    changes: watch::Sender<u64>,
    /// Routers following from other processes, by the id each sends: the version it routes
    /// by, and when it last asked (see [`Routing::followers_caught_up`]).
    followers: Mutex<HashMap<String, (u64, Instant)>>,
    /// The router, once serving (for its metrics).
    router: OnceLock<Arc<Router>>,
    /// When each app last got a request (sleep-on-idle).
    traffic: Mutex<HashMap<String, Instant>>,
    /// Apps being woken, since when (to log how long it took).
    waking: Mutex<HashMap<String, Instant>>,
    /// Apps with no web dyno up while new ones boot, since when (logged when it ends).
    gaps: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing").finish_non_exhaustive()
    }
}

impl Routing {
    pub fn new(
        store: Arc<dyn Store>,
        logs: Arc<LogFeed>,
        counters: Arc<Counters>,
        poke: Poke,
        sleep_after: Option<Duration>,
    ) -> Routing {
        Routing {
            store,
            logs,
            counters,
            poke,
            sleep_after,
            table: RouteTable::default(),
            published: Mutex::new(Published::default()),
            changes: watch::Sender::new(0),
            followers: Mutex::new(HashMap::new()),
            router: OnceLock::new(),
            traffic: Mutex::new(HashMap::new()),
            waking: Mutex::new(HashMap::new()),
            gaps: Mutex::new(HashMap::new()),
        }
    }

    /// The table the in-process router reads.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The table and edge as last published, and their version.
    pub(crate) fn published(&self) -> Published {
        lock(&self.published).clone()
    }

    /// Changes the published edge with `change`; a change is applied to the in-process
    /// router and makes a new version.
    pub(crate) fn publish_edge(&self, change: impl FnOnce(&mut Edge)) {
        let mut published = lock(&self.published);
        let mut edge = published.edge.clone();
        change(&mut edge);
        if edge != published.edge {
            edge.apply(&self.table, Some(&published.edge));
            published.edge = edge;
            published.version += 1;
            self.changes.send_replace(published.version);
        }
    }

    /// A router following from another process (`id`) asked for what came after `applied`:
    /// it routes by that version now.
    pub(crate) fn follower_at(&self, id: &str, applied: u64) {
        lock(&self.followers).insert(id.to_owned(), (applied, Instant::now()));
    }

    /// Waits until every router following from another process, heard from within
    /// [`FOLLOWER_GONE`], routes by the version published now, or `timeout` passed (false).
    /// What an ACME server is about to fetch must be answered by whichever router it
    /// reaches, and followers get a change a moment after the in-process router does.
    pub(crate) async fn followers_caught_up(&self, timeout: Duration) -> bool {
        let version = lock(&self.published).version;
        let deadline = Instant::now() + timeout;
        loop {
            let behind = {
                let mut followers = lock(&self.followers);
                let now = Instant::now();
                followers.retain(|_, (_, seen)| now.duration_since(*seen) < FOLLOWER_GONE);
                followers.values().any(|(applied, _)| *applied < version)
            };
            if !behind {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(FOLLOWER_POLL).await;
        }
    }

    /// The published table's version, as it changes.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Keeps the in-process router once it serves (for its metrics).
    pub(crate) fn set_router(&self, router: Arc<Router>) {
        let _ = self.router.set(router);
    }

    pub(crate) fn router(&self) -> Option<&Arc<Router>> {
        self.router.get()
    }

    /// A request for `app` arrived (sleep-on-idle counts from the last one).
    pub fn traffic(&self, app: &str) {
        // Called for every request: no allocation once the app is known.
        let now = Instant::now();
        let mut traffic = lock(&self.traffic);
        match traffic.get_mut(app) {
            Some(last) => *last = now,
            None => {
                traffic.insert(app.to_string(), now);
            }
        }
    }

    /// Wakes a sleeping app: its eco dynos are started by the next reconcile, and the
    /// router serves the held requests once a web dyno is up. Idempotent.
    pub fn wake(self: &Arc<Self>, app: &str) {
        if lock(&self.waking)
            .insert(app.to_string(), Instant::now())
            .is_some()
        {
            return;
        }
        self.traffic(app);
        let routing = self.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            match routing.store.set_sleeping(&app, false).await {
                Ok(woken) => {
                    Counters::add(&routing.counters.wakes, 1);
                    routing.logs.log_platform(&app, "web.1", "Unidling");
                    routing.poke.poke_apps([woken.id]);
                }
                Err(err) => {
                    tracing::warn!("cannot wake {app}: {err}");
                    lock(&routing.waking).remove(&app);
                }
            }
        });
    }

    /// The app is gone: so is its route.
    pub(crate) fn remove_app(&self, app: &str) {
        self.table.remove(app);
        let mut published = lock(&self.published);
        if published.routes.remove(app).is_some() {
            published.version += 1;
            self.changes.send_replace(published.version);
        }
    }

    /// Puts to sleep every app whose web dynos are all eco and that had no traffic for
    /// `sleep_after`. An app's idle time counts from its last request, or from when this
    /// scheduler first saw it serving.
    pub(crate) async fn idle_apps(&self, apps: &[&AppDesired], dynos: &[&Dyno]) {
        let Some(after) = self.sleep_after else {
            return;
        };
        let now = Instant::now();
        let mut of_app: HashMap<uuid::Uuid, Vec<&Dyno>> = HashMap::new();
        for &d in dynos {
            of_app.entry(d.app_id).or_default().push(d);
        }
        for &want in apps {
            let own = of_app.get(&want.app.id).map_or(&[][..], Vec::as_slice);
            if !sleepy(want) {
                lock(&self.traffic).remove(&want.app.name);
                continue;
            }
            // Idle time counts from the last request, and only while a web dyno is up.
            let serving = own
                .iter()
                .any(|d| manifold_dyno::is_web(&d.process_type) && d.state == DynoState::Up);
            let last = {
                let mut traffic = lock(&self.traffic);
                let last = traffic.entry(want.app.name.clone()).or_insert(now);
                if !serving {
                    *last = now;
                }
                *last
            };
            if now.duration_since(last) < after || lock(&self.waking).contains_key(&want.app.name) {
                continue;
            }
            if let Err(err) = self.store.set_sleeping(&want.app.name, true).await {
                tracing::warn!("cannot put {} to sleep: {err}", want.app.name);
                continue;
            }
            lock(&self.traffic).remove(&want.app.name);
            // The next pass stops its eco dynos.
            self.poke.poke_apps([want.app.id]);
            Counters::add(&self.counters.sleeps, 1);
            tracing::info!("{} is idle: sleeping", want.app.name);
            for d in own
                .iter()
                .filter(|d| d.desired == Desired::Running && sleeps(&d.size))
            {
                self.logs.log_platform(&want.app.name, &d.name, "Idling");
            }
        }
    }

    /// Rebuilds the router's table (`only`: the routes of these apps only, the others
    /// kept; an app of `only` not in `apps` is gone) and logs how long woken apps took to
    /// get a web dyno up.
    pub(crate) fn refresh(
        &self,
        hosts: &[HostView],
        dynos: &[&Dyno],
        apps: &[&AppDesired],
        stopping: &HashSet<String>,
        only: Option<&HashSet<uuid::Uuid>>,
    ) {
        let table = routes(hosts, dynos, apps, stopping);
        {
            let mut waking = lock(&self.waking);
            waking.retain(|app, since| match table.get(app) {
                Some(AppRoute::Serving(backends)) => {
                    let took = since.elapsed();
                    let name = backends.first().map_or("web.1", |b| b.name.as_str());
                    self.logs
                        .log_platform(app, name, format!("Unidled in {}ms", took.as_millis()));
                    tracing::info!("{app} woke in {took:?}");
                    false
                }
                Some(AppRoute::Sleeping | AppRoute::Booting) => true,
                None => only.is_some(),
                _ => false,
            });
        }
        self.log_gaps(&table, only.is_none());
        let mut published = lock(&self.published);
        match only {
            None => {
                if published.routes != table {
                    published.version += 1;
                    published.routes = table.clone();
                    self.changes.send_replace(published.version);
                }
                self.table.replace_all(table);
            }
            Some(_) => {
                // Only the routes that changed are touched: the table's other apps (and
                // the requests held for them) are left as they are.
                let mut changed = false;
                for (app, route) in table {
                    if published.routes.get(&app) != Some(&route) {
                        self.table.set(&app, route.clone());
                        published.routes.insert(app, route);
                        changed = true;
                    }
                }
                if changed {
                    published.version += 1;
                    self.changes.send_replace(published.version);
                }
            }
        }
    }

    /// Logs when an app that had a web dyno up has none while its web dynos boot (a restart
    /// or release without preboot: requests are held meanwhile), and how long that lasted.
    fn log_gaps(&self, table: &HashMap<String, AppRoute>, whole: bool) {
        let published = lock(&self.published);
        let mut gaps = lock(&self.gaps);
        for (app, route) in table {
            let was_serving = matches!(published.routes.get(app), Some(AppRoute::Serving(_)));
            match route {
                AppRoute::Booting if was_serving => {
                    gaps.insert(app.clone(), Instant::now());
                    self.logs.log_platform(
                        app,
                        "router",
                        "at=info desc=\"No web dyno up while new ones boot: holding requests (enable preboot to avoid this)\"",
                    );
                }
                AppRoute::Serving(_) => {
                    if let Some(since) = gaps.remove(app) {
                        self.logs.log_platform(
                            app,
                            "router",
                            format!(
                                "at=info desc=\"A web dyno is up again: held requests go through\" gap={}ms",
                                since.elapsed().as_millis()
                            ),
                        );
                    }
                }
                AppRoute::Booting => {}
                _ => {
                    gaps.remove(app);
                }
            }
        }
        if whole {
            gaps.retain(|app, _| table.contains_key(app));
        }
    }
}

/// The router's view of the scheduler.
#[derive(Debug)]
pub struct RoutingHooks(pub Arc<Routing>);

impl Hooks for RoutingHooks {
    fn request(&self, app: &str) {
        self.0.traffic(app);
    }

    fn wake(&self, app: &str) {
        self.0.wake(app);
    }

    fn log(&self, app: &str, line: String) {
        self.0.logs.log_platform(app, "router", line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::tests::{app, apply, host, t0};
    use crate::reconciler::{plan, Cycling};

    /// web=2 placed on one connected host, none up yet.
    fn placed() -> (Vec<HostView>, Vec<Dyno>, AppDesired) {
        let hosts = vec![host("a", Liveness::Connected)];
        let want = app(2, 0, 1);
        let mut dynos = Vec::new();
        let p = plan(
            &hosts,
            &dynos,
            std::slice::from_ref(&want),
            t0(),
            &Cycling::daily(),
        );
        apply(&mut dynos, &p);
        (hosts, dynos, want)
    }

    fn up(dynos: &mut [Dyno], name: &str, port: u16) {
        let d = dynos.iter_mut().find(|d| d.name == name).expect("dyno");
        d.state = DynoState::Up;
        d.port = Some(port);
    }

    fn route(hosts: &[HostView], dynos: &[Dyno], want: &AppDesired) -> AppRoute {
        let dynos: Vec<&Dyno> = dynos.iter().collect();
        routes(hosts, &dynos, &[want], &HashSet::new())
            .remove("demo")
            .expect("a route")
    }

    #[test]
    fn up_web_dynos_are_served_and_only_they() {
        let (hosts, mut dynos, want) = placed();
        assert_eq!(route(&hosts, &dynos, &want), AppRoute::Booting);
        up(&mut dynos, "web.1", 30000);
        let AppRoute::Serving(backends) = route(&hosts, &dynos, &want) else {
            panic!("not serving");
        };
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].name, "web.1");
        assert_eq!(backends[0].addr, "127.0.0.1:30000".parse().expect("addr"));
        // A dyno about to stop takes no new requests.
        let web1 = backends[0].id.clone();
        let table = routes(
            &hosts,
            &dynos.iter().collect::<Vec<_>>(),
            &[&want],
            &HashSet::from([web1]),
        );
        assert_eq!(table["demo"], AppRoute::Booting);
        // Nor does one on a lost host.
        let lost = vec![host("a", Liveness::Lost)];
        assert_eq!(route(&lost, &dynos, &want), AppRoute::Booting);
    }

    #[test]
    fn maintenance_wins_over_serving_dynos() {
        let (hosts, mut dynos, mut want) = placed();
        up(&mut dynos, "web.1", 30000);
        want.app.maintenance = true;
        assert_eq!(route(&hosts, &dynos, &want), AppRoute::Maintenance, "H80");
    }

    #[test]
    fn why_there_is_no_dyno_decides_the_error() {
        let (hosts, mut dynos, mut want) = placed();
        for d in &mut dynos {
            d.state = DynoState::Crashed;
        }
        assert_eq!(route(&hosts, &dynos, &want), AppRoute::Crashed, "H10");
        want.app.sleeping = true;
        assert_eq!(
            route(&hosts, &[], &want),
            AppRoute::Sleeping,
            "held and woken"
        );
        want.app.sleeping = false;
        for f in &mut want.formation {
            f.quantity = 0;
        }
        assert_eq!(route(&hosts, &[], &want), AppRoute::NoWebDynos, "H14");
        want.release = None;
        assert_eq!(
            route(&hosts, &[], &want),
            AppRoute::NoWebDynos,
            "never deployed"
        );
    }
}
