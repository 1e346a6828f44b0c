//! Real local servers for the drain tests: a syslog receiver (TCP or TLS) that parses
//! octet-counted RFC 5424 frames, an HTTP(S) receiver that records POSTs, and a throwaway
//! CA made with rcgen.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it.
pub struct TestCa {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

pub fn test_ca() -> TestCa {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "manifold test ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");

    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    TestCa {
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

/// One RFC 5424 message, split into its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub pri: String,
    pub version: String,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub sd: String,
    pub msg: String,
}

/// Parses one `<len> <msg>` frame from the front of `buf`; returns it and the bytes used,
/// or `None` if `buf` does not hold a whole frame yet. Panics on a malformed frame.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let space = buf.iter().position(|&b| b == b' ')?;
    let len: usize = std::str::from_utf8(&buf[..space])
        .expect("length is ascii")
        .parse()
        .unwrap_or_else(|_| panic!("bad length prefix in {:?}", String::from_utf8_lossy(buf)));
    let start = space + 1;
    if buf.len() < start + len {
        return None;
    }
    let msg = std::str::from_utf8(&buf[start..start + len]).expect("utf8 message");
    let fields: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(fields.len(), 8, "not an RFC 5424 message: {msg:?}");
    let (pri, version) = fields[0]
        .strip_prefix('<')
        .and_then(|s| s.split_once('>'))
        .unwrap_or_else(|| panic!("no PRI in {msg:?}"));
    Some((
        Frame {
            pri: pri.to_owned(),
            version: version.to_owned(),
            timestamp: fields[1].to_owned(),
            hostname: fields[2].to_owned(),
            app_name: fields[3].to_owned(),
            procid: fields[4].to_owned(),
            msgid: fields[5].to_owned(),
            sd: fields[6].to_owned(),
            msg: fields[7].to_owned(),
        },
        start + len,
    ))
}

/// Every frame of a body that must hold whole frames only.
pub fn parse_frames(mut buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (frame, used) = parse_frame(buf).expect("truncated frame");
        out.push(frame);
        buf = &buf[used..];
    }
    out
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    listener().await.1.port()
}

/// Accepts syslog connections (through `tls` if given) and sends every frame received.
pub fn syslog_server(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) -> mpsc::UnboundedReceiver<Frame> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        // A client that rejects our certificate ends the handshake.
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            read_frames(stream, tx).await;
                        }
                    }
                    None => read_frames(tcp, tx).await,
                }
            });
        }
    });
    rx
}

async fn read_frames(mut stream: impl AsyncRead + Unpin, tx: mpsc::UnboundedSender<Frame>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((frame, used)) = parse_frame(&buf) {
            buf.drain(..used);
            let _ = tx.send(frame);
        }
    }
}

/// One POST an HTTP drain made.
#[derive(Debug)]
pub struct Post {
    pub headers: hyper::HeaderMap,
    pub path: String,
    pub body: Bytes,
}

impl Post {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .expect("ascii header")
    }
}

/// Serves HTTP (or HTTPS through `tls`), answering 500 to the first `fail_first` requests
/// and 200 after; every request is sent on the channel, failed ones included.
pub fn http_server(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    fail_first: usize,
) -> mpsc::UnboundedReceiver<(StatusCode, Post)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tx, tls, seen) = (tx.clone(), tls.clone(), seen.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, seen) = (tx.clone(), seen.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.expect("body").to_bytes();
                        let status = if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        let _ = tx.send((
                            status,
                            Post {
                                headers,
                                path,
                                body,
                            },
                        ));
                        let response = Response::builder()
                            .status(status)
                            .body(Empty::<Bytes>::new())
                            .expect("response");
                        Ok::<_, Infallible>(response)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(stream) => http.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                    None => http.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    rx
}

/// Receives from `rx` until `done` says so, failing the test after `secs` seconds.
pub async fn recv_until<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    secs: u64,
    mut done: impl FnMut(&[T]) -> bool,
) -> Vec<T> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(&got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => got.push(item),
            Ok(None) => panic!("server stopped after {} items", got.len()),
            Err(_) => panic!("timed out after {} items", got.len()),
        }
    }
    got
}
