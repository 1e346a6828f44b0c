//! The REST API (see `scheduler/API.md`): shaped like Heroku's Platform API. Handlers parse
//! and validate, call the store or the [`Core`], and map results back; errors are JSON with
//! an `id` and a `message` that says what to do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use manifold_sizes::DynoSize;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::blobs::BlobError;
use crate::builds::Output;
use crate::core::{Core, CoreError};
use crate::model::{App, Build, Desired, Dyno, FormationUpdate, Release, ReleaseStatus, FEATURES};
use crate::reconciler::{dyno_index, size_memory, sleeps, Liveness};
use crate::store::{DynoChanges, StoreError};

/// Largest JSON request body.
const JSON_LIMIT: usize = 1024 * 1024;
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

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    id: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        id: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            id,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_params", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"id": self.id, "message": self.message})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match &err {
            StoreError::AppExists(_) | StoreError::DrainExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            StoreError::AppNotFound(name) => ApiError::not_found(format!(
                "app {name} not found: see `manifold apps`, or create it with `manifold apps:create {name}`"
            )),
            StoreError::ReleaseNotFound { .. }
            | StoreError::BuildNotFound(_)
            | StoreError::SlugNotFound(_)
            | StoreError::HostNotFound(_)
            | StoreError::DrainNotFound { .. } => ApiError::not_found(err.to_string()),
            StoreError::NoRelease { .. } => ApiError::invalid(err.to_string()),
            _ => {
                tracing::error!("store: {err:?}");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", err.to_string())
            }
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(err: CoreError) -> ApiError {
        match err {
            CoreError::Store(e) => e.into(),
        }
    }
}

/// JSON bodies with the API's own errors (axum's are plain text).
pub(crate) struct Json<T>(pub(crate) T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {JSON_LIMIT} bytes"),
                )
            } else {
                ApiError::bad_request(rej.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Compares secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The routes that routers and log plex processes following the scheduler use: the
/// follower token opens these and nothing else.
const FOLLOWER_PATHS: [&str; 2] = ["/router/v1/", "/logplex/v1/"];

/// Every route but `/health` needs a token: the API token for users, the agent token
/// for `/agent/…`; the follower routes also take the follower token, which every other
/// route refuses (a router's host holds no admin secret).
async fn auth(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/health" {
        return next.run(req).await;
    }
    let agent = path.starts_with("/agent/");
    let follower = FOLLOWER_PATHS.iter().any(|p| path.starts_with(p));
    let expected = if agent {
        &core.settings.agent_token
    } else {
        &core.settings.api_token
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let follower_token =
        given.is_some_and(|g| same_secret(g, &core.settings.follower_token)) && !agent;
    if follower_token && !follower {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the follower token only serves {} (routers and log plex processes): use the API token",
                FOLLOWER_PATHS.join(" and ")
            ),
        )
        .into_response();
    }
    match given {
        _ if follower_token => next.run(req).await,
        Some(g) if same_secret(g, expected) => {
            if path.starts_with("/agent/") && core.settings.agent_certs {
                if let Err(refused) = check_agent_cert(&req) {
                    return refused.into_response();
                }
            }
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong token: set MANIFOLD_API_TOKEN to the scheduler's API token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing token: send Authorization: Bearer TOKEN (set MANIFOLD_API_TOKEN)",
        )
        .into_response(),
    }
}

/// With `--cluster-ca`, an agent's request (blobs) must come with a client certificate valid
/// for the host it names in `Manifold-Host` (see [`crate::tls`]).
fn check_agent_cert(req: &Request) -> Result<(), ApiError> {
    let peer = req.extensions().get::<crate::tls::Peer>();
    let host = req
        .headers()
        .get(crate::tls::HOST_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let from = peer.map_or_else(|| "?".to_string(), |p| p.addr.to_string());
    if host.is_empty() {
        tracing::warn!("refused an agent request from {from}: no Manifold-Host header");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "agent certificate required: the request names no host (Manifold-Host header)",
        ));
    }
    crate::tls::check_agent(peer, host).map_err(|err| {
        tracing::warn!("refused an agent request from {from}: {err}");
        let status = if err.unauthenticated() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::FORBIDDEN
        };
        ApiError::new(status, "unauthorized", err.to_string())
    })
}

/// Every response carries a `Request-Id` (the caller's when it sent a sane one).
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("request-id", v);
    }
    res
}

