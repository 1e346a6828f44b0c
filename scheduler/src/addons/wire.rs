//! What agents are told about add-ons: each host's `services` and `destroyed_services`,
//! and each dyno's `egress` (the endpoints of its app's add-ons), read from the store
//! once per [`crate::cluster::Cluster::push_assignments`].

use std::collections::HashMap;

use manifold_proto::Service;
use uuid::Uuid;

use super::model::{Addon, AddonState};
use super::SERVICES_STACK;
use crate::cluster::Placed;
use crate::model::{Host, DEFAULT_SIZE};
use crate::store::{Store, StoreError};

/// The add-ons as the hosts are to run them.
#[derive(Debug, Default)]
pub(crate) struct ServiceSets {
    addons: Vec<Addon>,
    /// Each app's add-on endpoints (`ADDRESS:PORT`), by app id.
    egress: HashMap<Uuid, Vec<String>>,
}

impl ServiceSets {
    /// Reads every add-on and attachment; `hosts` gives the hosts' addresses.
    pub(crate) async fn read(store: &dyn Store, hosts: &[Host]) -> Result<ServiceSets, StoreError> {
        let addons = store.addons(None).await?;
        let address: HashMap<&str, &str> = hosts
            .iter()
            .map(|h| (h.id.as_str(), h.address.as_str()))
            .collect();
        let endpoints: HashMap<Uuid, String> = addons
            .iter()
            .filter(|a| a.state != AddonState::Destroying)
            .filter_map(|a| {
                let address = address.get(a.host_id.as_str())?;
                Some((a.id, format!("{address}:{}", a.port?)))
            })
            .collect();
        let mut egress: HashMap<Uuid, Vec<String>> = HashMap::new();
        for attachment in store.attachments(None).await? {
            if let Some(endpoint) = endpoints.get(&attachment.addon_id) {
                let app = egress.entry(attachment.app_id).or_default();
                if !app.contains(endpoint) {
                    app.push(endpoint.clone());
                }
            }
        }
        Ok(ServiceSets { addons, egress })
    }

    /// The services `host` runs; `peers`: the addresses of the other live hosts.
    pub(crate) fn services(&self, host: &str, peers: &[String]) -> Vec<Service> {
        self.addons
            .iter()
            .filter(|a| a.host_id == host && a.state != AddonState::Destroying)
            .map(|a| Service {
                id: a.id.to_string(),
                name: a.name.clone(),
                kind: a.kind.as_str().to_string(),
                stack: SERVICES_STACK.to_string(),
                size: DEFAULT_SIZE.to_string(),
                port: a.port.map_or(0, u32::from),
                env: [
                    ("ADDON_USER", &a.user),
                    ("ADDON_PASSWORD", &a.password),
                    ("ADDON_DATABASE", &a.database),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
                peers: peers.to_vec(),
            })
            .collect()
    }

    /// The ids of the add-ons whose data `host` is to delete.
    pub(crate) fn destroyed(&self, host: &str) -> Vec<String> {
        self.addons
            .iter()
            .filter(|a| a.host_id == host && a.state == AddonState::Destroying)
            .map(|a| a.id.to_string())
            .collect()
    }

    /// The add-ons on `host` whose lines its agent may send, as log sources: their owning
    /// app's log, under the add-on's name.
    pub(crate) fn placed(&self, host: &str) -> Vec<(String, Placed)> {
        self.addons
            .iter()
            .filter(|a| a.host_id == host)
            .filter_map(|a| {
                let placed = Placed {
                    app: a.app.clone()?,
                    name: a.name.clone(),
                };
                Some((a.id.to_string(), placed))
            })
            .collect()
    }

    /// The endpoints a dyno of `app` may reach.
    pub(crate) fn egress(&self, app: Uuid) -> Vec<String> {
        self.egress.get(&app).cloned().unwrap_or_default()
    }
}
