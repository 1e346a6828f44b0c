//! Warm shims, the runner's side: one shim per host and agent binary exec'd ahead and
//! waiting (`shim/warm.rs`), handed the next dyno instead of exec'ing a new one.
//!
//! A start connects to `STATE/shims/<key>.sock` and sends the dyno's directory; the shim
//! answers with its pid and goes on as that dyno's shim. With none waiting (the first start,
//! one that died, a race lost to another runner) the start execs a shim as before. Either
//! way, once the shim has reported (its container built), the runner execs the next warm
//! one, off the start's path.
//!
//! The key names the binary (its path, inode and mtime), so that after an upgrade dynos get
//! the new binary's shim, never an old one's, and everything a shim inherits from whoever
//! spawned it (its cgroup, OOM score, rlimits, credentials, niceness, environment): a shim
//! left by `manifold-agent run` in a login shell never becomes a daemon's dyno's shim, nor
//! the other way round. Only root reaches the sockets: a connection hands over a directory
//! whose `config.json` the shim runs as root.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::dyno::HostConfig;

/// How long a hand-off may take before the runner execs a shim of its own instead.
const HANDOFF: Duration = Duration::from_secs(5);

/// Where this binary's warm shim waits, and how to start the next one.
#[derive(Debug, Clone)]
pub(super) struct WarmShim {
    socket: PathBuf,
    binary: PathBuf,
}

impl WarmShim {
    /// The warm shim of `binary` on this host for a starter like this process (`None` if
    /// the binary or this process's attributes cannot be read, or the socket's path would
    /// not fit a Unix socket address).
    pub(super) fn of(host: &HostConfig, binary: &Path) -> Option<WarmShim> {
        let meta = std::fs::metadata(binary).ok()?;
        let id = format!(
            "{}:{}:{}:{}:{}\n{}",
            binary.display(),
            meta.dev(),
            meta.ino(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.size(),
            inherited().ok()?
        );
        let digest = Sha256::digest(id.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let socket = host.warm_shims_dir().join(format!("{name}.sock"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "no warm shims: {} is longer than a Unix socket's {MAX_SOCKET_PATH} bytes \
                     (a shorter --state-dir saves an exec on every dyno start)",
                    socket.display()
                )
            });
            return None;
        }
        Some(WarmShim {
            socket,
            binary: binary.to_path_buf(),
        })
    }

    /// Hands the dyno in `dir` to the waiting shim. Its pid, or `None` when none took it.
    pub(super) async fn claim(&self, dir: &Path) -> Option<i32> {
        let path = dir.to_str().filter(|p| !p.contains('\n'))?;
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(format!("{path}\n").as_bytes()).await?;
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).await?;
            line.trim()
                .parse::<i32>()
                .ok()
                .filter(|&pid| pid > 0)
                .ok_or_else(|| io::Error::other(format!("no pid in {line:?}")))
        };
        match tokio::time::timeout(HANDOFF, exchange).await {
            Ok(Ok(pid)) => Some(pid),
            Ok(Err(err)) => {
                tracing::debug!("no warm shim at {}: {err}", self.socket.display());
                None
            }
            Err(_) => {
                tracing::warn!("the warm shim at {} did not answer", self.socket.display());
                None
            }
        }
    }

    /// Execs the next warm shim (it puts itself in place). A failure costs only the next
    /// start's exec: logged, not returned.
    pub(super) fn replenish(&self) {
        let dir = self.socket.parent().unwrap_or(Path::new("/"));
        let spawned = private_dir(dir).and_then(|()| {
            super::shim_command(&self.binary)
                .arg("shim")
                .arg("--warm")
                .arg(&self.socket)
                .spawn()
        });
        match spawned {
            // Reaped while this process lives; if it dies first, init adopts the shim.
            Ok(mut child) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(err) => tracing::warn!("cannot start a warm shim {}: {err}", self.binary.display()),
        }
    }
}

/// Sends this host's waiting warm shims away, as an agent that stops does: each sees its
/// socket gone at its next turn (within a second) and exits, rather than idling for minutes
/// after the agent that would have used it. Dynos' shims are not touched.
pub fn retire_warm_shims(host: &HostConfig) {
    let Ok(entries) = std::fs::read_dir(host.warm_shims_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "sock") {
            if let Err(err) = std::fs::remove_file(entry.path()) {
                tracing::warn!(
                    "cannot retire the warm shim at {}: {err}",
                    entry.path().display()
                );
            }
        }
    }
}

/// The longest socket path a warm shim can bind: `sun_path` holds 108 bytes with its NUL,
/// and the shim binds `<socket>.<pid>` (up to 7 digits and a dot) before renaming it.
const MAX_SOCKET_PATH: usize = 107 - 8;

/// What a shim inherits from the process that spawns it and keeps for its dyno's life,
/// as this process has it now.
fn inherited() -> io::Result<String> {
    let proc = |name: &str| std::fs::read_to_string(format!("/proc/self/{name}"));
    // Credentials, capabilities, umask, no_new_privs, seccomp and CPU affinity.
    let status: String = proc("status")?
        .lines()
        .filter(|l| {
            const KEPT: [&str; 12] = [
                "Umask",
                "Uid",
                "Gid",
                "Groups",
                "CapInh",
                "CapPrm",
                "CapEff",
                "CapBnd",
                "CapAmb",
                "NoNewPrivs",
                "Seccomp",
                "Cpus_allowed_list",
            ];
            KEPT.iter().any(|k| l.split(':').next() == Some(k))
        })
        .collect::<Vec<_>>()
        .join("\n");
    // The nice value, field 19 of `stat` (after the parenthesised command name).
    let stat = proc("stat")?;
    let nice = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .unwrap_or_default()
        .to_string();
    let mut env: Vec<String> = std::env::vars_os()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    env.sort();
    Ok([
        proc("cgroup")?,
        proc("oom_score_adj")?,
        proc("limits")?,
        status,
        nice,
        env.join("\0"),
    ]
    .join("\n"))
}

/// Makes the warm shims' directory, readable by root only (the shim's socket carries a
/// directory it runs as root), and tightens one an older agent made with the umask's mode.
fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
