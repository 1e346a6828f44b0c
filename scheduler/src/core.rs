//! The scheduler's core: the store, the blob store, the agents' links and the reconcile
//! loop, shared by the REST API and the AgentLink hub. Handlers only translate requests
//! into calls on [`Core`]; everything that decides lives here or in [`crate::reconciler`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manifold_logplex::{LogPlex, PlexConfig};
use manifold_proto::{scheduler_message, Assignment, Assignments, SchedulerMessage};
use manifold_router::{RouteTable, RouterConfig};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::blobs::BlobStore;
use crate::builds::Builds;
use crate::metrics::Counters;
use crate::model::{Desired, Dyno, FormationUpdate};
use crate::reconciler::{self, AppDesired, Cycling, HostView, Liveness, Plan};
use crate::store::{Store, StoreError};

/// What an assignment needs of a release: its config and its slug (which also names the
/// stack: the planner placed the dyno by the slug's stack).
type ReleaseInfo = (BTreeMap<String, String>, crate::model::Slug);

/// How much longer than the heartbeat deadline a host gets to reconnect after the
/// scheduler starts: an agent redials with a backoff of up to 5 s, plus a heartbeat.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// Lines a log plex follower may fall behind before it loses some.
const FIREHOSE_LINES: usize = 16_384;

/// Settings of a running scheduler.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A host whose agent sent nothing for this long is lost: its dynos go elsewhere.
    pub heartbeat_deadline: Duration,
    /// Daily dyno cycling (24 h plus jitter by default; shorter in tests).
    pub cycling: Cycling,
    /// How often the reconciler runs when nothing triggers it.
    pub reconcile_interval: Duration,
    /// Largest source upload.
    pub upload_limit: u64,
    /// Largest slug an agent may upload.
    pub slug_limit: u64,
    pub api_token: String,
    pub agent_token: String,
    /// What routers and log plex processes following the scheduler need: it opens the
    /// follower routes (`/router/v1/…`, `/logplex/v1/…`) only.
    pub follower_token: String,
    /// Agents must also present a client certificate valid for their host id, issued by the
    /// cluster CA (`--cluster-ca`): checked on AgentLink calls and blob requests.
    pub agent_certs: bool,
    /// The router's timeouts and limits (also how long a stopping dyno may finish requests).
    pub router: RouterConfig,
    /// The log plex's sizes and the roots its TLS drains trust.
    pub plex: PlexConfig,
    /// Apps whose web dynos are eco sleep after this long without a request (`None`: never).
    pub sleep_after: Option<Duration>,
    /// Attached one-offs' reconnect grace and idle timeout.
    pub run: crate::attach::RunSettings,
    /// The API + AgentLink listener's timeouts and connection cap.
    pub api: crate::server::ListenerLimits,
}

/// A dyno as its log lines are written: its app and name come from the store, never from
/// what the agent says.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) app: String,
    pub(crate) name: String,
}

/// The sender half of an agent's stream, and when it last said anything.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) serial: u64,
    pub(crate) tx: mpsc::UnboundedSender<Result<SchedulerMessage, tonic::Status>>,
    pub(crate) last_seen: Instant,
}

