//! The scheduler's side of the log plex: what goes in (agents' batches, the API's
//! `app[api]` lines, the platform's `heroku[web.1]` lines) and the routes that read it
//! (`GET /apps/{app}/log-stream`) and manage drains (`/apps/{app}/log-drains`).
//!
//! The plex itself (ring, tails, drains) is `manifold-logplex`; this module only decides
//! what each line says and where it comes from.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Router;
use futures::StreamExt;
use manifold_logplex::{
    parse_drain_url, Drain, DrainUrlError, Filter, LogLine, LogPlex, PlexConfig, SetDrainsError,
    Source,
};
use manifold_proto::LogBatch;
use serde::Deserialize;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::cluster::Placed;
use crate::core::Core;
use crate::http::{rfc3339, ApiError, Json};
use crate::model::LogDrain;
use crate::store::{Store, StoreError};

/// Most lines `manifold logs -n` may ask for (the ring holds 1,500).
const MAX_LINES: usize = 1500;

/// Why a drain was not added or removed.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("invalid drain url {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: DrainUrlError,
    },
    /// The plex refused the app's new set of drains (nothing changed in it).
    #[error(transparent)]
    Plex(#[from] SetDrainsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DrainError> for ApiError {
    fn from(err: DrainError) -> ApiError {
        match err {
            DrainError::Store(e) => e.into(),
            other => ApiError::invalid(other.to_string()),
        }
    }
}

/// Lines a log plex follower may fall behind before it loses some.
const FIREHOSE_LINES: usize = 16_384;

/// The log plex feed: every app's log stream, and every line again for log plex processes
/// that follow the scheduler.
pub struct LogFeed {
    store: Arc<dyn Store>,
    /// Every app's log stream.
    plex: LogPlex,
    /// Every line, for log plex processes that follow the scheduler.
    firehose: tokio::sync::broadcast::Sender<Arc<(String, LogLine)>>,
}

impl std::fmt::Debug for LogFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFeed").finish_non_exhaustive()
    }
}

impl LogFeed {
    pub fn new(store: Arc<dyn Store>, config: PlexConfig) -> LogFeed {
        LogFeed {
            store,
            plex: LogPlex::new(config),
            firehose: tokio::sync::broadcast::Sender::new(FIREHOSE_LINES),
        }
    }

    /// The plex (its tails, drains and metrics).
    pub fn plex(&self) -> &LogPlex {
        &self.plex
    }

    /// Every line goes through here: into the plex, and to log plex processes that follow
    /// the scheduler (`GET /logplex/v1/firehose`).
    pub fn push_line(&self, app: &str, line: LogLine) {
        if self.firehose.receiver_count() > 0 {
            let _ = self
                .firehose
                .send(Arc::new((app.to_string(), line.clone())));
        }
        self.plex.push(app, line);
    }

    /// An `app[api]` line: what a user did to the app (Heroku's wording).
    pub fn log_api(&self, app: &str, message: impl Into<String>) {
        self.push_line(app, LogLine::now(Source::App, "api", message.into()));
    }

    /// What made a release, then `Release vN created by USER`.
    pub fn log_release(&self, app: &str, release: &crate::model::Release) {
        self.log_api(app, format!("{} by {}", release.description, release.user));
        self.log_api(
            app,
            format!("Release v{} created by {}", release.version, release.user),
        );
    }

    /// A `heroku[web.1]` line the scheduler writes: why it stops or starts a dyno
    /// (`Restarting`, `Cycling`, `Idling`, `Relocating dyno to a new server`).
    pub fn log_platform(&self, app: &str, process: &str, message: impl Into<String>) {
        self.push_line(app, LogLine::now(Source::Heroku, process, message.into()));
    }

