//! The router as a server: `serve(listener, shutdown)` accepts client connections and runs
//! each as an HTTP/1.1 connection whose requests go through `proxy.rs`; `serve_tls` does
//! the same over TLS, where the client may speak HTTP/2 (ALPN `h2`) or HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::RouterBody;
use crate::certs::server_config;
use crate::config::RouterConfig;
use crate::io::{ClientIo, ConnCtx, Scheme};
use crate::metrics::Metrics;
use crate::pool;
use crate::table::RouteTable;

/// What the router tells the rest of the platform; called on request paths, so each must
/// return quickly (record, signal, or hand off to a task).
pub trait Hooks: Send + Sync + 'static {
    /// A request for `app` arrived: the signal that keeps an eco app awake.
    fn request(&self, app: &str);
    /// `app` is sleeping and a request is held for it: start it. Called once per held
    /// request, so it must be idempotent.
    fn wake(&self, app: &str);
    /// One `heroku[router]` line for `app`, without source prefix or timestamp.
    fn log(&self, app: &str, line: String);
}

/// The HTTP router. Build it once, wrap it in an `Arc`, and `serve` a listener.
pub struct Router {
    pub(crate) table: RouteTable,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) config: RouterConfig,
    pub(crate) metrics: Metrics,
}

impl Router {
    pub fn new(table: RouteTable, hooks: Arc<dyn Hooks>, config: RouterConfig) -> Router {
        Router {
            table,
            hooks,
            config,
            metrics: Metrics::default(),
        }
    }

    /// Serves plain HTTP client connections from `listener` until `shutdown` completes;
    /// then stops accepting, lets requests in flight finish for up to `shutdown_grace`, and
    /// returns.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve_on(listener, Transport::Plain, shutdown).await
    }

    /// Serves HTTPS like [`Router::serve`] serves HTTP, with the certificates of the route
    /// table ([`RouteTable::set_certs`]) chosen by SNI; a name without a certificate is
    /// refused in the handshake.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let config = server_config(self.table.certs()).map_err(io::Error::other)?;
        self.serve_on(
            listener,
            Transport::Tls(TlsAcceptor::from(config)),
            shutdown,
        )
        .await
    }

    async fn serve_on(
        self: Arc<Self>,
        listener: TcpListener,
        transport: Transport,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let port = listener.local_addr()?.port();
        // Every connection holds a receiver: `send` asks them to finish, and `closed()`
        // resolves when the last one has.
        let (stop, stopped) = watch::channel(false);
        let mut workers = Workers::start(&self, port, &transport, &stopped)?;
        let _sweeper = AbortOnDrop(tokio::spawn(sweep_idle_connections(self.clone())));
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        tokio::pin!(shutdown);
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(
                        max = self.config.max_connections,
                        "router connection cap reached: new connections wait until one closes"
                    );
                    tokio::select! {
                        () = &mut shutdown => break,
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors or an aborted handshake: transient; do not spin.
                        tracing::warn!(%error, "router accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
            }
            match &mut workers {
                Some(workers) => workers.dispatch(stream, peer, slot),
                None => self.spawn_connection(
                    stream,
                    peer,
                    port,
                    transport.clone(),
                    stopped.clone(),
                    slot,
                ),
            }
        }
        drop(listener);
        drop(stopped);
        let _ = stop.send(true);
        let workers = workers.map(Workers::close_intake);
        if tokio::time::timeout(self.config.shutdown_grace, stop.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                grace = ?self.config.shutdown_grace,
                "router shut down with requests still in flight"
            );
        }
        if let Some(workers) = workers {
            workers.halt().await;
        }
        Ok(())
    }

    /// Serves one client connection on the current runtime until it closes, or finishes
    /// its request in flight once `stopped` changes.
    fn spawn_connection(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        port: u16,
        transport: Transport,
        mut stopped: watch::Receiver<bool>,
        slot: OwnedSemaphorePermit,
    ) {
        let idle = self.config.idle_timeout;
        let ctx = Arc::new(ConnCtx::new(peer, port, transport.scheme()));
        let io = ClientIo::new(stream, ctx.clone(), idle);
        let handler = self.clone();
        let service = service_fn(move |req| {
            let router = handler.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(router.handle(req, ctx).await) }
        });
        let router = self.clone();
        tokio::spawn(async move {
            // Its place among `max_connections`, given back when it ends.
            let _slot = slot;
            let result = match transport {
                Transport::Plain => {
                    let conn = router.http1(io, service);
                    until_stopped(conn, &mut stopped).await
                }
                Transport::Tls(acceptor) => {
                    // A client that never finishes its handshake holds a slot no longer
                    // than one that never sends its request's headers.
                    let tls = match tokio::time::timeout(idle, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let mut builder = http2::Builder::new(TokioExecutor::new());
                        builder
                            .timer(TokioTimer::new())
                            // Pings find clients gone without a word.
                            .keep_alive_interval(Some(idle))
                            .keep_alive_timeout(idle);
                        let conn = builder.serve_connection(TokioIo::new(tls), service);
                        until_stopped(conn, &mut stopped).await
                    } else {
                        let conn = router.http1(tls, service);
                        until_stopped(conn, &mut stopped).await
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "client connection ended");
            }
        });
    }

    /// An HTTP/1.1 connection (WebSockets included) over `io`.
    fn http1<I, S>(&self, io: I, service: S) -> http1::UpgradeableConnection<TokioIo<I>, S>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::HttpService<Incoming, ResBody = RouterBody>,
    {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Also closes keep-alive connections idle that long.
            .header_read_timeout(self.config.idle_timeout)
            // Head and body in one buffer, one write(2): cheaper than writev(2) of small
            // pieces.
            .writev(false);
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    }

    /// Metrics in Prometheus' text exposition format.
    pub fn metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Closes pooled connections idle past `pool_idle_timeout`, so a dyno that stops getting
