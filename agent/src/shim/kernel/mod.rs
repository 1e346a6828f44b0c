//! The shim's kernel work: what its start steps and teardown ask of the host, behind one trait
//! per part of the host (mounts, cgroups, the container runtime, the network).
//!
//! The shim decides; these do. What the shim decides (the steps' order, which step a
//! failure is named after, that a failed start is undone in full and in reverse, that one
//! undo failing does not stop the others, which signal a stop sends to whom) is then tested
//! without root against [`fake`], while [`Host`] (this host's mounts, cgroups, libcontainer
//! and bridge) is tested for real by the agent's integration tests. The shape follows Nomad's
//! driver plugins and youki's own `Syscall` trait: one narrow interface per kind of host
//! work, a real implementation and a recording one.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::dyno::{DynoConfig, DynoDir};
use crate::host::cgroup::{Sentinel, ShimCgroup, ShimCgroupError};
use crate::host::network::Plug;
use crate::host::quota;
use crate::host::rootfs::Overlay;
use crate::host::seccomp::Filter;

#[cfg(test)]
pub(super) mod fake;
mod host;

pub(super) use host::Host;

/// The four parts of the shim's kernel work, as one value the shim holds.
pub(super) struct Kernel {
    pub(super) mounts: Box<dyn Mounts>,
    pub(super) cgroups: Box<dyn Cgroups>,
    pub(super) runtime: Box<dyn Runtime>,
    pub(super) network: Box<dyn Network>,
}

impl Kernel {
    /// This host's: real mounts, cgroups, libcontainer and bridge.
    pub(super) fn host() -> Kernel {
        Kernel {
            mounts: Box::new(Host),
            cgroups: Box::new(Host),
            runtime: Box::new(Host),
            network: Box::new(Host),
        }
    }
}

/// The dyno's root filesystem: the slug's layer, the writable layer, the overlay.
pub(super) trait Mounts {
    /// The slug's layer (unpacked once per host and app ids, then cached), or None for a
    /// dyno without a slug (the bare stack).
    fn slug_layer(&self, c: &DynoConfig) -> anyhow::Result<Option<PathBuf>>;
    /// Makes `disk` (the writable layer's home) a directory of at most `bytes`.
    fn limit_disk(&self, disk: &Path, bytes: u64) -> io::Result<quota::Made>;
    /// Closes the dyno's directory to host users, mounts the overlay and makes the mount
    /// points of the binds (`(source, destination)`) inside it.
    fn mount(
        &self,
        c: &DynoConfig,
        dir: &DynoDir,
        overlay: &Overlay,
        binds: &[(PathBuf, PathBuf)],
    ) -> anyhow::Result<()>;
    /// Unmounts the overlay at `merged`; not mounted is fine.
    fn unmount(&self, merged: &Path) -> anyhow::Result<()>;
}

/// The dyno's cgroups beyond what the runtime makes: no swap, the systemd scope's keeper,
/// the shim's CPU inside the dyno's, and their removal.
pub(super) trait Cgroups {
    /// No swap for the dyno: its memory limit is its memory.
    fn forbid_swap(&self, c: &DynoConfig) -> io::Result<()>;
    /// Keeps a systemd scope (and its `memory.events`) until the dyno's end is read; None
    /// where cgroupfs makes the dyno's cgroups, which stay until removed.
    fn keep_scope(&self, c: &DynoConfig) -> io::Result<Option<Sentinel>>;
    /// Moves the shim's own CPU into the dyno's cgroups (`<dyno>/shim`).
    fn join_cpu(&self, c: &DynoConfig) -> Result<ShimCgroup, ShimCgroupError>;
    /// Removes `<dyno>/shim`, which a shim that died in it left. Returns what stayed.
    fn remove_shim_cgroups(&self, c: &DynoConfig) -> Vec<String>;
    /// Removes the dyno's cgroup directories the runtime left. Returns what stayed.
    fn remove_dyno_cgroups(&self, c: &DynoConfig) -> Vec<String>;
}

/// How the dyno's standard streams reach its init: three descriptors (stdin, stdout,
/// stderr), or a terminal the init opens and sends back over the dyno's console socket.
pub(super) enum Streams {
    Fds([OwnedFd; 3]),
    Terminal,
}

/// Waits for limits being set on a built dyno's user namespace (see
/// [`Runtime::limit_user_namespace`]), and says how it went.
pub(super) type Limiting = Box<dyn FnOnce() -> io::Result<()>>;

/// The container runtime: builds the dyno's container (init waiting), starts it, finds it
/// again after a crash, removes its state.
pub(super) trait Runtime {
    /// Builds the container from the bundle in `dir`; its init waits for
    /// [`Container::start`]. The init installs `filter` last, just before the command.
    fn build(
        &self,
        c: &DynoConfig,
        dir: &DynoDir,
        streams: Streams,
        filter: Filter,
    ) -> anyhow::Result<Box<dyn Container>>;
    /// Starts setting the limits of the built dyno's user namespace (init `pid`); the
    /// returned wait must be called before the dyno starts.
    fn limit_user_namespace(&self, pid: Pid) -> Limiting;
    /// The container the runtime knows by the dyno's id, if any (a sweep after a crash).
    fn load(&self, c: &DynoConfig) -> Option<Box<dyn Container>>;
    /// Removes the runtime's state directory of the dyno, should `delete` have left it.
    fn remove_state(&self, c: &DynoConfig) -> Vec<String>;
}

/// One built container.
pub(super) trait Container {
    /// Its init's pid on the host, once built.
    fn pid(&self) -> Option<Pid>;
    /// Lets the waiting init run the command.
    fn start(&mut self) -> anyhow::Result<()>;
    /// Sends `sig` to every process in it, frozen meanwhile so none forks its way out.
    fn kill_all(&mut self, sig: Signal) -> anyhow::Result<()>;
    /// Kills what is left and deletes the container and its cgroups.
    fn delete(&mut self) -> anyhow::Result<()>;
}

/// The dyno's network.
pub(super) trait Network {
    /// The bridge and host rules, made once per host and shared by every dyno.
    fn ensure_host(&self, c: &DynoConfig) -> anyhow::Result<()>;
    /// Gives the dyno (init `pid`) its address, veth, published port and policy rules.
    fn plug(&self, c: &DynoConfig, pid: Pid) -> anyhow::Result<Plug>;
    /// Releases what [`Network::plug`] made once the container is gone; idempotent.
    fn release(&self, c: &DynoConfig) -> anyhow::Result<()>;
}
