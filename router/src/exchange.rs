//! One request's record, from arrival to its last byte: which dyno, how long the connect
//! and the service took, what status and how many bytes. It ends exactly once, as one
//! router log line and one metrics sample; dropped unfinished (the client went away), it
//! ends as H27, or H28 if the client had stopped reading.

use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Response};
use tokio::time::Instant;

use crate::body::RouterBody;
use crate::codes::Code;
use crate::headers::HostName;
use crate::io::ConnCtx;
use crate::logline::LogLine;
use crate::pages;
use crate::pool::Conn;
use crate::router::Router;
use crate::table::{BackendShared, InFlight};

pub(crate) struct Exchange {
    router: Arc<Router>,
    ctx: Arc<ConnCtx>,
    app: Arc<str>,
    method: Method,
    path: PathAndQuery,
    host: HostName,
    request_id: HeaderValue,
    fwd: HeaderValue,
    started: Instant,
    backend: Option<InFlight>,
    connect: Option<Duration>,
    connected_at: Option<Instant>,
    done: bool,
}

/// What a request is, as the log line names it.
pub(crate) struct Identity {
    pub(crate) app: Arc<str>,
    pub(crate) method: Method,
    /// Shares the request's buffer (no copy).
    pub(crate) path: PathAndQuery,
    pub(crate) host: HostName,
    pub(crate) request_id: HeaderValue,
    pub(crate) fwd: HeaderValue,
}

impl Exchange {
    pub(crate) fn new(router: Arc<Router>, ctx: Arc<ConnCtx>, id: Identity) -> Exchange {
        router.metrics.started();
        Exchange {
            router,
            ctx,
            app: id.app,
            method: id.method,
            path: id.path,
            host: id.host,
            request_id: id.request_id,
            fwd: id.fwd,
            started: Instant::now(),
            backend: None,
            connect: None,
            connected_at: None,
            done: false,
        }
    }

    /// The request goes to `backend` now (and no longer to the one before, if any).
    pub(crate) fn assign(&mut self, backend: Arc<BackendShared>) {
        self.backend = Some(InFlight::new(backend));
        self.connect = None;
        self.connected_at = None;
    }

    pub(crate) fn backend(&self) -> Option<&Arc<BackendShared>> {
        self.backend.as_ref().map(InFlight::backend)
    }

    /// Connecting (or failing to) took `spent`.
    pub(crate) fn connect_took(&mut self, spent: Duration) {
        self.connect = Some(spent);
    }

    /// The connection is up: the service time starts.
    pub(crate) fn connected(&mut self, spent: Duration) {
        self.connect = Some(spent);
        self.connected_at = Some(Instant::now());
    }

    /// Hands the in-flight count to an upgraded connection, which outlives this record.
    pub(crate) fn take_in_flight(&mut self) -> Option<InFlight> {
        self.backend.take()
    }

    /// Returns a connection whose exchange completed to its dyno's pool.
    pub(crate) fn release(&self, conn: Conn) {
        match self.backend() {
            Some(backend) => backend.pool.checkin(conn, self.router.config.pool_max_idle),
            None => conn.close(),
        }
    }

    /// The code for a request the client abandoned.
    pub(crate) fn client_code(&self) -> Code {
        if self.ctx.client_idle() {
            Code::H28
        } else {
            Code::H27
        }
    }

    /// Ends the record: one log line, one metrics sample.
    pub(crate) fn finish(&mut self, status: u16, code: Option<Code>, bytes: u64) {
        if self.done {
            return;
        }
        self.done = true;
        let reached = self.connected_at.is_some();
        let line = LogLine {
            code,
            method: self.method.as_str(),
            path: self.path.as_str(),
            host: self.host.as_str(),
            request_id: self.request_id.to_str().unwrap_or(""),
            fwd: self.fwd.to_str().unwrap_or(""),
            dyno: self.backend().map(|b| b.name.as_str()),
            connect: self.connect,
            service: self.connected_at.map(|t| t.elapsed()),
            status,
            bytes: reached.then_some(bytes),
            protocol: self.ctx.scheme.as_str(),
        }
        .render();
        self.router.hooks.log(&self.app, line);
        self.router
            .metrics
            .finished(status, code, self.started.elapsed());
    }

    /// Answers with the router's error page for `code` and ends the record.
    pub(crate) fn refuse(mut self, code: Code) -> Response<RouterBody> {
        self.finish(code.status(), Some(code), 0);
        let body = if code.client_side() {
            // The client is gone or silent: nothing it would read.
            RouterBody::empty()
        } else if code == Code::H80 {
            RouterBody::full(pages::MAINTENANCE)
        } else {
            RouterBody::full(pages::error_page(code, &self.request_id))
        };
        pages::page(code.status(), body)
    }

    /// Answers 404 for an app removed while this request was held for it.
    pub(crate) fn gone(mut self) -> Response<RouterBody> {
        self.finish(404, None, 0);
        pages::not_found(self.host.as_str())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.done {
            let code = self.client_code();
            self.finish(code.status(), Some(code), 0);
        }
    }
}
