//! One simulated host: an agent's side of AgentLink with nothing behind it. It dials the
//! scheduler as `manifold-agent` does (its own HTTP/2 connection, tonic's TLS with this
//! host's certificate from the cluster CA, the agent token, the same keep-alives and the
//! same redial pauses from `manifold-endpoints`), says `Hello` with its capacity and the
//! dynos it "runs", and then answers at once: every dyno new in an `Assignments` set is
//! reported `starting` then `up` on a port, every dyno gone from it `stopping` then `down`
//! (exit 143, SIGTERM's), as a real agent's reconcile would. It heartbeats at the agent's
//! interval, ships log lines at a set rate, and answers a build request with a slug
//! uploaded to the blob store (the simulator's one seed build).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manifold_endpoints::Endpoints;
use manifold_proto::agent_link_client::AgentLinkClient;
use manifold_proto::{
    agent_message, scheduler_message, AgentMessage, Assignments, BuildEvent, BuildFinished,
    BuildRequest, Capacity, DynoState, DynoStatus, Heartbeat, Hello, LogBatch, LogEntry,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::wire::{CountingConnector, Wire};

/// What every simulated agent shares: where the scheduler is and how to talk to it.
#[derive(Debug)]
pub struct Link {
    pub url: String,
    pub agent_token: String,
    pub ca_pem: String,
    pub wire: Arc<Wire>,
    pub heartbeat: Duration,
    /// Log lines each host sends per second (0: none).
    pub log_rate: u32,
    pub stack: String,
    /// The slug a build request is answered with.
    pub slug: crate::slug::Slug,
}

/// A dyno the host "runs".
#[derive(Debug, Clone)]
pub struct Running {
    pub app: String,
    pub name: String,
    pub release: u32,
    pub port: u32,
    pub since_ms: i64,
}

/// What the host runs, as its agent would keep it.
#[derive(Debug, Default)]
pub struct HostState {
    pub generation: u64,
    pub dynos: HashMap<String, Running>,
    next_port: u32,
}

/// One simulated host.
#[derive(Debug)]
pub struct SimHost {
    pub id: String,
    pub slots: u32,
    pub memory_bytes: u64,
    pub cert_pem: String,
    pub key_pem: String,
    pub state: Mutex<HostState>,
    /// A stream to the scheduler is open.
    pub linked: AtomicBool,
}

/// As many messages as a real agent queues for its stream (`link::OUTBOUND_BUFFER`).
const OUTBOUND_BUFFER: usize = 4096;
const FIRST_PORT: u32 = 20000;
const LAST_PORT: u32 = 60000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn status(id: &str, state: DynoState, port: u32, exit: Option<i32>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Dyno(DynoStatus {
            id: id.to_string(),
            state: state.into(),
            changed_at_ms: now_ms(),
            exit_status: exit,
            reason: String::new(),
            port,
        })),
    }
}

