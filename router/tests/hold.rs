//! Requests held while an app boots or wakes: released by the table, refused past the
//! boot hold (H20) or the backlog (H11), and freed when their client leaves.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use manifold_router::{AppRoute, RouterConfig};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_app_is_woken_and_the_request_served() {
    let r = TestRouter::default().await;
    let a = hello("awake").await;
    r.table.set("app", AppRoute::Sleeping);
    let addr = r.addr;
    let held =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("wake hook", || r.hooks.wakes.load(Ordering::SeqCst) >= 1).await;
    eventually("held", || r.table.held("app") == 1).await;
    assert!(!held.is_finished(), "held until a dyno is up");
    r.table.set("app", AppRoute::Booting);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished(), "still held while booting");
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    let reply = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("released at once")
        .expect("task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "awake");
    assert_eq!(
        r.hooks.wakes.load(Ordering::SeqCst),
        1,
        "once per held request"
    );
}

#[tokio::test]
async fn h20_boot_timeout() {
    let r = TestRouter::start(RouterConfig {
        boot_hold: Duration::from_millis(200),
        ..RouterConfig::default()
    })
    .await;
    r.table.set("app", AppRoute::Booting);
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("H20"));
    let line = r.hooks.wait_line(|l| l.contains("code=H20")).await;
    let f = parse_line(&line);
    assert_eq!(f["desc"], "App boot timeout");
    assert_eq!(f["dyno"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_backlog_too_deep_then_the_held_ones_are_served() {
    let r = TestRouter::start(RouterConfig {
        hold_limit: 2,
        ..RouterConfig::default()
    })
    .await;
    let a = hello("ok").await;
    r.table.set("app", AppRoute::Booting);
    let mut held = Vec::new();
    for _ in 0..2 {
        let addr = r.addr;
        held.push(tokio::spawn(async move {
            Client::connect(addr).await.get("app.localhost", "/").await
        }));
    }
    eventually("two requests held", || r.table.held("app") == 2).await;
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("H11"));
    let line = r.hooks.wait_line(|l| l.contains("code=H11")).await;
    assert_eq!(parse_line(&line)["desc"], "Backlog too deep");

    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    for task in held {
        assert_eq!(task.await.expect("task").status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_whose_client_leaves_frees_its_place() {
    let r = TestRouter::start(RouterConfig {
        hold_limit: 1,
        ..RouterConfig::default()
    })
    .await;
    r.table.set("app", AppRoute::Booting);
    let mut stream = tokio::net::TcpStream::connect(r.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: app.localhost\r\n\r\n")
        .await
        .expect("write");
    eventually("held", || r.table.held("app") == 1).await;
    drop(stream);
    let line = r.hooks.wait_line(|l| l.contains("code=H27")).await;
    assert_eq!(parse_line(&line)["status"], "499");
    eventually("place freed", || r.table.held("app") == 0).await;

    // The place is free again: a new request is held (not refused H11) and then served.
    let a = hello("ok").await;
    let addr = r.addr;
    let held =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("second held", || r.table.held("app") == 1).await;
    r.table.set("app", serving(&[a.backend("1", "web.1")]));
    assert_eq!(held.await.expect("task").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_follow_the_table() {
    let r = TestRouter::default().await;
    r.table.set("app", AppRoute::Booting);
    let addr = r.addr;
    let crashed =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("held", || r.table.held("app") == 1).await;
    r.table.set("app", AppRoute::Crashed);
    let reply = crashed.await.expect("task");
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("H10"));

    r.table.set("app", AppRoute::Booting);
    let removed =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("held again", || r.table.held("app") == 1).await;
    r.table.replace_all(std::collections::HashMap::new());
    assert_eq!(removed.await.expect("task").status, 404);
}