/// The REST API's routes (gRPC is merged beside them by the server).
pub fn router(core: Arc<Core>) -> Router {
    let upload_limit = usize::try_from(core.settings.upload_limit).unwrap_or(usize::MAX);
    let slug_limit = usize::try_from(core.settings.slug_limit).unwrap_or(usize::MAX);
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::metrics))
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
        .route("/apps/:app/features", get(list_features))
        .route(
            "/apps/:app/features/:feature",
            get(get_feature).patch(patch_feature),
        )
        .merge(crate::logs::routes())
        .merge(crate::follow::routes())
        .route("/hosts", get(list_hosts))
        .route("/hosts/:host/actions/:action", post(drain_host))
        .route(
            "/agent/v1/blobs/:sha",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::max(slug_limit)),
        )
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(middleware::from_fn_with_state(core.clone(), auth))
        .layer(middleware::from_fn(request_id))
        .with_state(core)
}

pub(crate) fn user(headers: &HeaderMap) -> String {
    headers
        .get("manifold-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 100)
        .unwrap_or("admin")
        .to_string()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn valid_app_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

async fn app_json(core: &Core, app: &App) -> Result<Value> {
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
    }))
}

async fn list_apps(State(core): State<Arc<Core>>) -> Result<axum::Json<Vec<Value>>> {
    let mut out = Vec::new();
    for app in core.store.apps().await? {
        out.push(app_json(&core, &app).await?);
    }
    Ok(axum::Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateApp {
    name: String,
    stack: Option<String>,
}

async fn create_app(
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
    Ok((
        StatusCode::CREATED,
        axum::Json(app_json(&core, &app).await?),
    ))
}

async fn get_app(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&app).await?;
    Ok(axum::Json(app_json(&core, &app).await?))
}

/// `PATCH /apps/{app}`: the app's timeouts, in seconds (0 restores the default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppPatch {
    boot_timeout: Option<u32>,
    stop_timeout: Option<u32>,
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

async fn patch_app(
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
    let app = core.store.set_timeouts(&name, boot, stop).await?;
    Ok(axum::Json(app_json(&core, &app).await?))
}

async fn delete_app(
    State(core): State<Arc<Core>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&name).await?;
    let body = app_json(&core, &app).await?;
    // Tell the hosts first (their sets change, generations move), then forget the app.
    let dynos = core.store.dynos(Some(&name)).await?;
    let changed = core
        .store
        .apply_dyno_changes(&DynoChanges {
            delete: dynos.iter().map(|d| d.id.clone()).collect(),
            ..DynoChanges::default()
        })
        .await?;
    core.store.delete_app(&name).await?;
    core.plex.remove_app(&name);
    core.routes.remove(&name);
    for host in changed.keys() {
        core.push_assignments(host).await?;
    }
    Ok(axum::Json(body))
}

