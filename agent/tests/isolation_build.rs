//! Isolation of builds, on the real kernel: what a hostile app, buildpack or build can do to
//! the agent that reads its output back as root, to the host's buildpack directories and to
//! the config vars it is given. Each test runs real build dynos (`manifold-agent build`) or
//! dynos (`manifold-agent run`) on the testing stack.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A classic buildpack in `dir` whose `bin/compile` runs `compile`.
fn buildpack(dir: &Path, compile: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for (name, body) in [
        ("detect", "echo Hostile"),
        ("compile", compile),
        ("release", "echo '--- {}'"),
    ] {
        let p = dir.join("bin").join(name);
        std::fs::write(&p, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.to_path_buf()
}

/// An app source whose `.profile` sets `trap` on the build dyno's shell: the trap runs after
/// the slugbuilder wrote `slug.tgz` and `slug.json`, as the build's last act, exactly as
/// hostile code in a build can.
fn source_with_exit_trap(dir: &Path, trap: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Procfile"), "web: true\n").unwrap();
    std::fs::write(dir.join(".profile"), format!("trap '{trap}' EXIT\n")).unwrap();
    dir.to_path_buf()
}

/// Runs `manifold-agent build` on the testing stack; fails the test (instead of hanging it)
/// if the agent has not finished after `within`.
fn build(source: &Path, out: &Path, extra: &[&str], within: Duration) -> Output {
    let slugbuilder = Path::new(BIN).with_file_name("slugbuilder");
    assert!(
        slugbuilder.exists(),
        "build the workspace's binaries first: {} is missing",
        slugbuilder.display()
    );
    let mut child = Command::new(BIN)
        .arg("build")
        .arg(source)
        .arg("--out")
        .arg(out)
        .args(["--stack", "testing", "--buildpacks-dir"])
        .arg(repo().join("buildpacks"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent hangs on the build's output:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn build_outputs_replaced_by_the_build_are_refused_without_being_read() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bp = buildpack(&tmp.path().join("bp"), "echo compiled");
    let out_dir = "/.manifold/out";
    let cases: &[(&str, &str, &str)] = &[
        (
            "symlink to a root-only host file",
            "rm -f OUT/slug.tgz; ln -s /etc/shadow OUT/slug.tgz",
            "the build's slug.tgz is a symbolic link, not a regular file",
        ),
        (
            "symlink to an endless device",
            "rm -f OUT/slug.tgz; ln -s /dev/zero OUT/slug.tgz",
            "the build's slug.tgz is a symbolic link, not a regular file",
        ),
        (
            "FIFO nobody writes",
            "rm -f OUT/slug.tgz; mkfifo OUT/slug.tgz",
            "the build's slug.tgz is a FIFO, not a regular file",
        ),
        (
            "directory",
            "rm -f OUT/slug.json; mkdir OUT/slug.json",
            "the build's slug.json is a directory, not a regular file",
        ),
        (
            "huge sparse file",
            "truncate -s 600M OUT/slug.tgz",
            "the build's slug.tgz is 629145600 bytes, more than the limit of 524288000 bytes",
        ),
        (
            "huge slug.json",
            "truncate -s 1M OUT/slug.json",
            "the build's slug.json is 1048576 bytes, more than the limit of 65536 bytes",
        ),
        (
            "hard link",
            "rm -f OUT/slug.tgz; ln OUT/slug.json OUT/slug.tgz",
            "has 2 hard links, not 1",
        ),
        (
            "another regular file",
            "echo not the slug > OUT/slug.tgz",
            "but slug.tgz has 13 bytes with sha256",
        ),
        (
            "invalid process type",
            "sed -i s/\\\"web\\\"/\\\"web\\;rm\\\"/ OUT/slug.json",
            "slug.json field process_types.\"web;rm\": invalid process type name",
        ),
        (
            "another stack",
            "sed -i s/\\\"testing\\\"/\\\"bookworm\\\"/ OUT/slug.json",
            "slug.json field stack: is not the stack the build ran on (testing)",
        ),
    ];
    for (what, trap, refusal) in cases {
        let src = source_with_exit_trap(
            &tmp.path().join(what.replace(' ', "-")),
            &trap.replace("OUT", out_dir),
        );
        let out = tmp.path().join(format!("{}.tgz", what.replace(' ', "-")));
        let result = build(
            &src,
            &out,
            &["--buildpack", bp.to_str().unwrap()],
            Duration::from_secs(120),
        );
        let t = text(&result);
        assert_ne!(result.status.code(), Some(0), "{what}: accepted\n{t}");
        assert!(t.contains(refusal), "{what}: want {refusal:?} in\n{t}");
        assert!(
            !out.exists() && !out.with_extension("json").exists(),
            "{what}: nothing is published"
        );
    }
}

#[test]
fn an_honest_build_still_publishes_its_checked_slug() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bp = buildpack(&tmp.path().join("bp"), "echo compiled");
    // A trap that leaves the outputs alone: the build's last act is harmless.
    let src = source_with_exit_trap(&tmp.path().join("src"), "true");
    let out = tmp.path().join("slug.tgz");
    let result = build(
        &src,
        &out,
        &["--buildpack", bp.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(result.status.code(), Some(0), "{}", text(&result));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(&out).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(meta["sha256"], sha.as_str());
    assert_eq!(meta["size"], bytes.len() as u64);
    assert_eq!(meta["process_types"]["web"], "true");
    assert_eq!(std::fs::metadata(&out).unwrap().mode() & 0o777, 0o644);
}

#[test]
fn config_vars_given_to_a_build_are_readable_by_the_build_user_only() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bp = buildpack(
        &tmp.path().join("bp"),
        r#"echo "env dir $(stat -c '%a %u' "$3")"; echo "env file $(stat -c '%a %u' "$3/SECRET")"; echo "secret=$(cat "$3/SECRET")""#,
    );
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: true\n").unwrap();
    let out = tmp.path().join("slug.tgz");
    let result = build(
        &src,
        &out,
        &["--buildpack", bp.to_str().unwrap(), "-e", "SECRET=s3cr3t"],
        Duration::from_secs(120),
    );
    let t = text(&result);
    assert_eq!(result.status.code(), Some(0), "{t}");
    // Inside, uid 1000 is the build's user: the directory and file are its own, 0700/0600.
    assert!(t.contains("env dir 700 1000"), "{t}");
    assert!(t.contains("env file 600 1000"), "{t}");
    assert!(
        t.contains("secret=s3cr3t"),
        "the build still reads it:\n{t}"
    );
}

#[test]
fn a_dynos_config_vars_are_in_files_only_root_can_read() {
    if !ready() {
        return;
    }
    let marker = format!("secret-{:016x}", rand::random::<u64>());
    let dyno = Background::spawn(
        Command::new(BIN)
            .args(["run", "--stack", "testing", "--grace", "1s", "-e"])
            .arg(format!("MARKER={marker}"))
            .args(["--", "echo running; sleep 60"]),
    );
    // Find this dyno's directory by the marker in its dyno.json.
    let deadline = Instant::now() + Duration::from_secs(30);
    let dir = loop {
        let found = std::fs::read_dir("/var/lib/manifold/dynos")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|d| {
                std::fs::read_to_string(d.join("dyno.json")).is_ok_and(|j| j.contains(&marker))
                    && d.join("bundle/config.json").exists()
            });
        if let Some(dir) = found {
            break dir;
        }
        assert!(
            Instant::now() < deadline,
            "the dyno's directory never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dir.join("dyno.json")), 0o600);
    assert_eq!(mode(&dir.join("bundle/config.json")), 0o600);
    assert!(std::fs::read_to_string(dir.join("bundle/config.json"))
        .unwrap()
        .contains(&marker));
    // Closed to host users: only root and the group of the dyno's user namespace root, which
    // must reach its root filesystem through it, and did (the dyno runs).
    assert_eq!(mode(&dir), 0o710);
    assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 0);
    let out = dyno.stop();
    assert_has(&app_lines(&out), "running");
}

/// Unmounts a test's mount, however the test ends.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn read_only_buildpack_binds_are_read_only_in_every_submount() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bp = buildpack(
        &tmp.path().join("bp"),
        r#"for f in /.manifold/custom-buildpacks/0/x /.manifold/custom-buildpacks/0/sub/x; do
  if ( echo x > "$f" ) 2>/dev/null; then echo "wrote $f"; else echo "denied $f"; fi
done"#,
    );
    // A writable mount inside the buildpack directory on the host.
    let sub = bp.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m,mode=0777"),
    )
    .unwrap();
    let _unmount = Unmount(sub.clone());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("Procfile"), "web: true\n").unwrap();
    let result = build(
        &src,
        &tmp.path().join("slug.tgz"),
        &["--buildpack", bp.to_str().unwrap()],
        Duration::from_secs(120),
    );
    let t = text(&result);
    assert_eq!(result.status.code(), Some(0), "{t}");
    assert!(t.contains("denied /.manifold/custom-buildpacks/0/x"), "{t}");
    assert!(
        t.contains("denied /.manifold/custom-buildpacks/0/sub/x"),
        "a submount of a read-only bind must be read-only too:\n{t}"
    );
    assert!(!sub.join("x").exists());
}

/// A slug of `./app` holding a chain of `depth` nested directories with a file in each.
fn deep_slug(path: &Path, depth: usize) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut dir = PathBuf::from("./app");
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header.clone(), &dir, std::io::empty())
        .unwrap();
    for _ in 0..depth {
        dir.push("d");
        tar.append_data(&mut header.clone(), &dir, std::io::empty())
            .unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_entry_type(tar::EntryType::Regular);
        file.set_mode(0o644);
        file.set_size(1);
        tar.append_data(&mut file, dir.join("f"), &b"x"[..])
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn deep_slugs_run_up_to_the_depth_limit_and_deeper_ones_are_refused() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // `app` and 254 directories below it, plus the file: 256 components, the limit.
    let deep = tmp.path().join("deep.tgz");
    deep_slug(&deep, 254);
    let o = run(
        &["--slug", deep.to_str().unwrap()],
        "find /app -type f | wc -l",
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_has(&app_lines(&o), "254");
    let deeper = tmp.path().join("deeper.tgz");
    deep_slug(&deeper, 300);
    let o = run(&["--slug", deeper.to_str().unwrap()], "true");
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("path deeper than 256 components"), "{t}");
}
