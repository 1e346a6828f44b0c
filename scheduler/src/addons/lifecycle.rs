//! The add-ons' flows across the services: create (place, store, tell the host), what the
//! host reports (the port, up, crashed, destroyed), attach and detach (config vars as
//! releases), destroy, and hosts that are lost. Each step is stored before the hosts are
//! told, and the hosts' sets are always read whole from the store (see
//! [`crate::addons::wire`]), so a lost message is repaired by the next.

use std::collections::BTreeMap;

use manifold_proto::{ServiceState, ServiceStatus};
use time::OffsetDateTime;
use uuid::Uuid;

use super::model::{Addon, AddonKind, AddonState, Attachment, PLANS};
use super::{attachment_name, new_name, place, secret, SERVICES_STACK};
use crate::core::Core;
use crate::metrics::Counters;
use crate::reconciler::{HostView, Liveness};
use crate::store::StoreError;

/// Why an add-on operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error("unknown add-on plan {0:?}: use one of {plans}", plans = plan_names())]
    UnknownPlan(String),
    #[error(
        "invalid attachment name {0:?}: use letters, digits and _, starting with a letter \
         (it names the config var NAME_URL)"
    )]
    InvalidName(String),
    #[error(
        "no host can run add-ons now: none is connected with the `{SERVICES_STACK}` stack \
         (install it on a host: scripts/setup); nothing was created"
    )]
    NoServicesHost,
    #[error("{addon} belongs to {owner}: destroy it from there (-a {owner})")]
    NotOwner { addon: String, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn plan_names() -> String {
    PLANS.iter().map(|(p, _)| *p).collect::<Vec<_>>().join(", ")
}

/// The release description of attaching or detaching, as Heroku words it.
fn described(verb: &str, attachment: &Attachment) -> String {
    format!("{verb} {} (@ref:{})", attachment.name, attachment.addon)
}

impl Core {
    /// Creates an add-on of `plan` owned by `app`, attached to it as `attachment` (the
    /// kind's default when `None`), on a host that can run it; its URL follows once its
    /// host reports it up.
    pub async fn create_addon(
        &self,
        app: &str,
        plan: &str,
        attachment: Option<&str>,
    ) -> Result<(Addon, Attachment), AddonError> {
        let kind =
            AddonKind::of_plan(plan).ok_or_else(|| AddonError::UnknownPlan(plan.to_string()))?;
        let name = attachment_name(attachment.unwrap_or(kind.default_attachment()))?;
        let owner = self.store.app(app).await?;
        let hosts = self.cluster.host_views().await?;
        let existing = self.store.addons(None).await?;
        let host = place(&hosts, &existing).ok_or(AddonError::NoServicesHost)?;
        let addon = Addon {
            id: Uuid::new_v4(),
            name: new_name(kind),
            kind,
            plan: plan.to_string(),
            app_id: Some(owner.id),
            app: Some(owner.name),
            host_id: host.to_string(),
            port: None,
            user: secret("u", 13),
            password: secret("p", 39),
            database: secret("d", 13),
            state: AddonState::Provisioning,
            reason: String::new(),
            created_at: OffsetDateTime::now_utc(),
        };
        let created = self.store.create_addon(&addon, &name).await?;
        tracing::info!("placing add-on {} ({}) on {host}", addon.name, addon.id);
        self.logs.log_api(
            app,
            format!("Add {} ({}) as {name}", addon.name, addon.plan),
        );
        self.cluster.push_assignments([host]).await?;
        Ok(created)
    }

    /// Attaches an add-on to `app` as `name` (the kind's default when `None`); an add-on
    /// that is up gives the app its URL at once, as a release.
    pub async fn attach_addon(
        &self,
        addon: &str,
        app: &str,
        name: Option<&str>,
        user: &str,
    ) -> Result<Attachment, AddonError> {
        let target = self.store.addon(addon).await?;
        let name = attachment_name(name.unwrap_or(target.kind.default_attachment()))?;
        let attachment = self.store.attach_addon(target.id, app, &name).await?;
        if let Some(url) = self.addon_url(&target).await? {
            let changes = BTreeMap::from([(attachment.config_var(), Some(url))]);
            self.change_config(app, &changes, &described("Attach", &attachment), user)
                .await?;
        }
        self.push_all().await?;
        Ok(attachment)
    }

    /// Removes an attachment and its config var (a release).
    pub async fn detach_addon(&self, id: Uuid, user: &str) -> Result<Attachment, AddonError> {
        let attachment = self.store.detach_addon(id).await?;
        self.unset_url(&attachment, user).await?;
        self.push_all().await?;
        Ok(attachment)
    }

    /// Destroys an add-on `app` owns: detaches it everywhere (releases removing its vars),
    /// then its host deletes its data; the rows go once the host reports it destroyed.
    pub async fn destroy_addon(
        &self,
        app: &str,
        addon: &str,
        user: &str,
    ) -> Result<Addon, AddonError> {
        let target = self.store.addon(addon).await?;
        if target.app.as_deref() != Some(app) {
            return Err(AddonError::NotOwner {
                addon: target.name,
                owner: target.app.unwrap_or_else(|| "no app".into()),
            });
        }
        Ok(self.destroy(target.id, user).await?)
    }

    async fn destroy(&self, id: Uuid, user: &str) -> Result<Addon, StoreError> {
        let (addon, attachments) = self.store.destroy_addon(id).await?;
        for attachment in &attachments {
            self.unset_url(attachment, user).await?;
        }
        tracing::info!("destroying add-on {} on {}", addon.name, addon.host_id);
        self.push_all().await?;
        Ok(addon)
    }

    /// Destroys the add-ons `app` owns (the app is being deleted).
    pub(crate) async fn destroy_owned_addons(&self, app: &str) -> Result<(), StoreError> {
        for addon in self.store.addons(Some(app)).await? {
            if addon.app.as_deref() == Some(app) && addon.state != AddonState::Destroying {
                self.destroy(addon.id, "manifold").await?;
            }
        }
        Ok(())
    }

    /// `host`'s agent reports the state of one of its add-on services (in `Hello` or
    /// alone). A report about another host's add-on is refused, as for dynos.
    pub(crate) async fn service_reported(
        &self,
        host: &str,
        status: &ServiceStatus,
    ) -> Result<(), StoreError> {
        let addon = match self.store.addon(&status.id).await {
            Ok(addon) => addon,
            Err(StoreError::AddonNotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        if addon.host_id != host {
            Counters::add(&self.counters.refused_reports, 1);
            tracing::warn!(
                "host {host}: refused its report about add-on {}: it is on host {}",
                addon.name,
                addon.host_id
            );
            return Ok(());
        }
        let state = status.state();
        let port = u16::try_from(status.port).ok().filter(|p| *p != 0);
        if let (Some(kept), Some(reported)) = (addon.port, port) {
            if kept != reported {
                tracing::warn!(
                    "host {host}: add-on {} reported port {reported}, but its port is {kept}",
                    addon.name
                );
            }
        }
        let (next, reason) = match (addon.state, state) {
            (AddonState::Destroying, ServiceState::ServiceDestroyed) => {
                self.store.delete_addon(addon.id).await?;
                tracing::info!("add-on {} destroyed on {host}", addon.name);
                self.cluster.push_assignments([host]).await?;
                return Ok(());
            }
            // Until its data is gone, a destroying add-on stays so, whatever it reports.
            (AddonState::Destroying, _) => return Ok(()),
            (_, ServiceState::ServiceUp) if addon.port.or(port).is_some() => {
                (AddonState::Available, String::new())
            }
            (_, ServiceState::ServiceCrashed) => {
                (AddonState::Crashed, non_empty(&status.reason, "crashed"))
            }
            (_, ServiceState::ServiceStopped) => (
                AddonState::Crashed,
                non_empty(&status.reason, "stopped by its host"),
            ),
            // Starting, or a report without what it needs: the state stays.
            (state, _) => (state, addon.reason.clone()),
        };
        let Some(updated) = self
            .store
            .set_addon_state(addon.id, next, &reason, port)
            .await?
        else {
            return Ok(());
        };
        if updated.port != addon.port {
            self.push_all().await?;
        }
        if addon.state == AddonState::Provisioning && next == AddonState::Available {
            tracing::info!("add-on {} is up on {host}", addon.name);
            self.publish_url(&updated).await?;
        }
        Ok(())
    }

    /// Marks the add-ons of lost hosts crashed: they are not moved (their data is there).
    pub(crate) async fn addons_on_lost_hosts(&self, hosts: &[HostView]) -> Result<(), StoreError> {
        let liveness: std::collections::HashMap<&str, Liveness> = hosts
            .iter()
            .map(|h| (h.host.id.as_str(), h.liveness))
            .collect();
        for addon in self.store.addons(None).await? {
            let lost = liveness
                .get(addon.host_id.as_str())
                .is_none_or(|l| *l == Liveness::Lost);
            let live = matches!(
                addon.state,
                AddonState::Available | AddonState::Provisioning
            );
            if lost && live {
                let reason = format!(
                    "its host {} is lost: unavailable until that host returns (an add-on \
                     is not moved: its data is there)",
                    addon.host_id
                );
                tracing::warn!("add-on {}: {reason}", addon.name);
                self.store
                    .set_addon_state(addon.id, AddonState::Crashed, &reason, None)
                    .await?;
            }
        }
        Ok(())
    }

    /// The URL of an add-on whose port is known, on its host's address.
    pub(crate) async fn addon_url(&self, addon: &Addon) -> Result<Option<String>, StoreError> {
        if addon.port.is_none() || addon.state == AddonState::Destroying {
            return Ok(None);
        }
        let hosts = self.store.hosts().await?;
        Ok(hosts
            .iter()
            .find(|h| h.id == addon.host_id)
            .and_then(|h| addon.url(&h.address)))
    }

    /// Sets the add-on's URL on every app it is attached to, each as a release.
    async fn publish_url(&self, addon: &Addon) -> Result<(), StoreError> {
        let Some(url) = self.addon_url(addon).await? else {
            return Ok(());
        };
        let attachments = self.store.attachments(None).await?;
        for attachment in attachments.iter().filter(|a| a.addon_id == addon.id) {
            let changes = BTreeMap::from([(attachment.config_var(), Some(url.clone()))]);
            self.change_config(
                &attachment.app,
                &changes,
                &described("Attach", attachment),
                "manifold",
            )
            .await?;
        }
        Ok(())
    }

    /// Removes a detached attachment's config var from its app (a release), if it is set.
    async fn unset_url(&self, attachment: &Attachment, user: &str) -> Result<(), StoreError> {
        let app = self.store.app(&attachment.app).await?;
        let var = attachment.config_var();
        if app.config.contains_key(&var) {
            let changes = BTreeMap::from([(var, None)]);
            self.change_config(&app.name, &changes, &described("Detach", attachment), user)
                .await?;
        }
        Ok(())
    }

    /// Sends every host its set: an add-on's endpoint is in the egress of dynos anywhere.
    async fn push_all(&self) -> Result<(), StoreError> {
        let hosts = self.store.hosts().await?;
        self.cluster
            .push_assignments(hosts.iter().map(|h| h.id.as_str()))
            .await
    }
}

fn non_empty(reason: &str, otherwise: &str) -> String {
    if reason.is_empty() {
        otherwise.to_string()
    } else {
        reason.to_string()
    }
}
