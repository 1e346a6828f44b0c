//! The agent daemon: holds the link to the scheduler and reconciles this host's dynos toward
//! the last assignment set it got (level-triggered: it is never told what changed, only what
//! should run).
//!
//! ```text
//!   link::run ──LinkEvent──▶ ┌──────────── Core (one task, owns all state) ────────────┐
//!   dyno tasks ──Input─────▶ │ assignments → agent.json → reconcile: launch / stop     │──▶ AgentMessage
//!   build tasks ──Input────▶ │ dyno events → DynoStatus; crashes → RestartSchedule     │    (Hello first)
//!                            └─────────────────────────────────────────────────────────┘
//! ```
//!
//! One dyno entry, per assignment id ([`Phase`]):
//!
//! ```text
//! Launching ──launched──▶ Running ──unassigned──▶ Stopping ──ended──▶ (removed, `down`)
//!     │ failed                │ ended (crashed, still assigned)
//!     ▼                       ▼
//!  Backoff ◀──────────────────┘──timer──▶ Launching        one-off that ended ──▶ Done
//! ```
//!
//! Every dyno runs under its own shim, so the daemon holds nothing a dyno needs: killed and
//! restarted, it re-adopts the running dynos from their directories ([`Dyno::adopt`]).

pub mod link;
pub mod logship;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod restart;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manifold_proto as proto;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::build_dyno;
use crate::daemon::restart::{RestartPolicy, RestartSchedule};
use crate::dyno::{
    write_atomic, AttachSpec, DynoConfig, DynoDir, HostConfig, SlugSource, DYNO_GID, DYNO_UID,
};
use crate::host::ids::IdRanges;
use crate::logs::timestamp;
use crate::runner::{self, Dyno, Event, LogLine, Source, State};
use crate::size::DynoSize;
use link::{Blobs, LinkEvent, Scheduler};
use logship::{LogRate, LogShipper};
use metrics::AgentMetrics;
use outbox::Outbox;

/// Everything the daemon is configured with (from flags).
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub scheduler: Scheduler,
    pub host_id: String,
    /// Where the router reaches this host's published ports.
    pub address: String,
    pub memory_bytes: u64,
    pub slots: u32,
    pub ports: PortRange,
    pub heartbeat: Duration,
    pub host: HostConfig,
    /// The binary started as `BIN shim --dir DIR` for every dyno (this executable).
    pub shim_binary: PathBuf,
    pub slugbuilder: PathBuf,
    pub buildpacks_dir: Option<PathBuf>,
    /// The only directory whose subdirectories a build may use as buildpacks named by path:
    /// the scheduler passes on what API users ask for, and a host path from them must not
    /// mount an arbitrary host directory into a build. `None`: no directory buildpacks.
    pub buildpack_root: Option<PathBuf>,
    /// The largest slug a build may produce.
    pub max_slug_bytes: u64,
    /// When crashed formation dynos are started again.
    pub restart: RestartPolicy,
    /// How long a web dyno has to accept connections on `$PORT` before R10 kills it.
    pub boot_timeout: Duration,
    /// How fast one dyno may log before its lines are dropped (and counted, L10).
    pub log_rate: LogRate,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long a slug no dyno uses stays on this host ([`crate::host::gc`]).
    pub slug_retention: Duration,
    /// Each app's own user-namespace id range, where dynos get a user namespace.
    pub ids: Option<IdRanges>,
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot use state directory {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The message of an error and all its causes, on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An inclusive range of host ports, `START-END`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("invalid port range {s:?}: expected START-END"))?;
        let parse = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in {s:?}"))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start == 0 || start > end {
            return Err(format!("invalid port range {s:?}: START must be 1..=END"));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Parses a memory size: bytes, or a number with `K`, `M`, `G` or `T` (binary units).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("invalid memory size {s:?}: unknown unit {c:?}")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid memory size {s:?}: expected bytes or e.g. 8G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("memory size {s:?} is too large"))
}

/// The default capacity: the host's memory less 512 MiB for the system and the agent.
pub fn default_memory(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib * 1024).saturating_sub(512 << 20))
}

/// The host id: the flag, else STATE_DIR/host-id, else the hostname; written to
/// STATE_DIR/host-id when that does not exist yet, so it stays stable across restarts.
pub fn host_id(state_dir: &Path, flag: Option<String>) -> std::io::Result<String> {
    let file = state_dir.join("host-id");
    let stored = std::fs::read_to_string(&file)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let id = match (flag, &stored) {
        (Some(id), _) => id,
        (None, Some(id)) => id.clone(),
        (None, None) => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    if stored.is_none() {
        std::fs::create_dir_all(state_dir)?;
        write_atomic(&file, format!("{id}\n").as_bytes())?;
    }
    Ok(id)
}

/// Hands out host ports for web dynos' `$PORT`, each to one dyno of this agent at a time.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    used: BTreeSet<u16>,
}

/// Every port of the range is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free host port in {range}")]
pub struct PortsExhausted {
    pub range: PortRange,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        PortAllocator {
            range,
            used: BTreeSet::new(),
        }
    }

    /// The lowest free port.
    pub fn allocate(&mut self) -> Result<u16, PortsExhausted> {
        let port = (self.range.start..=self.range.end)
            .find(|p| !self.used.contains(p))
            .ok_or(PortsExhausted { range: self.range })?;
        self.used.insert(port);
        Ok(port)
    }

    /// Marks a port a re-adopted dyno already publishes as taken.
    pub fn claim(&mut self, port: u16) {
        self.used.insert(port);
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

/// What reconciling must do: assignments without a dyno, dynos without an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub start: Vec<String>,
    pub stop: Vec<String>,
}

