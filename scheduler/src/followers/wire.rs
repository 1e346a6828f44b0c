//! What a following router and the scheduler say to each other: routes and router events as
//! JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use manifold_router::{AppRoute, Backend};
use serde::{Deserialize, Serialize};

/// One app's route on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteWire {
    /// `serving`, `booting`, `sleeping`, `crashed` or `no_web_dynos`.
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
}
