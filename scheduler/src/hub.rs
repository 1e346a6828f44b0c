//! The AgentLink hub: the gRPC service agents dial. It only translates: a `Hello` registers
//! the link and records the dynos the agent runs, reports update the store, build events go
//! to [`crate::builds`]; then it pokes the reconciler, which decides.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use manifold_proto::agent_link_server::AgentLink;
use manifold_proto::{
    agent_message, AgentMessage, AttachPacket, DynoState as WireState, DynoStatus, Hello,
    SchedulerMessage,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::{lock, Core, CoreError, Link};
use crate::metrics::Counters;
use crate::model::{Desired, DynoReport, DynoState};
use crate::store::{DynoChanges, Reported};
use crate::tls::{check_agent, Peer};

/// The service; one per scheduler.
#[derive(Debug, Clone)]
pub struct Hub {
    core: Arc<Core>,
}

impl Hub {
    pub fn new(core: Arc<Core>) -> Hub {
        Hub { core }
    }

    /// With `--cluster-ca`, refuses (and logs) a call whose connection's client certificate
    /// is not valid for `host` (see [`crate::tls`]).
    #[allow(clippy::result_large_err)]
    fn check_cert(&self, peer: Option<&Peer>, host: &str, what: &str) -> Result<(), Status> {
        if !self.core.settings.agent_certs {
            return Ok(());
        }
        check_agent(peer, host).map_err(|err| {
            let from = peer.map_or_else(|| "?".to_string(), |p| p.addr.to_string());
            tracing::warn!("refused the {what} from {from}: {err}");
            err.status()
        })
    }
}

/// Refuses a link without the cluster's agent token. (tonic's interceptor signature fixes
/// the large `Status` error type.)
#[allow(clippy::result_large_err)]
pub fn check_token(token: String) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.is_some_and(|g| crate::auth::same_secret(g, &token)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong agent token: start the agent with --token (MANIFOLD_AGENT_TOKEN)",
            ))
        }
    }
}

/// A host id as hosts are named in the store, the CLI and dyno placement.
fn valid_host_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn state_from_wire(state: i32) -> Option<DynoState> {
    Some(match WireState::try_from(state).ok()? {
        WireState::Starting => DynoState::Starting,
        WireState::Up => DynoState::Up,
        WireState::Crashed => DynoState::Crashed,
        WireState::Down => DynoState::Down,
        WireState::Complete => DynoState::Complete,
        WireState::Stopping => DynoState::Stopping,
        WireState::Unspecified => return None,
    })
}

fn report_from_wire(s: &DynoStatus) -> Option<DynoReport> {
    Some(DynoReport {
        id: s.id.clone(),
        state: state_from_wire(s.state)?,
        changed_at: OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(s.changed_at_ms) * 1_000_000,
        )
        .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        exit_status: s.exit_status,
        reason: s.reason.clone(),
        port: u16::try_from(s.port).ok().filter(|p| *p != 0),
    })
}

impl Core {
    /// Registers a connected agent: records its host and dynos, forgets dynos it was told
    /// to stop and no longer runs, and sends it its assignments.
    async fn hello(
        &self,
        hello: &Hello,
        tx: mpsc::UnboundedSender<Result<SchedulerMessage, Status>>,
    ) -> Result<u64, CoreError> {
        let capacity = hello.capacity.unwrap_or_default();
        self.store
            .upsert_host(
                &hello.host_id,
                &hello.address,
                capacity.memory_bytes,
                capacity.dyno_slots,
                &hello.stacks,
                OffsetDateTime::now_utc(),
            )
            .await?;
        let serial = self.serial();
        lock(&self.links).insert(
            hello.host_id.clone(),
            Link {
                serial,
                tx,
                last_seen: Instant::now(),
            },
        );
        lock(&self.gone_since).remove(&hello.host_id);
        for status in &hello.dynos {
            self.host_report(&hello.host_id, status).await?;
        }
        let running: std::collections::HashSet<&str> =
            hello.dynos.iter().map(|d| d.id.as_str()).collect();
        let gone: Vec<String> = self
            .store
            .dynos(None)
            .await?
            .into_iter()
            .filter(|d| {
                d.host_id == hello.host_id
                    && d.desired == Desired::Stopped
                    && !running.contains(d.id.as_str())
            })
            .map(|d| d.id)
            .collect();
        if !gone.is_empty() {
            self.store
                .apply_dyno_changes(&DynoChanges {
                    delete: gone,
                    ..DynoChanges::default()
                })
                .await?;
        }
        tracing::info!(
            "host {} connected from {} with {} dynos",
            hello.host_id,
            hello.address,
            hello.dynos.len()
        );
        self.push_assignments(&hello.host_id).await?;
        self.poke();
        Ok(serial)
    }