/// The difference between what should run and what this agent has.
pub fn plan<'a>(
    assigned: impl IntoIterator<Item = &'a str>,
    present: impl IntoIterator<Item = &'a str>,
) -> Plan {
    let assigned: BTreeSet<&str> = assigned.into_iter().collect();
    let present: BTreeSet<&str> = present.into_iter().collect();
    Plan {
        start: assigned
            .difference(&present)
            .map(|s| s.to_string())
            .collect(),
        stop: present
            .difference(&assigned)
            .map(|s| s.to_string())
            .collect(),
    }
}

/// One assigned dyno, as kept in `agent.json` (the protobuf type has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub command: String,
    pub size: String,
    pub stack: String,
    pub slug_sha256: String,
    pub slug_size: u64,
    pub env: BTreeMap<String, String>,
    pub release_version: u32,
    /// The app's R10 limit in seconds; 0 means the agent's `--boot-timeout`.
    #[serde(default)]
    pub boot_timeout_secs: u32,
    /// The app's SIGTERM-to-SIGKILL grace in seconds; 0 means 30 s.
    #[serde(default)]
    pub stop_timeout_secs: u32,
    /// A client is attached (`manifold run`): the dyno's terminal or pipes are relayed to
    /// the scheduler instead of its output being logged.
    #[serde(default)]
    pub attach: Option<AttachSpec>,
}

impl From<proto::Assignment> for AssignmentRecord {
    fn from(a: proto::Assignment) -> Self {
        let slug = a.slug.unwrap_or_default();
        AssignmentRecord {
            id: a.id,
            app: a.app,
            name: a.name,
            command: a.command,
            size: a.size,
            stack: a.stack,
            slug_sha256: slug.sha256,
            slug_size: slug.size,
            env: a.env.into_iter().collect(),
            release_version: a.release_version,
            boot_timeout_secs: a.boot_timeout_secs,
            stop_timeout_secs: a.stop_timeout_secs,
            attach: a.attach.map(|s| AttachSpec {
                tty: s.tty,
                cols: u16::try_from(s.cols).unwrap_or(u16::MAX),
                rows: u16::try_from(s.rows).unwrap_or(u16::MAX),
            }),
        }
    }
}

impl AssignmentRecord {
    fn process_type(&self) -> &str {
        self.name.split('.').next().unwrap_or_default()
    }

    /// One-offs and builds are never restarted.
    fn one_off(&self) -> bool {
        matches!(self.process_type(), "run" | "release" | "build")
    }
}

/// The daemon's persistent state, `STATE_DIR/agent.json`: the last assignment set applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub generation: u64,
    pub assignments: Vec<AssignmentRecord>,
}

impl AgentState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("agent.json")
    }

    /// The saved state; none saved yet is the empty state.
    pub fn load(path: &Path) -> std::io::Result<AgentState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temporary file, then rename), readable by root only: the
    /// assignments carry the apps' config vars.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::dyno::write_durable(path, &json)
    }
}

/// The assignment a dyno directory runs, beside `dyno.json` (whose id is the container's).
const ASSIGNMENT_FILE: &str = "assignment";
/// In each dyno directory: the state last reported and since when (`UP 1732345678901`), so
/// that a restarted daemon re-adopting the dyno reports the time it really came up rather
/// than its own start (`ps` would show every dyno of the host as just restarted).
const SINCE_FILE: &str = "state-since";

fn since_text(state: proto::DynoState, changed_at_ms: i64) -> String {
    format!("{} {changed_at_ms}\n", state.as_str_name())
}

fn parse_since(text: &str) -> Option<(proto::DynoState, i64)> {
    let (state, ms) = text.trim().split_once(' ')?;
    Some((proto::DynoState::from_str_name(state)?, ms.parse().ok()?))
}
/// How long a stopped dyno may take: the shim's own grace period plus its cleanup.
const GRACE: Duration = Duration::from_secs(30);

/// How long an attached dyno's relay may go on after the dyno ended, to deliver its last frames.
const RELAY_GRACE: Duration = Duration::from_secs(10);

/// How long start-up waits for re-adopted dynos to replay their streams before linking.
const ADOPT_SETTLE: Duration = Duration::from_secs(5);

/// How often waiting log lines go to the scheduler (sooner when a batch is full): `logs
/// --tail` shows a line well within a second of the dyno writing it.
const LOG_FLUSH: Duration = Duration::from_millis(100);

/// Where a dyno entry is in its life.
#[derive(Debug)]
enum Phase {
    /// Fetching the slug and starting the shim.
    Launching,
    /// Followed; a message on `stop` stops it.
    Running { stop: mpsc::UnboundedSender<()> },
    /// A stop was asked for; waiting for its end.
    Stopping,
    /// Crashed; a timer will start it again.
    Backoff,
    /// A one-off that ended: kept (so it is not started again) until unassigned.
    Done,
}

/// One dyno the agent has, whatever its phase.
#[derive(Debug)]
struct Entry {
    /// The app, kept here because lines keep coming after the assignment is gone (a
    /// stopping dyno's last words).
    app: String,
    name: String,
    /// The current run's container id: events of an earlier run are ignored.
    run: String,
    /// Published host port (web dynos).
    port: Option<u16>,
    phase: Phase,
    status: proto::DynoStatus,
    restarts: RestartSchedule,
    /// A re-adopted dyno's state before the daemon restarted, and since when.
    since: Option<(proto::DynoState, i64)>,
}

