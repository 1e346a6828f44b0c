//! The reconciler's view: what it last read from the store and planned, kept between
//! passes so that a pass reads and plans only the apps that changed.
//!
//! ```text
//!   pokes (sync::Poke)        an app changed (a scale, a report, a stop, a one-off)
//!                             a host's agent said hello or went away
//!                             anything else: read everything again
//!   hosts, each pass          a host whose liveness or draining changed: its apps
//!   the view itself           apps left with dynos it could not place (planned every pass)
//!                             apps with a dyno due to cycle (a time index)
//!   every FULL_EVERY          read everything again (and on the first pass of a term)
//! ```
//!
//! Why this is the full plan's result: [`crate::reconciler::plan_apps`] leaves an app alone
//! when nothing about it changed since a plan for it was carried out — the full plan finds
//! nothing to do for such an app either, and takes no room from the planner — so planning
//! only the changed apps, in name order, against the room every dyno takes (kept here as
//! dynos come and go: [`Load`]) decides what the full plan would. What keeps the view honest is that every write of a dyno or of what
//! an app wants pokes: the writes the reconciler makes itself are applied here
//! ([`View::applied`]), the others name their app or host, or ask for a full read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Desired, Dyno};
use crate::reconciler::{AppDesired, Cycling, HostView, Liveness, Load, Plan};
use crate::sync::Dirt;

/// How long a view is trusted before the next pass reads everything again: a write that
/// forgot to poke is picked up within this.
pub(crate) const FULL_EVERY: Duration = Duration::from_secs(300);

/// The apps, their dynos and the indexes over them (see the module docs).
#[derive(Debug)]
pub(crate) struct View {
    desired: HashMap<Uuid, AppDesired>,
    /// App ids by name: the order plans go in.
    names: BTreeMap<String, Uuid>,
    /// The apps that may sleep when idle, looked at every pass.
    sleepy: HashSet<Uuid>,
    /// Each app's dynos, by name then id (the store's order).
    dynos: HashMap<Uuid, Vec<Dyno>>,
    /// How many dynos of each app each host has.
    on_host: HashMap<String, HashMap<Uuid, usize>>,
    /// The room every dyno takes on its host, for the planner (kept with the dynos, so a
    /// pass gives the planner only the planned apps' dynos).
    room: Load,
    /// Each host's liveness and draining flag when last looked at.
    hosts: HashMap<String, (Liveness, bool)>,
    /// When each app's first running dyno is due to cycle, and the same by time.
    due_of: HashMap<Uuid, OffsetDateTime>,
    due: BTreeSet<(OffsetDateTime, Uuid)>,
    /// Apps the last plan for which left a dyno unplaced.
    unsettled: HashSet<Uuid>,
    /// When everything was last read; `None`: never, or the view was dropped.
    loaded: Option<Instant>,
    /// Apps read in by someone other than a pass (a formation check, a stop), for the next
    /// pass to plan; `None`: every app.
    owed: Option<HashSet<Uuid>>,
}

impl Default for View {
    fn default() -> View {
        View {
            desired: HashMap::new(),
            names: BTreeMap::new(),
            sleepy: HashSet::new(),
            dynos: HashMap::new(),
            on_host: HashMap::new(),
            room: Load::default(),
            hosts: HashMap::new(),
            due_of: HashMap::new(),
            due: BTreeSet::new(),
            unsettled: HashSet::new(),
            loaded: None,
            owed: Some(HashSet::new()),
        }
    }
}

impl View {
    /// Leaves apps read in (`None`: every app) for the next pass to plan.
    pub(crate) fn owe(&mut self, apps: Option<HashSet<Uuid>>) {
        self.owed = match (self.owed.take(), apps) {
            (Some(mut owed), Some(apps)) => {
                owed.extend(apps);
                Some(owed)
            }
            _ => None,
        };
    }

    /// The apps a pass plans: `apps` (`None`: every app) and what it was owed.
    pub(crate) fn owed_all(&mut self, apps: Option<HashSet<Uuid>>) -> Option<HashSet<Uuid>> {
        self.owe(apps);
        self.owed.replace(HashSet::new())
    }

