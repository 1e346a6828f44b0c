//! The router as its own process, following the scheduler (`manifold-scheduler router`).
//!
//! By default the router runs inside the scheduler and reads the core's route table
//! directly. Run on other machines (in front of a cluster, or several of them behind a load
//! balancer), a router follows the scheduler over its REST API with the follower token
//! (`STATE_DIR/follower-token`: it opens these routes and no other):
//!
//! - `GET /router/v1/routes?after=V` long-polls the table: it answers at once when the
//!   table's version is not `V`, else when it changes (or after [`LONG_POLL`] with the same
//!   version), so a router sees a dyno come up within one round trip;
//! - `POST /router/v1/events` carries what the router's [`Hooks`] saw: apps that got
//!   requests (sleep-on-idle), apps to wake, and `heroku[router]` lines for the log plex.
//!
//! What it cannot do from afar: a stopping dyno is drained only of the requests of the
//! scheduler's own router (the scheduler does not wait on remote routers' in-flight counts).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router as Routes;
use manifold_router::{AppRoute, Backend, Hooks, RouteTable, Router, RouterConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::core::Core;
use crate::http::{ApiError, Json};
use crate::sync::lock;

/// Longest wait of one `GET /router/v1/routes` when nothing changes.
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// How often a following router sends what its hooks collected.
const EVENTS_EVERY: Duration = Duration::from_millis(250);

/// One app's route on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWire {
    /// `serving`, `booting`, `sleeping`, `crashed` or `no_web_dynos`.
    pub state: String,
    #[serde(default)]
    pub backends: Vec<BackendWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendWire {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
}

/// `GET /router/v1/routes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoutesReply {
    pub version: u64,
    pub routes: BTreeMap<String, RouteWire>,
}

/// `POST /router/v1/events`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterEvents {
    /// Apps that got at least one request.
    #[serde(default)]
    pub traffic: BTreeSet<String>,
    /// Sleeping apps a request is waiting for.
    #[serde(default)]
    pub wake: BTreeSet<String>,
    /// `(app, line)`: `heroku[router]` lines.
    #[serde(default)]
    pub lines: Vec<(String, String)>,
}

pub fn to_wire(route: &AppRoute) -> RouteWire {
    let (state, backends) = match route {
        AppRoute::Serving(b) => ("serving", b.as_slice()),
        AppRoute::Booting => ("booting", &[][..]),
        AppRoute::Sleeping => ("sleeping", &[][..]),
        AppRoute::Crashed => ("crashed", &[][..]),
        AppRoute::NoWebDynos => ("no_web_dynos", &[][..]),
    };
    RouteWire {
        state: state.to_string(),
        backends: backends
            .iter()
            .map(|b| BackendWire {
                id: b.id.clone(),
                name: b.name.clone(),
                addr: b.addr,
            })
            .collect(),
    }
}

/// The route a wire entry names; an unknown state holds requests (`booting`), which is
/// safe for a router older than its scheduler.
pub fn from_wire(wire: &RouteWire) -> AppRoute {
    match wire.state.as_str() {
        "serving" => AppRoute::Serving(
            wire.backends
                .iter()
                .map(|b| Backend {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    addr: b.addr,
                })
                .collect(),
        ),
        "sleeping" => AppRoute::Sleeping,
        "crashed" => AppRoute::Crashed,
        "no_web_dynos" => AppRoute::NoWebDynos,
        _ => AppRoute::Booting,
    }
}

/// The routes a following router uses, merged into the API's.
pub fn routes() -> Routes<Arc<Core>> {
    Routes::new()
        .route("/router/v1/routes", get(get_routes))
        .route("/router/v1/events", post(post_events))
}

#[derive(Debug, Deserialize)]
struct After {
    after: Option<u64>,
}

async fn get_routes(
    State(core): State<Arc<Core>>,
    Query(q): Query<After>,
) -> Result<axum::Json<RoutesReply>, ApiError> {
    let mut changes = core.routing.changes();
    if let Some(after) = q.after {
        if *changes.borrow_and_update() == after {
            let _ = tokio::time::timeout(LONG_POLL, changes.changed()).await;
        }
    }
    let (version, table) = core.routing.published();
    Ok(axum::Json(RoutesReply {
        version,
        routes: table
            .iter()
            .map(|(app, route)| (app.clone(), to_wire(route)))
            .collect(),
    }))
}

