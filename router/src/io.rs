//! A client connection: who it is from, and a socket wrapper that notices a client that
//! stops reading (H28), which hyper alone would wait on forever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::headers::ClientHeaders;

/// How a client reached the router: what `X-Forwarded-Proto` tells the dyno, so an app
/// that insists on HTTPS (Django's `SECURE_SSL_REDIRECT`) knows when it has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// What every request on one client connection shares.
pub(crate) struct ConnCtx {
    pub(crate) scheme: Scheme,
    /// What its requests tell their dynos about it (client address, router port), rendered
    /// once.
    pub(crate) forwarded: ClientHeaders,
    client_idle: AtomicBool,
}

impl ConnCtx {
    pub(crate) fn new(peer: SocketAddr, port: u16, scheme: Scheme) -> ConnCtx {
        ConnCtx {
            scheme,
            forwarded: ClientHeaders::new(peer.ip(), scheme, port),
            client_idle: AtomicBool::new(false),
        }
    }

    /// Whether the connection was cut because the client stopped reading.
    pub(crate) fn client_idle(&self) -> bool {
        self.client_idle.load(Ordering::Relaxed)
    }
}

/// Fires after `idle` without progress: armed when a poll would block, disarmed by
/// progress. The sleep is allocated on the first stall only, so a transfer that never
/// blocks costs nothing.
pub(crate) struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl IdleTimer {
    pub(crate) fn new(idle: Duration) -> IdleTimer {
        IdleTimer {
            idle,
            sleep: None,
            armed: false,
        }
    }

    pub(crate) fn idle(&self) -> Duration {
        self.idle
    }

    /// Bytes moved: the next stall starts a new countdown.
    pub(crate) fn progress(&mut self) {
        self.armed = false;
    }

    /// Called when the transfer would block: whether it has now been idle for too long
    /// (if not, `cx` is woken when it will have been).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.idle;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

/// The client's socket; a write blocked for the idle timeout fails with `TimedOut`.
pub(crate) struct ClientIo {
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    timer: IdleTimer,
}

impl ClientIo {
    pub(crate) fn new(stream: TcpStream, ctx: Arc<ConnCtx>, idle: Duration) -> Self {
        ClientIo {
            stream,
            ctx,
            timer: IdleTimer::new(idle),
        }
    }

    fn wrote(
        &mut self,
        result: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending if self.timer.expired(cx) => {
                self.ctx.client_idle.store(true, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client stopped reading",
                )))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer.progress();
                ready
            }
        }
    }
}
impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
