//! A log plex in its own process (`manifold-scheduler logplex`), fed by the scheduler's
//! firehose.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router as Routes;
use manifold_endpoints::Endpoints;

use crate::http::ApiError;

use super::*;

/// A log plex process following the scheduler (`manifold-scheduler logplex`): it takes
/// every line from `GET /logplex/v1/firehose` into its own plex and serves `GET
/// /apps/{app}/log-stream` (the same API as the scheduler's, same token), so that many
/// `logs --tail` readers cost the scheduler one stream. Drains stay with the scheduler.
/// The firehose is the leader's: it follows the leader among the `scheduler` replicas.
pub async fn run_logplex(
    scheduler: Endpoints,
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
    scheduler: Endpoints,
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
    // another. Any replica answers (a read): the one the firehose last came from.
    let scheduler = f.scheduler.leader();
    let known = f
        .client
        .get(format!("{scheduler}/apps/{app}"))
        .bearer_auth(given)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("cannot reach the scheduler {scheduler}: {e}"),
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
                format!("the scheduler {scheduler} answered {status}"),
            ));
        }
        _ => {}
    }
    crate::logs::stream_response(&f.plex, &app, q)
}

/// Feeds the plex from the leader's firehose, reconnecting (to the next replica when it
/// ends) while the process runs. The firehose has no cursor: a new leader's starts with
/// the lines it gets from then on.
async fn follow_firehose(
    client: reqwest::Client,
    scheduler: Endpoints,
    token: String,
    plex: manifold_logplex::LogPlex,
) {
    use futures::StreamExt;
    let mut endpoints = scheduler.fresh();
    loop {
        let response = leader::call(&mut endpoints, "cannot follow the firehose", |url| {
            client
                .get(format!("{url}/logplex/v1/firehose"))
                .bearer_auth(&token)
        })
        .await;
        if let Some((scheduler, r)) = response {
            {
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
            tokio::time::sleep(endpoints.dropped()).await;
        }
    }
}
