//! The life of one request:
//!
//! ```text
//! GET /.well-known/acme-challenge/TOKEN the scheduler published → its key authorization
//! Host (APP.<domain> or a custom domain) → app (unknown: 404)
//!   → route ─ Crashed: H10 │ NoWebDynos: H14 │ Maintenance: H80 (maintenance page)
//!                                   ├ Booting/Sleeping: hold (wake if sleeping; H11 past
//!                                   │   hold_limit, H20 past boot_hold) until Serving
//!                                   └ Serving → pick (two random choices) → connect
//!                                       (pooled; a failed connect tries another dyno,
//!                                       H19/H21 when out of tries) → send → response head
//!                                       (H12 past request_timeout, H13/H18/H17) → stream
//!                                       the body back (H15, H18) or tunnel a WebSocket
//! ```
//!
//! Only a failed TCP connect is retried: once a byte of the request left, another try could
//! repeat a side effect on the app. The exception is a GET or HEAD without a body whose dyno
//! closed the connection without answering (it was killed mid-request, or a pooled
//! connection raced the dyno's keep-alive timeout): such a request is safe to repeat (RFC
//! 9110, 9.2.2), so it goes to a dyno again, at most [`RESENDS`] times, instead of an H13.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::http::uri::PathAndQuery;
use hyper::upgrade::OnUpgrade;
use hyper::HeaderMap;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{RouterBody, UploadBody, UploadPhase, UploadState, UploadWatch};
use crate::codes::Code;
use crate::exchange::{Exchange, Identity};
use crate::headers::{self, HostName};
use crate::io::ConnCtx;
use crate::pages;
use crate::pick;
use crate::pool::{Conn, ConnectError};
use crate::router::Router;
use crate::table::{AppSlot, BackendShared, Hold, Route};

/// Where ACME servers look for HTTP-01 challenge answers (RFC 8555, 8.3).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// How many times a bodiless GET or HEAD is sent again after a dyno closed the connection
/// without answering.
const RESENDS: usize = 2;

/// What it takes to send a bodiless GET or HEAD again.
struct Resend {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Resend {
    fn new(method: &Method, uri: &Uri, headers: &HeaderMap) -> Resend {
        // A clone is two allocations, the least this copy costs: refilling a spare map
        // with `append` rehashes every name and measured dearer (BENCHMARKS.md).
        Resend {
            method: method.clone(),
            uri: uri.clone(),
            headers: headers.clone(),
        }
    }

    fn request(&self) -> Request<UploadBody> {
        let mut req = Request::new(UploadBody::Empty);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Where a request goes once its app's route is known.
enum Resolved {
    Serving(Arc<[Arc<BackendShared>]>),
    Refused(Code),
    /// The app left the table while the request was held.
    Removed,
}

impl Router {
    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        ctx: Arc<ConnCtx>,
    ) -> Response<RouterBody> {
        let started = Instant::now();
        if req.method() == Method::CONNECT {
            self.metrics.record(405, None, started.elapsed());
            return pages::method_not_allowed();
        }
        if let Some(answer) = self.acme_challenge(&req) {
            self.metrics.record(200, None, started.elapsed());
            return answer;
        }
        let host = host_of(&req);
        let slot = match app_of(host.as_str(), &self.config.domain) {
            Some(app) => self.table.slot(app),
            None => self
                .table
                .domain_app(host.as_str())
                .and_then(|app| self.table.slot(&app)),
        };
        let Some(slot) = slot else {
            self.metrics.record(404, None, started.elapsed());
            return pages::not_found(host.as_str());
        };
        self.hooks.request(&slot.name);

        let upgrade = headers::wants_upgrade(req.headers());
        let fwd = headers::forward_request(req.headers_mut(), &ctx.forwarded, upgrade);
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let identity = Identity {
            app: slot.name.clone(),
            method: req.method().clone(),
            path,
            host,
            request_id: fwd.request_id,
            fwd: fwd.fwd,
        };
        let ex = Exchange::new(self.clone(), ctx, identity);
        match self.resolve(&slot).await {
            Resolved::Serving(backends) => self.forward(req, &backends, ex, upgrade).await,
            Resolved::Refused(code) => ex.refuse(code),
            Resolved::Removed => ex.gone(),
        }
    }

    /// The answer to an ACME HTTP-01 challenge the scheduler published (for any host: the
    /// ACME server asks at the domain being validated); `None` for every other request,
    /// including a token the router does not know (the app may answer its own).
    fn acme_challenge(&self, req: &Request<Incoming>) -> Option<Response<RouterBody>> {
        if req.method() != Method::GET {
            return None;
        }
        let token = req.uri().path().strip_prefix(ACME_CHALLENGE)?;
        let answer = self.table.challenge(token)?;
        let mut response = pages::page(200, RouterBody::full(answer));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/octet-stream"),
        );
        Some(response)
    }

