//! End to end against pebble, the ACME test server Debian packages: a real ACME server over
//! real HTTPS, validating HTTP-01 answers with real HTTP requests to a challenge board
//! served here. pebble has no hosts file of its own; `pebble-challtestsrv` (same package)
//! is its DNS server (`-dnsserver`) and answers every name with 127.0.0.1, so the test
//! domains lead to the board's port (pebble's `httpPort`).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::account::{AccountStore, MemoryAccountStore};
use super::order::{Acme, ChallengeBoard, IssuedCert};
use super::renewal::{Reason, Validity};
use super::service::{AcmeService, Clock, Outcome, SystemClock};
use super::settings::AcmeSettings;
use super::testing::{ManualClock, MemoryCerts};
use super::AcmeError;

const PEBBLE: &str = "pebble";
const CHALLTESTSRV: &str = "pebble-challtestsrv";
/// How long pebble's certificates last here: short, as Let's Encrypt's short-lived ones.
const VALIDITY_SECS: u64 = 6 * 3600;
/// A name pebble's policy refuses. Two labels: pebble 2.4 panics on an order for a name
/// with fewer labels than a blocked one (its IsDomainBlocked indexes past the name's end).
const BLOCKED: &str = "blocked.test";

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

pub(crate) fn pebble_installed(test: &str) -> bool {
    manifold_test_support::require(
        test,
        &[(
            on_path(PEBBLE) && on_path(CHALLTESTSRV),
            "pebble is not installed (apt-get install pebble; scripts/setup does)",
        )],
    )
}

/// Challenge answers served over HTTP as a router does.
#[derive(Default)]
struct HttpBoard {
    answers: Mutex<HashMap<String, String>>,
}

impl HttpBoard {
    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ChallengeBoard for HttpBoard {
    fn publish(&self, token: &str, key_authorization: &str) {
        self.answers()
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn withdraw(&self, token: &str) {
        self.answers().remove(token);
    }
}

/// A board that counts what is posted on it.
#[derive(Default)]
struct CountingBoard {
    board: Arc<HttpBoard>,
    posted: Mutex<u32>,
}

impl ChallengeBoard for CountingBoard {
    fn publish(&self, token: &str, key_authorization: &str) {
        *self.posted.lock().unwrap() += 1;
        self.board.publish(token, key_authorization);
    }

    fn withdraw(&self, token: &str) {
        self.board.withdraw(token);
    }
}

/// A board that posts the wrong answer: what a misrouted domain looks like to the server.
struct WrongBoard(Arc<HttpBoard>);

impl ChallengeBoard for WrongBoard {
    fn publish(&self, token: &str, _key_authorization: &str) {
        self.0.publish(token, "not-the-key-authorization");
    }

    fn withdraw(&self, token: &str) {
        self.0.withdraw(token);
    }
}

/// Serves `board` on `port` until the returned task is aborted.
async fn serve(board: Arc<HttpBoard>, port: u16) -> tokio::task::JoinHandle<()> {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    async fn answer(
        State(board): State<Arc<HttpBoard>>,
        Path(token): Path<String>,
    ) -> Result<String, StatusCode> {
        board
            .answers()
            .get(&token)
            .cloned()
            .ok_or(StatusCode::NOT_FOUND)
    }
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/:token",
            axum::routing::get(answer),
        )
        .with_state(board);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    })
}

/// pebble and its DNS server, killed on drop, with a TLS certificate from a CA of the test.
pub(crate) struct Pebble {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    pub(crate) directory: String,
    management: String,
    dns_management: u16,
    ca: PathBuf,
    /// Where pebble validates HTTP-01 challenges: a router's HTTP port.
    pub(crate) http_port: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// pebble reusing no recent authorization (each order proves its domains anew) or,
    /// with `reuse`, every one it can.
    pub(crate) async fn start(reuse: bool) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let [listen, management, http, tls, dns, dns_management] =
            <[u16; 6]>::try_from(manifold_test_support::free_ports(6)).unwrap();
        let ca = write_tls(dir.path());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("pebble.pem"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECS,
            "domainBlocklist": [BLOCKED],
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let mut children = Vec::new();
        // Every name resolves to 127.0.0.1 (no AAAA answer: the board listens on IPv4);
        // its own challenge servers are off.
        children.push(
            Command::new(CHALLTESTSRV)
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .unwrap(),
        );
        children.push(
            Command::new(PEBBLE)
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // Validate at once and accept every nonce.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", if reuse { "100" } else { "0" })
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .unwrap(),
        );
        let mut pebble = Pebble {
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("https://127.0.0.1:{management}"),
            dir,
            children,
            dns_management,
            ca,
            http_port: http,
        };
        pebble.wait_ready(dns_management).await;
        pebble
    }