pub struct Core {
    pub store: Arc<dyn Store>,
    pub blobs: BlobStore,
    pub settings: Settings,
    pub builds: Builds,
    /// Every app's log stream.
    pub plex: LogPlex,
    /// Every line, for log plex processes that follow the scheduler.
    pub(crate) firehose: tokio::sync::broadcast::Sender<Arc<(String, manifold_logplex::LogLine)>>,
    /// What `/metrics` counts.
    pub counters: crate::metrics::Counters,
    /// The router's table, refreshed after every reconcile.
    pub routes: RouteTable,
    /// The table as last published, with a version that changes with it (what routers
    /// that follow the scheduler from other processes long-poll, see [`crate::follow`]).
    pub(crate) published: Mutex<(u64, HashMap<String, manifold_router::AppRoute>)>,
    pub(crate) route_changes: tokio::sync::watch::Sender<u64>,
    /// The router, once serving (for its metrics).
    pub router: std::sync::OnceLock<Arc<manifold_router::Router>>,
    /// When each app last got a request (sleep-on-idle).
    pub(crate) traffic: Mutex<HashMap<String, Instant>>,
    /// Apps being woken, since when (to log how long it took).
    pub(crate) waking: Mutex<HashMap<String, Instant>>,
    /// Apps with no web dyno up while new ones boot, since when (logged when it ends).
    pub(crate) gaps: Mutex<HashMap<String, Instant>>,
    /// Stopping web dynos kept assigned until their in-flight requests are done.
    pub(crate) held_stops: Mutex<HashMap<String, Instant>>,
    pub(crate) links: Mutex<HashMap<String, Link>>,
    /// Each host's dynos as last sent to it, by id: whose lines its agent may send (see
    /// [`Core::ingest_logs`]). Set before the assignments go out, so the agent can never
    /// know of a dyno missing here.
    pub(crate) placed: Mutex<HashMap<String, Arc<HashMap<String, Placed>>>>,
    /// Attach sessions of one-off dynos (`manifold run`).
    pub sessions: crate::attach::Sessions,
    /// Release dynos whose output also goes to the build that made their release.
    pub(crate) release_outputs: Mutex<HashMap<String, Uuid>>,
    /// Releases whose release dyno ended and whose outcome is being decided.
    pub(crate) release_settling: Mutex<HashSet<(Uuid, u32)>>,
    /// When each known host's link went away (a host never seen since start counts from
    /// `started`, so agents get one deadline to reconnect after a scheduler restart).
    pub(crate) gone_since: Mutex<HashMap<String, Instant>>,
    started: Instant,
    wake: Notify,
    /// One reconcile (or formation check) at a time.
    pub(crate) reconciling: tokio::sync::Mutex<()>,
    next_serial: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Core {
    pub fn new(store: Arc<dyn Store>, blobs: BlobStore, settings: Settings) -> Arc<Core> {
        Arc::new(Core {
            store,
            blobs,
            plex: LogPlex::new(settings.plex.clone()),
            counters: crate::metrics::Counters::default(),
            firehose: tokio::sync::broadcast::Sender::new(FIREHOSE_LINES),
            routes: RouteTable::default(),
            router: std::sync::OnceLock::new(),
            published: Mutex::new((0, HashMap::new())),
            route_changes: tokio::sync::watch::Sender::new(0),
            traffic: Mutex::new(HashMap::new()),
            waking: Mutex::new(HashMap::new()),
            held_stops: Mutex::new(HashMap::new()),
            gaps: Mutex::new(HashMap::new()),
            settings,
            builds: Builds::default(),
            links: Mutex::new(HashMap::new()),
            placed: Mutex::new(HashMap::new()),
            sessions: crate::attach::Sessions::default(),
            release_outputs: Mutex::new(HashMap::new()),
            release_settling: Mutex::new(HashSet::new()),
            gone_since: Mutex::new(HashMap::new()),
            started: Instant::now(),
            wake: Notify::new(),
            reconciling: tokio::sync::Mutex::new(()),
            next_serial: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub(crate) fn serial(&self) -> u64 {
        self.next_serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the reconcile loop to run soon.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Whether a host's agent is connected, missing (within the deadline) or lost.
    pub fn liveness(&self, host: &str) -> Liveness {
        let now = Instant::now();
        let deadline = self.settings.heartbeat_deadline;
        if let Some(link) = lock(&self.links).get(host) {
            return if now.duration_since(link.last_seen) <= deadline {
                Liveness::Connected
            } else {
                Liveness::Lost
            };
        }
        // A host not heard from since this scheduler started may be redialling with its
        // longest backoff: give it that much more before its dynos move.
        let (since, allowed) = match lock(&self.gone_since).get(host) {
            Some(gone) => (*gone, deadline),
            None => (self.started, deadline + RECONNECT_GRACE),
        };
        if now.duration_since(since) <= allowed {
            Liveness::Missing
        } else {
            Liveness::Lost
        }
    }

    /// Sends a message to a host's agent; false when it is not connected.
    pub(crate) fn send(&self, host: &str, message: scheduler_message::Kind) -> bool {
        lock(&self.links).get(host).is_some_and(|l| {
            l.tx.send(Ok(SchedulerMessage {
                kind: Some(message),
            }))
            .is_ok()
        })
    }

    /// Runs the reconciler whenever poked, and every `reconcile_interval` (to notice lost
    /// hosts). Runs until the process ends.
    pub async fn reconcile_loop(self: Arc<Core>) {
        let mut last_unplaced = String::new();
        loop {
            match self.reconcile().await {
                Ok(plan) => {
                    let unplaced: Vec<String> = plan
                        .unplaced
                        .iter()
                        .map(|u| format!("{} {} ({}): {}", u.app, u.name, u.size, u.rejection))
                        .collect();
                    let unplaced = unplaced.join("; ");
                    if !unplaced.is_empty() && unplaced != last_unplaced {
                        tracing::warn!("cannot place: {unplaced}");
                    }
                    last_unplaced = unplaced;
                }
                Err(err) => tracing::warn!("reconcile failed: {err}"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.reconcile_interval) => {}
            }
        }
    }

    /// Every known host with its liveness now.
    pub(crate) async fn host_views(&self) -> Result<Vec<HostView>, CoreError> {
        Ok(self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|host| HostView {
                liveness: self.liveness(&host.id),
                host,
            })
            .collect())
    }

    /// The cluster as the reconciler sees it; `formation_override` replaces one app's
    /// formation updates (to check a scale before storing it).
    async fn snapshot(
        &self,
        formation_override: Option<(&str, &[FormationUpdate])>,
    ) -> Result<(Vec<HostView>, Vec<Dyno>, Vec<AppDesired>), CoreError> {
        let hosts = self.host_views().await?;
        let dynos = self.store.dynos(None).await?;
        let mut apps = Vec::new();
        for app in self.store.apps().await? {
            let mut formation = self.store.formation(&app.name).await?;
            if let Some((name, updates)) = formation_override {
                if name == app.name {
                    apply_updates(app.id, &mut formation, updates);
                }
            }
            let release = match self.store.current_release(&app.name).await? {
                Some(r) => {
                    let slug = self.store.slug(r.slug_id).await?;
                    Some((r, slug))
                }
                None => None,
            };
            apps.push(AppDesired {
                app,
                formation,
                release,
            });
        }
        Ok((hosts, dynos, apps))
    }

    /// One reconcile: plan, store the plan, refresh the routes, tell the hosts whose sets
    /// changed, and put idle apps to sleep.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Plan, CoreError> {
        let _one = self.reconciling.lock().await;
        let (hosts, dynos, apps) = self.snapshot(None).await?;
        let plan = reconciler::plan(
            &hosts,
            &dynos,
            &apps,
            OffsetDateTime::now_utc(),
            &self.settings.cycling,
        );
        let stopping: HashSet<String> = plan
            .changes
            .stop
            .iter()
            .chain(&plan.changes.delete)
            .cloned()
            .collect();
        if plan.is_empty() {
            self.refresh_routes(&hosts, &dynos, &apps, &stopping);
        } else {
            for d in &plan.changes.create {
                tracing::info!("placing {} ({}) on {}", d.name, d.id, d.host_id);
            }
            for id in &plan.changes.stop {
                tracing::info!("stopping {id}");
            }
            for d in dynos.iter().filter(|d| plan.changes.delete.contains(&d.id)) {
                if d.is_one_off() && !lost_host(&hosts, d) {
                    tracing::info!("forgetting {}: the one-off ended", d.id);
                    continue;
                }
                tracing::info!("forgetting {}: its host is lost", d.id);
                if d.attach.is_some() {
                    self.attach_event(
                        &d.id,
                        crate::attach::Event::Ended {
                            exit_status: None,
                            reason: format!("{} was lost with its host {}", d.name, d.host_id),
                        },
                    );
                }
            }
            let names = app_names(&apps);
            let draining: HashSet<&str> = hosts
                .iter()
                .filter(|h| h.host.draining)
                .map(|h| h.host.id.as_str())
                .collect();
            for d in dynos.iter().filter(|d| !d.is_one_off()) {
                // Heroku's words for why the platform replaces a dyno.
                let why = if plan.cycling.contains(&d.id) {
                    "Cycling"
                } else if plan.changes.delete.contains(&d.id)
                    || (plan.changes.stop.contains(&d.id) && draining.contains(d.host_id.as_str()))
                {
                    "Relocating dyno to a new server"
                } else {
                    continue;
                };
                tracing::info!("{why}: {}", d.id);
                if let Some(app) = names.get(&d.app_id) {
                    self.log_platform(app, &d.name, why);
                }
            }
            let changed = self.store.apply_dyno_changes(&plan.changes).await?;
            let counters = &self.counters;
            Counters::add(&counters.placements, plan.changes.create.len());
            Counters::add(&counters.stops, plan.changes.stop.len());
            Counters::add(&counters.cycles, plan.cycling.len());
            self.refresh_routes(&hosts, &dynos, &apps, &stopping);
            let stopped: Vec<Dyno> = dynos
                .iter()
                .filter(|d| plan.changes.stop.contains(&d.id))
                .cloned()
                .collect();
            self.hold_stops(&stopped);
            for host in changed.keys() {
                self.push_assignments(host).await?;
            }
        }
        self.idle_apps(&apps, &dynos).await;
        let apps: Vec<crate::model::App> = apps.into_iter().map(|a| a.app).collect();
        self.orphaned_releases(&apps, &dynos).await;
        Ok(plan)
    }

    /// Stops dynos on a user's request (`ps:restart`, `ps:stop`): they leave the routes
    /// at once, finish their requests, then stop; the reconciler starts replacements.
    pub async fn stop_dynos(self: &Arc<Self>, ids: &[String], why: &str) -> Result<(), CoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let _one = self.reconciling.lock().await;
        let changed = self
            .store
            .apply_dyno_changes(&crate::store::DynoChanges {
                stop: ids.to_vec(),
                ..Default::default()
            })
            .await?;
        Counters::add(&self.counters.stops, ids.len());
        let (hosts, dynos, apps) = self.snapshot(None).await?;
        let names = app_names(&apps);
        let stopped: Vec<Dyno> = dynos
            .iter()
            .filter(|d| ids.contains(&d.id))
            .cloned()
            .collect();
        for d in &stopped {
            if let Some(app) = names.get(&d.app_id) {
                self.log_platform(app, &d.name, why);
            }
        }
        self.refresh_routes(&hosts, &dynos, &apps, &HashSet::new());
        self.hold_stops(&stopped);
        for host in changed.keys() {
            self.push_assignments(host).await?;
        }
        self.poke();
        Ok(())
    }

    /// Whether the app's formation with `updates` applied can be placed now: the
    /// reconciler's plan for it, computed without storing anything.
    pub async fn check_formation(
        &self,
        app: &str,
        updates: &[FormationUpdate],
    ) -> Result<Plan, CoreError> {
        let _one = self.reconciling.lock().await;
        let (hosts, dynos, apps) = self.snapshot(Some((app, updates))).await?;
        let mut plan = reconciler::plan(
            &hosts,
            &dynos,
            &apps,
            OffsetDateTime::now_utc(),
            &self.settings.cycling,
        );
        plan.unplaced.retain(|u| u.app == app);
        Ok(plan)
    }

    /// Sends a host its full set of running dynos with its generation.
    pub async fn push_assignments(&self, host: &str) -> Result<(), CoreError> {
        let Some(generation) = self
            .store
            .hosts()
            .await?
            .into_iter()
            .find(|h| h.id == host)
            .map(|h| h.generation)
        else {
            return Ok(());
        };
        let held: HashSet<String> = lock(&self.held_stops).keys().cloned().collect();
        let on_host: Vec<Dyno> = self
            .store
            .dynos(None)
            .await?
            .into_iter()
            .filter(|d| d.host_id == host)
            .collect();
        let apps: HashMap<Uuid, crate::model::App> = self
            .store
            .apps()
            .await?
            .into_iter()
            .map(|a| (a.id, a))
            .collect();
        // Every dyno of the host, stopping ones too: their last lines are still to come.
        let placed = on_host
            .iter()
            .filter_map(|d| {
                let app = apps.get(&d.app_id)?;
                let placed = Placed {
                    app: app.name.clone(),
                    name: d.name.clone(),
                };
                Some((d.id.clone(), placed))
            })
            .collect();
        lock(&self.placed).insert(host.to_string(), Arc::new(placed));
        let dynos: Vec<Dyno> = on_host
            .into_iter()
            .filter(|d| d.desired == Desired::Running || held.contains(&d.id))
            .collect();
        let mut releases: HashMap<(Uuid, u32), ReleaseInfo> = HashMap::new();
        let mut out = Vec::new();
        for d in dynos {
            let Some(app) = apps.get(&d.app_id) else {
                continue;
            };
            let key = (d.app_id, d.release_version);
            if let std::collections::hash_map::Entry::Vacant(e) = releases.entry(key) {
                let release = self.store.release(&app.name, d.release_version).await?;
                let slug = self.store.slug(release.slug_id).await?;
                e.insert((release.config, slug));
            }
            let Some((config, slug)) = releases.get(&key) else {
                continue;
            };
            out.push(Assignment {
                id: d.id,
                app: app.name.clone(),
                name: d.name,
                command: d.command,
                size: d.size,
                stack: slug.stack.clone(),
                slug: Some(manifold_proto::Slug {
                    sha256: slug.sha256.clone(),
                    size: slug.size,
                }),
                // A one-off's own vars (`run -e`) go over the release's.
                env: config.clone().into_iter().chain(d.env).collect(),
                release_version: d.release_version,
                boot_timeout_secs: app.boot_timeout.unwrap_or(0),
                stop_timeout_secs: app.stop_timeout.unwrap_or(0),
                attach: d.attach.map(|a| manifold_proto::AttachSpec {
                    tty: a.tty,
                    cols: u32::from(a.cols),
                    rows: u32::from(a.rows),
                }),
            });
        }
        self.send(
            host,
            scheduler_message::Kind::Assignments(Assignments {
                generation,
                dynos: out,
            }),
        );
        Ok(())
    }
}

/// Whether a dyno's host is lost (its dynos are forgotten for that reason).
fn lost_host(hosts: &[HostView], d: &Dyno) -> bool {
    hosts
        .iter()
        .find(|h| h.host.id == d.host_id)
        .is_none_or(|h| h.liveness == Liveness::Lost)
}

/// App names by id.
fn app_names(apps: &[AppDesired]) -> HashMap<Uuid, String> {
    apps.iter()
        .map(|a| (a.app.id, a.app.name.clone()))
        .collect()
}

/// Applies formation updates to a formation in memory (what the store will do).
pub fn apply_updates(
    app_id: Uuid,
    formation: &mut Vec<crate::model::Formation>,
    updates: &[FormationUpdate],
) {
    for u in updates {
        let i = match formation
            .iter()
            .position(|f| f.process_type == u.process_type)
        {
            Some(i) => i,
            None => {
                formation.push(crate::model::Formation {
                    app_id,
                    process_type: u.process_type.clone(),
                    quantity: 0,
                    size: crate::model::DEFAULT_SIZE.into(),
                    updated_at: OffsetDateTime::now_utc(),
                });
                formation.len() - 1
            }
        };
        if let Some(q) = u.quantity {
            formation[i].quantity = q;
        }
        if let Some(s) = &u.size {
            formation[i].size = s.clone();
        }
    }
}

/// Locks a std mutex, going on if a panicking thread poisoned it (the maps stay usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
