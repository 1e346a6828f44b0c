//! `/apps/{app}/dynos`: the `ps` view, restarts and stops.

use super::*;
use crate::core::{shown_state, PsLine};

pub(crate) fn dyno_json(d: &Dyno, hosts: &HashMap<String, String>) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "type": d.process_type,
        "state": shown_state(d),
        "size": d.size,
        "command": d.command,
        "release": {"version": d.release_version},
        "host": {"id": d.host_id, "address": hosts.get(&d.host_id)},
        "port": d.port,
        "exit_status": d.exit_status,
        "reason": d.reason,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.state_changed_at),
    })
}

/// `GET /apps/{app}/dynos`: the `ps` view ([`Core::ps`]) as JSON.
pub(super) async fn list_dynos(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let ps = core.ps(&app).await?;
    let out = ps
        .lines
        .iter()
        .map(|line| match line {
            PsLine::Dyno(d) => dyno_json(d, &ps.hosts),
            PsLine::Idle {
                name,
                process_type,
                size,
                since,
            } => json!({
                "name": name,
                "type": process_type,
                "state": "idle",
                "size": size,
                "updated_at": rfc3339(*since),
            }),
        })
        .collect();
    Ok(axum::Json(out))
}

/// Stops the given dynos; the reconciler starts their replacements (a restart).
async fn stop_ids(core: &Arc<Core>, ids: Vec<String>, why: &str) -> Result<StatusCode> {
    core.stop_dynos(&ids, why).await?;
    Ok(StatusCode::ACCEPTED)
}

pub(super) async fn restart_all(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<StatusCode> {
    core.store.app(&app).await?;
    let ids = core
        .store
        .dynos(Some(&app))
        .await?
        .into_iter()
        // Heroku: `ps:restart` leaves one-off dynos alone.
        .filter(|d| d.desired == Desired::Running && !d.is_one_off())
        .map(|d| d.id)
        .collect();
    stop_ids(&core, ids, "Restarting").await
}

/// The running dynos `target` names: one (`web.1`) or a whole type (`web`).
async fn matching(core: &Core, app: &str, target: &str) -> Result<Vec<String>> {
    core.store.app(app).await?;
    let dynos: Vec<Dyno> = core
        .store
        .dynos(Some(app))
        .await?
        .into_iter()
        .filter(|d| d.desired == Desired::Running)
        .filter(|d| {
            if target.contains('.') {
                d.name == target
            } else {
                d.process_type == target
            }
        })
        .collect();
    if dynos.is_empty() {
        return Err(ApiError::not_found(format!(
            "no dyno {target} in {app}: see `manifold ps -a {app}`"
        )));
    }
    Ok(dynos.into_iter().map(|d| d.id).collect())
}

pub(super) async fn restart_dynos(
    State(core): State<Arc<Core>>,
    Path((app, target)): Path<(String, String)>,
) -> Result<StatusCode> {
    let ids = matching(&core, &app, &target).await?;
    stop_ids(&core, ids, "Restarting").await
}

pub(super) async fn stop_dyno(
    State(core): State<Arc<Core>>,
    Path((app, target)): Path<(String, String)>,
) -> Result<StatusCode> {
    let ids = matching(&core, &app, &target).await?;
    stop_ids(&core, ids, "Stopping").await
}
