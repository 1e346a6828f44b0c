//! Automated certificates (ACM) wired into the scheduler: the ACME module (`crate::acme`)
//! reads and records through the store and answers challenges through the routers.
//!
//! - [`StoreCerts`] is the service's [`AccountStore`], [`AutoDomains`] and [`CertSink`]:
//!   the account kept in the store by directory; the custom domains of apps with `acm` on;
//!   each outcome saved as that domain's `acme` certificate (issued: active with the new
//!   certificate and key; failed: status `failed` and the reason, any certificate it had
//!   still served), then the edge republished.
//! - [`RoutingBoard`] is the [`ChallengeBoard`]: every router (this process's and those
//!   following it) answers the challenges being validated.
//! - [`run`] starts it all when the operator set an ACME directory; `certs:auto:enable`
//!   and `domains:add` wake it through [`Core::acm_wake`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::acme::account::AccountStore;
use crate::acme::order::{Acme, ChallengeBoard, IssuedCert};
use crate::acme::renewal::Validity;
use crate::acme::service::{AcmeService, AutoDomain, AutoDomains, CertSink, Failure, SystemClock};
use crate::acme::settings::AcmeConfig;
use crate::acme::Secret;
use crate::core::Core;
use crate::model::{Cert, CertMaterial, CertSource, CertStatus};
use crate::routing::Routing;
use crate::store::StoreError;

use super::EdgeError;

/// The store, seen by the ACME service (and the edge republished after a change).
pub struct StoreCerts {
    core: Arc<Core>,
}

impl StoreCerts {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The `acme` certificate of `app` for `domain` (one per domain), if any.
    async fn current(&self, app: &str, domain: &str) -> Result<Option<Cert>, StoreError> {
        Ok(self
            .core
            .store
            .certs(Some(app))
            .await?
            .into_iter()
            .find(|c| is_for(c, domain)))
    }

    /// The certificate to save: the domain's previous one changed by `change`, or a new one.
    async fn save(
        &self,
        app: &str,
        domain: &str,
        change: impl FnOnce(&mut Cert),
    ) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc();
        let mut cert = match self.current(app, domain).await? {
            Some(cert) => cert,
            None => Cert {
                id: Uuid::new_v4(),
                app_id: Some(self.core.store.app(app).await?.id),
                source: CertSource::Acme,
                names: vec![domain.to_string()],
                material: None,
                status: CertStatus::Pending,
                last_error: None,
                created_at: now,
                updated_at: now,
            },
        };
        change(&mut cert);
        cert.updated_at = now;
        self.core.store.save_cert(&cert).await
    }
}

/// Whether `cert` is the automated certificate for `domain`.
pub(crate) fn is_for(cert: &Cert, domain: &str) -> bool {
    cert.source == CertSource::Acme && cert.names == [domain]
}

#[async_trait]
impl AccountStore for StoreCerts {
    async fn account(&self, directory: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self
            .core
            .store
            .acme_account(directory)
            .await?
            .map(Secret::new))
    }

    async fn save_account(&self, directory: &str, credentials: &Secret) -> Result<(), StoreError> {
        self.core
            .store
            .save_acme_account(directory, credentials.expose())
            .await
    }
}

#[async_trait]
impl AutoDomains for StoreCerts {
    async fn auto_domains(&self) -> Result<Vec<AutoDomain>, StoreError> {
        let store = &self.core.store;
        let apps: BTreeMap<Uuid, String> = store
            .apps()
            .await?
            .into_iter()
            .filter(|a| a.acm)
            .map(|a| (a.id, a.name))
            .collect();
        let certs = store.certs(None).await?;
        Ok(store
            .domains(None)
            .await?
            .into_iter()
            .filter_map(|d| {
                let app = apps.get(&d.app_id)?;
                let current = certs
                    .iter()
                    .filter(|c| c.app_id == Some(d.app_id) && is_for(c, &d.hostname))
                    .find_map(|c| c.material.as_ref())
                    .map(|m| Validity {
                        not_before: m.not_before,
                        not_after: m.not_after,
                    });
                Some(AutoDomain {
                    app: app.clone(),
                    domain: d.hostname,
                    current,
                })
            })
            .collect())
    }
}

