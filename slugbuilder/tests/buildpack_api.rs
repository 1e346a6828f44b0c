//! The classic buildpack API through the real binary, with small buildpacks written by the
//! tests (no network needed): detect, compile, release, export, ENV_DIR, STACK,
//! SOURCE_VERSION, the cache, .slugignore, .profile.d, failures and limits, git URLs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ALWAYS: &str = "echo Test";

#[test]
fn export_reaches_the_next_buildpack_and_compile_gets_its_arguments() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let first = buildpack(
        &t.join("first"),
        "echo First",
        r#"echo "first: build=$1"
echo "first: cache=$2"
echo "first: env=$3"
BP_DIR=$(cd "$(dirname "$0")/.." && pwd)
echo 'export GREETING="hello from first"' > "$BP_DIR/export""#,
        None,
    );
    let second = buildpack(
        &t.join("second"),
        "echo Second",
        r#"echo "second: GREETING=$GREETING"
echo "$GREETING" > "$1/greeting.txt""#,
        None,
    );
    let out = t.join("out/slug.tgz");
    let cache = t.join("cache");
    let env = t.join("env");
    fs::create_dir_all(&env).expect("mkdir env");
    let output = build(
        &t.join("app"),
        &out,
        &[
            "--buildpack",
            first.to_str().expect("utf8"),
            "--buildpack",
            second.to_str().expect("utf8"),
            "--cache-dir",
            cache.to_str().expect("utf8"),
            "--env-dir",
            env.to_str().expect("utf8"),
        ],
    );
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(log.contains("-----> First app detected"), "{log}");
    assert!(log.contains("-----> Second app detected"), "{log}");
    assert!(log.contains("second: GREETING=hello from first"), "{log}");
    let cache = cache.canonicalize().expect("cache exists");
    assert!(
        log.contains(&format!("first: cache={}", cache.display())),
        "{log}"
    );
    let env = env.canonicalize().expect("env exists");
    assert!(
        log.contains(&format!("first: env={}", env.display())),
        "{log}"
    );
    // The build dir is a copy: the source is untouched and the slug has the file.
    assert!(!t.join("app/greeting.txt").exists());
    let app = unpack(&out, &t.join("unpacked"));
    assert_eq!(
        fs::read_to_string(app.join("greeting.txt")).expect("greeting"),
        "hello from first\n"
    );
    let meta = metadata(&out);
    let names: Vec<&str> = meta["buildpacks"]
        .as_array()
        .expect("buildpacks")
        .iter()
        .map(|b| b["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["First", "Second"]);
    // The buildpacks ran from copies: their own directories got no export file.
    assert!(!first.join("export").exists());
}

#[test]
fn config_vars_reach_compile_through_env_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    write_files(
        &t.join("env"),
        &[
            ("DATABASE_URL", "postgres://db.internal/app"),
            ("GREETING", "multi\nline"),
        ],
    );
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"for f in "$3"/*; do echo "config $(basename "$f")=$(cat "$f")"; done
cp "$3/DATABASE_URL" "$1/database_url""#,
        None,
    );
    let out = t.join("slug.tgz");
    let output = build(
        &t.join("app"),
        &out,
        &[
            "--buildpack",
            pack.to_str().expect("utf8"),
            "--env-dir",
            t.join("env").to_str().expect("utf8"),
        ],
    );
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(
        log.contains("config DATABASE_URL=postgres://db.internal/app"),
        "{log}"
    );
    assert!(log.contains("config GREETING=multi\nline"), "{log}");
    let app = unpack(&out, &t.join("unpacked"));
    assert_eq!(
        fs::read_to_string(app.join("database_url")).expect("copied"),
        "postgres://db.internal/app"
    );
}

#[test]
fn stack_and_source_version_are_set_and_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"echo "STACK=$STACK SOURCE_VERSION=$SOURCE_VERSION""#,
        None,
    );
    let out = t.join("slug.tgz");
    let output = build(
        &t.join("app"),
        &out,
        &[
            "--buildpack",
            pack.to_str().expect("utf8"),
            "--stack",
            "testing",
            "--source-version",
            "1a2b3c4d",
        ],
    );
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(
        log.contains("STACK=testing SOURCE_VERSION=1a2b3c4d"),
        "{log}"
    );
    assert!(
        log.contains("-----> Building on the testing stack"),
        "{log}"
    );
    let meta = metadata(&out);
    assert_eq!(meta["stack"], "testing");
    assert_eq!(meta["commit"], "1a2b3c4d");
}

