//! Disk quotas: a dyno's writable layer and a build's directories are btrfs subvolumes, each
//! with a qgroup limit from the dyno size table, so that a dyno writing without end fails
//! with `EDQUOT` ("Disk quota exceeded") inside itself and the host's disk never fills.
//!
//! Why btrfs: the kernels Manifold meets may lack `CONFIG_QUOTA` (this project's own does:
//! XFS and ext4 project quotas, Docker's `overlay2` `size=`, cannot be mounted there), while
//! btrfs qgroups are part of btrfs itself. A subvolume and its limit are two ioctls (nothing
//! measurable before a dyno's first line; its removal about 1.5 ms: BENCHMARKS.md); removing
//! the directory removes the subvolume, and the kernel drops its qgroup once it is gone.
//!
//! Where the state directory is not on btrfs, or quotas are not enabled on it, directories
//! are made plain and unlimited, and [`Made::Unlimited`] says why: the agent warns once at
//! start (README, "Disk quotas", says how an operator sets it up).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::statfs::BTRFS_SUPER_MAGIC;

/// The inode number of every subvolume's root directory.
const SUBVOLUME_ROOT_INO: u64 = 256;
/// `BTRFS_QGROUP_LIMIT_MAX_RFER`: limit the bytes the subvolume refers to.
const LIMIT_MAX_REFERENCED: u64 = 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_referenced: u64,
    max_exclusive: u64,
    reserved_referenced: u64,
    reserved_exclusive: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`; qgroup 0 means the subvolume of the fd.
#[repr(C)]
#[derive(Default)]
struct QgroupLimitArgs {
    qgroup: u64,
    limit: QgroupLimit,
}

nix::ioctl_write_ptr!(subvolume_create, 0x94, 14, VolArgs);
// The kernel declares it `_IOR` although it only reads the argument.
nix::ioctl_read!(qgroup_limit, 0x94, 43, QgroupLimitArgs);

/// How a directory was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// A subvolume whose contents may not exceed the limit.
    Limited,
    /// A plain directory, or a subvolume without a limit; the reason, for the operator.
    Unlimited(String),
}

/// Makes `path` (whose parent exists) a directory holding at most `bytes`: a btrfs subvolume
/// with that qgroup limit where the filesystem allows it, otherwise a plain directory. An
/// existing subvolume gets the limit again; an existing plain directory stays unlimited.
pub fn limited_dir(path: &Path, bytes: u64) -> io::Result<Made> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let on_btrfs = nix::sys::statfs::statfs(parent)
        .map(|s| s.filesystem_type() == BTRFS_SUPER_MAGIC)
        .map_err(io::Error::from)?;
    if !on_btrfs {
        create_plain(path)?;
        return Ok(Made::Unlimited(format!(
            "{} is not on btrfs",
            parent.display()
        )));
    }
    match fs::symlink_metadata(path) {
        Ok(meta)
            if meta.is_dir()
                && std::os::unix::fs::MetadataExt::ino(&meta) == SUBVOLUME_ROOT_INO => {}
        Ok(meta) if meta.is_dir() => {
            return Ok(Made::Unlimited(format!(
                "{} exists as a plain directory",
                path.display()
            )))
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a directory", path.display()),
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => create_subvolume(parent, path)?,
        Err(err) => return Err(err),
    }
    let dir = open_dir(path, libc::O_NOFOLLOW)?;
    let mut args = QgroupLimitArgs {
        qgroup: 0,
        limit: QgroupLimit {
            flags: LIMIT_MAX_REFERENCED,
            max_referenced: bytes,
            ..QgroupLimit::default()
        },
    };
    // SAFETY: `args` is a live, correctly laid out `btrfs_ioctl_qgroup_limit_args`.
    match unsafe { qgroup_limit(dir.as_raw_fd(), &mut args) } {
        Ok(_) => Ok(Made::Limited),
        Err(Errno::ENOTCONN) | Err(Errno::ENOENT) => Ok(Made::Unlimited(format!(
            "quotas are not enabled on the btrfs of {} (btrfs quota enable)",
            parent.display()
        ))),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Whether directories made under `dir` get their limits, and if not, why.
pub fn check(dir: &Path) -> Made {
    let probe = dir.join(format!(".quota-probe-{}", std::process::id()));
    let made = match fs::create_dir_all(dir).and_then(|()| limited_dir(&probe, 1 << 20)) {
        Ok(made) => made,
        Err(err) => Made::Unlimited(format!("cannot make {}: {err}", probe.display())),
    };
    let _ = fs::remove_dir(&probe);
    made
}

fn create_plain(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

fn create_subvolume(parent: &Path, path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .filter(|n| !n.is_empty() && n.len() < 4088)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad subvolume name"))?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    args.name[..name.len()].copy_from_slice(name);
    let dir = open_dir(parent, 0)?;
    // SAFETY: `args` is a live `btrfs_ioctl_vol_args` with a NUL-terminated name.
    unsafe { subvolume_create(dir.as_raw_fd(), &args) }.map_err(io::Error::from)?;
    Ok(())
}

/// Opens a directory for its ioctls (read-only, close-on-exec, plus `flags`).
fn open_dir(path: &Path, flags: i32) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | flags)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_btrfs_a_plain_directory_is_made_and_the_reason_given() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // The test's temporary directory is not on btrfs on this project's machines.
        if nix::sys::statfs::statfs(tmp.path())
            .is_ok_and(|s| s.filesystem_type() == BTRFS_SUPER_MAGIC)
        {
            return;
        }
        let dir = tmp.path().join("d");
        let made = limited_dir(&dir, 1 << 20).expect("made");
        assert!(
            matches!(&made, Made::Unlimited(why) if why.contains("not on btrfs")),
            "{made:?}"
        );
        assert!(dir.is_dir());
        // Again: idempotent.
        assert!(matches!(limited_dir(&dir, 1 << 20), Ok(Made::Unlimited(_))));
        fs::remove_dir(&dir).expect("rmdir");
        fs::write(&dir, b"x").expect("file");
        assert!(limited_dir(&dir, 1 << 20).is_err());
    }
}
