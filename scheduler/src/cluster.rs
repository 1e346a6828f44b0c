//! The cluster as the scheduler reaches it: each host's link to its agent, whether the host
//! is connected, missing or lost, and what each host was last told to run.
//!
//! ```text
//! agent ──Hello──▶ connect (store the host, keep its link) ──▶ push_assignments ──▶ agent
//!       ──any message──▶ seen            link ends ──▶ disconnect: missing, lost after the deadline
//! ```
//!
//! A host's assignments are always its whole set of running dynos (and stopping web dynos
//! whose requests are not done yet, see [`Cluster::hold_stops`]) and of add-on services
//! (see [`crate::addons::wire`]), read from the store, so an agent that missed a message
//! catches up with the next one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manifold_proto::{scheduler_message, Assignment, Assignments, Hello, SchedulerMessage};
use manifold_router::RouteTable;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::addons::wire::ServiceSets;
use crate::leadership::Leadership;
use crate::metrics::Counters;
use crate::model::{App, Desired, Dyno, DynoReport, Slug};
use crate::reconciler::{HostView, Liveness};
use crate::store::{DynoChanges, HostHello, Reported, Store, StoreError};
use crate::sync::lock;

/// How much longer than the heartbeat deadline a host gets to reconnect after the
/// scheduler starts: an agent redials with a backoff of up to 5 s, plus a heartbeat.
const RECONNECT_GRACE: Duration = Duration::from_secs(10);

/// The failover grace's end at the latest, counted from when this replica began to lead.
///
/// A new leader does not know when hosts last sent a heartbeat, so it cannot tell a host
/// that died before the restart from one whose agent is still queued behind the others'
/// `Hello`s. Nomad answers with `failover_heartbeat_ttl`, 300 s for every node after an
/// election. Ours is shorter and ends early: a host not seen in this term stays missing
/// (its dynos stay where they are) for the heartbeat deadline plus [`RECONNECT_GRACE`], and
/// beyond that for as long as other agents' `Hello`s keep arriving, the herd still being
/// admitted, until one [`RECONNECT_GRACE`] passes without one (longer than an agent's
/// longest redial pause, so a herd still coming in is never mistaken for its end). Sixty
/// seconds caps it: 1,000 hosts were all admitted within a few seconds once `Hello`s were
/// batched (BENCHMARKS.md, "The restart herd"), and a host that was already dead when the
/// scheduler restarted has its dynos moved at most a minute later than the deadline would.
const FAILOVER_GRACE_MAX: Duration = Duration::from_secs(60);

/// How often a held stop looks at the dyno's in-flight count.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What an assignment needs of a release: its config and its slug (which also names the
/// stack: the planner placed the dyno by the slug's stack).
type ReleaseInfo = (BTreeMap<String, String>, Slug);

/// What goes to an agent on its link (tonic's stream item).
pub type LinkSender = mpsc::UnboundedSender<Result<SchedulerMessage, tonic::Status>>;

/// A dyno as its log lines are written: its app and name come from the store, never from
/// what the agent says.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub(crate) app: String,
    pub(crate) name: String,
}

/// The sender half of an agent's stream, and when it last said anything.
#[derive(Debug)]
struct Link {
    /// Which connection this is: a host that reconnects replaces its link, and the old
    /// link's end must not remove the new one.
    serial: u64,
    tx: LinkSender,
    last_seen: Instant,
}

