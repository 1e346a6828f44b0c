//! What agents tell the scheduler, as flows across the services: a `Hello`, a dyno's
//! report, build events, log lines, and the link's end. [`crate::hub`] translates the
//! wire into these calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use manifold_proto::{BuildEvent, Hello, LogBatch};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Core;
use crate::admission::Waiting;
use crate::attach::Event;
use crate::builds::Built;
use crate::cluster::LinkSender;
use crate::metrics::Counters;
use crate::model::{Desired, DynoReport, DynoState};
use crate::store::{DynoChanges, StoreError};

impl Core {
    /// A connected agent said `Hello`: queues it for the next batch of admissions (see
    /// [`crate::admission`]) and returns its link's serial once admitted, for
    /// [`Core::agent_disconnected`].
    pub(crate) async fn agent_connected(
        self: &Arc<Self>,
        hello: Hello,
        reports: Vec<DynoReport>,
        tx: LinkSender,
    ) -> Result<u64, StoreError> {
        self.cluster.hello_arrived();
        let (done, outcome) = oneshot::channel();
        self.cluster.admissions.queue(Waiting {
            hello,
            reports,
            tx,
            done,
        });
        // A task of its own: the agent hanging up must not cut its batch's admission short.
        let core = self.clone();
        tokio::spawn(async move {
            let (_turn, batch) = core.cluster.admissions.take().await;
            if !batch.is_empty() {
                core.admit(batch).await;
            }
        });
        outcome.await.unwrap_or(Err(StoreError::Stopping))
    }

    /// Admits a batch of `Hello`s together; if that fails, each alone, so that each gets
    /// its own outcome.
    async fn admit(&self, batch: Vec<Waiting>) {
        if batch.len() > 1 {
            match self.admit_all(&batch).await {
                Ok(serials) => {
                    for (waiting, serial) in batch.into_iter().zip(serials) {
                        let _ = waiting.done.send(Ok(serial));
                    }
                    return;
                }
                Err(err) => tracing::warn!(
                    "cannot admit {} agents' Hellos at once ({err}): admitting each alone",
                    batch.len()
                ),
            }
        }
        for waiting in batch {
            let outcome = self
                .admit_all(std::slice::from_ref(&waiting))
                .await
                .map(|serials| serials[0]);
            let _ = waiting.done.send(outcome);
        }
    }

    /// Admits `Hello`s: records their hosts and the dynos they run, forgets dynos they
    /// were told to stop and no longer run, and sends them their assignments, each step
    /// once for the whole batch. Returns the links' serials, in the batch's order.
    async fn admit_all(&self, batch: &[Waiting]) -> Result<Vec<u64>, StoreError> {
        let hellos: Vec<(&Hello, LinkSender)> =
            batch.iter().map(|w| (&w.hello, w.tx.clone())).collect();
        let serials = self.cluster.connect(&hellos).await?;
        let reports: Vec<(String, DynoReport)> = batch
            .iter()
            .flat_map(|w| {
                w.reports
                    .iter()
                    .map(|r| (w.hello.host_id.clone(), r.clone()))
            })
            .collect();
        self.cluster.report_all(&reports).await?;
        let mut running: HashMap<&str, HashSet<&str>> = HashMap::new();
        for w in batch {
            running
                .entry(w.hello.host_id.as_str())
                .or_default()
                .extend(w.hello.dynos.iter().map(|d| d.id.as_str()));
        }
        self.cluster.forget_ended(&running).await?;
        for w in batch {
            for service in &w.hello.services {
                self.service_reported(&w.hello.host_id, service).await?;
            }
            tracing::info!(
                "host {} connected from {} with {} dynos",
                w.hello.host_id,
                w.hello.address,
                w.hello.dynos.len()
            );
        }
        self.cluster
            .push_assignments(batch.iter().map(|w| w.hello.host_id.as_str()))
            .await?;
        for w in batch {
            self.poke.poke_host(&w.hello.host_id);
        }
        Ok(serials)
    }

    /// `host`'s agent reports a state of one of its dynos.
    pub(crate) async fn dyno_reported(
        self: &Arc<Self>,
        host: &str,
        report: &DynoReport,
    ) -> Result<(), StoreError> {
        let Some(dyno) = self.cluster.report(host, report).await? else {
            return Ok(());
        };
        if dyno.state == DynoState::Crashed {
            Counters::add(&self.counters.crashes, 1);
        }
        let ended = dyno.state.is_ended();
        if dyno.attach.is_some() {
            self.attach_event(
                &dyno.id,
                if ended {
                    Event::Ended {
                        exit_status: dyno.exit_status,
                        reason: dyno.reason.clone(),
                    }
                } else {
                    Event::State(dyno.state)
                },
            );
        }
        if ended && dyno.process_type == manifold_dyno::RELEASE {
            self.releases.dyno_ended(&dyno).await;
        }
        if ended && dyno.desired == Desired::Stopped {
            self.store
                .apply_dyno_changes(&DynoChanges {
                    delete: vec![dyno.id.clone()],
                    ..DynoChanges::default()
                })
                .await?;
        }
        self.poke_apps([dyno.app_id]);
        Ok(())
    }

