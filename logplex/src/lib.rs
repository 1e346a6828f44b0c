//! The log plex: every line of an app in one stream, as Heroku's Logplex.
//!
//! Dynos (`app[web.1]`), the platform (`heroku[web.1]`), the router (`heroku[router]`) and
//! the API (`app[api]`) all [`LogPlex::push`] [`LogLine`]s into the app's stream. The plex
//! keeps the last 1,500 per app for `manifold logs` ([`LogPlex::recent`]), hands them to
//! live readers ([`LogPlex::tail`], `manifold logs --tail`) and ships them to drains
//! ([`LogPlex::set_drains`]: syslog over TCP or TLS, HTTPS).
//!
//! Where to start: [`LogPlex`] in `plex.rs`; then `line.rs` (the line, its rendering and
//! [`Filter`]), `tail.rs` and `drain/` (each drain a task with its own queue). The one rule
//! everything follows: `push` never waits for a reader. Every reader has a bounded queue;
//! a reader that falls behind loses lines and is told so in Heroku's words (L10 for drains,
//! L11 for tails) — see `buffer.rs`.

mod buffer;
mod drain;
mod line;
mod metrics;
mod plex;
mod ring;
mod tail;

pub use drain::guard::Refused as DrainRefused;
pub use drain::tls::{load_pem_roots, RootsError};
pub use drain::{parse_drain_url, Drain, DrainUrl, DrainUrlError};
pub use ipnet::IpNet;
pub use line::{Filter, LogLine, Source, UnknownSource, MAX_MESSAGE_BYTES};
pub use plex::{LogPlex, PlexConfig, SetDrainsError};
/// The certificate type of [`PlexConfig::drain_roots`].
pub use rustls::pki_types::CertificateDer;
pub use tail::Tail;