    /// The app's backends, holding the request while the app boots or wakes.
    async fn resolve(&self, slot: &Arc<AppSlot>) -> Resolved {
        let mut route = slot.route();
        let mut held: Option<(Hold, watch::Receiver<Route>, Instant)> = None;
        let mut woken = false;
        loop {
            match &route {
                Route::Serving(backends) => return Resolved::Serving(backends.clone()),
                Route::Crashed => return Resolved::Refused(Code::H10),
                Route::NoWebDynos => return Resolved::Refused(Code::H14),
                Route::Maintenance => return Resolved::Refused(Code::H80),
                Route::Removed => return Resolved::Removed,
                Route::Booting | Route::Sleeping => {}
            }
            if matches!(route, Route::Sleeping) && !woken {
                self.hooks.wake(&slot.name);
                woken = true;
            }
            match &mut held {
                None => {
                    let Some(place) = slot.try_hold(self.config.hold_limit) else {
                        return Resolved::Refused(Code::H11);
                    };
                    // Subscribe, then read again: a change in between is not missed.
                    let mut rx = slot.subscribe();
                    route = rx.borrow_and_update().clone();
                    held = Some((place, rx, Instant::now() + self.config.boot_hold));
                }
                Some((_, rx, deadline)) => {
                    match tokio::time::timeout_at(*deadline, rx.changed()).await {
                        Err(_) => return Resolved::Refused(Code::H20),
                        Ok(Err(_)) => return Resolved::Removed,
                        Ok(Ok(())) => route = rx.borrow_and_update().clone(),
                    }
                }
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        backends: &[Arc<BackendShared>],
        mut ex: Exchange,
        upgrade: bool,
    ) -> Response<RouterBody> {
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Dyno connections are HTTP/1.1 keep-alive whatever the client speaks.
        parts.version = Version::HTTP_11;
        parts.extensions.clear();
        if let Some(authority) = parts.uri.authority() {
            // HTTP/2 names the host in `:authority`, which HTTP/1.1 to the dyno carries as
            // `Host`.
            if !parts.headers.contains_key(HOST) {
                if let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(HOST, host);
                }
            }
            let origin = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(origin);
        }
        let (upload, watch) = UploadBody::new(body, self.config.idle_timeout);
        let resend = (watch.is_none()
            && client_upgrade.is_none()
            && matches!(parts.method, Method::GET | Method::HEAD))
        .then(|| Resend::new(&parts.method, &parts.uri, &parts.headers));
        let request = Request::from_parts(parts, upload);
        match self.connect(backends, &mut ex).await {
            Ok(conn) => {
                self.exchange(conn, request, ex, watch, client_upgrade, backends, resend)
                    .await
            }
            Err(code) => ex.refuse(code),
        }
    }

    /// A connection to one of `backends`: pooled if one is idle, else a new one; a failed
    /// connect tries another dyno, up to `connect_attempts` dynos.
    async fn connect(
        &self,
        backends: &[Arc<BackendShared>],
        ex: &mut Exchange,
    ) -> Result<Conn, Code> {
        let mut tried = Vec::new();
        let mut failure = Code::H21;
        while tried.len() < self.config.connect_attempts.max(1) {
            let pick = pick::two_choices(
                backends.len(),
                &tried,
                |i| backends[i].load(),
                &mut rand::thread_rng(),
            );
            let Some(i) = pick else { break };
            let backend = &backends[i];
            ex.assign(backend.clone());
            let start = Instant::now();
            if let Some(conn) = backend.pool.checkout(self.config.pool_idle_timeout).await {
                ex.connected(start.elapsed());
                return Ok(conn);
            }
            match Conn::connect(backend.addr, self.config.connect_timeout).await {
                Ok(conn) => {
                    ex.connected(start.elapsed());
                    return Ok(conn);
                }
                Err(error) => {
                    tracing::debug!(%error, dyno = %backend.name, "connect failed");
                    failure = match error {
                        ConnectError::Refused { .. } => Code::H21,
                        _ => Code::H19,
                    };
                    ex.connect_took(start.elapsed());
                    tried.push(i);
                }
            }
        }
        Err(failure)
    }

    /// Sends the request on `conn` and answers with the dyno's response, streamed.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        mut conn: Conn,
        mut request: Request<UploadBody>,
        mut ex: Exchange,
        watch: Option<UploadWatch>,
        client_upgrade: Option<OnUpgrade>,
        backends: &[Arc<BackendShared>],
        resend: Option<Resend>,
    ) -> Response<RouterBody> {
        let (upload, over) = match watch {
            Some(w) => (Some(w.state), Some(w.over)),
            None => (None, None),
        };
        // The request timeout runs from the end of the upload: a slow client is not a slow
        // dyno (a stalled upload is caught by the idle timeout instead).
        let timeout = self.config.request_timeout;
        let deadline = async move {
            if let Some(over) = over {
                let _ = over.await;
            }
            tokio::time::sleep(timeout).await;
        };
        tokio::pin!(deadline);
        let mut resends = 0;
        let mut response = loop {
            let sent = conn.sender.send_request(request);
            let result = tokio::select! {
                biased;
                result = sent => Some(result),
                () = &mut deadline => None,
            };
            match result {
                Some(Ok(response)) => break response,
                Some(Err(error)) => {
                    conn.close();
                    let code = failure_code(&error, upload.as_deref());
                    tracing::debug!(%error, code = code.name(), "exchange with dyno failed");
                    match &resend {
                        Some(again) if code == Code::H13 && resends < RESENDS => {
                            resends += 1;
                            conn = match self.connect(backends, &mut ex).await {
                                Ok(conn) => conn,
                                Err(code) => return ex.refuse(code),
                            };
                            request = again.request();
                        }
                        _ => return ex.refuse(code),
                    }
                }
                None => {
                    conn.close();
                    return ex.refuse(Code::H12);
                }
            }
        };
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let dyno = hyper::upgrade::on(&mut response);
                headers::forward_response(response.headers_mut(), true);
                tunnel(client, dyno, conn, ex);
                let (parts, _) = response.into_parts();
                return Response::from_parts(parts, RouterBody::empty());
            }
        }
        headers::forward_response(response.headers_mut(), false);
        let (parts, body) = response.into_parts();
        let body = RouterBody::relay(
            body,
            ex,
            conn,
            upload,
            status.as_u16(),
            self.config.idle_timeout,
        );
        Response::from_parts(parts, body)
    }
}

