//! The shim's kernel work on this host: overlayfs and btrfs quotas, cgroupfs or systemd cgroups,
//! libcontainer, the bridge.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container as Libcontainer;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;

use crate::dyno::{DynoConfig, DynoDir};
use crate::host::cgroup::{self, Layout, Sentinel, ShimCgroup, ShimCgroupError};
use crate::host::inotify;
use crate::host::network::{self, Plug};
use crate::host::quota;
use crate::host::rootfs::{self, Overlay};
use crate::host::seccomp::Filter;
use crate::host::slug::{SlugCache, UnpackLimits};

use super::{Cgroups, Container, Limiting, Mounts, Network, Runtime, Streams};
use crate::shim::memory_dir;

/// This host's kernel, through libcontainer where it serves.
pub(in crate::shim) struct Host;

/// The shim's own OOM score adjustment (kept across libcontainer's `build()`).
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

impl Mounts for Host {
    fn slug_layer(&self, c: &DynoConfig) -> anyhow::Result<Option<PathBuf>> {
        let Some(slug) = &c.slug else {
            return Ok(None);
        };
        let cache = SlugCache::new(
            c.host.slug_layers_dir(c.host_ids()),
            UnpackLimits::default(),
            Some(c.host_ids()),
        );
        Ok(Some(cache.layer(&slug.path, slug.sha256.as_deref())?.dir))
    }

    fn limit_disk(&self, disk: &Path, bytes: u64) -> io::Result<quota::Made> {
        quota::limited_dir(disk, bytes)
    }

    fn mount(
        &self,
        c: &DynoConfig,
        dir: &DynoDir,
        overlay: &Overlay,
        binds: &[(PathBuf, PathBuf)],
    ) -> anyhow::Result<()> {
        rootfs::close_to_host_users(&dir.root, c.host.host_ids(0, 0).1)?;
        // A bare stack's `/app` is the dyno user's; a slug's layer already is.
        overlay.mount(c.slug.is_none().then_some(c.host_ids()))?;
        rootfs::make_mount_points(&overlay.merged, binds)?;
        Ok(())
    }

    fn unmount(&self, merged: &Path) -> anyhow::Result<()> {
        Ok(rootfs::unmount(merged)?)
    }
}

impl Cgroups for Host {
    fn forbid_swap(&self, c: &DynoConfig) -> io::Result<()> {
        let (layout, memory) = memory_dir(c);
        cgroup::forbid_swap(layout, &memory)
    }

    fn keep_scope(&self, c: &DynoConfig) -> io::Result<Option<Sentinel>> {
        if c.host.cgroup_driver != cgroup::Driver::Systemd {
            return Ok(None);
        }
        Sentinel::start(&memory_dir(c).1).map(Some)
    }

    fn join_cpu(&self, c: &DynoConfig) -> Result<ShimCgroup, ShimCgroupError> {
        let own = cgroup::own_cgroups()?;
        ShimCgroup::join(
            Path::new(cgroup::ROOT),
            &c.host.dyno_cgroup(&c.id),
            std::process::id(),
            &own,
        )
    }

    fn remove_shim_cgroups(&self, c: &DynoConfig) -> Vec<String> {
        cgroup::remove_shim_cgroups(Path::new(cgroup::ROOT), &c.host.dyno_cgroup(&c.id))
    }

    fn remove_dyno_cgroups(&self, c: &DynoConfig) -> Vec<String> {
        // A systemd scope goes by itself once empty.
        if c.host.cgroup_driver != cgroup::Driver::Cgroupfs {
            return Vec::new();
        }
        let root = Path::new(cgroup::ROOT);
        let (parent, id) = (&c.host.cgroup_parent, &c.id);
        let dirs: Vec<PathBuf> = match Layout::detect(root) {
            Layout::V2 => vec![root.join(parent).join(id)],
            Layout::V1 => fs::read_dir(root)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path().join(parent).join(id))
                        .collect()
                })
                .unwrap_or_default(),
        };
        dirs.into_iter()
            .filter(|d| d.is_dir())
            .filter_map(|d| {
                fs::remove_dir(&d)
                    .err()
                    .map(|e| format!("cgroup {}: {e}", d.display()))
            })
            .collect()
    }
}

