//! Bodies streamed through the router, frame by frame, never buffered whole: the request
//! body on its way to the dyno (`UploadBody`) and the response body on its way to the
//! client (`RouterBody`). Both watch for silence (H28 client idle, H15 dyno idle); the
//! response body also ends the request's record when hyper is done with it, because only
//! then is the exchange over (bytes sent, connection reusable or not).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::codes::Code;
use crate::exchange::Exchange;
use crate::io::IdleTimer;
use crate::pool::Conn;

/// Why a streamed body stopped early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("client request body failed")]
    Client(#[source] hyper::Error),
    #[error("client sent nothing for {0:?}")]
    ClientIdle(Duration),
    #[error("dyno response body failed")]
    Dyno(#[source] hyper::Error),
    #[error("dyno sent nothing for {0:?}")]
    DynoIdle(Duration),
}

/// How far the request body got; read after a failed exchange to tell whose fault it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadPhase {
    Sending = 0,
    Done = 1,
    ClientGone = 2,
    ClientIdle = 3,
}

#[derive(Default)]
pub(crate) struct UploadState(AtomicU8);

impl UploadState {
    pub(crate) fn phase(&self) -> UploadPhase {
        match self.0.load(Ordering::Acquire) {
            0 => UploadPhase::Sending,
            1 => UploadPhase::Done,
            2 => UploadPhase::ClientGone,
            _ => UploadPhase::ClientIdle,
        }
    }

    fn end(&self, phase: UploadPhase) {
        let _ = self.0.compare_exchange(
            UploadPhase::Sending as u8,
            phase as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// The proxy's side of an upload: its phase, and a signal when it is over (the request
/// timeout starts then, so a slow upload is not a slow dyno).
pub(crate) struct UploadWatch {
    pub(crate) state: Arc<UploadState>,
    pub(crate) over: oneshot::Receiver<()>,
}

/// The request body sent to a dyno.
pub(crate) enum UploadBody {
    Empty,
    Stream(Box<Upload>),
}

pub(crate) struct Upload {
    inner: Incoming,
    state: Arc<UploadState>,
    over: Option<oneshot::Sender<()>>,
    timer: IdleTimer,
}

impl UploadBody {
    /// Wraps the client's body; `None` watch when there is no body to stream.
    pub(crate) fn new(inner: Incoming, idle: Duration) -> (UploadBody, Option<UploadWatch>) {
        if inner.is_end_stream() {
            return (UploadBody::Empty, None);
        }
        let state = Arc::new(UploadState::default());
        let (tx, rx) = oneshot::channel();
        let upload = Upload {
            inner,
            state: state.clone(),
            over: Some(tx),
            timer: IdleTimer::new(idle),
        };
        let watch = UploadWatch { state, over: rx };
        (UploadBody::Stream(Box::new(upload)), Some(watch))
    }
}

impl Upload {
    fn end(&mut self, phase: UploadPhase) {
        self.state.end(phase);
        if let Some(over) = self.over.take() {
            let _ = over.send(());
        }
    }
}

impl Body for UploadBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let up = match self.get_mut() {
            UploadBody::Empty => return Poll::Ready(None),
            UploadBody::Stream(up) => up,
        };
        match Pin::new(&mut up.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                up.timer.progress();
                // hyper may stop polling once the body says it is complete.
                if up.inner.is_end_stream() {
                    up.end(UploadPhase::Done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                up.end(UploadPhase::Done);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                up.end(UploadPhase::ClientGone);
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Pending if up.timer.expired(cx) => {
                up.end(UploadPhase::ClientIdle);
                Poll::Ready(Some(Err(BodyError::ClientIdle(up.timer.idle()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UploadBody::Empty => true,
            UploadBody::Stream(up) => up.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UploadBody::Empty => SizeHint::with_exact(0),
            UploadBody::Stream(up) => up.inner.size_hint(),
        }
    }
}

/// The response body sent to the client: a page of the router's own, or a dyno's body.
pub(crate) struct RouterBody(Kind);

// Not boxed: hyper keeps a connection's response body in one slot it reuses, and a box
// here cost a `malloc` per request.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Full(Option<Bytes>),
    Relay(Relay),
}

impl RouterBody {
    pub(crate) fn full(bytes: impl Into<Bytes>) -> RouterBody {
        RouterBody(Kind::Full(Some(bytes.into())))
    }

    pub(crate) fn empty() -> RouterBody {
        RouterBody(Kind::Full(None))
    }

    /// Streams `inner` from the dyno over `conn`; the exchange ends when this body is done.
    pub(crate) fn relay(
        inner: Incoming,
        exchange: Exchange,
        conn: Conn,
        upload: Option<Arc<UploadState>>,
        status: u16,
        idle: Duration,
    ) -> RouterBody {
        RouterBody(Kind::Relay(Relay {
            inner,
            exchange,
            conn: Some(conn),
            upload,
            status,
            timer: IdleTimer::new(idle),
            bytes: 0,
            ended: false,
            failure: None,
        }))
    }
}

struct Relay {
    inner: Incoming,
    exchange: Exchange,
    conn: Option<Conn>,
    upload: Option<Arc<UploadState>>,
    status: u16,
    timer: IdleTimer,
    bytes: u64,
    ended: bool,
    failure: Option<Code>,
}

impl Body for RouterBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let relay = match &mut self.get_mut().0 {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relay(relay) => relay,
        };
        if relay.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut relay.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                relay.timer.progress();
                if let Some(data) = frame.data_ref() {
                    relay.bytes += data.len() as u64;
                }
                relay.ended = relay.inner.is_end_stream();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                relay.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A dyno that answers before reading the whole upload is cut off with it
                // when the client fails mid-upload: the client's fault then.
                relay.failure = Some(match relay.upload.as_ref().map(|u| u.phase()) {
                    Some(UploadPhase::ClientGone) => Code::H27,
                    Some(UploadPhase::ClientIdle) => Code::H28,
                    _ => Code::H18,
                });
                Poll::Ready(Some(Err(BodyError::Dyno(e))))
            }
            Poll::Pending if relay.timer.expired(cx) => {
                relay.failure = Some(Code::H15);
                Poll::Ready(Some(Err(BodyError::DynoIdle(relay.timer.idle()))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Relay(relay) => relay.ended || relay.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Relay(relay) => relay.inner.size_hint(),
        }
    }
}

impl Drop for Relay {
    /// hyper drops the body when it has sent it all, or when the client connection failed:
    /// either way the exchange is over.
    fn drop(&mut self) {
        let complete = self.failure.is_none() && (self.ended || self.inner.is_end_stream());
        let conn = self.conn.take();
        if complete {
            let upload_done = self
                .upload
                .as_ref()
                .is_none_or(|u| u.phase() == UploadPhase::Done);
            if let Some(conn) = conn {
                if upload_done {
                    self.exchange.release(conn);
                } else {
                    conn.close();
                }
            }
            self.exchange.finish(self.status, None, self.bytes);
        } else {
            if let Some(conn) = conn {
                conn.close();
            }
            let code = self.failure.unwrap_or_else(|| self.exchange.client_code());
            self.exchange.finish(code.status(), Some(code), self.bytes);
        }
    }
}
