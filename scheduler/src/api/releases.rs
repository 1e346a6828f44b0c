//! `/apps/{app}/releases`: the release history and rollback.

use super::*;

async fn release_json(core: &Core, app: &str, r: &Release, current: Option<u32>) -> Result<Value> {
    let slug = core.store.slug(r.slug_id).await?;
    Ok(json!({
        "id": format!("{}-v{}", r.app_id, r.version),
        "version": r.version,
        "description": r.description,
        "status": r.status,
        "current": current == Some(r.version),
        "slug": {"id": slug.id, "checksum": format!("SHA256:{}", slug.sha256), "process_types": slug.process_types, "size": slug.size},
        "user": {"email": r.user},
        "created_at": rfc3339(r.created_at),
        "app": {"name": app},
    }))
}

pub(super) async fn list_releases(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let releases = core.store.releases(&app).await?;
    let current = core.store.current_release(&app).await?.map(|r| r.version);
    let mut out = Vec::new();
    for r in &releases {
        out.push(release_json(&core, &app, r, current).await?);
    }
    Ok(axum::Json(out))
}

fn parse_version(s: &str) -> Option<u32> {
    s.strip_prefix('v').unwrap_or(s).parse().ok()
}

pub(super) async fn get_release(
    State(core): State<Arc<Core>>,
    Path((app, version)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let v = parse_version(&version).ok_or_else(|| {
        ApiError::not_found(format!(
            "release {version} not found: use a version like v3"
        ))
    })?;
    let r = core.store.release(&app, v).await?;
    let current = core.store.current_release(&app).await?.map(|r| r.version);
    Ok(axum::Json(release_json(&core, &app, &r, current).await?))
}

/// `GET /apps/{app}/slugs/{id}` (Heroku's Slug Info): a slug of the app's, with the
/// checksum of its archive (a promoted slug has its source's).
pub(super) async fn get_slug(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let a = core.store.app(&app).await?;
    let not_found = || ApiError::not_found(format!("slug {id} not found in {app}"));
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let slug = match core.store.slug(id).await {
        Ok(slug) if slug.app_id == a.id => slug,
        Ok(_) | Err(StoreError::SlugNotFound(_)) => return Err(not_found()),
        Err(err) => return Err(err.into()),
    };
    Ok(axum::Json(json!({
        "id": slug.id,
        "checksum": format!("SHA256:{}", slug.sha256),
        "size": slug.size,
        "process_types": slug.process_types,
        "stack": {"name": slug.stack},
        "buildpack_provided_description": slug.buildpacks.join(", "),
        "created_at": rfc3339(slug.created_at),
        "app": {"name": app},
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    release: Value,
}

pub(super) async fn rollback(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(body): Json<RollbackBody>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let version = match &body.release {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => parse_version(s),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid release {}: use a version like 2 or \"v2\"",
            body.release
        ))
    })?;
    let r = core.rollback(&app, version, &user(&headers)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(release_json(&core, &app, &r, Some(r.version)).await?),
    ))
}