#[test]
fn source_version_defaults_to_the_sources_git_head() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = tmp.path().join("app");
    write_files(&app, &[("Procfile", "web: ./run\n")]);
    let head = git_commit_all(&app, "first");
    let out = tmp.path().join("slug.tgz");
    assert_ok(&build(&app, &out, &[]));
    assert_eq!(metadata(&out)["commit"], head.as_str());
}

#[test]
fn the_cache_dir_persists_between_builds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"n=$(cat "$2/count" 2>/dev/null || echo 0)
echo "builds before this one: $n"
echo $((n + 1)) > "$2/count""#,
        None,
    );
    let cache = t.join("cache");
    let args = [
        "--buildpack",
        pack.to_str().expect("utf8"),
        "--cache-dir",
        cache.to_str().expect("utf8"),
    ];
    for expected in 0..3 {
        let output = build(&t.join("app"), &t.join("slug.tgz"), &args);
        assert_ok(&output);
        let (log, _) = text(&output);
        assert!(
            log.contains(&format!("builds before this one: {expected}")),
            "{log}"
        );
    }
}

#[test]
fn procfile_wins_over_default_process_types_and_release_is_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(
        &t.join("app"),
        &[(
            "Procfile",
            "\u{feff}# processes\r\nweb: ./server --port $PORT --bind 0.0.0.0:$PORT\r\nworker: ./worker\r\n",
        )],
    );
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        "true",
        Some(
            r#"cat <<'YAML'
---
addons:
  - heroku-postgresql:mini
config_vars:
  LANG: en_US.UTF-8
default_process_types:
  web: ./default-web
  clock: ./clock
YAML"#,
        ),
    );
    let out = t.join("slug.tgz");
    let output = build(
        &t.join("app"),
        &out,
        &["--buildpack", pack.to_str().expect("utf8")],
    );
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(
        log.contains("Procfile declares types     -> web, worker"),
        "{log}"
    );
    assert!(
        log.contains("Default types for buildpack -> clock, web"),
        "{log}"
    );
    let meta = metadata(&out);
    assert_eq!(
        meta["process_types"],
        serde_json::json!({
            "web": "./server --port $PORT --bind 0.0.0.0:$PORT",
            "worker": "./worker",
            "clock": "./clock",
        })
    );
    assert_eq!(
        meta["addons"],
        serde_json::json!(["heroku-postgresql:mini"])
    );
    assert_eq!(
        meta["config_vars"],
        serde_json::json!({"LANG": "en_US.UTF-8"})
    );
}

#[test]
fn slug_is_dot_app_with_modes_symlinks_profile_d_and_a_true_checksum() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(
        &t.join("app"),
        &[
            ("Procfile", "web: bin/server\n"),
            ("bin/server", "#!/bin/sh\n"),
        ],
    );
    fs::set_permissions(t.join("app/bin/server"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink("bin/server", t.join("app/server")).expect("symlink");
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"mkdir -p "$1/.profile.d"
echo 'export FROM_PROFILE=1' > "$1/.profile.d/test.sh""#,
        None,
    );
    let out = t.join("slug.tgz");
    assert_ok(&build(
        &t.join("app"),
        &out,
        &["--buildpack", pack.to_str().expect("utf8")],
    ));
    let names = list(&out);
    assert!(names.iter().all(|n| n.starts_with("./app/")), "{names:?}");
    assert!(names.contains(&"./app/.profile.d/test.sh".to_owned()));
    let app = unpack(&out, &t.join("unpacked"));
    let mode = fs::metadata(app.join("bin/server"))
        .expect("server")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read_link(app.join("server")).expect("symlink kept"),
        Path::new("bin/server")
    );
    let meta = metadata(&out);
    let bytes = fs::read(&out).expect("slug");
    assert_eq!(meta["size"], bytes.len() as u64);
    let sha = Command::new("sha256sum")
        .arg(&out)
        .output()
        .expect("sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(meta["sha256"].as_str(), sha.split_whitespace().next());
    assert!(meta["duration_ms"].as_u64().is_some());
}