    /// An agent's build output or result; a successful build's release goes live, or
    /// through its release phase first.
    pub(crate) async fn build_event(&self, host: &str, event: BuildEvent) {
        let build = event.build_id.parse::<Uuid>().ok();
        match self.builds.event(host, event).await {
            Some(Built::Pending(pending)) => {
                let (app, release) = &*pending;
                self.start_release_phase(app, release, build).await;
            }
            Some(Built::Live(app)) => self.poke_apps([app]),
            None => {}
        }
    }

    /// The lines an agent sent, for the dynos last assigned to its host (see
    /// [`LogFeed::ingest`]).
    pub(crate) fn ingest_logs(&self, host: &str, batch: LogBatch) {
        let placed = self.cluster.placed(host);
        let refused = self.logs.ingest(host, batch, &placed, |dyno_id, message| {
            // A release phase's output also goes to the deploy that made its release.
            if let Some(build) = self.releases.output_of(dyno_id) {
                self.builds.push(build, format!("       {message}"));
            }
        });
        Counters::add(&self.counters.refused_reports, refused);
    }

    /// An agent's link ended: its host is missing from now, lost after the deadline; its
    /// builds fail.
    pub(crate) async fn agent_disconnected(&self, host: &str, serial: u64) {
        if self.cluster.disconnect(host, serial) {
            tracing::warn!("host {host} disconnected");
            self.builds.host_failed(host).await;
            self.poke.poke_host(host);
        }
    }

    /// Hands an event to a one-off's attach session; a session it starts stops its dyno
    /// when the client is gone or idle.
    pub(crate) fn attach_event(self: &Arc<Self>, dyno_id: &str, event: Event) {
        self.sessions.event(dyno_id, event, || {
            let core = self.clone();
            Box::new(move |id: &str, why: String| {
                let core = core.clone();
                let id = id.to_string();
                tokio::spawn(async move {
                    if let Err(err) = core.stop_dynos(std::slice::from_ref(&id), &why).await {
                        tracing::warn!("cannot stop {id}: {err}");
                    }
                });
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use axum::http::{Method, StatusCode};
    use manifold_proto::DynoState as WireState;
    use serde_json::json;

    use crate::model::DynoState;
    use crate::testing::{settings, Harness};

    const HOSTS: usize = 100;
    const DYNOS: usize = 300;

    /// What runs where, by host: dyno ids, sorted.
    fn by_host(dynos: &[crate::model::Dyno]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for d in dynos {
            out.entry(d.host_id.clone()).or_default().push(d.id.clone());
        }
        out.values_mut().for_each(|ids| ids.sort());
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_herd_of_hellos_after_a_restart_is_admitted_and_nothing_is_restarted() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[("web", "python app.py")]).await;
        let mut agents = Vec::new();
        for i in 0..HOSTS {
            agents.push(h.agent(&format!("h{i:03}")).await);
        }
        let (status, body) = h
            .api(
                Method::PATCH,
                "/apps/demo/formation",
                json!({"updates": [{"type": "web", "quantity": DYNOS}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        h.core.reconcile().await.expect("reconcile");
        for agent in &mut agents {
            let ids: Vec<String> = agent.assigned().iter().map(|a| a.id.clone()).collect();
            for id in ids {
                agent.report(&id, WireState::Up, 30001).await;
            }
        }
        // One dyno is told to stop and ends while the scheduler is down: its host's Hello
        // no longer lists it.
        let (status, body) = h
            .api(Method::DELETE, "/apps/demo/dynos/web.1", json!(null))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let dynos = h.core.store.dynos(Some("demo")).await.expect("dynos");
        let stopped = dynos
            .iter()
            .find(|d| d.name == "web.1" && d.desired == crate::model::Desired::Stopped)
            .expect("web.1 is stopping")
            .clone();
        let mut before = by_host(&dynos);
        assert_eq!(before.len(), HOSTS, "every host runs some");
        before
            .get_mut(&stopped.host_id)
            .expect("its host")
            .retain(|id| *id != stopped.id);
        drop(agents);

        let h = h.restarted().await;
        // Every agent says Hello at once, each with the dynos it kept running.
        let hellos = before.iter().map(|(host, ids)| h.agent_running(host, ids));
        let mut agents = futures::future::join_all(hellos).await;
        h.core.reconcile().await.expect("reconcile");

        let after = h.core.store.dynos(Some("demo")).await.expect("dynos");
        assert!(
            after.iter().all(|d| d.id != stopped.id),
            "the dyno that ended while the link was down is forgotten"
        );
        let running: Vec<_> = after
            .iter()
            .filter(|d| d.desired == crate::model::Desired::Running)
            .collect();
        assert_eq!(running.len(), DYNOS, "{} running after", running.len());
        let (kept, new): (Vec<_>, Vec<_>) = after
            .iter()
            .partition(|d| before.values().flatten().any(|id| *id == d.id));
        assert_eq!(kept.len(), DYNOS - 1, "every dyno the hosts kept is kept");
        assert!(
            kept.iter().all(|d| d.state == DynoState::Up),
            "every kept dyno reported up in its host's Hello"
        );
        assert_eq!(
            new.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["web.1"],
            "only the stopped web.1 is replaced"
        );
        for agent in &mut agents {
            let mut assigned: Vec<String> = agent.assigned().iter().map(|a| a.id.clone()).collect();
            assigned.sort();
            let kept = &before[&agent.host];
            assert!(
                kept.iter().all(|id| assigned.contains(id)),
                "host {} keeps what it ran: {kept:?}, assigned {assigned:?}",
                agent.host
            );
        }
    }
}