async fn get_config(
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

async fn patch_config(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(changes): Json<BTreeMap<String, Option<String>>>,
) -> Result<Response> {
    for key in changes.keys() {
        check_config_key(key)?;
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
    let set: Vec<&str> = changes
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    let removed: Vec<&str> = changes
        .iter()
        .filter(|(k, v)| v.is_none() && current.config.contains_key(*k))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("Set {} config vars", set.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("Remove {} config vars", removed.join(", ")));
    }
    if parts.is_empty() {
        return Ok(axum::Json(current.config).into_response());
    }
    let (app, release) = core
        .store
        .update_config(&app, &changes, &parts.join("; "), &user(&headers))
        .await?;
    match &release {
        Some(r) => core.log_release(&app.name, r),
        None => core.log_api(
            &app.name,
            format!("{} by {}", parts.join("; "), user(&headers)),
        ),
    }
    if let Some(r) = release
        .as_ref()
        .filter(|r| r.status == ReleaseStatus::Pending)
    {
        core.start_release_phase(&app, r, None).await;
    }
    core.poke();
    let mut res = axum::Json(app.config).into_response();
    if let Some(r) = release {
        if let Ok(v) = HeaderValue::from_str(&r.version.to_string()) {
            res.headers_mut().insert("manifold-release", v);
        }
    }
    Ok(res)
}

fn build_json(app: &str, b: &Build, stack: &str) -> Value {
    json!({
        "id": b.id,
        "status": b.status,
        "source_blob": {"checksum": format!("SHA256:{}", b.source_sha256)},
        "output_stream_url": format!("/apps/{app}/builds/{}/output", b.id),
        "slug": b.slug_id.map(|id| json!({"id": id})),
        "release": b.release_version.map(|v| json!({"version": v})),
        "host": b.host_id.as_ref().map(|h| json!({"id": h})),
        "stack": stack,
        "user": {"email": b.user},
        "created_at": rfc3339(b.created_at),
        "updated_at": rfc3339(b.updated_at),
    })
}

async fn list_builds(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let a = core.store.app(&app).await?;
    let builds = core.store.builds(&app).await?;
    Ok(axum::Json(
        builds
            .iter()
            .map(|b| build_json(&app, b, &a.stack))
            .collect(),
    ))
}

async fn create_build(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    query: Option<Query<Vec<(String, String)>>>,
    body: Body,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let a = core.store.app(&app).await?;
    let buildpacks: Vec<String> = query
        .map(|Query(q)| {
            q.into_iter()
                .filter(|(k, _)| k == "buildpack")
                .map(|(_, v)| v)
                .collect()
        })
        .unwrap_or_default();
    // Only built-in names and git URLs: a path would name a directory on the build host,
    // which the agent would mount into the build.
    for bp in &buildpacks {
        manifold_slugbuilder::buildpack::BuildpackSource::parse_remote(bp)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    let limit = core.settings.upload_limit;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the source is larger than {} MiB: add a .slugignore or remove large files",
                limit / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    let stored = if declared.is_some_and(|n| n > limit) {
        Err(BlobError::TooLarge { limit })
    } else {
        core.blobs.put(&mut stream, limit, None).await
    };
    let source = match stored {
        Ok(source) => source,
        Err(BlobError::TooLarge { .. }) => {
            // Read (and drop) the rest of a modest overrun, so the client, still sending,
            // gets the 413 rather than a reset connection.
            let mut rest = 0u64;
            while let Some(Ok(chunk)) = stream.next().await {
                rest += chunk.len() as u64;
                if rest > DRAIN_LIMIT {
                    break;
                }
            }
            return Err(too_large());
        }
        Err(other) => {
            return Err(ApiError::bad_request(format!(
                "cannot receive the source: {other}"
            )))
        }
    };
    let gzip = std::fs::File::open(
        core.blobs
            .path(&source.sha256)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    )
    .and_then(|mut f| {
        use std::io::Read;
        let mut magic = [0u8; 2];
        f.read_exact(&mut magic).map(|()| magic == [0x1f, 0x8b])
    })
    .unwrap_or(false);
    if !gzip {
        return Err(ApiError::bad_request(
            "the source must be a gzip-compressed tarball (tar.gz), as `manifold deploy DIR` sends",
        ));
    }
    let build = core
        .start_build(&a, &source, buildpacks, &user(&headers))
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(build_json(&app, &build, &a.stack)),
    ))
}

fn parse_uuid(s: &str, what: &str) -> Result<Uuid> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("{what} {s} not found")))
}

async fn get_build(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let a = core.store.app(&app).await?;
    let build = core.store.build(parse_uuid(&id, "build")?).await?;
    if build.app_id != a.id {
        return Err(ApiError::not_found(format!(
            "build {id} not found in {app}"
        )));
    }
    Ok(axum::Json(build_json(&app, &build, &a.stack)))
}

