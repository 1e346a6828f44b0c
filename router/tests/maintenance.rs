//! What the router answers itself: Heroku's maintenance page (H80) for an app in
//! maintenance mode, and ACME HTTP-01 challenges the scheduler published.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use manifold_router::AppRoute;

#[tokio::test]
async fn maintenance_answers_503_with_the_page_and_logs_h80() {
    let r = TestRouter::default().await;
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let b = backend(move |_req| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { hyper::Response::new(full("app")) }
    })
    .await;
    r.table.set("app", AppRoute::Maintenance);
    let reply = r.get("app.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("Offline for Maintenance"),
        "{}",
        reply.text()
    );
    let line = r.hooks.wait_line(|l| l.contains("code=H80")).await;
    let fields = parse_line(&line);
    assert_eq!(
        fields["at"], "info",
        "maintenance is not an error of the app"
    );
    assert_eq!(fields["desc"], "Maintenance mode");
    assert_eq!(fields["status"], "503");

    // Off again: requests reach the dyno, which never saw one meanwhile.
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    r.table.set("app", serving(&[b.backend("1", "web.1")]));
    assert_eq!(r.get("app.localhost", "/").await.text(), "app");
}

#[tokio::test]
async fn held_requests_get_the_maintenance_page_when_it_starts() {
    let r = TestRouter::default().await;
    r.table.set("app", AppRoute::Booting);
    let addr = r.addr;
    let held =
        tokio::spawn(async move { Client::connect(addr).await.get("app.localhost", "/").await });
    eventually("the request is held", || r.table.held("app") == 1).await;
    r.table.set("app", AppRoute::Maintenance);
    assert_eq!(held.await.expect("reply").status, 503);
}

#[tokio::test]
async fn acme_challenges_are_answered_on_any_host_and_unknown_tokens_go_to_the_app() {
    let r = TestRouter::default().await;
    let b = hello("from the app").await;
    r.table.set("app", serving(&[b.backend("1", "web.1")]));
    r.table
        .set_domains([("www.example.com".to_owned(), "app".to_owned())].into());
    r.table
        .set_challenges([("tok-1".to_owned(), "tok-1.thumbprint".to_owned())].into());
    for host in ["www.example.com", "unknown.example.org", "app.localhost"] {
        let reply = r.get(host, "/.well-known/acme-challenge/tok-1").await;
        assert_eq!(reply.status, 200, "{host}");
        assert_eq!(reply.text(), "tok-1.thumbprint");
    }
    let reply = r
        .get("www.example.com", "/.well-known/acme-challenge/other")
        .await;
    assert_eq!(reply.text(), "from the app");
    r.table.set_challenges(Default::default());
    let reply = r
        .get("unknown.example.org", "/.well-known/acme-challenge/tok-1")
        .await;
    assert_eq!(reply.status, 404, "withdrawn");
}