/// What the core task reacts to, besides the link.
#[derive(Debug)]
enum Input {
    Launched {
        id: String,
        run: String,
        stop: mpsc::UnboundedSender<()>,
    },
    LaunchFailed {
        id: String,
        run: String,
        reason: String,
    },
    Dyno {
        id: String,
        run: String,
        event: Event,
    },
    Ended {
        id: String,
        run: String,
    },
    Restart {
        id: String,
        run: String,
    },
    Build(proto::BuildEvent),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A state as `manifold ps` writes it.
fn proto_state_name(state: proto::DynoState) -> &'static str {
    match state {
        proto::DynoState::Starting => "starting",
        proto::DynoState::Up => "up",
        proto::DynoState::Crashed => "crashed",
        proto::DynoState::Down => "down",
        proto::DynoState::Complete => "complete",
        proto::DynoState::Stopping => "stopping",
        proto::DynoState::Unspecified => "unknown",
    }
}

fn proto_state(state: State) -> proto::DynoState {
    match state {
        State::Starting => proto::DynoState::Starting,
        State::Up => proto::DynoState::Up,
        State::Stopping => proto::DynoState::Stopping,
        State::Crashed => proto::DynoState::Crashed,
        State::Down => proto::DynoState::Down,
        State::Complete => proto::DynoState::Complete,
    }
}

/// A container id for one run of an assignment: readable, unique per run, short enough for
/// a hostname and an nft comment.
fn container_id(assignment: &str) -> String {
    let clean: String = assignment
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{clean}-{:08x}", rand::random::<u32>())
}

