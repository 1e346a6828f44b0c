//! Heroku's router errors, each provoked for real: status, page and log line.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use hyper::Response;
use manifold_router::{AppRoute, Backend, RouterConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The log line with `code`, parsed; checks status and the page the client got.
async fn expect_error(
    r: &TestRouter,
    reply: &Reply,
    code: &str,
    desc: &str,
) -> std::collections::HashMap<String, String> {
    assert_eq!(reply.status, 503, "{code}: {}", reply.text());
    assert!(
        reply.text().contains(code),
        "page names {code}: {}",
        reply.text()
    );
    let line = r
        .hooks
        .wait_line(|l| l.contains(&format!("code={code} ")))
        .await;
    let f = parse_line(&line);
    assert_eq!(f["at"], "error");
    assert_eq!(f["desc"], desc);
    assert_eq!(f["status"], "503");
    f
}

#[tokio::test]
async fn h10_app_crashed() {
    let r = TestRouter::default().await;
    r.table.set("app", AppRoute::Crashed);
    let reply = r.get("app.localhost", "/").await;
    let f = expect_error(&r, &reply, "H10", "App crashed").await;
    assert_eq!(f["dyno"], "");
    assert_eq!(f["connect"], "");
    assert_eq!(f["service"], "");
    assert_eq!(f["bytes"], "");
}

#[tokio::test]
async fn h14_no_web_dynos() {
    let r = TestRouter::default().await;
    r.table.set("app", AppRoute::NoWebDynos);
    let reply = r.get("app.localhost", "/").await;
    expect_error(&r, &reply, "H14", "No web dynos running").await;
}

#[tokio::test]
async fn h12_request_timeout_closes_the_dyno_connection() {
    let r = TestRouter::start(RouterConfig {
        request_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    })
    .await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        // Read the request, never answer, report when the router hangs up.
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    r.table.set(
        "app",
        AppRoute::Serving(vec![Backend {
            id: "1".into(),
            name: "web.1".into(),
            addr,
        }]),
    );
    let reply = r.get("app.localhost", "/slow").await;
    let f = expect_error(&r, &reply, "H12", "Request timeout").await;
    assert_eq!(f["dyno"], "web.1");
    assert_eq!(f["bytes"], "0");
    let service: u64 = f["service"].trim_end_matches("ms").parse().expect("ms");
    assert!(service >= 300, "{service}");
    tokio::time::timeout(Duration::from_secs(10), closed_rx.recv())
        .await
        .expect("the router closed the dyno connection");
}

/// A raw backend that reads the request head, then does `then` with the socket.
async fn raw_backend<F, Fut>(then: F) -> Backend
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let then = std::sync::Arc::new(then);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let then = then.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                then(stream).await;
            });
        }
    });
    Backend {
        id: "raw".into(),
        name: "web.1".into(),
        addr,
    }
}

#[tokio::test]
async fn h13_connection_closed_without_response() {
    let r = TestRouter::default().await;
    let b = raw_backend(|stream| async move { drop(stream) }).await;
    r.table.set("app", AppRoute::Serving(vec![b]));
    let reply = r.get("app.localhost", "/").await;
    let f = expect_error(&r, &reply, "H13", "Connection closed without response").await;
    assert_eq!(f["dyno"], "web.1");
}

/// A dyno that closes the connection without answering (killed mid-request) costs a GET
/// without a body nothing: it is sent again (here to the same dyno, restarted). Anything with
/// a body may have had its effect, so it gets H13, sent once.
#[tokio::test]
async fn a_bodiless_get_is_sent_again_when_the_dyno_closed_without_answering() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let r = TestRouter::default().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let b = raw_backend(move |mut stream| {
        let first = counter.fetch_add(1, SeqCst) == 0;
        async move {
            if !first {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        }
    })
    .await;
    r.table.set("app", AppRoute::Serving(vec![b]));
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "ok");
    assert_eq!(seen.load(SeqCst), 2, "sent twice");

    let posts = Arc::new(AtomicUsize::new(0));
    let counter = posts.clone();
    let b = raw_backend(move |stream| {
        counter.fetch_add(1, SeqCst);
        async move { drop(stream) }
    })
    .await;
    r.table.set("post", AppRoute::Serving(vec![b]));
    let mut client = r.client().await;
    let reply = client
        .read(request("POST", "post.localhost", "/", full("x")))
        .await;
    expect_error(&r, &reply, "H13", "Connection closed without response").await;
    assert_eq!(
        posts.load(SeqCst),
        1,
        "a request with a body is not sent again"
    );
}

#[tokio::test]
async fn h18_dyno_closed_mid_response() {
    let r = TestRouter::default().await;
    let b = raw_backend(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
            .await;
        drop(stream);
    })
    .await;
    r.table.set("app", AppRoute::Serving(vec![b]));
    let mut client = r.client().await;
    let response = client
        .send(request("GET", "app.localhost", "/", empty()))
        .await;
    assert_eq!(response.status(), 200, "the head was already relayed");
    assert!(
        response.into_body().collect().await.is_err(),
        "truncated body"
    );
    let line = r.hooks.wait_line(|l| l.contains("code=H18")).await;
    let f = parse_line(&line);
    assert_eq!(f["desc"], "Server Request Interrupted");
    assert_eq!(f["bytes"], "10");
}

