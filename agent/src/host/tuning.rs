//! Host-wide tuning done once before dynos start.
//!
//! Moving a process into a cgroup (`cgroup.procs`, which libcontainer writes for every new
//! dyno) takes the kernel's global `cgroup_threadgroup_rwsem` for writing, and by default
//! that waits for an RCU grace period: 9–15 ms per dyno start measured on this kind of host,
//! more than everything else Manifold adds around libcontainer. The cgroup2 mount option
//! `favordynmods` (Linux 6.0+; systemd 256+ sets it by default) keeps that lock in its slow
//! mode so that migrations are cheap, at a small cost to fork and exit. It is global, so the
//! v1 controllers of a hybrid host profit too. Manifold turns it on when the host has a
//! cgroup2 mount without it; see BENCHMARKS.md for the effect.

use std::fs;
use std::io;
use std::path::PathBuf;

use nix::mount::{mount, MsFlags};

/// A cgroup2 mount as `/proc/self/mountinfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup2Mount {
    pub path: PathBuf,
    /// Per-mount flags (`nosuid`, `nodev`, `noexec`, `ro`, atime flags) to keep on remount.
    pub flags: Vec<String>,
    /// Superblock options (`nsdelegate`, `favordynmods`, ...).
    pub options: Vec<String>,
}

/// Finds the cgroup2 mounts in a mountinfo text.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<Cgroup2Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            if post.next()? != "cgroup2" {
                return None;
            }
            let super_opts = post.nth(1).unwrap_or_default();
            let fields: Vec<&str> = pre.split(' ').collect();
            Some(Cgroup2Mount {
                path: PathBuf::from(fields.get(4)?),
                flags: fields.get(5)?.split(',').map(str::to_string).collect(),
                options: super_opts.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

fn remount_flags(flags: &[String]) -> MsFlags {
    let mut f = MsFlags::MS_REMOUNT;
    for flag in flags {
        f |= match flag.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "relatime" => MsFlags::MS_RELATIME,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    f
}

/// Turns on `favordynmods` on the host's cgroup2 mount if it is off. Returns the mount it
/// changed, if any. A kernel without the option refuses it; that is not an error.
pub fn favor_cgroup_migrations() -> io::Result<Option<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = cgroup2_mounts(&info);
    if mounts
        .iter()
        .any(|m| m.options.iter().any(|o| o == "favordynmods"))
    {
        return Ok(None);
    }
    let Some(m) = mounts.first() else {
        return Ok(None);
    };
    let mut options: Vec<&str> = m
        .options
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "rw" && *o != "ro")
        .collect();
    options.push("favordynmods");
    let data = options.join(",");
    match mount(
        None::<&str>,
        &m.path,
        None::<&str>,
        remount_flags(&m.flags),
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(m.path.clone())),
        Err(nix::Error::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 26 0:30 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
43 26 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:19 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_the_cgroup2_mount_and_its_flags() {
        let m = cgroup2_mounts(HYBRID);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[0].options, vec!["rw", "nsdelegate"]);
        let f = remount_flags(&m[0].flags);
        assert!(f.contains(MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_REMOUNT));
        assert!(!f.contains(MsFlags::MS_RDONLY));
        assert!(cgroup2_mounts("35 26 0:30 / /x rw - cgroup cgroup rw,memory").is_empty());
    }
}