    /// Whether a pass may work from the view (else it reads everything).
    pub(crate) fn is_current(&self) -> bool {
        self.loaded.is_some_and(|at| at.elapsed() < FULL_EVERY)
    }

    /// Replaces everything with what the store holds now.
    pub(crate) fn load(&mut self, apps: Vec<AppDesired>, dynos: Vec<Dyno>, cycling: &Cycling) {
        let hosts = std::mem::take(&mut self.hosts);
        let owed = self.owed.take();
        *self = View {
            hosts,
            owed,
            ..View::default()
        };
        let ids: HashSet<Uuid> = apps.iter().map(|a| a.app.id).collect();
        self.replace(&ids, apps, dynos, cycling);
        self.loaded = Some(Instant::now());
    }

    /// Replaces the apps `ids` (and their dynos) with what the store holds now: `apps` and
    /// `dynos` are theirs; an id without an app in `apps` is an app deleted.
    pub(crate) fn replace(
        &mut self,
        ids: &HashSet<Uuid>,
        apps: Vec<AppDesired>,
        dynos: Vec<Dyno>,
        cycling: &Cycling,
    ) {
        for id in ids {
            if let Some(old) = self.desired.remove(id) {
                self.names.remove(&old.app.name);
            }
            self.sleepy.remove(id);
        }
        for want in apps {
            if crate::routing::sleepy(&want) {
                self.sleepy.insert(want.app.id);
            }
            self.names.insert(want.app.name.clone(), want.app.id);
            self.desired.insert(want.app.id, want);
        }
        let mut of_app: HashMap<Uuid, Vec<Dyno>> = HashMap::new();
        for d in dynos {
            if self.desired.contains_key(&d.app_id) {
                of_app.entry(d.app_id).or_default().push(d);
            }
        }
        for id in ids {
            self.set_dynos(*id, of_app.remove(id).unwrap_or_default(), cycling);
        }
    }

    /// The apps to plan this pass (see the module docs) for what was poked (`dirt`), the
    /// hosts as they are now, and the time; remembers the hosts' states.
    pub(crate) fn changed(
        &mut self,
        hosts: &[HostView],
        dirt: Dirt,
        now: OffsetDateTime,
    ) -> HashSet<Uuid> {
        let mut changed = dirt.apps;
        let mut hosts_changed = dirt.hosts;
        for h in hosts {
            let state = (h.liveness, h.host.draining);
            if self.hosts.insert(h.host.id.clone(), state) != Some(state) {
                hosts_changed.insert(h.host.id.clone());
            }
        }
        for host in &hosts_changed {
            if let Some(apps) = self.on_host.get(host) {
                changed.extend(apps.keys());
            }
        }
        changed.extend(&self.unsettled);
        changed.extend(self.due.range(..=(now, Uuid::max())).map(|(_, app)| *app));
        changed
    }

    /// Every dyno, in the store's order (by app name, then name, then id).
    pub(crate) fn dynos(&self) -> Vec<&Dyno> {
        self.names
            .values()
            .filter_map(|id| self.dynos.get(id))
            .flatten()
            .collect()
    }

    /// The dynos of the apps `only` (every app's if `None`), in the store's order.
    pub(crate) fn dynos_of(&self, only: Option<&HashSet<Uuid>>) -> Vec<&Dyno> {
        match only {
            None => self.dynos(),
            Some(only) => self
                .apps(Some(only))
                .into_iter()
                .filter_map(|a| self.dynos.get(&a.app.id))
                .flatten()
                .collect(),
        }
    }

    /// One app's dynos.
    pub(crate) fn dynos_of_app(&self, app: Uuid) -> &[Dyno] {
        self.dynos.get(&app).map_or(&[], Vec::as_slice)
    }

    /// The apps `only` that exist (every app if `None`), by name.
    pub(crate) fn apps(&self, only: Option<&HashSet<Uuid>>) -> Vec<&AppDesired> {
        match only {
            None => self
                .names
                .values()
                .filter_map(|id| self.desired.get(id))
                .collect(),
            Some(only) => {
                let mut apps: Vec<&AppDesired> =
                    only.iter().filter_map(|id| self.desired.get(id)).collect();
                apps.sort_by(|a, b| a.app.name.cmp(&b.app.name));
                apps
            }
        }
    }

