//! `/apps/{app}/formation`: process types' quantity and size (`ps:scale`).

use super::*;

async fn formation_json(core: &Core, app: &str) -> Result<Vec<Value>> {
    let commands = match core.store.current_release(app).await? {
        Some(r) => core.store.slug(r.slug_id).await?.process_types,
        None => BTreeMap::new(),
    };
    Ok(core
        .store
        .formation(app)
        .await?
        .into_iter()
        .map(|f| {
            json!({
                "type": f.process_type,
                "quantity": f.quantity,
                "size": f.size,
                "command": commands.get(&f.process_type),
                "updated_at": rfc3339(f.updated_at),
            })
        })
        .collect())
}

pub(super) async fn get_formation(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    core.store.app(&app).await?;
    Ok(axum::Json(formation_json(&core, &app).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FormationBody {
    updates: Vec<FormationItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormationItem {
    #[serde(rename = "type")]
    process_type: String,
    quantity: Option<u32>,
    size: Option<String>,
}

pub(super) async fn patch_formation(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(body): Json<FormationBody>,
) -> Result<axum::Json<Vec<Value>>> {
    core.store.app(&app).await?;
    let release = core.store.current_release(&app).await?.ok_or_else(|| {
        ApiError::invalid(format!(
            "{app} has no release yet: deploy it first with `manifold deploy DIR -a {app}`"
        ))
    })?;
    let types = core.store.slug(release.slug_id).await?.process_types;
    if body.updates.is_empty() {
        return Err(ApiError::bad_request(
            "no updates: give at least one {\"type\", \"quantity\"}",
        ));
    }
    let mut updates = Vec::new();
    for u in body.updates {
        if !types.contains_key(&u.process_type) {
            let known: Vec<&str> = types.keys().map(String::as_str).collect();
            return Err(ApiError::invalid(format!(
                "no process type {} in {app}'s Procfile (v{}): it has {}",
                u.process_type,
                release.version,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if u.quantity.is_some_and(|q| q > MAX_QUANTITY) {
            return Err(ApiError::invalid(format!(
                "quantity of {} is above the limit of {MAX_QUANTITY}",
                u.process_type
            )));
        }
        let size = match u.size {
            Some(s) => Some(
                s.to_ascii_lowercase()
                    .parse::<DynoSize>()
                    .map_err(|e| ApiError::invalid(e.to_string()))?
                    .name()
                    .to_string(),
            ),
            None => None,
        };
        updates.push(FormationUpdate {
            process_type: u.process_type,
            quantity: u.quantity,
            size,
        });
    }
    core.scale(&app, &updates, &user(&headers)).await?;
    Ok(axum::Json(formation_json(&core, &app).await?))
}
