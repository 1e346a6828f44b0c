//! The scheduler's services wired together, and the reconcile loop that drives them.
//!
//! ```text
//!            api/ (REST)              hub (AgentLink gRPC)
//!                 └────────────┬────────────┘
//!                            Core: the flows that span services (reconcile, stop, place a
//!                            one-off, an agent's hello/report/logs/builds, scale, config)
//!   ┌────────────┬───────────┬────────────┬──────────┬───────────────┬──────────┐
//!   cluster      routing     logs         builds     release_phase   attach
//!   links,       table,      plex feed,   output,    outputs,        sessions
//!   liveness,    traffic,    firehose,    hosts      settling
//!   assignments, sleep, wake drains
//!   held stops     ▲
//!                  └── router (Hooks: a request's traffic, a wake, a log line)
//!                       store (one transaction per operation) under them all
//! ```
//!
//! Each service owns its state; [`Core`] holds them with the store, and has no state of its
//! own beyond the reconcile lock. Handlers only translate requests into calls on it or on
//! one service; what decides is in the services and in [`crate::reconciler`].
//!
//! Here: the reconcile loop, user stops and the formation check. The flows agents start are
//! in `agents.rs`, the ones users start through the API in `apps.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use manifold_logplex::PlexConfig;
use manifold_router::RouterConfig;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::attach::{Event, Sessions};
use crate::blobs::Blobs;
use crate::builds::Builds;
use crate::cluster::Cluster;
use crate::leadership::Leadership;
use crate::logs::LogFeed;
use crate::metrics::Counters;
use crate::model::{Dyno, FormationUpdate};
use crate::reconciler::{self, AppDesired, Cycling, HostView, Liveness, Plan};
use crate::release_phase::ReleasePhase;
use crate::routing::Routing;
use crate::store::{DynoChanges, Store, StoreError};
use crate::sync::Poke;

mod agents;
mod apps;
mod ps;
mod view;

use view::View;

pub(crate) use ps::{shown_state, PsLine};

pub use apps::ScaleError;

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
    /// Where the router's certificate for the cluster's domain comes from.
    pub default_cert: crate::edge::DefaultCert,
    /// The ACME server of automated certificates (`--acme-directory`); `None`: they are off.
    pub acme: Option<crate::acme::settings::AcmeConfig>,
}

