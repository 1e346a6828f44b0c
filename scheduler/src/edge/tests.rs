//! The edge through the REST API: domains, certificates and maintenance mode, with hostile
//! input; and a router process that gets the certificates over the routes wire and serves
//! them in real TLS handshakes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::edge::inspect::tests::make;
use crate::testing::{settings, Harness};

/// A harness whose router certificate comes from a fresh cluster CA.
async fn harness() -> (Harness, tempfile::TempDir) {
    let ca = tempfile::tempdir().expect("tempdir");
    crate::certs::create_ca(ca.path(), false, 30).expect("ca");
    let mut settings = settings(Duration::from_secs(5));
    settings.default_cert = DefaultCert::ClusterCa(ca.path().to_path_buf());
    (Harness::new(settings).await, ca)
}

fn message(body: &Value) -> String {
    body["message"].as_str().unwrap_or_default().to_owned()
}

async fn add_cert(h: &Harness, app: &str, chain: &str, key: &str) -> (StatusCode, Value) {
    h.api(
        Method::POST,
        &format!("/apps/{app}/sni-endpoints"),
        json!({"certificate_chain": chain, "private_key": key}),
    )
    .await
}

#[tokio::test]
async fn domains_are_validated_owned_by_one_app_and_routed() {
    let (h, _ca) = harness().await;
    for app in ["web", "other"] {
        let (status, _) = h.api(Method::POST, "/apps", json!({"name": app})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let add = |app: &'static str, name: &'static str| {
        let path = format!("/apps/{app}/domains");
        let h = &h;
        async move { h.api(Method::POST, &path, json!({"hostname": name})).await }
    };
    let (status, body) = add("web", "WWW.Example.com.").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["hostname"], "www.example.com");

    let (status, body) = add("other", "www.example.com").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(message(&body), "www.example.com is already a domain of web");
    for (bad, why) in [
        ("bad_name.example.com", "only letters"),
        ("localhost", "two labels"),
        ("a..example.com", "empty label"),
        ("*.example.com", "wildcard"),
        ("10.0.0.1", "IP address"),
        ("other.localhost", "cluster's own domain"),
    ] {
        let (status, body) = h
            .api(Method::POST, "/apps/web/domains", json!({"hostname": bad}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert!(message(&body).contains(why), "{bad}: {body}");
    }
    let (status, _) = h
        .api(
            Method::POST,
            "/apps/web/domains",
            json!({"name": "x.example.com"}),
        )
        .await;
    assert!(status.is_client_error(), "unknown field refused");
    let (status, _) = add("nosuch", "x.example.com").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, list) = h.api(Method::GET, "/apps/web/domains", json!(null)).await;
    assert_eq!(list[0]["hostname"], "web.localhost");
    assert_eq!(list[0]["kind"], "default");
    assert_eq!(list[1]["hostname"], "www.example.com");
    let published = h.core.routing.published().edge;
    assert_eq!(published.domains["www.example.com"], "web");

    let (status, body) = h
        .api(
            Method::DELETE,
            "/apps/other/domains/www.example.com",
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = h
        .api(
            Method::DELETE,
            "/apps/web/domains/www.example.com",
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.core.routing.published().edge.domains.is_empty());
}

#[tokio::test]
async fn the_default_certificate_names_every_app_and_follows_them() {
    let (h, _ca) = harness().await;
    h.api(Method::POST, "/apps", json!({"name": "web"})).await;
    let names = |h: &Harness| h.core.routing.published().edge.certs[0].names.clone();
    assert_eq!(names(&h), ["localhost", "*.localhost", "web.localhost"]);
    h.api(Method::POST, "/apps", json!({"name": "two"})).await;
    assert!(names(&h).contains(&"two.localhost".to_owned()));
    h.api(Method::DELETE, "/apps/two", json!(null)).await;
    assert!(!names(&h).contains(&"two.localhost".to_owned()));
    let stored = h.core.store.certs(None).await.expect("certs");
    assert_eq!(
        stored.len(),
        1,
        "one default certificate, re-issued in place"
    );
    assert_eq!(stored[0].source, CertSource::Default);
}

#[tokio::test]
async fn uploaded_certificates_are_checked_listed_without_keys_and_removed() {
    let (h, _ca) = harness().await;
    h.api(Method::POST, "/apps", json!({"name": "web"})).await;
    h.api(Method::POST, "/apps", json!({"name": "other"})).await;
    let (chain, key) = make(&["www.example.com", "other.example.com"], -1, 90);

    let (status, body) = add_cert(&h, "web", &chain, &key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message(&body).contains("covers none of web's domains (it has none)"),
        "{body}"
    );

    for (app, name) in [("web", "www.example.com"), ("other", "other.example.com")] {
        h.api(
            Method::POST,
            &format!("/apps/{app}/domains"),
            json!({"hostname": name}),
        )
        .await;
    }
    let (_, other_key) = make(&["www.example.com"], -1, 90);
    let (old, old_key) = make(&["www.example.com"], -90, -1);
    for (chain, key, why) in [
        (chain.as_str(), other_key.as_str(), "does not match"),
        (old.as_str(), old_key.as_str(), "expired"),
        ("garbage", key.as_str(), "holds no certificate"),
        (chain.as_str(), "garbage", "not a PEM private key"),
    ] {
        let (status, body) = add_cert(&h, "web", chain, key).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}");
        assert!(message(&body).contains(why), "{why}: {body}");
        assert!(!body.to_string().contains("PRIVATE KEY"), "{body}");
    }
    let huge = "A".repeat(crate::http::JSON_LIMIT + 1);
    let (status, _) = add_cert(&h, "web", &huge, &key).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, body) = add_cert(&h, "web", &"A".repeat(100_000), &key).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message(&body).contains("larger than"), "{body}");

    let (status, body) = add_cert(&h, "web", &chain, &key).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["source"], "uploaded");
    assert_eq!(body["status"], "active");
    assert_eq!(body["domains"], json!(["www.example.com"]));
    let (_, list) = h
        .api(Method::GET, "/apps/web/sni-endpoints", json!(null))
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert!(list[0]["issuer"].as_str().is_some_and(|i| !i.is_empty()));
    assert!(!list.to_string().contains("PRIVATE KEY"), "{list}");

    // Served for web's own domain only, though it also names other's.
    let served = h.core.routing.published().edge.certs;
    assert_eq!(served.last().expect("uploaded").names, ["www.example.com"]);

    let id = body["id"].as_str().expect("id").to_owned();
    let (status, _) = h
        .api(
            Method::DELETE,
            &format!("/apps/other/sni-endpoints/{id}"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not other's certificate");
    let (status, _) = h
        .api(
            Method::DELETE,
            "/apps/web/sni-endpoints/not-an-id",
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .api(
            Method::DELETE,
            &format!("/apps/web/sni-endpoints/{id}"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.core.routing.published().edge.certs.len(),
        1,
        "the default"
    );
}

#[tokio::test]
async fn maintenance_mode_is_stored_and_routed() {
    let (h, _ca) = harness().await;
    h.deployed("demo", &[("web", "serve")]).await;
    let (status, body) = h
        .api(Method::PATCH, "/apps/demo", json!({"maintenance": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["maintenance"], true);
    h.core.reconcile().await.expect("reconcile");
    assert_eq!(
        h.route("demo"),
        Some(manifold_router::AppRoute::Maintenance)
    );
    let (status, _) = h
        .api(Method::PATCH, "/apps/demo", json!({"maintenance": "yes"}))
        .await;
    assert!(status.is_client_error());
    let (_, body) = h
        .api(Method::PATCH, "/apps/demo", json!({"maintenance": false}))
        .await;
    assert_eq!(body["maintenance"], false);
    h.core.reconcile().await.expect("reconcile");
    assert_ne!(
        h.route("demo"),
        Some(manifold_router::AppRoute::Maintenance)
    );
}

/// A TLS handshake with `sni`, trusting `roots`: the leaf the router served.
async fn served_leaf(
    addr: std::net::SocketAddr,
    sni: &str,
    roots: &[CertificateDer<'static>],
) -> Option<CertificateDer<'static>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(manifold_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).ok()?, tcp)
        .await
        .ok()?;
    tls.get_ref().1.peer_certificates().map(|c| c[0].clone())
}

/// The harness's API on a socket and a router process following it (with an HTTPS listener
/// if `tls`): the HTTP and HTTPS addresses, and a stop for both.
struct Following {
    http: std::net::SocketAddr,
    tls: Option<std::net::SocketAddr>,
    stop_router: tokio::sync::oneshot::Sender<()>,
    stop_api: tokio::sync::oneshot::Sender<()>,
    follower: tokio::task::JoinHandle<std::io::Result<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Following {
    async fn start(h: &Harness, tls: bool) -> Following {
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api_addr = api.local_addr().expect("addr");
        let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::run(
            h.core.clone(),
            api,
            crate::server::RouterListeners::default(),
            async move {
                let _ = api_stopped.await;
            },
        ));
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http_addr = http.local_addr().expect("addr");
        let https = match tls {
            true => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind")),
            false => None,
        };
        let tls_addr = https.as_ref().map(|l| l.local_addr().expect("addr"));
        let (stop_router, router_stopped) = tokio::sync::oneshot::channel::<()>();
        let follower = tokio::spawn(crate::followers::run(
            crate::followers::FollowConfig {
                scheduler: manifold_endpoints::Endpoints::parse(&format!("http://{api_addr}"))
                    .expect("url"),
                token: "follower-token".into(),
                router: manifold_router::RouterConfig {
                    workers: 0,
                    shutdown_grace: Duration::from_millis(100),
                    ..Default::default()
                },
                client: reqwest::Client::new(),
            },
            http,
            https,
            async move {
                let _ = router_stopped.await;
            },
        ));
        Following {
            http: http_addr,
            tls: tls_addr,
            stop_router,
            stop_api,
            follower,
            server,
        }
    }

    async fn stop(self) {
        let _ = self.stop_router.send(());
        self.follower.await.expect("join").expect("router stopped");
        let _ = self.stop_api.send(());
        let _ = tokio::time::timeout(Duration::from_secs(15), self.server).await;
    }
}

#[tokio::test]
async fn a_router_process_gets_certificates_over_the_wire() {
    let (h, ca) = harness().await;
    h.api(Method::POST, "/apps", json!({"name": "web"})).await;
    h.api(
        Method::POST,
        "/apps/web/domains",
        json!({"hostname": "www.example.com"}),
    )
    .await;
    let (chain, key) = make(&["www.example.com"], -1, 90);
    let (status, _) = add_cert(&h, "web", &chain, &key).await;
    assert_eq!(status, StatusCode::CREATED);

    let following = Following::start(&h, true).await;
    let tls_addr = following.tls.expect("an HTTPS listener");

    let uploaded = CertificateDer::from_pem_slice(chain.as_bytes()).expect("pem");
    let cluster_ca = CertificateDer::from_pem_file(ca.path().join("ca.pem")).expect("cluster CA");
    let mut got = None;
    for _ in 0..500 {
        got = served_leaf(tls_addr, "www.example.com", std::slice::from_ref(&uploaded)).await;
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, Some(uploaded), "the uploaded certificate, by SNI");
    // The default certificate, from the cluster CA, for the app's default name.
    assert!(
        served_leaf(tls_addr, "web.localhost", std::slice::from_ref(&cluster_ca))
            .await
            .is_some()
    );
    assert!(served_leaf(tls_addr, "nosuch.example.org", &[cluster_ca])
        .await
        .is_none());
    following.stop().await;
}

/// An ACME challenge is answered by a router following from another process as soon as the
/// board says it settled: the ACME server is told to look only then.
#[tokio::test]
async fn a_following_router_answers_a_challenge_once_the_board_settled() {
    use crate::acme::order::ChallengeBoard;

    let (h, _ca) = harness().await;
    let following = Following::start(&h, false).await;
    let http_addr = following.http;
    let client = reqwest::Client::new();
    let answer = |token: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!(
                    "http://{http_addr}/.well-known/acme-challenge/{token}"
                ))
                .header("host", "www.example.com")
                .send()
                .await
                .expect("GET");
            (r.status(), r.text().await.unwrap_or_default())
        }
    };

    let board = acm::RoutingBoard::new(h.core.routing.clone());
    // The follower is following once it answers a first challenge.
    board.publish("first", "first.key-authorization");
    let mut first = (StatusCode::NOT_FOUND, String::new());
    for _ in 0..500 {
        first = answer("first").await;
        if first.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.1, "first.key-authorization");

    for round in 0..5 {
        board.publish("second", "second.key-authorization");
        board.settled().await;
        assert!(
            h.core.routing.followers_caught_up(Duration::ZERO).await,
            "round {round}: settled with a follower behind"
        );
        // No retry: settled means answered.
        assert_eq!(
            answer("second").await,
            (StatusCode::OK, "second.key-authorization".to_owned()),
            "round {round}"
        );
        board.withdraw("second");
        board.settled().await;
        assert_ne!(answer("second").await.1, "second.key-authorization");
    }
    following.stop().await;
}