/// traffic does not keep sockets open on both sides.
async fn sweep_idle_connections(router: Arc<Router>) {
    let max_age = router.config.pool_idle_timeout;
    let mut tick = tokio::time::interval(max_age.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        for backend in router.table.live_backends() {
            backend.pool.sweep(max_age);
        }
    }
}

/// Ends a background task when `serve` returns or is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client connection hyper serves, which can be asked to finish what is in flight.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = RouterBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = RouterBody>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, RouterBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Serves `conn` until it closes, or until `stopped` changes and it has finished the
/// requests in flight.
async fn until_stopped(
    conn: impl Graceful,
    stopped: &mut watch::Receiver<bool>,
) -> hyper::Result<()> {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// How a listener's clients speak to the router.
#[derive(Clone)]
enum Transport {
    Plain,
    Tls(TlsAcceptor),
}

impl Transport {
    fn scheme(&self) -> Scheme {
        match self {
            Transport::Plain => Scheme::Http,
            Transport::Tls(_) => Scheme::Https,
        }
    }
}

type Intake = mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr, OwnedSemaphorePermit)>;

/// Router threads, each a single-threaded runtime that owns its client connections and
/// the dyno connections they use (pooled per thread): a request then never wakes another
/// thread, which on a multi-threaded runtime costs more than the proxying itself.
struct Workers {
    intake: Vec<Intake>,
    next: usize,
    halt: watch::Sender<bool>,
    exited: Vec<oneshot::Receiver<()>>,
}

impl Workers {
    /// Starts `config.workers` threads; `None` when 0 (serve on the caller's runtime).
    fn start(
        router: &Arc<Router>,
        port: u16,
        transport: &Transport,
        stopped: &watch::Receiver<bool>,
    ) -> io::Result<Option<Workers>> {
        if router.config.workers == 0 {
            return Ok(None);
        }
        let (halt, halted) = watch::channel(false);
        let mut workers = Workers {
            intake: Vec::new(),
            next: 0,
            halt,
            exited: Vec::new(),
        };
        for index in 0..router.config.workers {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (intake, mut arrivals) = mpsc::unbounded_channel();
            let (exit, exited) = oneshot::channel();
            let router = router.clone();
            let transport = transport.clone();
            let stopped = stopped.clone();
            let mut halted = halted.clone();
            std::thread::Builder::new()
                .name(format!("router-{index}"))
                .spawn(move || {
                    pool::set_worker(index);
                    runtime.block_on(async move {
                        while let Some((stream, peer, slot)) = arrivals.recv().await {
                            match TcpStream::from_std(stream) {
                                Ok(stream) => router.spawn_connection(
                                    stream,
                                    peer,
                                    port,
                                    transport.clone(),
                                    stopped.clone(),
                                    slot,
                                ),
                                Err(error) => {
                                    tracing::warn!(%error, %peer, "cannot adopt connection")
                                }
                            }
                        }
                        drop(stopped);
                        // Keep serving open connections until `serve` is done with them.
                        let _ = halted.changed().await;
                    });
                    // Dropping the runtime ends whatever is left (past the grace period).
                    drop(runtime);
                    let _ = exit.send(());
                })?;
            workers.intake.push(intake);
            workers.exited.push(exited);
        }
        Ok(Some(workers))
    }

    /// Hands a connection to the next thread, round robin.
    fn dispatch(&mut self, stream: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %peer, "cannot hand over connection");
                return;
            }
        };
        self.next = (self.next + 1) % self.intake.len();
        if self.intake[self.next].send((stream, peer, slot)).is_err() {
            tracing::warn!(%peer, "router thread gone; connection dropped");
        }
    }

    /// No more connections: each thread drops its handle on the stop signal.
    fn close_intake(mut self) -> Workers {
        self.intake.clear();
        self
    }

    /// Ends every thread and waits for them.
    async fn halt(self) {
        let _ = self.halt.send(true);
        for exited in self.exited {
            let _ = exited.await;
        }
    }
}
