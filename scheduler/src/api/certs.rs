//! `/apps/{app}/sni-endpoints`: the app's TLS certificates (Heroku's SNI Endpoint API).
//! Uploaded ones are checked (`edge/inspect.rs`) before they are stored; an answer never
//! carries a private key.

use time::OffsetDateTime;

use super::domains::publish;
use super::*;
use crate::edge::hostname::covers;
use crate::edge::inspect::{covered_domains, inspect};
use crate::model::{Cert, CertSource, CertStatus};

/// A certificate as the API shows it: what it covers, who issued it, until when; no key.
fn cert_json(cert: &Cert, domains: &[String]) -> Value {
    let material = cert.material.as_ref();
    let now = OffsetDateTime::now_utc();
    let expired = material.is_some_and(|m| m.not_after < now);
    json!({
        "id": cert.id,
        "source": cert.source.as_str(),
        "status": if expired { "expired" } else { cert.status.as_str() },
        "names": cert.names,
        "domains": domains
            .iter()
            .filter(|d| cert.names.iter().any(|n| covers(n, d)))
            .collect::<Vec<_>>(),
        "issuer": material.map(|m| m.issuer.as_str()),
        "starts_at": material.map(|m| rfc3339(m.not_before)),
        "expires_at": material.map(|m| rfc3339(m.not_after)),
        "last_error": cert.last_error,
        "created_at": rfc3339(cert.created_at),
        "updated_at": rfc3339(cert.updated_at),
    })
}

async fn app_domains(core: &Core, app: &str) -> Result<Vec<String>> {
    Ok(core
        .store
        .domains(Some(app))
        .await?
        .into_iter()
        .map(|d| d.hostname)
        .collect())
}

pub(super) async fn list_certs(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let certs = core.store.certs(Some(&app)).await?;
    let domains = app_domains(&core, &app).await?;
    Ok(axum::Json(
        certs.iter().map(|c| cert_json(c, &domains)).collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddCert {
    certificate_chain: String,
    private_key: String,
}

pub(super) async fn add_cert(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<AddCert>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let record = core.store.app(&app).await?;
    let inspected = inspect(&body.certificate_chain, &body.private_key)
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let domains = app_domains(&core, &app).await?;
    covered_domains(&app, &inspected.names, &domains)
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let cert = Cert {
        id: Uuid::new_v4(),
        app_id: Some(record.id),
        source: CertSource::Uploaded,
        names: inspected.names,
        material: Some(inspected.material),
        status: CertStatus::Active,
        last_error: None,
        created_at: now,
        updated_at: now,
    };
    core.store.save_cert(&cert).await?;
    publish(&core).await?;
    Ok((StatusCode::CREATED, axum::Json(cert_json(&cert, &domains))))
}

pub(super) async fn remove_cert(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::not_found(format!(
            "{app} has no certificate {id}: see `manifold certs -a {app}` for their ids"
        ))
    })?;
    let cert = core.store.remove_cert(&app, id).await?;
    publish(&core).await?;
    let domains = app_domains(&core, &app).await?;
    Ok(axum::Json(cert_json(&cert, &domains)))
}