#[async_trait]
impl CertSink for StoreCerts {
    async fn issued(&self, app: &str, domain: &str, cert: &IssuedCert) -> Result<(), StoreError> {
        self.save(app, domain, |saved| {
            saved.names = cert.domains.clone();
            saved.material = Some(CertMaterial {
                chain_pem: cert.chain_pem.clone(),
                key_pem: cert.key_pem.expose().to_string(),
                issuer: cert.issuer.clone(),
                not_before: cert.not_before,
                not_after: cert.not_after,
            });
            saved.status = CertStatus::Active;
            saved.last_error = None;
        })
        .await?;
        match super::refresh(&self.core).await {
            Ok(()) => Ok(()),
            Err(EdgeError::Store(err)) => Err(err),
            Err(err @ EdgeError::Issue(_)) => {
                tracing::warn!("cannot refresh the router's certificates: {err}");
                Ok(())
            }
        }
    }

    /// The previous certificate (if any) stays as it was, still served until it expires;
    /// the routers' certificates do not change, so the edge is not republished.
    async fn failed(&self, app: &str, domain: &str, failure: &Failure) -> Result<(), StoreError> {
        self.save(app, domain, |saved| {
            saved.status = CertStatus::Failed;
            saved.last_error = Some(failure.error.to_string());
        })
        .await
    }
}

/// The challenges being validated, published to every router as a whole.
pub struct RoutingBoard {
    routing: Arc<Routing>,
    challenges: Mutex<BTreeMap<String, String>>,
}

impl RoutingBoard {
    pub fn new(routing: Arc<Routing>) -> Self {
        Self {
            routing,
            challenges: Mutex::new(BTreeMap::new()),
        }
    }

    /// Changes the set and publishes it, under the lock so that two changes publish in order.
    fn change(&self, change: impl FnOnce(&mut BTreeMap<String, String>)) {
        let mut challenges = self
            .challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut challenges);
        self.routing.set_challenges(challenges.clone());
    }
}

/// How long an ACME validation waits for routers following from other processes to get its
/// challenge; one that has not by then is warned about (the validation may reach it first).
const FOLLOWERS_WAIT: Duration = Duration::from_secs(5);

#[async_trait]
impl ChallengeBoard for RoutingBoard {
    fn publish(&self, token: &str, key_authorization: &str) {
        self.change(|c| {
            c.insert(token.to_string(), key_authorization.to_string());
        });
    }

    fn withdraw(&self, token: &str) {
        self.change(|c| {
            c.remove(token);
        });
    }

    async fn settled(&self) {
        if !self.routing.followers_caught_up(FOLLOWERS_WAIT).await {
            tracing::warn!(
                "a router following from another process has not got the ACME challenge after {FOLLOWERS_WAIT:?}: a validation that reaches it fails"
            );
        }
    }
}

/// Keeps the automated certificates from `config`'s ACME server until `shutdown`.
pub async fn run(core: Arc<Core>, config: AcmeConfig, shutdown: impl Future<Output = ()>) {
    let certs = Arc::new(StoreCerts::new(core.clone()));
    let board = Arc::new(RoutingBoard::new(core.routing.clone()));
    tracing::info!("automated certificates from {}", config.directory);
    let acme = Arc::new(Acme::new(config, certs.clone(), board));
    let service = AcmeService::new(acme, certs.clone(), certs, Arc::new(SystemClock));
    service
        .run(AcmeService::EVERY, core.acm_wake.clone(), shutdown)
        .await;
}

#[cfg(test)]
#[path = "acm_tests.rs"]
mod tests;
