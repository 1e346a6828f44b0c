//! `/apps/{app}/addons`, `/addons`, `/addon-attachments` (Heroku's Add-on and Add-on
//! Attachment APIs) and `/apps/{app}/pg-backups` (`pg:backups`): add-ons provisioned on the
//! cluster (see [`crate::addons`]).

use super::*;
use crate::addons::backups::{self, BackupError, Target};
use crate::addons::model::{Addon, AddonKind, Attachment, Backup};
use crate::addons::AddonError;

impl From<AddonError> for ApiError {
    fn from(err: AddonError) -> ApiError {
        match err {
            AddonError::UnknownPlan(_)
            | AddonError::InvalidName(_)
            | AddonError::NotOwner { .. } => ApiError::invalid(err.to_string()),
            AddonError::NoServicesHost => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_services_host",
                err.to_string(),
            ),
            AddonError::Store(err) => err.into(),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(err: BackupError) -> ApiError {
        match err {
            BackupError::NotPostgres(_) | BackupError::NotAvailable(_) | BackupError::NoDump(_) => {
                ApiError::invalid(err.to_string())
            }
            // The add-on or the tools failed, not the request.
            BackupError::Tool { .. } | BackupError::Spawn { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "backup_failed", err.to_string())
            }
            BackupError::Blob(err) => super::blobs::blob_error(err),
            BackupError::Store(err) => err.into(),
        }
    }
}

fn addon_json(addon: &Addon, attachments: &[Attachment]) -> Value {
    let mut vars: Vec<String> = attachments
        .iter()
        .filter(|a| a.addon_id == addon.id)
        .map(Attachment::config_var)
        .collect();
    vars.sort();
    vars.dedup();
    json!({
        "id": addon.id,
        "name": addon.name,
        "addon_service": {"name": addon.kind.service()},
        "plan": {"name": addon.plan},
        "state": addon.state.as_str(),
        "reason": addon.reason,
        "app": addon.app.as_ref().map(|name| json!({"name": name})),
        "host": {"id": addon.host_id},
        "config_vars": vars,
        "created_at": rfc3339(addon.created_at),
    })
}

fn attachment_json(a: &Attachment) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "addon": {"id": a.addon_id, "name": a.addon},
        "app": {"name": a.app},
        "config_var": a.config_var(),
        "created_at": rfc3339(a.created_at),
    })
}

