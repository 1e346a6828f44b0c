//! The reconciler: desired state (each app's formation × its current release) against what
//! is placed and observed, turned into dyno changes. Level-triggered: [`plan`] is a pure
//! function of a snapshot, never told why it runs, so running it twice changes nothing the
//! second time and running it after a restart picks up where things are.
//!
//! ```text
//! for each app, process type t with quantity q, size s, command c of release vR:
//!   t.1 … t.q   keep one running dyno of that name on release vR and size s (on a host
//!               that is not lost); replace any other (new dyno placed, old one stopped:
//!               Heroku starts the new dyno as soon as it signals the old one)
//!   t.(q+1) …   stop
//! dynos on lost hosts        forget (the host is told to stop them if it comes back)
//! dynos on draining hosts    replace elsewhere; the old one stops once the new one is
//!  and dynos due to cycle    placed (a web dyno: once the new one is up); one dyno of a
//!                            process type cycles at a time
//! with preboot               a web dyno of an older release stops once its replacement
//!                            is up (without: at once, as on Heroku)
//! types not in the formation stop
//! a sleeping app            its eco dynos (web and worker) stop until it is woken
//! one-offs (run, release)   left alone while they run (placed by `oneoff`, never
//!                           replaced, cycled or moved); forgotten once ended
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};

use manifold_dyno::{is_web, DynoName, DynoSize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{App, Desired, Dyno, DynoState, Formation, Host, Release, Slug};
use crate::planner::{HostSpec, Placed, Planner, Rejection, Request, Room};
use crate::store::DynoChanges;

/// How the hub sees a host right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its agent is connected.
    Connected,
    /// Disconnected, but within the heartbeat deadline: its dynos are assumed to run.
    Missing,
    /// Past the deadline: its dynos are placed elsewhere.
    Lost,
}

/// One host with its liveness.
#[derive(Debug, Clone)]
pub struct HostView {
    pub host: Host,
    pub liveness: Liveness,
}

/// What one app wants: its formation and the release it should run.
#[derive(Debug, Clone)]
pub struct AppDesired {
    pub app: App,
    pub formation: Vec<Formation>,
    /// The current release and its slug; `None` until the first deploy.
    pub release: Option<(Release, Slug)>,
}

/// A dyno the planner found no room for.
#[derive(Debug, Clone)]
pub struct Unplaced {
    pub app: String,
    pub name: String,
    pub size: String,
    pub rejection: Rejection,
}

/// The reconciler's decision.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: DynoChanges,
    /// Dynos whose daily cycle began in this plan (their replacements are in `changes`).
    pub cycling: Vec<String>,
    pub unplaced: Vec<Unplaced>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.create.is_empty()
            && self.changes.stop.is_empty()
            && self.changes.delete.is_empty()
    }
}

/// Memory a dyno of this size reserves on its host (its quota: Heroku's RAM figure).
pub fn size_memory(size: &str) -> u64 {
    size.parse::<DynoSize>()
        .map(|s| s.limits().memory_quota)
        .unwrap_or(0)
}

/// Whether dynos of this size sleep when their app is idle (eco).
pub fn sleeps(size: &str) -> bool {
    size.parse::<DynoSize>().is_ok_and(|s| s.limits().sleeps)
}

/// The number in `web.12`.
pub fn dyno_index(name: &str) -> Option<u32> {
    DynoName::parse(name).ok().map(|n| n.index)
}

/// Daily cycling: every dyno is replaced once per `interval` plus a random part of `jitter`
/// (Heroku: 24 h plus 0 to 216 min), independently per dyno, so an app's dynos are not
/// cycled together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycling {
    pub interval: std::time::Duration,
    pub jitter: std::time::Duration,
}

impl Cycling {
    /// Heroku's figures: 24 h, plus up to 216 min (15% of the interval).
    pub fn daily() -> Cycling {
        Cycling::every(std::time::Duration::from_secs(24 * 3600))
    }

    /// An interval with Heroku's proportion of jitter (216 min of 24 h = 15%).
    pub fn every(interval: std::time::Duration) -> Cycling {
        Cycling {
            interval,
            jitter: interval.mul_f64(0.15),
        }
    }

