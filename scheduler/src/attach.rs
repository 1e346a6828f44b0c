//! Attach sessions: the scheduler's half of `manifold run`. The client's upgraded HTTP
//! connection and the agent's `AgentLink.Attach` stream meet here, in one task per attached
//! one-off dyno, which passes attach frames (`manifold-attach`) between them.
//!
//! ```text
//! client ──HTTP upgrade──▶ ┌──────────── session (one task per dyno) ────────────┐
//!   reader task ─ frames ─▶│ input  (≤ 64 KiB, kept until the agent is there)    │──▶ agent (Attach)
//!   writer task ◀─ bytes ──│ output (≤ 1 MiB, kept while no client is attached)  │◀── agent
//!                          │ timers: no client for the grace → stop the dyno      │
//!                          │         no input or output for the idle timeout → stop │
//!                          │         dyno ended but no Exit came → Exit / Error     │
//!                          └─────────────────────────────────────────────────────┘
//! ```
//!
//! Either side may come first and either may come back: a client that lost its connection
//! attaches again with the same URL and gets what it missed; an agent that restarted
//! re-adopts the dyno and opens a new stream. Nothing is buffered without bound: when the
//! output buffer is full the session stops reading the agent's stream, so the dyno blocks
//! on its terminal as on a slow one; when the input buffer is full it stops reading the
//! client. The session ends once its last frame (`Exit` or `Error`) reached a client, or
//! when no client came back within the grace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use manifold_attach::{decode_all, Decoder, Frame};
use manifold_proto::AttachPacket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::model::DynoState;
use crate::sync::lock;

/// Input kept for a dyno whose agent has not attached yet (`echo … | manifold run`).
const INPUT_LIMIT: usize = 64 * 1024;
/// Output kept for a client that is not attached (or reads slowly).
const OUTPUT_LIMIT: usize = 1024 * 1024;
/// How long after its agent reported a dyno ended the session waits for the shim's own
/// `Exit` frame before it tells the client itself.
const EXIT_WAIT: Duration = Duration::from_secs(3);
/// Frames in flight between the session and a connection's reader and writer tasks.
const CONNECTION_QUEUE: usize = 16;

