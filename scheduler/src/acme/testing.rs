//! What the ACME tests share: a clock they set, and an in-memory registry of domains and
//! their certificates standing in for the store ([`AutoDomains`] and [`CertSink`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::order::IssuedCert;
use super::renewal::Validity;
use super::service::{AutoDomain, AutoDomains, CertSink, Clock, Failure};
use crate::store::StoreError;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A clock that stays where a test puts it.
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *lock(&self.0) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *lock(&self.0)
    }
}

/// Domains that want certificates, and what the service recorded for each.
#[derive(Default)]
pub struct MemoryCerts {
    wanted: Mutex<Vec<(String, String)>>,
    certs: Mutex<HashMap<(String, String), IssuedCert>>,
    failures: Mutex<HashMap<(String, String), String>>,
}

impl MemoryCerts {
    pub fn want(&self, app: &str, domain: &str) {
        lock(&self.wanted).push((app.to_string(), domain.to_string()));
    }

    pub fn unwant(&self, app: &str, domain: &str) {
        lock(&self.wanted).retain(|w| w != &(app.to_string(), domain.to_string()));
    }

    pub fn cert(&self, app: &str, domain: &str) -> Option<IssuedCert> {
        lock(&self.certs)
            .get(&(app.to_string(), domain.to_string()))
            .cloned()
    }

    /// The last failure's message, until a certificate is issued.
    pub fn failure(&self, app: &str, domain: &str) -> Option<String> {
        lock(&self.failures)
            .get(&(app.to_string(), domain.to_string()))
            .cloned()
    }
}

#[async_trait]
impl AutoDomains for MemoryCerts {
    async fn auto_domains(&self) -> Result<Vec<AutoDomain>, StoreError> {
        let certs = lock(&self.certs);
        Ok(lock(&self.wanted)
            .iter()
            .map(|(app, domain)| AutoDomain {
                app: app.clone(),
                domain: domain.clone(),
                current: certs.get(&(app.clone(), domain.clone())).map(|c| Validity {
                    not_before: c.not_before,
                    not_after: c.not_after,
                }),
            })
            .collect())
    }
}

#[async_trait]
impl CertSink for MemoryCerts {
    async fn issued(&self, app: &str, domain: &str, cert: &IssuedCert) -> Result<(), StoreError> {
        let key = (app.to_string(), domain.to_string());
        lock(&self.failures).remove(&key);
        lock(&self.certs).insert(key, cert.clone());
        Ok(())
    }

    async fn failed(&self, app: &str, domain: &str, failure: &Failure) -> Result<(), StoreError> {
        let key = (app.to_string(), domain.to_string());
        lock(&self.failures).insert(key, failure.error.to_string());
        Ok(())
    }
}
