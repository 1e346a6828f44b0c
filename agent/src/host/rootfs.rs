//! The dyno's root filesystem: an overlay of the slug layer over the stack, with a per-dyno
//! upper directory that is deleted when the dyno ends (Heroku's ephemeral filesystem).

use std::fs;
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors mounting or removing a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("stack {name:?} not found at {path} (build it with `rootfs/build-stack {name}`)")]
    NoStack { name: String, path: PathBuf },
    #[error("invalid stack name {name:?}: use lower-case letters, digits, `-`, `_` and `.`, not starting with `.`")]
    StackName { name: String },
    #[error("cannot prepare {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount overlay at {target} (lower {lower})")]
    Mount {
        target: PathBuf,
        lower: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Finds a stack by name. Only a finished stack counts: `rootfs/build-stack` writes
/// `.manifold-stack` last, so a stack being built or replaced is never used half-made. The
/// name is checked so that it cannot name a path outside the stacks directory.
pub fn find_stack(stacks_dir: &Path, name: &str) -> Result<PathBuf, RootfsError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !valid {
        return Err(RootfsError::StackName {
            name: name.to_string(),
        });
    }
    let path = stacks_dir.join(name);
    if path.join(".manifold-stack").is_file() {
        Ok(path)
    } else {
        Err(RootfsError::NoStack {
            name: name.to_string(),
            path,
        })
    }
}

/// The directories of one overlay.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Highest first: the slug layer, then the stack.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

impl Overlay {
    /// Creates the upper, work and merged directories and mounts the overlay.
    ///
    /// When no slug layer is given, `/app` is created in the upper directory owned by the
    /// dyno's user, so that a bare-stack dyno (a build, a one-off) still has a writable home.
    pub fn mount(&self, app_owner: Option<(u32, u32)>) -> Result<(), RootfsError> {
        for dir in [&self.upper, &self.work, &self.merged] {
            fs::create_dir_all(dir).map_err(|source| RootfsError::Prepare {
                path: dir.clone(),
                source,
            })?;
        }
        fs::set_permissions(&self.upper, fs::Permissions::from_mode(0o755)).map_err(|source| {
            RootfsError::Prepare {
                path: self.upper.clone(),
                source,
            }
        })?;
        if let Some((uid, gid)) = app_owner {
            let app = self.upper.join("app");
            fs::create_dir_all(&app)
                .and_then(|()| chown(&app, Some(uid), Some(gid)))
                .map_err(|source| RootfsError::Prepare { path: app, source })?;
        }
        let lower = self
            .lower
            .iter()
            .map(|p| escape(p))
            .collect::<Vec<_>>()
            .join(":");
        let data = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            escape(&self.upper),
            escape(&self.work)
        );
        // nosuid: a setuid file the dyno makes in its upper directory grants nothing through
        // the merged tree (the host's view of the dyno's root); nodev: nor does a device node.
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some(data.as_str()),
        )
        .map_err(|source| RootfsError::Mount {
            target: self.merged.clone(),
            lower,
            source,
        })
    }
}

/// Closes a dyno's (or build's) state directory to host users: owned by root, group `gid`
/// (the host gid of the dyno's root, which must traverse it to reach its root and bind
/// mounts), mode 0710. The upper directory below it holds whatever the dyno wrote, setuid
/// files included, on the host's own filesystem, where `nosuid` does not apply: only root and
/// the dyno's own ids may reach it.
pub fn close_to_host_users(dir: &Path, gid: u32) -> Result<(), RootfsError> {
    let prepare = |source| RootfsError::Prepare {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(prepare)?;
    chown(dir, Some(0), Some(gid)).map_err(prepare)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o710)).map_err(prepare)
}

/// Creates the mount points of bind mounts in the dyno's root, as the host's root, so that
/// the container (whose root in a user namespace is nobody on the host) need not create them
/// in directories it does not own. A file gets an empty file, a directory a directory.
pub fn make_mount_points(merged: &Path, binds: &[(PathBuf, PathBuf)]) -> Result<(), RootfsError> {
    for (source, destination) in binds {
        let rel = destination.strip_prefix("/").unwrap_or(destination);
        let target = merged.join(rel);
        let prepare = |source| RootfsError::Prepare {
            path: target.clone(),
            source,
        };
        if target.symlink_metadata().is_ok() {
            continue;
        }
        if source.is_dir() {
            fs::create_dir_all(&target).map_err(prepare)?;
        } else {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(prepare)?;
            }
            fs::File::create(&target).map_err(prepare)?;
        }
    }
    Ok(())
}

/// Overlay options separate fields with `,` and layers with `:`; paths holding either are
/// escaped with a backslash, as the kernel expects.
fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace(':', "\\:")
}

/// Unmounts `target` if it is mounted. Lazy (`MNT_DETACH`) so a busy mount cannot wedge a
/// stop; the dyno's processes are gone by then anyway.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(source) => Err(RootfsError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// Whether anything is mounted at or below `path`, from `/proc/self/mountinfo`.
pub fn mounted_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(path))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_found_only_when_finished_and_well_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("half")).expect("mkdir");
        fs::create_dir_all(dir.path().join("done")).expect("mkdir");
        fs::write(dir.path().join("done/.manifold-stack"), "name=done\n").expect("write");
        assert_eq!(
            find_stack(dir.path(), "done").expect("found"),
            dir.path().join("done")
        );
        let half = find_stack(dir.path(), "half").expect_err("unfinished");
        assert!(
            half.to_string().contains("rootfs/build-stack half"),
            "{half}"
        );
        for bad in ["../etc", ".tmp", "", "a/b", "Upper"] {
            assert!(
                matches!(
                    find_stack(dir.path(), bad),
                    Err(RootfsError::StackName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn escapes_overlay_separators() {
        assert_eq!(escape(Path::new("/a,b:c")), "/a\\,b\\:c");
    }
}
