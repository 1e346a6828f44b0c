//! Acceptance: warm shims. A start hands its dyno to the shim exec'd ahead and waiting
//! (`runner/warm.rs`, `shim/warm.rs`); a dead one is replaced; a waiting one that is told to
//! stop goes, its socket with it; and none is left beyond the one waiting.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The tests take this binary's one warm shim in turns.
static WARM: Mutex<()> = Mutex::new(());

/// This binary's warm shims that a start from this process would be handed: (pid, socket).
/// Others may wait beside them, each under a socket of its own: left by another build of the
/// binary, or by a starter that gave its shim another OOM score (as `isolation_host` does),
/// another environment (as `isolation_network`'s agent config does) or another cgroup. A
/// waiting shim has joined nothing yet, so those read from `/proc` are its spawner's.
fn warm_shims() -> Vec<(i32, PathBuf)> {
    warm_shims_with(&[])
}

/// [`warm_shims`] of a start from this process given these environment variables as well.
fn warm_shims_with(extra: &[(&str, &str)]) -> Vec<(i32, PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let ours = |name: &str| std::fs::read(format!("/proc/self/{name}")).unwrap();
    let environ = |bytes: Vec<u8>| {
        let mut vars: Vec<Vec<u8>> = bytes
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        vars.sort();
        vars
    };
    let mut env: Vec<u8> = Vec::new();
    let vars = std::env::vars_os()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .chain(
            extra
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())),
        );
    for (k, v) in vars {
        env.extend(k);
        env.push(b'=');
        env.extend(v);
        env.push(0);
    }
    let (oom, cgroup, env) = (ours("oom_score_adj"), ours("cgroup"), environ(env));
    let bin = std::fs::canonicalize(BIN).unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let theirs = |name: &str| std::fs::read(entry.path().join(name)).unwrap_or_default();
        let same_start = std::fs::read_link(entry.path().join("exe")).is_ok_and(|e| e == bin)
            && theirs("oom_score_adj") == oom
            && theirs("cgroup") == cgroup
            && environ(theirs("environ")) == env;
        if args.len() >= 4
            && args[0] == BIN
            && args[1] == "shim"
            && args[2] == "--warm"
            && same_start
        {
            found.push((pid, PathBuf::from(&args[3])));
        }
    }
    found
}

/// Whether the process is waiting in `poll` (a warm shim does only once its socket is in
/// place).
fn polling(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("poll"))
}

