//! Reading what the kernel says about a dyno's cgroup. libcontainer creates and removes the
//! cgroups (one manager over one tree, as RUNTIME-NOTES warns); this module only reads them,
//! and manages the one directory libcontainer does not know of: the shim's own CPU cgroup
//! inside the dyno's ([`ShimCgroup`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the host's cgroup hierarchy is mounted. The functions here take their root as a
/// parameter (tests give them a fixture); the shim and the dyno directory pass this one.
pub const ROOT: &str = "/sys/fs/cgroup";

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

/// Who makes a dyno's cgroups, through libcontainer.
///
/// On a host whose PID 1 is systemd with the unified hierarchy, cgroups are systemd's to hand
/// out: a dyno gets a transient scope of its own, `manifold-<id>.scope` in the slice named
/// after the host's cgroup parent (`manifold.slice`), made through systemd (libcontainer's
/// systemd manager, over `/run/systemd/private` where there is no D-Bus daemon) with
/// `Delegate=yes`, as runc and crun do. A dyno is then a unit of its own: a restart or upgrade
/// of the agent's unit never touches it. (Keeping dynos in the agent unit's own delegated
/// subtree instead fails that restart on systemd before 254, measured on Debian 12's 252: the
/// new main process is put in the unit's root cgroup, which then has controllers enabled,
/// `status=219/CGROUP`.) Elsewhere (no systemd, or the hybrid v1 layout) libcontainer's
/// cgroupfs manager makes `/<parent>/<id>` in each hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// `/<parent>/<id>`; the default, also for a `dyno.json` written before drivers existed.
    #[default]
    Cgroupfs,
    /// `<parent>.slice/manifold-<id>.scope`, a transient systemd unit.
    Systemd,
}

impl Driver {
    /// Systemd where it runs the host (`/run/systemd/system`) and can be reached
    /// (`/run/systemd/private`) on the unified hierarchy under `root`; cgroupfs otherwise.
    pub fn detect(root: &Path, run_systemd: &Path) -> Driver {
        let systemd = run_systemd.join("system").is_dir() && run_systemd.join("private").exists();
        if systemd && Layout::detect(root) == Layout::V2 {
            Driver::Systemd
        } else {
            Driver::Cgroupfs
        }
    }

    /// The spec's `cgroupsPath` for dyno `id` under `parent`.
    pub fn spec_path(self, parent: &str, id: &str) -> String {
        match self {
            Driver::Cgroupfs => format!("/{parent}/{id}"),
            Driver::Systemd => format!("{parent}.slice:{SCOPE_PREFIX}:{id}"),
        }
    }

    /// The dyno's cgroup below a hierarchy's root, `/`-led.
    pub fn cgroup_path(self, parent: &str, id: &str) -> String {
        match self {
            Driver::Cgroupfs => format!("/{parent}/{id}"),
            Driver::Systemd => format!("{}/{SCOPE_PREFIX}-{id}.scope", slice_path(parent)),
        }
    }
}

/// A process of the shim's that keeps a dyno's systemd scope from going away before the
/// shim has read it. systemd removes a scope's cgroup as soon as its last process exits,
/// which for a dyno is when its init does: the shim then found no `memory.events` and
/// reported an OOM-killed dyno without its R15 (seen on a Debian 12 VM). The sentinel sits
/// in a child cgroup of the scope (no controllers enabled there, so the scope may keep its
/// own processes), outside the dyno's pid namespace, blocking every signal it can; the shim
/// stops it once it has read the dyno's end. It dies with the shim (`PR_SET_PDEATHSIG`), so
/// a shim that dies cannot leave a scope behind for good; a stop of the scope kills it too.
#[derive(Debug)]
pub struct Sentinel {
    pid: nix::unistd::Pid,
    dir: PathBuf,
}

/// The sentinel's cgroup below the dyno's.
const SENTINEL_CGROUP: &str = "manifold-sentinel";