    /// When the dyno is due: its start plus the interval plus its own share of the jitter,
    /// drawn from its id (stable across scheduler restarts, different for every dyno).
    pub fn due(&self, d: &Dyno) -> OffsetDateTime {
        let hash = d.id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let jitter_ms = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 { 0 } else { hash % jitter_ms };
        d.created_at + self.interval + std::time::Duration::from_millis(extra)
    }
}

/// The room dynos take on each host (memory reserved, slots), by host id: what the
/// planner needs to know of the dynos whose spread it never looks at, those of the apps
/// not planned. The view keeps it as dynos come and go, so that a pass for a few apps
/// reads only their dynos, not every dyno of the cluster.
///
/// It counts every dyno, whatever its host's liveness: a host that is not connected, or
/// is draining, takes no new dyno, so what it holds is never looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Load(HashMap<String, Room>);

impl Load {
    /// The room `dynos` take.
    pub fn of<'a>(dynos: impl IntoIterator<Item = &'a Dyno>) -> Load {
        let mut load = Load::default();
        for d in dynos {
            load.add(d);
        }
        load
    }

    /// A dyno now takes room on its host.
    pub fn add(&mut self, d: &Dyno) {
        let room = self.0.entry(d.host_id.clone()).or_default();
        room.memory_bytes = room.memory_bytes.saturating_add(size_memory(&d.size));
        room.dynos = room.dynos.saturating_add(1);
    }

    /// A dyno no longer takes room (it was forgotten, or replaced in the view).
    pub fn remove(&mut self, d: &Dyno) {
        if let Some(room) = self.0.get_mut(&d.host_id) {
            room.memory_bytes = room.memory_bytes.saturating_sub(size_memory(&d.size));
            room.dynos = room.dynos.saturating_sub(1);
            if room.dynos == 0 {
                self.0.remove(&d.host_id);
            }
        }
    }

    /// The room taken on one host.
    pub fn on(&self, host: &str) -> Room {
        self.0.get(host).copied().unwrap_or_default()
    }
}

/// Decides what to create, stop and forget. Pure: the same snapshot gives the same plan
/// (but for new dyno ids).
pub fn plan(
    hosts: &[HostView],
    dynos: &[Dyno],
    apps: &[AppDesired],
    now: OffsetDateTime,
    cycling: &Cycling,
) -> Plan {
    let load = Load::of(dynos);
    let dynos: Vec<&Dyno> = dynos.iter().collect();
    let apps: Vec<&AppDesired> = apps.iter().collect();
    plan_apps(hosts, &load, &dynos, &apps, None, now, cycling)
}