/// The hosts' links and what they were sent.
pub struct Cluster {
    store: Arc<dyn Store>,
    counters: Arc<Counters>,
    /// A host whose agent sent nothing for this long is lost.
    heartbeat_deadline: Duration,
    /// Nothing is sent to an agent unless this replica holds the lease at that moment.
    leadership: Arc<Leadership>,
    links: Mutex<HashMap<String, Link>>,
    /// When each known host's link went away (a host never seen since this replica began
    /// to lead counts from `leading_since`, so agents get one deadline to reconnect after a
    /// scheduler restart or a failover).
    gone_since: Mutex<HashMap<String, Instant>>,
    leading_since: Mutex<Instant>,
    /// When the last agent's `Hello` arrived: while they keep arriving a herd is still
    /// being admitted (see [`FAILOVER_GRACE_MAX`]).
    last_hello: Mutex<Option<Instant>>,
    next_serial: AtomicU64,
    /// Each host's dynos as last sent to it, by id: whose lines its agent may send (see
    /// [`crate::logs::LogFeed::ingest`]). Set before the assignments go out, so the agent
    /// can never know of a dyno missing here.
    placed: Mutex<HashMap<String, Arc<HashMap<String, Placed>>>>,
    /// Stopping web dynos kept assigned until their in-flight requests are done, with
    /// the deadline after which they stop anyway.
    held_stops: Mutex<HashMap<String, Instant>>,
    /// Dyno reports on their way to the store, in batches.
    reports: crate::reports::Reports,
    /// Agents' `Hello`s waiting to be admitted, in batches.
    pub(crate) admissions: crate::admission::Admissions,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    pub fn new(
        store: Arc<dyn Store>,
        counters: Arc<Counters>,
        heartbeat_deadline: Duration,
        leadership: Arc<Leadership>,
    ) -> Cluster {
        Cluster {
            reports: crate::reports::Reports::new(store.clone()),
            store,
            counters,
            heartbeat_deadline,
            leadership,
            links: Mutex::new(HashMap::new()),
            gone_since: Mutex::new(HashMap::new()),
            leading_since: Mutex::new(Instant::now()),
            last_hello: Mutex::new(None),
            next_serial: AtomicU64::new(1),
            placed: Mutex::new(HashMap::new()),
            held_stops: Mutex::new(HashMap::new()),
            admissions: crate::admission::Admissions::default(),
        }
    }

    /// Whether a host's agent is connected, missing (within the deadline) or lost.
    pub fn liveness(&self, host: &str) -> Liveness {
        let now = Instant::now();
        let deadline = self.heartbeat_deadline;
        if let Some(link) = lock(&self.links).get(host) {
            return if now.duration_since(link.last_seen) <= deadline {
                Liveness::Connected
            } else {
                Liveness::Lost
            };
        }
        if let Some(gone) = lock(&self.gone_since).get(host) {
            return if now.duration_since(*gone) <= deadline {
                Liveness::Missing
            } else {
                Liveness::Lost
            };
        }
        // A host not heard from since this replica began to lead may be redialling with
        // its longest backoff, or waiting behind the herd: the failover grace.
        let leading = now.duration_since(*lock(&self.leading_since));
        let since_hello = lock(&self.last_hello).map(|last| now.duration_since(last));
        if in_failover_grace(leading, since_hello, deadline) {
            Liveness::Missing
        } else {
            Liveness::Lost
        }
    }

    /// An agent's `Hello` arrived (before it is admitted): the herd after an election is
    /// still coming in (see [`FAILOVER_GRACE_MAX`]).
    pub(crate) fn hello_arrived(&self) {
        *lock(&self.last_hello) = Some(Instant::now());
    }

