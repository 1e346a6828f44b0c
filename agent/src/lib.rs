//! The Manifold agent: everything that happens on one host to run dynos.
//!
//! Where to start: [`supervisor::Dyno`] runs one dyno from a [`dyno::DynoConfig`]. It starts
//! a [`shim`] (one single-threaded process per dyno, which owns the container and outlives
//! the agent), and follows what the shim writes to the dyno's directory. The shim's steps, in
//! order: [`slug`] (verify and unpack the slug once per host), [`rootfs`] (overlay of the slug
//! layer over the stack), [`spec`] (the OCI runtime spec: namespaces, user, capabilities,
//! seccomp, the [`size`]'s cgroup limits), libcontainer, [`network`] (veth to the host bridge,
//! NAT, published port), then [`logs`] capture until exit, and cleanup.
//!
//! The daemon (`manifold-agent --scheduler URL`) is [`daemon::run`]: it holds the AgentLink
//! stream ([`link`], over TLS with [`tls`] for an `https://` scheduler) and reconciles the
//! host's dynos toward the scheduler's assignments. An attached one-off (`manifold run`) has
//! its terminal or pipes at its shim, on `attach.sock`; [`relay`] carries them to the
//! scheduler.

pub mod build;
pub mod cgroup;
pub mod daemon;
pub mod dyno;
pub mod gc;
pub mod host;
pub mod ids;
pub mod inotify;
pub mod link;
pub mod logs;
pub mod logship;
pub mod metrics;
pub mod netpolicy;
pub mod network;
pub mod outbox;
pub mod quota;
pub mod relay;
pub mod restart;
pub mod rootfs;
pub mod seccomp;
pub mod shim;
/// The dyno size table, shared with the scheduler (crate `manifold-sizes`).
pub use manifold_sizes as size;
pub mod slug;
pub mod spec;
pub mod supervisor;
pub mod tls;
pub mod watch;
