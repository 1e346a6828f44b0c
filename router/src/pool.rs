//! Connections to dynos: connecting (the only step a request may be retried after) and a
//! per-dyno pool of idle keep-alive connections, so most requests skip the TCP handshake.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::body::UploadBody;

/// Why a connection to a dyno could not be opened; no byte of the request was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connection refused by {addr}")]
    Refused { addr: SocketAddr, source: io::Error },
    #[error("no connection to {addr} within {timeout:?}")]
    TimedOut { addr: SocketAddr, timeout: Duration },
    #[error("cannot connect to {addr}")]
    Failed { addr: SocketAddr, source: io::Error },
    #[error("http/1 handshake with {addr} failed")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// One HTTP/1.1 connection to a dyno, driven by its own task.
pub(crate) struct Conn {
    pub(crate) sender: http1::SendRequest<UploadBody>,
    task: AbortHandle,
}

impl Conn {
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::TimedOut { addr, timeout }),
            Ok(Err(source)) if source.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ConnectError::Refused { addr, source })
            }
            Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        // Small responses must not wait for Nagle's algorithm.
        stream
            .set_nodelay(true)
            .map_err(|source| ConnectError::Failed { addr, source })?;
        // Head and body in one buffer, one write(2), as on the client side.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let task = tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "dyno connection ended");
            }
        })
        .abort_handle();
        Ok(Conn { sender, task })
    }

    /// Closes the connection now, whatever it is doing (a timed-out or half-sent exchange
    /// must not be reused).
    pub(crate) fn close(self) {
        self.task.abort();
    }
}

/// Shards of each pool: router threads use their own (index modulo this), so a
/// connection is reused by the thread whose runtime drives it.
const SHARDS: usize = 16;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Marks the current thread as router thread `index`, for pool sharding.
pub(crate) fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

type Shard = Mutex<Vec<(Conn, Instant)>>;

/// Idle connections to one dyno, per router thread, most recently used last.
#[derive(Default)]
pub(crate) struct IdlePool {
    shards: [Shard; SHARDS],
}

impl IdlePool {
    /// This thread's shard.
    fn lock(&self) -> MutexGuard<'_, Vec<(Conn, Instant)>> {
        let shard = WORKER.with(Cell::get) % SHARDS;
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection still open and younger than `max_age`.
    /// Taking the newest keeps few connections busy and lets the old ones age out.
    pub(crate) async fn checkout(&self, max_age: Duration) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.lock().pop()?;
            if since.elapsed() > max_age {
                // Everything below it is older still.
                self.lock().clear();
                return None;
            }
            if conn.sender.is_closed() {
                continue;
            }
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose exchange completed, keeping at most `max_idle`.
    pub(crate) fn checkin(&self, conn: Conn, max_idle: usize) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < max_idle {
            idle.push((conn, Instant::now()));
        }
    }

    /// Closes idle connections older than `max_age` (run periodically, so a dyno that gets
    /// no more traffic does not keep sockets open).
    pub(crate) fn sweep(&self, max_age: Duration) {
        let now = Instant::now();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(conn, since)| {
                    now.duration_since(*since) <= max_age && !conn.sender.is_closed()
                });
        }
    }
}
