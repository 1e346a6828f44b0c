//! The Manifold router: an HTTP/1.1 and HTTPS (HTTP/2 or HTTP/1.1 by ALPN) reverse proxy that sends each request to one of its app's
//! `up` web dynos, with Heroku's semantics (error codes H10–H28, router log lines, held
//! requests while an app boots or wakes).
//!
//! Where to start:
//! - [`RouteTable`] (`table.rs`) is the only thing the scheduler writes: per app an
//!   [`AppRoute`] (the up web dynos, or why there are none). Requests read it; held requests
//!   wait on it.
//! - [`Router::serve`] (`router.rs`) accepts client connections; `proxy.rs` is the life of
//!   one request: Host → app → hold or refuse → pick a dyno (`pick.rs`, two random choices) →
//!   connect (pooled, `pool.rs`) → forward, stream the body back (`body.rs`).
//! - `exchange.rs` is the per-request record that ends as exactly one `heroku[router]` log
//!   line (`logline.rs`) and one sample in [`Router::metrics`] (`metrics.rs`); `codes.rs`
//!   lists the Heroku error codes with their status and wording.
//!
//! - HTTPS: [`Router::serve_tls`] terminates TLS with the certificates of `certs.rs`, picked
//!   by SNI from what the scheduler set ([`RouteTable::set_certs`]); custom domains
//!   ([`RouteTable::set_domains`]) route like `APP.<domain>`, and ACME HTTP-01 challenges
//!   ([`RouteTable::set_challenges`]) are answered by the router itself.
//!
//! The router never decides anything about dynos: sleeping apps are woken through
//! [`Hooks::wake`], and a dyno being stopped is drained by the scheduler watching
//! [`RouteTable::in_flight`].

mod body;
mod certs;
mod codes;
mod config;
mod exchange;
mod headers;
mod io;
mod logline;
mod metrics;
mod pages;
mod pick;
mod pool;
mod proxy;
mod router;
mod table;

pub use certs::{CertError, TlsCert};
pub use config::RouterConfig;
pub use router::{Hooks, Router};
pub use table::{AppRoute, Backend, RouteTable};