impl Sentinel {
    /// Starts the sentinel in `<dyno cgroup>/manifold-sentinel`. The caller must be
    /// single-threaded (the shim is): the child only makes system calls before it pauses.
    pub fn start(dyno_cgroup: &Path) -> io::Result<Sentinel> {
        let dir = dyno_cgroup.join(SENTINEL_CGROUP);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let procs = dir.join("cgroup.procs");
        let parent = nix::unistd::getpid();
        // SAFETY: the caller is single-threaded; the child makes system calls and pauses or
        // exits, never returning into the caller's code.
        match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
            nix::unistd::ForkResult::Child => {
                let joined = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .is_ok()
                    && nix::unistd::getppid() == parent
                    && fs::write(&procs, "0").is_ok();
                if joined {
                    let _ = nix::sys::signal::SigSet::all().thread_block();
                    loop {
                        nix::unistd::pause();
                    }
                }
                // SAFETY: leaving the forked child without running the parent's destructors.
                unsafe { libc::_exit(1) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let sentinel = Sentinel { pid: child, dir };
                // It is in the cgroup once the cgroup lists it (or it gave up).
                for _ in 0..200 {
                    let listed = fs::read_to_string(&procs).unwrap_or_default();
                    if listed.lines().any(|l| l.trim() == child.to_string()) {
                        return Ok(sentinel);
                    }
                    if let Ok(nix::sys::wait::WaitStatus::Exited(..)) =
                        nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    {
                        let _ = fs::remove_dir(&sentinel.dir);
                        std::mem::forget(sentinel);
                        return Err(io::Error::other("the sentinel could not join its cgroup"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(io::Error::other(
                    "the sentinel did not join its cgroup in time",
                ))
            }
        }
    }
}

impl Drop for Sentinel {
    /// Stops it and removes its cgroup: the scope may go now.
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The prefix of every dyno's scope unit.
const SCOPE_PREFIX: &str = "manifold";

/// Where systemd puts slice `<parent>.slice`: each `-` in a slice's name is a level
/// (`a-b.slice` is `/a.slice/a-b.slice`), as `systemd.slice(5)` says.
fn slice_path(parent: &str) -> String {
    let mut path = String::new();
    let mut name = String::new();
    for part in parent.split('-') {
        if !name.is_empty() {
            name.push('-');
        }
        name.push_str(part);
        path.push_str(&format!("/{name}.slice"));
    }
    path
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

/// Keeps a dyno out of swap on cgroup v2, as its spec's `swap` (equal to its memory limit,
/// v1's memory+swap) does on v1. libcontainer converts that to v2's `memory.swap.max` as
/// `swap - limit`, which is 0, and skips writing a 0: the dyno would swap without limit.
/// A kernel without swap accounting has no such file; nothing to do then.
pub fn forbid_swap(layout: Layout, memory_dir: &Path) -> io::Result<()> {
    if layout == Layout::V1 {
        return Ok(());
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(memory_dir.join("memory.swap.max"));
    match file {
        Ok(mut file) => io::Write::write_all(&mut file, b"0"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
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

/// The v1 hierarchies the shim joins inside its dyno's cgroup: the CPU it spends relaying the
/// dyno's output is then scheduled within the dyno's share and counted in its usage.
const SHIM_CONTROLLERS: [&str; 2] = ["cpu", "cpuacct"];

/// The shim's directory inside the dyno's cgroup, in each of [`SHIM_CONTROLLERS`].
pub const SHIM_CGROUP: &str = "shim";

/// The shim's `cpu.shares` within its dyno (v1's largest): the dyno's own processes, however
/// many spin, never starve the one process that stops them. The shim only works when the
/// dyno writes, so this takes nothing from the dyno it did not cause.
const SHIM_SHARES: u64 = 262_144;

/// Why the shim could not move into its dyno's cgroup, or out of it.
#[derive(Debug, thiserror::Error)]
pub enum ShimCgroupError {
    /// On v2 the dyno's cgroup is frozen and its whole subtree signalled by libcontainer's
    /// stop: a shim inside it would freeze itself, or kill itself, mid-stop.
    #[error("the shim's CPU is not moved into the dyno's cgroup on cgroup v2 (a stop freezes and kills the whole subtree)")]
    Unsupported,
    #[error("cannot read the shim's cgroups from {path}")]
    Own {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the dyno's cgroup {path} does not exist")]
    NoDynoCgroup { path: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The shim inside its dyno's CPU hierarchies (v1): `<hierarchy>/<cgroup path>/shim`, so
/// that a flood of output costs the dyno, not the host, while libcontainer's stop (which
/// freezes the `freezer` cgroup and signals the processes of the `devices` one) and the
/// shim's own late-born check (`memory`) never see the shim. It must [`ShimCgroup::leave`]
/// before libcontainer removes the dyno's cgroups, which an occupied child would block.
#[derive(Debug)]
pub struct ShimCgroup {
    /// Each joined hierarchy: its root, the shim's directory, and the cgroup the shim came
    /// from (where it goes back).
    joined: Vec<Joined>,
}

#[derive(Debug)]
struct Joined {
    hierarchy: PathBuf,
    dir: PathBuf,
    home: PathBuf,
}

impl ShimCgroup {
    /// Moves process `pid` (the shim) into `shim/` of the dyno's `cgroup_path` in each CPU
    /// hierarchy under `root`; `own_cgroups` is its `/proc/PID/cgroup`, saying where it
    /// goes back to. The dyno's cgroups must exist (libcontainer made them at build).
    pub fn join(
        root: &Path,
        cgroup_path: &str,
        pid: u32,
        own_cgroups: &str,
    ) -> Result<ShimCgroup, ShimCgroupError> {
        if Layout::detect(root) == Layout::V2 {
            return Err(ShimCgroupError::Unsupported);
        }
        let mut shim = ShimCgroup { joined: Vec::new() };
        match shim.join_each(root, cgroup_path, pid, own_cgroups) {
            Ok(()) => Ok(shim),
            // Half in the dyno's cgroups would keep them from being removed: out again.
            Err(err) => {
                for undone in shim.leave(pid) {
                    tracing::warn!("undoing the shim's cgroup join: {undone}");
                }
                Err(err)
            }
        }
    }

    fn join_each(
        &mut self,
        root: &Path,
        cgroup_path: &str,
        pid: u32,
        own_cgroups: &str,
    ) -> Result<(), ShimCgroupError> {
        let mut seen = Vec::new();
        for controller in SHIM_CONTROLLERS {
            let hierarchy = root.join(controller);
            // Co-mounted controllers (`cpu,cpuacct`, linked as `cpu` and `cpuacct`) are one
            // hierarchy: joined once.
            let Ok(real) = hierarchy.canonicalize() else {
                continue;
            };
            if seen.contains(&real) {
                continue;
            }
            seen.push(real);
            let dyno = hierarchy.join(cgroup_path.trim_start_matches('/'));
            if !dyno.is_dir() {
                return Err(ShimCgroupError::NoDynoCgroup { path: dyno });
            }
            let home = own_cgroup(own_cgroups, controller)
                .map(|p| hierarchy.join(p.trim_start_matches('/')))
                .unwrap_or_else(|| hierarchy.clone());
            let dir = dyno.join(SHIM_CGROUP);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(ShimCgroupError::Io {
                        action: "create",
                        path: dir,
                        source,
                    })
                }
            }
            // Known before the move, so that a failed one is undone too.
            self.joined.push(Joined {
                hierarchy,
                dir: dir.clone(),
                home,
            });
            if dir.join("cpu.shares").exists() {
                write(&dir.join("cpu.shares"), &SHIM_SHARES.to_string(), "set")?;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string(), "join")?;
        }
        Ok(())
    }

    /// The shim's directories (one per hierarchy joined).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.joined.iter().map(|j| j.dir.as_path())
    }

    /// Moves `pid` back where it came from (or to the hierarchy's root, if that cgroup is
    /// gone) and removes the shim's directories. Returns what could not be done.
    pub fn leave(self, pid: u32) -> Vec<String> {
        let mut errors = Vec::new();
        for j in self.joined {
            let pid = pid.to_string();
            let moved = write(&j.home.join("cgroup.procs"), &pid, "leave to")
                .or_else(|_| write(&j.hierarchy.join("cgroup.procs"), &pid, "leave to"));
            if let Err(err) = moved {
                errors.push(crate::error::chain(&err));
            }
            if let Err(source) = fs::remove_dir(&j.dir) {
                errors.push(format!("cgroup {}: {source}", j.dir.display()));
            }
        }
        errors
    }
}

/// Removes the shim's directories of a dyno whose shim is gone (they are empty then), so
/// that the dyno's own cgroups can go. Returns what could not be removed.
pub fn remove_shim_cgroups(root: &Path, cgroup_path: &str) -> Vec<String> {
    if Layout::detect(root) == Layout::V2 {
        return Vec::new();
    }
    SHIM_CONTROLLERS
        .iter()
        .map(|c| {
            root.join(c)
                .join(cgroup_path.trim_start_matches('/'))
                .join(SHIM_CGROUP)
        })
        .filter(|d| d.is_dir())
        .filter_map(|d| match fs::remove_dir(&d) {
            Ok(()) => None,
            // A co-mounted hierarchy seen a second time.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("cgroup {}: {e}", d.display())),
        })
        .collect()
}

/// The cgroup of `controller` in a `/proc/PID/cgroup` text (v1 lines `ID:CONTROLLERS:PATH`).
fn own_cgroup<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })
}

fn write(path: &Path, value: &str, action: &'static str) -> Result<(), ShimCgroupError> {
    fs::write(path, value).map_err(|source| ShimCgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    })
}

/// The shim's own `/proc/self/cgroup`, for [`ShimCgroup::join`].
pub fn own_cgroups() -> Result<String, ShimCgroupError> {
    let path = PathBuf::from("/proc/self/cgroup");
    fs::read_to_string(&path).map_err(|source| ShimCgroupError::Own { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_systemd_driver_names_a_scope_in_the_parents_slice() {
        let d = Driver::Systemd;
        assert_eq!(
            d.spec_path("manifold", "web-1-ab"),
            "manifold.slice:manifold:web-1-ab"
        );
        assert_eq!(
            d.cgroup_path("manifold", "web-1-ab"),
            "/manifold.slice/manifold-web-1-ab.scope"
        );
        assert_eq!(
            d.cgroup_path("manifold-lab-h1", "x"),
            "/manifold.slice/manifold-lab.slice/manifold-lab-h1.slice/manifold-x.scope"
        );
        let c = Driver::Cgroupfs;
        assert_eq!(c.spec_path("manifold", "x"), "/manifold/x");
        assert_eq!(c.cgroup_path("manifold", "x"), "/manifold/x");
    }

    #[test]
    fn systemd_is_the_driver_only_where_it_runs_the_unified_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let run = tempfile::tempdir().expect("tempdir");
        assert_eq!(Driver::detect(root.path(), run.path()), Driver::Cgroupfs);
        fs::create_dir(run.path().join("system")).expect("mkdir");
        fs::write(run.path().join("private"), "").expect("socket stand-in");
        assert_eq!(
            Driver::detect(root.path(), run.path()),
            Driver::Cgroupfs,
            "hybrid layout"
        );
        fs::write(root.path().join("cgroup.controllers"), "memory pids").expect("write");
        assert_eq!(Driver::detect(root.path(), run.path()), Driver::Systemd);
    }

    #[test]
    fn swap_is_forbidden_on_v2_and_left_alone_on_v1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("memory.swap.max");
        fs::write(&file, "max\n").expect("write");
        forbid_swap(Layout::V1, dir.path()).expect("v1");
        assert_eq!(fs::read_to_string(&file).expect("read"), "max\n");
        forbid_swap(Layout::V2, dir.path()).expect("v2");
        assert_eq!(fs::read_to_string(&file).expect("read"), "0");
        // No swap accounting: no file, nothing to do.
        let none = tempfile::tempdir().expect("tempdir");
        forbid_swap(Layout::V2, none.path()).expect("no swap accounting");
        assert!(!none.path().join("memory.swap.max").exists());
    }

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
    fn the_shim_joins_its_dyno_cpu_cgroups_and_leaves_them_as_it_found_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        for c in ["cpu", "cpuacct", "memory"] {
            fs::create_dir_all(r.join(c).join("manifold/d1")).expect("mkdir");
            fs::create_dir_all(r.join(c).join("agent")).expect("mkdir");
        }
        // A kernel makes a new cgroup's files; the fixture makes the one the shim sets.
        let own = "3:memory:/agent\n2:cpuacct:/agent\n1:cpu:/agent\n0::/\n";
        fs::create_dir_all(r.join("cpu/manifold/d1/shim")).expect("mkdir");
        fs::write(r.join("cpu/manifold/d1/shim/cpu.shares"), "1024").expect("write");
        let shim = ShimCgroup::join(r, "/manifold/d1", 42, own).expect("join");
        for c in ["cpu", "cpuacct"] {
            let procs = r.join(c).join("manifold/d1/shim/cgroup.procs");
            assert_eq!(fs::read_to_string(procs).expect("procs"), "42");
        }
        assert_eq!(
            fs::read_to_string(r.join("cpu/manifold/d1/shim/cpu.shares")).expect("shares"),
            SHIM_SHARES.to_string()
        );
        assert!(
            !r.join("memory/manifold/d1/shim").exists(),
            "only the CPU hierarchies: a stop's freezer and signals never reach the shim"
        );
        assert_eq!(shim.dirs().count(), 2);
        // A real cgroup directory is empty once its process left; the fixture's files go.
        for c in ["cpu", "cpuacct"] {
            let dir = r.join(c).join("manifold/d1/shim");
            for f in fs::read_dir(&dir).expect("dir") {
                fs::remove_file(f.expect("entry").path()).expect("rm");
            }
        }
        assert_eq!(shim.leave(42), Vec::<String>::new());
        for c in ["cpu", "cpuacct"] {
            assert_eq!(
                fs::read_to_string(r.join(c).join("agent/cgroup.procs")).expect("home"),
                "42",
                "back where it came from"
            );
            assert!(!r.join(c).join("manifold/d1/shim").exists());
        }
        assert_eq!(remove_shim_cgroups(r, "/manifold/d1"), Vec::<String>::new());
    }

    #[test]
    fn the_shim_refuses_a_missing_dyno_cgroup_and_v2() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("cpu")).expect("mkdir");
        let err = ShimCgroup::join(root.path(), "/manifold/gone", 1, "").expect_err("no dyno");
        assert!(
            err.to_string().contains("manifold/gone") && err.to_string().contains("does not exist"),
            "{err}"
        );
        fs::write(root.path().join("cgroup.controllers"), "cpu").expect("write");
        assert!(matches!(
            ShimCgroup::join(root.path(), "/manifold/d1", 1, ""),
            Err(ShimCgroupError::Unsupported)
        ));
        assert_eq!(own_cgroup("4:cpu,cpuacct:/a/b\n", "cpuacct"), Some("/a/b"));
        assert_eq!(own_cgroup("0::/x\n", "cpu"), None);
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
