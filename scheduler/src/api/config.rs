//! `/apps/{app}/config-vars`: an app's config vars, each change a new release.

use super::*;

pub(super) async fn get_config(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<BTreeMap<String, String>>> {
    Ok(axum::Json(core.store.app(&app).await?.config))
}

pub(crate) fn check_config_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ApiError::bad_request(format!(
            "invalid config var name {key:?}: use letters, digits and _, not starting with a digit"
        )));
    }
    if ["PORT", "DYNO"].contains(&key)
        || key.starts_with("HEROKU_")
        || key.starts_with("MANIFOLD_")
        || key.starts_with("__")
    {
        return Err(ApiError::invalid(format!(
            "config var {key} is set by the platform and cannot be changed"
        )));
    }
    Ok(())
}

pub(super) async fn patch_config(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(changes): Json<BTreeMap<String, Option<String>>>,
) -> Result<Response> {
    for (key, value) in &changes {
        check_config_key(key)?;
        // Checked now rather than at the next deploy, which would otherwise fail on it.
        if let (Some(url), "BUILDPACK_URL") = (value, key.as_str()) {
            if url.trim().is_empty() {
                continue;
            }
            super::buildpacks::check_buildpack(url.trim(), "config var BUILDPACK_URL")?;
        }
    }
    let current = core.store.app(&app).await?;
    let mut after = current.config.clone();
    for (k, v) in &changes {
        match v {
            Some(v) => after.insert(k.clone(), v.clone()),
            None => after.remove(k),
        };
    }
    let total: usize = after.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > CONFIG_LIMIT {
        return Err(ApiError::invalid(format!(
            "config vars would take {total} bytes; the limit is {CONFIG_LIMIT}"
        )));
    }
    let Some((app, release)) = core.set_config(&current, &changes, &user(&headers)).await? else {
        return Ok(axum::Json(current.config).into_response());
    };
    let mut res = axum::Json(app.config).into_response();
    if let Some(r) = release {
        if let Ok(v) = HeaderValue::from_str(&r.version.to_string()) {
            res.headers_mut().insert("manifold-release", v);
        }
    }
    Ok(res)
}
