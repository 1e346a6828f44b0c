//! The edge: what routers need besides the dynos, published with the route table to the
//! scheduler's own router and to router processes (`followers/wire.rs`):
//!
//! - custom domains (`domains:add`), routed like `APP.DOMAIN` (`hostname.rs` says which
//!   names are accepted);
//! - TLS certificates, served by SNI: the **default** one for the cluster's domain
//!   (`DOMAIN`, `*.DOMAIN` and every `APP.DOMAIN`, since clients refuse a wildcard under a
//!   single label such as `localhost`), issued here from the cluster CA and re-issued when
//!   the apps change or it nears expiry, unless the operator gives one; and each app's
//!   **uploaded** (`certs:add`, checked by `inspect.rs`) or **acme** certificates, served
//!   only for the app's own domains they cover, so no app can take another's names;
//! - ACME HTTP-01 challenges, answered by the routers ([`Routing::set_challenges`]).
//!
//! [`refresh`] rebuilds the certificates and domains from the store; it runs at start and
//! after every change to apps, domains or certificates.

pub mod acm;
pub mod hostname;
pub mod inspect;

use std::collections::BTreeMap;
use std::path::PathBuf;

use manifold_router::{RouteTable, TlsCert};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::certs::{router_names, ClusterCa, ROUTER_DAYS};
use crate::core::Core;
use crate::model::{Cert, CertMaterial, CertSource, CertStatus};
use crate::routing::Routing;
use crate::store::StoreError;

use hostname::covers;

/// A default certificate this close to expiry is issued again.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// Where the certificate of the cluster's domain comes from.
#[derive(Clone, Default)]
pub enum DefaultCert {
    /// None: HTTPS serves custom domains only.
    #[default]
    None,
    /// The operator's (`--router-cert`, `--router-key`), served as given.
    Given(TlsCert),
    /// Issued by the cluster CA in this directory (`ca.pem`, `ca-key.pem`).
    ClusterCa(PathBuf),
}

impl std::fmt::Debug for DefaultCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultCert::None => f.write_str("None"),
            DefaultCert::Given(cert) => f.debug_tuple("Given").field(&cert.names).finish(),
            DefaultCert::ClusterCa(dir) => f.debug_tuple("ClusterCa").field(dir).finish(),
        }
    }
}

/// What the routers serve at the edge besides routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edge {
    /// Custom domain to app.
    pub domains: BTreeMap<String, String>,
    /// In the order the router takes them: later ones win a name.
    pub certs: Vec<TlsCert>,
    /// ACME HTTP-01 challenges: token to key authorization.
    pub challenges: BTreeMap<String, String>,
}

impl Edge {
    /// Makes `table` serve this edge; `before` is what it served (certificates are parsed
    /// again only when they changed). A certificate a router cannot use is logged (by its
    /// names, never its key) and left out.
    pub fn apply(&self, table: &RouteTable, before: Option<&Edge>) {
        if before.map(|b| &b.domains) != Some(&self.domains) {
            table.set_domains(self.domains.clone().into_iter().collect());
        }
        if before.map(|b| &b.certs) != Some(&self.certs) {
            for error in table.set_certs(&self.certs) {
                tracing::warn!("{error}");
            }
        }
        if before.map(|b| &b.challenges) != Some(&self.challenges) {
            table.set_challenges(self.challenges.clone().into_iter().collect());
        }
    }
}

/// Why the edge could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot issue the router's certificate for the cluster's domain")]
    Issue(#[from] crate::certs::CertsError),
}

