//! Proxying that works: balancing, headers, keep-alive, chunked bodies, WebSockets, table
//! updates, log lines and metrics.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use manifold_router::AppRoute;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_random_choices_spreads_over_every_backend() {
    let r = TestRouter::default().await;
    let a = hello("a").await;
    let b = hello("b").await;
    let c = hello("c").await;
    r.table.set(
        "app",
        serving(&[
            a.backend("1", "web.1"),
            b.backend("2", "web.2"),
            c.backend("3", "web.3"),
        ]),
    );
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let addr = r.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut seen = Vec::new();
            for _ in 0..30 {
                let reply = client.get("app.localhost", "/").await;
                assert_eq!(reply.status, 200);
                seen.push(reply.text());
            }
            seen
        }));
    }
    let mut counts = std::collections::HashMap::new();
    for task in tasks {
        for body in task.await.expect("task") {
            *counts.entry(body).or_insert(0) += 1;
        }
    }
    for name in ["a", "b", "c"] {
        assert!(counts.get(name).copied().unwrap_or(0) > 0, "{counts:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), 300);
    for name in ["web.1", "web.2", "web.3"] {
        let dyno = format!("dyno={name} ");
        assert!(r.hooks.lines().iter().any(|l| l.contains(&dyno)), "{name}");
    }
    assert_eq!(r.hooks.requests.lock().expect("lock").len(), 300);
}

/// A backend that answers with the request headers it got, one `name: value` per line.
async fn header_echo() -> TestBackend {
    backend(|req| async move {
        let mut text = String::new();
        for (name, value) in req.headers() {
            text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
        }
        Response::new(full(text))
    })
    .await
}

fn header_of(echo: &str, name: &str) -> Vec<String> {
    echo.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
        .collect()
}

#[tokio::test]
async fn adds_forwarding_headers() {
    let r = TestRouter::default().await;
    let echo = header_echo().await;
    r.table.set("app", serving(&[echo.backend("1", "web.1")]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_millis();

    let reply = r.get("app.localhost:9999", "/x?y=1").await;
    assert_eq!(reply.status, 200);
    let echo_text = reply.text();
    let id = &header_of(&echo_text, "x-request-id")[0];
    assert_eq!(id.len(), 36, "a fresh uuid: {id}");
    assert_eq!(header_of(&echo_text, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header_of(&echo_text, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        header_of(&echo_text, "x-forwarded-port"),
        [r.addr.port().to_string()]
    );
    assert_eq!(header_of(&echo_text, "via"), ["1.1 manifold"]);
    assert_eq!(header_of(&echo_text, "host"), ["app.localhost:9999"]);
    let start: u128 = header_of(&echo_text, "x-request-start")[0]
        .parse()
        .expect("ms");
    assert!(start >= before && start < before + 60_000);
    assert_eq!(reply.headers["via"], "1.1 manifold");

    // A valid incoming id is kept, the chain is appended to, an invalid id is replaced.
    let valid = "abcdefghij0123456789+/=-kept";
    let mut client = r.client().await;
    let mut req = request("GET", "app.localhost", "/", empty());
    req.headers_mut()
        .insert("x-request-id", valid.parse().expect("value"));
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.9".parse().expect("value"));
    let echo_text = client.read(req).await.text();
    assert_eq!(header_of(&echo_text, "x-request-id"), [valid]);
    assert_eq!(
        header_of(&echo_text, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    let line = r.hooks.wait_line(|l| l.contains(valid)).await;
    assert_eq!(parse_line(&line)["fwd"], "203.0.113.9, 127.0.0.1");

    let mut req = request("GET", "app.localhost", "/", empty());
    req.headers_mut()
        .insert("x-request-id", "too-short".parse().expect("value"));
    let echo_text = client.read(req).await.text();
    let id = &header_of(&echo_text, "x-request-id")[0];
    assert_ne!(id, "too-short");
    assert_eq!(id.len(), 36);
}

#[tokio::test]
async fn keeps_connections_alive_on_both_sides() {
    let r = TestRouter::default().await;
    let a = hello("a").await;
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    let mut client = r.client().await;
    for _ in 0..20 {
        assert_eq!(client.get("app.localhost", "/").await.status, 200);
    }
    assert_eq!(
        a.connections.load(Ordering::SeqCst),
        1,
        "the router reused its pooled connection to the dyno"
    );
    let lines = r.hooks.lines();
    assert_eq!(lines.len(), 20);
    assert!(lines[1..].iter().all(|l| l.contains("connect=0ms")));
}

/// A backend that streams the request body back.
async fn body_echo() -> TestBackend {
    backend(|req| async move {
        let body = req.into_body().map_err(|e| -> BoxError { Box::new(e) });
        Response::new(body.boxed())
    })
    .await
}

#[tokio::test]
async fn chunked_upload_is_echoed() {
    let r = TestRouter::default().await;
    let echo = body_echo().await;
    r.table.set("app", serving(&[echo.backend("1", "web.1")]));
    let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..50)
        .map(|i| Ok(Frame::data(Bytes::from(format!("chunk {i};")))))
        .collect();
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let req = request("POST", "app.localhost", "/echo", body);
    assert!(req.headers().get("content-length").is_none());
    let reply = r.client().await.read(req).await;
    assert_eq!(reply.status, 200);
    let expected: String = (0..50).map(|i| format!("chunk {i};")).collect();
    assert_eq!(reply.text(), expected);
    let line = r.hooks.wait_line(|l| l.contains("path=\"/echo\"")).await;
    assert_eq!(parse_line(&line)["bytes"], expected.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_router() {
    let r = TestRouter::default().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream)
                    .await
                    .expect("accept ws");
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.expect("echo");
                    }
                }
            });
        }
    });
    r.table.set(
        "app",
        AppRoute::Serving(vec![manifold_router::Backend {
            id: "ws".into(),
            name: "web.1".into(),
            addr: ws_addr,
        }]),
    );
    let stream = TcpStream::connect(r.addr).await.expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async("ws://app.localhost/socket", stream)
        .await
        .expect("handshake through the router");
    assert_eq!(response.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}")))
            .await
            .expect("send");
        let echoed = ws.next().await.expect("message").expect("ok");
        assert_eq!(
            echoed.into_text().expect("text").as_str(),
            format!("hello {i}")
        );
    }
    assert_eq!(r.table.in_flight("ws"), 1, "an open WebSocket is in flight");
    ws.close(None).await.expect("close");
    drop(ws);
    eventually("websocket leaves in-flight", || {
        r.table.in_flight("ws") == 0
    })
    .await;
    let line = r.hooks.wait_line(|l| l.contains("status=101")).await;
    assert_eq!(parse_line(&line)["dyno"], "web.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_to_a_removed_backend_completes() {
    let r = TestRouter::default().await;
    let (release, released) = tokio::sync::watch::channel(false);
    let slow = backend(move |_req| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Response::new(full("slow done"))
        }
    })
    .await;
    let other = hello("other").await;
    r.table
        .set("app", serving(&[slow.backend("slow", "web.1")]));
    let addr = r.addr;
    let pending =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("request in flight", || r.table.in_flight("slow") == 1).await;

    r.table
        .set("app", serving(&[other.backend("other", "web.2")]));
    assert_eq!(r.get("app.localhost", "/").await.text(), "other");
    assert_eq!(r.table.in_flight("slow"), 1, "still draining");
    release.send_replace(true);
    let reply = pending.await.expect("task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow done");
    eventually("drained", || r.table.in_flight("slow") == 0).await;

    r.table.remove("app");
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn unknown_host_is_404_naming_the_host() {
    let r = TestRouter::default().await;
    let reply = r.get("nope.localhost", "/").await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().contains("nope.localhost"), "{}", reply.text());
    assert!(reply.text().contains("No such app"));
    let reply = r.get("example.org", "/").await;
    assert_eq!(reply.status, 404);
    assert!(r.hooks.lines().is_empty(), "no app, no app log");
    assert!(r
        .router
        .metrics()
        .contains("manifold_router_requests_total{status=\"404\"} 2"));
}