    /// The lines an agent sent. Each must be of a dyno in `placed` (the dynos placed on the
    /// agent's host); its app and process name are the dyno's as stored (what the line
    /// claims is ignored), so an agent writes into the logs of its own host's dynos only.
    /// Lines of other dynos are refused, logged once per batch, and counted in the result.
    /// `tee` also gets each app line's dyno id and message (a release phase's output goes
    /// to its deploy too).
    pub(crate) fn ingest(
        &self,
        host: &str,
        batch: LogBatch,
        placed: &HashMap<String, Placed>,
        tee: impl Fn(&str, &str),
    ) -> usize {
        let mut refused: Vec<String> = Vec::new();
        let mut refused_lines = 0;
        for entry in batch.lines {
            let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.time_us) * 1000)
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            if entry.app.is_empty() && entry.dyno_id.is_empty() {
                // The agent's own notice that its queue overflowed: about no one app.
                tracing::warn!("host {host}: {}", entry.message);
                continue;
            }
            let Some(dyno) = placed.get(&entry.dyno_id) else {
                if refused.len() < 3 && !refused.contains(&entry.dyno_id) {
                    refused.push(entry.dyno_id.clone());
                }
                refused_lines += 1;
                continue;
            };
            let source = if entry.platform {
                Source::Heroku
            } else {
                tee(&entry.dyno_id, &entry.message);
                Source::App
            };
            self.push_line(
                &dyno.app,
                LogLine {
                    time,
                    source,
                    process: dyno.name.clone(),
                    message: entry.message,
                },
            );
        }
        if !refused.is_empty() {
            tracing::warn!("host {host}: refused log lines of dynos not placed on it: {refused:?}");
        }
        refused_lines
    }

    /// Gives the plex every app's drains (at start).
    pub async fn load_drains(&self) -> Result<(), StoreError> {
        let apps: HashMap<uuid::Uuid, String> = self
            .store
            .apps()
            .await?
            .into_iter()
            .map(|a| (a.id, a.name))
            .collect();
        let mut by_app: HashMap<String, Vec<Drain>> = HashMap::new();
        for d in self.store.drains(None).await? {
            if let Some(app) = apps.get(&d.app_id) {
                by_app.entry(app.clone()).or_default().push(plex_drain(&d));
            }
        }
        for (app, drains) in by_app {
            if let Err(err) = self.plex.set_drains(&app, drains) {
                tracing::warn!("drains of {app}: {err}");
            }
        }
        Ok(())
    }

    /// Adds a drain to an app (stored, then given to the plex).
    pub(crate) async fn add_drain(&self, app: &str, url: &str) -> Result<LogDrain, DrainError> {
        self.store.app(app).await?;
        parse_drain_url(url).map_err(|source| DrainError::Url {
            url: url.to_string(),
            source,
        })?;
        let token = format!("d.{}", uuid::Uuid::new_v4());
        let drain = self.store.add_drain(app, url, &token).await?;
        self.sync_drains(app).await?;
        Ok(drain)
    }

    /// Removes a drain (by id or URL) from an app and from the plex.
    pub(crate) async fn remove_drain(
        &self,
        app: &str,
        drain: &str,
    ) -> Result<LogDrain, DrainError> {
        let removed = self.store.remove_drain(app, drain).await?;
        self.sync_drains(app).await?;
        Ok(removed)
    }

    async fn sync_drains(&self, app: &str) -> Result<(), DrainError> {
        let drains = self.store.drains(Some(app)).await?;
        self.plex
            .set_drains(app, drains.iter().map(plex_drain).collect())?;
        Ok(())
    }

    /// The app is gone: so are its lines and drains.
    pub(crate) fn remove_app(&self, app: &str) {
        self.plex.remove_app(app);
    }
}

fn plex_drain(d: &LogDrain) -> Drain {
    Drain {
        id: d.id.to_string(),
        url: d.url.clone(),
        token: d.token.clone(),
    }
}

/// The log routes, merged into the API's.
pub fn routes() -> Router<Arc<Core>> {
    Router::new()
        .route("/apps/:app/log-stream", get(log_stream))
        .route("/logplex/v1/firehose", get(firehose))
        .route("/apps/:app/log-drains", get(list_drains).post(add_drain))
        .route("/apps/:app/log-drains/:drain", delete(remove_drain))
}