#[test]
fn slugignore_removes_what_it_names_before_compile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(
        &t.join("app"),
        &[
            ("Procfile", "web: ./run\n"),
            (".slugignore", "/docs\n*.log\nspec/\n!keep.log\n"),
            ("docs/guide.md", "x"),
            ("lib/docs/api.md", "kept: /docs is anchored"),
            ("debug.log", "x"),
            ("lib/trace.log", "x"),
            ("keep.log", "x"),
            ("spec/a_spec.rb", "x"),
            ("lib/app.rb", "x"),
        ],
    );
    // The buildpack lists what it sees: ignored files are gone before compile.
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"cd "$1" && find . -type f | sort | sed 's/^/seen /'"#,
        None,
    );
    let out = t.join("slug.tgz");
    let output = build(
        &t.join("app"),
        &out,
        &["--buildpack", pack.to_str().expect("utf8")],
    );
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(!log.contains("seen ./debug.log"), "{log}");
    assert!(log.contains("seen ./lib/app.rb"), "{log}");
    assert!(
        log.contains("line 4: `!` patterns are not supported"),
        "{log}"
    );
    let mut files: Vec<String> = list(&out)
        .into_iter()
        .filter(|n| !n.ends_with('/'))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "./app/.slugignore",
            "./app/Procfile",
            "./app/lib/app.rb",
            "./app/lib/docs/api.md",
        ]
    );
    // The source itself is untouched.
    assert!(t.join("app/docs/guide.md").exists());
}

#[test]
fn no_buildpack_detecting_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("index.html", "<p>no Procfile</p>")]);
    let out = t.join("slug.tgz");
    let output = build(&t.join("app"), &out, &[]);
    assert_failed(
        &output,
        "no buildpack detected this app (tried python, nodejs, generic)",
        &out,
    );
}

#[test]
fn a_named_buildpack_that_does_not_detect_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let out = t.join("slug.tgz");
    let output = build(&t.join("app"), &out, &["--buildpack", "python"]);
    assert_failed(&output, "buildpack python does not detect this app", &out);
}

#[test]
fn a_failing_compile_shows_its_output_and_writes_no_slug() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let pack = buildpack(
        &t.join("pack"),
        "echo Broken",
        "echo 'step one went fine'\necho 'boom: libfoo not found' >&2\nexit 3",
        None,
    );
    let out = t.join("out/slug.tgz");
    let output = build(
        &t.join("app"),
        &out,
        &["--buildpack", pack.to_str().expect("utf8")],
    );
    let (log, _) = text(&output);
    assert!(log.contains("step one went fine"), "{log}");
    assert!(
        log.contains("boom: libfoo not found"),
        "stderr of compile is in the log: {log}"
    );
    assert!(
        log.contains("Push rejected, failed to compile Broken app"),
        "{log}"
    );
    assert_failed(&output, "failed to compile Broken app", &out);
    let (_, stderr) = text(&output);
    assert!(stderr.contains("exit status: 3"), "{stderr}");
}

#[test]
fn a_slug_over_the_size_limit_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    // 3 MB that gzip cannot shrink.
    let status = Command::new("head")
        .args(["-c", "3000000", "/dev/urandom"])
        .stdout(fs::File::create(t.join("app/noise.bin")).expect("create"))
        .status()
        .expect("head");
    assert!(status.success());
    let out = t.join("out/slug.tgz");
    let output = build(&t.join("app"), &out, &["--max-slug-size", "1M"]);
    assert_failed(
        &output,
        "slug exceeds the size limit of 1048576 bytes compressed",
        &out,
    );
    // The same app under a big enough limit builds.
    assert_ok(&build(&t.join("app"), &out, &["--max-slug-size", "10M"]));
}