    /// One app's desired state, by id.
    pub(crate) fn app(&self, id: Uuid) -> Option<&AppDesired> {
        self.desired.get(&id)
    }

    /// The apps that may go to sleep when idle ([`crate::routing::sleepy`]), and the apps
    /// `only` (every app if `None`), by name.
    pub(crate) fn sleepy_or(&self, only: Option<&HashSet<Uuid>>) -> Vec<&AppDesired> {
        match only {
            None => self.apps(None),
            Some(only) => self.apps(Some(&self.sleepy.union(only).copied().collect())),
        }
    }

    /// One app's desired state, by name.
    pub(crate) fn app_named(&self, name: &str) -> Option<&AppDesired> {
        self.names.get(name).and_then(|id| self.desired.get(id))
    }

    /// The room every dyno takes on its host.
    pub(crate) fn room(&self) -> &Load {
        &self.room
    }

    /// The apps the last plans left with dynos unplaced.
    pub(crate) fn unsettled(&self) -> &HashSet<Uuid> {
        &self.unsettled
    }

    /// `plan`, made for the apps `only` (every app if `None`), was stored: the view takes it
    /// on as the store did.
    pub(crate) fn applied(&mut self, plan: &Plan, only: Option<&HashSet<Uuid>>, cycling: &Cycling) {
        let stop: HashSet<&str> = plan.changes.stop.iter().map(String::as_str).collect();
        let delete: HashSet<&str> = plan.changes.delete.iter().map(String::as_str).collect();
        let mut created: HashMap<Uuid, Vec<Dyno>> = HashMap::new();
        for d in &plan.changes.create {
            created.entry(d.app_id).or_default().push(d.clone());
        }
        let planned: Vec<Uuid> = match only {
            Some(only) => only.iter().copied().collect(),
            None => self.desired.keys().copied().collect(),
        };
        for app in &planned {
            let mut dynos: Vec<Dyno> = self
                .dynos
                .get(app)
                .map(|ds| {
                    ds.iter()
                        .filter(|d| !delete.contains(d.id.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for d in &mut dynos {
                if stop.contains(d.id.as_str()) {
                    d.desired = Desired::Stopped;
                }
            }
            dynos.extend(created.remove(app).unwrap_or_default());
            self.set_dynos(*app, dynos, cycling);
            self.unsettled.remove(app);
        }
        for u in &plan.unplaced {
            if let Some(id) = self.names.get(&u.app) {
                self.unsettled.insert(*id);
            }
        }
    }

    /// Dynos a user stopped (the store has them as to stop).
    pub(crate) fn stopped(&mut self, ids: &HashSet<&str>) {
        for ds in self.dynos.values_mut() {
            for d in ds.iter_mut().filter(|d| ids.contains(d.id.as_str())) {
                d.desired = Desired::Stopped;
            }
        }
    }

    /// A one-off placed outside a plan.
    pub(crate) fn created(&mut self, dyno: Dyno, cycling: &Cycling) {
        let app = dyno.app_id;
        let mut dynos = self.dynos.remove(&app).unwrap_or_default();
        dynos.push(dyno);
        self.set_dynos(app, dynos, cycling);
    }

    /// Sets an app's dynos, keeping the indexes in step.
    fn set_dynos(&mut self, app: Uuid, mut dynos: Vec<Dyno>, cycling: &Cycling) {
        if let Some(old) = self.dynos.remove(&app) {
            for d in &old {
                self.room.remove(d);
                if let Some(apps) = self.on_host.get_mut(&d.host_id) {
                    if let Some(n) = apps.get_mut(&app) {
                        *n -= 1;
                        if *n == 0 {
                            apps.remove(&app);
                        }
                    }
                }
            }
        }
        if let Some(due) = self.due_of.remove(&app) {
            self.due.remove(&(due, app));
        }
        if dynos.is_empty() {
            return;
        }
        dynos.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        for d in &dynos {
            self.room.add(d);
            *self
                .on_host
                .entry(d.host_id.clone())
                .or_default()
                .entry(app)
                .or_default() += 1;
        }
        // Only dynos kept running cycle (one-offs never do).
        let due = dynos
            .iter()
            .filter(|d| !d.is_one_off() && d.desired == Desired::Running)
            .map(|d| cycling.due(d))
            .min();
        if let Some(due) = due {
            self.due_of.insert(app, due);
            self.due.insert((due, app));
        }
        self.dynos.insert(app, dynos);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::View;
    use crate::model::{Desired, Dyno, DynoState};
    use crate::reconciler::tests::{app, apply, host, t0};
    use crate::reconciler::{plan, plan_apps, AppDesired, Cycling, HostView, Liveness, Load, Plan};
    use crate::sync::Dirt;

    /// App `i` of the cluster: its own id, name and slug.
    fn nth_app(i: u128, web: u32, worker: u32, version: u32) -> AppDesired {
        let mut want = app(web, worker, version);
        let id = Uuid::from_u128(1000 + i);
        want.app.id = id;
        want.app.name = format!("app-{:02}", 40 - i);
        for f in &mut want.formation {
            f.app_id = id;
        }
        if let Some((release, slug)) = &mut want.release {
            release.app_id = id;
            slug.app_id = id;
        }
        want
    }

    /// What a plan decides, without the new dynos' random ids.
    fn decided(p: &Plan) -> Vec<String> {
        let mut out: Vec<String> = p
            .changes
            .create
            .iter()
            .map(|d| {
                format!(
                    "create {} {} on {} v{} {}",
                    d.app_id, d.name, d.host_id, d.release_version, d.size
                )
            })
            .chain(p.changes.stop.iter().map(|id| format!("stop {id}")))
            .chain(p.changes.delete.iter().map(|id| format!("delete {id}")))
            .chain(p.cycling.iter().map(|id| format!("cycle {id}")))
            .chain(
                p.unplaced
                    .iter()
                    .map(|u| format!("unplaced {} {}", u.app, u.name)),
            )
            .collect();
        out.sort();
        out
    }

    /// The store's order: by app name, then name, then id.
    fn sorted(dynos: &mut [Dyno], apps: &[AppDesired]) {
        let names: HashMap<Uuid, &str> = apps
            .iter()
            .map(|a| (a.app.id, a.app.name.as_str()))
            .collect();
        dynos.sort_by(|a, b| {
            (names[&a.app_id], &a.name, &a.id).cmp(&(names[&b.app_id], &b.name, &b.id))
        });
    }

    /// Random changes to a cluster, each poked as the scheduler pokes it (hosts' liveness
    /// is found by the view itself); after each round the incremental plan must be the
    /// full plan.
    #[test]
    fn planning_what_changed_decides_what_a_full_plan_decides() {
        let cycling = Cycling::every(std::time::Duration::from_secs(6 * 3600));
        for seed in 0..20u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut hosts: Vec<HostView> = (0..6)
                .map(|i| host(&format!("h{i}"), Liveness::Connected))
                .collect();
            let mut apps: Vec<AppDesired> = (0..12)
                .map(|i| nth_app(i, rng.gen_range(0..4), rng.gen_range(0..3), 1))
                .collect();
            apps.sort_by(|a, b| a.app.name.cmp(&b.app.name));
            let mut dynos: Vec<Dyno> = Vec::new();
            let mut now = t0();
            let mut view = View::default();
            view.changed(&hosts, Dirt::default(), now);
            let first = plan(&hosts, &dynos, &apps, now, &cycling);
            apply(&mut dynos, &first);
            view.load(apps.clone(), dynos.clone(), &cycling);
            for d in &first.unplaced {
                view.unsettled.extend(view.names.get(&d.app));
            }
            for round in 0..30 {
                let mut dirt = Dirt::default();
                for _ in 0..rng.gen_range(1..4) {
                    change(
                        &mut rng, &mut hosts, &mut apps, &mut dynos, &mut dirt, &mut now,
                    );
                }
                sorted(&mut dynos, &apps);
                let full = plan(&hosts, &dynos, &apps, now, &cycling);
                let changed = view.changed(&hosts, dirt, now);
                let theirs: Vec<AppDesired> = apps
                    .iter()
                    .filter(|a| changed.contains(&a.app.id))
                    .cloned()
                    .collect();
                let their_dynos: Vec<Dyno> = dynos
                    .iter()
                    .filter(|d| changed.contains(&d.app_id))
                    .cloned()
                    .collect();
                view.replace(&changed, theirs, their_dynos, &cycling);
                let all = view.dynos();
                assert_eq!(
                    all.len(),
                    dynos.len(),
                    "seed {seed} round {round}: the view"
                );
                assert_eq!(
                    view.room(),
                    &Load::of(all.iter().copied()),
                    "seed {seed} round {round}: the room kept is the room of every dyno"
                );
                let incremental = plan_apps(
                    &hosts,
                    view.room(),
                    &view.dynos_of(Some(&changed)),
                    &view.apps(Some(&changed)),
                    Some(&changed),
                    now,
                    &cycling,
                );
                assert_eq!(
                    decided(&incremental),
                    decided(&full),
                    "seed {seed} round {round}: planned {} of {} apps",
                    changed.len(),
                    apps.len()
                );
                apply(&mut dynos, &incremental);
                view.applied(&incremental, Some(&changed), &cycling);
                assert_eq!(
                    view.room(),
                    &Load::of(&dynos),
                    "seed {seed} round {round}: the room kept once the plan is applied"
                );
            }
        }
    }

    /// One random change, poked into `dirt` as the scheduler would.
    fn change(
        rng: &mut StdRng,
        hosts: &mut [HostView],
        apps: &mut [AppDesired],
        dynos: &mut Vec<Dyno>,
        dirt: &mut Dirt,
        now: &mut OffsetDateTime,
    ) {
        match rng.gen_range(0..8) {
            // A scale.
            0 => {
                let a = &mut apps[rng.gen_range(0..apps.len())];
                let f = rng.gen_range(0..a.formation.len());
                a.formation[f].quantity = rng.gen_range(0..5);
                dirt.apps.insert(a.app.id);
            }
            // A release.
            1 => {
                let a = &mut apps[rng.gen_range(0..apps.len())];
                if let Some((release, _)) = &mut a.release {
                    release.version += 1;
                }
                a.app.features = if rng.gen_bool(0.5) {
                    ["preboot".to_owned()].into()
                } else {
                    Default::default()
                };
                dirt.apps.insert(a.app.id);
            }
            // Reports: up, crashed, or down and forgotten once stopped.
            2 | 3 if !dynos.is_empty() => {
                let i = rng.gen_range(0..dynos.len());
                let d = &mut dynos[i];
                dirt.apps.insert(d.app_id);
                match rng.gen_range(0..3) {
                    0 => d.state = DynoState::Up,
                    1 => d.state = DynoState::Crashed,
                    _ if d.desired == Desired::Stopped => {
                        dynos.remove(i);
                    }
                    _ => d.state = DynoState::Up,
                }
            }
            // A user's stop.
            4 if !dynos.is_empty() => {
                let i = rng.gen_range(0..dynos.len());
                dynos[i].desired = Desired::Stopped;
                dirt.apps.insert(dynos[i].app_id);
            }
            // A host comes and goes, or drains.
            5 => {
                let h = &mut hosts[rng.gen_range(0..hosts.len())];
                match rng.gen_range(0..4) {
                    0 => h.liveness = Liveness::Connected,
                    1 => h.liveness = Liveness::Missing,
                    2 => h.liveness = Liveness::Lost,
                    _ => h.host.draining = !h.host.draining,
                }
            }
            // Time passes (dynos come due to cycle).
            6 => *now += time::Duration::hours(rng.gen_range(1..5)),
            // Everything up, as agents would report.
            _ => {
                for d in dynos.iter_mut().filter(|d| d.state != DynoState::Up) {
                    d.state = DynoState::Up;
                    dirt.apps.insert(d.app_id);
                }
            }
        }
    }
}

/// A pass's work at cluster scale, all of it against the whole plan and table:
/// `MANIFOLD_BENCH_HOSTS=10000 MANIFOLD_BENCH_APPS=100000 cargo test -p manifold-scheduler
/// --lib --release view::bench -- --ignored --nocapture` (BENCHMARKS.md, issue 22).
#[cfg(test)]
mod bench {
    use std::collections::HashSet;
    use std::time::Instant;

    use uuid::Uuid;

    use super::View;
    use crate::model::{Dyno, DynoState};
    use crate::reconciler::tests::{app, apply, host, t0};
    use crate::reconciler::{plan, plan_apps, AppDesired, Cycling, HostView, Liveness, Load};
    use crate::routing::routes;
    use crate::sync::Dirt;

    fn env(name: &str, default: usize) -> usize {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[test]
    #[ignore = "a benchmark: run it on its own with --ignored --nocapture"]
    fn a_pass_at_scale_full_and_incremental() {
        let n_hosts = env("MANIFOLD_BENCH_HOSTS", 1_000);
        let n_apps = env("MANIFOLD_BENCH_APPS", 10_000);
        let cycling = Cycling::daily();
        let hosts: Vec<HostView> = (0..n_hosts)
            .map(|i| {
                let mut h = host(&format!("host-{i:05}"), Liveness::Connected);
                h.host.memory_bytes = 256 << 30;
                h.host.dyno_slots = 400;
                h
            })
            .collect();
        let apps: Vec<AppDesired> = (0..n_apps)
            .map(|i| {
                let mut want = app(6, 4, 1);
                let id = Uuid::from_u128(1_000_000 + i as u128);
                want.app.id = id;
                want.app.name = format!("app-{i:07}");
                for f in &mut want.formation {
                    f.app_id = id;
                }
                want
            })
            .collect();
        let mut dynos: Vec<Dyno> = Vec::new();
        let start = Instant::now();
        let first = plan(&hosts, &dynos, &apps, t0(), &cycling);
        eprintln!(
            "placed {} dynos on {n_hosts} hosts for {n_apps} apps in {:?}",
            first.changes.create.len(),
            start.elapsed()
        );
        apply(&mut dynos, &first);
        for d in &mut dynos {
            d.state = DynoState::Up;
            d.port = Some(30000);
        }
        let no_stops = HashSet::new();

        // The view keeps the load; a pass does not count it.
        let load = Load::of(&dynos);
        let start = Instant::now();
        let all: Vec<&Dyno> = dynos.iter().collect();
        let every: Vec<&AppDesired> = apps.iter().collect();
        let again = plan_apps(&hosts, &load, &all, &every, None, t0(), &cycling);
        let planned = start.elapsed();
        let table = routes(&hosts, &all, &every, &no_stops);
        let full = start.elapsed();
        assert!(again.is_empty(), "a settled cluster: nothing to do");
        assert_eq!(table.len(), n_apps);
        eprintln!("full pass: plan {planned:?}, plan and routes {full:?}");

        let mut view = View::default();
        view.changed(&hosts, Dirt::default(), t0());
        view.load(apps.clone(), dynos.clone(), &cycling);
        // A storm's pass: 100 apps changed (a scale each).
        let changed: HashSet<Uuid> = apps
            .iter()
            .step_by(n_apps / 100)
            .map(|a| a.app.id)
            .collect();
        let theirs: Vec<AppDesired> = apps
            .iter()
            .filter(|a| changed.contains(&a.app.id))
            .map(|a| {
                let mut a = a.clone();
                a.formation[0].quantity += 1;
                a
            })
            .collect();
        let their_dynos: Vec<Dyno> = dynos
            .iter()
            .filter(|d| changed.contains(&d.app_id))
            .cloned()
            .collect();
        let start = Instant::now();
        let dirt = Dirt {
            apps: changed.clone(),
            ..Dirt::default()
        };
        let only = view.changed(&hosts, dirt, t0());
        view.replace(&only, theirs, their_dynos, &cycling);
        let incremental = plan_apps(
            &hosts,
            view.room(),
            &view.dynos_of(Some(&only)),
            &view.apps(Some(&only)),
            Some(&only),
            t0(),
            &cycling,
        );
        let planned = start.elapsed();
        let table = routes(
            &hosts,
            &view.dynos_of(Some(&only)),
            &view.apps(Some(&only)),
            &no_stops,
        );
        view.applied(&incremental, Some(&only), &cycling);
        let pass = start.elapsed();
        assert_eq!(incremental.changes.create.len(), changed.len());
        assert_eq!(table.len(), changed.len());
        eprintln!(
            "incremental pass of {} apps: plan {planned:?}, plan, routes and view {pass:?}",
            only.len()
        );
    }
}
