//! A following router across a failover, against real schedulers' APIs on sockets: a
//! follower replica (answering as the contract says: 503 naming the leader) sends it to the
//! leader; when that leader goes, the follower names the new one, whose route table has a
//! version of its own that happens to equal the old one's, and the router takes its whole
//! table anyway (an `?after=` from the old leader would have hidden it). And a log plex
//! process whose leader's firehose ends follows the new leader's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use manifold_endpoints::{Endpoints, LEADER_HEADER, NOT_LEADER};
use tokio::net::TcpListener;

use crate::testing::{settings, Harness};

/// A scheduler's API on a socket until `stop` is sent; returns its URL.
async fn serve_api(h: &Harness) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::server::run(
        h.core.clone(),
        listener,
        crate::server::RouterListeners::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    (url, stop)
}

/// A follower replica: every request gets the contract's 503, naming `leader`.
async fn serve_follower(leader: Arc<Mutex<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().fallback(move || {
        let leader = leader.lock().expect("lock").clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(LEADER_HEADER, leader.parse().expect("header"));
            let body = serde_json::json!({
                "id": NOT_LEADER,
                "message": format!("this scheduler is not the leader; the leader is at {leader}"),
            });
            (StatusCode::SERVICE_UNAVAILABLE, headers, axum::Json(body))
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The router's answer to the ACME challenge `token` (for any host).
async fn challenge(router: std::net::SocketAddr, token: &str) -> String {
    let answer = reqwest::Client::new()
        .get(format!(
            "http://{router}/.well-known/acme-challenge/{token}"
        ))
        .header("host", "www.example.com")
        .send()
        .await;
    match answer {
        Ok(r) if r.status() == StatusCode::OK => r.text().await.unwrap_or_default(),
        Ok(r) => r.status().to_string(),
        Err(err) => err.to_string(),
    }
}

/// Asks the router until it answers `token` with `expected` (30 s at most).
async fn until_answers(router: std::net::SocketAddr, token: &str, expected: &str) {
    let mut got = String::new();
    for _ in 0..1500 {
        got = challenge(router, token).await;
        if got == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the router answers {token} with {got:?}, not {expected:?}");
}

fn challenges(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_following_router_takes_the_new_leaders_whole_table_after_a_failover() {
    let old = Harness::new(settings(Duration::from_secs(5))).await;
    let new = Harness::new(settings(Duration::from_secs(5))).await;
    old.core
        .routing
        .set_challenges(challenges(&[("tok", "old.key")]));
    // The new leader has its own history: two changes, so that its version will equal the
    // old leader's after the old one's last change below.
    new.core
        .routing
        .set_challenges(challenges(&[("tok", "new.key"), ("other", "x")]));
    new.core
        .routing
        .set_challenges(challenges(&[("tok", "new.key")]));
    let (old_url, stop_old) = serve_api(&old).await;
    let (new_url, _stop_new) = serve_api(&new).await;
    let named = Arc::new(Mutex::new(old_url.clone()));
    let follower_url = serve_follower(named.clone()).await;

    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let router = http.local_addr().expect("addr");
    let (stop_router, router_stopped) = tokio::sync::oneshot::channel::<()>();
    let config = super::FollowConfig {
        // The follower comes first: it names the old leader.
        scheduler: Endpoints::parse(&format!("{follower_url},{old_url}")).expect("urls"),
        token: "follower-token".into(),
        router: manifold_router::RouterConfig {
            workers: 0,
            shutdown_grace: Duration::from_millis(100),
            ..Default::default()
        },
        client: reqwest::Client::new(),
    };
    let following = tokio::spawn(super::run(config, http, None, async move {
        let _ = router_stopped.await;
    }));
    until_answers(router, "tok", "old.key").await;

    // The old leader goes: it stops taking connections, and its last change ends the
    // router's long poll. The follower now names the new leader.
    *named.lock().expect("lock") = new_url.clone();
    let _ = stop_old.send(());
    old.core
        .routing
        .set_challenges(challenges(&[("tok", "old.key"), ("last", "y")]));
    until_answers(router, "last", "y").await;
    assert_eq!(
        old.core.routing.published().version,
        new.core.routing.published().version,
        "the leaders' versions coincide"
    );
    until_answers(router, "tok", "new.key").await;
    assert_eq!(
        challenge(router, "last").await,
        "404 Not Found",
        "the old table is gone"
    );

    let _ = stop_router.send(());
    following.await.expect("join").expect("router");
}

/// A leader about to lose the lead: its firehose sends `line` for app `web` and ends; from
/// then on it answers as a follower naming `next`. It knows app `web` (reads work).
async fn serve_last_firehose(line: &str, next: String) -> String {
    use axum::routing::get;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let first = serde_json::to_string(&crate::logs::FirehoseLine {
        app: "web".into(),
        line: manifold_logplex::LogLine::now(manifold_logplex::Source::Heroku, "api", line),
    })
    .expect("json")
        + "\n";
    let served = Arc::new(Mutex::new(false));
    let app = axum::Router::new()
        .route(
            "/apps/web",
            get(|| async { axum::Json(serde_json::json!({"name": "web"})) }),
        )
        .route(
            "/logplex/v1/firehose",
            get(move || {
                let once = !std::mem::replace(&mut *served.lock().expect("lock"), true);
                let (first, next) = (first.clone(), next.clone());
                async move {
                    if once {
                        return (StatusCode::OK, HeaderMap::new(), first);
                    }
                    let mut headers = HeaderMap::new();
                    headers.insert(LEADER_HEADER, next.parse().expect("header"));
                    (StatusCode::SERVICE_UNAVAILABLE, headers, String::new())
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The log plex's lines for app `web` (no tail), as the CLI reads them.
async fn plex_lines(plex: std::net::SocketAddr) -> String {
    let answer = reqwest::Client::new()
        .get(format!("http://{plex}/apps/web/log-stream?lines=100"))
        .bearer_auth(crate::testing::API_TOKEN)
        .send()
        .await;
    match answer {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn a_log_plex_follows_the_new_leaders_firehose_when_the_old_ones_ends() {
    let new = Harness::new(settings(Duration::from_secs(5))).await;
    let (status, _) = new
        .api(
            axum::http::Method::POST,
            "/apps",
            serde_json::json!({"name": "web"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (new_url, _stop_new) = serve_api(&new).await;
    let follower_url = serve_follower(Arc::new(Mutex::new(new_url.clone()))).await;
    let old_url = serve_last_firehose("from the old leader", follower_url.clone()).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let plex = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The old leader first; the follower names the new one, which is not in the list.
    let following = tokio::spawn(super::run_logplex(
        Endpoints::parse(&format!("{old_url},{follower_url}")).expect("urls"),
        "follower-token".into(),
        reqwest::Client::new(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut got = String::new();
    for _ in 0..1500 {
        // The new leader's lines reach the plex once it follows that firehose.
        new.core
            .logs
            .log_platform("web", "api", "from the new leader");
        got = plex_lines(plex).await;
        if got.contains("from the new leader") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(got.contains("from the old leader"), "{got}");
    assert!(got.contains("from the new leader"), "{got}");
    let _ = stop.send(());
    following.await.expect("join").expect("logplex");
}
