//! inotify limits: a dyno's inotify instances and watches are its own to exhaust, not host
//! root's.
//!
//! The kernel charges an inotify instance (and each watch) to the caller's user in its user
//! namespace *and* to the owner of every enclosing namespace: a dyno's user namespace is
//! made by host root, so everything a dyno opens also counts against host root's
//! `fs.inotify.max_user_instances` (128 by default), and one dyno holding 128 instances left
//! the agent, systemd and every root service of the host without any. The fix is two limits:
//! each dyno's namespace gets its own (`/proc/sys/user/max_inotify_*`, which only a process
//! inside that namespace with `CAP_SYS_RESOURCE` there can set: the shim's child, which enters
//! it before the dyno runs), and the host's limit for root is raised, never lowered, so that
//! many full dynos still leave root room.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

/// A dyno's inotify instances: the kernel's default per user.
pub const DYNO_INSTANCES: u64 = 128;
/// A dyno's inotify watches (each pins about 1 KB of kernel memory).
pub const DYNO_WATCHES: u64 = 8192;
/// Host root's instance limit is raised to at least this: 512 dynos at their limit.
pub const HOST_INSTANCES: u64 = 65536;

/// Raises the host's `fs.inotify.max_user_instances` to [`HOST_INSTANCES`] if it is lower.
pub fn raise_host_limit(proc_sys: &Path) -> io::Result<()> {
    let path = proc_sys.join("fs/inotify/max_user_instances");
    let now: u64 = fs::read_to_string(&path)?.trim().parse().unwrap_or(0);
    if now < HOST_INSTANCES {
        fs::write(&path, HOST_INSTANCES.to_string())?;
    }
    Ok(())
}

/// Sets the limits of the user namespace of process `pid` (a dyno's init, built and not
/// started yet). Forks a child that enters the namespace, since entering one cannot be
/// undone; the caller must be single-threaded (the shim is), or the fork could deadlock.
/// The child works while the caller goes on (the shim wires the dyno's network meanwhile);
/// [`Limiting::wait`] says how it went, and must be called before the dyno starts.
pub fn limit_dyno(pid: Pid) -> io::Result<Limiting> {
    let userns = fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let (theirs, ours) = (userns.metadata()?, fs::metadata("/proc/self/ns/user")?);
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        // No user namespace of its own (the kernel refused one): these limits would be
        // the host's.
        return Err(io::Error::other(
            "the dyno shares the host's user namespace",
        ));
    }
    // SAFETY: the shim is single-threaded; the child only makes system calls and exits.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Child => {
            let ok = setns(&userns, CloneFlags::CLONE_NEWUSER).is_ok()
                && fs::write(
                    "/proc/sys/user/max_inotify_instances",
                    DYNO_INSTANCES.to_string(),
                )
                .is_ok()
                && fs::write(
                    "/proc/sys/user/max_inotify_watches",
                    DYNO_WATCHES.to_string(),
                )
                .is_ok();
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => Ok(Limiting { child: Some(child) }),
    }
}

/// The child of [`limit_dyno`], still at work. Dropped unwaited (the start failed
/// meanwhile), it is reaped then.
#[derive(Debug)]
pub struct Limiting {
    child: Option<Pid>,
}

impl Limiting {
    /// Waits for the child: the limits are set, or why not.
    pub fn wait(mut self) -> io::Result<()> {
        let child = self.child.take().expect("waited once");
        match waitpid(child, None).map_err(io::Error::from)? {
            WaitStatus::Exited(_, 0) => Ok(()),
            status => Err(io::Error::other(format!(
                "setting the dyno's inotify limits failed ({status:?})"
            ))),
        }
    }
}

impl Drop for Limiting {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = waitpid(child, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_limit_is_raised_never_lowered() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("fs/inotify");
        fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("max_user_instances");
        fs::write(&file, "128\n").expect("write");
        raise_host_limit(tmp.path()).expect("raise");
        assert_eq!(fs::read_to_string(&file).expect("read"), "65536");
        fs::write(&file, "1000000\n").expect("write");
        raise_host_limit(tmp.path()).expect("raise");
        assert_eq!(fs::read_to_string(&file).expect("read"), "1000000\n");
    }
}
