//! Tearing a dyno down: what its start steps made, undone.

use std::fs::{self};
use std::io;
use std::path::{Path, PathBuf};

use libcontainer::container::Container;

use crate::dyno::{DynoConfig, DynoDir};
use crate::host::cgroup::{self, Layout};
use crate::host::network;
use crate::host::rootfs::{self};

/// Removes a dyno whose shim is gone (`gc`, or an agent finding it at start-up): whatever it
/// left (see [`cleanup`]), then its directory. Returns what [`cleanup`] could not remove; an
/// error when the directory stays.
pub fn remove_dead(dir: &DynoDir) -> io::Result<Vec<String>> {
    let errors = match dir.read_config() {
        Ok(config) => cleanup(&config, dir, None),
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
pub fn cleanup(config: &DynoConfig, dir: &DynoDir, container: Option<Container>) -> Vec<String> {
    let mut container = container;
    let mut errors = Vec::new();
    for undo in TEARDOWN {
        errors.extend(undo.run(config, dir, &mut container));
    }
    errors
}

impl Undo {
    /// Undoes this part of the dyno, if it is there. Returns what could not be removed.
    fn run(
        self,
        config: &DynoConfig,
        dir: &DynoDir,
        container: &mut Option<Container>,
    ) -> Vec<String> {
        let state = config.host.containers_dir().join(&config.id);
        match self {
            Undo::ShimCgroups => cgroup::remove_shim_cgroups(
                Path::new(cgroup::ROOT),
                &config.host.dyno_cgroup(&config.id),
            ),
            Undo::Container => {
                let loaded = container.take().or_else(|| Container::load(state).ok());
                match loaded.map(|mut c| c.delete(true)) {
                    Some(Err(err)) => vec![format!("container: {err}")],
                    _ => Vec::new(),
                }
            }
            Undo::State => match fs::remove_dir_all(&state) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    vec![format!("container state {}: {e}", state.display())]
                }
                _ => Vec::new(),
            },
            Undo::Cgroups if config.host.cgroup_driver == cgroup::Driver::Cgroupfs => {
                remove_cgroups(&config.host.cgroup_parent, &config.id)
            }
            Undo::Cgroups => Vec::new(),
            Undo::Network => match network::release(&config.host.network, &config.id) {
                Err(err) => vec![format!("network: {err}")],
                Ok(_) => Vec::new(),
            },
            Undo::Rootfs => match rootfs::unmount(&dir.rootfs()) {
                Err(err) => vec![format!("rootfs: {err}")],
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

/// Removes the dyno's cgroup directories if libcontainer left any (a crash mid-create leaves
/// a cgroup but no state for `delete` to find).
fn remove_cgroups(parent: &str, id: &str) -> Vec<String> {
    let root = Path::new(cgroup::ROOT);
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