/// Runs the daemon until SIGTERM or Ctrl-C. Dynos keep running when it returns: the next
/// daemon re-adopts them.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let state_dir = config.host.state_dir.clone();
    let state_err = |source| DaemonError::State {
        path: state_dir.clone(),
        source,
    };
    std::fs::create_dir_all(config.host.dynos_dir()).map_err(state_err)?;
    for dir in [config.host.dynos_dir(), state_dir.join("builds")] {
        match crate::host::quota::check(&dir) {
            crate::host::quota::Made::Limited => {
                tracing::info!("disk quotas on in {}", dir.display())
            }
            crate::host::quota::Made::Unlimited(why) => tracing::warn!(
                "dynos and builds in {} have no disk quota: {why} (README, \"Disk quotas\")",
                dir.display()
            ),
        }
    }
    let state = AgentState::load(&AgentState::path(&state_dir)).map_err(state_err)?;
    let (inputs_tx, mut inputs) = mpsc::unbounded_channel();
    let config = Arc::new(config);
    let mut core = Core {
        blobs: Blobs::new(config.scheduler.clone()).for_host(&config.host_id),
        ports: PortAllocator::new(config.ports),
        config: config.clone(),
        state,
        dynos: BTreeMap::new(),
        link: None,
        inputs: inputs_tx,
        logs: LogShipper::new(config.log_rate, logship::QUEUE_LINES),
        outbox: Outbox::default(),
        metrics: Arc::new(AgentMetrics::default()),
    };
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Metrics { addr, source })?;
        tokio::spawn(metrics::serve(listener, core.metrics.clone()));
    }
    core.adopt_all().await;
    // `Hello` must carry the adopted dynos' real states: let their replays run first.
    let settle = tokio::time::Instant::now() + ADOPT_SETTLE;
    while core
        .dynos
        .values()
        .any(|e| e.status.state() == proto::DynoState::Starting)
    {
        tokio::select! {
            Some(input) = inputs.recv() => core.input(input),
            () = tokio::time::sleep_until(settle) => break,
        }
    }
    core.reconcile();

    let (link_tx, mut link_rx) = mpsc::unbounded_channel();
    tokio::spawn(link::run(config.scheduler.clone(), link_tx));
    tokio::spawn(collect_slugs(
        config.host.clone(),
        config.slug_retention,
        config.ids.clone(),
    ));
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ship = tokio::time::interval(LOG_FLUSH);
    ship.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(state_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(state_err)?;
    // systemd's `Type=notify`: ready once the dynos a previous daemon left are adopted and
    // the link is dialling (the scheduler being away is no reason not to be ready).
    notify(sd_notify::NotifyState::Ready);
    loop {
        tokio::select! {
            Some(event) = link_rx.recv() => core.link_event(event),
            Some(input) = inputs.recv() => {
                core.input(input);
                if core.logs.batch_ready() {
                    core.ship_logs();
                }
            }
            _ = ship.tick() => core.ship_logs(),
            _ = heartbeat.tick() => {
                let generation = core.state.generation;
                core.send(proto::agent_message::Kind::Heartbeat(proto::Heartbeat { generation }));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    notify(sd_notify::NotifyState::Stopping);
    tracing::info!("exiting; dynos keep running and will be re-adopted");
    Ok(())
}

/// Tells the service manager, if one started us with a notify socket, what state we are in.
fn notify(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify the service manager: {err}");
    }
}

/// The one task that owns the daemon's state.
struct Core {
    config: Arc<DaemonConfig>,
    blobs: Blobs,
    state: AgentState,
    /// By assignment id.
    dynos: BTreeMap<String, Entry>,
    ports: PortAllocator,
    /// The open stream to the scheduler, if any.
    link: Option<mpsc::Sender<proto::AgentMessage>>,
    inputs: mpsc::UnboundedSender<Input>,
    /// The dynos' lines on their way to the scheduler's log plex.
    logs: LogShipper,
    /// Reports waiting for room on the link.
    outbox: Outbox,
    metrics: Arc<AgentMetrics>,
}

impl Core {
    /// Picks up the dynos a previous daemon left: follows those whose shim runs, cleans up
    /// after those whose shim is gone.
    async fn adopt_all(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.config.host.dynos_dir()) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let dir = DynoDir { root: entry.path() };
            let assignment = std::fs::read_to_string(dir.root.join(ASSIGNMENT_FILE))
                .ok()
                .map(|s| s.trim().to_string());
            // Alive includes a directory so new that its shim has no pid yet (someone else's
            // `manifold-agent run` starting): never cleaned up from under it.
            let alive = runner::shim_alive(&dir);
            let dyno = if alive && dir.shim_pid().exists() {
                match Dyno::adopt(dir.clone()) {
                    Ok(dyno) => Some(dyno),
                    Err(err) => {
                        tracing::warn!("{}", chain(&err));
                        None
                    }
                }
            } else {
                None
            };
            match (dyno, assignment) {
                (Some(dyno), Some(id)) if !self.dynos.contains_key(&id) => {
                    tracing::info!("re-adopting {} ({id})", dyno.config.name);
                    if let Some(port) = dyno.config.publish {
                        self.ports.claim(port);
                    }
                    let run = dyno.config.id.clone();
                    let since = std::fs::read_to_string(dir.root.join(SINCE_FILE))
                        .ok()
                        .and_then(|text| parse_since(&text));
                    let app = self
                        .assignment(&id)
                        .map(|a| a.app.clone())
                        .unwrap_or_default();
                    self.dynos.insert(
                        id.clone(),
                        Entry {
                            app,
                            name: dyno.config.name.clone(),
                            run: run.clone(),
                            port: dyno.config.publish,
                            phase: Phase::Launching,
                            status: proto::DynoStatus {
                                id: id.clone(),
                                state: proto::DynoState::Starting.into(),
                                changed_at_ms: now_ms(),
                                exit_status: None,
                                reason: String::new(),
                                port: dyno.config.publish.map(u32::from).unwrap_or(0),
                            },
                            restarts: RestartSchedule::new(self.config.restart),
                            since,
                        },
                    );
                    tokio::spawn(follow(
                        dyno,
                        id,
                        run,
                        self.config.scheduler.clone(),
                        self.inputs.clone(),
                    ));
                }
                (Some(dyno), _) => {
                    // Not an assignment's: a `manifold-agent run` dyno sharing the state
                    // directory, or a build the previous daemon ran. Its shim ends it.
                    tracing::info!(
                        "leaving {} alone: not an assigned dyno",
                        dyno.dir.root.display()
                    );
                }
                (None, _) if alive => {
                    tracing::warn!("leaving {} alone: its shim runs", dir.root.display());
                }
                (None, _) => {
                    let root = dir.root.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || match crate::shim::remove_dead(&dir) {
                            Ok(errors) => {
                                for err in errors {
                                    tracing::warn!("cleanup of {}: {err}", dir.root.display());
                                }
                            }
                            Err(err) => {
                                tracing::warn!("cannot remove {}: {err}", dir.root.display())
                            }
                        })
                        .await;
                    tracing::info!("removed dead dyno {}", root.display());
                }
            }
        }
    }

    fn link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Connected(tx) => {
                self.link = Some(tx);
                self.outbox.clear();
                let hello = proto::Hello {
                    host_id: self.config.host_id.clone(),
                    address: self.config.address.clone(),
                    capacity: Some(proto::Capacity {
                        memory_bytes: self.config.memory_bytes,
                        dyno_slots: self.config.slots,
                    }),
                    stacks: stacks(&self.config.host.stacks_dir()),
                    dynos: self.dynos.values().map(|e| e.status.clone()).collect(),
                    generation: self.state.generation,
                };
                self.send(proto::agent_message::Kind::Hello(hello));
            }
            LinkEvent::Disconnected => {
                self.link = None;
                self.outbox.clear();
            }
            LinkEvent::Message(message) => match message.kind {
                Some(proto::scheduler_message::Kind::Assignments(a)) => {
                    self.state = AgentState {
                        generation: a.generation,
                        assignments: a.dynos.into_iter().map(AssignmentRecord::from).collect(),
                    };
                    if let Err(err) = self
                        .state
                        .save(&AgentState::path(&self.config.host.state_dir))
                    {
                        tracing::error!("cannot save agent.json: {err}");
                    }
                    self.reconcile();
                }
                Some(proto::scheduler_message::Kind::Build(request)) => {
                    tokio::spawn(run_build(
                        self.config.clone(),
                        self.blobs.clone(),
                        request,
                        self.inputs.clone(),
                    ));
                }
                None => {}
            },
        }
    }

    /// Sends what waits for the scheduler, if linked: log lines, and the reports the link's
    /// buffer could not take before (see [`outbox`]); what it cannot take now waits.
    fn ship_logs(&mut self) {
        let m = &self.metrics;
        m.dropped_rate
            .store(self.logs.dropped_rate, Ordering::Relaxed);
        m.dropped_queue
            .store(self.logs.dropped_queue, Ordering::Relaxed);
        m.dropped_build_output
            .store(self.outbox.dropped_output, Ordering::Relaxed);
        m.connected.store(self.link.is_some(), Ordering::Relaxed);
        let Some(link) = &self.link else {
            return;
        };
        let (flushed, shipped) = outbox::flush(&mut self.outbox, &mut self.logs, link);
        self.metrics
            .lines_shipped
            .fetch_add(shipped, Ordering::Relaxed);
        if flushed == outbox::Flushed::Closed {
            self.link = None;
            self.outbox.clear();
        }
    }

    /// Takes a line of a dyno for the log plex (and the agent's own log).
    fn log_line(&mut self, id: &str, line: &LogLine) {
        match line.source {
            Source::App => tracing::debug!("{line}"),
            Source::Heroku => tracing::info!("{line}"),
        }
        // Every line comes from an entry: events of dynos without one are dropped earlier.
        let app = self
            .dynos
            .get(id)
            .map(|e| e.app.clone())
            .unwrap_or_default();
        self.logs.line(&app, id, line, Instant::now());
    }

    /// Sends a message to the scheduler if linked, after the log lines queued before it. A
    /// full link buffer never loses it: it waits in the outbox (a dyno's reports coalesced)
    /// and goes with the next flush. Unlinked, it is not needed: `Hello` carries every
    /// dyno's state, and the scheduler fails the builds of a host that went away.
    fn send(&mut self, kind: proto::agent_message::Kind) {
        if self.link.is_none() {
            return;
        }
        self.outbox.push(kind, self.logs.queued_total());
        self.ship_logs();
    }

    fn assignment(&self, id: &str) -> Option<&AssignmentRecord> {
        self.state.assignments.iter().find(|a| a.id == id)
    }

    fn reconcile(&mut self) {
        let plan = plan(
            self.state.assignments.iter().map(|a| a.id.as_str()),
            self.dynos.keys().map(String::as_str),
        );
        for id in plan.start {
            self.launch(&id);
        }
        for id in plan.stop {
            let Some(entry) = self.dynos.get_mut(&id) else {
                continue;
            };
            match std::mem::replace(&mut entry.phase, Phase::Stopping) {
                Phase::Running { stop } => {
                    let _ = stop.send(());
                }
                Phase::Backoff | Phase::Done => self.remove(&id),
                // Stopped as soon as it is launched (see `Input::Launched`).
                Phase::Launching => entry.phase = Phase::Launching,
                Phase::Stopping => {}
            }
        }
    }

    /// Starts (or restarts) the assignment's dyno.
    fn launch(&mut self, id: &str) {
        let Some(assignment) = self.assignment(id).cloned() else {
            return;
        };
        let web = assignment.process_type() == "web";
        let existing_port = self.dynos.get(id).and_then(|e| e.port);
        let port = match (web, existing_port) {
            (false, _) => Ok(None),
            (true, Some(p)) => Ok(Some(p)),
            (true, None) => self.ports.allocate().map(Some),
        };
        let run = container_id(id);
        let entry = self.dynos.entry(id.to_string()).or_insert_with(|| Entry {
            app: assignment.app.clone(),
            name: assignment.name.clone(),
            run: String::new(),
            port: None,
            phase: Phase::Launching,
            status: proto::DynoStatus {
                id: id.to_string(),
                ..Default::default()
            },
            restarts: RestartSchedule::new(self.config.restart),
            since: None,
        });
        entry.run = run.clone();
        entry.phase = Phase::Launching;
        match port {
            Ok(port) => {
                entry.port = port;
                self.report(id, proto::DynoState::Starting, None, String::new());
                tokio::spawn(launch(
                    self.config.clone(),
                    self.blobs.clone(),
                    assignment,
                    run,
                    port,
                    self.inputs.clone(),
                ));
            }
            Err(err) => {
                let _ = self.inputs.send(Input::LaunchFailed {
                    id: id.to_string(),
                    run,
                    reason: err.to_string(),
                });
            }
        }
    }

    /// Records and reports an entry's new state.
    fn report(&mut self, id: &str, state: proto::DynoState, exit: Option<i32>, reason: String) {
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        let changed_at_ms = match entry.since.take() {
            // Re-adopted in the state it had: it has been in it since then.
            Some((was, since)) if was == state => since,
            _ => now_ms(),
        };
        // Beside the dyno for a later daemon, while it runs (an ended dyno's directory is
        // being removed: nothing of it is re-adopted); a directory already gone takes nothing.
        if matches!(state, proto::DynoState::Starting | proto::DynoState::Up) {
            let root = DynoDir::new(&self.config.host, &entry.run).root;
            let _ = std::fs::write(root.join(SINCE_FILE), since_text(state, changed_at_ms));
        }
        entry.status = proto::DynoStatus {
            id: id.to_string(),
            state: state.into(),
            changed_at_ms,
            exit_status: exit,
            reason,
            port: entry.port.map(u32::from).unwrap_or(0),
        };
        let status = entry.status.clone();
        tracing::info!("{} ({id}) is {}", entry.name, state.as_str_name());
        self.count_states();
        // The dyno's lines from before its new state go first, on the same stream (`send`
        // sees to it): a reader of the state (the release phase's outcome, a deploy's
        // output) has them.
        self.send(proto::agent_message::Kind::Dyno(status));
    }

    /// Refreshes the metrics' dynos-by-state.
    fn count_states(&self) {
        let mut counts = BTreeMap::new();
        for e in self.dynos.values() {
            let state = proto_state_name(e.status.state());
            *counts.entry(state.to_string()).or_insert(0) += 1;
        }
        *self.metrics.dynos.lock().unwrap_or_else(|e| e.into_inner()) = counts;
    }

    /// Forgets an entry that ended and was not assigned any more: reports it `down` (once).
    fn remove(&mut self, id: &str) {
        if self
            .dynos
            .get(id)
            .is_some_and(|e| e.status.state() != proto::DynoState::Down)
        {
            let exit = self.dynos.get(id).and_then(|e| e.status.exit_status);
            self.report(id, proto::DynoState::Down, exit, String::new());
        }
        self.logs.forget(id);
        if let Some(entry) = self.dynos.remove(id) {
            if let Some(port) = entry.port {
                self.ports.release(port);
            }
        }
        self.count_states();
    }

    fn current(&self, id: &str, run: &str) -> bool {
        self.dynos.get(id).is_some_and(|e| e.run == run)
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Launched { id, run, stop } => {
                if !self.current(&id, &run) {
                    return;
                }
                let assigned = self.assignment(&id).is_some();
                if let Some(entry) = self.dynos.get_mut(&id) {
                    entry.phase = if assigned {
                        Phase::Running { stop }
                    } else {
                        let _ = stop.send(());
                        Phase::Stopping
                    };
                }
            }
            Input::LaunchFailed { id, run, reason } => {
                if !self.current(&id, &run) {
                    return;
                }
                tracing::warn!("{id}: {reason}");
                self.report(&id, proto::DynoState::Crashed, None, reason);
                self.ended(&id);
            }
            Input::Dyno { id, run, event } => {
                if !self.current(&id, &run) {
                    return;
                }
                match event {
                    Event::Line(line) => self.log_line(&id, &line),
                    Event::State {
                        state,
                        status,
                        reason,
                    } => {
                        if state == State::Up {
                            if let Some(entry) = self.dynos.get_mut(&id) {
                                entry.restarts.up(Instant::now());
                            }
                        }
                        self.report(&id, proto_state(state), status, reason.unwrap_or_default());
                    }
                }
            }
            Input::Ended { id, run } => {
                if self.current(&id, &run) {
                    self.ended(&id);
                }
            }
            Input::Restart { id, run } => {
                let waiting = self
                    .dynos
                    .get(&id)
                    .is_some_and(|e| e.run == run && matches!(e.phase, Phase::Backoff));
                if waiting && self.assignment(&id).is_some() {
                    if let Some(entry) = self.dynos.get(&id) {
                        // The new run's runner starts from `starting`: the change out of
                        // `crashed` is the daemon's to log, in Heroku's words.
                        let line =
                            platform_line(&entry.name, "State changed from crashed to starting");
                        self.log_line(&id, &line);
                    }
                    self.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                    self.launch(&id);
                }
            }
            Input::Build(event) => self.send(proto::agent_message::Kind::Build(event)),
        }
    }

    /// A run of the entry ended (or never started): remove it, keep it, or schedule a restart.
    fn ended(&mut self, id: &str) {
        let Some(assignment) = self.assignment(id).cloned() else {
            self.remove(id);
            return;
        };
        let Some(entry) = self.dynos.get_mut(id) else {
            return;
        };
        if assignment.one_off() {
            entry.phase = Phase::Done;
            return;
        }
        entry.phase = Phase::Backoff;
        let delay = entry.restarts.crashed(Instant::now());
        let run = entry.run.clone();
        if entry.status.state() != proto::DynoState::Crashed {
            let exit = entry.status.exit_status;
            self.report(id, proto::DynoState::Crashed, exit, String::new());
        }
        tracing::info!("restarting {id} in {delay:?}");
        let inputs = self.inputs.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = inputs.send(Input::Restart { id, run });
        });
    }
}

