//! Helpers for the integration tests: they drive the real `slugbuilder` binary, as a user or
//! the build dyno would.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("slugbuilder has a parent directory")
        .to_owned()
}

/// The built-in buildpacks.
pub fn builtins() -> PathBuf {
    repo().join("buildpacks")
}

/// `slugbuilder build SRC --out OUT --buildpacks-dir <repo>/buildpacks ARGS...`.
pub fn build(src: &Path, out: &Path, args: &[&str]) -> Output {
    build_with_env(src, out, &[], args)
}

/// [`build`] with environment variables set for slugbuilder and its buildpacks.
pub fn build_with_env(src: &Path, out: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slugbuilder"))
        .envs(env.iter().copied())
        .arg("build")
        .arg(src)
        .arg("--out")
        .arg(out)
        .arg("--buildpacks-dir")
        .arg(builtins())
        .args(args)
        .env_remove("STACK")
        .env_remove("SOURCE_VERSION")
        .output()
        .expect("run slugbuilder")
}

/// Standard output and error of a run, for assertions and their messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts that a build succeeded, showing its log if not.
pub fn assert_ok(output: &Output) {
    let (stdout, stderr) = text(output);
    assert!(
        output.status.success(),
        "build failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// Asserts that a build failed with `message` on stderr and left nothing at `out`.
pub fn assert_failed(output: &Output, message: &str, out: &Path) {
    let (stdout, stderr) = text(output);
    assert!(
        !output.status.success(),
        "build succeeded but should have failed\n--- stdout\n{stdout}"
    );
    assert!(
        stderr.contains(message),
        "stderr lacks {message:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        !out.exists(),
        "a failed build left a slug at {}",
        out.display()
    );
    let json = out.with_extension("json");
    assert!(!json.exists(), "a failed build left {}", json.display());
    let leftovers: Vec<_> = fs::read_dir(out.parent().expect("parent"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".slugbuilder-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// The metadata written beside `out`.
pub fn metadata(out: &Path) -> serde_json::Value {
    let text = fs::read_to_string(out.with_extension("json")).expect("read slug.json");
    serde_json::from_str(&text).expect("slug.json is JSON")
}

/// Writes files (path → content) under `root`, making directories as needed.
pub fn write_files(root: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, content).expect("write file");
    }
}

/// Makes a classic buildpack at `dir` from shell script bodies (`#!/usr/bin/env bash` and
/// `set -e` are added). `release` may be `None` to leave `bin/release` out.
pub fn buildpack(dir: &Path, detect: &str, compile: &str, release: Option<&str>) -> PathBuf {
    let mut scripts = vec![("detect", detect), ("compile", compile)];
    if let Some(release) = release {
        scripts.push(("release", release));
    }
    for (name, body) in scripts {
        let path = dir.join("bin").join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, format!("#!/usr/bin/env bash\nset -e\n{body}\n")).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir.to_owned()
}

/// Unpacks a slug with GNU tar into `dest` (made), returning `dest/app`.
pub fn unpack(slug: &Path, dest: &Path) -> PathBuf {
    fs::create_dir_all(dest).expect("mkdir");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(slug)
        .arg("-C")
        .arg(dest)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar could not unpack {}", slug.display());
    dest.join("app")
}

/// The entry names in a slug, as GNU tar lists them.
pub fn list(slug: &Path) -> Vec<String> {
    let output = Command::new("tar")
        .arg("-tzf")
        .arg(slug)
        .output()
        .expect("run tar");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The build log: what the buildpacks printed (standard output) and the errors after it.
pub fn log(output: &Output) -> String {
    let (stdout, stderr) = text(output);
    format!("{stdout}{stderr}")
}

/// Copies fixture app `name` (`tests/fixtures/NAME`) to `dest`. Lockfiles that must name
/// the Python package index say `@INDEX_URL@` and `@FILES_HOST@` instead, filled in here
/// from pip's own defaults, so that no registry host is written in the repository.
pub fn fixture(name: &str, dest: &Path) -> PathBuf {
    let src = repo().join("slugbuilder/tests/fixtures").join(name);
    let output = Command::new("python3")
        .args([
            "-c",
            "from pip._internal.models.index import PyPI; print(PyPI.simple_url, PyPI.file_storage_domain)",
        ])
        .output()
        .expect("run python3");
    assert!(output.status.success(), "pip is needed: {output:?}");
    let defaults = String::from_utf8_lossy(&output.stdout).into_owned();
    let (index, files) = defaults.trim().split_once(' ').expect("two values");
    copy_filled(
        &src,
        dest,
        &[("@INDEX_URL@", index), ("@FILES_HOST@", files)],
    );
    dest.to_owned()
}

fn copy_filled(src: &Path, dest: &Path, fills: &[(&str, &str)]) {
    fs::create_dir_all(dest).expect("mkdir");
    for entry in fs::read_dir(src).expect("read fixture") {
        let entry = entry.expect("entry");
        let to = dest.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_filled(&entry.path(), &to, fills);
        } else {
            let mut content = fs::read_to_string(entry.path()).expect("fixture is text");
            for (from, value) in fills {
                content = content.replace(from, value);
            }
            fs::write(&to, content).expect("write");
        }
    }
}
