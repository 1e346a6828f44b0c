//! Tearing a dyno down: what its start steps made, undone.

use std::fs;
use std::io;
use std::path::Path;

use crate::dyno::{DynoConfig, DynoDir};

use super::kernel::{Container, Kernel};

/// Removes a dyno whose shim is gone (`gc`, or an agent finding it at start-up): whatever it
/// left (see [`cleanup`]), then its directory. Returns what [`cleanup`] could not remove; an
/// error when the directory stays.
pub fn remove_dead(dir: &DynoDir) -> io::Result<Vec<String>> {
    let errors = match dir.read_config() {
        Ok(config) => cleanup(&Kernel::host(), &config, dir, None),
        Err(_) => Vec::new(),
    };
    fs::remove_dir_all(&dir.root)?;
    Ok(errors)
}

/// What the start steps ([`StartStep`]) leave that is the dyno's own, in the order it is
/// undone: the reverse of the start's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// The shim's CPU cgroups (`<dyno>/shim`): a shim that died in them left them there,
    /// which would keep libcontainer from removing the dyno's.
    ShimCgroups,
    /// libcontainer's container: its processes killed, its cgroups and state deleted.
    Container,
    /// libcontainer's state directory, should `delete` have left it (or never loaded it).
    State,
    /// The dyno's cgroup directories, if libcontainer left any (a crash mid-create leaves a
    /// cgroup but no state for `delete` to find). A systemd scope goes by itself once empty.
    Cgroups,
    /// The dyno's network: address lease, port, policy rules. The container is gone, so its
    /// netns is going and takes the veth pair along.
    Network,
    /// The overlay mount.
    Rootfs,
    /// The OCI bundle (the spec).
    Bundle,
    /// The writable layer and its quota.
    Disk,
}

/// [`Undo`] in the order [`cleanup`] runs it.
const TEARDOWN: [Undo; 8] = [
    Undo::ShimCgroups,
    Undo::Container,
    Undo::State,
    Undo::Cgroups,
    Undo::Network,
    Undo::Rootfs,
    Undo::Bundle,
    Undo::Disk,
];

/// Removes everything a dyno had, whatever state it is in: [`TEARDOWN`], each step
/// idempotent, so this also serves a sweep after a crash or a start that failed half-way.
/// Returns what could not be removed.
pub(super) fn cleanup(
    kernel: &Kernel,
    config: &DynoConfig,
    dir: &DynoDir,
    container: Option<Box<dyn Container>>,
) -> Vec<String> {
    let mut container = container;
    let mut errors = Vec::new();
    for undo in TEARDOWN {
        errors.extend(undo.run(kernel, config, dir, &mut container));
    }
    errors
}

/// [`cleanup`] on this host, for a dyno whose shim is not the caller (a runner that found
/// the shim gone).
pub fn cleanup_on_host(config: &DynoConfig, dir: &DynoDir) -> Vec<String> {
    cleanup(&Kernel::host(), config, dir, None)
}

impl Undo {
    /// Undoes this part of the dyno, if it is there. Returns what could not be removed.
    fn run(
        self,
        kernel: &Kernel,
        config: &DynoConfig,
        dir: &DynoDir,
        container: &mut Option<Box<dyn Container>>,
    ) -> Vec<String> {
        let failed = |what: &str, err: anyhow::Error| vec![format!("{what}: {err:#}")];
        match self {
            Undo::ShimCgroups => kernel.cgroups.remove_shim_cgroups(config),
            Undo::Container => {
                let loaded = container.take().or_else(|| kernel.runtime.load(config));
                match loaded.map(|mut c| c.delete()) {
                    Some(Err(err)) => failed("container", err),
                    _ => Vec::new(),
                }
            }
            Undo::State => kernel.runtime.remove_state(config),
            Undo::Cgroups => kernel.cgroups.remove_dyno_cgroups(config),
            Undo::Network => match kernel.network.release(config) {
                Err(err) => failed("network", err),
                Ok(()) => Vec::new(),
            },
            Undo::Rootfs => match kernel.mounts.unmount(&dir.rootfs()) {
                Err(err) => failed("rootfs", err),
                Ok(()) => Vec::new(),
            },
            Undo::Bundle => remove_dir(&dir.bundle()),
            Undo::Disk => remove_dir(&dir.disk()),
        }
    }
}

/// Removes a directory and what it holds; gone already is fine.
fn remove_dir(d: &Path) -> Vec<String> {
    match fs::remove_dir_all(d) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => vec![format!("{}: {e}", d.display())],
        _ => Vec::new(),
    }
}
