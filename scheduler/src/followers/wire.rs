//! What a following router and the scheduler say to each other: routes, the edge (custom
//! domains, certificates with their keys, ACME challenges) and router events as JSON. The
//! follower token opens these routes only; keys travel over the scheduler's HTTPS when it
//! has one, and are never in a `Debug` output.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use manifold_router::{AppRoute, Backend, TlsCert};
use serde::{Deserialize, Serialize};

use crate::edge::Edge;

/// One app's route on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWire {
    /// `serving`, `booting`, `sleeping`, `crashed`, `no_web_dynos` or `maintenance`.
    pub state: String,
    #[serde(default)]
    pub backends: Vec<BackendWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendWire {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
}

/// `GET /router/v1/routes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoutesReply {
    pub version: u64,
    pub routes: BTreeMap<String, RouteWire>,
    /// Absent from an older scheduler: no domains, certificates or challenges.
    #[serde(default)]
    pub edge: EdgeWire,
}

/// The edge on the wire (see [`crate::edge`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeWire {
    /// Custom domain to app.
    #[serde(default)]
    pub domains: BTreeMap<String, String>,
    /// In the order the router takes them.
    #[serde(default)]
    pub certs: Vec<CertWire>,
    /// ACME HTTP-01 token to key authorization.
    #[serde(default)]
    pub challenges: BTreeMap<String, String>,
}

/// A certificate with its key, and the names it is served for.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CertWire {
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertWire")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

pub fn edge_to_wire(edge: &Edge) -> EdgeWire {
    EdgeWire {
        domains: edge.domains.clone(),
        certs: edge
            .certs
            .iter()
            .map(|c| CertWire {
                names: c.names.clone(),
                chain_pem: c.chain_pem.clone(),
                key_pem: c.key_pem.clone(),
            })
            .collect(),
        challenges: edge.challenges.clone(),
    }
}

pub fn edge_from_wire(wire: EdgeWire) -> Edge {
    Edge {
        domains: wire.domains,
        certs: wire
            .certs
            .into_iter()
            .map(|c| TlsCert {
                names: c.names,
                chain_pem: c.chain_pem,
                key_pem: c.key_pem,
            })
            .collect(),
        challenges: wire.challenges,
    }
}

/// `POST /router/v1/events`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterEvents {
    /// Apps that got at least one request.
    #[serde(default)]
    pub traffic: BTreeSet<String>,
    /// Sleeping apps a request is waiting for.
    #[serde(default)]
    pub wake: BTreeSet<String>,
    /// `(app, line)`: `heroku[router]` lines.
    #[serde(default)]
    pub lines: Vec<(String, String)>,
}

pub fn to_wire(route: &AppRoute) -> RouteWire {
    let (state, backends) = match route {
        AppRoute::Serving(b) => ("serving", b.as_slice()),
        AppRoute::Booting => ("booting", &[][..]),
        AppRoute::Sleeping => ("sleeping", &[][..]),
        AppRoute::Crashed => ("crashed", &[][..]),
        AppRoute::NoWebDynos => ("no_web_dynos", &[][..]),
        AppRoute::Maintenance => ("maintenance", &[][..]),
    };
    RouteWire {
        state: state.to_string(),
        backends: backends
            .iter()
            .map(|b| BackendWire {
                id: b.id.clone(),
                name: b.name.clone(),
                addr: b.addr,
            })
            .collect(),
    }
}

/// The route a wire entry names; an unknown state holds requests (`booting`), which is
/// safe for a router older than its scheduler.
pub fn from_wire(wire: &RouteWire) -> AppRoute {
    match wire.state.as_str() {
        "serving" => AppRoute::Serving(
            wire.backends
                .iter()
                .map(|b| Backend {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    addr: b.addr,
                })
                .collect(),
        ),
        "sleeping" => AppRoute::Sleeping,
        "crashed" => AppRoute::Crashed,
        "no_web_dynos" => AppRoute::NoWebDynos,
        "maintenance" => AppRoute::Maintenance,
        _ => AppRoute::Booting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_survive_the_wire() {
        let serving = AppRoute::Serving(vec![Backend {
            id: "a-web-1".into(),
            name: "web.1".into(),
            addr: "10.0.0.1:30000".parse().expect("addr"),
        }]);
        for route in [
            serving,
            AppRoute::Booting,
            AppRoute::Sleeping,
            AppRoute::Crashed,
            AppRoute::NoWebDynos,
            AppRoute::Maintenance,
        ] {
            let json = serde_json::to_string(&to_wire(&route)).expect("json");
            let back: RouteWire = serde_json::from_str(&json).expect("parse");
            assert_eq!(from_wire(&back), route);
        }
        let unknown = RouteWire {
            state: "martian".into(),
            backends: vec![],
        };
        assert_eq!(from_wire(&unknown), AppRoute::Booting);
    }

    #[test]
    fn the_edge_survives_the_wire_and_debug_hides_keys() {
        let edge = Edge {
            domains: [("www.example.com".into(), "web".into())].into(),
            certs: vec![TlsCert {
                names: vec!["www.example.com".into()],
                chain_pem: "CHAIN".into(),
                key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            }],
            challenges: [("tok".into(), "tok.thumb".into())].into(),
        };
        let reply = RoutesReply {
            version: 3,
            routes: BTreeMap::new(),
            edge: edge_to_wire(&edge),
        };
        let json = serde_json::to_string(&reply).expect("json");
        let back: RoutesReply = serde_json::from_str(&json).expect("parse");
        assert_eq!(edge_from_wire(back.edge), edge);
        assert!(!format!("{reply:?}").contains("PRIVATE KEY"));
        // An older scheduler sends no edge.
        let old: RoutesReply = serde_json::from_str(r#"{"version":1,"routes":{}}"#).expect("parse");
        assert_eq!(old.edge, EdgeWire::default());
    }
}
