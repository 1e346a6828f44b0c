//! The AgentLink hub: the gRPC service agents dial. It only translates: the wire's messages
//! become calls on the [`Core`] (a `Hello`, a dyno's report, build events, log lines) and
//! the link's end; what to do with them is decided there and in [`crate::cluster`].

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use manifold_proto::agent_link_server::AgentLink;
use manifold_proto::{
    agent_message, AgentMessage, AttachPacket, DynoStatus, Hello, SchedulerMessage,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::LinkSender;
use crate::core::Core;
use crate::leadership::{Leadership, LEADER_HEADER};
use crate::model::DynoReport;
use crate::store::StoreError;
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

/// Admits an agent's link: refuses one without the cluster's agent token. (tonic's
/// interceptor signature fixes the large `Status` error type.)
///
/// A replica that does not lead refuses the link (`unavailable`, with the leader's URL in
/// the `manifold-leader` metadata when it is known): an agent links to the leader only.
#[allow(clippy::result_large_err)]
pub fn admit_link(
    token: String,
    leadership: Arc<Leadership>,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        if leadership.holds().is_none() {
            let leader = leadership.leader_url();
            let mut status = Status::unavailable(format!(
                "this scheduler is not the leader; the leader is {}",
                leader.as_deref().unwrap_or("not known yet")
            ));
            if let Some(value) = leader.and_then(|l| l.parse().ok()) {
                status.metadata_mut().insert(LEADER_HEADER, value);
            }
            return Err(status);
        }
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

fn report_from_wire(s: &DynoStatus) -> Option<DynoReport> {
    Some(DynoReport {
        id: s.id.clone(),
        state: s.dyno_state().ok()?,
        changed_at: OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(s.changed_at_ms) * 1_000_000,
        )
        .unwrap_or_else(|_| OffsetDateTime::now_utc()),
        exit_status: s.exit_status,
        reason: s.reason.clone(),
        port: u16::try_from(s.port).ok().filter(|p| *p != 0),
    })
}

/// A `Hello`: the link and the dynos the agent runs, for the core.
pub(crate) async fn connect(
    core: &Arc<Core>,
    hello: Hello,
    tx: LinkSender,
) -> Result<u64, StoreError> {
    let reports: Vec<DynoReport> = hello.dynos.iter().filter_map(report_from_wire).collect();
    core.agent_connected(hello, reports, tx).await
}

/// Hands one message after `Hello` to the core.
pub(crate) async fn agent_message(
    core: &Arc<Core>,
    host: &str,
    message: AgentMessage,
) -> Result<(), StoreError> {
    core.cluster.seen(host);
    match message.kind {
        Some(agent_message::Kind::Dyno(status)) => {
            if let Some(report) = report_from_wire(&status) {
                core.dyno_reported(host, &report).await?;
            }
        }
        Some(agent_message::Kind::Build(event)) => core.build_event(host, event).await,
        Some(agent_message::Kind::Logs(batch)) => core.ingest_logs(host, batch),
        Some(agent_message::Kind::Service(status)) => core.service_reported(host, &status).await?,
        Some(agent_message::Kind::Heartbeat(_)) | Some(agent_message::Kind::Hello(_)) | None => {}
    }
    Ok(())
}

type LinkStream = Pin<Box<dyn Stream<Item = Result<SchedulerMessage, Status>> + Send>>;
type AttachStream = Pin<Box<dyn Stream<Item = Result<AttachPacket, Status>> + Send>>;

/// Messages read from an agent's link and not yet handled (reading waits beyond that, as
/// an agent's own queue does: `link::OUTBOUND_BUFFER`).
const INBOUND_QUEUE: usize = 4096;

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
        let host = hello.host_id.clone();
        let serial = connect(&self.core, hello, tx)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        // The link is read apart from where its messages are handled: a message read is
        // the host alive, even while the reports before it still wait for the store (a
        // heartbeat queued behind a deploy's reports once made hosts look lost).
        let (work, mut queued) = mpsc::channel::<AgentMessage>(INBOUND_QUEUE);
        let core = self.core.clone();
        let handler = host.clone();
        tokio::spawn(async move {
            while let Some(message) = queued.recv().await {
                if let Err(err) = agent_message(&core, &handler, message).await {
                    tracing::warn!("host {handler}: {err}");
                }
            }
            core.agent_disconnected(&handler, serial).await;
        });
        let core = self.core.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        core.cluster.seen(&host);
                        if work.send(message).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!("host {host}: link ended: {err}");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}
