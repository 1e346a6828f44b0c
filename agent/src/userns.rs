//! A dyno's user namespace, made by the shim and *owned by the dyno's unprivileged host uid*
//! rather than by root, for libcontainer to join.
//!
//! Why: the kernel charges per-user counts made in a user namespace (inotify instances and
//! watches, and the other `/proc/sys/user/max_*` counts) to the namespace's owner in the parent
//! namespace as well. A namespace libcontainer creates is owned by root (the shim), so a dyno
//! opening every inotify instance it can took host root's whole budget
//! (`fs.inotify.max_user_instances`, 128): systemd, the agent and every root service lost
//! inotify. Owned by the range's base uid instead (the dyno's root on the host), a dyno's
//! counts are charged to that unprivileged uid: host root keeps its own budget
//! (`agent/tests/isolation_host.rs` shows it on the real kernel).
//!
//! How: a child forked from the (single-threaded) shim drops to the base uid and gid,
//! `unshare`s a user namespace and waits; the shim, root in the parent namespace, writes the
//! namespace's uid and gid maps, and the spec names `/proc/<child>/ns/user` for libcontainer to
//! `setns` into. Once the container exists the namespace lives on through its processes, and
//! the child is let go.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, read, setgroups, setresgid, setresuid, ForkResult, Gid, Pid, Uid};

use crate::dyno::UserNamespace;

/// Errors making a dyno's user namespace.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("cannot {what} for the dyno's user namespace")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("the user namespace's maker (uid {uid}) failed at {step} ({status:?})")]
    Child {
        uid: u32,
        step: &'static str,
        status: WaitStatus,
    },
    #[error("cannot write {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The child's exit codes, naming the step that failed.
const STEPS: [&str; 4] = ["setgroups", "setresgid", "setresuid", "unshare"];

/// A user namespace held open by a waiting child until [`HeldUserns::release`] (or drop).
#[derive(Debug)]
pub struct HeldUserns {
    child: Pid,
    /// Closing it lets the child exit.
    release: Option<OwnedFd>,
}

impl HeldUserns {
    /// Makes a user namespace owned by `ns.host_base`, mapping `0..ns.size` inside to
    /// `ns.host_base..` outside (the same map libcontainer would write).
    pub fn create(ns: UserNamespace) -> Result<HeldUserns, UsernsError> {
        let sys = |what| move |source| UsernsError::Sys { what, source };
        let (ready_r, ready_w) = pipe().map_err(sys("make a pipe"))?;
        let (release_r, release_w) = pipe().map_err(sys("make a pipe"))?;
        // SAFETY: the shim is single-threaded (it is started before any thread exists and
        // makes none before the container), and the child only makes raw system calls
        // (no allocation, no lock) before `_exit`.
        match unsafe { fork() }.map_err(sys("fork"))? {
            ForkResult::Child => {
                drop(ready_r);
                drop(release_w);
                let base = ns.host_base;
                let failed = [
                    setgroups(&[]).is_err(),
                    setresgid(
                        Gid::from_raw(base),
                        Gid::from_raw(base),
                        Gid::from_raw(base),
                    )
                    .is_err(),
                    setresuid(
                        Uid::from_raw(base),
                        Uid::from_raw(base),
                        Uid::from_raw(base),
                    )
                    .is_err(),
                    unshare(CloneFlags::CLONE_NEWUSER).is_err(),
                ]
                .iter()
                .position(|f| *f);
                if let Some(step) = failed {
                    // SAFETY: exiting the forked child without running the parent's atexit.
                    unsafe { libc::_exit(10 + step as i32) };
                }
                let _ = nix::unistd::write(&ready_w, b"1");
                let mut byte = [0u8; 1];
                let _ = read(release_r.as_raw_fd(), &mut byte);
                // SAFETY: as above.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(ready_w);
                drop(release_r);
                let mut held = HeldUserns {
                    child,
                    release: Some(release_w),
                };
                let mut byte = [0u8; 1];
                let ready =
                    read(ready_r.as_raw_fd(), &mut byte).map_err(sys("wait for the namespace"))?;
                if ready != 1 {
                    // The child exited without a namespace: reap it here, not in drop.
                    held.release = None;
                    let status = waitpid(child, None).map_err(sys("reap the namespace's maker"))?;
                    let step = match status {
                        WaitStatus::Exited(_, code) => usize::try_from(code - 10)
                            .ok()
                            .and_then(|i| STEPS.get(i).copied())
                            .unwrap_or("an unknown step"),
                        _ => "an unknown step",
                    };
                    return Err(UsernsError::Child {
                        uid: ns.host_base,
                        step,
                        status,
                    });
                }
                let map = format!("0 {} {}\n", ns.host_base, ns.size);
                for file in ["uid_map", "gid_map"] {
                    let path = PathBuf::from(format!("/proc/{child}/{file}"));
                    fs::write(&path, &map).map_err(|source| UsernsError::Map { path, source })?;
                }
                Ok(held)
            }
        }
    }

    /// The namespace's path, for the spec's `linux.namespaces`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.child))
    }

    /// Lets the child go and reaps it. The namespace lives on in the container's processes.
    pub fn release(mut self) -> Result<(), UsernsError> {
        self.reap()
    }

    fn reap(&mut self) -> Result<(), UsernsError> {
        if self.release.take().is_some() {
            waitpid(self.child, None).map_err(|source| UsernsError::Sys {
                what: "reap the namespace's maker",
                source,
            })?;
        }
        Ok(())
    }
}

impl Drop for HeldUserns {
    fn drop(&mut self) {
        if let Err(err) = self.reap() {
            tracing::warn!("{err}");
        }
    }
}