/// [`plan`] for some apps only (`only`: their ids; `None`: every app), what an incremental
/// reconcile runs for the apps that changed. `load` is the room every dyno of the cluster
/// takes (each takes room on its host), `dynos` the planned apps' dynos (every dyno when
/// `only` is `None`), all of them counted in `load`; `apps` the desired state of the apps
/// planned, in name order. Dynos of other apps are left alone: when nothing about an app
/// changed since a plan for it was carried out, a full plan leaves it alone too, so with
/// the same snapshot the result is the full plan's (but for new dyno ids). The planner
/// spreads a process type by its dynos per host, which only the planned apps' dynos
/// decide; the others count only for room.
pub fn plan_apps(
    hosts: &[HostView],
    load: &Load,
    dynos: &[&Dyno],
    apps: &[&AppDesired],
    only: Option<&HashSet<Uuid>>,
    now: OffsetDateTime,
    cycling: &Cycling,
) -> Plan {
    let mut out = Plan::default();
    let liveness: HashMap<&str, Liveness> = hosts
        .iter()
        .map(|h| (h.host.id.as_str(), h.liveness))
        .collect();
    let lost = |d: &Dyno| {
        liveness
            .get(d.host_id.as_str())
            .is_none_or(|l| *l == Liveness::Lost)
    };
    let planned = |d: &Dyno| only.is_none_or(|o| o.contains(&d.app_id));

    let app_names: HashMap<Uuid, &str> = apps
        .iter()
        .map(|a| (a.app.id, a.app.name.as_str()))
        .collect();
    let dynos: Vec<&Dyno> = dynos.iter().copied().filter(|d| planned(d)).collect();
    let mut live: Vec<&Dyno> = Vec::new();
    for &d in &dynos {
        if lost(d) {
            out.changes.delete.push(d.id.clone());
        } else {
            live.push(d);
        }
    }
    let mut planner = planner_for(hosts, load, &dynos, &live);

    let draining: HashSet<&str> = hosts
        .iter()
        .filter(|h| h.host.draining)
        .map(|h| h.host.id.as_str())
        .collect();
    let mut by_app: HashMap<Uuid, Vec<&Dyno>> = HashMap::new();
    for d in &live {
        if d.is_one_off() {
            // A one-off runs once: when it ended (or its app is gone) it is forgotten, and
            // it is never replaced, cycled or moved.
            if d.state.is_ended() {
                out.changes.delete.push(d.id.clone());
            }
        } else if d.desired == Desired::Running {
            by_app.entry(d.app_id).or_default().push(d);
        }
    }
    for d in &live {
        if !app_names.contains_key(&d.app_id) && d.desired == Desired::Running {
            out.changes.stop.push(d.id.clone());
        }
    }

    for &want in apps {
        let running = by_app.remove(&want.app.id).unwrap_or_default();
        let mut by_name: BTreeMap<&str, Vec<&Dyno>> = BTreeMap::new();
        for d in running {
            by_name.entry(d.name.as_str()).or_default().push(d);
        }
        let mut wanted: BTreeMap<String, (&Formation, &Release, &Slug, &String)> = BTreeMap::new();
        if let Some((release, slug)) = &want.release {
            for f in &want.formation {
                let Some(command) = slug.process_types.get(&f.process_type) else {
                    continue;
                };
                // A sleeping app's eco dynos (web and worker alike: Heroku's rule) stop
                // until a request wakes it.
                let quantity = if want.app.sleeping && sleeps(&f.size) {
                    0
                } else {
                    f.quantity
                };
                for i in 1..=quantity {
                    wanted.insert(
                        DynoName::new(&f.process_type, i).to_string(),
                        (f, release, slug, command),
                    );
                }
            }
        }
        // Stop what is no longer wanted first, so its room counts for the new ones. A
        // current dyno on a draining host is moving: it keeps running until its replacement
        // is placed, and for a web dyno until the replacement is `up` (preboot semantics).
        let mut moving: HashMap<String, Vec<&Dyno>> = HashMap::new();
        // Cycling starts for at most one dyno of a process type at a time, and only while
        // all of that type are up and none is being replaced: an app's dynos never cycle
        // together.
        let mut settling: HashSet<&str> = HashSet::new();
        for ds in by_name.values() {
            for d in ds {
                if ds.len() > 1 || d.state != DynoState::Up {
                    settling.insert(d.process_type.as_str());
                }
            }
        }
        for (name, ds) in &by_name {
            let mut leaving: HashSet<&str> = ds
                .iter()
                .filter(|d| draining.contains(d.host_id.as_str()))
                .map(|d| d.id.as_str())
                .collect();
            let expired = |d: &Dyno| now >= cycling.due(d);
            match ds.as_slice() {
                [d] if expired(d) && settling.insert(d.process_type.as_str()) => {
                    out.cycling.push(d.id.clone());
                    leaving.insert(d.id.as_str());
                }
                [_] => {}
                _ => leaving.extend(ds.iter().filter(|d| expired(d)).map(|d| d.id.as_str())),
            }
            let current = |d: &&&Dyno| {
                wanted.get(*name).is_some_and(|(f, release, _, command)| {
                    d.release_version == release.version
                        && d.size == f.size
                        && &d.command == *command
                })
            };
            let mut settled: Vec<&Dyno> = ds
                .iter()
                .filter(current)
                .filter(|d| !leaving.contains(d.id.as_str()))
                .copied()
                .collect();
            // Prefer one that is up, then the oldest.
            settled.sort_by_key(|d| (d.state != DynoState::Up, d.created_at));
            let keep = settled.first().copied();
            let web = ds.iter().any(|d| is_web(&d.process_type));
            // With preboot, a web dyno of an older release (or size) is also replaced
            // up-first: it stops once the new one is up.
            let preboot =
                web && want.app.features.contains("preboot") && wanted.contains_key(*name);
            for d in ds {
                let stop = if keep.is_some_and(|k| k.id == d.id) {
                    false
                } else if (current(&d) && leaving.contains(d.id.as_str()))
                    || (preboot && !current(&d))
                {
                    match keep {
                        Some(k) => !web || k.state == DynoState::Up,
                        None => {
                            moving.entry(name.to_string()).or_default().push(d);
                            false
                        }
                    }
                } else {
                    true
                };
                if stop {
                    out.changes.stop.push(d.id.clone());
                    planner.remove(
                        &d.host_id,
                        &d.app_id.to_string(),
                        &d.process_type,
                        size_memory(&d.size),
                    );
                }
            }
            if keep.is_some() {
                wanted.remove(*name);
            }
        }
        let mut wanted: Vec<_> = wanted.into_iter().collect();
        wanted.sort_by_key(|(name, (f, ..))| (f.process_type.clone(), dyno_index(name)));
        for (name, (f, release, slug, command)) in wanted {
            let request = Request {
                app: want.app.id.to_string(),
                process_type: f.process_type.clone(),
                stack: slug.stack.clone(),
                memory_bytes: size_memory(&f.size),
            };
            match planner.place(&request) {
                Ok(host) => {
                    // A worker moves at once; a web dyno waits for its replacement to be up.
                    if !is_web(&f.process_type) {
                        for d in moving.remove(&name).unwrap_or_default() {
                            out.changes.stop.push(d.id.clone());
                        }
                    }
                    out.changes.create.push(Dyno::placed(
                        &want.app,
                        name,
                        release.version,
                        f.size.clone(),
                        command.clone(),
                        host.to_string(),
                        now,
                    ))
                }
                Err(rejection) => out.unplaced.push(Unplaced {
                    app: want.app.name.clone(),
                    name,
                    size: f.size.clone(),
                    rejection,
                }),
            }
        }
    }
    out
}

