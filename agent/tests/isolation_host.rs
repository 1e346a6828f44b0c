//! Isolation: what a dyno can do to its host through inherited settings, files and kernel
//! counts: the agent's OOM shield, setuid files in its writable layer.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

const STATE_DIR: &str = "/var/lib/manifold";

/// A dyno run in the background whose `app[...]` lines are read as they come.
struct Live {
    dyno: Background,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Live {
    fn start(cmd: &mut Command) -> Live {
        let mut dyno = Background::spawn(cmd);
        let stdout = dyno.child.as_mut().unwrap().stdout.take().unwrap();
        Live {
            dyno,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The message of the next `app[...]` line starting with `prefix`, past the value.
    fn value(&mut self, prefix: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, msg)) = line.split_once("]: ") {
                if let Some(v) = msg.strip_prefix(prefix) {
                    return v.to_string();
                }
            }
        }
        panic!("the dyno ended before printing {prefix:?}");
    }
}

fn agent_run(args: &[&str], command: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run").args(args).arg("--").arg(command);
    cmd
}

fn dyno_dir(id: &str) -> PathBuf {
    Path::new(STATE_DIR).join("dynos").join(id)
}

#[test]
fn a_dyno_does_not_inherit_the_agents_oom_shield_and_its_shim_keeps_it() {
    if !ready() {
        return;
    }
    let mut cmd = agent_run(
        &["--name", "worker.1"],
        "echo adj=$(cat /proc/self/oom_score_adj); echo id=$(hostname); sleep 60",
    );
    // The agent's unit sets -900; lowering needs CAP_SYS_RESOURCE, which a test sandbox may
    // lack, so the agent here is given 500: any value but 0 shows what a dyno inherits.
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"500".as_ptr().cast(), 3) != 3 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        })
    };
    let mut live = Live::start(&mut cmd);
    assert_eq!(
        live.value("adj="),
        "0",
        "the dyno's processes are fair game"
    );
    let id = live.value("id=");
    let shim: i32 = std::fs::read_to_string(dyno_dir(&id).join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let shim_adj = std::fs::read_to_string(format!("/proc/{shim}/oom_score_adj")).unwrap();
    assert_eq!(shim_adj.trim(), "500", "the shim keeps the agent's setting");
    let out = live.dyno.stop();
    assert!(out.status.code().is_some(), "{out:?}");
}

#[test]
fn a_setuid_file_made_in_a_dyno_gives_host_users_nothing() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = build_probe(tmp.path());
    let mut cmd = agent_run(
        &["--name", "worker.1", "--mount", &mount],
        "cp /.probe/probe /app/probe && chmod 4755 /app/probe && echo id=$(hostname) && sleep 60",
    );
    let mut live = Live::start(&mut cmd);
    let id = live.value("id=");
    let dir = dyno_dir(&id);
    let upper = dir.join("disk/upper/app/probe");
    let merged = dir.join("bundle/rootfs/app/probe");

    // The setuid file is there on the host, in the dyno's upper directory.
    let meta = std::fs::metadata(&upper).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o4755, "{}", upper.display());
    // Its state directory is closed: root's, group the dyno root's host gid, mode 0710.
    let dir_meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(dir_meta.permissions().mode() & 0o7777, 0o710);
    assert_eq!(dir_meta.uid(), 0);
    let dyno_root_gid = dir_meta.gid();
    // The merged tree is mounted nosuid,nodev.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = dir.join("bundle/rootfs");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(root.to_str().unwrap()))
        .expect("the dyno's overlay is mounted");
    let opts: Vec<&str> = line.split(' ').nth(5).unwrap().split(',').collect();
    assert!(
        opts.contains(&"nosuid") && opts.contains(&"nodev"),
        "{line}"
    );

    let exec_as = |path: &Path, gid: u32| {
        Command::new(path)
            .arg("euid")
            .uid(65534)
            .gid(gid)
            .stdin(Stdio::null())
            .output()
    };
    // Another host user cannot even reach the file, by either path.
    for path in [&upper, &merged] {
        let err = exec_as(path, 65534).expect_err("reached the dyno's file");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{}",
            path.display()
        );
    }
    // One that could (its group is the dyno root's) runs it without its setuid owner's id.
    let out = exec_as(&merged, dyno_root_gid).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "euid=65534",
        "setuid ignored through the dyno's mount"
    );
    live.dyno.stop();
}

/// A dyno's inotify instances are counted in its own user namespace, up to its limit: one
/// holding all it can get leaves host root (the agent, systemd, root's services) with room.
#[test]
fn a_dyno_using_up_its_inotify_instances_leaves_host_root_its_own() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = build_probe(tmp.path());
    let mut live = Live::start(&mut agent_run(
        &["--name", "worker.1", "--mount", &mount],
        "/.probe/probe inotify",
    ));
    // `N errno=E`: it opened N, then was refused with E (EMFILE), and holds them.
    let held = live.value("inotify=");
    assert_eq!(
        held,
        format!(
            "{} errno={}",
            manifold_agent::host::inotify::DYNO_INSTANCES,
            libc::EMFILE
        ),
        "the dyno's own limit stopped it"
    );
    // Host root still gets instances while the dyno holds its own.
    let mine: Vec<_> = (0..16)
        .map(|_| nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC))
        .collect::<Result<_, _>>()
        .expect("host root gets inotify instances");
    drop(mine);
    let out = live.dyno.stop();
    assert!(out.status.code().is_some(), "{out:?}");
}