/// `manifold logs`' options, as Heroku's log sessions take them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    /// Lines of history first (default 100).
    lines: Option<usize>,
    /// Then keep streaming.
    #[serde(default)]
    tail: bool,
    /// `web` or `web.1` or `router`.
    dyno: Option<String>,
    /// `app` or `heroku`.
    source: Option<String>,
}

/// The app's last lines, then (with `tail=true`) every new one as it comes: plain text, one
/// rendered line per line, streamed until the client goes away or the app is destroyed.
async fn log_stream(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    core.store.app(&app).await?;
    stream_response(core.logs.plex(), &app, q)
}

/// `GET /apps/{app}/log-stream` from a plex (the scheduler's, or a follower's).
pub(crate) fn stream_response(
    plex: &LogPlex,
    app: &str,
    q: LogQuery,
) -> Result<Response, ApiError> {
    let lines = q.lines.unwrap_or(100);
    if lines > MAX_LINES {
        return Err(ApiError::invalid(format!(
            "lines must be at most {MAX_LINES} (the log keeps the last {MAX_LINES})"
        )));
    }
    let source =
        match q.source.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<Source>().map_err(|_| {
                ApiError::invalid(format!("unknown source {s:?}: use app or heroku"))
            })?),
        };
    let filter = Filter {
        process: q.dyno.filter(|d| !d.is_empty()),
        source,
    };
    let body = if q.tail {
        let (recent, tail) = plex.recent_and_tail(app, filter, lines);
        let history = futures::stream::iter(recent);
        Body::from_stream(
            history
                .chain(tail)
                .map(|line| Ok::<_, std::convert::Infallible>(format!("{}\n", line.render()))),
        )
    } else {
        let text: String = plex
            .recent(app, &filter, lines)
            .iter()
            .map(|l| format!("{}\n", l.render()))
            .collect();
        Body::from(text)
    };
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// One line of the firehose: the app and the line.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct FirehoseLine {
    pub app: String,
    pub line: LogLine,
}

/// Every app's lines from now on, as JSON lines, for log plex processes that follow the
/// scheduler. A follower too slow to keep up loses lines (counted in the scheduler's log).
async fn firehose(State(core): State<Arc<Core>>) -> Response {
    let lines = tokio_stream::wrappers::BroadcastStream::new(core.logs.firehose.subscribe());
    let body = lines.filter_map(|item| async move {
        match item {
            Ok(entry) => {
                let (app, line) = &*entry;
                let json = serde_json::to_string(&FirehoseLine {
                    app: app.clone(),
                    line: line.clone(),
                })
                .ok()?;
                Some(Ok::<_, std::convert::Infallible>(json + "\n"))
            }
            Err(err) => {
                tracing::warn!("a log plex follower fell behind: {err}");
                None
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

fn drain_json(d: &LogDrain) -> Value {
    json!({
        "id": d.id,
        "url": d.url,
        "token": d.token,
        "created_at": rfc3339(d.created_at),
    })
}

async fn list_drains(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
) -> Result<axum::Json<Vec<Value>>, ApiError> {
    let drains = core.store.drains(Some(&app)).await?;
    Ok(axum::Json(drains.iter().map(drain_json).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    url: String,
}

async fn add_drain(
    State(core): State<Arc<Core>>,
    Path(app): Path<String>,
    Json(body): Json<DrainBody>,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    let drain = core.logs.add_drain(&app, &body.url).await?;
    Ok((StatusCode::CREATED, axum::Json(drain_json(&drain))))
}

async fn remove_drain(
    State(core): State<Arc<Core>>,
    Path((app, drain)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let removed = core.logs.remove_drain(&app, &drain).await?;
    Ok(axum::Json(drain_json(&removed)))
}