/// A planner loaded with the hosts and the room dynos take on them: `load` counts every
/// dyno, `listed` (counted in `load`) are told apart by app and process type, those of
/// them on hosts that are not lost (`live`) placed one by one so the planner can spread
/// their process types and give their room back when they stop.
fn planner_for(hosts: &[HostView], load: &Load, listed: &[&Dyno], live: &[&Dyno]) -> Planner {
    let mut others: HashMap<&str, Room> = hosts
        .iter()
        .map(|h| (h.host.id.as_str(), load.on(&h.host.id)))
        .collect();
    for d in listed {
        if let Some(room) = others.get_mut(d.host_id.as_str()) {
            room.memory_bytes = room.memory_bytes.saturating_sub(size_memory(&d.size));
            room.dynos = room.dynos.saturating_sub(1);
        }
    }
    Planner::new(
        hosts
            .iter()
            .map(|h| HostSpec {
                id: h.host.id.clone(),
                stacks: h.host.stacks.clone(),
                memory_bytes: h.host.memory_bytes,
                dyno_slots: h.host.dyno_slots,
                eligible: h.liveness == Liveness::Connected && !h.host.draining,
                taken: others.get(h.host.id.as_str()).copied().unwrap_or_default(),
            })
            .collect(),
        live.iter().map(|d| Placed {
            host: d.host_id.clone(),
            app: d.app_id.to_string(),
            process_type: d.process_type.clone(),
            memory_bytes: size_memory(&d.size),
        }),
    )
}

/// Where a one-off dyno goes: the host the planner picks with every dyno counted (`load`),
/// spread among its app's dynos (`own`, counted in `load`), as for any dyno.
pub fn place_one_off(
    hosts: &[HostView],
    load: &Load,
    own: &[Dyno],
    request: &Request,
) -> Result<String, Rejection> {
    let live_hosts: HashSet<&str> = hosts
        .iter()
        .filter(|h| h.liveness != Liveness::Lost)
        .map(|h| h.host.id.as_str())
        .collect();
    let own: Vec<&Dyno> = own.iter().collect();
    let live: Vec<&Dyno> = own
        .iter()
        .filter(|d| live_hosts.contains(d.host_id.as_str()))
        .copied()
        .collect();
    planner_for(hosts, load, &own, &live)
        .place(request)
        .map(|h| h.to_string())
}

