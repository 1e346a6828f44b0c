//! The REST API (see `scheduler/API.md`): shaped like Heroku's Platform API. Handlers parse
//! and validate, call the store or the [`Core`], and map results back; errors are JSON with
//! an `id` and a `message` that says what to do.

mod acm;
mod addons;
mod apps;
mod blobs;
mod buildpacks;
mod builds;
mod certs;
mod config;
mod domains;
mod dynos;
mod features;
mod formation;
mod git;
mod hosts;
mod pipelines;
mod releases;
mod review_apps;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use manifold_dyno::DynoSize;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::blobs::BlobError;
use crate::core::Core;
use crate::leadership::LEADER_HEADER;
use crate::model::{App, Build, Desired, Dyno, FormationUpdate, Release, FEATURES};
use crate::reconciler::{size_memory, Liveness};
use crate::store::StoreError;

use crate::auth::auth;
use crate::http::request_id;
use acm::{disable_acm, enable_acm, get_acm};
use apps::{create_app, delete_app, get_app, list_apps, patch_app};
use blobs::{get_blob, put_blob};
use buildpacks::{list_buildpacks, put_buildpacks};
use builds::{build_output, create_build, get_build, list_builds};
use certs::{add_cert, list_certs, remove_cert};
use config::{get_config, patch_config};
use domains::{add_domain, list_domains, remove_domain};
use dynos::{list_dynos, restart_all, restart_dynos, stop_dyno};
use features::{get_feature, list_features, patch_feature};
use formation::{get_formation, patch_formation};
use hosts::{drain_host, list_hosts};
use pipelines::{
    app_coupling, create_coupling, create_pipeline, create_promotion, delete_coupling,
    delete_pipeline, get_pipeline, get_review_config, list_couplings, list_pipelines,
    patch_review_config, pipeline_couplings,
};
use releases::{get_release, get_slug, list_releases, rollback};
use review_apps::{create_review_app, delete_review_app, list_review_apps};

use crate::http::ApiError;
use crate::http::{rfc3339, user, Json, Result, JSON_LIMIT};
pub(crate) use builds::choose_buildpacks;
pub(crate) use config::check_config_key;
pub(crate) use dynos::dyno_json;

/// How much of a refused upload is read and dropped so its sender sees the error.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// Most dynos of one process type.
const MAX_QUANTITY: u32 = 1000;
/// Heroku's R10 limit and grace period, in seconds, and how far an app may raise them.
const DEFAULT_BOOT_TIMEOUT: u32 = 60;
const DEFAULT_STOP_TIMEOUT: u32 = 30;
const MAX_BOOT_TIMEOUT: u32 = 600;
const MAX_STOP_TIMEOUT: u32 = 300;
/// Config vars of one app, keys and values together (Heroku: 32 KB).
const CONFIG_LIMIT: usize = 32 * 1024;