#[tokio::test]
async fn h15_idle_dyno_mid_response() {
    let r = TestRouter::start(RouterConfig {
        idle_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    })
    .await;
    let b = raw_backend(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    r.table.set("app", AppRoute::Serving(vec![b]));
    let mut client = r.client().await;
    let response = client
        .send(request("GET", "app.localhost", "/", empty()))
        .await;
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());
    let line = r.hooks.wait_line(|l| l.contains("code=H15")).await;
    let f = parse_line(&line);
    assert_eq!(f["desc"], "Idle connection");
    assert_eq!(f["bytes"], "5");
}

#[tokio::test]
async fn h21_connection_refused() {
    let r = TestRouter::default().await;
    let dead = closed_port().await;
    r.table.set(
        "app",
        AppRoute::Serving(vec![Backend {
            id: "dead".into(),
            name: "web.1".into(),
            addr: dead,
        }]),
    );
    let reply = r.get("app.localhost", "/").await;
    let f = expect_error(&r, &reply, "H21", "Backend connection refused").await;
    assert_eq!(f["dyno"], "web.1");
    assert_eq!(f["service"], "");
    assert_eq!(f["bytes"], "");
}

#[tokio::test]
async fn h19_connection_timeout() {
    let r = TestRouter::start(RouterConfig {
        connect_timeout: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    // A listener whose accept queue is full and never accepted: further SYNs are dropped,
    // so connecting neither succeeds nor is refused.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect: {e}"),
            Err(_) => break,
        }
        assert!(queued.len() < 100, "the accept queue never filled");
    }
    r.table.set(
        "app",
        AppRoute::Serving(vec![Backend {
            id: "void".into(),
            name: "web.1".into(),
            addr,
        }]),
    );
    let reply = r.get("app.localhost", "/").await;
    expect_error(&r, &reply, "H19", "Backend connection timeout").await;
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_dyno() {
    let r = TestRouter::default().await;
    let live = hello("live").await;
    let dead = closed_port().await;
    r.table.set(
        "app",
        AppRoute::Serving(vec![
            Backend {
                id: "dead".into(),
                name: "web.1".into(),
                addr: dead,
            },
            live.backend("live", "web.2"),
        ]),
    );
    for _ in 0..20 {
        let reply = r.get("app.localhost", "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "live");
    }
    assert!(r.hooks.lines().iter().all(|l| l.contains("dyno=web.2 ")));
}

#[tokio::test]
async fn a_request_is_never_retried_once_sent() {
    let r = TestRouter::default().await;
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let closing = raw_backend(move |stream| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { drop(stream) }
    })
    .await;
    let live = hello("live").await;
    r.table.set(
        "app",
        AppRoute::Serving(vec![closing, live.backend("live", "web.2")]),
    );
    let mut h13 = 0;
    for _ in 0..20 {
        // With a body: a bodiless GET or HEAD is sent again (see the test above).
        let mut client = r.client().await;
        let reply = client
            .read(request("POST", "app.localhost", "/", full("x")))
            .await;
        if reply.status == 503 {
            h13 += 1;
        }
    }
    assert_eq!(
        h13,
        hits.load(std::sync::atomic::Ordering::SeqCst),
        "every request the closing dyno got failed, none was replayed elsewhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h27_client_gone_before_the_response() {
    let r = TestRouter::default().await;
    let slow = backend(|_req| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    })
    .await;
    r.table.set("app", serving(&[slow.backend("1", "web.1")]));
    let mut stream = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /wait HTTP/1.1\r\nhost: app.localhost\r\n\r\n")
        .await
        .expect("write");
    eventually("in flight", || r.table.in_flight("1") == 1).await;
    drop(stream);
    let line = r.hooks.wait_line(|l| l.contains("code=H27")).await;
    let f = parse_line(&line);
    assert_eq!(f["at"], "info");
    assert_eq!(f["desc"], "Client Request Interrupted");
    assert_eq!(f["status"], "499");
    eventually("released", || r.table.in_flight("1") == 0).await;
}

#[tokio::test]
async fn h28_client_idle_mid_upload() {
    let r = TestRouter::start(RouterConfig {
        idle_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    })
    .await;
    let echo = backend(|req| async move {
        let body = req.into_body().map_err(|e| -> BoxError { Box::new(e) });
        Response::new(body.boxed())
    })
    .await;
    r.table.set("app", serving(&[echo.backend("1", "web.1")]));
    let mut stream = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nhost: app.localhost\r\ncontent-length: 100\r\n\r\nten bytes!",
        )
        .await
        .expect("write");
    let line = r.hooks.wait_line(|l| l.contains("code=H28")).await;
    let f = parse_line(&line);
    assert_eq!(f["desc"], "Client Connection Idle");
    assert_eq!(f["status"], "499");
    drop(stream);
}

#[tokio::test]
async fn connect_method_is_refused() {
    let r = TestRouter::default().await;
    let mut stream = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"CONNECT example.org:443 HTTP/1.1\r\nhost: example.org:443\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.expect("read");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 405"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
