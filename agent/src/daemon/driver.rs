//! The daemon's seams to the outside, after Nomad's driver plugins: what runs its dynos
//! ([`DynoDriver`], really the runner and a shim per dyno: [`ShimDriver`]) and where slugs
//! come from ([`BlobStore`], really the scheduler's blob store over HTTP). The actor takes
//! both as trait objects, so its decisions run in unit tests against fakes that script a
//! dyno's life and record what they were asked, without root, shims or a scheduler.

use futures::future::BoxFuture;

use super::*;
use crate::daemon::link::BlobError;
use crate::runner::RunnerError;

/// Starts and finds dynos.
pub(super) trait DynoDriver: Send + Sync {
    /// Starts the dyno `config` describes (its directory, then its shim).
    fn start(
        &self,
        config: DynoConfig,
    ) -> BoxFuture<'static, Result<Box<dyn DriverDyno>, RunnerError>>;

    /// What runs in a dyno directory a previous daemon left.
    fn find(&self, dir: &DynoDir) -> Found;

    /// Cleans up after a dyno whose shim died with nobody following it.
    fn remove_dead(&self, dir: DynoDir) -> BoxFuture<'static, ()>;
}

/// What a dyno directory holds.
pub(super) enum Found {
    /// A dyno that runs, ready to be followed again.
    Running(Box<dyn DriverDyno>),
    /// Something alive that cannot be adopted (yet): a shim still being started by someone
    /// else, or one whose files cannot be read. Never cleaned up from under it.
    Busy,
    /// Nothing runs there any more.
    Dead,
}

/// One started or adopted dyno.
pub(super) trait DriverDyno: Send {
    fn config(&self) -> &DynoConfig;

    fn dir(&self) -> &DynoDir;

    /// Follows the dyno to its end, sending its lines and state changes to `events`; a
    /// message on `stop` stops it gracefully. Returns its exit status. When it returns, the
    /// dyno has ended or is being killed, even if it was lost sight of: it is about to be
    /// reported ended and started again, and two copies must never run.
    fn follow(
        self: Box<Self>,
        events: mpsc::UnboundedSender<Event>,
        stop: mpsc::UnboundedReceiver<()>,
    ) -> BoxFuture<'static, Result<i32, RunnerError>>;
}

/// The scheduler's blobs: slugs and build sources in, slugs out.
pub(super) trait BlobStore: Send + Sync {
    /// Blob `sha256` as a file in `dir`.
    fn fetch<'a>(
        &'a self,
        sha256: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, BlobError>>;

    fn upload<'a>(
        &'a self,
        file: std::fs::File,
        size: u64,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>>;
}

impl BlobStore for Blobs {
    fn fetch<'a>(
        &'a self,
        sha256: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, BlobError>> {
        Box::pin(Blobs::fetch(self, sha256, dir))
    }

    fn upload<'a>(
        &'a self,
        file: std::fs::File,
        size: u64,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(Blobs::upload(self, file, size, sha256))
    }
}

/// Dynos as the runner runs them: each under its own shim (`BIN shim --dir DIR`).
pub(super) struct ShimDriver {
    pub(super) shim_binary: PathBuf,
}

impl DynoDriver for ShimDriver {
    fn start(
        &self,
        config: DynoConfig,
    ) -> BoxFuture<'static, Result<Box<dyn DriverDyno>, RunnerError>> {
        let shim_binary = self.shim_binary.clone();
        Box::pin(async move {
            let dyno = Dyno::start(config, shim_binary).await?;
            Ok(Box::new(dyno) as Box<dyn DriverDyno>)
        })
    }

    fn find(&self, dir: &DynoDir) -> Found {
        // Alive includes a directory so new that its shim has no pid yet (someone else's
        // `manifold-agent run` starting): never cleaned up from under it.
        if !runner::shim_alive(dir) {
            return Found::Dead;
        }
        if !dir.shim_pid().exists() {
            return Found::Busy;
        }
        match Dyno::adopt(dir.clone()) {
            Ok(dyno) => Found::Running(Box::new(dyno)),
            Err(err) => {
                tracing::warn!("{}", chain(&err));
                Found::Busy
            }
        }
    }

    fn remove_dead(&self, dir: DynoDir) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || match crate::shim::remove_dead(&dir) {
                Ok(errors) => {
                    for err in errors {
                        tracing::warn!("cleanup of {}: {err}", dir.root.display());
                    }
                }
                Err(err) => tracing::warn!("cannot remove {}: {err}", dir.root.display()),
            })
            .await;
        })
    }
}

impl DriverDyno for Dyno {
    fn config(&self) -> &DynoConfig {
        &self.config
    }

    fn dir(&self) -> &DynoDir {
        &self.dir
    }

    fn follow(
        self: Box<Self>,
        events: mpsc::UnboundedSender<Event>,
        stop: mpsc::UnboundedReceiver<()>,
    ) -> BoxFuture<'static, Result<i32, RunnerError>> {
        Box::pin(async move {
            let (dir, shim) = (self.dir.clone(), self.shim_pid());
            let followed = self.follow_events(events, stop).await;
            if followed.is_err() && runner::shim_alive(&dir) {
                // Losing sight of a dyno is no proof that it ended: kill it (the shim
                // SIGKILLs its processes and cleans up).
                let shim = nix::unistd::Pid::from_raw(shim);
                let _ = nix::sys::signal::kill(shim, nix::sys::signal::Signal::SIGUSR1);
            }
            followed
        })
    }
}
