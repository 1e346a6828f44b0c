//! Serving: the REST API and the AgentLink gRPC service on one listener (HTTP/1.1 for the
//! API, HTTP/2 for gRPC), plus the reconcile loop.

use std::sync::Arc;
use std::time::Duration;

use manifold_proto::agent_link_server::AgentLinkServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::core::Core;
use crate::hub::{check_token, Hub};

/// How long open requests may finish after a shutdown was asked for. Agents' links never
/// finish on their own (they are meant to stay open), so the wait must be bounded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves until `shutdown` resolves.
pub async fn run(
    core: Arc<Core>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grpc = tonic::service::Routes::new(AgentLinkServer::with_interceptor(
        Hub::new(core.clone()),
        check_token(core.settings.agent_token.clone()),
    ))
    .into_axum_router();
    let app = crate::api::router(core.clone()).merge(grpc);
    let reconciler = tokio::spawn(core.reconcile_loop());
    let stopping = Arc::new(Notify::new());
    let signal = stopping.clone();
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        signal.notify_one();
    });
    let served = tokio::spawn(async move { served.await });
    let result = tokio::select! {
        r = served => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    reconciler.abort();
    result
}
