//! Warm shims, the runner's side: one shim per host and agent binary exec'd ahead and
//! waiting (`shim/warm.rs`), handed the next dyno instead of exec'ing a new one.
//!
//! A start connects to `STATE/shims/<binary>.sock` and sends the dyno's directory; the
//! shim answers with its pid and goes on as that dyno's shim. With none waiting (the first
//! start, one that died, a race lost to another runner) the start execs a shim as before.
//! Either way, once the shim has reported (its container built), the runner execs the next
//! warm one, off the start's path. The socket is named after the binary (its path, inode and
//! mtime), so that after an upgrade dynos get the new binary's shim, never an old one's, and
//! after the starter's `oom_score_adj`, which a shim keeps from whoever spawned it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
    /// The warm shim of `binary` on this host (`None` if the binary cannot be read).
    pub(super) fn of(host: &HostConfig, binary: &Path) -> Option<WarmShim> {
        let meta = std::fs::metadata(binary).ok()?;
        // A shim keeps what it inherits from its spawner (the agent's OOM shield above
        // all), so a warm shim serves only starters that would have given it the same:
        // one spawned by an agent with another `oom_score_adj` waits under another name.
        let oom = std::fs::read_to_string("/proc/self/oom_score_adj").ok()?;
        let id = format!(
            "{}:{}:{}:{}:{}:{}",
            binary.display(),
            meta.dev(),
            meta.ino(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.size(),
            oom.trim()
        );
        let digest = Sha256::digest(id.as_bytes());
        let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Some(WarmShim {
            socket: host.warm_shims_dir().join(format!("{name}.sock")),
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
        let spawned = std::fs::create_dir_all(self.socket.parent().unwrap_or(Path::new("/")))
            .and_then(|()| {
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
