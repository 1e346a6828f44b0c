//! Serving: the REST API and the AgentLink gRPC service on one listener (HTTP/1.1 for the
//! API, HTTP/2 for gRPC), the router on its own, plus the reconcile loop.

use std::sync::Arc;
use std::time::Duration;

use manifold_proto::agent_link_server::AgentLinkServer;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::core::Core;
use crate::hub::{check_token, Hub};
use crate::routing::CoreHooks;

/// How long open requests may finish after a shutdown was asked for. Agents' links never
/// finish on their own (they are meant to stay open), so the wait must be bounded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Serves until `shutdown` resolves; the router serves apps on `router` when given.
pub async fn run(
    core: Arc<Core>,
    listener: TcpListener,
    router: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_router, router_stopped) = tokio::sync::watch::channel(false);
    let routing = router.map(|listener| {
        let router = Arc::new(manifold_router::Router::new(
            core.routes.clone(),
            Arc::new(CoreHooks(core.clone())),
            core.settings.router.clone(),
        ));
        let _ = core.router.set(router.clone());
        let mut stopped = router_stopped.clone();
        tokio::spawn(router.serve(listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        }))
    });
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
        let _ = stop_router.send(true);
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
    if let Some(routing) = routing {
        routing.abort();
    }
    result
}
