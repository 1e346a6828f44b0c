//! Isolation: the seccomp allow-list (`agent/src/host/seccomp.rs`) seen from inside real dynos.
//! A hostile probe tries every call the profile refuses, and real programs (bash, busybox,
//! Python, Node) keep working under it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

const EPERM: &str = "1";
const ENOSYS: &str = "38";

/// Runs the probe in `mode` in a dyno; its `name=value` lines.
fn probe(mode: &str) -> BTreeMap<String, String> {
    let tmp = tempfile::tempdir().unwrap();
    let mount = build_probe(tmp.path());
    let out = run(
        &["--name", "worker.1", "--mount", &mount],
        &format!("/.probe/probe {mode}"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    key_values(&app_lines(&out))
}

#[test]
fn refused_syscalls_fail_inside_a_dyno_and_process_creation_works() {
    if !ready() {
        return;
    }
    let got = probe("syscalls");

    let mut want: BTreeMap<&str, &str> = BTreeMap::new();
    // Process creation without a new namespace: fork, plain clone, threads.
    for ok in ["clone", "fork", "thread", "personality_query"] {
        want.insert(ok, "0");
    }
    // No nested namespace by any door.
    for ns in [
        "clone_newuser",
        "clone_newnet",
        "clone_newns",
        "clone_newpid",
        "clone_newuts",
        "clone_newipc",
        "clone_newcgroup",
        "clone_newuser_newnet",
        "unshare",
        "setns",
    ] {
        want.insert(ns, EPERM);
    }
    // clone3's flags are out of seccomp's reach: the call is missing, so libc uses clone.
    want.insert("clone3", ENOSYS);
    for refused in [
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "userfaultfd",
        "perf_event_open",
        "mount",
        "umount2",
        "pivot_root",
        "open_tree",
        "move_mount",
        "fsopen",
        "mount_setattr",
        "chroot",
        "ptrace",
        "process_vm_readv",
        "kexec_load",
        "init_module",
        "reboot",
        "swapon",
        "acct",
        "sethostname",
        "modify_ldt",
        "syslog",
    ] {
        want.insert(refused, EPERM);
    }
    // Not in the table: as if the kernel lacked the call.
    want.insert("personality_no_aslr", ENOSYS);
    want.insert("unlisted", ENOSYS);

    let want: BTreeMap<String, String> = want
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want, "errno per call (0: it worked)");
}

/// The filter covers the host's own ABI only: a syscall through the i386 or x32 ABI (closed
/// tables, not filtered ones) kills the process that makes it.
#[test]
fn syscalls_through_compatibility_abis_kill_the_caller() {
    if !ready() {
        return;
    }
    let got = probe("compat");
    let sigsys = libc::SIGSYS.to_string();
    for abi in ["int80", "x32"] {
        assert_eq!(
            got.get(abi).map(String::as_str),
            Some(format!("signal {sigsys}").as_str()),
            "{abi}: {got:?}"
        );
    }
}

/// Python's threads, subprocesses, asyncio and multiprocessing, and Node's child processes,
/// worker threads, `fs.watch` and an HTTP round trip: what apps and buildpacks use, under the
/// allow-list (glibc's `clone3` falls back to `clone`, `faccessat2` and friends are there).
#[test]
fn python_and_node_work_under_the_profile_on_bookworm() {
    if !ready() {
        return;
    }
    if !Path::new("/var/lib/manifold/stacks/bookworm/.manifold-stack").exists() {
        let why = "the bookworm stack is missing: run `rootfs/build-stack bookworm`";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("\n!!! SKIPPING: {why} !!!\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = build_probe(tmp.path());
    std::fs::write(
        tmp.path().join("app.py"),
        r#"import asyncio, ctypes, multiprocessing, subprocess, threading
t = threading.Thread(target=lambda: None); t.start(); t.join(); print("py_thread=ok")
print("py_subprocess=" + subprocess.run(["echo", "ok"], capture_output=True, text=True).stdout.strip())
async def child():
    p = await asyncio.create_subprocess_exec("true")
    return await p.wait()
print("py_asyncio=%d" % asyncio.run(child()))
with multiprocessing.Pool(2) as pool:
    print("py_pool=%d" % sum(pool.map(abs, [-1, -2])))
libc = ctypes.CDLL(None, use_errno=True)
print("py_unshare=%d" % (0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()))
"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("app.js"),
        r#"const { execSync } = require("child_process");
const { Worker } = require("worker_threads");
const fs = require("fs"), http = require("http");
console.log("js_exec=" + execSync("echo ok").toString().trim());
fs.watch("/tmp").close(); console.log("js_watch=ok");
new Worker("require('worker_threads').parentPort.postMessage('ok')", { eval: true }).on("message", (m) => {
  console.log("js_worker=" + m);
  const server = http.createServer((q, r) => r.end("hi")).listen(0, "127.0.0.1", () => {
    http.get("http://127.0.0.1:" + server.address().port, (res) => {
      console.log("js_http=" + res.statusCode); process.exit(0);
    });
  });
});
"#,
    )
    .unwrap();
    let out = run(
        &[
            "--name", "worker.1", "--stack", "bookworm", "--mount", &mount,
        ],
        "python3 /.probe/app.py && node /.probe/app.js",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let got = key_values(&app_lines(&out));
    let want: BTreeMap<String, String> = [
        ("py_thread", "ok"),
        ("py_subprocess", "ok"),
        ("py_asyncio", "0"),
        ("py_pool", "3"),
        ("py_unshare", EPERM),
        ("js_exec", "ok"),
        ("js_watch", "ok"),
        ("js_worker", "ok"),
        ("js_http", "200"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, want, "{}", stdout(&out));
}