/// Joins the client and the dyno once both sides have switched protocols. The request is
/// logged now (status 101, as Heroku does) but stays in flight on the dyno until the
/// tunnel closes, so draining a dyno waits for its WebSockets.
fn tunnel(client: OnUpgrade, dyno: OnUpgrade, conn: Conn, mut ex: Exchange) {
    ex.finish(101, None, 0);
    let in_flight = ex.take_in_flight();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let _conn = conn;
        match tokio::try_join!(client, dyno) {
            Ok((client, dyno)) => {
                let mut client = TokioIo::new(client);
                let mut dyno = TokioIo::new(dyno);
                if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut dyno).await {
                    tracing::debug!(%error, "upgraded connection ended");
                }
            }
            Err(error) => tracing::debug!(%error, "protocol switch failed"),
        }
    });
}

/// Whose fault a failed exchange was, when no response head came back.
fn failure_code(error: &hyper::Error, upload: Option<&UploadState>) -> Code {
    match upload.map(UploadState::phase) {
        Some(UploadPhase::ClientGone) => Code::H27,
        Some(UploadPhase::ClientIdle) => Code::H28,
        _ if error.is_parse() => Code::H17,
        Some(UploadPhase::Sending) => Code::H18,
        _ => Code::H13,
    }
}

/// The request's host, lowercased, without port (`Host`, or the authority of an
/// absolute-form request).
fn host_of(req: &Request<Incoming>) -> HostName {
    let header = req.headers().get(HOST);
    match header.and_then(|h| h.to_str().ok()) {
        Some(raw) => HostName::new(raw, header),
        None => HostName::new(req.uri().host().unwrap_or(""), None),
    }
}

/// The app a host names: `APP.<domain>` (a trailing dot allowed), `APP` without dots.
fn app_of<'h>(host: &'h str, domain: &str) -> Option<&'h str> {
    let app = host
        .trim_end_matches('.')
        .strip_suffix(domain.trim_matches('.'))?
        .strip_suffix('.')?;
    (!app.is_empty() && !app.contains('.')).then_some(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_from_hosts() {
        assert_eq!(app_of("myapp.localhost", "localhost"), Some("myapp"));
        assert_eq!(app_of("myapp.localhost.", "localhost"), Some("myapp"));
        assert_eq!(app_of("myapp.example.com", "example.com"), Some("myapp"));
        assert_eq!(app_of("a.b.example.com", "example.com"), None);
        assert_eq!(app_of("localhost", "localhost"), None);
        assert_eq!(app_of("xlocalhost", "localhost"), None);
        assert_eq!(app_of("myapp.other", "localhost"), None);
    }

    #[test]
    fn a_resend_is_the_same_request_over_http_1_1() {
        let uri: Uri = "/a?b=c".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.append("x-b", "3".parse().expect("value"));
        headers.append("x-b", "4".parse().expect("value"));
        let resend = Resend::new(&Method::HEAD, &uri, &headers);
        let req = resend.request();
        assert_eq!(req.method(), Method::HEAD);
        assert_eq!(req.uri(), &uri);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers(), &headers);
        let values: Vec<_> = req.headers().get_all("x-b").iter().collect();
        assert_eq!(values, ["3", "4"], "values in order");
    }
}