/// Rebuilds the edge from the store (issuing the default certificate if it must) and
/// publishes it to the routers.
pub async fn refresh(core: &Core) -> Result<(), EdgeError> {
    let apps: Vec<String> = core
        .store
        .apps()
        .await?
        .into_iter()
        .map(|a| a.name)
        .collect();
    let domains = core.store.domains(None).await?;
    let stored = core.store.certs(None).await?;
    let mut certs = Vec::new();
    match &core.settings.default_cert {
        DefaultCert::None => {}
        DefaultCert::Given(cert) => certs.push(cert.clone()),
        DefaultCert::ClusterCa(dir) => {
            let names = router_names(&core.settings.router.domain, &apps);
            let current = stored.iter().find(|c| c.source == CertSource::Default);
            let cert = match current {
                Some(cert) if fresh(cert, &names) => cert.clone(),
                _ => {
                    let cert = issue_default(dir.clone(), names, current.map(|c| c.id)).await?;
                    core.store.save_cert(&cert).await?;
                    tracing::info!(
                        "issued the router's certificate for {}",
                        cert.names.join(", ")
                    );
                    cert
                }
            };
            certs.extend(served(&cert, &cert.names));
        }
    }
    let by_app: BTreeMap<Uuid, Vec<String>> =
        domains.iter().fold(BTreeMap::new(), |mut by_app, d| {
            by_app.entry(d.app_id).or_default().push(d.hostname.clone());
            by_app
        });
    for cert in stored.iter().filter(|c| c.source != CertSource::Default) {
        let Some(app_domains) = cert.app_id.and_then(|id| by_app.get(&id)) else {
            continue;
        };
        let names: Vec<String> = app_domains
            .iter()
            .filter(|d| cert.names.iter().any(|n| covers(n, d)))
            .cloned()
            .collect();
        certs.extend(served(cert, &names));
    }
    core.routing.set_edge(
        domains.into_iter().map(|d| (d.hostname, d.app)).collect(),
        certs,
    );
    Ok(())
}

/// How often the edge is rebuilt without a change (the default certificate is re-issued
/// within [`RENEW_BEFORE`] of its expiry).
pub const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Rebuilds the edge every [`REFRESH_EVERY`], forever (for the default certificate's
/// renewal; changes are published as they happen).
pub async fn refresh_forever(core: std::sync::Arc<Core>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(err) = refresh(&core).await {
            tracing::warn!("cannot refresh the router's domains and certificates: {err}");
        }
    }
}

/// Whether the default certificate names exactly `names` and is not near expiry.
fn fresh(cert: &Cert, names: &[String]) -> bool {
    cert.names == names
        && cert
            .material
            .as_ref()
            .is_some_and(|m| m.not_after - OffsetDateTime::now_utc() > RENEW_BEFORE)
}

/// A certificate as a router serves it for `names`; none without material or names.
fn served(cert: &Cert, names: &[String]) -> Option<TlsCert> {
    let material = cert.material.as_ref()?;
    (!names.is_empty()).then(|| TlsCert {
        names: names.to_vec(),
        chain_pem: material.chain_pem.clone(),
        key_pem: material.key_pem.clone(),
    })
}

/// Issues the default certificate from the cluster CA in `dir` (file reads and signing off
/// the async threads).
async fn issue_default(
    dir: PathBuf,
    names: Vec<String>,
    id: Option<Uuid>,
) -> Result<Cert, EdgeError> {
    let signed = tokio::task::spawn_blocking(move || {
        let ca = ClusterCa::load(&dir)?;
        let signed = ca.sign(&names[1], &names, &[], ROUTER_DAYS)?;
        let issuer = x509_issuer(&signed.cert_pem).unwrap_or_default();
        Ok::<_, crate::certs::CertsError>((names, signed, issuer))
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("issuing task failed: {e}")))?;
    let (names, signed, issuer) = signed?;
    let now = OffsetDateTime::now_utc();
    Ok(Cert {
        id: id.unwrap_or_else(Uuid::new_v4),
        app_id: None,
        source: CertSource::Default,
        names,
        material: Some(CertMaterial {
            chain_pem: signed.cert_pem,
            key_pem: signed.key_pem,
            issuer,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(i64::from(ROUTER_DAYS)),
        }),
        status: CertStatus::Active,
        last_error: None,
        created_at: now,
        updated_at: now,
    })
}

/// The issuer's name of a PEM certificate.
fn x509_issuer(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.issuer().to_string())
}

impl Routing {
    /// Publishes the ACME HTTP-01 challenges the routers answer (token to key
    /// authorization), replacing the previous set: the seam where an ACME client puts what
    /// the ACME server will ask for at `http://DOMAIN/.well-known/acme-challenge/TOKEN`.
    pub fn set_challenges(&self, challenges: BTreeMap<String, String>) {
        self.publish_edge(|published| published.challenges = challenges);
    }

    /// Publishes domains and certificates (see [`refresh`]).
    pub(crate) fn set_edge(&self, domains: BTreeMap<String, String>, certs: Vec<TlsCert>) {
        self.publish_edge(|published| {
            published.domains = domains;
            published.certs = certs;
        });
    }
}

#[cfg(test)]
mod tests;
