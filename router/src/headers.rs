//! Header rewriting: what a dyno learns about the request (`X-Forwarded-*`,
//! `X-Request-Id`, `X-Request-Start`, `Via`), and the hop-by-hop headers that belong to one
//! connection and must not cross the router (RFC 9110 §7.6.1).

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::Scheme;
use bytes::Bytes;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, VIA,
};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const VIA_MANIFOLD: &str = "1.1 manifold";

/// What the log line repeats of the rewritten request.
pub(crate) struct Forwarded {
    pub(crate) request_id: HeaderValue,
    pub(crate) fwd: HeaderValue,
}

/// What every request of one client connection tells its dyno about that connection,
/// rendered once per connection: rendering it per request cost four allocations on the
/// request path (BENCHMARKS.md, "Quiet and busy, side by side").
pub(crate) struct ClientHeaders {
    ip: IpAddr,
    /// `X-Forwarded-For` of a request that brings none: the client's address alone.
    ip_value: HeaderValue,
    scheme: Scheme,
    /// `X-Forwarded-Port`: the router's listening port.
    port_value: HeaderValue,
}

impl ClientHeaders {
    pub(crate) fn new(client: IpAddr, scheme: Scheme, port: u16) -> ClientHeaders {
        ClientHeaders {
            ip: client,
            ip_value: HeaderValue::from_str(&client.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            scheme,
            port_value: HeaderValue::from(port),
        }
    }
}

/// Whether the client asks to switch protocols (WebSocket): `Connection: upgrade` and an
/// `Upgrade` header.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_has(headers, "upgrade")
}

/// Rewrites a client request's headers for the dyno.
pub(crate) fn forward_request(
    headers: &mut HeaderMap,
    client: &ClientHeaders,
    upgrade: bool,
) -> Forwarded {
    strip_hop_by_hop(headers, upgrade);
    // The router answers `Expect: 100-continue` itself (hyper sends the 100 when the body
    // is first read), so the dyno must not answer it again.
    headers.remove(EXPECT);

    let request_id = match headers.get(X_REQUEST_ID) {
        Some(id) if valid_request_id(id.as_bytes()) => id.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID, id.clone());
            id
        }
    };

    let fwd = forwarded_for(headers, client);
    headers.insert(X_FORWARDED_FOR, fwd.clone());
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(client.scheme.as_str()),
    );
    headers.insert(X_FORWARDED_PORT, client.port_value.clone());
    headers.insert(X_REQUEST_START, request_start());
    append_via(headers);
    Forwarded { request_id, fwd }
}

/// Rewrites a dyno's response headers for the client.
pub(crate) fn forward_response(headers: &mut HeaderMap, upgraded: bool) {
    strip_hop_by_hop(headers, upgraded);
    append_via(headers);
}

/// Heroku keeps a client's request id when it is 20 to 200 characters of
/// `[A-Za-z0-9+=/-]`, so ids can be traced across services; anything else is replaced.
fn valid_request_id(id: &[u8]) -> bool {
    (20..=200).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'/' | b'-'))
}

fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut buf);
    shared_value(Inline {
        len: buf.len(),
        buf,
    })
    .unwrap_or(HeaderValue::from_static("invalid-request-id"))
}

/// Up to `N` bytes in place: the owner of a [`shared_value`].
struct Inline<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> AsRef<[u8]> for Inline<N> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A header value in one allocation that its clones share. `HeaderValue::from_str` copies
/// into a buffer that its first clone reallocates as a shared one: two `malloc`s for a
/// value that the request, its log line and its resend copy all hold.
fn shared_value<const N: usize>(bytes: Inline<N>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(bytes)).ok()
}

thread_local! {
    /// The last `X-Request-Start` this thread rendered: requests in the same millisecond
    /// share it.
    static REQUEST_START: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
}

/// `X-Request-Start`: when the router received the request, in milliseconds since the
/// epoch, as Heroku sends it.
fn request_start() -> HeaderValue {
    let now = now_millis();
    REQUEST_START.with_borrow_mut(|last| match last {
        Some((at, value)) if *at == now => value.clone(),
        _ => {
            let mut digits = Inline {
                buf: [0u8; 20],
                len: 0,
            };
            let mut out = &mut digits.buf[..];
            // u64::MAX has 20 digits: always fits.
            let _ = write!(out, "{now}");
            digits.len = 20 - out.len();
            let value = shared_value(digits).unwrap_or(HeaderValue::from(now));
            *last = Some((now, value.clone()));
            value
        }
    })
}

/// A request's host name as the router matches and logs it: lowercase, without a port.
/// Usually the client's `Host` value itself, which costs no copy.
#[derive(Clone)]
pub(crate) struct HostName(HeaderValue);

