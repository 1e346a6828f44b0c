//! A router in its own process (`manifold-scheduler router`): its table follows the
//! scheduler's, and what its hooks see goes back to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use manifold_endpoints::Endpoints;
use manifold_router::{AppRoute, Hooks, RouteTable, Router, RouterConfig};
use tokio::sync::Notify;

use crate::sync::lock;

use super::*;

/// How often a following router sends what its hooks collected.
const EVENTS_EVERY: Duration = Duration::from_millis(250);

/// Where a following router listens and whom it follows.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// The scheduler replicas' APIs (`http(s)://host:port`); the router follows the leader.
    pub scheduler: Endpoints,
    pub token: String,
    pub router: RouterConfig,
    /// The HTTP client for the scheduler (with the roots an https:// scheduler is checked
    /// against: [`crate::tls::follower_client`]).
    pub client: reqwest::Client,
}

/// What the hooks collected since the last `POST /router/v1/events`.
#[derive(Debug, Default)]
struct Pending {
    events: Mutex<RouterEvents>,
    /// A wake is sent at once rather than at the next tick.
    urgent: Notify,
}

#[derive(Debug)]
struct RemoteHooks(Arc<Pending>);

impl Hooks for RemoteHooks {
    fn request(&self, app: &str) {
        let mut e = lock(&self.0.events);
        if !e.traffic.contains(app) {
            e.traffic.insert(app.to_string());
        }
    }

    fn wake(&self, app: &str) {
        lock(&self.0.events).wake.insert(app.to_string());
        self.0.urgent.notify_one();
    }

    fn log(&self, app: &str, line: String) {
        let mut e = lock(&self.0.events);
        // Bounded: a scheduler that is away costs lines, not memory.
        if e.lines.len() < 10_000 {
            e.lines.push((app.to_string(), line));
        }
    }
}

/// Runs a router that follows the scheduler until `shutdown` resolves: HTTP on `listener`,
/// HTTPS on `tls` when given.
pub async fn run(
    config: FollowConfig,
    listener: tokio::net::TcpListener,
    tls: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let table = RouteTable::new();
    let pending = Arc::new(Pending::default());
    let router = Arc::new(Router::new(
        table.clone(),
        Arc::new(RemoteHooks(pending.clone())),
        config.router.clone(),
    ));
    let client = config.client.clone();
    let follow = tokio::spawn(follow_routes(client.clone(), config.clone(), table));
    let send = tokio::spawn(send_events(client, config, pending));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let https = tls.map(|tls| tokio::spawn(router.clone().serve_tls(tls, until(stopped.clone()))));
    let served = router.serve(listener, until(stopped)).await;
    if let Some(https) = https {
        // After a shutdown HTTPS finishes its requests too; if HTTP failed, it is cut.
        if served.is_err() {
            https.abort();
        }
        let _ = https.await;
    }
    follow.abort();
    send.abort();
    served
}

/// Keeps `table` equal to the leader's, long-polling for changes; on errors retries with
/// the table as it was (routing goes on while the schedulers are away), at the next
/// scheduler replica.
async fn follow_routes(client: reqwest::Client, config: FollowConfig, table: RouteTable) {
    let mut endpoints = config.scheduler.fresh();
    // The version of the table, and which scheduler it is a version of: another one (a new
    // leader) counts its own, so its first answer is taken whole.
    let mut version: Option<(String, u64)> = None;
    let mut edge: Option<crate::edge::Edge> = None;
    // Says which router this is, so that the scheduler knows which version each routes by.
    let id = uuid::Uuid::new_v4();
    loop {
        let after = version
            .as_ref()
            .filter(|(from, _)| from == endpoints.current())
            .map(|(_, v)| *v);
        let reply = leader::call(&mut endpoints, "cannot get routes", |scheduler| {
            let mut url = format!("{scheduler}/router/v1/routes");
            if let Some(v) = after {
                url.push_str(&format!("?after={v}&router={id}"));
            }
            client
                .get(url)
                .bearer_auth(&config.token)
                .timeout(LONG_POLL + Duration::from_secs(10))
        })
        .await;
        if let Some((scheduler, r)) = reply {
            match r.json::<RoutesReply>().await {
                Ok(routes) => {
                    let now = (scheduler.clone(), routes.version);
                    if version.as_ref() != Some(&now) {
                        let table_now: HashMap<String, AppRoute> = routes
                            .routes
                            .iter()
                            .map(|(app, wire)| (app.clone(), from_wire(wire)))
                            .collect();
                        table.replace_all(table_now);
                        let edge_now = edge_from_wire(routes.edge);
                        edge_now.apply(&table, edge.as_ref());
                        edge = Some(edge_now);
                        version = Some(now);
                    }
                }
                Err(err) => {
                    tracing::warn!("routes from {scheduler}: {err}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Sends the hooks' events every [`EVENTS_EVERY`] (a wake at once) to the scheduler the
/// route table last came from; what cannot be sent is dropped, except wakes, which are
/// sent again with the next batch.
async fn send_events(client: reqwest::Client, config: FollowConfig, pending: Arc<Pending>) {
    loop {
        tokio::select! {
            () = pending.urgent.notified() => {}
            () = tokio::time::sleep(EVENTS_EVERY) => {}
        }
        let events = std::mem::take(&mut *lock(&pending.events));
        if events.traffic.is_empty() && events.wake.is_empty() && events.lines.is_empty() {
            continue;
        }
        let mut endpoints = config.scheduler.fresh();
        let sent = leader::call(&mut endpoints, "cannot send router events", |scheduler| {
            client
                .post(format!("{scheduler}/router/v1/events"))
                .bearer_auth(&config.token)
                .json(&events)
                .timeout(Duration::from_secs(10))
        })
        .await;
        if sent.is_none() {
            lock(&pending.events).wake.extend(events.wake);
        }
    }
}
