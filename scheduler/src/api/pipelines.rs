//! `/pipelines`, `/pipeline-couplings`, `/pipeline-promotions` (Heroku's Pipeline APIs):
//! apps grouped by stage, and promotion of one app's current slug to the apps downstream.
//! Apps and pipelines are named by id or by name wherever Heroku takes an identity.

use super::*;
use crate::pipelines::{check_name, Coupling, Pipeline, Stage};
use crate::store::Promoted;

fn pipeline_json(p: &Pipeline) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "created_at": rfc3339(p.created_at),
        "updated_at": rfc3339(p.created_at),
    })
}

fn coupling_json(c: &Coupling) -> Value {
    json!({
        "id": c.id,
        "app": {"id": c.app_id, "name": c.app},
        "pipeline": {"id": c.pipeline_id, "name": c.pipeline},
        "stage": c.stage,
        "created_at": rfc3339(c.created_at),
    })
}

/// The name of the app an identity (an id or a name) names.
async fn app_name(core: &Core, identity: &str) -> Result<String> {
    match Uuid::parse_str(identity) {
        Ok(id) => core
            .store
            .apps()
            .await?
            .into_iter()
            .find(|a| a.id == id)
            .map(|a| a.name)
            .ok_or_else(|| StoreError::AppNotFound(identity.to_owned()).into()),
        Err(_) => Ok(identity.to_owned()),
    }
}

fn stage(text: &str) -> Result<Stage> {
    Stage::parse(text).map_err(ApiError::invalid)
}

pub(super) async fn list_pipelines(
    State(core): State<Arc<Core>>,
) -> Result<axum::Json<Vec<Value>>> {
    let pipelines = core.store.pipelines().await?;
    Ok(axum::Json(pipelines.iter().map(pipeline_json).collect()))
}

/// `POST /pipelines`: Heroku's `{name}`, and (Manifold's) the first app with its stage,
/// coupled in the same step so a refused coupling leaves no empty pipeline behind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePipeline {
    name: String,
    app: Option<String>,
    stage: Option<String>,
}

pub(super) async fn create_pipeline(
    State(core): State<Arc<Core>>,
    Json(body): Json<CreatePipeline>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    check_name(&body.name).map_err(ApiError::bad_request)?;
    let first = match (&body.app, &body.stage) {
        (Some(app), Some(s)) => Some((app_name(&core, app).await?, stage(s)?)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "give both app and stage for the pipeline's first app, or neither",
            ))
        }
    };
    let (pipeline, coupling) = core
        .store
        .create_pipeline(&body.name, first.as_ref().map(|(a, s)| (a.as_str(), *s)))
        .await?;
    let mut out = pipeline_json(&pipeline);
    out["couplings"] = json!(coupling.iter().map(coupling_json).collect::<Vec<_>>());
    Ok((StatusCode::CREATED, axum::Json(out)))
}

pub(super) async fn get_pipeline(
    State(core): State<Arc<Core>>,
    Path(pipeline): Path<String>,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(pipeline_json(
        &core.store.pipeline(&pipeline).await?,
    )))
}

pub(super) async fn delete_pipeline(
    State(core): State<Arc<Core>>,
    Path(pipeline): Path<String>,
) -> Result<axum::Json<Value>> {
    Ok(axum::Json(pipeline_json(
        &core.store.delete_pipeline(&pipeline).await?,
    )))
}

pub(super) async fn pipeline_couplings(
    State(core): State<Arc<Core>>,
    Path(pipeline): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let couplings = core.store.couplings(Some(&pipeline)).await?;
    Ok(axum::Json(couplings.iter().map(coupling_json).collect()))
}

pub(super) async fn list_couplings(
    State(core): State<Arc<Core>>,
) -> Result<axum::Json<Vec<Value>>> {
    let couplings = core.store.couplings(None).await?;
    Ok(axum::Json(couplings.iter().map(coupling_json).collect()))
}

