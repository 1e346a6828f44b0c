//! Add-ons provisioned on the cluster: a managed PostgreSQL or Redis that one host's agent
//! runs as a long-lived service with a persistent volume (the `services` stack), attached
//! to apps through a config var (`DATABASE_URL`, `REDIS_URL`).
//!
//! ```text
//! POST /apps/{app}/addons ──▶ place (a live host with the `services` stack, fewest add-ons)
//!   ──▶ store (provisioning) ──▶ that host's Assignments.services ──▶ agent: initdb, port
//! agent ──ServiceStatus UP + port──▶ available ──▶ NAME_URL on every attached app, as a release
//! every dyno of an attached app: Assignment.egress = its add-ons' ADDRESS:PORT
//! every Service: peers = the other live hosts' addresses (where those dynos may run)
//! destroy ──▶ detach (releases) ──▶ destroying ──▶ destroyed_services ──DESTROYED──▶ rows gone
//! ```
//!
//! An add-on is placed once and never moved: its data is on its host. A host that is lost
//! leaves its add-ons crashed (unavailable) until it returns, as Heroku's Essential plans
//! are single-node too. Here: placement and names; the flows are in `lifecycle`, what
//! goes to agents in `wire`, backups in `backups`.

pub mod backups;
mod lifecycle;
pub mod model;
pub(crate) mod wire;

use rand::Rng;

use crate::reconciler::{HostView, Liveness};
use model::{Addon, AddonKind, AddonState};

pub use lifecycle::AddonError;

/// The stack a host must have to run add-ons: the services' binaries.
pub const SERVICES_STACK: &str = "services";

/// The longest attachment name (its config var adds `_URL`).
const MAX_ATTACHMENT_NAME: usize = 64;

/// Words for add-on names, as Heroku names them (`postgresql-curved-12345`).
const ADJECTIVES: &[&str] = &[
    "amorphous",
    "angular",
    "animate",
    "aerodynamic",
    "asymmetrical",
    "backlit",
    "clean",
    "closed",
    "colorful",
    "concave",
    "contoured",
    "convex",
    "crystalline",
    "cubic",
    "curly",
    "curved",
    "cylindrical",
    "deep",
    "defined",
    "dimensional",
    "encircled",
    "flat",
    "fluffy",
    "globular",
    "graceful",
    "horizontal",
    "infinite",
    "lively",
    "octagonal",
    "opaque",
    "parallel",
    "polished",
    "regular",
    "rigid",
    "round",
    "rugged",
    "shaped",
    "sinuous",
    "slippery",
    "solid",
    "spherical",
    "symmetrical",
    "tetrahedral",
    "transparent",
    "triangular",
    "vertical",
];

/// A new add-on's name: its kind, a word, a number.
pub(crate) fn new_name(kind: AddonKind) -> String {
    let mut rng = rand::thread_rng();
    let word = ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())];
    format!("{}-{word}-{}", kind.as_str(), rng.gen_range(10000..100000))
}

/// A random string of lowercase letters and digits, starting with `prefix` (PostgreSQL
/// identifiers and passwords alike: nothing to quote or escape in a URL).
pub(crate) fn secret(prefix: &str, len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut out = prefix.to_string();
    out.extend((0..len).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char));
    out
}

/// An attachment name as given (`--as`): letters, digits and `_`, starting with a letter,
/// uppercased (its config var is `NAME_URL`).
pub fn attachment_name(given: &str) -> Result<String, AddonError> {
    let name = given.to_ascii_uppercase();
    let ok = name.len() <= MAX_ATTACHMENT_NAME
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(AddonError::InvalidName(given.to_string()))
    }
}

/// Where a new add-on goes: a connected host, not draining, with the `services` stack,
/// running the fewest add-ons (ties to the first by id); `None` when there is none.
pub(crate) fn place<'h>(hosts: &'h [HostView], addons: &[Addon]) -> Option<&'h str> {
    hosts
        .iter()
        .filter(|h| {
            h.liveness == Liveness::Connected
                && !h.host.draining
                && h.host.stacks.iter().any(|s| s == SERVICES_STACK)
        })
        .min_by_key(|h| {
            let on_host = addons
                .iter()
                .filter(|a| a.host_id == h.host.id && a.state != AddonState::Destroying)
                .count();
            (on_host, h.host.id.clone())
        })
        .map(|h| h.host.id.as_str())
}

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod tests;
