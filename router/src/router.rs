//! The router as a server: `serve(listener, shutdown)` accepts client connections and runs
//! each as an HTTP/1.1 connection whose requests go through `proxy.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::RouterConfig;
use crate::io::{ClientIo, ConnCtx};
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

    /// Serves client connections from `listener` until `shutdown` completes; then stops
    /// accepting, lets requests in flight finish for up to `shutdown_grace`, and returns.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let port = listener.local_addr()?.port();
        // Every connection holds a receiver: `send` asks them to finish, and `closed()`
        // resolves when the last one has.
        let (stop, stopped) = watch::channel(false);
        let mut workers = Workers::start(&self, port, &stopped)?;
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
                None => self.spawn_connection(stream, peer, port, stopped.clone(), slot),
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
        mut stopped: watch::Receiver<bool>,
        slot: OwnedSemaphorePermit,
    ) {
        let ctx = Arc::new(ConnCtx::new(peer, port));
        let io = TokioIo::new(ClientIo::new(stream, ctx.clone(), self.config.idle_timeout));
        let router = self.clone();
        let service = service_fn(move |req| {
            let router = router.clone();
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(router.handle(req, ctx).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Also closes keep-alive connections idle that long.
            .header_read_timeout(self.config.idle_timeout);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::spawn(async move {
            // Its place among `max_connections`, given back when it ends.
            let _slot = slot;
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "client connection ended");
            }
        });
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