    /// Records a state `host`'s agent reports for one of its dynos; returns the dyno as
    /// updated. A report about a dyno of another host is refused (and logged): it changes
    /// nothing, so a compromised agent cannot mark other hosts' dynos up or down, publish
    /// a port for them or end their release phase. A late report, whose state cannot follow
    /// the stored one, is ignored too (and logged).
    async fn host_report(
        &self,
        host: &str,
        status: &DynoStatus,
    ) -> Result<Option<crate::model::Dyno>, CoreError> {
        let Some(report) = report_from_wire(status) else {
            return Ok(None);
        };
        Ok(match self.store.report_dyno(host, &report).await? {
            Reported::Updated(dyno) => Some(*dyno),
            Reported::Unknown => None,
            Reported::OtherHost(owner) => {
                Counters::add(&self.counters.refused_reports, 1);
                tracing::warn!(
                    "host {host}: refused its report that dyno {} is {}: that dyno is on host {owner}",
                    report.id,
                    report.state.as_str()
                );
                None
            }
            Reported::Stale(stored) => {
                tracing::warn!(
                    "host {host}: ignored a late report that dyno {} is {}: it is {}, which \
                     that cannot follow",
                    report.id,
                    report.state.as_str(),
                    stored.as_str()
                );
                None
            }
        })
    }

    /// Handles one message after `Hello`.
    async fn agent_message(
        self: &Arc<Self>,
        host: &str,
        message: AgentMessage,
    ) -> Result<(), CoreError> {
        if let Some(link) = lock(&self.links).get_mut(host) {
            link.last_seen = Instant::now();
        }
        match message.kind {
            Some(agent_message::Kind::Dyno(status)) => {
                let Some(dyno) = self.host_report(host, &status).await? else {
                    return Ok(());
                };
                if dyno.state == DynoState::Crashed {
                    Counters::add(&self.counters.crashes, 1);
                }
                let ended = matches!(
                    dyno.state,
                    DynoState::Down | DynoState::Complete | DynoState::Crashed
                );
                if dyno.attach.is_some() {
                    self.attach_event(
                        &dyno.id,
                        if ended {
                            crate::attach::Event::Ended {
                                exit_status: dyno.exit_status,
                                reason: dyno.reason.clone(),
                            }
                        } else {
                            crate::attach::Event::State(dyno.state)
                        },
                    );
                }
                if ended && dyno.process_type == crate::model::RELEASE_TYPE {
                    self.release_dyno_ended(&dyno).await;
                }
                if ended && dyno.desired == Desired::Stopped {
                    self.store
                        .apply_dyno_changes(&DynoChanges {
                            delete: vec![dyno.id.clone()],
                            ..DynoChanges::default()
                        })
                        .await?;
                }
                self.poke();
            }
            Some(agent_message::Kind::Build(event)) => self.build_event(host, event).await,
            Some(agent_message::Kind::Logs(batch)) => self.ingest_logs(host, batch),
            Some(agent_message::Kind::Heartbeat(_))
            | Some(agent_message::Kind::Hello(_))
            | None => {}
        }
        Ok(())
    }

    /// The link ended: the host is missing from now, lost after the deadline; its builds fail.
    async fn disconnected(&self, host: &str, serial: u64) {
        let removed = {
            let mut links = lock(&self.links);
            if links.get(host).is_some_and(|l| l.serial == serial) {
                links.remove(host);
                true
            } else {
                false
            }
        };
        if removed {
            lock(&self.gone_since).insert(host.to_string(), Instant::now());
            tracing::warn!("host {host} disconnected");
            self.host_builds_failed(host).await;
            self.poke();
        }
    }
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;
type AttachStream = Pin<Box<dyn Stream<Item = Result<AttachPacket, Status>> + Send>>;

/// Packets in flight toward an agent's attach stream (the session waits beyond that).
const ATTACH_QUEUE: usize = 16;

#[tonic::async_trait]
impl AgentLink for Hub {
    type LinkStream = LinkStream;
    type AttachStream = AttachStream;

    /// An agent's stream for one attached one-off dyno: handed to the dyno's session.
    async fn attach(
        &self,
        request: Request<Streaming<AttachPacket>>,
    ) -> Result<Response<AttachStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the attach stream ended before naming its dyno")
        })?;
        let dyno = self
            .core
            .store
            .dynos(None)
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .find(|d| d.id == first.dyno_id && d.attach.is_some());
        let Some(dyno) = dyno else {
            return Err(Status::not_found(format!(
                "no attached one-off dyno {}",
                first.dyno_id
            )));
        };
        // Only the dyno's own host may carry its terminal.
        self.check_cert(peer.as_ref(), &dyno.host_id, "attach stream")?;
        let (outbound, rx) = mpsc::channel(ATTACH_QUEUE);
        self.core.attach_event(
            &first.dyno_id,
            crate::attach::Event::Agent {
                inbound: Box::new(inbound),
                outbound,
            },
        );
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn link(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<LinkStream>, Status> {
        let peer = request.extensions().get::<Peer>().cloned();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                kind: Some(agent_message::Kind::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message must be Hello")),
        };
        if !valid_host_id(&hello.host_id) {
            return Err(Status::invalid_argument(format!(
                "invalid host id {:?}: use up to 63 letters, digits, '-', '_' or '.'",
                hello.host_id
            )));
        }
        self.check_cert(peer.as_ref(), &hello.host_id, "agent link")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let serial = self
            .core
            .hello(&hello, tx)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let core = self.core.clone();
        let host = hello.host_id.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if let Err(err) = core.agent_message(&host, message).await {
                            tracing::warn!("host {host}: {err}");
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!("host {host}: link ended: {err}");
                        break;
                    }
                }
            }
            core.disconnected(&host, serial).await;
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
