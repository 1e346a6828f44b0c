//! Automated certificates end to end: a real scheduler (REST API and router on real
//! sockets, SQLite store) ordering from pebble, pebble validating HTTP-01 against the
//! router's HTTP listener, the certificate then served by the router's HTTPS listener.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::acme::pebble::{pebble_installed, Pebble};
use crate::testing::{settings, Harness, API_TOKEN};

/// The scheduler's REST API over its socket, as the CLI calls it.
struct Api {
    addr: SocketAddr,
    client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.addr))
            .bearer_auth(API_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        // No answer ever carries a private key.
        assert!(!text.contains("PRIVATE KEY"), "{path}: {text}");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Polls `GET path` until `done` picks something from the answer.
    async fn wait_for<T>(&self, what: &str, path: &str, done: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = self.call(Method::GET, path, None).await;
            if let Some(found) = done(&body) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The leaf the router presents in a TLS handshake with `sni`, trusting `root`.
async fn served_leaf(
    addr: SocketAddr,
    sni: &str,
    root: &CertificateDer<'static>,
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(manifold_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The app's `acme` certificate for `domain` in `GET /apps/APP/sni-endpoints`, once it
/// has left `pending`.
fn acme_cert(list: &Value, domain: &str) -> Option<Value> {
    list.as_array()?
        .iter()
        .find(|c| {
            c["source"] == "acme" && c["names"] == json!([domain]) && c["status"] != "pending"
        })
        .cloned()
}

#[tokio::test]
async fn certificates_are_issued_through_the_router_and_served_by_sni() {
    if !pebble_installed("certificates_are_issued_through_the_router_and_served_by_sni") {
        return;
    }
    let pebble = Pebble::start(false).await;
    let mut settings = settings(Duration::from_secs(5));
    settings.acme = Some(pebble.settings().config().unwrap().unwrap());
    let h = Harness::new(settings).await;
    // The router's HTTP listener is where pebble validates; HTTPS serves what was issued.
    let http = TcpListener::bind(("127.0.0.1", pebble.http_port))
        .await
        .unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = https.local_addr().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = Api {
        addr: listener.local_addr().unwrap(),
        client: reqwest::Client::new(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(
        h.core.clone(),
        listener,
        crate::server::RouterListeners {
            http: Some(http),
            https: Some(https),
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let (status, _) = api
        .call(Method::POST, "/apps", Some(json!({"name": "shop"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = api
        .call(
            Method::POST,
            "/apps/shop/domains",
            Some(json!({"hostname": "www.shop.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = api.call(Method::POST, "/apps/shop/acm", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["acm"], true);

    let cert = api
        .wait_for("the certificate", "/apps/shop/sni-endpoints", |list| {
            acme_cert(list, "www.shop.test")
        })
        .await;
    assert_eq!(cert["status"], "active", "{cert}\n{}", pebble.logs());
    assert_eq!(cert["domains"], json!(["www.shop.test"]));
    assert!(
        cert["issuer"]
            .as_str()
            .unwrap()
            .starts_with("CN=Pebble Intermediate CA"),
        "{cert}"
    );
    assert!(h.core.routing.published().edge.challenges.is_empty());
    let stored = h.core.store.certs(Some("shop")).await.unwrap();
    let chain = &stored[0].material.as_ref().unwrap().chain_pem;
    let issued = CertificateDer::from_pem_slice(chain.as_bytes()).unwrap();
    // The router presents it by SNI, and it chains to pebble's root.
    let root = pebble.root().await;
    assert_eq!(served_leaf(tls_addr, "www.shop.test", &root).await, issued);
    // The account is kept for the next scheduler, in the store only.
    let directory = &pebble.directory;
    assert!(h
        .core
        .store
        .acme_account(directory)
        .await
        .unwrap()
        .is_some());

    // A domain whose DNS does not lead to the routers: its challenge cannot succeed.
    pebble.resolve("down.shop.test", "127.0.0.2").await;
    api.call(
        Method::POST,
        "/apps/shop/domains",
        Some(json!({"hostname": "down.shop.test"})),
    )
    .await;
    let failed = api
        .wait_for("the failure", "/apps/shop/sni-endpoints", |list| {
            acme_cert(list, "down.shop.test")
        })
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let reason = failed["last_error"].as_str().unwrap();
    assert!(
        reason.starts_with("down.shop.test: HTTP-01 challenge failed: ")
            && reason.ends_with("(urn:ietf:params:acme:error:connection)"),
        "{reason}"
    );
    let (_, status) = api.call(Method::GET, "/apps/shop/acm", None).await;
    assert_eq!(status["acm"], true);
    assert_eq!(status["directory"], directory.as_str());
    let domains = status["domains"].as_array().unwrap();
    let by_name = |name: &str| domains.iter().find(|d| d["hostname"] == name).unwrap();
    assert_eq!(by_name("www.shop.test")["status"], "ok");
    assert_eq!(by_name("www.shop.test")["expires_at"], cert["expires_at"]);
    assert_eq!(by_name("down.shop.test")["status"], "failing");
    assert_eq!(by_name("down.shop.test")["reason"], reason);
    // The working domain is still served.
    assert_eq!(served_leaf(tls_addr, "www.shop.test", &root).await, issued);
    // A domain removed takes its automated certificate with it.
    let (status, _) = api
        .call(Method::DELETE, "/apps/shop/domains/down.shop.test", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = api
        .call(Method::GET, "/apps/shop/sni-endpoints", None)
        .await;
    assert!(acme_cert(&list, "down.shop.test").is_none(), "{list}");
    assert!(acme_cert(&list, "www.shop.test").is_some(), "{list}");

    // Off: the automated certificates go, and the router stops serving them.
    let (status, body) = api.call(Method::DELETE, "/apps/shop/acm", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["acm"], false);
    let (_, list) = api
        .call(Method::GET, "/apps/shop/sni-endpoints", None)
        .await;
    assert_eq!(list, json!([]));
    assert!(h.core.routing.published().edge.certs.is_empty());
    let (_, status) = api.call(Method::GET, "/apps/shop/acm", None).await;
    assert_eq!(status["domains"], json!([]));

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), server).await;
}

#[tokio::test]
async fn without_an_acme_directory_enabling_is_refused_and_nothing_changes() {
    let h = Harness::new(settings(Duration::from_secs(5))).await;
    h.api(Method::POST, "/apps", json!({"name": "shop"})).await;
    let (status, body) = h.api(Method::POST, "/apps/shop/acm", json!(null)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("--acme-directory"), "{message}");
    assert!(!h.core.store.app("shop").await.unwrap().acm);
    let (status, body) = h.api(Method::GET, "/apps/shop/acm", json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"acm": false, "directory": null, "domains": []})
    );
    let (status, _) = h.api(Method::POST, "/apps/nosuch/acm", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_board_publishes_every_challenge_being_validated_to_the_routers() {
    let h = Harness::new(settings(Duration::from_secs(5))).await;
    let board = RoutingBoard::new(h.core.routing.clone());
    board.publish("t1", "t1.key");
    board.publish("t2", "t2.key");
    let published = || h.core.routing.published().edge.challenges;
    assert_eq!(
        published(),
        BTreeMap::from([
            ("t1".to_string(), "t1.key".to_string()),
            ("t2".to_string(), "t2.key".to_string())
        ])
    );
    board.withdraw("t1");
    board.withdraw("unknown");
    assert_eq!(
        published(),
        BTreeMap::from([("t2".to_string(), "t2.key".to_string())])
    );
    board.withdraw("t2");
    assert!(published().is_empty());
}

/// A certificate as the ACME client hands it over, from `from` to `until` days from now.
fn issued(domain: &str, from: i64, until: i64) -> IssuedCert {
    let (chain_pem, key_pem) = crate::edge::inspect::tests::make(&[domain], from, until);
    let now = OffsetDateTime::now_utc();
    IssuedCert {
        domains: vec![domain.to_string()],
        chain_pem,
        key_pem: Secret::new(key_pem),
        issuer: "CN=test".to_string(),
        not_before: now + time::Duration::days(from),
        not_after: now + time::Duration::days(until),
    }
}

#[tokio::test]
async fn the_store_wants_acm_apps_domains_and_keeps_a_failing_renewals_certificate() {
    let h = Harness::new(settings(Duration::from_secs(5))).await;
    let store = &h.core.store;
    for (app, domain) in [("shop", "www.shop.test"), ("blog", "blog.test")] {
        store.create_app(app, "testing").await.unwrap();
        store.add_domain(app, domain).await.unwrap();
    }
    store.set_acm("shop", true).await.unwrap();
    let certs = StoreCerts::new(h.core.clone());
    let wanted = certs.auto_domains().await.unwrap();
    assert_eq!(
        wanted,
        [AutoDomain {
            app: "shop".into(),
            domain: "www.shop.test".into(),
            current: None
        }]
    );

    let first = issued("www.shop.test", -1, 89);
    certs.issued("shop", "www.shop.test", &first).await.unwrap();
    let [saved] = &store.certs(Some("shop")).await.unwrap()[..] else {
        panic!("one certificate");
    };
    assert_eq!(
        (saved.source, saved.status),
        (CertSource::Acme, CertStatus::Active)
    );
    let served = h.core.routing.published().edge.certs;
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].chain_pem, first.chain_pem);
    assert_eq!(
        certs.auto_domains().await.unwrap()[0].current,
        Some(Validity {
            not_before: first.not_before,
            not_after: first.not_after
        })
    );

    // A renewal that fails: recorded with its reason, the certificate kept and served.
    let failure = Failure {
        error: crate::acme::AcmeError::Challenge {
            domain: "www.shop.test".into(),
            detail: "connection refused (urn:ietf:params:acme:error:connection)".into(),
        },
        failures: 1,
        retry_at: OffsetDateTime::now_utc(),
    };
    certs
        .failed("shop", "www.shop.test", &failure)
        .await
        .unwrap();
    let [failed] = &store.certs(Some("shop")).await.unwrap()[..] else {
        panic!("still one certificate");
    };
    assert_eq!(failed.id, saved.id);
    assert_eq!(failed.status, CertStatus::Failed);
    assert_eq!(failed.last_error, Some(failure.error.to_string()));
    assert_eq!(failed.material, saved.material);
    assert_eq!(h.core.routing.published().edge.certs, served);

    // The renewal that works replaces it in place.
    let renewed = issued("www.shop.test", 0, 90);
    certs
        .issued("shop", "www.shop.test", &renewed)
        .await
        .unwrap();
    let [now] = &store.certs(Some("shop")).await.unwrap()[..] else {
        panic!("still one certificate");
    };
    assert_eq!((now.id, now.status), (saved.id, CertStatus::Active));
    assert_eq!(now.last_error, None);
    assert_eq!(
        h.core.routing.published().edge.certs[0].chain_pem,
        renewed.chain_pem
    );

    // The account's credentials go to the store and back unchanged.
    let credentials = Secret::new("{\"id\":\"https://acme.test/acct/1\"}".into());
    certs
        .save_account("https://acme.test/dir", &credentials)
        .await
        .unwrap();
    assert_eq!(
        certs.account("https://acme.test/dir").await.unwrap(),
        Some(credentials)
    );
    assert_eq!(certs.account("https://other.test/dir").await.unwrap(), None);
}
