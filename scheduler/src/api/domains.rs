//! `/apps/{app}/domains`: custom domains (Heroku's Domain API). The app's default name
//! `APP.DOMAIN` is listed first (`kind: default`); `domains:add` adds `kind: custom` names,
//! routed by the routers once added.

use super::*;
use crate::edge::hostname::{check_hostname, HostnameError};
use crate::model::Domain;

fn custom_json(d: &Domain) -> Value {
    json!({
        "hostname": d.hostname,
        "kind": "custom",
        "app": {"name": d.app},
        "created_at": rfc3339(d.created_at),
    })
}

pub(super) async fn list_domains(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let domains = core.store.domains(Some(&app)).await?;
    let mut out = vec![json!({
        "hostname": format!("{app}.{}", core.settings.router.domain.trim_matches('.')),
        "kind": "default",
        "app": {"name": app},
    })];
    out.extend(domains.iter().map(custom_json));
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddDomain {
    hostname: String,
}

pub(super) async fn add_domain(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<AddDomain>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let hostname =
        check_hostname(&body.hostname, &core.settings.router.domain).map_err(|err| match err {
            HostnameError::Invalid { .. } => ApiError::invalid(err.to_string()),
            HostnameError::ClusterDomain { .. } => ApiError::invalid(err.to_string()),
        })?;
    let domain = core.store.add_domain(&app, &hostname).await?;
    publish(&core).await?;
    if core.store.app(&app).await?.acm {
        // Its certificate is ordered now rather than at the next period.
        core.acm_wake.notify_one();
    }
    Ok((StatusCode::CREATED, axum::Json(custom_json(&domain))))
}

pub(super) async fn remove_domain(
    State(core): State<Arc<Core>>,
    Path((app, hostname)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let hostname = hostname.trim_end_matches('.').to_ascii_lowercase();
    let domain = core.store.remove_domain(&app, &hostname).await?;
    // Its automated certificate goes with it (an uploaded one may cover other domains).
    for cert in core.store.certs(Some(&app)).await? {
        if crate::edge::acm::is_for(&cert, &hostname) {
            core.store.remove_cert(&app, cert.id).await?;
        }
    }
    publish(&core).await?;
    Ok(axum::Json(custom_json(&domain)))
}

/// Publishes the changed domains and certificates to the routers.
pub(super) async fn publish(core: &Core) -> Result<()> {
    crate::edge::refresh(core).await.map_err(|err| match err {
        crate::edge::EdgeError::Store(err) => err.into(),
        err @ crate::edge::EdgeError::Issue(_) => {
            tracing::error!("{err:?}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            )
        }
    })
}