/// Waits for exactly one warm shim of this binary, waiting on its socket; returns it.
fn one_waiting() -> (i32, PathBuf) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shims = warm_shims();
        if let [(pid, socket)] = shims.as_slice() {
            if polling(*pid) && socket.exists() {
                return (*pid, socket.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "not one warm shim waiting: {shims:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the process to be gone (or a zombie).
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the waiting warm shim, as a test's clean-up.
fn stop_waiting() {
    let (pid, _) = one_waiting();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    assert!(gone(pid), "the warm shim {pid} did not stop");
}

#[test]
fn a_start_hands_its_dyno_to_the_waiting_shim() {
    if !ready() {
        return;
    }
    let _turn = WARM.lock().unwrap_or_else(|e| e.into_inner());
    // Any start leaves a warm shim behind it.
    assert!(run(&["--name", "worker.1"], "true").status.success());
    let (warm, _) = one_waiting();
    let dyno = Background::spawn(
        std::process::Command::new(BIN)
            .args(["run", "--name", "worker.1", "--"])
            .arg("echo ready; exec sleep 60"),
    );
    // The dyno whose shim is the one that waited: its directory names it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let shim_of_dyno = loop {
        let pids: Vec<i32> = std::fs::read_dir("/var/lib/manifold/dynos")
            .unwrap()
            .flatten()
            .filter_map(|d| std::fs::read_to_string(d.path().join("shim.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if pids.contains(&warm) {
            break warm;
        }
        assert!(
            Instant::now() < deadline,
            "no dyno has the warm shim {warm}: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = dyno.stop_after("ready");
    assert_has(&app_lines(&out), "ready");
    assert!(gone(shim_of_dyno), "the dyno's shim outlived it");
    // And the next one waits in its place.
    let (next, _) = one_waiting();
    assert_ne!(next, warm);
    stop_waiting();
}

#[test]
fn a_dead_warm_shim_is_replaced_and_its_dyno_starts_anyway() {
    if !ready() {
        return;
    }
    let _turn = WARM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(run(&["--name", "worker.1"], "true").status.success());
    let (warm, socket) = one_waiting();
    kill(Pid::from_raw(warm), Signal::SIGKILL).unwrap();
    assert!(gone(warm));
    // Its socket is left behind, refusing connections: the start execs a shim of its own.
    assert!(socket.exists());
    let out = run(&["--name", "worker.1"], "echo started anyway");
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(app_lines(&out), vec!["started anyway"]);
    let (next, next_socket) = one_waiting();
    assert_ne!(next, warm);
    assert_eq!(next_socket, socket);
    stop_waiting();
}

#[test]
fn a_waiting_shim_told_to_stop_goes_with_its_socket_and_takes_no_dyno() {
    if !ready() {
        return;
    }
    let _turn = WARM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(run(&["--name", "worker.1"], "true").status.success());
    let (warm, socket) = one_waiting();
    kill(Pid::from_raw(warm), Signal::SIGTERM).unwrap();
    assert!(gone(warm), "the warm shim did not stop");
    assert!(!socket.exists(), "{} was left behind", socket.display());
    // Many starts in a row leave one warm shim, not one each.
    for _ in 0..3 {
        let out = run(&["--name", "worker.1"], "echo ok");
        assert_eq!(app_lines(&out), vec!["ok"], "{}", stdout(&out));
    }
    one_waiting();
    stop_waiting();
}

#[test]
fn a_starter_with_other_inherited_attributes_gets_a_warm_shim_of_its_own() {
    if !ready() {
        return;
    }
    let _turn = WARM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(run(&["--name", "worker.1"], "true").status.success());
    let (warm, socket) = one_waiting();
    // Another environment (as a login shell's `run` has, beside the daemon): a shim it
    // spawns keeps that environment, so it waits under another name, and this start does
    // not take the one waiting.
    let out = std::process::Command::new(BIN)
        .args(["run", "--name", "worker.1", "--", "echo own shim"])
        .env("MANIFOLD_WARM_TEST", "other")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(app_lines(&out), vec!["own shim"], "{}", stdout(&out));
    assert!(
        polling(warm) && socket.exists(),
        "the other starter took the waiting shim {warm}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let other = loop {
        let others: Vec<_> = warm_shims_with(&[("MANIFOLD_WARM_TEST", "other")])
            .into_iter()
            .filter(|(pid, s)| *pid != warm && *s != socket && polling(*pid))
            .collect();
        if let [(pid, _)] = others.as_slice() {
            break *pid;
        }
        assert!(
            Instant::now() < deadline,
            "no warm shim of the other starter's own: {others:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    kill(Pid::from_raw(other), Signal::SIGTERM).unwrap();
    assert!(gone(other));
    stop_waiting();
}

#[test]
fn only_root_may_hand_a_warm_shim_a_dyno_and_a_bad_one_runs_nothing() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !ready() {
        return;
    }
    let _turn = WARM.lock().unwrap_or_else(|e| e.into_inner());
    assert!(run(&["--name", "worker.1"], "true").status.success());
    let (warm, socket) = one_waiting();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(socket.parent().unwrap()),
        0o700,
        "the shims' directory"
    );
    assert_eq!(mode(&socket) & 0o077, 0, "the socket");
    // Another user cannot connect (the socket carries a directory the shim runs as root).
    let connect = "import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])";
    let out = std::process::Command::new("python3")
        .args(["-c", connect])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody connected to {}",
        socket.display()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(polling(warm), "the refused connection ended the warm shim");
    // Root handing it a relative path: it answers nothing and ends, running nothing.
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"dynos/../../etc\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert_eq!(answer, "", "a pid for a relative directory");
    assert!(gone(warm), "the warm shim went on after a bad hand-off");
    // The next start execs a shim of its own and leaves a new one waiting.
    let out = run(&["--name", "worker.1"], "echo after");
    assert_eq!(app_lines(&out), vec!["after"], "{}", stdout(&out));
    let (next, _) = one_waiting();
    assert_ne!(next, warm);
    stop_waiting();
}