    /// Waits for pebble's directory and the DNS server's management port.
    async fn wait_ready(&mut self, dns_management: u16) {
        let client = crate::tls::follower_client(Some(&self.ca)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let directory = client.get(&self.directory).send().await;
            let dns = tokio::net::TcpStream::connect(("127.0.0.1", dns_management)).await;
            if directory.is_ok_and(|r| r.status().is_success()) && dns.is_ok() {
                return;
            }
            let exited = self
                .children
                .iter_mut()
                .any(|c| c.try_wait().unwrap().is_some());
            if exited || Instant::now() > deadline {
                panic!("pebble did not come up:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes `host` resolve to `ip` for pebble (instead of 127.0.0.1): a domain whose DNS
    /// does not lead to the routers.
    pub(crate) async fn resolve(&self, host: &str, ip: &str) {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/add-a", self.dns_management))
            .json(&serde_json::json!({"host": host, "addresses": [ip]}))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// What pebble and its DNS server said, for a failure's message.
    pub(crate) fn logs(&self) -> String {
        [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            format!("--- {name}\n{text}")
        })
        .collect()
    }

    /// The client settings for this pebble, through the scheduler's own flags.
    pub(crate) fn settings(&self) -> AcmeSettings {
        AcmeSettings {
            acme_directory: Some(self.directory.clone()),
            acme_contact: Some("ops@manifold.test".to_string()),
            acme_ca: Some(self.ca.clone()),
        }
    }

    fn acme(&self, accounts: Arc<dyn AccountStore>, board: Arc<dyn ChallengeBoard>) -> Acme {
        Acme::new(self.settings().config().unwrap().unwrap(), accounts, board)
    }

    /// pebble's root (new each run), from its management interface.
    pub(crate) async fn root(&self) -> CertificateDer<'static> {
        let client = crate::tls::follower_client(Some(&self.ca)).unwrap();
        let pem = client
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap()
    }

    /// Checks that `cert` chains to pebble's root and serves `domain`.
    async fn verify(&self, cert: &IssuedCert, domain: &str) {
        let root = self.root().await;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
        let algs = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        leaf.verify_for_usage(
            algs,
            &[anchor],
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        leaf.verify_is_valid_for_subject_name(&ServerName::try_from(domain).unwrap())
            .unwrap();
        // The key is the certificate's own: rustls refuses a key that does not match.
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.expose().as_bytes())
                .unwrap();
        let certified = rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            key,
            &rustls::crypto::ring::default_provider(),
        )
        .unwrap();
        certified.keys_match().unwrap();
        assert!(
            cert.issuer.starts_with("CN=Pebble Intermediate CA"),
            "{}",
            cert.issuer
        );
        let lifetime = cert.not_after - cert.not_before;
        assert!(
            (lifetime.whole_seconds() - VALIDITY_SECS as i64).abs() <= 2,
            "{lifetime}"
        );
    }
}

/// The test CA and pebble's certificate for 127.0.0.1; returns the CA's path.
fn write_tls(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "manifold ACME test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("pebble.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

#[tokio::test]
async fn pebble_issues_a_certificate_and_the_service_renews_it_before_expiry() {
    if !pebble_installed("pebble_issues_a_certificate_and_the_service_renews_it_before_expiry") {
        return;
    }
    let pebble = Pebble::start(false).await;
    let board = Arc::new(HttpBoard::default());
    let server = serve(board.clone(), pebble.http_port).await;
    let accounts = Arc::new(MemoryAccountStore::default());
    let acme = Arc::new(pebble.acme(accounts.clone(), board.clone()));
    let certs = Arc::new(MemoryCerts::default());
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut service = AcmeService::new(acme, certs.clone(), certs.clone(), clock.clone());
    certs.want("shop", "www.shop.test");

    let outcomes = service.pass().await.unwrap();
    assert!(
        matches!(
            &outcomes[..],
            [Outcome::Issued {
                reason: Reason::First,
                ..
            }]
        ),
        "{outcomes:?}"
    );
    let first = certs.cert("shop", "www.shop.test").unwrap();
    pebble.verify(&first, "www.shop.test").await;
    assert!(board.answers().is_empty(), "answers left on the board");
    let credentials = accounts.account(&pebble.directory).await.unwrap().unwrap();
    assert!(!format!("{first:?}{credentials:?}").contains("PRIVATE KEY"));

    // Not due: nothing ordered. Due (a third of the lifetime left): renewed.
    let validity = Validity {
        not_before: first.not_before,
        not_after: first.not_after,
    };
    let outcomes = service.pass().await.unwrap();
    assert!(
        matches!(&outcomes[..], [Outcome::Waiting { until, .. }] if *until == validity.renew_at()),
        "{outcomes:?}"
    );
    clock.set(validity.renew_at());
    let outcomes = service.pass().await.unwrap();
    assert!(
        matches!(
            &outcomes[..],
            [Outcome::Issued {
                reason: Reason::Renewal,
                ..
            }]
        ),
        "{outcomes:?}"
    );
    let renewed = certs.cert("shop", "www.shop.test").unwrap();
    assert_ne!(renewed.chain_pem, first.chain_pem);
    assert_ne!(renewed.key_pem, first.key_pem);
    pebble.verify(&renewed, "www.shop.test").await;

    // Another scheduler with the same store uses the account kept, not a new one.
    let again = pebble.acme(accounts.clone(), board.clone());
    let cert = again.order(&["api.shop.test".to_string()]).await.unwrap();
    pebble.verify(&cert, "api.shop.test").await;
    let kept = accounts.account(&pebble.directory).await.unwrap().unwrap();
    assert_eq!(kept, credentials);
    server.abort();
}

#[tokio::test]
async fn a_wrong_or_missing_answer_fails_with_the_servers_reason() {
    if !pebble_installed("a_wrong_or_missing_answer_fails_with_the_servers_reason") {
        return;
    }
    let pebble = Pebble::start(false).await;
    let board = Arc::new(HttpBoard::default());
    let server = serve(board.clone(), pebble.http_port).await;
    let accounts = Arc::new(MemoryAccountStore::default());

    // The wrong answer, through the service: recorded with pebble's reason, then held back.
    let wrong = Arc::new(pebble.acme(accounts.clone(), Arc::new(WrongBoard(board.clone()))));
    let certs = Arc::new(MemoryCerts::default());
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let mut service = AcmeService::new(wrong, certs.clone(), certs.clone(), clock.clone());
    certs.want("shop", "www.shop.test");
    let outcomes = service.pass().await.unwrap();
    assert!(
        matches!(&outcomes[..], [Outcome::Failed { .. }]),
        "{outcomes:?}"
    );
    let failure = certs.failure("shop", "www.shop.test").unwrap();
    assert!(
        failure.starts_with("www.shop.test: HTTP-01 challenge failed: ")
            && failure.contains("not-the-key-authorization")
            && failure.ends_with("(urn:ietf:params:acme:error:unauthorized)"),
        "{failure}"
    );
    assert!(board.answers().is_empty(), "answers left on the board");
    let outcomes = service.pass().await.unwrap();
    assert!(
        matches!(&outcomes[..], [Outcome::Waiting { .. }]),
        "{outcomes:?}"
    );
    assert!(certs.cert("shop", "www.shop.test").is_none());

    // No answer at all (the routers do not know the token): pebble's 404.
    struct Silent;
    impl ChallengeBoard for Silent {
        fn publish(&self, _: &str, _: &str) {}
        fn withdraw(&self, _: &str) {}
    }
    let silent = pebble.acme(accounts.clone(), Arc::new(Silent));
    let err = silent
        .order(&["blog.shop.test".to_string()])
        .await
        .unwrap_err();
    assert!(matches!(err, AcmeError::Challenge { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("blog.shop.test: HTTP-01 challenge failed: ")
            && message.contains("404"),
        "{message}"
    );

    // Nothing listening where the domain leads (the routers down): pebble cannot connect.
    server.abort();
    let _ = server.await;
    let down = pebble.acme(accounts.clone(), board.clone());
    let err = down
        .order(&["down.shop.test".to_string()])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("down.shop.test: HTTP-01 challenge failed: ")
            && message.ends_with("(urn:ietf:params:acme:error:connection)"),
        "{message}"
    );

    // A name pebble refuses to issue for: the order itself is refused, with the reason.
    let err = silent.order(&[BLOCKED.to_string()]).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("placing the order")
            && message.contains("urn:ietf:params:acme:error:rejectedIdentifier"),
        "{message}"
    );
}

#[tokio::test]
async fn a_recently_proven_domain_is_not_challenged_again() {
    if !pebble_installed("a_recently_proven_domain_is_not_challenged_again") {
        return;
    }
    let pebble = Pebble::start(true).await;
    let board = Arc::new(CountingBoard::default());
    let server = serve(board.board.clone(), pebble.http_port).await;
    let acme = pebble.acme(Arc::new(MemoryAccountStore::default()), board.clone());
    let domains = ["www.shop.test".to_string(), "shop.test".to_string()];
    let first = acme.order(&domains).await.unwrap();
    assert_eq!(*board.posted.lock().unwrap(), 2);
    // The server reuses both authorizations: nothing to post, a new certificate all the same.
    let second = acme.order(&domains).await.unwrap();
    assert_eq!(*board.posted.lock().unwrap(), 2);
    assert_ne!(first.chain_pem, second.chain_pem);
    for domain in &domains {
        pebble.verify(&second, domain).await;
    }
    server.abort();
}

#[tokio::test]
async fn an_unreachable_acme_server_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_tls(dir.path());
    let port = manifold_test_support::free_port();
    let settings = AcmeSettings {
        acme_directory: Some(format!("https://127.0.0.1:{port}/dir")),
        acme_contact: None,
        acme_ca: Some(ca),
    };
    let acme = Acme::new(
        settings.config().unwrap().unwrap(),
        Arc::new(MemoryAccountStore::default()),
        Arc::new(HttpBoard::default()),
    );
    let err = acme
        .order(&["www.shop.test".to_string()])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "ACME server https://127.0.0.1:{port}/dir: registering the account: "
        )),
        "{message}"
    );
}