#[test]
fn a_build_over_the_time_limit_is_killed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let marker = t.join("still-running");
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        &format!(
            "echo 'compiling slowly'\n(sleep 4; touch {}) &\nsleep 60",
            marker.display()
        ),
        None,
    );
    let out = t.join("out/slug.tgz");
    let started = Instant::now();
    let output = build(
        &t.join("app"),
        &out,
        &[
            "--buildpack",
            pack.to_str().expect("utf8"),
            "--timeout",
            "2s",
        ],
    );
    let elapsed = started.elapsed();
    assert_failed(&output, "build exceeded the time limit of 2s", &out);
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    let (log, _) = text(&output);
    assert!(log.contains("compiling slowly"), "{log}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!marker.exists(), "a process the build started outlived it");
}

#[test]
fn an_invalid_procfile_fails_the_build_naming_the_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(
        &t.join("app"),
        &[("Procfile", "web: ./run\nweb: ./other\n")],
    );
    let out = t.join("slug.tgz");
    let output = build(&t.join("app"), &out, &[]);
    assert_failed(
        &output,
        "procfile line 2: process type \"web\" is already declared on line 1",
        &out,
    );
}

#[test]
fn the_generic_buildpack_builds_an_app_with_only_a_procfile() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(
        &t.join("app"),
        &[
            ("Procfile", "web: busybox httpd -f -p $PORT\n"),
            ("index.html", "hi"),
        ],
    );
    let out = t.join("slug.tgz");
    let output = build(&t.join("app"), &out, &[]);
    assert_ok(&output);
    let (log, _) = text(&output);
    assert!(log.contains("-----> Generic app detected"), "{log}");
    assert_eq!(metadata(&out)["buildpacks"][0]["url"], "generic");
}

#[test]
fn builtins_are_found_through_the_environment_and_in_place_builds_use_the_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let pack = buildpack(
        &t.join("pack"),
        ALWAYS,
        r#"echo "built at $1"; touch "$1/compiled""#,
        None,
    );
    let out = t.join("slug.tgz");
    let output = Command::new(env!("CARGO_BIN_EXE_slugbuilder"))
        .arg("build")
        .arg(t.join("app"))
        .args(["--out", out.to_str().expect("utf8"), "--in-place"])
        .args(["--buildpack", "generic", "--buildpack"])
        .arg(&pack)
        .env("MANIFOLD_BUILDPACKS", builtins())
        .output()
        .expect("run slugbuilder");
    assert_ok(&output);
    assert!(
        t.join("app/compiled").exists(),
        "in place means in the source"
    );
}

#[test]
fn git_url_buildpacks_are_fetched_at_the_ref_and_cached() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    write_files(&t.join("app"), &[("Procfile", "web: ./run\n")]);
    let repo = t.join("pack-repo");
    buildpack(&repo, "echo Git", "echo 'pack version one'", None);
    git_commit_all(&repo, "v1");
    git(&repo, &["tag", "v1"]);
    buildpack(&repo, "echo Git", "echo 'pack version two'", None);
    git_commit_all(&repo, "v2");

    let url = format!("file://{}", repo.display());
    let cache = t.join("bp-cache");
    let cache_arg = cache.to_str().expect("utf8");
    let out = t.join("slug.tgz");
    for (spec, want) in [
        (url.clone(), "pack version two"),
        (format!("{url}#v1"), "pack version one"),
        (url.clone(), "pack version two"),
    ] {
        let output = build(
            &t.join("app"),
            &out,
            &["--buildpack", &spec, "--buildpack-cache", cache_arg],
        );
        assert_ok(&output);
        let (log, _) = text(&output);
        assert!(log.contains(want), "{spec}: {log}");
        assert!(
            log.contains(&format!("-----> Fetching buildpack {url}")),
            "{log}"
        );
        assert_eq!(metadata(&out)["buildpacks"][0]["url"], spec.as_str());
    }
    // One clone per URL and ref, reused.
    assert_eq!(fs::read_dir(&cache).expect("cache").count(), 2);

    // A branch that does not exist fails the build clearly.
    let output = build(
        &t.join("app"),
        &t.join("none.tgz"),
        &["--buildpack", &format!("{url}#no-such-ref")],
    );
    assert_failed(&output, "git fetch failed", &t.join("none.tgz"));
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.test"])
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Commits everything in `dir` (made a repository if needed) and returns the commit id.
fn git_commit_all(dir: &Path, message: &str) -> String {
    if !dir.join(".git").exists() {
        git(dir, &["init", "--quiet"]);
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}
