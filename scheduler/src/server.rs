//! Serving: the REST API and the AgentLink gRPC service on one listener (HTTP/1.1 for the
//! API, HTTP/2 for gRPC), plus the reconcile loop.

use std::sync::Arc;

use manifold_proto::agent_link_server::AgentLinkServer;
use tokio::net::TcpListener;

use crate::core::Core;
use crate::hub::{check_token, Hub};

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
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    reconciler.abort();
    served
}
