//! The loop that keeps automated certificates: each pass reads which domains want one
//! ([`AutoDomains`]), decides for each with [`decide`], orders those due through the
//! [`Issuer`] one at a time, and records each certificate or failure in the [`CertSink`].
//! Level-triggered: a pass is never told why it runs, so a restart, a new domain or a
//! certificate near expiry all come out of the same reading. Failures back off per domain
//! ([`Backoff`], kept in memory: a restarted scheduler tries a failing domain once more).
//! Time comes from a [`Clock`], so tests move it to expiry instead of waiting.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::Notify;

use super::order::{Acme, IssuedCert};
use super::renewal::{decide, Backoff, Decision, Reason, Validity};
use super::AcmeError;
use crate::store::StoreError;

/// One domain that wants an automated certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoDomain {
    pub app: String,
    pub domain: String,
    /// The automated certificate it has, if any (an uploaded certificate is not one: an
    /// app with automated certificates on gets its own).
    pub current: Option<Validity>,
}

/// Which domains want automated certificates: every custom domain of each app with
/// `certs:auto:enable` on. The scheduler's store implements it.
#[async_trait]
pub trait AutoDomains: Send + Sync {
    async fn auto_domains(&self) -> Result<Vec<AutoDomain>, StoreError>;
}

/// An order that failed, as the sink records it for `manifold certs`.
#[derive(Debug)]
pub struct Failure {
    pub error: AcmeError,
    /// Failures in a row for this domain, this one included.
    pub failures: u32,
    /// When the next attempt will be made.
    pub retry_at: OffsetDateTime,
}

/// Where outcomes go: the store keeps the certificate (routers serve it) or the failure's
/// reason (`manifold certs` shows it).
#[async_trait]
pub trait CertSink: Send + Sync {
    async fn issued(&self, app: &str, domain: &str, cert: &IssuedCert) -> Result<(), StoreError>;
    async fn failed(&self, app: &str, domain: &str, failure: &Failure) -> Result<(), StoreError>;
}

/// What orders certificates: [`Acme`], or a fake in unit tests.
#[async_trait]
pub trait Issuer: Send + Sync {
    async fn issue(&self, domains: &[String]) -> Result<IssuedCert, AcmeError>;
}

#[async_trait]
impl Issuer for Acme {
    async fn issue(&self, domains: &[String]) -> Result<IssuedCert, AcmeError> {
        self.order(domains).await
    }
}

/// The time, injected.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// What a pass did for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Issued {
        app: String,
        domain: String,
        reason: Reason,
        not_after: OffsetDateTime,
    },
    Failed {
        app: String,
        domain: String,
        error: String,
        retry_at: OffsetDateTime,
    },
    Waiting {
        app: String,
        domain: String,
        until: OffsetDateTime,
    },
}

/// The loop's state: its parts and each failing domain's [`Backoff`].
pub struct AcmeService {
    issuer: Arc<dyn Issuer>,
    domains: Arc<dyn AutoDomains>,
    sink: Arc<dyn CertSink>,
    clock: Arc<dyn Clock>,
    backoff: HashMap<(String, String), Backoff>,
}

impl AcmeService {
    /// How often [`AcmeService::run`] passes when nothing wakes it.
    pub const EVERY: Duration = Duration::from_secs(60);