/// The services, the store they share, and the reconcile loop's lock.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub blobs: Arc<dyn Blobs>,
    pub settings: Settings,
    /// What `/metrics` counts (the services count too).
    pub counters: Arc<Counters>,
    pub cluster: Arc<Cluster>,
    pub routing: Arc<Routing>,
    pub logs: Arc<LogFeed>,
    pub builds: Arc<Builds>,
    pub releases: ReleasePhase,
    /// Attach sessions of one-off dynos (`manifold run`).
    pub sessions: Arc<Sessions>,
    /// Wakes the automated certificates' loop (`certs:auto:enable`, `domains:add`).
    pub acm_wake: Arc<tokio::sync::Notify>,
    /// Whether this replica leads the cluster (see [`crate::leadership`]).
    pub leadership: Arc<Leadership>,
    /// The apps' git remotes on this replica's disk (see [`crate::git`]).
    pub git: crate::git::Repos,
    poke: Poke,
    /// One reconcile (or formation check, or one-off placement) at a time: each plans
    /// from the view, and two plans from one view would place twice. The lock holds the
    /// view: what the reconciler knows between passes.
    reconciling: tokio::sync::Mutex<View>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(
        store: Arc<dyn Store>,
        blobs: Arc<dyn Blobs>,
        settings: Settings,
        leadership: Arc<Leadership>,
    ) -> Arc<Core> {
        let poke = Poke::default();
        let counters = Arc::new(Counters::default());
        let cluster = Arc::new(Cluster::new(
            store.clone(),
            counters.clone(),
            settings.heartbeat_deadline,
            leadership.clone(),
        ));
        let logs = Arc::new(LogFeed::new(store.clone(), settings.plex.clone()));
        let routing = Arc::new(Routing::new(
            store.clone(),
            logs.clone(),
            counters.clone(),
            poke.clone(),
            settings.sleep_after,
        ));
        let builds = Arc::new(Builds::new(
            store.clone(),
            cluster.clone(),
            blobs.clone(),
            logs.clone(),
            counters.clone(),
        ));
        let releases = ReleasePhase::new(store.clone(), logs.clone(), builds.clone(), poke.clone());
        Arc::new(Core {
            sessions: Arc::new(Sessions::new(settings.run)),
            acm_wake: Arc::new(tokio::sync::Notify::new()),
            leadership,
            git: crate::git::Repos::default(),
            store,
            blobs,
            settings,
            counters,
            cluster,
            routing,
            logs,
            builds,
            releases,
            poke,
            reconciling: tokio::sync::Mutex::new(View::default()),
        })
    }

    /// Asks the reconcile loop to run soon, looking at everything.
    pub fn poke(&self) {
        self.poke.poke();
    }

    /// Asks the reconcile loop to run soon for these apps.
    pub(crate) fn poke_apps(&self, apps: impl IntoIterator<Item = Uuid>) {
        self.poke.poke_apps(apps);
    }

    /// Runs the reconciler whenever poked, and every `reconcile_interval` (to notice lost
    /// hosts). Runs until the process ends.
    pub async fn reconcile_loop(self: Arc<Core>) {
        // A term begins with a full read: another leader may have written meanwhile.
        self.poke();
        let mut last_unplaced = String::new();
        loop {
            let started = std::time::Instant::now();
            let passed = self.reconcile().await;
            self.counters.reconcile_seconds.observe(started.elapsed());
            match passed {
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
                () = self.poke.poked() => {}
                () = tokio::time::sleep(self.settings.reconcile_interval) => {}
            }
        }
    }

    /// Reads what changed into `view`: everything if the view is not current or a poke
    /// asked for it, else the apps that changed (see [`view`]). Returns the hosts and, for
    /// a pass (`pass`), the apps to plan (`None`: all); other lookers leave the apps for
    /// the next pass to plan.
    async fn look(
        &self,
        view: &mut View,
        pass: bool,
    ) -> Result<(Vec<HostView>, Option<HashSet<Uuid>>), StoreError> {
        let dirt = self.poke.take();
        let reload = dirt.all || !view.is_current();
        let hosts = self.cluster.host_views().await?;
        let changed = view.changed(&hosts, dirt, OffsetDateTime::now_utc());
        let cycling = &self.settings.cycling;
        if reload {
            let apps = self.store.desired(None).await?;
            let dynos = self.store.dynos(None).await?;
            view.load(apps, dynos, cycling);
        } else if !changed.is_empty() {
            let ids: Vec<Uuid> = changed.iter().copied().collect();
            let apps = self.store.desired(Some(&ids)).await?;
            let dynos = self.store.dynos_of_apps(&ids).await?;
            view.replace(&changed, apps, dynos, cycling);
        }
        let to_plan = if reload { None } else { Some(changed) };
        if !pass {
            view.owe(to_plan);
            return Ok((hosts, Some(HashSet::new())));
        }
        Ok((hosts, view.owed_all(to_plan)))
    }

    /// One reconcile: plan the apps that changed (all of them now and then), store the
    /// plan, refresh their routes, tell the hosts whose sets changed, and put idle apps to
    /// sleep.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Plan, StoreError> {
        let mut view = self.reconciling.lock().await;
        let (hosts, only) = self.look(&mut view, true).await?;
        let only = only.as_ref();
        let cycling = &self.settings.cycling;
        let (plan, changed, stopped) = {
            let planned = view.dynos_of(only);
            let apps = view.apps(only);
            let plan = reconciler::plan_apps(
                &hosts,
                view.room(),
                &planned,
                &apps,
                only,
                OffsetDateTime::now_utc(),
                cycling,
            );
            let stopping: HashSet<String> = plan
                .changes
                .stop
                .iter()
                .chain(&plan.changes.delete)
                .cloned()
                .collect();
            let changed = if plan.is_empty() {
                BTreeMap::new()
            } else {
                self.announce(&plan, &hosts, &planned, &apps);
                self.store.apply_dyno_changes(&plan.changes).await?
            };
            // Routes from the dynos as they were: a dyno about to stop takes no requests.
            self.routing
                .refresh(&hosts, &planned, &apps, &stopping, only);
            let stop: HashSet<&str> = plan.changes.stop.iter().map(String::as_str).collect();
            let stopped: Vec<Dyno> = planned
                .iter()
                .filter(|d| stop.contains(d.id.as_str()))
                .map(|&d| d.clone())
                .collect();
            (plan, changed, stopped)
        };
        // Stored: the view takes the plan on before anything else can fail.
        view.applied(&plan, only, cycling);
        if !plan.is_empty() {
            let counters = &self.counters;
            Counters::add(&counters.placements, plan.changes.create.len());
            Counters::add(&counters.stops, plan.changes.stop.len());
            Counters::add(&counters.cycles, plan.cycling.len());
            self.hold_stops(&stopped);
            self.cluster.push_assignments(changed.keys()).await?;
        }
        // Sleep-on-idle goes by time: every app that may sleep is looked at each pass (and
        // the planned ones, which may no longer).
        let idle: Vec<&AppDesired> = view.sleepy_or(only);
        let idle_ids: HashSet<Uuid> = idle.iter().map(|a| a.app.id).collect();
        self.routing
            .idle_apps(&idle, &view.dynos_of(Some(&idle_ids)))
            .await;
        self.addons_on_lost_hosts(&hosts).await?;
        let view = &*view;
        self.releases
            .orphaned(|id| view.app(id).map(|a| (&a.app, view.dynos_of_app(id))))
            .await;
        Ok(plan)
    }

    /// Logs what a plan does, in the dynos' logs too where Heroku says why it replaces one.
    fn announce(
        self: &Arc<Self>,
        plan: &Plan,
        hosts: &[HostView],
        planned: &[&Dyno],
        apps: &[&AppDesired],
    ) {
        for d in &plan.changes.create {
            tracing::info!("placing {} ({}) on {}", d.name, d.id, d.host_id);
        }
        for id in &plan.changes.stop {
            tracing::info!("stopping {id}");
        }
        let delete: HashSet<&str> = plan.changes.delete.iter().map(String::as_str).collect();
        let stop: HashSet<&str> = plan.changes.stop.iter().map(String::as_str).collect();
        let cycling: HashSet<&str> = plan.cycling.iter().map(String::as_str).collect();
        let lost: HashSet<&str> = hosts
            .iter()
            .filter(|h| h.liveness == Liveness::Lost)
            .map(|h| h.host.id.as_str())
            .collect();
        let known: HashSet<&str> = hosts.iter().map(|h| h.host.id.as_str()).collect();
        let lost_host =
            |d: &Dyno| lost.contains(d.host_id.as_str()) || !known.contains(d.host_id.as_str());
        for d in planned.iter().filter(|d| delete.contains(d.id.as_str())) {
            if d.is_one_off() && !lost_host(d) {
                tracing::info!("forgetting {}: the one-off ended", d.id);
                continue;
            }
            tracing::info!("forgetting {}: its host is lost", d.id);
            if d.attach.is_some() {
                self.attach_event(
                    &d.id,
                    Event::Ended {
                        exit_status: None,
                        reason: format!("{} was lost with its host {}", d.name, d.host_id),
                    },
                );
            }
        }
        let names: HashMap<Uuid, &str> = apps
            .iter()
            .map(|a| (a.app.id, a.app.name.as_str()))
            .collect();
        let draining: HashSet<&str> = hosts
            .iter()
            .filter(|h| h.host.draining)
            .map(|h| h.host.id.as_str())
            .collect();
        for d in planned.iter().filter(|d| !d.is_one_off()) {
            // Heroku's words for why the platform replaces a dyno.
            let why = if cycling.contains(d.id.as_str()) {
                "Cycling"
            } else if delete.contains(d.id.as_str())
                || (stop.contains(d.id.as_str()) && draining.contains(d.host_id.as_str()))
            {
                "Relocating dyno to a new server"
            } else {
                continue;
            };
            tracing::info!("{why}: {}", d.id);
            if let Some(app) = names.get(&d.app_id) {
                self.logs.log_platform(app, &d.name, why);
            }
        }
    }

    /// Stops dynos on a user's request (`ps:restart`, `ps:stop`): they leave the routes
    /// at once, finish their requests, then stop; the reconciler starts replacements.
    pub async fn stop_dynos(self: &Arc<Self>, ids: &[String], why: &str) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut view = self.reconciling.lock().await;
        let changed = self
            .store
            .apply_dyno_changes(&DynoChanges {
                stop: ids.to_vec(),
                ..Default::default()
            })
            .await?;
        Counters::add(&self.counters.stops, ids.len());
        let (hosts, _) = self.look(&mut view, false).await?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        view.stopped(&wanted);
        let stopped: Vec<Dyno> = view
            .dynos()
            .into_iter()
            .filter(|d| wanted.contains(d.id.as_str()))
            .cloned()
            .collect();
        let apps: HashSet<Uuid> = stopped.iter().map(|d| d.app_id).collect();
        for want in view.apps(Some(&apps)) {
            for d in stopped.iter().filter(|d| d.app_id == want.app.id) {
                self.logs.log_platform(&want.app.name, &d.name, why);
            }
        }
        self.routing.refresh(
            &hosts,
            &view.dynos_of(Some(&apps)),
            &view.apps(Some(&apps)),
            &HashSet::new(),
            Some(&apps),
        );
        drop(view);
        self.hold_stops(&stopped);
        self.cluster.push_assignments(changed.keys()).await?;
        self.poke.poke_apps(apps);
        Ok(())
    }

    /// Stopping web dynos keep their requests until done (up to the router's request
    /// timeout) before their hosts are told to stop them.
    fn hold_stops(&self, stopped: &[Dyno]) {
        self.cluster.hold_stops(
            stopped,
            self.routing.table(),
            self.settings.router.request_timeout,
        );
    }

    /// Whether the app's formation with `updates` applied can be placed now: the
    /// reconciler's plan for it (with the apps still waiting for room, which come first
    /// as in a pass), computed without storing anything.
    pub async fn check_formation(
        &self,
        app: &str,
        updates: &[FormationUpdate],
    ) -> Result<Plan, StoreError> {
        let mut view = self.reconciling.lock().await;
        let id = self.store.app(app).await?.id;
        self.poke.poke_apps([id]);
        let (hosts, _) = self.look(&mut view, false).await?;
        let mut only = view.unsettled().clone();
        only.insert(id);
        let mut wanted = view.app_named(app).cloned();
        if let Some(want) = &mut wanted {
            apply_updates(want.app.id, &mut want.formation, updates);
        }
        let apps: Vec<&AppDesired> = view
            .apps(Some(&only))
            .into_iter()
            .map(|a| match &wanted {
                Some(w) if w.app.id == a.app.id => w,
                _ => a,
            })
            .collect();
        let mut plan = reconciler::plan_apps(
            &hosts,
            view.room(),
            &view.dynos_of(Some(&only)),
            &apps,
            Some(&only),
            OffsetDateTime::now_utc(),
            &self.settings.cycling,
        );
        plan.unplaced.retain(|u| u.app == app);
        Ok(plan)
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::{Method, StatusCode};
    use manifold_proto::DynoState as WireState;
    use manifold_router::AppRoute;
    use serde_json::json;

    use crate::testing::{settings, Harness};

    const WEB: (&str, &str) = ("web", "python app.py");

    fn names(assigned: &[manifold_proto::Assignment]) -> Vec<String> {
        let mut names: Vec<String> = assigned.iter().map(|a| a.name.clone()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn scaling_web_to_two_assigns_two_dynos_to_the_agents_host() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[WEB]).await;
        let mut agent = h.agent("a").await;
        assert!(agent.assigned().is_empty(), "nothing before the scale");
        let (status, body) = h
            .api(
                Method::PATCH,
                "/apps/demo/formation",
                json!({"updates": [{"type": "web", "quantity": 2}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        h.core.reconcile().await.expect("reconcile");
        let assigned = agent.assigned();
        assert_eq!(names(assigned), ["web.1", "web.2"]);
        assert!(assigned.iter().all(|a| a.app == "demo"
            && a.command == "python app.py"
            && a.stack == crate::testing::STACK
            && a.release_version == 1));
        let (_, ps) = h.api(Method::GET, "/apps/demo/dynos", json!(null)).await;
        let hosts: Vec<&str> = ps
            .as_array()
            .expect("a list")
            .iter()
            .map(|d| d["host"]["id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(hosts, ["a", "a"], "ps shows them on the agent's host");
        // Nothing changed: another reconcile places nothing more.
        h.core.reconcile().await.expect("reconcile");
        assert_eq!(agent.assigned().len(), 2);
    }

    #[tokio::test]
    async fn a_scale_without_room_is_refused_and_changes_nothing() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[WEB]).await;
        let (status, body) = h
            .api(
                Method::PATCH,
                "/apps/demo/formation",
                json!({"updates": [{"type": "web", "quantity": 1}]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("cannot run 1 ") && message.ends_with("(nothing was changed)"),
            "{message}"
        );
        let (_, formation) = h
            .api(Method::GET, "/apps/demo/formation", json!(null))
            .await;
        assert_eq!(formation, json!([]), "no web formation was stored");
    }

    #[tokio::test]
    async fn an_up_web_dyno_is_routed_to_until_it_is_down_or_crashed() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[WEB]).await;
        let mut agent = h.agent("a").await;
        h.api(
            Method::PATCH,
            "/apps/demo/formation",
            json!({"updates": [{"type": "web", "quantity": 1}]}),
        )
        .await;
        h.core.reconcile().await.expect("reconcile");
        let web1 = agent.id_of("web.1");
        assert_eq!(h.route("demo"), Some(AppRoute::Booting), "placed, not up");

        agent.report(&web1, WireState::Starting, 0).await;
        h.core.reconcile().await.expect("reconcile");
        assert_eq!(h.route("demo"), Some(AppRoute::Booting), "starting");

        agent.report(&web1, WireState::Up, 30001).await;
        h.core.reconcile().await.expect("reconcile");
        let Some(AppRoute::Serving(backends)) = h.route("demo") else {
            panic!("not serving: {:?}", h.route("demo"));
        };
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].id, web1);
        assert_eq!(backends[0].name, "web.1");
        assert_eq!(backends[0].addr, "127.0.0.1:30001".parse().expect("addr"));

        agent.report(&web1, WireState::Crashed, 0).await;
        h.core.reconcile().await.expect("reconcile");
        assert_eq!(h.route("demo"), Some(AppRoute::Crashed), "H10");

        // The agent restarts it; once up again it is routed to, until it is down.
        agent.report(&web1, WireState::Up, 30002).await;
        h.core.reconcile().await.expect("reconcile");
        assert!(matches!(h.route("demo"), Some(AppRoute::Serving(_))));
        agent.report(&web1, WireState::Down, 0).await;
        h.core.reconcile().await.expect("reconcile");
        assert_eq!(h.route("demo"), Some(AppRoute::Booting), "down: no backend");
    }

    #[tokio::test]
    async fn a_restart_stops_the_dynos_at_once_and_the_reconciler_replaces_them() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[WEB]).await;
        let mut agent = h.agent("a").await;
        h.api(
            Method::PATCH,
            "/apps/demo/formation",
            json!({"updates": [{"type": "web", "quantity": 1}]}),
        )
        .await;
        h.core.reconcile().await.expect("reconcile");
        let first = agent.id_of("web.1");
        agent.report(&first, WireState::Up, 30001).await;
        h.core.reconcile().await.expect("reconcile");
        assert!(matches!(h.route("demo"), Some(AppRoute::Serving(_))));

        let (status, body) = h.api(Method::DELETE, "/apps/demo/dynos", json!(null)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        // No request in flight: its host is told at once, and it takes no new requests.
        assert!(agent.assigned().is_empty(), "web.1 is no longer assigned");
        assert_eq!(h.route("demo"), Some(AppRoute::Booting));

        h.core.reconcile().await.expect("reconcile");
        let second = agent.id_of("web.1");
        assert_ne!(second, first, "a new web.1 replaces the stopped one");
        agent.report(&first, WireState::Down, 0).await;
        let dynos = h.core.store.dynos(Some("demo")).await.expect("dynos");
        assert_eq!(
            dynos.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            [second.as_str()],
            "the stopped dyno is forgotten once down"
        );
    }

    #[tokio::test]
    async fn a_lost_hosts_dynos_are_placed_again_on_another_host() {
        let deadline = Duration::from_millis(200);
        let h = Harness::new(settings(deadline)).await;
        h.deployed("demo", &[WEB, ("worker", "python worker.py")])
            .await;
        let mut a = h.agent("a").await;
        h.api(
            Method::PATCH,
            "/apps/demo/formation",
            json!({"updates": [{"type": "web", "quantity": 2}, {"type": "worker", "quantity": 1}]}),
        )
        .await;
        h.core.reconcile().await.expect("reconcile");
        assert_eq!(names(a.assigned()), ["web.1", "web.2", "worker.1"]);
        let before: Vec<String> = a.assigned().iter().map(|d| d.id.clone()).collect();
        for id in &before {
            a.report(id, WireState::Up, 30001).await;
        }
        let mut b = h.agent("b").await;
        assert!(b.assigned().is_empty(), "a has room: nothing moves yet");

        a.disconnect().await;
        // Missing within the deadline: its dynos stay where they are.
        h.core.reconcile().await.expect("reconcile");
        assert!(b.assigned().is_empty(), "missing is not lost");
        tokio::time::sleep(deadline + Duration::from_millis(100)).await;
        b.heartbeat().await;
        h.core.reconcile().await.expect("reconcile");
        let moved = b.assigned();
        assert_eq!(names(moved), ["web.1", "web.2", "worker.1"]);
        assert!(
            moved.iter().all(|d| !before.contains(&d.id)),
            "new dynos, not the lost ones"
        );
        let dynos = h.core.store.dynos(Some("demo")).await.expect("dynos");
        assert_eq!(dynos.len(), 3, "the lost host's dynos are forgotten");
        assert!(dynos.iter().all(|d| d.host_id == "b"));
        assert_eq!(
            h.route("demo"),
            Some(AppRoute::Booting),
            "a lost host's dynos take no requests"
        );
    }
}
