//! HTTPS at the router over real TLS sockets: HTTP/2 and HTTP/1.1 by ALPN, the certificate
//! chosen by SNI (an exact name over a wildcard, none for an unknown name), custom domains,
//! and `X-Forwarded-Proto`/`-Port` telling the dyno the truth.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use manifold_router::TlsCert;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A test CA that signs the router's certificates; clients trust it and nothing else.
struct Ca {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca");
        Ca { key, cert }
    }

    fn issue(&self, names: &[&str]) -> TlsCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names.clone())
            .expect("params")
            .signed_by(&key, &self.cert, &self.key)
            .expect("cert");
        TlsCert {
            names,
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn connector(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

fn leaf(cert: &TlsCert) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(cert.chain_pem.as_bytes()).expect("pem")
}

async fn handshake(
    ca: &Ca,
    addr: SocketAddr,
    sni: &str,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    ca.connector(alpn).connect(name, tcp).await
}

/// One GET over a TLS connection speaking `alpn` (`h2` or `http/1.1`).
async fn get(tls: TlsStream<TcpStream>, host: &str, path: &str) -> (Response<()>, String) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://{host}{path}"))
            .body(empty())
            .expect("request");
        sender.send_request(req).await.expect("response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        sender
            .send_request(request("GET", host, path, empty()))
            .await
            .expect("response")
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A backend that answers with the request's version, `Host` and forwarding headers.
async fn echo() -> TestBackend {
    backend(|req| async move {
        let h = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let text = format!(
            "{:?} host={} proto={} port={}",
            req.version(),
            h("host"),
            h("x-forwarded-proto"),
            h("x-forwarded-port")
        );
        Response::new(full(text))
    })
    .await
}

#[tokio::test]
async fn h2_and_http1_over_tls_tell_the_dyno_it_was_https() {
    let ca = Ca::new();
    let r = TestRouter::default().await;
    let b = echo().await;
    r.table.set("app", serving(&[b.backend("1", "web.1")]));
    // What the scheduler issues for the cluster's domain: see
    // `a_wildcard_under_a_single_label_is_refused_by_clients`.
    assert!(r
        .table
        .set_certs(&[ca.issue(&["*.localhost", "localhost", "app.localhost"])])
        .is_empty());
    let port = r.tls_addr.port();

    let tls = handshake(&ca, r.tls_addr, "app.localhost", b"h2")
        .await
        .expect("h2 handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (response, text) = get(tls, "app.localhost", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    // The dyno speaks HTTP/1.1 and gets the host of `:authority` as `Host`.
    assert_eq!(
        text,
        format!("HTTP/1.1 host=app.localhost proto=https port={port}")
    );

    let tls = handshake(&ca, r.tls_addr, "app.localhost", b"http/1.1")
        .await
        .expect("http/1.1 handshake");
    let (response, text) = get(tls, "app.localhost", "/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_11);
    assert_eq!(
        text,
        format!("HTTP/1.1 host=app.localhost proto=https port={port}")
    );
    let line = r.hooks.wait_line(|l| l.contains("protocol=https")).await;
    assert_eq!(parse_line(&line)["status"], "200");

    // Plain HTTP on the other listener says so.
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(
        reply.text(),
        format!(
            "HTTP/1.1 host=app.localhost proto=http port={}",
            r.addr.port()
        )
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_and_unknown_names_are_refused() {
    let ca = Ca::new();
    let r = TestRouter::default().await;
    let b = echo().await;
    r.table.set("app", serving(&[b.backend("1", "web.1")]));
    let wildcard = ca.issue(&["*.apps.example", "apps.example"]);
    let default = ca.issue(&["*.localhost", "localhost", "app.localhost"]);
    let custom = ca.issue(&["www.example.com"]);
    assert!(r
        .table
        .set_certs(&[default.clone(), wildcard.clone(), custom.clone()])
        .is_empty());
    r.table.set_domains(
        [("WWW.example.com".to_owned(), "app".to_owned())]
            .into_iter()
            .collect(),
    );

    let served = |tls: &TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().expect("certificates")[0].clone()
    };
    let tls = handshake(&ca, r.tls_addr, "www.example.com", b"http/1.1")
        .await
        .expect("custom domain handshake");
    assert_eq!(served(&tls), leaf(&custom));
    let (response, text) = get(tls, "www.example.com", "/").await;
    assert_eq!(response.status(), 200, "a custom domain routes to its app");
    assert!(text.contains("host=www.example.com proto=https"), "{text}");

    let tls = handshake(&ca, r.tls_addr, "app.localhost", b"http/1.1")
        .await
        .expect("default domain handshake");
    assert_eq!(served(&tls), leaf(&default));
    let tls = handshake(&ca, r.tls_addr, "any.apps.example", b"http/1.1")
        .await
        .expect("wildcard handshake");
    assert_eq!(served(&tls), leaf(&wildcard));

    // No certificate for this name: the handshake fails, the router keeps serving.
    let refused = handshake(&ca, r.tls_addr, "unknown.example.org", b"http/1.1").await;
    let error = refused.expect_err("no certificate for an unknown name");
    assert!(
        error.to_string().contains("alert"),
        "refused with a TLS alert: {error}"
    );
    // A client that names no host (an IP address is not sent as SNI) gets the first
    // certificate, the cluster domain's.
    let tls = handshake(&ca, r.tls_addr, "127.0.0.1", b"h2")
        .await
        .expect_err("rustls checks the certificate against the address");
    assert!(
        tls.to_string().contains("not valid for"),
        "served one: {tls}"
    );
    // A custom domain whose certificate goes away is refused too.
    assert!(r.table.set_certs(std::slice::from_ref(&default)).is_empty());
    assert!(handshake(&ca, r.tls_addr, "www.example.com", b"h2")
        .await
        .is_err());
    let tls = handshake(&ca, r.tls_addr, "app.localhost", b"h2")
        .await
        .expect("still serving");
    assert_eq!(get(tls, "app.localhost", "/").await.0.status(), 200);
}

#[tokio::test]
async fn an_unusable_certificate_is_reported_and_the_others_still_serve() {
    let ca = Ca::new();
    let r = TestRouter::default().await;
    let good = ca.issue(&["app.localhost"]);
    let mismatched = TlsCert {
        key_pem: good.key_pem.clone(),
        ..ca.issue(&["www.example.com"])
    };
    let errors = r.table.set_certs(&[good, mismatched]);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "certificate for www.example.com: its private key is not the certificate's"
    );
    assert!(handshake(&ca, r.tls_addr, "app.localhost", b"h2")
        .await
        .is_ok());
    assert!(handshake(&ca, r.tls_addr, "www.example.com", b"h2")
        .await
        .is_err());
}

/// Why the scheduler's certificate for the cluster's domain names every app besides
/// `*.DOMAIN`: rustls (like OpenSSL, so curl) refuses a wildcard directly under a single
/// label (`*.localhost` for `app.localhost`), though the router serves it for that name.
#[tokio::test]
async fn a_wildcard_under_a_single_label_is_refused_by_clients() {
    let ca = Ca::new();
    let r = TestRouter::default().await;
    assert!(r.table.set_certs(&[ca.issue(&["*.localhost"])]).is_empty());
    let error = handshake(&ca, r.tls_addr, "app.localhost", b"h2")
        .await
        .expect_err("a client refuses *.localhost");
    assert!(error.to_string().contains("not valid for name"), "{error}");
}
