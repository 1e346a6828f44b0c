//! The `ps` view: what `manifold ps` shows of an app's dynos, decided here rather than in the
//! API handler that prints it. Two states in it are not stored ones: `stopping` (the
//! scheduler asked an `up` dyno to stop and its agent has not said it is going yet) and
//! `idle` (an eco dyno of a sleeping app, which has no row while it sleeps, as Heroku lists it).

use std::collections::HashMap;

use manifold_dyno::DynoName;
use time::OffsetDateTime;

use super::Core;
use crate::model::{Desired, Dyno, DynoState};
use crate::reconciler::{dyno_index, sleeps};
use crate::store::StoreError;

/// One line of `ps`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PsLine {
    /// A dyno with its row, in the state `ps` shows ([`shown_state`]).
    Dyno(Box<Dyno>),
    /// An eco dyno of a sleeping app: no row while it sleeps.
    Idle {
        name: String,
        process_type: String,
        size: String,
        since: OffsetDateTime,
    },
}

/// An app's `ps`: its dynos by process type and index, then the idle ones of a sleeping app,
/// with the hosts' addresses by host id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ps {
    pub(crate) lines: Vec<PsLine>,
    pub(crate) hosts: HashMap<String, String>,
}

/// The state `ps` shows for a dyno: its stored one, but `stopping` for one still `up` that
/// the scheduler stopped (the agent reports `stopping` only once it sends the signal).
pub(crate) fn shown_state(d: &Dyno) -> &'static str {
    if d.desired == Desired::Stopped && d.state == DynoState::Up {
        DynoState::Stopping.as_str()
    } else {
        d.state.as_str()
    }
}

impl Core {
    /// The `ps` view of `app`.
    pub(crate) async fn ps(&self, app: &str) -> Result<Ps, StoreError> {
        let record = self.store.app(app).await?;
        let hosts = self
            .store
            .hosts()
            .await?
            .into_iter()
            .map(|h| (h.id, h.address))
            .collect();
        let mut dynos = self.store.dynos(Some(app)).await?;
        dynos.sort_by_key(|d| {
            (
                d.process_type.clone(),
                dyno_index(&d.name).unwrap_or(0),
                d.created_at,
            )
        });
        let mut idle = Vec::new();
        if record.sleeping {
            for f in self.store.formation(app).await? {
                if !sleeps(&f.size) {
                    continue;
                }
                for i in 1..=f.quantity {
                    let name = DynoName::new(&f.process_type, i).to_string();
                    if !dynos.iter().any(|d| d.name == name) {
                        idle.push(PsLine::Idle {
                            name,
                            process_type: f.process_type.clone(),
                            size: f.size.clone(),
                            since: record.updated_at,
                        });
                    }
                }
            }
        }
        let mut lines: Vec<PsLine> = dynos
            .into_iter()
            .map(|d| PsLine::Dyno(Box::new(d)))
            .collect();
        lines.extend(idle);
        Ok(Ps { lines, hosts })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::{Method, StatusCode};
    use manifold_proto::DynoState as WireState;
    use serde_json::json;

    use super::*;
    use crate::testing::{settings, Harness};

    fn states(ps: &Ps) -> Vec<(String, String)> {
        ps.lines
            .iter()
            .map(|l| match l {
                PsLine::Dyno(d) => (d.name.clone(), shown_state(d).to_string()),
                PsLine::Idle { name, .. } => (name.clone(), "idle".to_string()),
            })
            .collect()
    }

    #[tokio::test]
    async fn an_up_dyno_asked_to_stop_shows_stopping_until_its_agent_reports() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed("demo", &[("web", "python app.py")]).await;
        let mut agent = h.agent("a").await;
        let (status, body) = h
            .api(
                Method::PATCH,
                "/apps/demo/formation",
                json!({"updates": [{"type": "web", "quantity": 1}]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        h.core.reconcile().await.expect("reconcile");
        let id = agent.id_of("web.1");
        agent.report(&id, WireState::Up, 5000).await;
        let ps = h.core.ps("demo").await.expect("ps");
        assert_eq!(states(&ps), [("web.1".into(), "up".into())]);
        assert_eq!(ps.hosts.len(), 1, "{:?}", ps.hosts);

        h.core
            .stop_dynos(std::slice::from_ref(&id), "test")
            .await
            .expect("stop");
        let ps = h.core.ps("demo").await.expect("ps");
        assert_eq!(states(&ps)[0], ("web.1".into(), "stopping".into()));
        // The JSON the CLI reads says the same.
        let (_, listed) = h.api(Method::GET, "/apps/demo/dynos", json!(null)).await;
        assert_eq!(listed[0]["state"], "stopping", "{listed}");

        agent.report(&id, WireState::Down, 0).await;
        let ps = h.core.ps("demo").await.expect("ps");
        assert!(
            states(&ps)
                .iter()
                .all(|(_, s)| s != "stopping" && s != "up"),
            "{:?}",
            states(&ps)
        );
    }

    #[tokio::test]
    async fn a_sleeping_apps_eco_dynos_are_idle_and_others_are_not_listed_as_idle() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        h.deployed(
            "demo",
            &[("web", "python app.py"), ("worker", "python w.py")],
        )
        .await;
        // A host, for the scale to have room; no reconcile runs, so no dyno has a row.
        let _agent = h.agent("a").await;
        let (status, body) = h
            .api(
                Method::PATCH,
                "/apps/demo/formation",
                json!({"updates": [
                    {"type": "web", "quantity": 2, "size": "eco"},
                    {"type": "worker", "quantity": 1, "size": "standard-1x"}
                ]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        h.core
            .store
            .set_sleeping("demo", true)
            .await
            .expect("sleep");
        let ps = h.core.ps("demo").await.expect("ps");
        assert_eq!(
            states(&ps),
            [
                ("web.1".to_string(), "idle".to_string()),
                ("web.2".to_string(), "idle".to_string())
            ]
        );
        let (_, listed) = h.api(Method::GET, "/apps/demo/dynos", json!(null)).await;
        assert_eq!(listed[1]["state"], "idle", "{listed}");
        assert_eq!(listed[1]["size"], "eco", "{listed}");
    }

    #[tokio::test]
    async fn ps_of_an_unknown_app_is_not_found() {
        let h = Harness::new(settings(Duration::from_secs(30))).await;
        assert!(matches!(
            h.core.ps("nope").await,
            Err(StoreError::AppNotFound(_))
        ));
    }
}
