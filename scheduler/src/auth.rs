//! Who may call: the API token, the followers' token for their own routes, agents' tokens
//! with a certificate naming their host.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::core::Core;
use crate::http::ApiError;

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

/// Every route but `/health` needs a token: the API token for users (git remotes take it
/// as HTTP Basic's password), the agent token for `/agent/…`; the follower routes also take the follower token, which every other
/// route refuses (a router's host holds no admin secret).
pub(crate) async fn auth(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
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
    let git = crate::git::is_git_path(path);
    let basic = git
        .then(|| crate::git::basic_credentials(req.headers()))
        .flatten();
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        // git sends the token as HTTP Basic's password, as to Heroku (any user name).
        .or(basic.as_ref().map(|(_, password)| password.as_str()));
    if git && !given.is_some_and(|g| same_secret(g, expected)) {
        let why = if given.is_some() {
            "wrong token: the password is your API token (MANIFOLD_API_TOKEN); `manifold git:remote -a APP` sets git up to send it"
        } else {
            "authentication required: the password is your API token; `manifold git:remote -a APP` sets git up to send it"
        };
        return crate::git::refusal(StatusCode::UNAUTHORIZED, why);
    }
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