    pub fn new(
        issuer: Arc<dyn Issuer>,
        domains: Arc<dyn AutoDomains>,
        sink: Arc<dyn CertSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            issuer,
            domains,
            sink,
            clock,
            backoff: HashMap::new(),
        }
    }

    /// One pass over every domain that wants a certificate. A store error ends the pass
    /// (the next one starts over); an ACME error is the domain's outcome.
    pub async fn pass(&mut self) -> Result<Vec<Outcome>, StoreError> {
        let wanted = self.domains.auto_domains().await?;
        // A domain removed (or switched to an uploaded certificate) forgets its failures.
        self.backoff
            .retain(|(app, domain), _| wanted.iter().any(|w| &w.app == app && &w.domain == domain));
        let mut outcomes = Vec::with_capacity(wanted.len());
        for want in wanted {
            outcomes.push(self.keep(want).await?);
        }
        Ok(outcomes)
    }

    async fn keep(&mut self, want: AutoDomain) -> Result<Outcome, StoreError> {
        let key = (want.app.clone(), want.domain.clone());
        let backoff = self.backoff.get(&key).copied().unwrap_or_default();
        let AutoDomain {
            app,
            domain,
            current,
        } = want;
        let reason = match decide(self.clock.now(), current.as_ref(), &backoff) {
            Decision::Wait { until } => return Ok(Outcome::Waiting { app, domain, until }),
            Decision::Order(reason) => reason,
        };
        match self.issuer.issue(std::slice::from_ref(&domain)).await {
            Ok(cert) => {
                self.sink.issued(&app, &domain, &cert).await?;
                self.backoff.remove(&key);
                Ok(Outcome::Issued {
                    app,
                    domain,
                    reason,
                    not_after: cert.not_after,
                })
            }
            Err(error) => {
                let now = self.clock.now();
                let next = backoff.failed(now);
                self.backoff.insert(key, next);
                let failure = Failure {
                    retry_at: next.retry_at().unwrap_or(now),
                    failures: next.failures(),
                    error,
                };
                self.sink.failed(&app, &domain, &failure).await?;
                Ok(Outcome::Failed {
                    app,
                    domain,
                    error: failure.error.to_string(),
                    retry_at: failure.retry_at,
                })
            }
        }
    }

    /// Passes every `every` (and whenever `wake` is notified, e.g. by `certs:auto:enable`
    /// or `domains:add`) until `shutdown` resolves. Outcomes are logged: names and dates,
    /// never keys.
    pub async fn run(
        mut self,
        every: Duration,
        wake: Arc<Notify>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            match self.pass().await {
                Ok(outcomes) => outcomes.iter().for_each(log),
                Err(err) => tracing::warn!("automated certificates: cannot read or record: {err}"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
                _ = wake.notified() => {}
            }
        }
    }
}

