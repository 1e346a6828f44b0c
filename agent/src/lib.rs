//! The Manifold agent: everything that happens on one host to run dynos, in four layers, each
//! using only those below it:
//!
//! - [`daemon`] (`manifold-agent --scheduler URL`, [`daemon::run`]): the AgentLink stream to
//!   the scheduler ([`daemon::link`], over TLS with [`daemon::tls`]), the host's assignments
//!   and what it reports, crash restarts ([`daemon::restart`]), log shipping
//!   ([`daemon::logship`]), attach relays ([`daemon::relay`]) and builds ([`build_dyno`]).
//! - [`runner`]: follows one dyno. [`runner::Dyno`] starts a dyno's shim from a
//!   [`dyno::DynoConfig`] (or adopts a running one), tails what the shim writes to the dyno's
//!   directory, probes its port and turns the records into states.
//! - [`shim`]: one single-threaded process per dyno, which owns the container and outlives
//!   the agent: it prepares the host's parts, writes the OCI spec ([`shim::spec`]), starts
//!   the container with libcontainer, captures its output ([`logs`]) and stops it.
//! - [`host`]: what the kernel gives every dyno on this machine: slug layers, root
//!   filesystems, id ranges, seccomp, cgroups, quotas, the network and its policy.
//!
//! [`dyno`] (a dyno's settings, directory and records) and [`logs`] are the words all four
//! share. An attached one-off (`manifold run`) has its terminal or pipes at its shim, on
//! `attach.sock`; [`daemon::relay`] carries them to the scheduler.

pub mod build_dyno;
pub mod daemon;
pub mod dyno;
pub mod error;
pub mod host;
pub mod logs;
pub mod runner;
pub mod shim;
/// The dyno size table, shared with the scheduler (crate `manifold-dyno`).
pub use manifold_dyno::size;
