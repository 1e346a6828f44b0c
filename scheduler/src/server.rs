//! Serving: the REST API and the AgentLink gRPC service on one listener (HTTP/1.1 for the
//! API, HTTP/2 for gRPC; plain TCP, or TLS with [`ServerTls`]), the router on its own, plus
//! the reconcile loop.
//!
//! ```text
//! accept (≤ max connections) ─▶ task per connection: [TLS handshake, ≤ 10 s] ─▶ hyper (HTTP/1.1 with upgrades
//!           for attach, HTTP/2 for gRPC) ─▶ every request gets the connection's `Peer`
//!           ─▶ axum Router: REST routes + AgentLink (tonic)
//! ```
//!
//! Stopping: no new connections, open ones are told to finish (HTTP/1.1 closes after the
//! current response, HTTP/2 sends GOAWAY), and the wait is bounded by [`SHUTDOWN_GRACE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use manifold_proto::agent_link_server::AgentLinkServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::core::Core;
use crate::hub::{admit_link, Hub};
use crate::routing::RoutingHooks;
use crate::tls::{ClientCert, Peer, ServerTls};

/// How long open requests may finish after a shutdown was asked for. Agents' links never
/// finish on their own (they are meant to stay open), so the wait must be bounded.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a client has for the TLS handshake (and to send its first byte).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// HTTP/2 connections (agents' links) are pinged this often when quiet, and closed when a
/// ping goes unanswered as long: a peer that vanished does not hold a connection slot.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// What the API + AgentLink listener allows a client, so that clients which open
/// connections and send nothing (or a byte at a time) cannot hold the scheduler's sockets
/// and memory.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// How long a connection may wait for its next request head to be complete: a client
    /// sending its headers slowly (slowloris), a connection that sends nothing, and an idle
    /// keep-alive connection are each closed after this long. Also bounds the time to a
    /// new connection's first request (HTTP/2 included). Responses that stream (logs,
    /// build output, `run`) and agents' links are not cut by it.
    pub header_timeout: Duration,
    /// Most connections served at once; past it, new connections wait to be accepted
    /// until one closes (agents hold one or two each).
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// Where the scheduler's own router serves apps: HTTP, HTTPS, each optional.
#[derive(Debug, Default)]
pub struct RouterListeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

/// Serves plain HTTP until `shutdown` resolves; the router serves apps on `router`.
pub async fn run(
    core: Arc<Core>,
    listener: TcpListener,
    router: RouterListeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve(core, listener, None, router, shutdown).await
}

/// Serves until `shutdown` resolves, over TLS when `tls` is given; the router serves apps
/// on `router`'s listeners (HTTP, and HTTPS with the certificates of [`crate::edge`]).
pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    router: RouterListeners,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_router, router_stopped) = tokio::sync::watch::channel(false);
    let until = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    // Everything started here ends with `serve`, also when its caller drops it.
    let mut tasks = Tasks::default();
    if router.http.is_some() || router.https.is_some() {
        let served = Arc::new(manifold_router::Router::new(
            core.routing.table().clone(),
            Arc::new(RoutingHooks(core.routing.clone())),
            core.settings.router.clone(),
        ));
        core.routing.set_router(served.clone());
        if let Some(http) = router.http {
            tasks.spawn(served.clone().serve(http, until(router_stopped.clone())));
        }
        if let Some(https) = router.https {
            tasks.spawn(served.serve_tls(https, until(router_stopped.clone())));
        }
    }
    let grpc = tonic::service::Routes::new(AgentLinkServer::with_interceptor(
        Hub::new(core.clone()),
        admit_link(core.settings.agent_token.clone(), core.leadership.clone()),
    ))
    .into_axum_router();
    let app = crate::api::router(core.clone()).merge(grpc);
    let limits = core.settings.api.clone();
    tasks.spawn(lead_while_elected(core.clone()));
    let stopping = Arc::new(Notify::new());
    let signal = stopping.clone();
    let served = tasks.spawn(accept_loop(listener, tls, app, limits, async move {
        shutdown.await;
        let _ = stop_router.send(true);
        signal.notify_one();
    }));
    let result = tokio::select! {
        r = served => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        () = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    result
}

/// Tasks aborted when this is dropped (a plain `spawn`ed task outlives whoever started it).
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn spawn<T: Send + 'static>(
        &mut self,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        let handle = tokio::spawn(task);
        self.0.push(handle.abort_handle());
        handle
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The leader's duties, run while this replica leads and stopped when it no longer does:
/// the reconcile loop, the router's domains and certificates (which may store the default
/// certificate), automated certificates, destroying review apps whose time is up. When a term ends every agent's link is closed so
/// that each finds the new leader.
async fn lead_while_elected(core: Arc<Core>) {
    let mut role = core.leadership.subscribe();
    loop {
        let Some(term) = role.borrow_and_update().term() else {
            if role.changed().await.is_err() {
                return;
            }
            continue;
        };
        core.cluster.lead_from_now();
        // A set, so that the duties end with this task too (when the server stops and
        // aborts it): a task a plain `spawn` started would outlive it.
        let mut duties = tokio::task::JoinSet::new();
        let edge = core.clone();
        duties.spawn(async move {
            if let Err(err) = crate::edge::refresh(&edge).await {
                tracing::error!("the router's domains and certificates: {err}");
            }
            crate::edge::refresh_forever(edge).await;
        });
        duties.spawn(core.clone().reconcile_loop());
        duties.spawn(crate::review_apps::expire_forever(core.clone()));
        if let Some(config) = core.settings.acme.clone() {
            duties.spawn(crate::edge::acm::run(
                core.clone(),
                config,
                std::future::pending(),
            ));
        }
        let ended = role.wait_for(|r| r.term() != Some(term)).await.is_err();
        duties.abort_all();
        core.cluster.unlink_all();
        if ended {
            return;
        }
    }
}