/// Fixtures shared with the tests of modules that read the same snapshot (`routing`).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::ReleaseStatus;

    pub(crate) fn t0() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH
    }

    pub(crate) fn host(id: &str, liveness: Liveness) -> HostView {
        HostView {
            host: Host {
                id: id.into(),
                address: "127.0.0.1".into(),
                memory_bytes: 8 << 30,
                dyno_slots: 10,
                stacks: vec!["testing".into()],
                generation: 0,
                draining: false,
                first_seen: t0(),
                last_seen: t0(),
            },
            liveness,
        }
    }

    pub(crate) fn app(web: u32, worker: u32, version: u32) -> AppDesired {
        let id = Uuid::from_u128(1);
        let formation = [("web", web), ("worker", worker)]
            .into_iter()
            .map(|(t, q)| Formation {
                app_id: id,
                process_type: t.into(),
                quantity: q,
                size: "standard-1x".into(),
                updated_at: t0(),
            })
            .collect();
        let slug = Slug {
            id: Uuid::from_u128(2),
            app_id: id,
            sha256: "0".repeat(64),
            size: 1,
            process_types: BTreeMap::from([
                ("web".to_string(), "serve".to_string()),
                ("worker".to_string(), "work".to_string()),
            ]),
            stack: "testing".into(),
            buildpacks: vec![],
            created_at: t0(),
        };
        AppDesired {
            app: App {
                id,
                name: "demo".into(),
                stack: "testing".into(),
                config: BTreeMap::new(),
                features: Default::default(),
                sleeping: false,
                maintenance: false,
                acm: false,
                boot_timeout: None,
                stop_timeout: None,
                created_at: t0(),
                updated_at: t0(),
            },
            formation,
            release: Some((
                Release {
                    app_id: id,
                    version,
                    slug_id: slug.id,
                    config: BTreeMap::new(),
                    description: String::new(),
                    user: String::new(),
                    status: ReleaseStatus::Succeeded,
                    created_at: t0(),
                },
                slug,
            )),
        }
    }

    /// Applies a plan to the dyno rows the way the store does.
    pub(crate) fn apply(dynos: &mut Vec<Dyno>, plan: &Plan) {
        dynos.retain(|d| !plan.changes.delete.contains(&d.id));
        for d in dynos.iter_mut() {
            if plan.changes.stop.contains(&d.id) {
                d.desired = Desired::Stopped;
            }
        }
        dynos.extend(plan.changes.create.iter().cloned());
    }

    /// The dynos a plan stops.
    fn stopped_by<'a>(dynos: &'a [Dyno], p: &Plan) -> Vec<&'a Dyno> {
        dynos
            .iter()
            .filter(|d| p.changes.stop.contains(&d.id))
            .collect()
    }

    fn stopped_names<'a>(dynos: &'a [Dyno], p: &Plan) -> Vec<&'a str> {
        stopped_by(dynos, p)
            .into_iter()
            .map(|d| d.name.as_str())
            .collect()
    }

    fn running(dynos: &[Dyno]) -> Vec<(String, String, u32)> {
        let mut v: Vec<_> = dynos
            .iter()
            .filter(|d| d.desired == Desired::Running)
            .map(|d| (d.name.clone(), d.host_id.clone(), d.release_version))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn places_the_formation_spread_and_is_idempotent() {
        let hosts = [
            host("a", Liveness::Connected),
            host("b", Liveness::Connected),
        ];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(2, 1, 1)], t0(), &Cycling::daily());
        assert!(p.unplaced.is_empty());
        apply(&mut dynos, &p);
        assert_eq!(
            running(&dynos),
            vec![
                ("web.1".into(), "a".into(), 1),
                ("web.2".into(), "b".into(), 1),
                ("worker.1".into(), "a".into(), 1),
            ]
        );
        let again = plan(&hosts, &dynos, &[app(2, 1, 1)], t0(), &Cycling::daily());
        assert!(again.is_empty(), "a second run changes nothing: {again:?}");
    }

    #[test]
    fn a_sleeping_app_stops_its_eco_dynos_and_keeps_the_others() {
        let hosts = [host("a", Liveness::Connected)];
        let mut dynos = Vec::new();
        let mut eco = app(1, 1, 1);
        for f in &mut eco.formation {
            if is_web(&f.process_type) {
                f.size = "eco".into();
            }
        }
        let p = plan(&hosts, &dynos, &[eco.clone()], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        eco.app.sleeping = true;
        let p = plan(&hosts, &dynos, &[eco.clone()], t0(), &Cycling::daily());
        assert_eq!(
            stopped_names(&dynos, &p),
            ["web.1"],
            "the eco web dyno sleeps"
        );
        assert!(p.changes.create.is_empty());
        apply(&mut dynos, &p);
        assert!(plan(&hosts, &dynos, &[eco.clone()], t0(), &Cycling::daily()).is_empty());
        eco.app.sleeping = false;
        let p = plan(&hosts, &dynos, &[eco], t0(), &Cycling::daily());
        let woken: Vec<&str> = p.changes.create.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(woken, ["web.1"], "waking starts it again");
    }

    #[test]
    fn a_new_release_replaces_every_dyno_and_scale_down_stops_the_highest() {
        let hosts = [host("a", Liveness::Connected)];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(3, 0, 1)], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        let p = plan(&hosts, &dynos, &[app(2, 0, 2)], t0(), &Cycling::daily());
        assert_eq!(p.changes.stop.len(), 3);
        assert_eq!(p.changes.create.len(), 2);
        apply(&mut dynos, &p);
        assert_eq!(
            running(&dynos),
            vec![
                ("web.1".into(), "a".into(), 2),
                ("web.2".into(), "a".into(), 2)
            ]
        );
        let p = plan(&hosts, &dynos, &[app(1, 0, 2)], t0(), &Cycling::daily());
        assert!(p.changes.create.is_empty());
        let stopped = stopped_names(&dynos, &p);
        assert_eq!(stopped, vec!["web.2"]);
    }

    #[test]
    fn dynos_of_a_lost_host_are_replaced_elsewhere_but_not_of_a_missing_one() {
        let mut hosts = vec![
            host("a", Liveness::Connected),
            host("b", Liveness::Connected),
        ];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(2, 0, 1)], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        hosts[1].liveness = Liveness::Missing;
        assert!(plan(&hosts, &dynos, &[app(2, 0, 1)], t0(), &Cycling::daily()).is_empty());
        hosts[1].liveness = Liveness::Lost;
        let p = plan(&hosts, &dynos, &[app(2, 0, 1)], t0(), &Cycling::daily());
        assert_eq!(p.changes.delete.len(), 1);
        apply(&mut dynos, &p);
        assert_eq!(
            running(&dynos),
            vec![
                ("web.1".into(), "a".into(), 1),
                ("web.2".into(), "a".into(), 1)
            ]
        );
    }

    #[test]
    fn draining_moves_workers_at_once_and_web_dynos_once_their_replacement_is_up() {
        let mut hosts = vec![host("a", Liveness::Connected)];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        hosts.push(host("b", Liveness::Connected));
        hosts[0].host.draining = true;
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        let stopped = stopped_names(&dynos, &p);
        assert_eq!(
            stopped,
            vec!["worker.1"],
            "the web dyno waits for its replacement"
        );
        let created: Vec<(&str, &str)> = p
            .changes
            .create
            .iter()
            .map(|d| (d.name.as_str(), d.host_id.as_str()))
            .collect();
        assert_eq!(created, vec![("web.1", "b"), ("worker.1", "b")]);
        apply(&mut dynos, &p);
        // The new web.1 is not up yet: nothing changes.
        assert!(plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily()).is_empty());
        for d in dynos.iter_mut().filter(|d| d.host_id == "b") {
            d.state = DynoState::Up;
        }
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        assert!(p.changes.create.is_empty());
        let stopped: Vec<(&str, &str)> = stopped_by(&dynos, &p)
            .into_iter()
            .map(|d| (d.name.as_str(), d.host_id.as_str()))
            .collect();
        assert_eq!(stopped, vec![("web.1", "a")]);
        apply(&mut dynos, &p);
        assert!(plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily()).is_empty());
    }

    #[test]
    fn cycling_replaces_each_dyno_after_its_interval_one_per_type_at_a_time() {
        let cycling = Cycling::every(std::time::Duration::from_secs(10));
        let at = |s: i64| t0() + time::Duration::seconds(s);
        let hosts = [host("a", Liveness::Connected)];
        let apps = [app(2, 1, 1)];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &apps, t0(), &cycling);
        apply(&mut dynos, &p);
        let up = |dynos: &mut Vec<Dyno>| {
            for d in dynos.iter_mut() {
                d.state = DynoState::Up;
            }
        };
        up(&mut dynos);
        for d in &dynos {
            let due = cycling.due(d);
            assert!(
                due >= at(10) && due < at(12),
                "{due}: 10 s plus up to 1.5 s"
            );
        }
        assert!(plan(&hosts, &dynos, &apps, at(9), &cycling).is_empty());

        let p = plan(&hosts, &dynos, &apps, at(12), &cycling);
        assert_eq!(
            p.cycling.len(),
            2,
            "one web and one worker dyno: {:?}",
            p.cycling
        );
        let stopped = stopped_names(&dynos, &p);
        assert_eq!(
            stopped,
            vec!["worker.1"],
            "a web dyno stops once its replacement is up"
        );
        assert_eq!(p.changes.create.len(), 2);
        apply(&mut dynos, &p);
        let p = plan(&hosts, &dynos, &apps, at(12), &cycling);
        assert!(
            p.is_empty(),
            "nothing more until the replacements are up: {p:?}"
        );
        // The replacements are up at 13 s: the old web dyno stops; the other web dyno
        // starts its cycle only after that.
        up(&mut dynos);
        let p = plan(&hosts, &dynos, &apps, at(13), &cycling);
        assert!(p.cycling.is_empty());
        assert_eq!(p.changes.stop.len(), 1);
        apply(&mut dynos, &p);
        let p = plan(&hosts, &dynos, &apps, at(13), &cycling);
        assert_eq!(p.cycling.len(), 1, "now the other web dyno");
        apply(&mut dynos, &p);
        up(&mut dynos);
        let p = plan(&hosts, &dynos, &apps, at(14), &cycling);
        apply(&mut dynos, &p);
        // Every dyno is new now, and none is due before 22 s.
        assert!(plan(&hosts, &dynos, &apps, at(21), &cycling).is_empty());
        assert_eq!(
            running(&dynos).len(),
            3,
            "still the formation: {:?}",
            running(&dynos)
        );
        assert!(dynos
            .iter()
            .filter(|d| d.desired == Desired::Running)
            .all(|d| d.created_at >= at(12)));
    }

    #[test]
    fn with_preboot_old_web_dynos_stop_only_once_the_new_release_is_up() {
        let hosts = [host("a", Liveness::Connected)];
        let with_preboot = |web, worker, version| {
            let mut a = app(web, worker, version);
            a.app.features.insert("preboot".into());
            a
        };
        let mut dynos = Vec::new();
        let p = plan(
            &hosts,
            &dynos,
            &[with_preboot(2, 1, 1)],
            t0(),
            &Cycling::daily(),
        );
        apply(&mut dynos, &p);
        for d in &mut dynos {
            d.state = DynoState::Up;
        }
        let p = plan(
            &hosts,
            &dynos,
            &[with_preboot(2, 1, 2)],
            t0(),
            &Cycling::daily(),
        );
        assert_eq!(p.changes.create.len(), 3);
        let stopped = stopped_names(&dynos, &p);
        assert_eq!(stopped, vec!["worker.1"], "only web dynos are prebooted");
        apply(&mut dynos, &p);
        assert!(plan(
            &hosts,
            &dynos,
            &[with_preboot(2, 1, 2)],
            t0(),
            &Cycling::daily()
        )
        .is_empty());
        for d in &mut dynos {
            d.state = DynoState::Up;
        }
        let p = plan(
            &hosts,
            &dynos,
            &[with_preboot(2, 1, 2)],
            t0(),
            &Cycling::daily(),
        );
        let stopped: Vec<(&str, u32)> = stopped_by(&dynos, &p)
            .into_iter()
            .map(|d| (d.name.as_str(), d.release_version))
            .collect();
        assert_eq!(stopped, vec![("web.1", 1), ("web.2", 1)]);
        // Scaling down with preboot still stops at once.
        apply(&mut dynos, &p);
        let p = plan(
            &hosts,
            &dynos,
            &[with_preboot(1, 1, 2)],
            t0(),
            &Cycling::daily(),
        );
        assert_eq!(p.changes.stop.len(), 1);
    }

    #[test]
    fn a_draining_host_with_nowhere_to_go_keeps_its_dynos() {
        let mut hosts = vec![host("a", Liveness::Connected)];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        hosts[0].host.draining = true;
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        assert!(p.changes.stop.is_empty() && p.changes.create.is_empty());
        assert_eq!(p.unplaced.len(), 2);
    }

    #[test]
    fn a_deleted_app_and_a_removed_type_are_stopped_and_no_room_is_reported() {
        let hosts = [host("a", Liveness::Connected)];
        let mut dynos = Vec::new();
        let p = plan(&hosts, &dynos, &[app(1, 1, 1)], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        let p = plan(&hosts, &dynos, &[app(1, 0, 1)], t0(), &Cycling::daily());
        assert_eq!(p.changes.stop.len(), 1);
        let p = plan(&hosts, &dynos, &[], t0(), &Cycling::daily());
        assert_eq!(p.changes.stop.len(), 2);
        let p = plan(&hosts, &[], &[app(11, 0, 1)], t0(), &Cycling::daily());
        assert_eq!(p.changes.create.len(), 10, "ten slots");
        assert_eq!(p.unplaced.len(), 1);
        assert_eq!(p.unplaced[0].name, "web.11", "placed in natural order");
    }

    /// A one-off dyno as `oneoff` makes it.
    fn one_off(name: &str, host: &str) -> Dyno {
        let mut d = app(0, 0, 1);
        let mut dynos = Vec::new();
        d.formation[0].quantity = 1;
        let p = plan(&[host_view(host)], &dynos, &[d], t0(), &Cycling::daily());
        apply(&mut dynos, &p);
        let mut dyno = dynos.remove(0);
        dyno.name = name.to_string();
        dyno.process_type = DynoName::parse(name).expect("a dyno name").process_type;
        dyno.id = format!("demo-{}", name.replace('.', "-"));
        dyno
    }

    fn host_view(id: &str) -> HostView {
        host(id, Liveness::Connected)
    }

    #[test]
    fn one_offs_run_once_outside_the_formation_and_are_forgotten_when_they_end() {
        let mut hosts = vec![
            host("a", Liveness::Connected),
            host("b", Liveness::Connected),
        ];
        let run = one_off("run.4821", "a");
        let release = one_off("release.1234", "b");
        let mut dynos = vec![run.clone(), release.clone()];
        // Not in any formation, yet neither stopped nor replaced; a restart of every other
        // dyno (cycling due long ago) leaves them alone too.
        let late = t0() + time::Duration::days(30);
        let p = plan(&hosts, &dynos, &[app(0, 0, 1)], late, &Cycling::daily());
        assert!(p.is_empty(), "{:?}", p.changes);
        // They take room: with one slot left on each host, a web dyno goes nowhere.
        for h in &mut hosts {
            h.host.dyno_slots = 1;
        }
        let p = plan(&hosts, &dynos, &[app(1, 0, 1)], t0(), &Cycling::daily());
        assert_eq!(p.unplaced.len(), 1, "one-offs count against the slots");
        // Ended: forgotten, not restarted (whatever the exit status).
        dynos[0].state = DynoState::Complete;
        dynos[0].exit_status = Some(3);
        let p = plan(&hosts, &dynos, &[app(0, 0, 1)], t0(), &Cycling::daily());
        assert_eq!(p.changes.delete, vec![run.id.clone()]);
        assert!(p.changes.create.is_empty() && p.changes.stop.is_empty());
        // Its host lost: forgotten, not placed again elsewhere.
        hosts[1].liveness = Liveness::Lost;
        let p = plan(
            &hosts,
            &dynos[1..],
            &[app(0, 0, 1)],
            t0(),
            &Cycling::daily(),
        );
        assert_eq!(p.changes.delete, vec![release.id.clone()]);
        assert!(p.changes.create.is_empty());
    }

    #[test]
    fn a_one_off_is_placed_like_any_dyno_and_refused_without_room() {
        let mut hosts = vec![host("a", Liveness::Connected), host("b", Liveness::Lost)];
        let request = Request {
            app: Uuid::from_u128(1).to_string(),
            process_type: "run".into(),
            stack: "testing".into(),
            memory_bytes: size_memory("standard-1x"),
        };
        let place =
            |hosts: &[HostView], own: &[Dyno]| place_one_off(hosts, &Load::of(own), own, &request);
        assert_eq!(place(&hosts, &[]).as_deref(), Ok("a"));
        hosts[0].host.dyno_slots = 1;
        let busy = one_off("run.1000", "a");
        assert!(place(&hosts, std::slice::from_ref(&busy)).is_err());
        // Another app's dyno takes room too, counted only in the load.
        let mut other = busy.clone();
        other.app_id = Uuid::from_u128(7);
        let err = place_one_off(&hosts, &Load::of([&other]), &[], &request);
        assert_eq!(err.map_err(|r| r.no_slots), Err(1));
        // A dyno on a lost host takes no room.
        let mut gone = busy;
        gone.host_id = "b".into();
        assert_eq!(place(&hosts, &[gone]).as_deref(), Ok("a"));
    }
}
