//! `manifold-scheduler`: the control plane.
//!
//! Start at [`model`] (the records) and [`store`] (what is kept, one transaction per
//! operation). [`reconciler::plan`] decides, from a snapshot, which dynos to create and stop,
//! using [`planner`] (a pure function from hosts to a placement). [`core::Core`] wires the
//! services, each owning its state ([`cluster`], [`routing`], [`logs`], [`builds`],
//! [`release_phase`], [`attach`]), and drives the reconciler; [`api`] (REST) and [`hub`]
//! (AgentLink gRPC) only translate requests into calls on it. [`builds`] turns uploads into
//! slugs and releases; [`server`] serves both protocols on one port, over TLS with [`tls`]
//! (certificates from [`certs`]). One-off dynos: [`oneoff`] takes `manifold run` (the core
//! places them), [`attach`] joins a `manifold run` client to its dyno, [`release_phase`]
//! runs a release's `release` command before it goes live. [`acme`] gets and renews
//! certificates for custom domains from an ACME server. [`leadership`] elects one replica
//! of several sharing a database to lead; the others serve reads and name the leader.

pub mod acme;
pub mod addons;
mod admission;
pub mod api;
pub mod attach;
pub mod auth;
pub mod blobs;
pub mod builds;
pub mod certs;
pub mod cluster;
pub mod core;
pub mod edge;
pub mod followers;
pub mod git;
pub mod http;
pub mod hub;
pub mod leadership;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod oneoff;
pub mod pipelines;
pub mod planner;
pub mod reconciler;
pub mod release_phase;
mod reports;
pub mod review_apps;
pub mod routing;
pub mod server;
pub mod store;
mod sync;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