/// `GET /apps/{app}/pipeline-couplings`: the app's coupling (404 when it has none).
pub(super) async fn app_coupling(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    core.store.app(&app).await?;
    core.store
        .couplings(None)
        .await?
        .iter()
        .find(|c| c.app == app)
        .map(|c| axum::Json(coupling_json(c)))
        .ok_or_else(|| StoreError::NotCoupled(app).into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateCoupling {
    app: String,
    pipeline: String,
    stage: String,
}

pub(super) async fn create_coupling(
    State(core): State<Arc<Core>>,
    Json(body): Json<CreateCoupling>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let stage = stage(&body.stage)?;
    let app = app_name(&core, &body.app).await?;
    let coupling = core.store.couple(&body.pipeline, &app, stage).await?;
    Ok((StatusCode::CREATED, axum::Json(coupling_json(&coupling))))
}

/// `DELETE /pipeline-couplings/{id}`: takes the app out of its pipeline (the app stays).
pub(super) async fn delete_coupling(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>> {
    let coupling = core
        .store
        .couplings(None)
        .await?
        .into_iter()
        .find(|c| c.id.to_string() == id)
        .ok_or_else(|| ApiError::not_found(format!("pipeline coupling {id} not found")))?;
    let coupling = core.store.uncouple(&coupling.app).await?;
    Ok(axum::Json(coupling_json(&coupling)))
}

/// `{"id": ID-OR-NAME}`, as Heroku names a resource inside a body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Identity {
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppRef {
    app: Identity,
}

/// `POST /pipeline-promotions`: `targets` may be left out or empty (Manifold's): then
/// every app of the stage after the source's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreatePromotion {
    pipeline: Identity,
    source: AppRef,
    #[serde(default)]
    targets: Vec<AppRef>,
}

fn promotion_json(p: &Promoted, source: &str) -> Value {
    json!({
        "id": Uuid::new_v4(),
        "pipeline": {"id": p.pipeline.id, "name": p.pipeline.name},
        "source": {
            "app": {"id": p.source.app_id, "name": source},
            "release": {"id": format!("{}-v{}", p.source.app_id, p.source.version), "version": p.source.version},
        },
        // The releases are made; a target's release phase may still be running.
        "status": "completed",
        "targets": p.targets.iter().map(|(app, r)| json!({
            "app": {"id": app.id, "name": app.name},
            "release": {"id": format!("{}-v{}", r.app_id, r.version), "version": r.version, "status": r.status},
            "status": "succeeded",
        })).collect::<Vec<_>>(),
        "created_at": rfc3339(p.source.created_at.max(
            p.targets.first().map_or(p.source.created_at, |(_, r)| r.created_at),
        )),
    })
}

pub(super) async fn create_promotion(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    Json(body): Json<CreatePromotion>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let source = app_name(&core, &body.source.app.id).await?;
    let mut targets = Vec::new();
    for t in &body.targets {
        targets.push(app_name(&core, &t.app.id).await?);
    }
    let promoted = core
        .promote(Some(&body.pipeline.id), &source, &targets, &user(&headers))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(promotion_json(&promoted, &source)),
    ))
}

/// `/pipelines/{p}/stage/review/config-vars`: the config review apps start with (only the
/// review stage has pipeline config vars, as on Heroku).
pub(super) async fn get_review_config(
    State(core): State<Arc<Core>>,
    Path((pipeline, stage_name)): Path<(String, String)>,
) -> Result<axum::Json<BTreeMap<String, String>>> {
    review_only(&stage_name)?;
    Ok(axum::Json(
        core.store.pipeline(&pipeline).await?.review_config,
    ))
}

pub(super) async fn patch_review_config(
    State(core): State<Arc<Core>>,
    Path((pipeline, stage_name)): Path<(String, String)>,
    Json(changes): Json<BTreeMap<String, Option<String>>>,
) -> Result<axum::Json<BTreeMap<String, String>>> {
    review_only(&stage_name)?;
    for key in changes.keys() {
        check_config_key(key)?;
    }
    let pipeline = core.store.set_review_config(&pipeline, &changes).await?;
    Ok(axum::Json(pipeline.review_config))
}

