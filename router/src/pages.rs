//! The router's own answers: small HTML pages that say what happened, since the client
//! sees them instead of the app.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::body::RouterBody;
use crate::codes::Code;

/// A response of the router's own with `status` (499, unknown to hyper's list, is fine).
pub(crate) fn page(status: u16, body: RouterBody) -> Response<RouterBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    response
}

/// The page for a router error: the code, its meaning, and the request id to quote.
pub(crate) fn error_page(code: Code, request_id: &HeaderValue) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Application Error</title></head>\n\
         <body><h1>Application Error</h1>\n\
         <p>The application could not answer this request: {} ({}).</p>\n\
         <p>Request ID: {}</p></body></html>\n",
        code.desc(),
        code.name(),
        escape(request_id.to_str().unwrap_or("")),
    )
}

/// Heroku's page for an app in maintenance mode (H80): the app is fine and will be back.
pub(crate) const MAINTENANCE: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Offline for Maintenance</title></head>\n\
     <body><h1>Offline for Maintenance</h1>\n\
     <p>This app is undergoing maintenance right now.</p>\n\
     <p>Please check back later.</p></body></html>\n";

/// 404 for a host no app is at, naming the host so a typo is obvious.
pub(crate) fn not_found(host: &str) -> Response<RouterBody> {
    let host = escape(host);
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>No such app</title></head>\n\
         <body><h1>No such app</h1>\n\
         <p>There is no app at <code>{host}</code>.</p></body></html>\n"
    );
    page(404, RouterBody::full(body))
}

/// A plain refusal of a request the router will not proxy (CONNECT).
pub(crate) fn method_not_allowed() -> Response<RouterBody> {
    page(
        405,
        RouterBody::full(
            "<!DOCTYPE html>\n<html><body><h1>Method Not Allowed</h1></body></html>\n",
        ),
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_host_escaped() {
        let response = not_found("<x>.localhost");
        assert_eq!(response.status(), 404);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b>&\"c"), "a&lt;b&gt;&amp;&quot;c");
    }
}