/// A platform line the daemon itself writes (the runners write the others).
fn platform_line(dyno: &str, text: &str) -> LogLine {
    LogLine {
        ts: timestamp(),
        source: Source::Heroku,
        dyno: dyno.to_string(),
        stream: None,
        text: text.to_string(),
    }
}

/// The stacks ready on this host: directories with a `.manifold-stack` marker.
fn stacks(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join(".manifold-stack").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Removes slugs no dyno has used for `retention`, then gives back the id ranges of apps
/// gone from the host, once an hour ([`crate::host::gc`], [`crate::host::ids`]).
async fn collect_slugs(host: HostConfig, retention: Duration, ids: Option<IdRanges>) {
    let mut every = tokio::time::interval(GC_INTERVAL);
    loop {
        every.tick().await;
        let host = host.clone();
        let ids = ids.clone();
        let collect = move || -> anyhow::Result<()> {
            crate::host::gc::collect_slugs(&host, retention)?;
            if let Some(ids) = ids {
                ids.release_unused(&host, crate::host::ids::RELEASE_AFTER)?;
            }
            Ok(())
        };
        match tokio::task::spawn_blocking(collect).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!("slug collection failed: {err:#}"),
            Err(err) => tracing::warn!("slug collection panicked: {err}"),
        }
    }
}