    /// Every known host with its liveness now.
    pub(crate) async fn host_views(&self) -> Result<Vec<HostView>, StoreError> {
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

    /// This replica begins to lead: every host gets the reconnect grace from now (its agent
    /// is finding the new leader), and what an earlier term of this replica sent is
    /// forgotten (the next assignments are read from the store).
    pub(crate) fn lead_from_now(&self) {
        *lock(&self.leading_since) = Instant::now();
        lock(&self.gone_since).clear();
        lock(&self.placed).clear();
        lock(&self.held_stops).clear();
    }

    /// This replica stopped leading: every agent's link is closed, so that each finds the
    /// leader (a deposed leader must not keep agents listening to it).
    pub(crate) fn unlink_all(&self) {
        lock(&self.links).clear();
    }

    /// Sends a message to a host's agent; false when it is not connected, or when this
    /// replica does not hold the lease right now (see [`Leadership::holds`]).
    pub(crate) fn send(&self, host: &str, message: scheduler_message::Kind) -> bool {
        if self.leadership.holds().is_none() {
            return false;
        }
        lock(&self.links).get(host).is_some_and(|l| {
            l.tx.send(Ok(SchedulerMessage {
                kind: Some(message),
            }))
            .is_ok()
        })
    }

    /// Agents said `Hello`: stores their hosts (in one transaction) and keeps their links
    /// (replacing older ones). Returns each link's serial, for [`Cluster::disconnect`].
    pub(crate) async fn connect(
        &self,
        hellos: &[(&Hello, LinkSender)],
    ) -> Result<Vec<u64>, StoreError> {
        let stored: Vec<HostHello<'_>> = hellos
            .iter()
            .map(|(hello, _)| {
                let capacity = hello.capacity.unwrap_or_default();
                HostHello {
                    id: &hello.host_id,
                    address: &hello.address,
                    memory_bytes: capacity.memory_bytes,
                    dyno_slots: capacity.dyno_slots,
                    stacks: &hello.stacks,
                }
            })
            .collect();
        self.store
            .upsert_hosts(&stored, OffsetDateTime::now_utc())
            .await?;
        let mut serials = Vec::with_capacity(hellos.len());
        let mut links = lock(&self.links);
        let mut gone_since = lock(&self.gone_since);
        for (hello, tx) in hellos {
            let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
            links.insert(
                hello.host_id.clone(),
                Link {
                    serial,
                    tx: tx.clone(),
                    last_seen: Instant::now(),
                },
            );
            gone_since.remove(&hello.host_id);
            serials.push(serial);
        }
        Ok(serials)
    }

    /// The host's agent said something: it is alive.
    pub(crate) fn seen(&self, host: &str) {
        if let Some(link) = lock(&self.links).get_mut(host) {
            link.last_seen = Instant::now();
        }
    }

    /// A link ended. True when it was the host's current link (the host is missing from
    /// now), false when the host had reconnected meanwhile.
    pub(crate) fn disconnect(&self, host: &str, serial: u64) -> bool {
        {
            let mut links = lock(&self.links);
            if links.get(host).is_none_or(|l| l.serial != serial) {
                return false;
            }
            links.remove(host);
        }
        lock(&self.gone_since).insert(host.to_string(), Instant::now());
        true
    }

    /// Forgets the dynos each host was told to stop and no longer runs (`running`: by
    /// host, what its agent listed in its `Hello`): they ended while the link was down.
    pub(crate) async fn forget_ended(
        &self,
        running: &HashMap<&str, HashSet<&str>>,
    ) -> Result<(), StoreError> {
        let hosts: Vec<String> = running.keys().map(|h| (*h).to_owned()).collect();
        let gone: Vec<String> = self
            .store
            .dynos_on_hosts(&hosts)
            .await?
            .into_iter()
            .filter(|d| {
                d.desired == Desired::Stopped
                    && running
                        .get(d.host_id.as_str())
                        .is_some_and(|ids| !ids.contains(d.id.as_str()))
            })
            .map(|d| d.id)
            .collect();
        if !gone.is_empty() {
            self.store
                .apply_dyno_changes(&DynoChanges {
                    delete: gone,
                    ..DynoChanges::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Records a state `host`'s agent reports for one of its dynos; returns the dyno as
    /// updated. A report about a dyno of another host is refused (and logged): it changes
    /// nothing, so a compromised agent cannot mark other hosts' dynos up or down, publish
    /// a port for them or end their release phase. A late report, whose state cannot follow
    /// the stored one, is ignored too (and logged).
    pub(crate) async fn report(
        &self,
        host: &str,
        report: &DynoReport,
    ) -> Result<Option<Dyno>, StoreError> {
        let outcome = self.reports.report(host, report).await?;
        Ok(self.reported(host, report, outcome))
    }

    /// Records many reports as [`Cluster::report`] does each, in batches at once (a batch
    /// of `Hello`s' dynos: `(host, report)`).
    pub(crate) async fn report_all(
        &self,
        reports: &[(String, DynoReport)],
    ) -> Result<(), StoreError> {
        let outcomes = self.reports.report_all(reports).await?;
        for ((host, report), outcome) in reports.iter().zip(outcomes) {
            self.reported(host, report, outcome);
        }
        Ok(())
    }

    /// What a report did: the dyno as updated, or nothing (a refused or late report,
    /// counted and logged).
    fn reported(&self, host: &str, report: &DynoReport, outcome: Reported) -> Option<Dyno> {
        match outcome {
            Reported::Updated(dyno) => Some(*dyno),
            Reported::Unknown => None,
            Reported::OtherHost(owner) => {
                Counters::add(&self.counters.refused_reports, 1);
                tracing::warn!(
                    "host {host}: refused its report that dyno {} is {}: that dyno is on host {owner}",
                    report.id,
                    report.state.as_str()
                );
                None
            }
            Reported::Stale(stored) => {
                tracing::warn!(
                    "host {host}: ignored a late report that dyno {} is {}: it is {}, which \
                     that cannot follow",
                    report.id,
                    report.state.as_str(),
                    stored.as_str()
                );
                None
            }
        }
    }

    /// The dynos last sent to `host`, by id.
    pub(crate) fn placed(&self, host: &str) -> Arc<HashMap<String, Placed>> {
        lock(&self.placed).get(host).cloned().unwrap_or_default()
    }

    /// Sends each of `hosts` its full set of running dynos with its generation. The store
    /// is read once for all of them (a reconcile that changed many hosts pays one read, not
    /// one per host).
    pub async fn push_assignments(
        &self,
        hosts: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<(), StoreError> {
        let hosts: HashSet<String> = hosts.into_iter().map(|h| h.as_ref().to_owned()).collect();
        if hosts.is_empty() {
            return Ok(());
        }
        let known = self.store.hosts().await?;
        let generations: HashMap<String, u64> = known
            .iter()
            .filter(|h| hosts.contains(&h.id))
            .map(|h| (h.id.clone(), h.generation))
            .collect();
        let services = ServiceSets::read(self.store.as_ref(), &known).await?;
        let mut on_hosts: HashMap<String, Vec<Dyno>> = HashMap::new();
        let targets: Vec<String> = generations.keys().cloned().collect();
        for d in self.store.dynos_on_hosts(&targets).await? {
            on_hosts.entry(d.host_id.clone()).or_default().push(d);
        }
        let app_ids: HashSet<Uuid> = on_hosts.values().flatten().map(|d| d.app_id).collect();
        let app_ids: Vec<Uuid> = app_ids.into_iter().collect();
        let apps: HashMap<Uuid, App> = self
            .store
            .apps_of(&app_ids)
            .await?
            .into_iter()
            .map(|a| (a.id, a))
            .collect();
        let held: HashSet<String> = lock(&self.held_stops).keys().cloned().collect();
        let cluster = self.store.cluster_id().await?;
        // Read now, sent with every set: a term that ended meanwhile sends nothing.
        let Some(term) = self.leadership.holds() else {
            return Ok(());
        };
        let mut releases: HashMap<(Uuid, u32), ReleaseInfo> = HashMap::new();
        for (host, generation) in generations {
            let on_host = on_hosts.remove(&host).unwrap_or_default();
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
                // An add-on's lines go to its owning app's log, as Heroku's do.
                .chain(services.placed(&host))
                .collect();
            lock(&self.placed).insert(host.clone(), Arc::new(placed));
            let mut out = Vec::new();
            for d in on_host {
                if d.desired != Desired::Running && !held.contains(&d.id) {
                    continue;
                }
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
                out.push(assignment(app, d, config, slug, services.egress(app.id)));
            }
            // The add-ons' peers: every other host that may run a dyno of an attached app.
            let peers: Vec<String> = known
                .iter()
                .filter(|h| h.id != host && self.liveness(&h.id) != Liveness::Lost)
                .map(|h| h.address.clone())
                .collect();
            self.send(
                &host,
                scheduler_message::Kind::Assignments(Assignments {
                    generation,
                    dynos: out,
                    term,
                    services: services.services(&host, &peers),
                    destroyed_services: services.destroyed(&host),
                    cluster: cluster.clone(),
                }),
            );
        }
        Ok(())
    }

    /// Keeps stopping web dynos that still serve requests (as `table` counts them)
    /// assigned until those requests are done, or `timeout` passed, then tells their hosts
    /// to stop them.
    pub(crate) fn hold_stops(
        self: &Arc<Self>,
        stopped: &[Dyno],
        table: &RouteTable,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        for d in stopped {
            if !manifold_dyno::is_web(&d.process_type) || table.in_flight(&d.id) == 0 {
                continue;
            }
            lock(&self.held_stops).insert(d.id.clone(), deadline);
            let cluster = self.clone();
            let table = table.clone();
            let id = d.id.clone();
            let host = d.host_id.clone();
            tokio::spawn(async move {
                while table.in_flight(&id) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                lock(&cluster.held_stops).remove(&id);
                if let Err(err) = cluster.push_assignments([&host]).await {
                    tracing::warn!("cannot tell {host} to stop {id}: {err}");
                }
            });
        }
    }
}

/// Whether a host not seen since this replica began to lead, `leading` ago, is still in
/// the failover grace (see [`FAILOVER_GRACE_MAX`]); `since_hello`: how long ago any agent's
/// `Hello` last arrived.
fn in_failover_grace(leading: Duration, since_hello: Option<Duration>, deadline: Duration) -> bool {
    let herd_arriving = since_hello.is_some_and(|since| since <= RECONNECT_GRACE);
    leading <= deadline + RECONNECT_GRACE || (herd_arriving && leading <= FAILOVER_GRACE_MAX)
}

/// One dyno as its agent is told to run it.
fn assignment(
    app: &App,
    d: Dyno,
    config: &BTreeMap<String, String>,
    slug: &Slug,
    egress: Vec<String>,
) -> Assignment {
    Assignment {
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
        egress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn every_host_gets_the_deadline_and_the_reconnect_grace_after_an_election() {
        assert!(in_failover_grace(secs(0), None, DEADLINE));
        assert!(in_failover_grace(
            DEADLINE + RECONNECT_GRACE,
            None,
            DEADLINE
        ));
        // Nobody said Hello lately: the herd is in, and a host still away is lost.
        assert!(!in_failover_grace(secs(16), None, DEADLINE));
        assert!(!in_failover_grace(secs(30), Some(secs(11)), DEADLINE));
    }

    #[test]
    fn the_grace_lasts_while_the_herd_arrives_up_to_its_cap() {
        // Hellos still arriving: the absent hosts may be queued behind them.
        assert!(in_failover_grace(secs(30), Some(secs(1)), DEADLINE));
        assert!(in_failover_grace(
            FAILOVER_GRACE_MAX,
            Some(secs(0)),
            DEADLINE
        ));
        // Never past the cap, however long agents keep arriving.
        assert!(!in_failover_grace(
            FAILOVER_GRACE_MAX + Duration::from_millis(1),
            Some(secs(0)),
            DEADLINE
        ));
        // A deadline longer than the cap still gets its own grace.
        assert!(in_failover_grace(secs(70), None, secs(65)));
    }
}
