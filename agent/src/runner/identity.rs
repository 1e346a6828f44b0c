//! Whether a dyno's shim is still the process that started it: its pid, its start time and
//! the boot it started in, so that a recycled pid is never taken for it.

use super::*;

/// Whether the dyno's shim is still running (the process recorded in `shim.pid` is alive and
/// is that same process, not a later one that reuses its pid), or is about to be (the
/// directory is new and has no pid yet).
pub fn shim_alive(dir: &DynoDir) -> bool {
    match ShimIdentity::read(dir) {
        Ok(shim) => shim.is_alive(),
        Err(_) => {
            let age = std::fs::metadata(&dir.root)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a < STARTING_GRACE)
        }
    }
}

/// Which process a dyno's shim is: its pid (`shim.pid`), and beside it (`shim.start`) the
/// kernel's start time of that process (clock ticks after boot, `/proc/PID/stat` field 22)
/// and the boot it ran in. A pid alone names whatever process holds it now: after the shim
/// died and pids wrapped, or after a reboot, another process (even another dyno's
/// `manifold-agent shim`) can hold it, and the agent would signal or wait for the wrong
/// process. The start time and boot id name one process only, as systemd's and Nomad's
/// executors do. `shim.pid` keeps holding the bare pid, which scripts and tests read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimIdentity {
    pub pid: i32,
    /// `None` for a shim started by an agent older than `shim.start`: such a shim is
    /// recognised by its command line, as those agents did, until it ends.
    pub started: Option<(u64, String)>,
}

impl ShimIdentity {
    /// The identity of the running process `pid`.
    pub fn of(pid: i32) -> io::Result<ShimIdentity> {
        Ok(ShimIdentity {
            pid,
            started: Some((start_ticks(pid)?, boot_id()?)),
        })
    }

    /// Reads `shim.pid` and `shim.start`.
    pub fn read(dir: &DynoDir) -> io::Result<ShimIdentity> {
        let invalid = |path: PathBuf, text: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected contents {text:?}", path.display()),
            )
        };
        let text = std::fs::read_to_string(dir.shim_pid())?;
        let pid = text
            .trim()
            .parse()
            .ok()
            .filter(|&p: &i32| p > 0)
            .ok_or_else(|| invalid(dir.shim_pid(), &text))?;
        let started = match std::fs::read_to_string(dir.shim_start()) {
            Ok(text) => Some(
                text.split_once(' ')
                    .and_then(|(ticks, boot)| Some((ticks.parse().ok()?, boot.trim().to_string())))
                    .ok_or_else(|| invalid(dir.shim_start(), &text))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(ShimIdentity { pid, started })
    }

    /// Writes `shim.start`, then `shim.pid` (each atomically), so that a reader who finds
    /// the pid finds its start time too.
    pub fn write(&self, dir: &DynoDir) -> io::Result<()> {
        if let Some((ticks, boot)) = &self.started {
            crate::dyno::write_atomic(&dir.shim_start(), format!("{ticks} {boot}\n").as_bytes())?;
        }
        crate::dyno::write_atomic(&dir.shim_pid(), format!("{}\n", self.pid).as_bytes())
    }

    /// Whether this very process still runs: same pid, same start time, same boot.
    pub fn is_alive(&self) -> bool {
        match &self.started {
            Some((ticks, boot)) => {
                boot_id().is_ok_and(|b| &b == boot)
                    && proc_stat(self.pid).is_ok_and(|(state, t)| t == *ticks && !exited(state))
            }
            None => std::fs::read(format!("/proc/{}/cmdline", self.pid))
                .is_ok_and(|cmd| cmd.split(|&b| b == 0).any(|arg| arg == b"shim")),
        }
    }
}

/// Field 22 of `/proc/PID/stat`, the process's start time in clock ticks after boot.
pub(super) fn start_ticks(pid: i32) -> io::Result<u64> {
    proc_stat(pid).map(|(_, ticks)| ticks)
}

/// The state (field 3) and start time (field 22) of `/proc/PID/stat`, from one read. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// closing parenthesis.
pub(super) fn proc_stat(pid: i32) -> io::Result<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| {
            let mut fields = rest.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ticks = fields.nth(18)?.parse().ok()?;
            Some((state, ticks))
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat has no state and start time"),
            )
        })
}

/// Whether a process in this state has ended and waits to be reaped (a zombie, `Z`, or `X`):
/// it keeps its start time until its parent reaps it, and a shim whose parent is an init
/// that reaps late must not count as running.
pub(super) fn exited(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

pub(super) fn boot_id() -> io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|b| b.trim().to_string())
}
