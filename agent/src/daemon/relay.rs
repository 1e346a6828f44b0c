//! The attach relay: for each attached one-off dyno, the daemon carries the attach frames
//! between the dyno's shim and the scheduler, unchanged.
//!
//! ```text
//! shim ◀──attach.sock (unix)──▶ relay ◀──AgentLink.Attach (gRPC stream)──▶ scheduler ──▶ manifold run
//!        whole frames, both ways          first packet names the dyno; then packets of whole frames
//! ```
//!
//! The relay reads frame boundaries only, so that a packet never carries part of a frame, and
//! checks what the scheduler sends decodes; the shim acts on the frames. Nothing waits
//! unbounded: the relay holds at most one batch read from the shim and one packet from the
//! scheduler, so a slow side slows the other down (the shim buffers, then stops reading the
//! dyno). The gRPC stream is redialled while the dyno lives, to the next scheduler of
//! [`Endpoints`] (the attach session lives in the leader, which a follower names); the socket
//! is kept, and the shim keeps the dyno's output meanwhile. After an agent restart the new
//! relay's connection replaces the old one at the shim.

use std::time::Duration;

use manifold_attach::{decode_all, DecodeError, Decoder, MAX_PAYLOAD};
use manifold_proto::agent_link_client::AgentLinkClient;
use manifold_proto::AttachPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use manifold_endpoints::Endpoints;

use crate::daemon::link::{self, LinkError, Scheduler};
use crate::dyno::DynoDir;
use crate::runner::shim_alive;

