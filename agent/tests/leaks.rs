//! Acceptance: a hundred dynos, started and ended every way a dyno ends, leave nothing behind.
//!
//! Cargo runs test binaries one after another, so while this one runs no other dyno exists on
//! the host: any mount, cgroup, veth, netns, lease, nft rule or directory of Manifold's that
//! is left afterwards is a leak (from this test or an earlier one).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Everything on the host that belongs to Manifold's dynos, as (kind, name) pairs.
fn dyno_resources() -> Vec<String> {
    let mut found = Vec::new();
    let state = Path::new("/var/lib/manifold");
    for dir in ["dynos", "net/leases"] {
        if let Ok(entries) = std::fs::read_dir(state.join(dir)) {
            found.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy())),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir("/run/manifold/containers") {
        found.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| format!("container state {}", e.file_name().to_string_lossy())),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(
        mounts
            .lines()
            // Mounts below the dynos directory (which may be a mount itself: scripts/setup
            // puts it on btrfs for disk quotas).
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| p.starts_with("/var/lib/manifold/dynos/"))
            })
            .map(|l| format!("mount {l}")),
    );
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
    {
        let parent = controller.path().join("manifold");
        if let Ok(children) = std::fs::read_dir(&parent) {
            found.extend(
                children
                    .filter_map(Result::ok)
                    .filter(|c| c.path().is_dir())
                    .map(|c| format!("cgroup {}", c.path().display())),
            );
        }
    }
    let links = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .unwrap();
    found.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.contains("master manifold0"))
            .map(|l| format!("veth {l}")),
    );
    if let Ok(netns) = std::fs::read_dir("/var/run/netns") {
        found.extend(
            netns
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("manifold"))
                .map(|n| format!("netns {n}")),
        );
    }
    let rules = Command::new("nft")
        .args(["-a", "list", "table", "ip", "manifold"])
        .output()
        .unwrap();
    found.extend(
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.contains("comment \"dyno:") || l.contains("comment \"manifold:"))
            .map(|l| format!("nft {}", l.trim())),
    );
    let procs = Command::new("pgrep")
        .args(["-af", "manifold-agent shim"])
        .output()
        .unwrap();
    // A warm shim waiting for the next dyno (one per binary) is no dyno's leftover.
    found.extend(
        String::from_utf8_lossy(&procs.stdout)
            .lines()
            .filter(|p| !p.contains(" --warm "))
            .map(|p| format!("shim process {p}")),
    );
    found
}

#[test]
fn a_hundred_dynos_leave_nothing_behind() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let slug = slug(
        tmp.path(),
        "app.tgz",
        &[("public/index.html", "hi\n", 0o644)],
    );
    let slug = slug.to_str().unwrap().to_string();
    for i in 0..100 {
        let port = free_port().to_string();
        let out = match i % 5 {
            // exits on its own, with output
            0 => run(&["--slug", &slug, "--name", "worker.1"], "echo hi; exit 3"),
            // a web dyno with a published port
            1 => run(
                &["--slug", &slug, "--name", "web.1", "--publish", &port],
                "busybox httpd -p $PORT -h /app/public; sleep 0.3",
            ),
            // fails to start: unknown stack
            2 => run(&["--stack", "no-such-stack", "--name", "worker.1"], "true"),
            // fails to start: bad checksum
            3 => run(
                &[
                    "--slug",
                    &slug,
                    "--sha256",
                    &"a".repeat(64),
                    "--name",
                    "worker.1",
                ],
                "true",
            ),
            // stopped by a signal mid-run
            _ => {
                let dyno = Background::spawn(Command::new(BIN).args([
                    "run",
                    "--name",
                    "worker.1",
                    "--grace",
                    "1s",
                    "--",
                    "echo up; sleep 30",
                ]));
                std::thread::sleep(Duration::from_millis(200));
                dyno.stop()
            }
        };
        assert!(
            stdout(&out).contains("heroku[") && out.status.code().is_some(),
            "run {i} gave no platform lines: {}",
            stdout(&out)
        );
    }
    // The kernel removes a dyno's veth pair with its network namespace, asynchronously, just
    // after the dyno ends: give that a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut leaked = dyno_resources();
    while !leaked.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        leaked = dyno_resources();
    }
    assert!(
        leaked.is_empty(),
        "leaked after 100 dynos:\n{}",
        leaked.join("\n")
    );
}
