//! The scheduler's side: the routes a following router calls, merged into the API's (the
//! follower token opens them and no other).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Router as Routes;
use serde::Deserialize;

use crate::core::Core;
use crate::http::{ApiError, Json};

use super::*;

/// Longest wait of one `GET /router/v1/routes` when nothing changes.
pub const LONG_POLL: Duration = Duration::from_secs(25);

/// The routes a following router uses, merged into the API's.
pub fn routes() -> Routes<Arc<Core>> {
    Routes::new()
        .route("/router/v1/routes", get(get_routes))
        .route("/router/v1/events", post(post_events))
}

#[derive(Debug, Deserialize)]
struct After {
    /// The version the router routes by.
    after: Option<u64>,
    /// The router's own id (random, per process), so that the scheduler knows what each
    /// follower has (see `Routing::followers_caught_up`).
    router: Option<String>,
}

/// The longest router id kept (a follower holds the follower token, but an id is still
/// input).
const ROUTER_ID_MAX: usize = 64;

async fn get_routes(
    State(core): State<Arc<Core>>,
    Query(q): Query<After>,
) -> Result<axum::Json<RoutesReply>, ApiError> {
    if let (Some(id), Some(after)) = (&q.router, q.after) {
        if id.len() > ROUTER_ID_MAX {
            return Err(ApiError::invalid(format!(
                "router: an id of at most {ROUTER_ID_MAX} bytes, not {}",
                id.len()
            )));
        }
        core.routing.follower_at(id, after);
    }
    let mut changes = core.routing.changes();
    let mut role = core.leadership.subscribe();
    if let Some(after) = q.after {
        if *changes.borrow_and_update() == after {
            // A poll ends early when this replica stops leading: the router asks again and
            // is sent to the new leader, rather than waiting out the poll on a deposed one.
            tokio::select! {
                _ = tokio::time::timeout(LONG_POLL, changes.changed()) => {}
                _ = role.changed() => {}
            }
        }
    }
    if core.leadership.holds().is_none() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            manifold_endpoints::NOT_LEADER,
            "this scheduler stopped leading during the poll: ask the leader",
        ));
    }
    let published = core.routing.published();
    Ok(axum::Json(RoutesReply {
        version: published.version,
        routes: published
            .routes
            .iter()
            .map(|(app, route)| (app.clone(), to_wire(route)))
            .collect(),
        edge: edge_to_wire(&published.edge),
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