/// The host settings a dyno or build of `app` runs with: the app's own id range.
async fn app_host(config: &DaemonConfig, app: &str) -> Result<HostConfig, String> {
    let mut host = config.host.clone();
    if let Some(ids) = config.ids.clone() {
        let app = app.to_string();
        let range = tokio::task::spawn_blocking(move || ids.for_app(&app))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        host.userns = Some(range);
    }
    Ok(host)
}

/// How often the daemon collects unused slugs.
const GC_INTERVAL: Duration = Duration::from_secs(3600);

/// Fetches the slug and starts the dyno, then follows it (reported as inputs).
async fn launch(
    config: Arc<DaemonConfig>,
    blobs: Blobs,
    assignment: AssignmentRecord,
    run: String,
    port: Option<u16>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let id = assignment.id.clone();
    let failed = |reason: String| Input::LaunchFailed {
        id: id.clone(),
        run: run.clone(),
        reason,
    };
    let slug = match blobs
        .fetch(&assignment.slug_sha256, &config.host.slug_archives_dir())
        .await
    {
        Ok(path) => path,
        Err(err) => {
            let _ = inputs.send(failed(format!("slug fetch failed: {}", chain(&err))));
            return;
        }
    };
    let size = match DynoSize::from_str(&assignment.size) {
        Ok(size) => size,
        Err(err) => {
            let _ = inputs.send(failed(err.to_string()));
            return;
        }
    };
    let host = match app_host(&config, &assignment.app).await {
        Ok(host) => host,
        Err(err) => {
            let _ = inputs.send(failed(err));
            return;
        }
    };
    let web = assignment.process_type() == "web";
    let dyno = DynoConfig {
        id: run.clone(),
        name: assignment.name.clone(),
        stack: assignment.stack.clone(),
        slug: Some(SlugSource {
            path: slug,
            sha256: Some(assignment.slug_sha256.clone()),
        }),
        size,
        env: assignment.env.clone(),
        command: assignment.command.clone(),
        // Every dyno has its own network namespace, so all web dynos can use 5000.
        port: web.then_some(5000),
        publish: port,
        grace: match assignment.stop_timeout_secs {
            0 => GRACE,
            secs => Duration::from_secs(u64::from(secs)),
        },
        boot_timeout: match assignment.boot_timeout_secs {
            0 => config.boot_timeout,
            secs => Duration::from_secs(u64::from(secs)),
        },
        mounts: Vec::new(),
        uid: DYNO_UID,
        gid: DYNO_GID,
        host,
        attach: assignment.attach,
        log_rate: Some(config.log_rate),
    };
    // Written before the shim starts, so every dyno directory a restarted daemon finds says
    // which assignment it runs.
    let dir = DynoDir::new(&config.host, &run);
    if let Err(err) = std::fs::create_dir_all(&dir.root)
        .and_then(|()| write_atomic(&dir.root.join(ASSIGNMENT_FILE), id.as_bytes()))
    {
        let _ = inputs.send(failed(format!("cannot prepare dyno directory: {err}")));
        return;
    }
    match Dyno::start(dyno, config.shim_binary.clone()).await {
        Ok(dyno) => follow(dyno, id, run, config.scheduler.clone(), inputs).await,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir.root);
            let _ = inputs.send(failed(format!("start failed: {}", chain(&err))));
        }
    }
}