#[tokio::test]
async fn log_lines_follow_herokus_format() {
    let r = TestRouter::default().await;
    let a = hello("Hello, world!").await;
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    r.get("App.Localhost", "/hi?x=1").await;
    let line = r.hooks.wait_line(|l| l.contains("path=\"/hi?x=1\"")).await;
    let f = parse_line(&line);
    assert_eq!(f["at"], "info");
    assert_eq!(f["method"], "GET");
    assert_eq!(f["host"], "app.localhost");
    assert_eq!(f["fwd"], "127.0.0.1");
    assert_eq!(f["dyno"], "web.1");
    assert!(
        f["connect"].ends_with("ms")
            && f["connect"][..f["connect"].len() - 2]
                .parse::<u64>()
                .is_ok()
    );
    assert!(f["service"].ends_with("ms"));
    assert_eq!(f["status"], "200");
    assert_eq!(f["bytes"], "13");
    assert_eq!(f["protocol"], "http");
    assert_eq!(f["request_id"].len(), 36);
    let (app, _) = r.hooks.logs.lock().expect("lock")[0].clone();
    assert_eq!(app, "app");
}

#[tokio::test]
async fn metrics_count_requests_and_errors() {
    let r = TestRouter::default().await;
    let a = hello("a").await;
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    r.table.set("down", AppRoute::NoWebDynos);
    for _ in 0..3 {
        r.get("app.localhost", "/").await;
    }
    r.get("down.localhost", "/").await;
    r.hooks.wait_line(|l| l.contains("H14")).await;
    eventually("all logged", || r.hooks.lines().len() == 4).await;
    let text = r.router.metrics();
    assert!(
        text.contains("manifold_router_requests_total{status=\"200\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("manifold_router_requests_total{status=\"503\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("manifold_router_errors_total{code=\"H14\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("manifold_router_request_duration_seconds_count 4\n"),
        "{text}"
    );
    assert!(text.contains("manifold_router_in_flight 0\n"), "{text}");
    assert!(text.contains("# TYPE manifold_router_request_duration_seconds histogram"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut r = TestRouter::default().await;
    let slow = backend(|_req| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(full("finished"))
    })
    .await;
    r.table.set("app", serving(&[slow.backend("1", "web.1")]));
    let addr = r.addr;
    let pending =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("in flight", || r.table.in_flight("1") == 1).await;
    r.shutdown();
    let reply = pending.await.expect("task");
    assert_eq!(reply.text(), "finished");
    tokio::time::timeout(Duration::from_secs(10), &mut r.served)
        .await
        .expect("serve returns")
        .expect("task")
        .expect("serve ok");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_the_callers_runtime_without_router_threads() {
    let mut r = TestRouter::start(manifold_router::RouterConfig {
        workers: 0,
        ..manifold_router::RouterConfig::default()
    })
    .await;
    let a = hello("a").await;
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    let mut client = r.client().await;
    for _ in 0..5 {
        assert_eq!(client.get("app.localhost", "/").await.text(), "a");
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    drop(client);
    r.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut r.served)
        .await
        .expect("serve returns")
        .expect("task")
        .expect("serve ok");
}