/// libcontainer's last step in the dyno's init: puts it under its seccomp filter, then
/// executes the command as libcontainer's default executor does. Between the two only the
/// `execve`s of the `PATH` lookup run, so the filter need not allow what libcontainer's
/// setup needs, and a dyno never runs a line of its own code unfiltered.
#[derive(Clone)]
struct Filtered {
    filter: Arc<Filter>,
}

impl Executor for Filtered {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.filter
            .install()
            .map_err(|e| ExecutorError::Other(format!("seccomp filter not installed: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

impl Runtime for Host {
    fn build(
        &self,
        c: &DynoConfig,
        dir: &DynoDir,
        streams: Streams,
        filter: Filter,
    ) -> anyhow::Result<Box<dyn Container>> {
        fs::create_dir_all(c.host.containers_dir())?;
        // libcontainer writes the spec's `oomScoreAdj` into its caller, the shim, for the
        // dyno's init to inherit; the shim itself keeps the agent's protection, so that the
        // host's OOM killer takes the dyno's memory, never the process that reports its end.
        let own_oom_score_adj = fs::read_to_string(OOM_SCORE_ADJ)?;
        // Rust ignores SIGPIPE; the dyno must not inherit that.
        // SAFETY: restoring a default disposition.
        unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }?;
        let built = ContainerBuilder::new(c.id.clone(), SyscallType::default())
            .with_root_path(c.host.containers_dir())
            .and_then(|b| b.validate_id())
            .map(|b| {
                match streams {
                    Streams::Fds([stdin, stdout, stderr]) => {
                        b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
                    }
                    Streams::Terminal => b.with_console_socket(Some(dir.console_socket())),
                }
                .with_executor(Filtered {
                    filter: Arc::new(filter),
                })
                .as_init(dir.bundle())
                .with_systemd(c.host.cgroup_driver == cgroup::Driver::Systemd)
                .with_detach(true)
            })
            .and_then(|b| b.build());
        // SAFETY: back to Rust's usual disposition for the shim's own writes.
        unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }?;
        let built = built?;
        fs::write(OOM_SCORE_ADJ, own_oom_score_adj.trim())?;
        Ok(Box::new(Built(built)))
    }

    fn limit_user_namespace(&self, pid: Pid) -> Limiting {
        // Its user namespace exists and its command has not started: give the namespace its
        // own inotify limits, so that the dyno cannot use up host root's (a child process
        // does it while the shim goes on).
        let limiting = inotify::raise_host_limit(Path::new("/proc/sys"))
            .and_then(|()| inotify::limit_dyno(pid));
        Box::new(move || limiting.and_then(inotify::Limiting::wait))
    }

    fn load(&self, c: &DynoConfig) -> Option<Box<dyn Container>> {
        Libcontainer::load(c.host.containers_dir().join(&c.id))
            .ok()
            .map(|l| Box::new(Built(l)) as Box<dyn Container>)
    }

    fn remove_state(&self, c: &DynoConfig) -> Vec<String> {
        let state = c.host.containers_dir().join(&c.id);
        match fs::remove_dir_all(&state) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                vec![format!("container state {}: {e}", state.display())]
            }
            _ => Vec::new(),
        }
    }
}

/// A container libcontainer built or loaded.
struct Built(Libcontainer);

impl Container for Built {
    fn pid(&self) -> Option<Pid> {
        self.0.pid()
    }

    fn start(&mut self) -> anyhow::Result<()> {
        Ok(self.0.start()?)
    }

    fn kill_all(&mut self, sig: Signal) -> anyhow::Result<()> {
        Ok(self.0.kill(sig, true)?)
    }

    fn delete(&mut self) -> anyhow::Result<()> {
        Ok(self.0.delete(true)?)
    }
}

impl Network for Host {
    fn ensure_host(&self, c: &DynoConfig) -> anyhow::Result<()> {
        Ok(network::ensure_host_cached(&c.host.network)?)
    }

    fn plug(&self, c: &DynoConfig, pid: Pid) -> anyhow::Result<Plug> {
        Ok(network::plug(
            &c.host.network,
            &c.id,
            pid.as_raw(),
            c.publish.zip(c.port),
            &c.access,
        )?)
    }

    fn release(&self, c: &DynoConfig) -> anyhow::Result<()> {
        Ok(network::release(&c.host.network, &c.id)?)
    }
}
