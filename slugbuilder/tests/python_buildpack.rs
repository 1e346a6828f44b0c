//! The built-in Python buildpack with the real tools and the real package index: which
//! Python builds the app and what the log says when the request cannot be met, Pipenv,
//! Poetry and uv projects, the app's compile hooks, and the package manager files Heroku
//! refuses.
//!
//! Slow (each cold build makes a venv; Pipenv, Poetry and uv are installed from the index):
//! about a minute per test on an idle machine.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// The PATH the builds get: this one without a version manager's directories (pyenv's shims
/// and versions), so that, as on a stack, the system's Python is the one there is.
fn stack_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|dir| !dir.contains("pyenv"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The stack's default Python (the first `python3` on [`stack_path`]), e.g. `3.11.2`.
fn stack_python() -> String {
    let out = Command::new("python3")
        .env("PATH", stack_path())
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds `src` with the Python buildpack, a cache at `tmp/cache` and config vars `env`.
fn build_python(src: &Path, tmp: &Path, env: &[(&str, &str)]) -> Output {
    let env_dir = tmp.join("env");
    let _ = std::fs::remove_dir_all(&env_dir);
    std::fs::create_dir_all(&env_dir).expect("mkdir env");
    for (name, value) in env {
        std::fs::write(env_dir.join(name), value).expect("write config var");
    }
    build_with_env(
        src,
        &tmp.join("slug.tgz"),
        &[("PATH", &stack_path())],
        &[
            "--buildpack",
            "heroku/python",
            "--cache-dir",
            tmp.join("cache").to_str().expect("utf8"),
            "--env-dir",
            env_dir.to_str().expect("utf8"),
        ],
    )
}

#[test]
fn python_version_requests_are_honoured_or_explained_and_hooks_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let default = stack_python();
    let major = default.rsplit_once('.').expect("N.N.N").0.to_owned();
    write_files(&src, &[("requirements.txt", "")]);

    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    assert!(log(&out).contains(&format!(
        "No Python version was specified. Using the stack's default: Python {default}"
    )));

    // An old version the stack lacks: the build goes on, saying what and why.
    write_files(&src, &[(".python-version", "# the app's\n3.6\n")]);
    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    let text = log(&out);
    for expected in [
        "-----> Using Python 3.6 specified in .python-version",
        " !     Warning: The requested Python version isn't available on this stack.",
        "asks for Python 3.6",
        &format!("Python {default} ("),
        &format!("continues with the stack's default, Python {default}."),
        &format!("change the version in .python-version to {major}."),
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    // The stack's major version, from runtime.txt (which wins, as on Heroku): no warning.
    write_files(&src, &[("runtime.txt", &format!("python-{major}\n"))]);
    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    let text = log(&out);
    assert!(
        text.contains(&format!("Using Python {major} specified in runtime.txt")),
        "{text}"
    );
    assert!(!text.contains("Warning"), "{text}");
    assert!(text.contains("-----> Restoring cache"), "{text}");

    // An exact patch release the stack lacks: the same series is used, with a warning.
    std::fs::remove_file(src.join("runtime.txt")).expect("rm");
    write_files(&src, &[(".python-version", &format!("{major}.999\n"))]);
    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    assert!(log(&out).contains(&format!(
        "Warning: Python {major}.999 isn't available on this stack; using {default}."
    )));

    // The app's hooks: pre_compile before the install, post_compile with the venv on PATH.
    write_files(
        &src,
        &[
            ("bin/pre_compile", "#!/bin/sh\necho pre > hooks.txt\n"),
            (
                "bin/post_compile",
                "#!/bin/sh\necho \"post $(command -v python)\" >> hooks.txt\n",
            ),
        ],
    );
    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    assert!(
        log(&out).contains("-----> Running bin/post_compile hook"),
        "{}",
        log(&out)
    );
    let app = unpack(&tmp.path().join("slug.tgz"), &tmp.path().join("dyno"));
    let hooks = std::fs::read_to_string(app.join("hooks.txt")).expect("the hooks ran");
    assert!(hooks.starts_with("pre\npost /"), "{hooks}");
    assert!(
        hooks.trim_end().ends_with("/.heroku/python/bin/python"),
        "{hooks}"
    );
    write_files(&src, &[("bin/post_compile", "#!/bin/sh\nexit 3\n")]);
    let out = build_python(&src, tmp.path(), &[]);
    assert!(!out.status.success());
    assert!(
        log(&out).contains(" !     Error: Failed to run the bin/post_compile script."),
        "{}",
        log(&out)
    );
    std::fs::remove_dir_all(src.join("bin")).expect("rm hooks");

    // Malformed files fail the build with Heroku's explanation.
    for (file, content, message) in [
        (
            ".python-version",
            "python-3.11\n",
            "Error: Invalid Python version in .python-version.",
        ),
        (
            ".python-version",
            "3.11\n3.12\n",
            "Error: Multiple Python versions found in .python-version.",
        ),
        (
            ".python-version",
            "# nothing\n",
            "Error: No Python version found in .python-version.",
        ),
        (
            "runtime.txt",
            "3.11\n",
            "Error: Invalid Python version in runtime.txt.",
        ),
    ] {
        let dir = tmp.path().join("bad");
        let _ = std::fs::remove_dir_all(&dir);
        write_files(&dir, &[("requirements.txt", ""), (file, content)]);
        let out = build_python(&dir, tmp.path(), &[]);
        assert!(!out.status.success(), "{file} {content:?} built");
        assert!(
            log(&out).contains(message),
            "{message:?} not in:\n{}",
            log(&out)
        );
    }
}

#[test]
fn package_manager_files_heroku_refuses_fail_the_build_saying_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (files, message) in [
        (
            vec![("requirements.txt", ""), ("uv.lock", "")],
            "Error: Multiple Python package manager files were found.",
        ),
        (
            vec![("Pipfile", "[packages]\n")],
            "Error: No 'Pipfile.lock' found!",
        ),
    ] {
        let src = tmp.path().join("src");
        let _ = std::fs::remove_dir_all(&src);
        write_files(&src, &files);
        let out = build_python(&src, tmp.path(), &[]);
        assert_failed(
            &out,
            "failed to compile Python app",
            &tmp.path().join("slug.tgz"),
        );
        let text = log(&out);
        assert!(text.contains(message), "{message:?} not in:\n{text}");
        if files.len() == 2 {
            assert!(
                text.contains(" !     requirements.txt (pip)\n !     uv.lock (uv)\n"),
                "{text}"
            );
        }
    }
}

/// Builds a lockfile fixture twice and checks that `six` (its one dependency) is importable
/// from the unpacked slug's venv, that the tool stayed in the cache, and that the second build
/// reused the venv.
fn lockfile_project(fixture_name: &str, tool: &str, installing: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = fixture(fixture_name, &tmp.path().join("src"));
    let out = build_python(&src, tmp.path(), &[]);
    assert_ok(&out);
    let text = log(&out);
    assert!(
        text.contains(&format!("-----> Installing {tool}")),
        "{text}"
    );
    assert!(text.contains(installing), "{text}");
    let app = unpack(&tmp.path().join("slug.tgz"), &tmp.path().join("dyno"));
    let import = Command::new(app.join(".heroku/python/bin/python"))
        .args(["-c", "import six; print(six.__version__)"])
        .output()
        .expect("run the slug's python");
    assert_eq!(
        String::from_utf8_lossy(&import.stdout).trim(),
        "1.17.0",
        "{import:?}"
    );
    assert!(
        !list(&tmp.path().join("slug.tgz"))
            .iter()
            .any(|entry| entry.contains(&format!("/{tool}/"))),
        "{tool} itself is not in the slug"
    );

    let again = build_python(&src, tmp.path(), &[]);
    assert_ok(&again);
    let text = log(&again);
    assert!(text.contains("-----> Restoring cache"), "{text}");
    assert!(text.contains("skipping the install"), "{text}");
}

#[test]
fn pipenv_project_installs_from_pipfile_lock() {
    lockfile_project(
        "python-pipenv",
        "pipenv",
        "-----> Installing dependencies from Pipfile.lock with pipenv",
    );
}

#[test]
fn poetry_project_installs_from_poetry_lock() {
    lockfile_project(
        "python-poetry",
        "poetry",
        "-----> Installing dependencies from poetry.lock with poetry",
    );
}

#[test]
fn uv_project_installs_from_uv_lock() {
    lockfile_project(
        "python-uv",
        "uv",
        "-----> Installing dependencies from uv.lock with uv",
    );
}
