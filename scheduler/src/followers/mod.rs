//! Processes that follow the scheduler: a router (`manifold-scheduler router`, `router.rs`)
//! and a log plex (`manifold-scheduler logplex`, `logplex.rs`), each on other machines, over
//! the scheduler's REST API with the follower token; `routes.rs` is the scheduler's side of
//! the router's, `wire.rs` what they say.
//!
//! By default the router runs inside the scheduler and reads the core's route table
//! directly. Run on other machines (in front of a cluster, or several of them behind a load
//! balancer), a router follows the scheduler over its REST API with the follower token
//! (`STATE_DIR/follower-token`: it opens these routes and no other):
//!
//! - `GET /router/v1/routes?after=V` long-polls the table: it answers at once when the
//!   table's version is not `V`, else when it changes (or after [`LONG_POLL`] with the same
//!   version), so a router sees a dyno come up within one round trip;
//! - `POST /router/v1/events` carries what the router's [`manifold_router::Hooks`] saw: apps that got
//!   requests (sleep-on-idle), apps to wake, and `heroku[router]` lines for the log plex.
//!
//! Each follows the scheduler replicas it is given (`--scheduler URL,URL…`, see
//! `leader.rs`): requests go to the one that last answered, and move to the leader a
//! follower replica names, or to the next replica, when it does not. A new leader's route
//! table has versions of its own, so the router takes its whole table at the first answer
//! from a scheduler other than the last one.
//!
//! What it cannot do from afar: a stopping dyno is drained only of the requests of the
//! scheduler's own router (the scheduler does not wait on remote routers' in-flight counts).

mod leader;
mod logplex;
mod router;
mod routes;
mod wire;

pub use logplex::run_logplex;
pub use router::{run, FollowConfig};
pub use routes::{routes, LONG_POLL};
pub use wire::{
    edge_from_wire, edge_to_wire, from_wire, to_wire, BackendWire, CertWire, EdgeWire, RouteWire,
    RouterEvents, RoutesReply,
};

/// An error with its causes, as `a: b: c` (a TLS failure is a few sources below reqwest's
/// message).
fn causes(err: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(err))
}

#[cfg(test)]
mod tests;
