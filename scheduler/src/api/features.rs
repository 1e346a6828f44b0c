//! `/apps/{app}/features`: the app's feature flags (preboot, sleep).

use super::*;

fn feature_json(app: &App, name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "description": description,
        "enabled": app.features.contains(name),
    })
}

fn feature(name: &str) -> Result<&'static (&'static str, &'static str)> {
    FEATURES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let known: Vec<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
        ApiError::not_found(format!(
            "no feature {name}: the features are {}",
            known.join(", ")
        ))
    })
}

pub(super) async fn list_features(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let app = core.store.app(&app).await?;
    Ok(axum::Json(
        FEATURES
            .iter()
            .map(|(n, d)| feature_json(&app, n, d))
            .collect(),
    ))
}

pub(super) async fn get_feature(
    State(core): State<Arc<Core>>,
    Path((app, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&app).await?;
    let (n, d) = feature(&name)?;
    Ok(axum::Json(feature_json(&app, n, d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeatureBody {
    enabled: bool,
}

pub(super) async fn patch_feature(
    State(core): State<Arc<Core>>,
    Path((app, name)): Path<(String, String)>,
    Json(body): Json<FeatureBody>,
) -> Result<axum::Json<Value>> {
    core.store.app(&app).await?;
    let (n, d) = feature(&name)?;
    let app = core.set_feature(&app, n, body.enabled).await?;
    Ok(axum::Json(feature_json(&app, n, d)))
}
