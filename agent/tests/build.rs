//! Acceptance: builds run in a dyno (`manifold-agent build`), and what they build runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether the bookworm stack is there (in CI it must be: a missing stack fails the test).
fn bookworm_ready() -> bool {
    manifold_test_support::require(
        "build test",
        &[(
            Path::new("/var/lib/manifold/stacks/bookworm/.manifold-stack").exists(),
            "the bookworm stack is missing: run `rootfs/build-stack bookworm`",
        )],
    )
}

fn build(source: &Path, out: &Path, extra: &[&str]) -> Output {
    build_with_env(source, out, extra, &[])
}

/// [`build`] with agent settings in `env` (`MANIFOLD_*` variables).
fn build_with_env(source: &Path, out: &Path, extra: &[&str], env: &[(&str, String)]) -> Output {
    let slugbuilder = Path::new(BIN).with_file_name("slugbuilder");
    assert!(
        slugbuilder.exists(),
        "build the workspace's binaries first: {} is missing",
        slugbuilder.display()
    );
    Command::new(BIN)
        .arg("build")
        .arg(source)
        .arg("--out")
        .arg(out)
        .arg("--buildpacks-dir")
        .arg(repo().join("buildpacks"))
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

#[test]
fn build_dyno_cannot_write_outside_its_build_and_output_directories() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: busybox httpd -f -p $PORT\n").unwrap();
    // A buildpack that tries to write everywhere and reports what worked.
    let bp = tmp.path().join("nosy");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    let script = |name: &str, body: &str| {
        let p = bp.join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script("detect", "echo Nosy");
    script(
        "compile",
        r#"try() { if ( echo x > "$1" ) 2>/dev/null; then echo "wrote $1"; else echo "denied $1"; fi; }
try /etc/nosy; try /usr/bin/nosy; try /nosy; try /.manifold/buildpacks/nosy; try /.manifold/bin/nosy
try /.manifold/custom-buildpacks/0/nosy; try /.manifold/env/nosy
try "$1/built"; try "$2/cached"; try /.manifold/out/extra
echo "env GREETING=$(cat "$3/GREETING")"; echo "uid=$(id -u)""#,
    );
    script("release", "echo '--- {}'");
    let out = tmp.path().join("slug.tgz");
    let stack_before = Command::new("find")
        .arg("/var/lib/manifold/stacks/testing")
        .arg("-newer")
        .arg(&src)
        .output()
        .unwrap();
    let result = build(
        &src,
        &out,
        &[
            "--stack",
            "testing",
            "--buildpack",
            bp.to_str().unwrap(),
            "-e",
            "GREETING=hi",
        ],
    );
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(
        result.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for denied in [
        "/etc/nosy",
        "/usr/bin/nosy",
        "/nosy",
        "/.manifold/buildpacks/nosy",
        "/.manifold/bin/nosy",
        "/.manifold/custom-buildpacks/0/nosy",
        "/.manifold/env/nosy",
    ] {
        assert!(
            text.contains(&format!("denied {denied}")),
            "{denied} must not be writable:\n{text}"
        );
    }
    for wrote in [
        "/app/built",
        "/.manifold/cache/cached",
        "/.manifold/out/extra",
    ] {
        assert!(
            text.contains(&format!("wrote {wrote}")),
            "{wrote} must be writable:\n{text}"
        );
    }
    assert!(
        text.contains("env GREETING=hi"),
        "config vars reach bin/compile through ENV_DIR:\n{text}"
    );
    assert!(text.contains("uid=1000"), "{text}");
    assert!(
        !bp.join("nosy").exists(),
        "the buildpack directory on the host is untouched"
    );
    let stack_after = Command::new("find")
        .arg("/var/lib/manifold/stacks/testing")
        .arg("-newer")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        stack_before.stdout, stack_after.stdout,
        "the stack is untouched"
    );
    assert!(out.exists() && out.with_extension("json").exists());
    let meta = std::fs::read_to_string(out.with_extension("json")).unwrap();
    assert!(meta.contains("\"web\""), "{meta}");
}

#[test]
fn python_example_builds_in_a_dyno_and_answers_http_on_bookworm() {
    example_builds_in_a_dyno_and_answers_http("python-web", "-----> Python app detected");
}

#[test]
fn node_example_builds_in_a_dyno_and_answers_http_on_bookworm() {
    example_builds_in_a_dyno_and_answers_http("node-web", "-----> Node.js app detected");
}

fn example_builds_in_a_dyno_and_answers_http(example: &str, detected: &str) {
    if !ready() {
        return;
    }
    if !bookworm_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("slug.tgz");
    let cache = tmp.path().join("cache");
    let result = build(
        &repo().join("examples").join(example),
        &out,
        &["--cache-dir", cache.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(
        result.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(text.contains(detected), "{text}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let web = meta["process_types"]["web"].as_str().unwrap().to_string();
    assert!(meta["process_types"]["worker"].is_string(), "{meta}");

    let port = free_port();
    let dyno = Background::spawn(
        Command::new(BIN)
            .args([
                "run",
                "--stack",
                "bookworm",
                "--slug",
                out.to_str().unwrap(),
                "--name",
                "web.1",
                "--grace",
                "3s",
            ])
            .args(["--publish", &port.to_string(), "--", &web]),
    );
    let body = http_get_ok(port, "/", Duration::from_secs(60));
    assert!(body.contains("web.1"), "{body}");
    let out = dyno.stop();
    let p = platform_lines(&out);
    assert_has(&p, "State changed from up to down");
}

/// Kills a helper process and everything it started (`git daemon` runs `git-daemon` as a
/// child) when the test ends, however it ends. The helper leads its own process group.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// A bridge and nft table of a test's own (one name for both), removed when dropped.
struct OwnNetwork(&'static str);

impl Drop for OwnNetwork {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "ip", self.0])
            .output();
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

#[test]
fn third_party_buildpack_from_a_git_url_runs_in_a_build_dyno() {
    if !ready() {
        return;
    }
    if !bookworm_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.email=ci@manifold.invalid",
                "-c",
                "user.name=ci",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A classic buildpack in a git repository, served by `git daemon` on the host: the build
    // dyno reaches it through the bridge, as it would reach a buildpack on a git host.
    let bp = tmp.path().join("bp");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    for (name, body) in [
        ("detect", "echo Hello"),
        (
            "compile",
            "echo '-----> hello buildpack from git'; echo built > \"$1/built.txt\"",
        ),
        (
            "release",
            "echo '--- {default_process_types: {web: cat built.txt}}'",
        ),
    ] {
        let p = bp.join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    git(&bp, &["init", "-q"]);
    git(&bp, &["add", "-A"]);
    git(&bp, &["commit", "-qm", "buildpack"]);
    let srv = tmp.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    git(tmp.path(), &["clone", "-q", "--bare", "bp", "srv/bp.git"]);
    let port = free_port();
    let _daemon = KillOnDrop(
        Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=0.0.0.0"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", srv.display()))
            .arg(&srv)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // Dynos reach nothing on their host unless the operator allows it: the git daemon's
    // port is allowed, on a bridge and nft table of this test's own so that the allow-list
    // touches no other agent's dynos.
    let own = OwnNetwork("mftbgit0");
    let gateway = std::net::Ipv4Addr::new(10, 236, 0, 1);
    let env = [
        ("MANIFOLD_BRIDGE", own.0.to_string()),
        ("MANIFOLD_SUBNET", "10.236.0.0/24".to_string()),
        ("MANIFOLD_NFT_TABLE", own.0.to_string()),
        ("MANIFOLD_ALLOW_EGRESS", format!("{gateway}:{port}")),
    ];
    let app = tmp.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("README"), "hi\n").unwrap();
    let out = tmp.path().join("slug.tgz");
    let url = format!("git://{gateway}:{port}/bp.git");
    let deadline = Instant::now() + Duration::from_secs(10);
    let result = loop {
        let result = build_with_env(&app, &out, &["--buildpack", &url], &env);
        // The daemon may take a moment to listen.
        if result.status.success() || Instant::now() > deadline {
            break result;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let text = String::from_utf8_lossy(&result.stdout).to_string();
    assert_eq!(
        result.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(text.contains("-----> hello buildpack from git"), "{text}");
    let meta = std::fs::read_to_string(out.with_extension("json")).unwrap();
    assert!(
        meta.contains("cat built.txt"),
        "default_process_types from bin/release: {meta}"
    );
}