async fn post_events(
    State(core): State<Arc<Core>>,
    Json(events): Json<RouterEvents>,
) -> Result<axum::http::StatusCode, ApiError> {
    for app in &events.traffic {
        core.routing.traffic(app);
    }
    for app in &events.wake {
        core.routing.wake(app);
    }
    for (app, line) in events.lines {
        core.logs.log_platform(&app, "router", line);
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// An error with its causes (a TLS failure is a few sources below reqwest's message).
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a following router listens and whom it follows.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// `http(s)://host:port` of the scheduler's API.
    pub scheduler: String,
    pub token: String,
    pub router: RouterConfig,
    /// The HTTP client for the scheduler (with the roots an https:// scheduler is checked
    /// against: [`crate::tls::follower_client`]).
    pub client: reqwest::Client,
}

/// What the hooks collected since the last `POST /router/v1/events`.
#[derive(Debug, Default)]
struct Pending {
    events: Mutex<RouterEvents>,
    /// A wake is sent at once rather than at the next tick.
    urgent: Notify,
}

#[derive(Debug)]
struct RemoteHooks(Arc<Pending>);

impl Hooks for RemoteHooks {
    fn request(&self, app: &str) {
        let mut e = lock(&self.0.events);
        if !e.traffic.contains(app) {
            e.traffic.insert(app.to_string());
        }
    }

    fn wake(&self, app: &str) {
        lock(&self.0.events).wake.insert(app.to_string());
        self.0.urgent.notify_one();
    }

    fn log(&self, app: &str, line: String) {
        let mut e = lock(&self.0.events);
        // Bounded: a scheduler that is away costs lines, not memory.
        if e.lines.len() < 10_000 {
            e.lines.push((app.to_string(), line));
        }
    }
}

/// Runs a router that follows the scheduler until `shutdown` resolves.
pub async fn run(
    config: FollowConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let table = RouteTable::new();
    let pending = Arc::new(Pending::default());
    let router = Arc::new(Router::new(
        table.clone(),
        Arc::new(RemoteHooks(pending.clone())),
        config.router.clone(),
    ));
    let client = config.client.clone();
    let follow = tokio::spawn(follow_routes(client.clone(), config.clone(), table));
    let send = tokio::spawn(send_events(client, config, pending));
    let served = router.serve(listener, shutdown).await;
    follow.abort();
    send.abort();
    served
}

/// Keeps `table` equal to the scheduler's, long-polling for changes; on errors retries
/// with the table as it was (routing goes on while the scheduler is away).
async fn follow_routes(client: reqwest::Client, config: FollowConfig, table: RouteTable) {
    let mut version: Option<u64> = None;
    loop {
        let mut url = format!("{}/router/v1/routes", config.scheduler);
        if let Some(v) = version {
            url.push_str(&format!("?after={v}"));
        }
        let reply = client
            .get(&url)
            .bearer_auth(&config.token)
            .timeout(LONG_POLL + Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match reply {
            Ok(r) => match r.json::<RoutesReply>().await {
                Ok(routes) => {
                    if version != Some(routes.version) {
                        let table_now: HashMap<String, AppRoute> = routes
                            .routes
                            .iter()
                            .map(|(app, wire)| (app.clone(), from_wire(wire)))
                            .collect();
                        table.replace_all(table_now);
                        version = Some(routes.version);
                    }
                }
                Err(err) => {
                    tracing::warn!("routes from {}: {err}", config.scheduler);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Err(err) => {
                tracing::warn!(
                    "cannot get routes from {}: {}",
                    config.scheduler,
                    chain(&err)
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Sends the hooks' events every [`EVENTS_EVERY`] (a wake at once); what cannot be sent is
/// dropped, except wakes, which are retried.
async fn send_events(client: reqwest::Client, config: FollowConfig, pending: Arc<Pending>) {
    let url = format!("{}/router/v1/events", config.scheduler);
    loop {
        tokio::select! {
            () = pending.urgent.notified() => {}
            () = tokio::time::sleep(EVENTS_EVERY) => {}
        }
        let events = std::mem::take(&mut *lock(&pending.events));
        if events.traffic.is_empty() && events.wake.is_empty() && events.lines.is_empty() {
            continue;
        }
        let sent = client
            .post(&url)
            .bearer_auth(&config.token)
            .json(&events)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status());
        if let Err(err) = sent {
            tracing::warn!(
                "cannot send router events to {}: {}",
                config.scheduler,
                chain(&err)
            );
            lock(&pending.events).wake.extend(events.wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_survive_the_wire() {
        let serving = AppRoute::Serving(vec![Backend {
            id: "a-web-1".into(),
            name: "web.1".into(),
            addr: "10.0.0.1:30000".parse().expect("addr"),
        }]);
        for route in [
            serving,
            AppRoute::Booting,
            AppRoute::Sleeping,
            AppRoute::Crashed,
            AppRoute::NoWebDynos,
        ] {
            let json = serde_json::to_string(&to_wire(&route)).expect("json");
            let back: RouteWire = serde_json::from_str(&json).expect("parse");
            assert_eq!(from_wire(&back), route);
        }
        let unknown = RouteWire {
            state: "martian".into(),
            backends: vec![],
        };
        assert_eq!(from_wire(&unknown), AppRoute::Booting);
    }
}

/// A log plex process following the scheduler (`manifold-scheduler logplex`): it takes
/// every line from `GET /logplex/v1/firehose` into its own plex and serves `GET
/// /apps/{app}/log-stream` (the same API as the scheduler's, same token), so that many
/// `logs --tail` readers cost the scheduler one stream. Drains stay with the scheduler.
pub async fn run_logplex(
    scheduler: String,
    token: String,
    client: reqwest::Client,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let plex = manifold_logplex::LogPlex::new(manifold_logplex::PlexConfig::default());
    let feed = tokio::spawn(follow_firehose(
        client.clone(),
        scheduler.clone(),
        token,
        plex.clone(),
    ));
    let state = Arc::new(Follower {
        plex,
        client,
        scheduler,
    });
    let app = Routes::new()
        .route("/apps/:app/log-stream", get(follower_log_stream))
        .route("/health", get(|| async { "ok" }))
        .with_state(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    feed.abort();
    served
}

#[derive(Debug)]
struct Follower {
    plex: manifold_logplex::LogPlex,
    client: reqwest::Client,
    scheduler: String,
}

/// Checks the reader's token and the app against the scheduler (which has both), then
/// serves the lines from this process's plex.
async fn follower_log_stream(
    State(f): State<Arc<Follower>>,
    axum::extract::Path(app): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<crate::logs::LogQuery>,
) -> Result<axum::response::Response, ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // The scheduler checks the reader's token and the app at once: this process holds only
    // the follower token, which reads the firehose and cannot tell a user's token from
    // another.
    let known = f
        .client
        .get(format!("{}/apps/{app}", f.scheduler))
        .bearer_auth(given)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("cannot reach the scheduler {}: {e}", f.scheduler),
            )
        })?;
    match known.status() {
        reqwest::StatusCode::NOT_FOUND => {
            return Err(ApiError::not_found(format!("app {app} not found")));
        }
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong token: send the scheduler's API token",
            ));
        }
        status if !status.is_success() => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("the scheduler {} answered {status}", f.scheduler),
            ));
        }
        _ => {}
    }
    crate::logs::stream_response(&f.plex, &app, q)
}

/// Feeds the plex from the scheduler's firehose, reconnecting while the process runs.
async fn follow_firehose(
    client: reqwest::Client,
    scheduler: String,
    token: String,
    plex: manifold_logplex::LogPlex,
) {
    use futures::StreamExt;
    loop {
        let response = client
            .get(format!("{scheduler}/logplex/v1/firehose"))
            .bearer_auth(&token)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match response {
            Ok(r) => {
                let mut body = r.bytes_stream();
                let mut partial: Vec<u8> = Vec::new();
                while let Some(Ok(chunk)) = body.next().await {
                    partial.extend_from_slice(&chunk);
                    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=nl).collect();
                        match serde_json::from_slice::<crate::logs::FirehoseLine>(&line) {
                            Ok(l) => plex.push(&l.app, l.line),
                            Err(err) => tracing::warn!("bad firehose line: {err}"),
                        }
                    }
                }
                tracing::warn!("the firehose of {scheduler} ended; reconnecting");
            }
            Err(err) => tracing::warn!("cannot follow {scheduler}'s firehose: {}", chain(&err)),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