/// How often the relay tries the shim's socket while the dyno starts.
const CONNECT_RETRY: Duration = Duration::from_millis(50);
/// Packets toward the scheduler queued at most.
const OUTBOUND_PACKETS: usize = 16;
/// After the shim's last frame, how long the relay waits for the scheduler to end the stream.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why one gRPC stream of the relay ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("attach stream failed")]
    Stream(#[source] Box<tonic::Status>),
    #[error("the scheduler sent bytes that are not attach frames")]
    Frames(#[source] DecodeError),
}

/// Relays the attached dyno `dyno_id` (its assignment id), whose directory is `dir`, until
/// its shim closes the socket after the last frame, or the shim is gone.
pub async fn run(scheduler: Scheduler, dyno_id: String, dir: DynoDir) {
    let mut socket = loop {
        match UnixStream::connect(dir.attach_socket()).await {
            Ok(socket) => break socket,
            Err(_) if shim_alive(&dir) => tokio::time::sleep(CONNECT_RETRY).await,
            Err(err) => {
                tracing::warn!("{dyno_id}: no attach socket, and the shim is gone: {err}");
                return;
            }
        }
    };
    let mut relay = Relay {
        dyno_id,
        decoder: Decoder::new(),
        up: Vec::new(),
        down: Vec::new(),
        written: 0,
        shim_done: false,
    };
    let mut endpoints = scheduler.endpoints.fresh();
    loop {
        let url = endpoints.current().to_string();
        let pause = match relay
            .stream(&scheduler, &url, &mut socket, &mut endpoints)
            .await
        {
            Ok(()) if relay.shim_done && relay.up.is_empty() => return,
            Ok(()) => {
                tracing::info!("{}: {url} ended the attach stream", relay.dyno_id);
                endpoints.dropped()
            }
            Err(err) => {
                tracing::warn!(
                    "{}: attach relay to {url}: {}",
                    relay.dyno_id,
                    crate::error::chain(&err)
                );
                endpoints.failed(err.named_leader(&endpoints))
            }
        };
        // Frames the shim sent before it ended are still worth redialling for; the daemon
        // gives up on them a while after the dyno is gone.
        if !relay.shim_done && !shim_alive(&dir) {
            return;
        }
        tokio::time::sleep(pause).await;
    }
}

impl RelayError {
    /// The leader a follower named when it refused the stream.
    fn named_leader(&self, endpoints: &Endpoints) -> Option<String> {
        match self {
            RelayError::Stream(status) | RelayError::Link(LinkError::Stream { source: status }) => {
                link::named_leader(endpoints, status)
            }
            _ => None,
        }
    }
}

/// What is in flight between the shim and the scheduler; kept across gRPC streams.
struct Relay {
    dyno_id: String,
    /// The shim's bytes not yet a whole frame.
    decoder: Decoder,
    /// Whole frames read from the shim, not yet handed to the stream.
    up: Vec<u8>,
    /// Frames from the scheduler; `written` bytes of them are on the socket.
    down: Vec<u8>,
    written: usize,
    /// The shim closed the socket: after `up`, nothing more will come.
    shim_done: bool,
}

impl Relay {
    /// One gRPC stream to `url`: returns when it ends, or once the shim is done and its last
    /// frames went up. The scheduler counts as working (and the pauses start over) once the
    /// stream carries something: a scheduler that accepts streams only to end them at once
    /// is not redialled ten times a second.
    async fn stream(
        &mut self,
        scheduler: &Scheduler,
        url: &str,
        socket: &mut UnixStream,
        endpoints: &mut Endpoints,
    ) -> Result<(), RelayError> {
        let channel = link::dial(scheduler, url).await?;
        let (tx, rx) = mpsc::channel(OUTBOUND_PACKETS);
        let hello = AttachPacket {
            dyno_id: self.dyno_id.clone(),
            frames: Vec::new(),
        };
        if tx.send(hello).await.is_err() {
            return Ok(());
        }
        let request = link::request(scheduler, ReceiverStream::new(rx))?;
        let failed = |status| RelayError::Stream(Box::new(status));
        let mut inbound = AgentLinkClient::new(channel)
            .attach(request)
            .await
            .map_err(failed)?
            .into_inner();
        let (mut from_shim, mut to_shim) = socket.split();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        while !(self.shim_done && self.up.is_empty()) {
            tokio::select! {
                read = from_shim.read(&mut buf), if self.up.is_empty() => match read {
                    Ok(n) if n > 0 => {
                        self.decoder.feed(&buf[..n]);
                        while let Some(frame) = self.next_frame() {
                            frame.encode_into(&mut self.up);
                        }
                    }
                    _ => self.shim_done = true,
                },
                permit = tx.reserve(), if !self.up.is_empty() => match permit {
                    Ok(permit) => {
                        permit.send(AttachPacket {
                            dyno_id: String::new(),
                            frames: std::mem::take(&mut self.up),
                        });
                        endpoints.succeeded();
                    }
                    Err(_) => return Ok(()),
                },
                message = inbound.message(), if self.written == self.down.len() => {
                    match message.map_err(failed)? {
                        Some(packet) => {
                            decode_all(&packet.frames).map_err(RelayError::Frames)?;
                            self.down = packet.frames;
                            self.written = 0;
                            endpoints.succeeded();
                        }
                        None => return Ok(()),
                    }
                }
                written = to_shim.write(&self.down[self.written..]), if self.written < self.down.len() => {
                    match written {
                        Ok(n) if n > 0 => self.written += n,
                        // The shim is gone: its input goes nowhere.
                        _ => {
                            self.down.clear();
                            self.written = 0;
                        }
                    }
                }
            }
        }
        // Everything went up: end our half and give the scheduler a moment to take it and
        // end its own, so that dropping the stream does not reset it under the last frames.
        drop(tx);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        Ok(())
    }

    /// The next whole frame from the shim. Bytes that are not frames mean the socket is out
    /// of step, which only a broken shim causes: treated as its end.
    fn next_frame(&mut self) -> Option<manifold_attach::Frame> {
        match self.decoder.next_frame() {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!("{}: the shim sent a bad frame: {err}", self.dyno_id);
                self.shim_done = true;
                None
            }
        }
    }
}