impl SimHost {
    pub fn new(
        id: String,
        slots: u32,
        memory_bytes: u64,
        cert_pem: String,
        key_pem: String,
    ) -> Self {
        SimHost {
            id,
            slots,
            memory_bytes,
            cert_pem,
            key_pem,
            state: Mutex::new(HostState {
                next_port: FIRST_PORT,
                ..HostState::default()
            }),
            linked: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Hello`: capacity, stacks, and every dyno this host runs, all `up`.
    fn hello(&self, link: &Link) -> AgentMessage {
        let st = self.lock();
        let dynos = st
            .dynos
            .iter()
            .map(|(id, d)| DynoStatus {
                id: id.clone(),
                state: DynoState::Up.into(),
                changed_at_ms: d.since_ms,
                exit_status: None,
                reason: String::new(),
                port: d.port,
            })
            .collect();
        AgentMessage {
            kind: Some(agent_message::Kind::Hello(Hello {
                host_id: self.id.clone(),
                address: "127.0.0.1".to_string(),
                capacity: Some(Capacity {
                    memory_bytes: self.memory_bytes,
                    dyno_slots: self.slots,
                }),
                stacks: vec![link.stack.clone()],
                dynos,
                generation: st.generation,
                services: Vec::new(),
            })),
        }
    }

    /// Applies an assignment set at once and returns the reports a real agent would send.
    fn apply(&self, set: Assignments) -> Vec<AgentMessage> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let assigned: std::collections::HashSet<&str> =
            set.dynos.iter().map(|a| a.id.as_str()).collect();
        let gone: Vec<String> = st
            .dynos
            .keys()
            .filter(|id| !assigned.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            st.dynos.remove(&id);
            out.push(status(&id, DynoState::Stopping, 0, None));
            out.push(status(&id, DynoState::Down, 0, Some(143)));
        }
        for a in &set.dynos {
            if st.dynos.contains_key(&a.id) {
                continue;
            }
            let port = st.next_port;
            st.next_port = if port >= LAST_PORT {
                FIRST_PORT
            } else {
                port + 1
            };
            st.dynos.insert(
                a.id.clone(),
                Running {
                    app: a.app.clone(),
                    name: a.name.clone(),
                    release: a.release_version,
                    port,
                    since_ms: now_ms(),
                },
            );
            out.push(status(&a.id, DynoState::Starting, 0, None));
            out.push(status(&a.id, DynoState::Up, port, None));
        }
        st.generation = set.generation;
        out
    }

    /// `n` log lines from this host's dynos, round robin.
    fn log_batch(&self, n: u32, turn: &mut usize) -> Option<AgentMessage> {
        let st = self.lock();
        if st.dynos.is_empty() || n == 0 {
            return None;
        }
        let ids: Vec<(&String, &Running)> = st.dynos.iter().collect();
        let time_us = now_ms() * 1000;
        let lines = (0..n)
            .map(|_| {
                *turn = turn.wrapping_add(1);
                let (id, d) = ids[*turn % ids.len()];
                LogEntry {
                    app: d.app.clone(),
                    dyno_id: id.clone(),
                    process: d.name.clone(),
                    platform: false,
                    time_us,
                    message: format!("GET /sim 200 {turn} bytes=512"),
                }
            })
            .collect();
        Some(AgentMessage {
            kind: Some(agent_message::Kind::Logs(LogBatch { lines })),
        })
    }

    /// Holds this host's link until the task is aborted: dials, and redials after the
    /// pauses a real agent takes.
    pub async fn run(self: Arc<Self>, link: Arc<Link>) {
        let mut endpoints = match Endpoints::parse(&link.url) {
            Ok(e) => e.fresh(),
            Err(err) => {
                eprintln!("host {}: bad scheduler URL {}: {err}", self.id, link.url);
                return;
            }
        };
        loop {
            let pause = match self.session(&link, &mut endpoints).await {
                Ok(()) => endpoints.dropped(),
                Err(_) => endpoints.failed(None),
            };
            self.linked.store(false, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
    }

    /// One connection: `Err` when no stream opened, `Ok` when one opened and ended.
    async fn session(&self, link: &Link, endpoints: &mut Endpoints) -> Result<(), ()> {
        let url = endpoints.current().to_string();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&link.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        let endpoint = Endpoint::from_shared(url)
            .map_err(|_| ())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tls_config(tls)
            .map_err(|_| ())?;
        let channel = endpoint
            .connect_with_connector(CountingConnector {
                wire: link.wire.clone(),
            })
            .await
            .map_err(|_| ())?;
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        tx.send(self.hello(link)).await.map_err(|_| ())?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {}", link.agent_token)
            .parse()
            .map_err(|_| ())?;
        request.metadata_mut().insert("authorization", bearer);
        let mut inbound = AgentLinkClient::new(channel)
            .link(request)
            .await
            .map_err(|_| ())?
            .into_inner();
        endpoints.succeeded();
        self.linked.store(true, Ordering::Relaxed);
        let mut heartbeat = tokio::time::interval(link.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logs = tokio::time::interval(Duration::from_secs(1));
        logs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut turn = 0;
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Ok(Some(message)) = message else { return Ok(()) };
                    match message.kind {
                        Some(scheduler_message::Kind::Assignments(set)) => {
                            for report in self.apply(set) {
                                if tx.send(report).await.is_err() {
                                    return Ok(());
                                }
                            }
                        }
                        Some(scheduler_message::Kind::Build(build)) => {
                            let tx = tx.clone();
                            let uploader = crate::slug::Uploader::new(link, self);
                            tokio::spawn(async move { answer_build(uploader, build, tx).await });
                        }
                        None => {}
                    }
                }
                _ = heartbeat.tick() => {
                    let generation = self.lock().generation;
                    let beat = AgentMessage {
                        kind: Some(agent_message::Kind::Heartbeat(Heartbeat { generation })),
                    };
                    if tx.send(beat).await.is_err() {
                        return Ok(());
                    }
                }
                _ = logs.tick(), if link.log_rate > 0 => {
                    if let Some(batch) = self.log_batch(link.log_rate, &mut turn) {
                        if tx.send(batch).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// A build request: no build runs; the simulator's slug is uploaded to the blob store and
/// reported as the build's result, with one line of output.
async fn answer_build(
    uploader: crate::slug::Uploader,
    build: BuildRequest,
    tx: mpsc::Sender<AgentMessage>,
) {
    let event = |kind| AgentMessage {
        kind: Some(agent_message::Kind::Build(BuildEvent {
            build_id: build.build_id.clone(),
            kind: Some(kind),
        })),
    };
    let _ = tx
        .send(event(manifold_proto::build_event::Kind::Output(
            "-----> cluster-sim: no build runs; the simulator's slug is the result".to_string(),
        )))
        .await;
    let finished = match uploader.upload(&build.stack).await {
        Ok((sha256, json)) => BuildFinished {
            status: 0,
            slug_sha256: sha256,
            slug_json: json,
            error: String::new(),
        },
        Err(err) => BuildFinished {
            status: 1,
            error: format!("{err:#}"),
            ..BuildFinished::default()
        },
    };
    let _ = tx
        .send(event(manifold_proto::build_event::Kind::Finished(finished)))
        .await;
}
