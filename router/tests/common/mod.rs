//! Test harness: a router on a real socket, backends inside the test, a plain HTTP/1.1
//! client, and hooks that record what the router reported.
#![allow(dead_code)] // each test file uses part of the harness

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use manifold_router::{AppRoute, Backend, Hooks, RouteTable, Router, RouterConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// What the router told the platform.
#[derive(Default)]
pub struct Recorder {
    pub logs: Mutex<Vec<(String, String)>>,
    pub requests: Mutex<Vec<String>>,
    pub wakes: AtomicUsize,
}

impl Hooks for Recorder {
    fn request(&self, app: &str) {
        self.requests.lock().expect("lock").push(app.to_owned());
    }
    fn wake(&self, _app: &str) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn log(&self, app: &str, line: String) {
        self.logs.lock().expect("lock").push((app.to_owned(), line));
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.logs
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Waits (up to 10 s) until a log line satisfies `pred`, and returns it.
    pub async fn wait_line(&self, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..1000 {
            if let Some(line) = self.lines().into_iter().find(|l| pred(l)) {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no matching log line in {:#?}", self.lines());
    }
}

/// A router serving HTTP on a port of its own, and HTTPS on another.
pub struct TestRouter {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub table: RouteTable,
    pub hooks: Arc<Recorder>,
    pub router: Arc<Router>,
    stop: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_tls: Option<oneshot::Sender<()>>,
}

impl TestRouter {
    pub async fn start(config: RouterConfig) -> TestRouter {
        let table = RouteTable::new();
        let hooks = Arc::new(Recorder::default());
        let router = Arc::new(Router::new(table.clone(), hooks.clone(), config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(router.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls_addr = tls_listener.local_addr().expect("addr");
        let (stop_tls, tls_stopped) = oneshot::channel::<()>();
        tokio::spawn(router.clone().serve_tls(tls_listener, async move {
            let _ = tls_stopped.await;
        }));
        TestRouter {
            addr,
            tls_addr,
            stop_tls: Some(stop_tls),
            table,
            hooks,
            router,
            stop: Some(stop),
            served,
        }
    }

    pub async fn default() -> TestRouter {
        TestRouter::start(RouterConfig::default()).await
    }

    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop_tls.take() {
            let _ = stop.send(());
        }
    }

    /// Opens a client connection to the router.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// One request on a fresh connection.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.client().await.get(host, path).await
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    sender: http1::SendRequest<TestBody>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to router");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn.with_upgrades());
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> Response<Incoming> {
        self.sender.ready().await.expect("client connection ready");
        self.sender.send_request(req).await.expect("response")
    }

    pub async fn read(&mut self, req: Request<TestBody>) -> Reply {
        let response = self.send(req).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.read(request("GET", host, path, empty())).await
    }
}

pub fn request(method: &str, host: &str, path: &str, body: TestBody) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(body)
        .expect("request")
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A backend made of a hyper HTTP/1.1 server; counts the connections it accepted.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl TestBackend {
    pub fn backend(&self, id: &str, name: &str) -> Backend {
        Backend {
            id: id.to_owned(),
            name: name.to_owned(),
            addr: self.addr,
        }
    }
}

pub async fn backend<F, Fut>(handler: F) -> TestBackend
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    TestBackend { addr, connections }
}

/// A backend answering `text` to everything.
pub async fn hello(text: &'static str) -> TestBackend {
    backend(move |_req| async move { Response::new(full(text)) }).await
}

/// An address nothing listens on (connections are refused).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// Parses a router log line into its fields, checking Heroku's field order.
pub fn parse_line(line: &str) -> HashMap<String, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.split_once(' ') {
                Some((v, a)) => (v, a),
                None => (after, ""),
            }
        };
        fields.push((key.trim().to_owned(), value.to_owned()));
        rest = after.trim_start();
    }
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    let tail = [
        "method",
        "path",
        "host",
        "request_id",
        "fwd",
        "dyno",
        "connect",
        "service",
        "status",
        "bytes",
        "protocol",
    ];
    let head: &[&str] = if keys.first() == Some(&"at") && keys.get(1) == Some(&"code") {
        &["at", "code", "desc"]
    } else {
        &["at"]
    };
    let expected: Vec<&str> = head.iter().chain(tail.iter()).copied().collect();
    assert_eq!(keys, expected, "field order of {line}");
    fields.into_iter().collect()
}

/// Waits (up to 10 s) until `cond` holds.
pub async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn serving(backends: &[Backend]) -> AppRoute {
    AppRoute::Serving(backends.to_vec())
}
