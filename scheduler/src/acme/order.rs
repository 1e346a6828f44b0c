//! Ordering a certificate over ACME (RFC 8555) with HTTP-01 challenges:
//!
//! ```text
//! new order ──> for each pending authorization: publish the key authorization on the
//!     │         ChallengeBoard (the routers answer GET /.well-known/acme-challenge/TOKEN),
//!     │         tell the server the challenge is ready
//!     v
//! poll until ready ──(invalid)──> the failing challenge's problem becomes AcmeError::Challenge
//!     │ (the board is cleared in every case)
//!     v
//! new key + CSR ──> finalize ──> poll until valid ──> download the chain ──> IssuedCert
//! ```
//!
//! The protocol (JWS, nonces, polling) is `instant-acme`'s; this module decides what to ask,
//! where the answers go and how failures read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, ServerName};
use time::OffsetDateTime;

use super::account::AccountStore;
use super::settings::AcmeConfig;
use super::{describe, describe_problem, AcmeError, Secret, Step};

/// Where HTTP-01 answers are posted for the ACME server to fetch at
/// `http://DOMAIN/.well-known/acme-challenge/TOKEN` (RFC 8555 §8.3). The scheduler's
/// routing implements it so that every router (separate router processes too) answers.
/// The ACME server is told to look once `publish` returned and `settled` finished.
#[async_trait::async_trait]
pub trait ChallengeBoard: Send + Sync {
    /// Serve `key_authorization` (as `text/plain`, nothing else) at the token's path.
    fn publish(&self, token: &str, key_authorization: &str);
    /// Stop serving the token: its challenge is over, won or lost.
    fn withdraw(&self, token: &str);
    /// Waits until what was published is answered wherever the ACME server may ask (routers
    /// in other processes get it a moment after `publish`). At once where `publish` is all.
    async fn settled(&self) {}
}

/// A certificate the ACME server issued, with the private key made for it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The names it covers, as ordered.
    pub domains: Vec<String>,
    /// The certificate then its intermediates, PEM.
    pub chain_pem: String,
    /// Its private key, PKCS#8 PEM (ECDSA P-256).
    pub key_pem: Secret,
    /// The issuer's distinguished name, as `manifold certs` shows it.
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// The ACME client: an account on the configured directory (registered on first use and
/// kept by the [`AccountStore`]) and the [`ChallengeBoard`] its challenges are answered on.
pub struct Acme {
    config: AcmeConfig,
    accounts: Arc<dyn AccountStore>,
    board: Arc<dyn ChallengeBoard>,
    account: tokio::sync::OnceCell<Account>,
}

/// The tokens posted for one order; dropping it withdraws them, on every path out.
struct Posted<'a> {
    board: &'a dyn ChallengeBoard,
    tokens: Vec<String>,
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.board.withdraw(token);
        }
    }
}

impl Acme {
    /// How long an order may wait for validation, then for issuance, before it fails.
    pub const PATIENCE: Duration = Duration::from_secs(120);

    pub fn new(
        config: AcmeConfig,
        accounts: Arc<dyn AccountStore>,
        board: Arc<dyn ChallengeBoard>,
    ) -> Self {
        Self {
            config,
            accounts,
            board,
            account: tokio::sync::OnceCell::new(),
        }
    }

