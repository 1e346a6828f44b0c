//! What the daemon is configured with: its flags' values and their parsers.

use super::*;

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
