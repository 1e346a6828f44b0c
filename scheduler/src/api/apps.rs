//! `/apps`: create, list, show, change and delete apps.

use super::*;

pub(super) fn valid_app_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

pub(super) async fn app_json(core: &Core, app: &App) -> Result<Value> {
    let current = core.store.current_release(&app.name).await?;
    Ok(json!({
        "id": app.id,
        "name": app.name,
        "stack": {"name": app.stack},
        "created_at": rfc3339(app.created_at),
        "updated_at": rfc3339(app.updated_at),
        "released_at": current.as_ref().map(|r| rfc3339(r.created_at)),
        "current_release": current.as_ref().map(|r| json!({"version": r.version})),
        "boot_timeout": app.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT),
        "stop_timeout": app.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
        "maintenance": app.maintenance,
        "acm": app.acm,
    }))
}

pub(super) async fn list_apps(State(core): State<Arc<Core>>) -> Result<axum::Json<Vec<Value>>> {
    let mut out = Vec::new();
    for app in core.store.apps().await? {
        out.push(app_json(&core, &app).await?);
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApp {
    name: String,
    stack: Option<String>,
}

pub(super) async fn create_app(
    State(core): State<Arc<Core>>,
    Json(body): Json<CreateApp>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    if !valid_app_name(&body.name) {
        return Err(ApiError::bad_request(format!(
            "invalid app name {:?}: use 3 to 30 lowercase letters, digits and dashes, starting with a letter and not ending with a dash",
            body.name
        )));
    }
    let stack = body.stack.unwrap_or_else(|| "bookworm".to_string());
    if stack.is_empty()
        || !stack
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad_request(format!(
            "invalid stack name {stack:?}"
        )));
    }
    let app = core.store.create_app(&body.name, &stack).await?;
    // Its route (no web dynos yet) comes with the next pass.
    core.poke_apps([app.id]);
    // The default certificate names every app.
    super::domains::publish(&core).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(app_json(&core, &app).await?),
    ))
}

pub(super) async fn get_app(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&app).await?;
    Ok(axum::Json(app_json(&core, &app).await?))
}

/// `PATCH /apps/{app}`: the app's timeouts, in seconds (0 restores the default), and its
/// maintenance mode.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppPatch {
    boot_timeout: Option<u32>,
    stop_timeout: Option<u32>,
    maintenance: Option<bool>,
}

/// Checks a timeout: 0 means the default, otherwise `1..=max` seconds.
fn timeout(name: &str, given: Option<u32>, current: Option<u32>, max: u32) -> Result<Option<u32>> {
    match given {
        None => Ok(current),
        Some(0) => Ok(None),
        Some(s) if s <= max => Ok(Some(s)),
        Some(s) => Err(ApiError::invalid(format!(
            "{name} of {s} s is above the limit of {max} s (0 restores the default)"
        ))),
    }
}

pub(super) async fn patch_app(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
    Json(body): Json<AppPatch>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&name).await?;
    let boot = timeout(
        "boot_timeout",
        body.boot_timeout,
        app.boot_timeout,
        MAX_BOOT_TIMEOUT,
    )?;
    let stop = timeout(
        "stop_timeout",
        body.stop_timeout,
        app.stop_timeout,
        MAX_STOP_TIMEOUT,
    )?;
    let mut app = core.store.set_timeouts(&name, boot, stop).await?;
    if let Some(on) = body.maintenance.filter(|on| *on != app.maintenance) {
        app = core.store.set_maintenance(&name, on).await?;
        // The next reconcile publishes the app's route: the maintenance page, or its dynos.
        core.poke_apps([app.id]);
    }
    Ok(axum::Json(app_json(&core, &app).await?))
}

pub(super) async fn delete_app(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&name).await?;
    let body = app_json(&core, &app).await?;
    core.delete_app(&name).await?;
    core.git.remove(app.id).await;
    super::domains::publish(&core).await?;
    Ok(axum::Json(body))
}