/// Follows a started or adopted dyno to its end, forwarding its events as inputs. An
/// attached one-off's terminal is relayed to the scheduler meanwhile.
async fn follow(
    dyno: Dyno,
    id: String,
    run: String,
    scheduler: Scheduler,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let relay = dyno
        .config
        .attach
        .is_some()
        .then(|| tokio::spawn(relay::run(scheduler, id.clone(), dyno.dir.clone())));
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    let _ = inputs.send(Input::Launched {
        id: id.clone(),
        run: run.clone(),
        stop: stop_tx,
    });
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let forward = {
        let (inputs, id, run) = (inputs.clone(), id.clone(), run.clone());
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let input = Input::Dyno {
                    id: id.clone(),
                    run: run.clone(),
                    event,
                };
                if inputs.send(input).is_err() {
                    return;
                }
            }
        })
    };
    let (dir, shim) = (dyno.dir.clone(), dyno.shim_pid());
    if let Err(err) = dyno.follow_events(events_tx, stop_rx).await {
        tracing::error!("{id}: {}", chain(&err));
        // Losing sight of a dyno is no proof that it ended, and it is about to be reported
        // ended and started again: kill it first (the shim SIGKILLs its processes and cleans
        // up), or two copies would run.
        if runner::shim_alive(&dir) {
            let shim = nix::unistd::Pid::from_raw(shim);
            let _ = nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGUSR1);
        }
    }
    let _ = forward.await;
    if let Some(mut relay) = relay {
        // The relay ends when the shim closes its socket after the last frame; what it still
        // holds then gets a while to reach the scheduler, not forever.
        tokio::spawn(async move {
            if tokio::time::timeout(RELAY_GRACE, &mut relay).await.is_err() {
                relay.abort();
            }
        });
    }
    let _ = inputs.send(Input::Ended { id, run });
}

/// Runs one build for the scheduler: source blob in, output lines and the slug blob out.
async fn run_build(
    config: Arc<DaemonConfig>,
    blobs: Blobs,
    request: proto::BuildRequest,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let build_id = request.build_id.clone();
    let send = |kind: proto::build_event::Kind| {
        let _ = inputs.send(Input::Build(proto::BuildEvent {
            build_id: build_id.clone(),
            kind: Some(kind),
        }));
    };
    let container = format!("build-{:08x}", rand::random::<u32>());
    let work = config
        .host
        .state_dir
        .join("builds")
        .join(format!("{container}-src"));
    let finished = match build_in(&config, &blobs, &request, &container, &work, &send).await {
        Ok(finished) => finished,
        Err(error) => proto::BuildFinished {
            status: 1,
            error,
            ..Default::default()
        },
    };
    // Cleaned up first, so that a finished build has left nothing behind.
    if let Err(err) = tokio::fs::remove_dir_all(&work).await {
        tracing::warn!("cannot remove {}: {err}", work.display());
    }
    send(proto::build_event::Kind::Finished(finished));
}

