//! `/apps/{app}/acm`: automated certificates (Heroku's ACM). `POST` turns them on (each
//! custom domain gets a certificate from the cluster's ACME server, renewed before it
//! expires), `DELETE` off (their certificates are removed), `GET` says how each domain
//! stands. The work is `edge/acm.rs`'s loop; these only set the flag and wake it.

use time::OffsetDateTime;

use super::apps::app_json;
use super::domains::publish;
use super::*;
use crate::edge::acm::is_for;
use crate::model::{Cert, CertSource, CertStatus};

/// How one domain's automated certificate stands, as `manifold certs:auto` shows it.
fn domain_json(hostname: &str, cert: Option<&Cert>) -> Value {
    let material = cert.and_then(|c| c.material.as_ref());
    let now = OffsetDateTime::now_utc();
    let (status, reason) = match cert {
        None => ("pending", None),
        Some(c) if c.status == CertStatus::Failed => ("failing", c.last_error.as_deref()),
        Some(_) if material.is_some_and(|m| m.not_after < now) => ("expired", None),
        Some(c) if c.status == CertStatus::Active => ("ok", None),
        Some(_) => ("pending", None),
    };
    json!({
        "hostname": hostname,
        "status": status,
        "reason": reason,
        "issuer": material.map(|m| m.issuer.as_str()),
        "expires_at": material.map(|m| rfc3339(m.not_after)),
    })
}

pub(super) async fn get_acm(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    let record = core.store.app(&app).await?;
    let certs = core.store.certs(Some(&app)).await?;
    let domains: Vec<Value> = if record.acm {
        core.store
            .domains(Some(&app))
            .await?
            .iter()
            .map(|d| {
                let cert = certs.iter().find(|c| is_for(c, &d.hostname));
                domain_json(&d.hostname, cert)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(axum::Json(json!({
        "acm": record.acm,
        "directory": core.settings.acme.as_ref().map(|a| a.directory.as_str()),
        "domains": domains,
    })))
}

pub(super) async fn enable_acm(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    core.store.app(&app).await?;
    if core.settings.acme.is_none() {
        return Err(ApiError::invalid(
            "automated certificates are off in this cluster: the operator must set \
             --acme-directory (MANIFOLD_ACME_DIRECTORY) on the scheduler",
        ));
    }
    let record = core.store.set_acm(&app, true).await?;
    core.acm_wake.notify_one();
    Ok(axum::Json(app_json(&core, &record).await?))
}

pub(super) async fn disable_acm(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    let record = core.store.set_acm(&app, false).await?;
    for cert in core.store.certs(Some(&app)).await? {
        if cert.source == CertSource::Acme {
            core.store.remove_cert(&app, cert.id).await?;
        }
    }
    publish(&core).await?;
    Ok(axum::Json(app_json(&core, &record).await?))
}
