//! The fake scheduler the agent's daemon tests run an agent against: AgentLink over gRPC and
//! the blob store over HTTP on one port, as the real scheduler serves them; and the agent
//! process with the flags that keep one test's agent apart from the others on the host.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use manifold_proto::agent_link_server::{AgentLink, AgentLinkServer};
use manifold_proto::{agent_message, AgentMessage, AttachPacket, SchedulerMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::common::BIN;

pub const TOKEN: &str = "s3cret";

/// What keeps one test's agent apart from other agents on the host (and the other test).
pub struct Isolation {
    pub cgroup_parent: &'static str,
    pub bridge: &'static str,
    pub subnet: &'static str,
    pub table: &'static str,
    pub ports: &'static str,
}

pub type Outbound = mpsc::Sender<Result<SchedulerMessage, tonic::Status>>;

/// The fake scheduler: records what agents send, lets the test send to the connected one.
#[derive(Clone)]
pub struct Fake {
    pub received: mpsc::UnboundedSender<AgentMessage>,
    pub agent: Arc<Mutex<Option<Outbound>>>,
    pub attached: mpsc::UnboundedSender<Attached>,
}

/// An attach stream an agent opened: the dyno it named, and both directions.
pub struct Attached {
    pub dyno_id: String,
    pub inbound: tonic::Streaming<AttachPacket>,
    pub outbound: mpsc::Sender<Result<AttachPacket, tonic::Status>>,
}

/// A fake scheduler, the agent messages it receives and the attach streams agents open.
pub fn fake() -> (
    Fake,
    mpsc::UnboundedReceiver<AgentMessage>,
    mpsc::UnboundedReceiver<Attached>,
) {
    let (received, rx) = mpsc::unbounded_channel();
    let (attached, attaches) = mpsc::unbounded_channel();
    let fake = Fake {
        received,
        agent: Arc::new(Mutex::new(None)),
        attached,
    };
    (fake, rx, attaches)
}

/// Whether a request carries the agent token.
pub fn has_token<T>(request: &tonic::Request<T>) -> bool {
    let auth = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    auth == Some(&format!("Bearer {TOKEN}"))
}

#[tonic::async_trait]
impl AgentLink for Fake {
    type LinkStream = ReceiverStream<Result<SchedulerMessage, tonic::Status>>;
    type AttachStream = ReceiverStream<Result<AttachPacket, tonic::Status>>;

    async fn attach(
        &self,
        request: tonic::Request<tonic::Streaming<AttachPacket>>,
    ) -> Result<tonic::Response<Self::AttachStream>, tonic::Status> {
        if !has_token(&request) {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("no first packet"))?;
        let (outbound, rx) = mpsc::channel(16);
        let _ = self.attached.send(Attached {
            dyno_id: first.dyno_id,
            inbound,
            outbound,
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn link(
        &self,
        request: tonic::Request<tonic::Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<Self::LinkStream>, tonic::Status> {
        if !has_token(&request) {
            return Err(tonic::Status::unauthenticated("bad token"));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        *self.agent.lock().unwrap() = Some(tx);
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = inbound.next().await {
                let _ = received.send(message);
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

pub type Blobs = Arc<Mutex<HashMap<String, Vec<u8>>>>;

pub fn authorized(headers: &HeaderMap) -> Result<(), StatusCode> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth == Some(&format!("Bearer {TOKEN}")) {
        Ok(())
    } else {
        Err(StatusCode::UNAUTHORIZED)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn put_blob(
    State(blobs): State<Blobs>,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if authorized(&headers).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    if sha256_hex(&body) != sha {
        return StatusCode::BAD_REQUEST;
    }
    blobs.lock().unwrap().insert(sha, body.to_vec());
    StatusCode::CREATED
}

pub async fn get_blob(
    State(blobs): State<Blobs>,
    UrlPath(sha): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Vec<u8>, StatusCode> {
    authorized(&headers)?;
    let blob = blobs.lock().unwrap().get(&sha).cloned();
    blob.ok_or(StatusCode::NOT_FOUND)
}

/// Serves the fake on 127.0.0.1:0; returns its URL.
pub async fn serve(fake: Fake, blobs: Blobs) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let blob_routes = axum::Router::new()
        .route(
            "/agent/v1/blobs/:sha",
            axum::routing::get(get_blob).put(put_blob),
        )
        .with_state(blobs);
    let router = tonic::service::Routes::new(AgentLinkServer::new(fake))
        .into_axum_router()
        .merge(blob_routes);
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// The agent process; dropping it kills it and stops every dyno it left running.
pub struct Agent {
    pub child: Option<Child>,
    pub state: PathBuf,
    pub isolation: &'static Isolation,
}

impl Agent {
    /// Starts the agent with the isolation's flags and `extra` ones.
    pub fn spawn(state: &Path, url: &str, isolation: &'static Isolation, extra: &[&str]) -> Agent {
        let i = isolation;
        let buildpacks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildpacks");
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("agent.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["--state-dir", state.to_str().unwrap()])
            .args([
                "--scheduler",
                url,
                "--token",
                TOKEN,
                "--host-id",
                "test-host",
            ])
            .args(["--memory", "2G", "--slots", "10", "--ports", i.ports])
            .args(["--cgroup-parent", i.cgroup_parent, "--bridge", i.bridge])
            .args([
                "--subnet",
                i.subnet,
                "--nft-table",
                i.table,
                "--heartbeat",
                "300ms",
            ])
            .arg("--buildpacks-dir")
            .arg(buildpacks)
            .args(extra)
            .env("MANIFOLD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            state: state.to_path_buf(),
            isolation,
        }
    }

    /// SIGTERM to the agent, as systemd stops it, and waits for it to exit (SIGKILL after
    /// 20 s): its dynos keep running, its waiting warm shims go.
    pub fn stop(&mut self) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(child) = self.child.as_mut() {
                    if !matches!(child.try_wait(), Ok(None)) {
                        self.child = None;
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// SIGKILL to the agent's process group: the shims run in their own sessions.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let pids = shim_pids(&self.state);
        for pid in pids.values() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(45);
        while pids
            .values()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let i = self.isolation;
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", i.table])
            .output();
        let _ = Command::new("ip").args(["link", "del", i.bridge]).output();
        for parent in cgroup_parents(i.cgroup_parent) {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Container id → shim pid of every dyno directory.
pub fn shim_pids(state: &Path) -> HashMap<String, i32> {
    std::fs::read_dir(state.join("dynos"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let pid = std::fs::read_to_string(e.path().join("shim.pid")).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        pid.trim().parse().ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads agent messages until `want` picks one, or panics after `within`.
pub async fn wait_for<T>(
    rx: &mut mpsc::UnboundedReceiver<AgentMessage>,
    within: Duration,
    what: &str,
    log: &Path,
    mut want: impl FnMut(&agent_message::Kind) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(AgentMessage { kind: Some(kind) })) => {
                if let Some(found) = want(&kind) {
                    return found;
                }
            }
            Ok(_) => {}
            Err(_) => panic!(
                "timed out waiting for {what}; agent log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

/// The parent cgroup's directory in every hierarchy.
pub fn cgroup_parents(name: &str) -> Vec<PathBuf> {
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(name)];
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
    {
        dirs.push(controller.path().join(name));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

pub fn cgroup_children(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    {
        for parent in cgroup_parents(name) {
            if let Ok(children) = std::fs::read_dir(&parent) {
                found.extend(
                    children
                        .filter_map(Result::ok)
                        .filter(|c| c.path().is_dir())
                        .map(|c| c.path().display().to_string()),
                );
            }
        }
    }
    found
}

/// A scratch directory under /var/tmp with an agent state dir that sees the installed
/// stacks; returns it, the state dir and the path of the agent's log.
pub fn agent_dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("manifold-daemon-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink("/var/lib/manifold/stacks", state.join("stacks")).unwrap();
    let log = state.join("agent.log");
    (tmp, state, log)
}