/// The timeouts of attached one-offs (Heroku: the client's connection closes after 1 h
/// without input or output).
#[derive(Debug, Clone, Copy)]
pub struct RunSettings {
    /// How long an attached one-off waits for its client to come back before it is stopped.
    pub reconnect_grace: Duration,
    /// How long an attached one-off may go without input or output before it is stopped.
    pub idle_timeout: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            reconnect_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// Something for a session to act on.
pub(crate) enum Event {
    /// A client attached (its connection's reader and writer tasks).
    Client {
        frames: mpsc::Receiver<Frame>,
        bytes: mpsc::Sender<Vec<u8>>,
    },
    /// The dyno's agent opened its stream.
    Agent {
        inbound: Box<Streaming<AttachPacket>>,
        outbound: mpsc::Sender<Result<AttachPacket, Status>>,
    },
    /// The agent reported a new state (shown to the client as a `Status` frame).
    State(DynoState),
    /// The dyno ended (or its host was lost) as the store sees it.
    Ended {
        exit_status: Option<i32>,
        reason: String,
    },
}

/// Stops an attached one-off whose client is gone or idle (its id, and why for its log):
/// its processes get SIGHUP (a hung-up terminal), then SIGKILL after the app's stop timeout.
pub(crate) type StopDyno = Box<dyn Fn(&str, String) + Send + Sync>;

/// The running sessions, by dyno id.
#[derive(Debug)]
pub struct Sessions {
    settings: RunSettings,
    map: std::sync::Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Event>)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub fn new(settings: RunSettings) -> Sessions {
        Sessions {
            settings,
            map: std::sync::Mutex::new(HashMap::new()),
            serial: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a session for the dyno is running (it may still hold output for a client).
    pub fn has(&self, dyno_id: &str) -> bool {
        lock(&self.map).contains_key(dyno_id)
    }

    fn remove(&self, dyno_id: &str, serial: u64) {
        let mut map = lock(&self.map);
        if map.get(dyno_id).is_some_and(|(s, _)| *s == serial) {
            map.remove(dyno_id);
        }
    }

    /// Hands an event to the dyno's session, starting one if none runs; a session started
    /// now stops its dyno with `stop` when the client is gone or idle.
    pub(crate) fn event(
        self: &Arc<Self>,
        dyno_id: &str,
        event: Event,
        stop: impl FnOnce() -> StopDyno,
    ) {
        let mut map = lock(&self.map);
        let event = match map.get(dyno_id) {
            Some((_, tx)) => match tx.send(event) {
                Ok(()) => return,
                // The session just ended: start a new one with the event.
                Err(mpsc::error::SendError(event)) => event,
            },
            None => event,
        };
        if matches!(event, Event::State(_) | Event::Ended { .. }) {
            // Nobody is attached and nobody will be told: no session needed.
            return;
        }
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(event);
        map.insert(dyno_id.to_string(), (serial, tx));
        tokio::spawn(session(
            self.clone(),
            dyno_id.to_string(),
            serial,
            rx,
            stop(),
        ));
    }
}

/// Starts the reader and writer tasks of an upgraded client connection; the event that
/// attaches it to its dyno's session.
pub(crate) fn client_connected<S>(io: S) -> Event
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (frames_tx, frames) = mpsc::channel(CONNECTION_QUEUE);
    let (bytes, mut bytes_rx) = mpsc::channel::<Vec<u8>>(CONNECTION_QUEUE);
    tokio::spawn(async move {
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.feed(&buf[..n]),
            }
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        if frames_tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::debug!("attach client sent garbage: {err}");
                        return;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(chunk) = bytes_rx.recv().await {
            if writer.write_all(&chunk).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    Event::Client { frames, bytes }
}

/// The next frame from the client, or never when none is attached.
async fn next_client_frame(client: &mut Option<mpsc::Receiver<Frame>>) -> Option<Frame> {
    match client {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next packet from the agent (`None`: its stream ended), or never without one.
async fn next_agent_packet(
    agent: &mut Option<Box<Streaming<AttachPacket>>>,
) -> Option<AttachPacket> {
    match agent {
        Some(stream) => stream.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Room to send one message on `tx`, or never without a sender.
async fn reserve<T>(
    tx: &Option<mpsc::Sender<T>>,
) -> Result<mpsc::Permit<'_, T>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

/// One attached dyno's session, to its end.
async fn session(
    sessions: Arc<Sessions>,
    dyno_id: String,
    serial: u64,
    mut events: mpsc::UnboundedReceiver<Event>,
    stop: StopDyno,
) {
    let settings = sessions.settings;
    let mut client_frames: Option<mpsc::Receiver<Frame>> = None;
    let mut client_bytes: Option<mpsc::Sender<Vec<u8>>> = None;
    let mut agent_in: Option<Box<Streaming<AttachPacket>>> = None;
    let mut agent_out: Option<mpsc::Sender<Result<AttachPacket, Status>>> = None;
    // Encoded frames waiting for the agent, and for the client.
    let mut input: Vec<u8> = Vec::new();
    let mut output: Vec<u8> = Vec::new();
    let now = Instant::now();
    let mut client_since: Option<Instant> = None;
    let mut no_client_since = Some(now);
    let mut last_activity = now;
    let mut ended_at: Option<Instant> = None;
    let mut ended_frame: Option<Frame> = None;
    // The last frame (Exit or Error) is in `output`; the session ends once it is sent.
    let mut last_queued = false;

    loop {
        let deadline = [
            (!last_queued).then_some(last_activity + settings.idle_timeout),
            no_client_since.map(|t| t + settings.reconnect_grace),
            ended_at.filter(|_| !last_queued).map(|t| t + EXIT_WAIT),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(last_activity + settings.idle_timeout);
        // Clones, so that a permit's borrow does not hold the session's own senders.
        let (to_client, to_agent) = (client_bytes.clone(), agent_out.clone());
        tokio::select! {
            event = events.recv() => match event {
                None => break,
                Some(Event::Client { frames, bytes }) => {
                    // A new connection replaces an old one (the old one closes).
                    client_frames = Some(frames);
                    client_bytes = Some(bytes);
                    client_since = Some(Instant::now());
                    no_client_since = None;
                }
                Some(Event::Agent { inbound, outbound }) => {
                    agent_in = Some(inbound);
                    agent_out = Some(outbound);
                }
                Some(Event::State(state)) => {
                    if !last_queued {
                        Frame::Status(state.as_str().to_string()).encode_into(&mut output);
                    }
                }
                Some(Event::Ended { exit_status, reason }) => {
                    if ended_at.is_none() {
                        ended_at = Some(Instant::now());
                        ended_frame = Some(match exit_status {
                            Some(status) if reason.is_empty() => Frame::Exit(status),
                            _ => Frame::Error(if reason.is_empty() {
                                "the dyno ended before its command ran".to_string()
                            } else {
                                reason
                            }),
                        });
                    }
                }
            },
            packet = next_agent_packet(&mut agent_in), if output.len() < OUTPUT_LIMIT && !last_queued => {
                let Some(packet) = packet else {
                    // The agent's stream ended; it opens a new one if the dyno lives on.
                    agent_in = None;
                    agent_out = None;
                    continue;
                };
                match decode_all(&packet.frames) {
                    Ok(frames) => {
                        for frame in frames.iter().filter(|f| !f.is_input()) {
                            if matches!(frame, Frame::Stdout(_) | Frame::Stderr(_)) {
                                last_activity = Instant::now();
                            }
                            frame.encode_into(&mut output);
                            if frame.is_last() {
                                last_queued = true;
                                break;
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!("dyno {dyno_id}: the agent sent an invalid attach frame: {err}");
                        agent_in = None;
                        agent_out = None;
                    }
                }
            },
            frame = next_client_frame(&mut client_frames), if input.len() < INPUT_LIMIT => {
                match frame {
                    Some(frame) if frame.is_input() => {
                        if matches!(frame, Frame::Stdin(_)) {
                            last_activity = Instant::now();
                        }
                        frame.encode_into(&mut input);
                    }
                    Some(other) => tracing::debug!("dyno {dyno_id}: client sent {other:?}, ignored"),
                    None => {
                        client_frames = None;
                        client_bytes = None;
                        no_client_since = Some(Instant::now());
                    }
                }
            },
            permit = reserve(&to_client), if !output.is_empty() => match permit {
                Ok(permit) => {
                    permit.send(std::mem::take(&mut output));
                    if last_queued {
                        // Sent: the writer closes the connection after it.
                        break;
                    }
                }
                Err(_) => {
                    client_frames = None;
                    client_bytes = None;
                    no_client_since = Some(Instant::now());
                }
            },
            permit = reserve(&to_agent), if !input.is_empty() => match permit {
                Ok(permit) => permit.send(Ok(AttachPacket {
                    dyno_id: String::new(),
                    frames: std::mem::take(&mut input),
                })),
                Err(_) => {
                    agent_in = None;
                    agent_out = None;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = Instant::now();
                if no_client_since.is_some_and(|t| now >= t + settings.reconnect_grace) {
                    if !last_queued && ended_at.is_none() {
                        let after = client_since.map_or("", |_| " after the client disconnected");
                        tracing::info!("dyno {dyno_id}: no client came back{after}: stopping it");
                        stop(
                            &dyno_id,
                            "Client connection closed. Sending SIGHUP to all processes".into(),
                        );
                    }
                    break;
                }
                if now >= last_activity + settings.idle_timeout && !last_queued {
                    let idle = humantime::format_duration(settings.idle_timeout);
                    Frame::Error(format!(
                        "the session had no input or output for {idle}: the dyno is stopped"
                    ))
                    .encode_into(&mut output);
                    last_queued = true;
                    stop(
                        &dyno_id,
                        format!("Idle for {idle}. Sending SIGHUP to all processes"),
                    );
                }
                if ended_at.is_some_and(|t| now >= t + EXIT_WAIT) && !last_queued {
                    if let Some(frame) = ended_frame.take() {
                        frame.encode_into(&mut output);
                    }
                    last_queued = true;
                }
            }
        }
    }
    sessions.remove(&dyno_id, serial);
}