fn backup_json(b: &Backup, addon: &Addon) -> Value {
    json!({
        "id": b.id,
        "name": b.name(),
        "addon": {"id": addon.id, "name": addon.name},
        "state": b.state.as_str(),
        "reason": b.reason,
        "size": b.size,
        "created_at": rfc3339(b.created_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Named {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAddon {
    plan: String,
    attachment: Option<Named>,
}

pub(super) async fn create_addon(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<CreateAddon>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let name = body.attachment.as_ref().map(|a| a.name.as_str());
    let (addon, attachment) = core.create_addon(&app, &body.plan, name).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(addon_json(&addon, &[attachment])),
    ))
}

/// Add-ons with their config vars.
async fn listed(core: &Core, app: Option<&str>) -> Result<axum::Json<Vec<Value>>> {
    let addons = core.store.addons(app).await?;
    let attachments = core.store.attachments(None).await?;
    Ok(axum::Json(
        addons.iter().map(|a| addon_json(a, &attachments)).collect(),
    ))
}

pub(super) async fn list_app_addons(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    listed(&core, Some(&app)).await
}

pub(super) async fn list_addons(State(core): State<Arc<Core>>) -> Result<axum::Json<Vec<Value>>> {
    listed(&core, None).await
}

pub(super) async fn get_addon(
    State(core): State<Arc<Core>>,
    Path(addon): Path<String>,
) -> Result<axum::Json<Value>> {
    let addon = core.store.addon(&addon).await?;
    let attachments = core.store.attachments(None).await?;
    let mut out = addon_json(&addon, &attachments);
    out["attachments"] = attachments
        .iter()
        .filter(|a| a.addon_id == addon.id)
        .map(attachment_json)
        .collect();
    Ok(axum::Json(out))
}

pub(super) async fn destroy_addon(
    State(core): State<Arc<Core>>,
    Path((app, addon)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>> {
    let addon = core.destroy_addon(&app, &addon, &user(&headers)).await?;
    Ok(axum::Json(addon_json(&addon, &[])))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAttachment {
    addon: Named,
    app: Named,
    name: Option<String>,
}

pub(super) async fn create_attachment(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Json(body): Json<CreateAttachment>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let attachment = core
        .attach_addon(
            &body.addon.name,
            &body.app.name,
            body.name.as_deref(),
            &user(&headers),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(attachment_json(&attachment)),
    ))
}

pub(super) async fn list_attachments(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let attachments = core.store.attachments(Some(&app)).await?;
    Ok(axum::Json(
        attachments.iter().map(attachment_json).collect(),
    ))
}

pub(super) async fn delete_attachment(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::not_found(format!(
            "add-on attachment {id} not found: give its id (see /apps/APP/addon-attachments)"
        ))
    })?;
    let attachment = core.detach_addon(id, &user(&headers)).await?;
    Ok(axum::Json(attachment_json(&attachment)))
}

/// The PostgreSQL add-on of `app` a backup command means: `named` (attached to the app),
/// else the one attached as DATABASE, else its only one.
async fn pg_addon(core: &Core, app: &str, named: Option<&str>) -> Result<Addon> {
    let attached = core.store.attachments(Some(app)).await?;
    let addons: Vec<Addon> = core
        .store
        .addons(Some(app))
        .await?
        .into_iter()
        .filter(|a| a.kind == AddonKind::Postgresql)
        .collect();
    let found = match named {
        Some(name) => {
            let by_attachment = attached
                .iter()
                .find(|a| a.name == name.to_ascii_uppercase())
                .map(|a| a.addon_id);
            addons
                .iter()
                .find(|a| a.name == name || Some(a.id) == by_attachment)
        }
        None => {
            let database = attached
                .iter()
                .find(|a| a.name == "DATABASE")
                .map(|a| a.addon_id);
            addons
                .iter()
                .find(|a| Some(a.id) == database)
                .or(if addons.len() == 1 {
                    addons.first()
                } else {
                    None
                })
        }
    };
    found.cloned().ok_or_else(|| match named {
        Some(name) => ApiError::not_found(format!(
            "{app} has no PostgreSQL add-on {name}: see `manifold addons -a {app}`"
        )),
        None if addons.is_empty() => ApiError::not_found(format!(
            "{app} has no PostgreSQL add-on: create one with `manifold addons:create postgresql -a {app}`"
        )),
        None => ApiError::invalid(format!(
            "{app} has several PostgreSQL add-ons and none attached as DATABASE: name one"
        )),
    })
}

async fn target(core: &Core, addon: &Addon) -> Result<Target> {
    let address = core
        .store
        .hosts()
        .await?
        .into_iter()
        .find(|h| h.id == addon.host_id)
        .map(|h| h.address)
        .unwrap_or_default();
    Ok(Target::of(addon, &address)?)
}

/// A backup of one of the app's PostgreSQL add-ons, by id or by name (`b001`).
async fn find_backup(core: &Core, app: &str, given: &str) -> Result<(Backup, Addon)> {
    let mut found = Vec::new();
    for addon in core.store.addons(Some(app)).await? {
        if addon.kind != AddonKind::Postgresql {
            continue;
        }
        for b in core.store.backups(addon.id).await? {
            if b.id.to_string() == given || b.name() == given {
                found.push((b, addon.clone()));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::not_found(format!(
            "{app} has no backup {given}: see `manifold pg:backups -a {app}`"
        ))),
        _ => Err(ApiError::invalid(format!(
            "several of {app}'s add-ons have a backup {given}: give its id (pg:backups --json)"
        ))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct AddonChoice {
    addon: Option<String>,
}

pub(super) async fn capture_backup(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<AddonChoice>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let addon = pg_addon(&core, &app, body.addon.as_deref()).await?;
    let target = target(&core, &addon).await?;
    let backup =
        backups::capture(core.store.as_ref(), core.blobs.as_ref(), &addon, &target).await?;
    core.logs.log_api(
        &app,
        format!("Capture backup {} of {}", backup.name(), addon.name),
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(backup_json(&backup, &addon)),
    ))
}

pub(super) async fn list_backups(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let mut out = Vec::new();
    for addon in core.store.addons(Some(&app)).await? {
        if addon.kind == AddonKind::Postgresql {
            for b in core.store.backups(addon.id).await? {
                out.push(backup_json(&b, &addon));
            }
        }
    }
    Ok(axum::Json(out))
}

pub(super) async fn restore_backup(
    State(core): State<Arc<Core>>,
    Path((app, backup)): Path<(String, String)>,
    Json(body): Json<AddonChoice>,
) -> Result<axum::Json<Value>> {
    let (backup, from) = find_backup(&core, &app, &backup).await?;
    let into = match body.addon.as_deref() {
        Some(named) => pg_addon(&core, &app, Some(named)).await?,
        None => from.clone(),
    };
    let target = target(&core, &into).await?;
    backups::restore(core.blobs.as_ref(), &backup, &target).await?;
    core.logs.log_api(
        &app,
        format!(
            "Restore backup {} of {} into {}",
            backup.name(),
            from.name,
            into.name
        ),
    );
    Ok(axum::Json(backup_json(&backup, &from)))
}

pub(super) async fn download_backup(
    State(core): State<Arc<Core>>,
    Path((app, backup)): Path<(String, String)>,
) -> Result<Response> {
    let (backup, _) = find_backup(&core, &app, &backup).await?;
    let sha = backup
        .blob_sha256
        .clone()
        .ok_or_else(|| ApiError::from(BackupError::NoDump(backup.name())))?;
    super::blobs::get_blob(State(core), Path(sha)).await
}