/// The REST API's routes (gRPC is merged beside them by the server).
pub fn router(core: Arc<Core>) -> Router {
    let upload_limit = usize::try_from(core.settings.upload_limit).unwrap_or(usize::MAX);
    let slug_limit = usize::try_from(core.settings.slug_limit).unwrap_or(usize::MAX);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/leadership", get(leadership))
        .route("/apps", get(list_apps).post(create_app))
        .route(
            "/apps/:app",
            get(get_app).patch(patch_app).delete(delete_app),
        )
        .route(
            "/apps/:app/config-vars",
            get(get_config).patch(patch_config),
        )
        .route(
            "/apps/:app/builds",
            get(list_builds)
                .post(create_build)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/apps/:app/builds/:id", get(get_build))
        .route("/apps/:app/builds/:id/output", get(build_output))
        .route("/apps/:app/releases", get(list_releases).post(rollback))
        .route("/apps/:app/releases/:version", get(get_release))
        .route("/apps/:app/slugs/:id", get(get_slug))
        .route(
            "/apps/:app/formation",
            get(get_formation).patch(patch_formation),
        )
        .route(
            "/apps/:app/dynos",
            get(list_dynos)
                .post(crate::oneoff::create)
                .delete(restart_all),
        )
        .route("/apps/:app/dynos/:dyno/attach", get(crate::oneoff::attach))
        .route(
            "/apps/:app/dynos/:dyno",
            axum::routing::delete(restart_dynos),
        )
        .route("/apps/:app/dynos/:dyno/actions/stop", post(stop_dyno))
        .route("/apps/:app/domains", get(list_domains).post(add_domain))
        .route(
            "/apps/:app/domains/:hostname",
            axum::routing::delete(remove_domain),
        )
        .route("/apps/:app/sni-endpoints", get(list_certs).post(add_cert))
        .route(
            "/apps/:app/sni-endpoints/:id",
            axum::routing::delete(remove_cert),
        )
        .route(
            "/apps/:app/acm",
            get(get_acm).post(enable_acm).delete(disable_acm),
        )
        .route(
            "/apps/:app/buildpack-installations",
            get(list_buildpacks).put(put_buildpacks),
        )
        .route("/apps/:app/features", get(list_features))
        .route(
            "/apps/:app/features/:feature",
            get(get_feature).patch(patch_feature),
        )
        // Heroku's `https://git.heroku.com/APP.git`. The handlers stream the body to git
        // themselves, under the upload limit (see `git.rs`).
        .route("/:repo/info/refs", get(git::info_refs))
        .route("/:repo/git-upload-pack", post(git::upload_pack))
        .route("/:repo/git-receive-pack", post(git::receive_pack))
        .route("/apps/:app/pipeline-couplings", get(app_coupling))
        .route("/pipelines", get(list_pipelines).post(create_pipeline))
        .route(
            "/pipelines/:pipeline",
            get(get_pipeline).delete(delete_pipeline),
        )
        .route(
            "/pipelines/:pipeline/pipeline-couplings",
            get(pipeline_couplings),
        )
        .route(
            "/pipelines/:pipeline/stage/:stage/config-vars",
            get(get_review_config).patch(patch_review_config),
        )
        .route(
            "/pipeline-couplings",
            get(list_couplings).post(create_coupling),
        )
        .route(
            "/pipeline-couplings/:id",
            axum::routing::delete(delete_coupling),
        )
        .route("/pipeline-promotions", post(create_promotion))
        .route(
            "/pipelines/:pipeline/review-apps",
            get(list_review_apps)
                .post(create_review_app)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route(
            "/review-apps/:app",
            axum::routing::delete(delete_review_app),
        )
        .merge(addon_routes())
        .merge(crate::logs::routes())
        .merge(crate::followers::routes())
        .route("/hosts", get(list_hosts))
        .route("/hosts/:host/actions/:action", post(drain_host))
        .route(
            "/agent/v1/blobs/:sha",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::max(slug_limit)),
        )
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(middleware::from_fn_with_state(core.clone(), follower_gate))
        .layer(middleware::from_fn_with_state(core.clone(), auth))
        .layer(middleware::from_fn(request_id))
        .with_state(core)
}

/// Add-ons, their attachments and backups (see `addons.rs`).
fn addon_routes() -> Router<Arc<Core>> {
    use addons::*;
    Router::new()
        .route("/addons", get(list_addons))
        .route("/addons/:addon", get(get_addon))
        .route("/apps/:app/addons", get(list_app_addons).post(create_addon))
        .route(
            "/apps/:app/addons/:addon",
            axum::routing::delete(destroy_addon),
        )
        .route("/apps/:app/addon-attachments", get(list_attachments))
        .route("/addon-attachments", post(create_attachment))
        .route(
            "/addon-attachments/:id",
            axum::routing::delete(delete_attachment),
        )
        .route(
            "/apps/:app/pg-backups",
            get(list_backups).post(capture_backup),
        )
        .route(
            "/apps/:app/pg-backups/:backup/actions/restore",
            post(restore_backup),
        )
        .route(
            "/apps/:app/pg-backups/:backup/download",
            get(download_backup),
        )
}

/// This replica's view of the election: whether it leads (and in which term), else which
/// replica does. Every replica answers for itself.
async fn leadership(State(core): State<Arc<Core>>) -> axum::Json<Value> {
    axum::Json(match core.leadership.holds() {
        Some(term) => json!({"role": "leader", "term": term}),
        None => json!({"role": "follower", "leader": core.leadership.leader_url()}),
    })
}

/// Paths a follower cannot serve although they only read: what they read is held in the
/// leader's memory (which hosts' agents are linked, log streams, build output, attach
/// sessions, the routers' and log plex processes' long polls).
fn leader_only_read(path: &str) -> bool {
    path == "/hosts"
        || path.starts_with("/router/")
        || path.starts_with("/logplex/")
        || path.ends_with("/log-stream")
        || path.ends_with("/output")
        || path.ends_with("/attach")
        // Pushes write; clones and fetches are served where pushes land.
        || crate::git::is_git_path(path)
}

/// On a replica that does not lead, lets through what reads only the database (and
/// `/health`, `/metrics`, which are this process's own) and answers everything else
/// `503 not_leader` naming the leader in the `manifold-leader` header, so that clients go
/// there: a follower never writes, so two replicas can never both act on one request.
async fn follower_gate(
    State(core): State<Arc<Core>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    use axum::http::Method;
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if core.leadership.holds().is_some() || (reads && !leader_only_read(req.uri().path())) {
        return next.run(req).await;
    }
    let leader = core.leadership.leader_url();
    if crate::git::is_git_path(req.uri().path()) {
        return crate::git::refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this scheduler is not the leader: push to the leader's remote, {}",
                leader.as_deref().map_or_else(
                    || "not known yet (an election is under way): retry".to_string(),
                    |l| format!("{l}/APP.git (manifold git:remote sets it)")
                )
            ),
        );
    }
    let mut res = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        manifold_endpoints::NOT_LEADER,
        format!(
            "this scheduler is not the leader; the leader is {}",
            leader
                .as_deref()
                .unwrap_or("not known yet (an election is under way): retry")
        ),
    )
    .into_response();
    if let Some(value) = leader.and_then(|l| HeaderValue::from_str(&l).ok()) {
        res.headers_mut().insert(LEADER_HEADER, value);
    }
    res
}