fn log(outcome: &Outcome) {
    match outcome {
        Outcome::Issued {
            app,
            domain,
            reason,
            not_after,
        } => tracing::info!(app, domain, ?reason, %not_after, "certificate issued"),
        Outcome::Failed {
            app,
            domain,
            error,
            retry_at,
        } => tracing::warn!(app, domain, %retry_at, "certificate order failed: {error}"),
        Outcome::Waiting { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use time::macros::datetime;

    use super::*;
    use crate::acme::testing::{ManualClock, MemoryCerts};
    use crate::acme::Secret;

    const T0: OffsetDateTime = datetime!(2026-12-07 12:00 UTC);
    const DAY: time::Duration = time::Duration::DAY;

    /// Issues 90-day certificates from the clock's time, or fails as told.
    struct FakeIssuer {
        clock: Arc<ManualClock>,
        failures: Mutex<VecDeque<AcmeError>>,
        orders: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Issuer for FakeIssuer {
        async fn issue(&self, domains: &[String]) -> Result<IssuedCert, AcmeError> {
            self.orders.lock().unwrap().push(domains.to_vec());
            if let Some(error) = self.failures.lock().unwrap().pop_front() {
                return Err(error);
            }
            let now = self.clock.now();
            Ok(IssuedCert {
                domains: domains.to_vec(),
                chain_pem: String::new(),
                key_pem: Secret::new(String::new()),
                issuer: "CN=fake".to_string(),
                not_before: now,
                not_after: now + DAY * 90,
            })
        }
    }

    fn service() -> (
        AcmeService,
        Arc<FakeIssuer>,
        Arc<MemoryCerts>,
        Arc<ManualClock>,
    ) {
        let clock = Arc::new(ManualClock::new(T0));
        let issuer = Arc::new(FakeIssuer {
            clock: clock.clone(),
            failures: Mutex::new(VecDeque::new()),
            orders: Mutex::new(Vec::new()),
        });
        let certs = Arc::new(MemoryCerts::default());
        let service = AcmeService::new(issuer.clone(), certs.clone(), certs.clone(), clock.clone());
        (service, issuer, certs, clock)
    }

    fn challenge_failed() -> AcmeError {
        AcmeError::Challenge {
            domain: "www.shop.test".into(),
            detail: "connection refused (urn:ietf:params:acme:error:connection)".into(),
        }
    }

    #[tokio::test]
    async fn new_domains_get_certificates_that_are_renewed_when_due() {
        let (mut service, issuer, certs, clock) = service();
        certs.want("shop", "www.shop.test");
        certs.want("blog", "blog.example.org");
        let outcomes = service.pass().await.unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes.iter().all(|o| matches!(
            o,
            Outcome::Issued {
                reason: Reason::First,
                ..
            }
        )));
        assert_eq!(
            certs.cert("shop", "www.shop.test").unwrap().not_after,
            T0 + DAY * 90
        );
        // Fresh certificates wait for their renewal window.
        let outcomes = service.pass().await.unwrap();
        assert_eq!(
            outcomes[0],
            Outcome::Waiting {
                app: "shop".into(),
                domain: "www.shop.test".into(),
                until: T0 + DAY * 60
            }
        );
        clock.set(T0 + DAY * 60);
        let outcomes = service.pass().await.unwrap();
        assert!(matches!(
            &outcomes[0],
            Outcome::Issued { reason: Reason::Renewal, not_after, .. } if *not_after == T0 + DAY * 150
        ));
        assert_eq!(issuer.orders.lock().unwrap().len(), 4);
        assert_eq!(issuer.orders.lock().unwrap()[0], ["www.shop.test"]);
    }

    #[tokio::test]
    async fn failures_are_recorded_with_their_reason_and_back_off() {
        let (mut service, issuer, certs, clock) = service();
        certs.want("shop", "www.shop.test");
        issuer
            .failures
            .lock()
            .unwrap()
            .extend([challenge_failed(), challenge_failed()]);
        let outcomes = service.pass().await.unwrap();
        let retry_at = T0 + time::Duration::minutes(5);
        assert_eq!(
            outcomes,
            [Outcome::Failed {
                app: "shop".into(),
                domain: "www.shop.test".into(),
                error: challenge_failed().to_string(),
                retry_at,
            }]
        );
        let failure = certs.failure("shop", "www.shop.test").unwrap();
        assert!(failure.contains("www.shop.test: HTTP-01 challenge failed: connection refused"));
        // Held back until the retry time, then tried again; the second failure waits longer.
        assert!(
            matches!(service.pass().await.unwrap()[0], Outcome::Waiting { until, .. } if until == retry_at)
        );
        clock.set(retry_at);
        let outcomes = service.pass().await.unwrap();
        assert!(
            matches!(&outcomes[0], Outcome::Failed { retry_at: r, .. } if *r == retry_at + time::Duration::minutes(15))
        );
        clock.set(retry_at + time::Duration::minutes(15));
        assert!(matches!(
            service.pass().await.unwrap()[0],
            Outcome::Issued { .. }
        ));
        assert_eq!(certs.failure("shop", "www.shop.test"), None);
        assert_eq!(issuer.orders.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_removed_domain_is_left_alone_and_forgets_its_failures() {
        let (mut service, issuer, certs, _clock) = service();
        certs.want("shop", "www.shop.test");
        issuer
            .failures
            .lock()
            .unwrap()
            .push_back(challenge_failed());
        service.pass().await.unwrap();
        certs.unwant("shop", "www.shop.test");
        assert!(service.pass().await.unwrap().is_empty());
        // Added again: no backoff left from before.
        certs.want("shop", "www.shop.test");
        assert!(matches!(
            service.pass().await.unwrap()[0],
            Outcome::Issued { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_passes_on_its_period_and_when_woken_until_shut_down() {
        let (service, issuer, certs, _clock) = service();
        let wake = Arc::new(Notify::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(service.run(Duration::from_secs(3600), wake.clone(), async {
            stopped.await.ok();
        }));
        let orders = || issuer.orders.lock().unwrap().len();
        // The first pass finds nothing; a new domain and a wake-up bring an order at once.
        tokio::time::sleep(Duration::from_secs(1)).await;
        certs.want("shop", "www.shop.test");
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(orders(), 1);
        // A second domain waits for the next period.
        certs.want("blog", "blog.example.org");
        tokio::time::sleep(Duration::from_secs(1800)).await;
        assert_eq!(orders(), 1);
        tokio::time::sleep(Duration::from_secs(1800)).await;
        assert_eq!(orders(), 2);
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
