//! One-off dynos: `manifold run` (attached or detached) and the release phase's dyno.
//!
//! A one-off is a dyno row like any other (so the planner counts its room and `ps` lists
//! it) whose process type is `run` or `release`: the reconciler never replaces, cycles or
//! moves it and forgets it once it ended (see [`crate::reconciler`]). It is placed at once
//! by [`Core::start_one_off`], so that `manifold run` hears "no room" as a 422 rather
//! than waiting. This module has the one-off's spec and record, and the HTTP handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use manifold_dyno::DynoSize;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::api::{check_config_key, dyno_json};
use crate::auth::same_secret;
use crate::core::Core;
use crate::http::{user, ApiError, Json};
use crate::model::{App, Attach, Dyno, Release};
use crate::planner::Rejection;
use crate::store::StoreError;

/// Most config vars `run -e` may add.
const MAX_ENV: usize = 64;
/// Longest command a one-off may run.
const MAX_COMMAND: usize = 32 * 1024;
/// The protocol name of the attach upgrade.
pub const ATTACH_PROTOCOL: &str = "manifold-attach";

/// What to run in a one-off dyno.
#[derive(Debug, Clone)]
pub(crate) struct OneOff {
    pub process_type: &'static str,
    pub command: String,
    /// `None`: the web formation's size (or the default).
    pub size: Option<String>,
    pub env: BTreeMap<String, String>,
    pub attach: Option<Attach>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OneOffError {
    #[error("no host can run a {size} dyno now: {rejection}")]
    NoRoom { size: String, rejection: Rejection },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<OneOffError> for ApiError {
    fn from(e: OneOffError) -> ApiError {
        match e {
            OneOffError::NoRoom { .. } => ApiError::invalid(e.to_string()),
            OneOffError::Store(e) => e.into(),
        }
    }
}

/// A one-off dyno of `release` placed on `host`: named as Heroku names them, `run.N` with
/// N random (so names do not hint at how many ran), unlike the app's other dynos (`dynos`).
pub(crate) fn new_dyno(
    app: &App,
    release: &Release,
    dynos: &[Dyno],
    spec: OneOff,
    size: String,
    host: String,
) -> Dyno {
    let taken: std::collections::HashSet<&str> = dynos
        .iter()
        .filter(|d| d.app_id == app.id)
        .map(|d| d.name.as_str())
        .collect();
    let name = loop {
        let name = format!(
            "{}.{}",
            spec.process_type,
            rand::Rng::gen_range(&mut rand::thread_rng(), 1000..10000)
        );
        if !taken.contains(name.as_str()) {
            break name;
        }
    };
    Dyno {
        env: spec.env,
        attach: spec.attach,
        ..Dyno::placed(
            app,
            name,
            release.version,
            size,
            spec.command,
            host,
            OffsetDateTime::now_utc(),
        )
    }
}

/// `POST /apps/{app}/dynos`: what `manifold run` sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunBody {
    command: String,
    #[serde(default)]
    attach: bool,
    #[serde(default)]
    tty: bool,
    cols: Option<u16>,
    rows: Option<u16>,
    size: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /apps/{app}/dynos`: starts a one-off dyno from the current release.
pub(crate) async fn create(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(body): Json<RunBody>,
) -> crate::http::Result<Response> {
    let command = body.command.trim().to_string();
    if command.is_empty() {
        return Err(ApiError::bad_request("command is empty: say what to run"));
    }
    if command.len() > MAX_COMMAND || command.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "command must be at most {MAX_COMMAND} bytes, without NUL"
        )));
    }
    if let Some(kind) = body.kind.as_deref().filter(|k| *k != manifold_dyno::RUN) {
        return Err(ApiError::invalid(format!(
            "type {kind:?} cannot be started as a one-off: only {:?}",
            manifold_dyno::RUN
        )));
    }
    if body.env.len() > MAX_ENV {
        return Err(ApiError::invalid(format!(
            "{} env vars given; at most {MAX_ENV}",
            body.env.len()
        )));
    }
    for key in body.env.keys() {
        check_config_key(key)?;
    }
    if let Some(size) = &body.size {
        size.parse::<DynoSize>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let (cols, rows) = (body.cols.unwrap_or(80), body.rows.unwrap_or(24));
    if cols == 0 || rows == 0 {
        return Err(ApiError::bad_request(
            "cols and rows must be at least 1 (a terminal's size)",
        ));
    }
    let app = core.store.app(&app).await?;
    let Some(release) = core.store.current_release(&app.name).await? else {
        return Err(ApiError::invalid(format!(
            "{} has no release yet: deploy it first (`manifold deploy -a {}`)",
            app.name, app.name
        )));
    };
    let slug = core.store.slug(release.slug_id).await?;
    let command = procfile_command(&command, &slug.process_types);
    let attach = body.attach.then(|| Attach {
        tty: body.tty,
        cols,
        rows,
        secret: uuid::Uuid::new_v4().simple().to_string(),
    });
    let dyno = core
        .start_one_off(
            &app,
            &release,
            &slug,
            OneOff {
                process_type: manifold_dyno::RUN,
                command: command.clone(),
                size: body.size.map(|s| s.to_ascii_lowercase()),
                env: body.env,
                attach,
            },
        )
        .await?;
    core.logs.log_api(
        &app.name,
        format!(
            "Starting process with command `{command}` by {}",
            user(&headers)
        ),
    );
    let address = core
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.id == dyno.host_id)
        .map(|h| (h.id, h.address))
        .collect();
    let mut json = dyno_json(&dyno, &address);
    json["attach_url"] = match &dyno.attach {
        Some(a) => format!(
            "/apps/{}/dynos/{}/attach?secret={}",
            app.name, dyno.name, a.secret
        )
        .into(),
        None => serde_json::Value::Null,
    };
    Ok((StatusCode::CREATED, axum::Json(json)).into_response())
}

/// Heroku's `heroku run worker --verbose`: a command whose first word names a process type
/// runs that type's Procfile command, with the rest of the words after it.
fn procfile_command(command: &str, process_types: &BTreeMap<String, String>) -> String {
    let (first, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    match process_types.get(first) {
        Some(procfile) if rest.trim().is_empty() => procfile.clone(),
        Some(procfile) => format!("{procfile} {}", rest.trim_start()),
        None => command.to_string(),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct AttachQuery {
    #[serde(default)]
    secret: String,
}

/// `GET /apps/{app}/dynos/{name}/attach`: upgrades the connection to the dyno's attach
/// session (see [`crate::attach`]).
pub(crate) async fn attach(
    State(core): State<Arc<Core>>,
    Path((app, name)): Path<(String, String)>,
    Query(query): Query<AttachQuery>,
    mut req: Request,
) -> crate::http::Result<Response> {
    let app = core.store.app(&app).await?;
    let dyno = core
        .store
        .dynos(Some(&app.name))
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no dyno {name} in {}: see `manifold ps -a {}`",
                app.name, app.name
            ))
        })?;
    let Some(attach) = &dyno.attach else {
        return Err(ApiError::bad_request(format!(
            "{name} is not an attached one-off dyno: nothing to attach to (see `manifold logs --ps {name}`)"
        )));
    };
    if !same_secret(&query.secret, &attach.secret) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("wrong attach secret for {name}: use the attach_url `manifold run` was given"),
        ));
    }
    let ended = dyno.state.is_ended();
    if ended && !core.sessions.has(&dyno.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{name} has ended: nothing to attach to"),
        ));
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(ATTACH_PROTOCOL));
    if !upgrade {
        return Err(ApiError::bad_request(format!(
            "attaching needs `Connection: Upgrade` and `Upgrade: {ATTACH_PROTOCOL}`"
        )));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = dyno.id.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => core.attach_event(
                &id,
                crate::attach::client_connected(hyper_util::rt::TokioIo::new(upgraded)),
            ),
            Err(err) => tracing::debug!("attach to {id}: upgrade failed: {err}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, ATTACH_PROTOCOL)
        .body(Body::empty())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_type_runs_its_procfile_command() {
        let types = BTreeMap::from([
            ("web".to_string(), "python app.py".to_string()),
            ("worker".to_string(), "python worker.py".to_string()),
        ]);
        assert_eq!(procfile_command("worker", &types), "python worker.py");
        assert_eq!(
            procfile_command("worker --once  -v", &types),
            "python worker.py --once  -v"
        );
        assert_eq!(procfile_command("bash", &types), "bash");
        assert_eq!(procfile_command("workers", &types), "workers");
        assert_eq!(procfile_command("echo worker", &types), "echo worker");
    }
}
