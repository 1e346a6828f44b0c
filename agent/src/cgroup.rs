//! Reading what the kernel says about a dyno's cgroup. libcontainer creates and removes the
//! cgroups (one manager over one tree, as RUNTIME-NOTES warns); this module only reads.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Which cgroup layout the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 controllers (with or without a v2 mount beside them).
    V1,
    /// The unified v2 hierarchy only.
    V2,
}

impl Layout {
    /// Detects the layout under `root` (normally `/sys/fs/cgroup`): v2 when the root itself
    /// is the unified hierarchy (it has `cgroup.controllers`).
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::V2
        } else {
            Layout::V1
        }
    }

    /// The memory controller's directory for `cgroup_path` (e.g. `/manifold/web-1-x`).
    pub fn memory_dir(self, root: &Path, cgroup_path: &str) -> PathBuf {
        let rel = cgroup_path.trim_start_matches('/');
        match self {
            Layout::V1 => root.join("memory").join(rel),
            Layout::V2 => root.join(rel),
        }
    }
}

/// How many times the OOM killer acted in the cgroup (v1 `memory.oom_control`, v2
/// `memory.events`, both as an `oom_kill N` line). Zero when the file is missing.
pub fn oom_kills(layout: Layout, memory_dir: &Path) -> io::Result<u64> {
    let file = match layout {
        Layout::V1 => "memory.oom_control",
        Layout::V2 => "memory.events",
    };
    let text = match fs::read_to_string(memory_dir.join(file)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|n| n.trim().parse().ok())
        .next()
        .unwrap_or(0))
}

/// Memory the dyno's processes use, as Heroku counts it for R14: resident anonymous memory
/// plus swap, without the page cache (v1 `memory.stat` `total_rss` + `total_swap`; v2
/// `memory.stat` `anon` + `memory.swap.current`).
pub fn memory_usage(layout: Layout, memory_dir: &Path) -> io::Result<u64> {
    let stat = fs::read_to_string(memory_dir.join("memory.stat"))?;
    let field = |name: &str| -> u64 {
        stat.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .filter_map(|n| n.trim().parse().ok())
            .next()
            .unwrap_or(0)
    };
    Ok(match layout {
        Layout::V1 => field("total_rss") + field("total_swap"),
        Layout::V2 => {
            let swap = fs::read_to_string(memory_dir.join("memory.swap.current"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            field("anon") + swap
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kills_from_v1_and_v2_fixtures() {
        let root = tempfile::tempdir().expect("tempdir");
        let v1 = Layout::V1.memory_dir(root.path(), "/manifold/d1");
        fs::create_dir_all(&v1).expect("mkdir");
        fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("write");
        assert_eq!(oom_kills(Layout::V1, &v1).expect("read"), 2);
        assert_eq!(Layout::detect(root.path()), Layout::V1);

        let v2root = tempfile::tempdir().expect("tempdir");
        fs::write(v2root.path().join("cgroup.controllers"), "memory pids").expect("write");
        assert_eq!(Layout::detect(v2root.path()), Layout::V2);
        let v2 = Layout::V2.memory_dir(v2root.path(), "/manifold/d1");
        fs::create_dir_all(&v2).expect("mkdir");
        fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
        )
        .expect("write");
        assert_eq!(oom_kills(Layout::V2, &v2).expect("read"), 1);
        assert_eq!(
            oom_kills(Layout::V2, &v2root.path().join("gone")).expect("read"),
            0
        );
    }

    #[test]
    fn memory_usage_is_rss_plus_swap_without_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("memory.stat"),
            "cache 999\nrss 5\ntotal_cache 999\ntotal_rss 100\ntotal_rss_huge 0\ntotal_swap 20\n",
        )
        .expect("write");
        assert_eq!(memory_usage(Layout::V1, dir.path()).expect("v1"), 120);
        fs::write(
            dir.path().join("memory.stat"),
            "anon 300\nfile 999\nanon_thp 0\n",
        )
        .expect("write");
        fs::write(dir.path().join("memory.swap.current"), "7\n").expect("write");
        assert_eq!(memory_usage(Layout::V2, dir.path()).expect("v2"), 307);
    }
}