impl HostName {
    /// From `Host` (or the authority of an absolute-form request).
    pub(crate) fn new(raw: &str, header: Option<&HeaderValue>) -> HostName {
        let name = match raw.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => raw,
        };
        match header {
            Some(value)
                if name.len() == raw.len() && !name.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                HostName(value.clone())
            }
            _ => HostName(
                HeaderValue::try_from(name.to_ascii_lowercase())
                    .unwrap_or(HeaderValue::from_static("")),
            ),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// The existing `X-Forwarded-For` chain (all its headers, in order) with the client
/// appended.
fn forwarded_for(headers: &HeaderMap, client: &ClientHeaders) -> HeaderValue {
    let mut chain = String::new();
    for value in headers.get_all(X_FORWARDED_FOR) {
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                chain.push_str(value);
                chain.push_str(", ");
            }
        }
    }
    if chain.is_empty() {
        return client.ip_value.clone();
    }
    chain.push_str(&client.ip.to_string());
    HeaderValue::try_from(chain).unwrap_or(HeaderValue::from_static("unknown"))
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn append_via(headers: &mut HeaderMap) {
    let via = match headers.get(VIA).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::try_from(format!("{existing}, {VIA_MANIFOLD}"))
            .unwrap_or(HeaderValue::from_static(VIA_MANIFOLD)),
        None => HeaderValue::from_static(VIA_MANIFOLD),
    };
    headers.insert(VIA, via);
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes the headers that describe one connection; with `upgrade`, keeps
/// `Connection: upgrade` and `Upgrade`, which the dyno must see to switch protocols.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(map: &HeaderMap, name: &str) -> String {
        map.get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn request_id_validity() {
        assert!(valid_request_id(b"abcdefghij0123456789"));
        assert!(valid_request_id(b"abc+def=ghi/jkl-mno/pqr"));
        assert!(!valid_request_id(b"short"));
        assert!(!valid_request_id(b"abcdefghij0123456789 with space"));
        assert!(!valid_request_id(&[b'a'; 201]));
    }

    #[test]
    fn adds_forwarding_headers_and_strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("bad id"));
        let client = ClientHeaders::new("127.0.0.1".parse().expect("ip"), Scheme::Http, 8080);
        let fwd = forward_request(&mut h, &client, false);
        assert_eq!(fwd.fwd, "10.0.0.1, 127.0.0.1");
        assert_eq!(header(&h, "x-forwarded-for"), "10.0.0.1, 127.0.0.1");
        assert_eq!(header(&h, "x-forwarded-proto"), "http");
        assert_eq!(header(&h, "x-forwarded-port"), "8080");
        assert_eq!(header(&h, "via"), "1.1 manifold");
        assert!(header(&h, "x-request-start").parse::<u64>().is_ok());
        assert_eq!(header(&h, "x-request-id").len(), 36);
        assert_eq!(fwd.request_id, h[X_REQUEST_ID]);
        for gone in ["connection", "x-secret", "keep-alive", "transfer-encoding"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }

    #[test]
    fn every_request_of_a_connection_names_its_client() {
        let client = ClientHeaders::new("2001:db8::7".parse().expect("ip"), Scheme::Http, 80);
        for _ in 0..2 {
            let mut h = HeaderMap::new();
            let fwd = forward_request(&mut h, &client, false);
            assert_eq!(fwd.fwd, "2001:db8::7");
            assert_eq!(header(&h, "x-forwarded-for"), "2001:db8::7");
            assert_eq!(header(&h, "x-forwarded-port"), "80");
        }
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static(" 10.0.0.2 "));
        let fwd = forward_request(&mut h, &client, false);
        assert_eq!(fwd.fwd, "10.0.0.1, 10.0.0.2, 2001:db8::7");
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        let client = ClientHeaders::new("127.0.0.1".parse().expect("ip"), Scheme::Https, 443);
        forward_request(&mut h, &client, true);
        assert_eq!(header(&h, "x-forwarded-proto"), "https");
        assert_eq!(header(&h, "x-forwarded-port"), "443");
        assert_eq!(header(&h, "connection"), "upgrade");
        assert_eq!(header(&h, "upgrade"), "websocket");
    }

    #[test]
    fn host_names_are_lowercase_without_port() {
        let cases = [
            ("app.localhost", "app.localhost"),
            ("App.LocalHost", "app.localhost"),
            ("app.localhost:8080", "app.localhost"),
            ("APP.localhost:80", "app.localhost"),
            ("[::1]:80", "[::1]:80"),
            ("app.localhost:x", "app.localhost:x"),
            ("", ""),
        ];
        for (raw, want) in cases {
            let header = HeaderValue::from_str(raw).expect("header");
            assert_eq!(HostName::new(raw, Some(&header)).as_str(), want, "{raw}");
            assert_eq!(HostName::new(raw, None).as_str(), want, "{raw}");
        }
    }

    #[test]
    fn request_start_is_now_in_milliseconds() {
        let before = now_millis();
        let first = request_start();
        let second = request_start();
        let after = now_millis();
        for value in [&first, &second] {
            let millis: u64 = value.to_str().expect("ascii").parse().expect("digits");
            assert!(
                (before..=after).contains(&millis),
                "{millis} not in {before}..={after}"
            );
        }
        let value = first.to_str().expect("ascii");
        assert!(!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn generated_request_ids_are_distinct_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let a = a.to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(a).is_ok(), "{a}");
        assert!(valid_request_id(a.as_bytes()));
    }
}