fn review_only(stage_name: &str) -> Result<()> {
    if stage(stage_name)? != Stage::Review {
        return Err(ApiError::invalid(format!(
            "only the review stage has pipeline config vars, not {stage_name}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use serde_json::json;

    use crate::testing::{settings, Harness};

    async fn post(h: &Harness, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, body) = h.api(Method::POST, path, body).await;
        (status.as_u16(), body)
    }

    #[tokio::test]
    async fn promotion_through_the_api_copies_the_slug_and_keeps_config() {
        let h = Harness::new(settings(std::time::Duration::from_secs(30))).await;
        h.deployed("shop-staging", &[("web", "bin/web")]).await;
        for app in ["shop-prod", "stray"] {
            h.core
                .store
                .create_app(app, crate::testing::STACK)
                .await
                .expect("app");
        }
        let (status, p) = post(
            &h,
            "/pipelines",
            json!({"name": "shop", "app": "shop-staging", "stage": "staging"}),
        )
        .await;
        assert_eq!(status, 201, "{p}");
        assert_eq!(p["couplings"][0]["stage"], "staging");
        let prod_id = h.core.store.app("shop-prod").await.expect("app").id;
        let (status, c) = post(
            &h,
            "/pipeline-couplings",
            json!({"app": prod_id, "pipeline": p["id"], "stage": "production"}),
        )
        .await;
        assert_eq!(status, 201, "{c}");
        let (_, config) = h
            .api(
                Method::PATCH,
                "/apps/shop-prod/config-vars",
                json!({"WHO": "prod"}),
            )
            .await;
        assert_eq!(config["WHO"], "prod");

        // Hostile and wrong requests: each a clear 4xx, nothing changed.
        let refused = [
            (
                json!({"name": "Bad Name"}),
                "/pipelines",
                400,
                "invalid pipeline name",
            ),
            (json!({"name": "shop"}), "/pipelines", 409, "already exists"),
            (
                json!({"name": "blog", "app": "stray"}),
                "/pipelines",
                400,
                "both app and stage",
            ),
            (
                json!({"name": "blog", "app": "stray", "stage": "qa"}),
                "/pipelines",
                422,
                "unknown stage",
            ),
            (
                json!({"app": "nobody", "pipeline": "shop", "stage": "staging"}),
                "/pipeline-couplings",
                404,
                "app nobody not found",
            ),
            (
                json!({"app": "stray", "pipeline": "nope", "stage": "staging"}),
                "/pipeline-couplings",
                404,
                "pipeline nope not found",
            ),
            (
                json!({"app": "shop-prod", "pipeline": "shop", "stage": "staging"}),
                "/pipeline-couplings",
                409,
                "already in pipeline shop",
            ),
            (
                json!({"pipeline": {"id": "shop"}, "source": {"app": {"id": "shop-prod"}}}),
                "/pipeline-promotions",
                422,
                "nothing downstream",
            ),
            (
                json!({"pipeline": {"id": "shop"}, "source": {"app": {"id": "shop-staging"}}, "targets": [{"app": {"id": "stray"}}]}),
                "/pipeline-promotions",
                422,
                "stray is not in a pipeline",
            ),
            (
                json!({"pipeline": {"id": "shop"}, "source": {"app": {"id": "shop-staging"}}, "targets": [{"app": {"id": "shop-staging"}}]}),
                "/pipeline-promotions",
                422,
                "to itself",
            ),
            (
                json!({"pipeline": {"id": "shop"}, "source": {"app": "shop-staging"}}),
                "/pipeline-promotions",
                400,
                "",
            ),
        ];
        for (body, path, code, says) in refused {
            let (status, reply) = post(&h, path, body.clone()).await;
            assert_eq!(status, code, "{path} {body}: {reply}");
            let message = reply["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{path} {body}: {message}");
        }
        assert!(h
            .core
            .store
            .releases("shop-prod")
            .await
            .expect("r")
            .is_empty());
        assert_eq!(h.core.store.pipelines().await.expect("p").len(), 1);

        let staging_id = h.core.store.app("shop-staging").await.expect("app").id;
        let (status, promo) = post(
            &h,
            "/pipeline-promotions",
            json!({"pipeline": {"id": p["id"]}, "source": {"app": {"id": staging_id}},
                   "targets": [{"app": {"id": prod_id}}]}),
        )
        .await;
        assert_eq!(status, 201, "{promo}");
        assert_eq!(promo["source"]["release"]["version"], 1);
        assert_eq!(promo["targets"][0]["app"]["name"], "shop-prod");
        assert_eq!(promo["targets"][0]["release"]["version"], 1);

        let (_, staging) = h
            .api(Method::GET, "/apps/shop-staging/releases", json!(null))
            .await;
        let (_, prod) = h
            .api(Method::GET, "/apps/shop-prod/releases", json!(null))
            .await;
        assert_eq!(prod[0]["description"], "Promote shop-staging v1");
        assert_eq!(prod[0]["current"], true);
        assert_eq!(prod[0]["slug"]["checksum"], staging[0]["slug"]["checksum"]);
        let release = h.core.store.release("shop-prod", 1).await.expect("v1");
        assert_eq!(release.config["WHO"], "prod");
        // Its first release starts one web dyno, as a first deploy would.
        let formation = h
            .core
            .store
            .formation("shop-prod")
            .await
            .expect("formation");
        assert_eq!(
            formation
                .iter()
                .map(|f| (f.process_type.as_str(), f.quantity))
                .collect::<Vec<_>>(),
            [("web", 1)]
        );
        // Heroku's Slug Info, per app: the copy has the source's checksum.
        let slug_of = |app: &str, r: &serde_json::Value| {
            format!(
                "/apps/{app}/slugs/{}",
                r[0]["slug"]["id"].as_str().expect("id")
            )
        };
        let (status, copy) = h
            .api(Method::GET, &slug_of("shop-prod", &prod), json!(null))
            .await;
        assert_eq!(status.as_u16(), 200, "{copy}");
        assert_eq!(copy["checksum"], staging[0]["slug"]["checksum"]);
        let (status, _) = h
            .api(Method::GET, &slug_of("shop-staging", &prod), json!(null))
            .await;
        assert_eq!(status.as_u16(), 404, "another app's slug");

        let (_, list) = h
            .api(
                Method::GET,
                "/pipelines/shop/pipeline-couplings",
                json!(null),
            )
            .await;
        assert_eq!(list.as_array().map(Vec::len), Some(2));
        let (status, mine) = h
            .api(
                Method::GET,
                "/apps/shop-prod/pipeline-couplings",
                json!(null),
            )
            .await;
        assert_eq!(status.as_u16(), 200, "{mine}");
        let path = format!("/pipeline-couplings/{}", mine["id"].as_str().expect("id"));
        let (status, _) = h.api(Method::DELETE, &path, json!(null)).await;
        assert_eq!(status.as_u16(), 200);
        let (status, _) = h
            .api(
                Method::GET,
                "/apps/shop-prod/pipeline-couplings",
                json!(null),
            )
            .await;
        assert_eq!(status.as_u16(), 404);

        let (status, cfg) = h
            .api(
                Method::PATCH,
                "/pipelines/shop/stage/review/config-vars",
                json!({"S3_BUCKET": "review"}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), &cfg["S3_BUCKET"]),
            (200, &json!("review"))
        );
        let (status, _) = h
            .api(
                Method::PATCH,
                "/pipelines/shop/stage/staging/config-vars",
                json!({"A": "1"}),
            )
            .await;
        assert_eq!(status.as_u16(), 422);
        let (status, _) = h.api(Method::DELETE, "/pipelines/shop", json!(null)).await;
        assert_eq!(status.as_u16(), 200);
        let (status, _) = h.api(Method::GET, "/pipelines/shop", json!(null)).await;
        assert_eq!(status.as_u16(), 404);
    }

    #[tokio::test]
    async fn a_promoted_release_with_a_release_phase_waits_for_it() {
        let h = Harness::new(settings(std::time::Duration::from_secs(30))).await;
        let mut agent = h.agent("h1").await;
        h.deployed(
            "api-staging",
            &[("web", "bin/web"), ("release", "bin/migrate")],
        )
        .await;
        // The staging release's own phase is not what this test is about: settle it.
        h.core
            .store
            .finish_release(
                h.core.store.app("api-staging").await.expect("app").id,
                1,
                crate::model::ReleaseStatus::Succeeded,
            )
            .await
            .expect("settle");
        h.core
            .store
            .create_app("api-prod", crate::testing::STACK)
            .await
            .expect("app");
        let (status, _) = post(
            &h,
            "/pipelines",
            json!({"name": "api", "app": "api-staging", "stage": "staging"}),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _) = post(
            &h,
            "/pipeline-couplings",
            json!({"app": "api-prod", "pipeline": "api", "stage": "production"}),
        )
        .await;
        assert_eq!(status, 201);
        let (status, promo) = post(
            &h,
            "/pipeline-promotions",
            json!({"pipeline": {"id": "api"}, "source": {"app": {"id": "api-staging"}}}),
        )
        .await;
        assert_eq!(status, 201, "{promo}");
        assert_eq!(promo["targets"][0]["release"]["status"], "pending");
        // The target's release phase was placed: a release dyno of api-prod.
        let names: Vec<String> = agent.assigned().iter().map(|a| a.name.clone()).collect();
        assert!(names.iter().any(|n| n.starts_with("release.")), "{names:?}");
        assert!(h
            .core
            .store
            .current_release("api-prod")
            .await
            .expect("current")
            .is_none());
    }
}
