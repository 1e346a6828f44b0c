//! `/hosts`: the hosts and their dynos, and draining one.

use super::*;

#[derive(Serialize)]
pub(super) struct HostJson {
    id: String,
    address: String,
    state: &'static str,
    memory_bytes: u64,
    memory_used: u64,
    dyno_slots: u32,
    dynos: usize,
    stacks: Vec<String>,
    last_seen: String,
}

fn host_json(core: &Core, h: crate::model::Host, dynos: &[Dyno]) -> HostJson {
    let on: Vec<&Dyno> = dynos.iter().filter(|d| d.host_id == h.id).collect();
    HostJson {
        state: match core.cluster.liveness(&h.id) {
            Liveness::Lost => "lost",
            _ if h.draining => "draining",
            Liveness::Connected => "ready",
            Liveness::Missing => "missing",
        },
        memory_used: on.iter().map(|d| size_memory(&d.size)).sum(),
        dynos: on.len(),
        last_seen: rfc3339(h.last_seen),
        id: h.id,
        address: h.address,
        memory_bytes: h.memory_bytes,
        dyno_slots: h.dyno_slots,
        stacks: h.stacks,
    }
}

pub(super) async fn list_hosts(State(core): State<Arc<Core>>) -> Result<axum::Json<Vec<HostJson>>> {
    let dynos = core.store.dynos(None).await?;
    let hosts = core.store.hosts().await?;
    Ok(axum::Json(
        hosts
            .into_iter()
            .map(|h| host_json(&core, h, &dynos))
            .collect(),
    ))
}

/// `drain` moves every dyno off the host (the reconciler replaces them elsewhere; a web
/// dyno's replacement is up before it stops) and places nothing new there; `undrain`
/// reverses it.
pub(super) async fn drain_host(
    State(core): State<Arc<Core>>,
    Path((host, action)): Path<(String, String)>,
) -> Result<axum::Json<HostJson>> {
    let draining = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "no host action {other}: use drain or undrain"
            )))
        }
    };
    let h = core
        .set_draining(&host, draining)
        .await
        .map_err(|e| match e {
            StoreError::HostNotFound(_) => {
                ApiError::not_found(format!("host {host} not found: see `manifold hosts`"))
            }
            other => other.into(),
        })?;
    let dynos = core.store.dynos(None).await?;
    Ok(axum::Json(host_json(&core, h, &dynos)))
}