    /// Orders a certificate for `domains` (one certificate naming them all), answering the
    /// HTTP-01 challenges on the board. The error says which domain failed and why, in the
    /// ACME server's words when it gave them.
    pub async fn order(&self, domains: &[String]) -> Result<IssuedCert, AcmeError> {
        check_domains(domains)?;
        let account = self.account().await?;
        let identifiers: Vec<Identifier> =
            domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| self.server(Step::Order, &e))?;
        let posted = self.answer_challenges(&mut order).await?;
        let retries = RetryPolicy::new().backoff(1.5).timeout(Self::PATIENCE);
        let names = domains.join(", ");
        match order.poll_ready(&retries).await {
            Ok(OrderStatus::Ready) => {}
            Ok(_) => return Err(why_invalid(&mut order, &names, None).await),
            Err(instant_acme::Error::Api(problem)) => {
                return Err(why_invalid(&mut order, &names, Some(describe_problem(&problem))).await)
            }
            Err(e) => return Err(self.server(Step::Validation, &e)),
        }
        drop(posted);
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| self.server(Step::Finalize, &e))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| self.server(Step::Certificate, &e))?;
        issued(domains, chain_pem, Secret::new(key.serialize_pem()))
    }

    /// Posts the answer of each pending authorization's HTTP-01 challenge and tells the
    /// server to check it. Authorizations already valid (the server reuses recent ones)
    /// need nothing.
    async fn answer_challenges(&self, order: &mut Order) -> Result<Posted<'_>, AcmeError> {
        let mut posted = Posted {
            board: &*self.board,
            tokens: Vec::new(),
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| self.server(Step::Authorization, &e))?;
            let domain = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(AcmeError::Invalid {
                        domains: domain,
                        detail: format!("its authorization is {status:?}"),
                    })
                }
            }
            let mut challenge =
                authorization
                    .challenge(ChallengeType::Http01)
                    .ok_or_else(|| AcmeError::NoHttp01 {
                        domain: domain.clone(),
                    })?;
            self.board
                .publish(&challenge.token, challenge.key_authorization().as_str());
            posted.tokens.push(challenge.token.clone());
            self.board.settled().await;
            challenge.set_ready().await.map_err(|e| match e {
                instant_acme::Error::Api(problem) => AcmeError::Challenge {
                    domain,
                    detail: describe_problem(&problem),
                },
                other => self.server(Step::Challenge, &other),
            })?;
        }
        Ok(posted)
    }

    /// The account, registered (or read back from the store) on first use, so a scheduler
    /// whose ACME server is down still starts.
    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Account, AcmeError> {
        let directory = &self.config.directory;
        let builder = Account::builder_with_http(self.http()?);
        if let Some(saved) = self.accounts.account(directory).await? {
            let credentials: AccountCredentials =
                serde_json::from_str(saved.expose()).map_err(|source| {
                    AcmeError::StoredAccount {
                        directory: directory.clone(),
                        source,
                    }
                })?;
            return builder
                .from_credentials(credentials)
                .await
                .map_err(|e| self.server(Step::Directory, &e));
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = builder
            .create(&new_account, directory.clone(), None)
            .await
            .map_err(|e| self.server(Step::Account, &e))?;
        let json =
            serde_json::to_string(&credentials).map_err(|source| AcmeError::StoredAccount {
                directory: directory.clone(),
                source,
            })?;
        self.accounts
            .save_account(directory, &Secret::new(json))
            .await?;
        tracing::info!(
            directory,
            account = account.id(),
            "registered an ACME account"
        );
        Ok(account)
    }

    /// An HTTPS client trusting the configured roots, with the workspace's crypto provider.
    fn http(&self) -> Result<Box<dyn HttpClient>, AcmeError> {
        let tls = rustls::ClientConfig::builder_with_provider(manifold_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(AcmeError::Tls)?
            .with_root_certificates(self.config.roots.clone())
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Box::new(
            HyperClient::builder(TokioExecutor::new()).build::<_, BodyWrapper<Bytes>>(connector),
        ))
    }

    fn server(&self, step: Step, err: &instant_acme::Error) -> AcmeError {
        AcmeError::Server {
            directory: self.config.directory.clone(),
            step,
            detail: describe(err),
        }
    }
}

/// Refuses, before asking the server, names HTTP-01 cannot prove.
fn check_domains(domains: &[String]) -> Result<(), AcmeError> {
    if domains.is_empty() {
        return Err(AcmeError::NoDomains);
    }
    for domain in domains {
        let bad = |why| AcmeError::Domain {
            domain: domain.clone(),
            why,
        };
        if domain.starts_with("*.") {
            return Err(bad(
                "a wildcard needs a DNS-01 challenge, which the routers cannot answer",
            ));
        }
        if domain.parse::<std::net::IpAddr>().is_ok() {
            return Err(bad("it is an IP address, not a domain name"));
        }
        if DnsName::try_from(domain.as_str()).is_err() {
            return Err(bad("it is not a valid domain name"));
        }
        if domain.ends_with('.') {
            return Err(bad("it ends with a dot (write it without)"));
        }
        if !domain.contains('.') {
            return Err(bad("it is not a fully qualified domain name"));
        }
    }
    Ok(())
}

