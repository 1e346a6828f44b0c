//! What agents tell the scheduler, as flows across the services: a `Hello`, a dyno's
//! report, build events, log lines, and the link's end. [`crate::hub`] translates the
//! wire into these calls.

use std::collections::HashSet;
use std::sync::Arc;

use manifold_proto::{BuildEvent, Hello, LogBatch};
use uuid::Uuid;

use super::Core;
use crate::attach::Event;
use crate::builds::Built;
use crate::cluster::LinkSender;
use crate::metrics::Counters;
use crate::model::{Desired, DynoReport, DynoState};
use crate::store::{DynoChanges, StoreError};

impl Core {
    /// A connected agent said `Hello`: records its host and the dynos it runs, forgets
    /// dynos it was told to stop and no longer runs, and sends it its assignments. Returns
    /// the link's serial, for [`Core::agent_disconnected`].
    pub(crate) async fn agent_connected(
        &self,
        hello: &Hello,
        reports: &[DynoReport],
        tx: LinkSender,
    ) -> Result<u64, StoreError> {
        let host = hello.host_id.as_str();
        let serial = self.cluster.connect(hello, tx).await?;
        for report in reports {
            self.cluster.report(host, report).await?;
        }
        let running: HashSet<&str> = hello.dynos.iter().map(|d| d.id.as_str()).collect();
        self.cluster.forget_ended(host, &running).await?;
        for service in &hello.services {
            self.service_reported(host, service).await?;
        }
        tracing::info!(
            "host {host} connected from {} with {} dynos",
            hello.address,
            hello.dynos.len()
        );
        self.cluster.push_assignments([host]).await?;
        self.poke.poke_host(host);
        Ok(serial)
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