/// Accepts connections until `shutdown` resolves, then waits for the open ones to finish.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    app: axum::Router,
    limits: ListenerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // `stop` turns true at shutdown; each connection task holds an `open` receiver, so
    // `open.closed()` resolves once the last one ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, open_rx) = watch::channel(());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    "{} connections open (--api-max-connections): new ones wait until one closes",
                    limits.max_connections
                );
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // E.g. out of file descriptors: wait for some to be closed.
                    tracing::error!("accept: {err}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let conn = Connection {
            addr,
            app: app.clone(),
            tls: tls.clone(),
            stop: stop_rx.clone(),
            header_timeout: limits.header_timeout,
            _open: open_rx.clone(),
            _slot: slot,
        };
        tokio::spawn(conn.serve(stream));
    }
    let _ = stop_tx.send(true);
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
    Ok(())
}

fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection.
struct Connection {
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<ServerTls>>,
    stop: watch::Receiver<bool>,
    header_timeout: Duration,
    /// Held while the connection is open (see [`accept_loop`]).
    _open: watch::Receiver<()>,
    /// Its place among the [`ListenerLimits::max_connections`].
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let addr = self.addr;
        let Some(tls) = self.tls.clone() else {
            let peer = Peer {
                addr,
                tls: false,
                cert: ClientCert::None,
            };
            let app = self.app.clone();
            return self.http(TokioIo::new(stream), app, peer).await;
        };
        let mut first = [0u8; 1];
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
            Ok(Ok(1)) => {
                // Plain HTTP on the TLS port: answer in HTTP what to do rather than reset.
                tracing::info!(
                    "refused a plain-HTTP connection from {addr}: this listener speaks TLS"
                );
                let peer = Peer {
                    addr,
                    tls: false,
                    cert: ClientCert::None,
                };
                return self
                    .http(TokioIo::new(stream), refuse_plain_http(), peer)
                    .await;
            }
            _ => return,
        }
        let stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::info!("TLS handshake with {addr} failed: {err}");
                    return;
                }
                Err(_) => {
                    tracing::info!("TLS handshake with {addr} timed out");
                    return;
                }
            };
        let cert = tls.client_cert(stream.get_ref().1);
        if let ClientCert::Untrusted(why) = &cert {
            tracing::debug!("{addr} presented an untrusted client certificate: {why}");
        }
        let peer = Peer {
            addr,
            tls: true,
            cert,
        };
        let app = self.app.clone();
        self.http(TokioIo::new(stream), app, peer).await
    }

    /// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io` until the client closes, or until
    /// shutdown asks it to finish.
    async fn http<I>(mut self, io: I, app: axum::Router, peer: Peer)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let requested = Arc::new(AtomicBool::new(false));
        let service = PeerService {
            app,
            peer: Arc::new(peer),
            requested: requested.clone(),
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Runs from when the connection waits for a request until its head is read:
            // slow headers and idle keep-alive connections both end after it.
            .header_read_timeout(self.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(H2_KEEPALIVE);
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // Until the first request, nothing above bounds the wait (telling HTTP/1.1 from
        // HTTP/2 reads the first bytes without a timer; an HTTP/2 preface may stall).
        let first = tokio::time::sleep(self.header_timeout);
        tokio::pin!(first);
        let mut waiting_first = true;
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!("connection from {}: {err}", self.addr);
                    }
                    return;
                }
                () = &mut first, if waiting_first => {
                    waiting_first = false;
                    if !requested.load(Ordering::Relaxed) {
                        tracing::debug!(
                            "closed the connection from {}: no request within {:?}",
                            self.addr,
                            self.header_timeout
                        );
                        return;
                    }
                }
                changed = self.stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The router, called with the connection's [`Peer`] in each request's extensions (tonic
/// hands them on to the AgentLink service).
#[derive(Clone)]
struct PeerService {
    app: axum::Router,
    peer: Arc<Peer>,
    /// Set by the connection's first request.
    requested: Arc<AtomicBool>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PeerService {
    type Response = Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        self.requested.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(self.peer.as_ref().clone());
        let mut app = self.app.clone();
        tower_service::Service::call(&mut app, req)
    }
}

/// What a plain-HTTP client of the TLS listener is told: gRPC (agents) gets an
/// `UNAUTHENTICATED` status, anything else a 400 in the API's error format.
fn refuse_plain_http() -> axum::Router {
    axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let grpc = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if grpc {
            let message = "the scheduler serves TLS on this port: use an https:// scheduler URL (--scheduler)";
            (
                [
                    (axum::http::header::CONTENT_TYPE, "application/grpc"),
                    (
                        axum::http::HeaderName::from_static("grpc-status"),
                        "16",
                    ),
                    (axum::http::HeaderName::from_static("grpc-message"), message),
                ],
                "",
            )
                .into_response()
        } else {
            crate::http::ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "tls_required",
                "the scheduler serves HTTPS on this port: use https:// (set MANIFOLD_API)",
            )
            .into_response()
        }
    })
}