/// The steps of a build; an `Err` is a failure outside the build's own output.
async fn build_in(
    config: &DaemonConfig,
    blobs: &Blobs,
    request: &proto::BuildRequest,
    container: &str,
    work: &Path,
    send: &impl Fn(proto::build_event::Kind),
) -> Result<proto::BuildFinished, String> {
    let archive = blobs
        .fetch(&request.source_sha256, work)
        .await
        .map_err(|e| format!("source fetch failed: {}", chain(&e)))?;
    let unpack_work = work.to_path_buf();
    let source =
        tokio::task::spawn_blocking(move || build_dyno::unpack_source(&archive, &unpack_work))
            .await
            .map_err(|e| format!("source unpack failed: {e}"))?
            .map_err(|e| format!("source unpack failed: {}", chain(&e)))?;
    let buildpacks_dir = config
        .buildpacks_dir
        .clone()
        .ok_or("no buildpacks directory configured on this host")?;
    let req = build_dyno::BuildRequest {
        source,
        stack: request.stack.clone(),
        size: DynoSize::Standard2X,
        env: request.env.clone().into_iter().collect(),
        buildpacks: request.buildpacks.clone(),
        cache_dir: config.host.build_cache_dir(&request.app),
        slugbuilder: config.slugbuilder.clone(),
        buildpacks_dir,
        timeout: Duration::from_secs(15 * 60),
        directory_buildpacks: match &config.buildpack_root {
            Some(root) => build_dyno::DirectoryBuildpacks::Under(root.clone()),
            None => build_dyno::DirectoryBuildpacks::None,
        },
        max_slug_bytes: config.max_slug_bytes,
    };
    let host = app_host(config, &request.app).await?;
    let prepared = build_dyno::prepare(&host, container, &req).map_err(|e| chain(&e))?;
    let result = async {
        let dyno = Dyno::start(prepared.dyno.clone(), config.shim_binary.clone())
            .await
            .map_err(|e| chain(&e))?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let (_stop_tx, stop_rx) = mpsc::unbounded_channel();
        let follower = tokio::spawn(dyno.follow_events(events_tx, stop_rx));
        while let Some(event) = events_rx.recv().await {
            if let Event::Line(line) = event {
                if line.source == Source::App {
                    send(proto::build_event::Kind::Output(line.text));
                } else {
                    // The platform's errors (a failed start, R14/R15, R12) are the only
                    // explanation the deploying user gets when a build dies outside the
                    // buildpacks' own output.
                    if line.text.starts_with("Error ") {
                        send(proto::build_event::Kind::Output(format!(
                            "-----> Build dyno: {}",
                            line.text
                        )));
                    }
                    tracing::info!("{line}");
                }
            }
        }
        let status = follower
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| chain(&e))?;
        if status != 0 {
            return Ok(proto::BuildFinished {
                status,
                ..Default::default()
            });
        }
        // The build's outputs are the build's: read back as hostile input, off the runtime.
        let output = prepared.output.clone();
        let outputs = tokio::task::spawn_blocking(move || output.read())
            .await
            .map_err(|e| format!("cannot read the build's output: {e}"))?
            .map_err(|e| format!("the build's output is refused: {}", chain(&e)))?;
        blobs
            .upload(outputs.slug, outputs.slug_size, &outputs.slug_sha256)
            .await
            .map_err(|e| format!("slug upload failed: {}", chain(&e)))?;
        Ok(proto::BuildFinished {
            status: 0,
            slug_sha256: outputs.slug_sha256,
            slug_json: outputs.metadata_json,
            error: String::new(),
        })
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&prepared.work).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_allocated_from_the_range_reused_and_exhausted() {
        let range: PortRange = "31000-31002".parse().expect("range");
        let mut ports = PortAllocator::new(range);
        ports.claim(31001);
        assert_eq!(ports.allocate(), Ok(31000));
        assert_eq!(ports.allocate(), Ok(31002));
        assert_eq!(ports.allocate(), Err(PortsExhausted { range }));
        ports.release(31001);
        assert_eq!(ports.allocate(), Ok(31001));
    }

    #[test]
    fn the_state_since_file_round_trips() {
        let text = since_text(proto::DynoState::Up, 1_732_345_678_901);
        assert_eq!(text, "UP 1732345678901\n");
        assert_eq!(
            parse_since(&text),
            Some((proto::DynoState::Up, 1_732_345_678_901))
        );
        assert_eq!(parse_since(""), None);
        assert_eq!(parse_since("UP"), None);
        assert_eq!(parse_since("SIDEWAYS 12"), None);
        assert_eq!(parse_since("UP soon"), None);
    }

    #[test]
    fn plan_starts_the_missing_and_stops_the_unassigned() {
        let p = plan(["a", "b", "c"], ["b", "d"]);
        assert_eq!(p.start, vec!["a", "c"]);
        assert_eq!(p.stop, vec!["d"]);
        assert_eq!(plan(["a"], ["a"]), Plan::default());
        assert_eq!(plan([], ["x"]).stop, vec!["x"]);
    }

    #[test]
    fn agent_state_round_trips_and_starts_empty() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = AgentState::path(tmp.path());
        assert_eq!(
            AgentState::load(&path).expect("load"),
            AgentState::default()
        );
        let state = AgentState {
            generation: 7,
            assignments: vec![AssignmentRecord::from(proto::Assignment {
                id: "d1".into(),
                app: "app".into(),
                name: "web.1".into(),
                command: "serve".into(),
                size: "standard-1x".into(),
                stack: "testing".into(),
                slug: Some(proto::Slug {
                    sha256: "ab".into(),
                    size: 3,
                }),
                env: [("K".to_string(), "v".to_string())].into(),
                release_version: 2,
                boot_timeout_secs: 90,
                stop_timeout_secs: 0,
                attach: Some(proto::AttachSpec {
                    tty: true,
                    cols: 80,
                    rows: 100_000,
                }),
            })],
        };
        assert_eq!(
            state.assignments[0].attach,
            Some(AttachSpec {
                tty: true,
                cols: 80,
                rows: u16::MAX
            }),
            "a window size past u16 is clamped"
        );
        state.save(&path).expect("save");
        assert_eq!(AgentState::load(&path).expect("load"), state);
        assert!(!path.with_extension("tmp").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o077, 0, "config vars are for root only");
    }

    #[test]
    fn ports_and_memory_flags_parse() {
        assert_eq!(
            "30000-30999".parse::<PortRange>(),
            Ok(PortRange {
                start: 30000,
                end: 30999
            })
        );
        for bad in ["30000", "2-1", "0-5", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!(parse_memory("8G"), Ok(8 << 30));
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert!(parse_memory("8X").is_err());
        assert!(parse_memory("G").is_err());
        assert_eq!(
            default_memory("MemTotal:        2048000 kB\nMemFree: 1 kB\n"),
            Some(2_048_000 * 1024 - (512 << 20))
        );
    }

    #[test]
    fn one_offs_are_recognised_by_name() {
        let mut a = AssignmentRecord::from(proto::Assignment::default());
        a.name = "run.12".into();
        assert!(a.one_off());
        a.name = "worker.1".into();
        assert!(!a.one_off());
    }
}
