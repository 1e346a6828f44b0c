//! The router with a fixed route table, for the benchmark: `bench.localhost` goes to one
//! backend. Usage: `router-bench [LISTEN] [BACKEND] [TLS_LISTEN CERT KEY]` (defaults
//! 127.0.0.1:18081 and 127.0.0.1:18080; with the last three it also serves HTTPS with the
//! PEM certificate CERT and key KEY for `bench.localhost`). Log lines are rendered as in
//! production, then discarded. `ROUTER_WORKERS=N` sets `RouterConfig::workers` (default:
//! one per CPU; 0 serves on this program's multi-threaded runtime).

use std::error::Error;
use std::sync::Arc;

use manifold_router::{AppRoute, Backend, Hooks, RouteTable, Router, RouterConfig, TlsCert};
use tokio::net::TcpListener;

struct Discard;

impl Hooks for Discard {
    fn request(&self, _app: &str) {}
    fn wake(&self, _app: &str) {}
    fn log(&self, _app: &str, _line: String) {}
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let backend = args.next().unwrap_or_else(|| "127.0.0.1:18080".to_owned());
    let table = RouteTable::new();
    table.set(
        "bench",
        AppRoute::Serving(vec![Backend {
            id: "bench-web-1".to_owned(),
            name: "web.1".to_owned(),
            addr: backend.parse()?,
        }]),
    );
    let mut config = RouterConfig::default();
    if let Ok(workers) = std::env::var("ROUTER_WORKERS") {
        config.workers = workers
            .parse()
            .map_err(|_| format!("ROUTER_WORKERS is a number of threads, not {workers:?}"))?;
    }
    let router = Arc::new(Router::new(table.clone(), Arc::new(Discard), config));
    if let (Some(tls_listen), Some(cert), Some(key)) = (args.next(), args.next(), args.next()) {
        let errors = table.set_certs(&[TlsCert {
            names: vec!["bench.localhost".to_owned()],
            chain_pem: std::fs::read_to_string(cert)?,
            key_pem: std::fs::read_to_string(key)?,
        }]);
        if let Some(error) = errors.first() {
            return Err(error.to_string().into());
        }
        let tls = TcpListener::bind(&tls_listen).await?;
        tokio::spawn(router.clone().serve_tls(tls, async {
            let _ = tokio::signal::ctrl_c().await;
        }));
    }
    let listener = TcpListener::bind(&listen).await?;
    router
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