async fn build_output(
    State(core): State<Arc<Core>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response> {
    let a = core.store.app(&app).await?;
    let id = parse_uuid(&id, "build")?;
    let build = core.store.build(id).await?;
    if build.app_id != a.id {
        return Err(ApiError::not_found(format!(
            "build {id} not found in {app}"
        )));
    }
    let stream = futures::stream::unfold((core, 0usize), move |(core, from)| async move {
        match core.builds.read(id, from).await {
            Output::Lines { lines, next } => {
                let mut text = lines.join("\n");
                text.push('\n');
                Some((Ok::<_, std::io::Error>(Bytes::from(text)), (core, next)))
            }
            Output::Done | Output::Unknown => None,
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

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

async fn list_releases(
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

async fn get_release(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    release: Value,
}

async fn rollback(
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
    let r = core.store.rollback(&app, version, &user(&headers)).await?;
    core.log_release(&app, &r);
    core.poke();
    Ok((
        StatusCode::CREATED,
        axum::Json(release_json(&core, &app, &r, Some(r.version)).await?),
    ))
}

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

async fn get_formation(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    core.store.app(&app).await?;
    Ok(axum::Json(formation_json(&core, &app).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FormationBody {
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

async fn patch_formation(
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
    let plan = core.check_formation(&app, &updates).await?;
    if let Some(u) = plan.unplaced.first() {
        return Err(ApiError::invalid(format!(
            "cannot run {} {} dyno(s) of {app}: {} (nothing was changed)",
            plan.unplaced.len(),
            u.size,
            u.rejection
        )));
    }
    let formation = core.store.update_formation(&app, &updates).await?;
    let scaled: Vec<String> = formation
        .iter()
        .filter(|f| updates.iter().any(|u| u.process_type == f.process_type))
        .map(|f| {
            let size = f
                .size
                .parse::<DynoSize>()
                .map_or(f.size.as_str(), |s| s.heroku_name());
            format!("{}@{}:{size}", f.process_type, f.quantity)
        })
        .collect();
    core.log_api(
        &app,
        format!("Scaled to {} by {}", scaled.join(" "), user(&headers)),
    );
    core.poke();
    Ok(axum::Json(formation_json(&core, &app).await?))
}

pub(crate) fn dyno_json(d: &Dyno, hosts: &HashMap<String, String>) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "type": d.process_type,
        "state": if d.desired == Desired::Stopped && d.state.as_str() == "up" { "stopping" } else { d.state.as_str() },
        "size": d.size,
        "command": d.command,
        "release": {"version": d.release_version},
        "host": {"id": d.host_id, "address": hosts.get(&d.host_id)},
        "port": d.port,
        "exit_status": d.exit_status,
        "reason": d.reason,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.state_changed_at),
    })
}

async fn list_dynos(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>> {
    let record = core.store.app(&app).await?;
    let hosts: HashMap<String, String> = core
        .store
        .hosts()
        .await?
        .into_iter()
        .map(|h| (h.id, h.address))
        .collect();
    let mut dynos = core.store.dynos(Some(&app)).await?;
    dynos.sort_by_key(|d| {
        (
            d.process_type.clone(),
            dyno_index(&d.name).unwrap_or(0),
            d.created_at,
        )
    });
    let mut out: Vec<Value> = dynos.iter().map(|d| dyno_json(d, &hosts)).collect();
    if record.sleeping {
        // A sleeping app's eco dynos are not running; Heroku lists them as `idle`.
        for f in core.store.formation(&app).await? {
            if !sleeps(&f.size) {
                continue;
            }
            for i in 1..=f.quantity {
                let name = format!("{}.{i}", f.process_type);
                if dynos.iter().any(|d| d.name == name) {
                    continue;
                }
                out.push(json!({
                    "name": name,
                    "type": f.process_type,
                    "state": "idle",
                    "size": f.size,
                    "updated_at": rfc3339(record.updated_at),
                }));
            }
        }
    }
    Ok(axum::Json(out))
}

/// Stops the given dynos; the reconciler starts their replacements (a restart).
async fn stop_ids(core: &Arc<Core>, ids: Vec<String>, why: &str) -> Result<StatusCode> {
    core.stop_dynos(&ids, why).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn restart_all(State(core): State<Arc<Core>>, Path(app): Path<String>) -> Result<StatusCode> {
    core.store.app(&app).await?;
    let ids = core
        .store
        .dynos(Some(&app))
        .await?
        .into_iter()
        // Heroku: `ps:restart` leaves one-off dynos alone.
        .filter(|d| d.desired == Desired::Running && !d.is_one_off())
        .map(|d| d.id)
        .collect();
    stop_ids(&core, ids, "Restarting").await
}

/// The running dynos `target` names: one (`web.1`) or a whole type (`web`).
async fn matching(core: &Core, app: &str, target: &str) -> Result<Vec<String>> {
    core.store.app(app).await?;
    let dynos: Vec<Dyno> = core
        .store
        .dynos(Some(app))
        .await?
        .into_iter()
        .filter(|d| d.desired == Desired::Running)
        .filter(|d| {
            if target.contains('.') {
                d.name == target
            } else {
                d.process_type == target
            }
        })
        .collect();
    if dynos.is_empty() {
        return Err(ApiError::not_found(format!(
            "no dyno {target} in {app}: see `manifold ps -a {app}`"
        )));
    }
    Ok(dynos.into_iter().map(|d| d.id).collect())
}

async fn restart_dynos(
    State(core): State<Arc<Core>>,
    Path((app, target)): Path<(String, String)>,
) -> Result<StatusCode> {
    let ids = matching(&core, &app, &target).await?;
    stop_ids(&core, ids, "Restarting").await
}

async fn stop_dyno(
    State(core): State<Arc<Core>>,
    Path((app, target)): Path<(String, String)>,
) -> Result<StatusCode> {
    let ids = matching(&core, &app, &target).await?;
    stop_ids(&core, ids, "Stopping").await
}

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

async fn list_features(
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

async fn get_feature(
    State(core): State<Arc<Core>>,
    Path((app, name)): Path<(String, String)>,
) -> Result<axum::Json<Value>> {
    let app = core.store.app(&app).await?;
    let (n, d) = feature(&name)?;
    Ok(axum::Json(feature_json(&app, n, d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureBody {
    enabled: bool,
}

async fn patch_feature(
    State(core): State<Arc<Core>>,
    Path((app, name)): Path<(String, String)>,
    Json(body): Json<FeatureBody>,
) -> Result<axum::Json<Value>> {
    core.store.app(&app).await?;
    let (n, d) = feature(&name)?;
    let app = core.store.set_feature(&app, n, body.enabled).await?;
    core.poke();
    Ok(axum::Json(feature_json(&app, n, d)))
}

#[derive(Serialize)]
struct HostJson {
    id: String,
    address: String,
    state: &'static str,
    memory_bytes: u64,
    memory_used: u64,
    dyno_slots: u32,
    dynos: usize,
    stacks: Vec<String>,
    last_seen: String,
}

fn host_json(core: &Core, h: crate::model::Host, dynos: &[Dyno]) -> HostJson {
    let on: Vec<&Dyno> = dynos.iter().filter(|d| d.host_id == h.id).collect();
    HostJson {
        state: match core.liveness(&h.id) {
            Liveness::Lost => "lost",
            _ if h.draining => "draining",
            Liveness::Connected => "ready",
            Liveness::Missing => "missing",
        },
        memory_used: on.iter().map(|d| size_memory(&d.size)).sum(),
        dynos: on.len(),
        last_seen: rfc3339(h.last_seen),
        id: h.id,
        address: h.address,
        memory_bytes: h.memory_bytes,
        dyno_slots: h.dyno_slots,
        stacks: h.stacks,
    }
}

async fn list_hosts(State(core): State<Arc<Core>>) -> Result<axum::Json<Vec<HostJson>>> {
    let dynos = core.store.dynos(None).await?;
    let hosts = core.store.hosts().await?;
    Ok(axum::Json(
        hosts
            .into_iter()
            .map(|h| host_json(&core, h, &dynos))
            .collect(),
    ))
}

/// `drain` moves every dyno off the host (the reconciler replaces them elsewhere; a web
/// dyno's replacement is up before it stops) and places nothing new there; `undrain`
/// reverses it.
async fn drain_host(
    State(core): State<Arc<Core>>,
    Path((host, action)): Path<(String, String)>,
) -> Result<axum::Json<HostJson>> {
    let draining = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "no host action {other}: use drain or undrain"
            )))
        }
    };
    let h = core
        .store
        .set_draining(&host, draining)
        .await
        .map_err(|e| match e {
            StoreError::HostNotFound(_) => {
                ApiError::not_found(format!("host {host} not found: see `manifold hosts`"))
            }
            other => other.into(),
        })?;
    core.poke();
    let dynos = core.store.dynos(None).await?;
    Ok(axum::Json(host_json(&core, h, &dynos)))
}

async fn get_blob(State(core): State<Arc<Core>>, Path(sha): Path<String>) -> Result<Response> {
    let path = core
        .blobs
        .path(&sha)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found(format!("blob {sha} not found")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn put_blob(
    State(core): State<Arc<Core>>,
    Path(sha): Path<String>,
    body: Body,
) -> Result<StatusCode> {
    let stream = body
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    core.blobs
        .put(stream, core.settings.slug_limit, Some(&sha))
        .await
        .map_err(|e| match e {
            BlobError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            other => ApiError::bad_request(other.to_string()),
        })?;
    Ok(StatusCode::CREATED)
}