/// Why an order went invalid: the first failed challenge's problem, else the order's.
async fn why_invalid(order: &mut Order, domains: &str, problem: Option<String>) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        if state.status != AuthorizationStatus::Invalid {
            continue;
        }
        if let Some(problem) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
            return AcmeError::Challenge {
                domain: state.identifier().to_string(),
                detail: describe_problem(problem),
            };
        }
    }
    AcmeError::Invalid {
        domains: domains.to_string(),
        detail: problem.unwrap_or_else(|| "the ACME server gave no reason".to_string()),
    }
}

/// Reads what the server issued: the leaf's validity, and a check that it names every
/// domain ordered (a certificate that would not serve them is an error now, not at a
/// client's handshake).
fn issued(domains: &[String], chain_pem: String, key_pem: Secret) -> Result<IssuedCert, AcmeError> {
    let unusable = |why: String| AcmeError::Certificate {
        domains: domains.join(", "),
        why,
    };
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| unusable("no certificate in the chain".to_string()))?
        .map_err(|e| unusable(format!("not PEM: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| unusable(format!("not X.509: {e}")))?;
    let validity = parsed.validity();
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf).map_err(|e| unusable(format!("{e}")))?;
    for domain in domains {
        let name = ServerName::try_from(domain.as_str())
            .map_err(|e| unusable(format!("{domain}: {e}")))?;
        end_entity
            .verify_is_valid_for_subject_name(&name)
            .map_err(|e| unusable(format!("it does not name {domain}: {e}")))?;
    }
    Ok(IssuedCert {
        domains: domains.to_vec(),
        issuer: parsed.issuer().to_string(),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        chain_pem,
        key_pem,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_http01_cannot_prove_are_refused_before_any_order() {
        assert!(matches!(check_domains(&[]), Err(AcmeError::NoDomains)));
        for (domain, why) in [
            ("*.example.com", "wildcard"),
            ("10.0.0.1", "IP address"),
            ("exa mple.com", "not a valid domain name"),
            ("-", "not a valid domain name"),
            ("localhost", "fully qualified"),
            ("www.example.com.", "ends with a dot"),
        ] {
            let err = check_domains(&["ok.example.com".to_string(), domain.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(domain) && err.contains(why), "{domain}: {err}");
        }
        check_domains(&["www.example.com".to_string(), "example.org".to_string()]).unwrap();
    }

    #[tokio::test]
    async fn unreadable_stored_credentials_are_an_error_not_a_new_account() {
        use crate::acme::account::{AccountStore, MemoryAccountStore};
        struct Nowhere;
        impl ChallengeBoard for Nowhere {
            fn publish(&self, _: &str, _: &str) {}
            fn withdraw(&self, _: &str) {}
        }
        let directory = "https://127.0.0.1:9/dir";
        let accounts = Arc::new(MemoryAccountStore::default());
        let garbage = Secret::new("{\"id\": 1}".to_string());
        accounts.save_account(directory, &garbage).await.unwrap();
        let settings = crate::acme::settings::AcmeSettings {
            acme_directory: Some(directory.to_string()),
            ..Default::default()
        };
        let acme = Acme::new(
            settings.config().unwrap().unwrap(),
            accounts.clone(),
            Arc::new(Nowhere),
        );
        let err = acme
            .order(&["www.example.com".to_string()])
            .await
            .unwrap_err();
        assert!(matches!(err, AcmeError::StoredAccount { .. }), "{err:?}");
        assert!(err.to_string().contains(directory), "{err}");
        assert_eq!(accounts.account(directory).await.unwrap(), Some(garbage));
    }

    #[test]
    fn an_issued_certificate_must_name_every_domain() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["www.example.com".to_string()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let secret = Secret::new(key.serialize_pem());
        let cert = issued(
            &["www.example.com".to_string()],
            pem.clone(),
            secret.clone(),
        )
        .unwrap();
        assert!(cert.not_after > cert.not_before);
        assert_eq!(cert.issuer, "CN=rcgen self signed cert");
        assert!(format!("{cert:?}").contains("key_pem: <redacted>"));
        let err = issued(&["api.example.com".to_string()], pem, secret.clone()).unwrap_err();
        assert!(
            err.to_string().contains("does not name api.example.com"),
            "{err}"
        );
        let err = issued(&["www.example.com".to_string()], "junk".into(), secret).unwrap_err();
        assert!(
            err.to_string().contains("no certificate in the chain"),
            "{err}"
        );
    }
}
