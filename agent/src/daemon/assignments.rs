//! The assignment set as kept on disk (`agent.json`, each dyno's `assignment` and
//! `state-since`), and [`plan`]: what to launch and stop for a new set.

use super::*;

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
    /// The add-on endpoints (`ADDRESS:PORT`) the dyno may reach (`netpolicy::Access`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
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
            egress: a.egress,
        }
    }
}

impl AssignmentRecord {
    pub(super) fn process_type(&self) -> &str {
        self.name.split('.').next().unwrap_or_default()
    }
}

/// The daemon's persistent state, `STATE_DIR/agent.json`: the last assignment set applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub generation: u64,
    /// The scheduler leader's term these came in: assignments of an older term, from a
    /// leader deposed since, are refused. (Absent in files of older agents: 0.)
    #[serde(default)]
    pub term: u64,
    /// The cluster `term` counts in (the scheduler's database's id): another cluster's
    /// assignments start the count afresh. (Absent in files of older agents: empty.)
    #[serde(default)]
    pub cluster: String,
    pub assignments: Vec<AssignmentRecord>,
    /// The add-on services this host runs (`services.rs`).
    #[serde(default)]
    pub services: Vec<ServiceRecord>,
    /// Services whose volumes are to be deleted.
    #[serde(default)]
    pub destroyed_services: Vec<String>,
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
pub(super) const ASSIGNMENT_FILE: &str = "assignment";
/// In each dyno directory: the state last reported and since when (`UP 1732345678901`), so
/// that a restarted daemon re-adopting the dyno reports the time it really came up rather
/// than its own start (`ps` would show every dyno of the host as just restarted).
pub(super) const SINCE_FILE: &str = "state-since";

pub(super) fn since_text(state: proto::DynoState, changed_at_ms: i64) -> String {
    format!("{} {changed_at_ms}\n", state.as_str_name())
}

pub(super) fn parse_since(text: &str) -> Option<(proto::DynoState, i64)> {
    let (state, ms) = text.trim().split_once(' ')?;
    Some((proto::DynoState::from_str_name(state)?, ms.parse().ok()?))
}
