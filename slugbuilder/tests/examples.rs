//! The example apps built by the real built-in buildpacks against the real package
//! registries (PyPI, npm), then run from their unpacked slugs the way a dyno runs them: at a
//! different path than they were built at, `.profile.d` sourced, `PORT` set.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A process type started from an unpacked slug; killed with its group when dropped.
struct Dyno(Child);

impl Dyno {
    fn start(app: &Path, command: &str, env: &[(&str, String)]) -> Dyno {
        let script =
            format!("for f in .profile.d/*.sh; do [ -f \"$f\" ] && . \"$f\"; done; exec {command}");
        let child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(app)
            .env("HOME", app)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("start the process type");
        Dyno(child)
    }

    /// Lines of standard output, as they come.
    fn lines(&mut self) -> mpsc::Receiver<String> {
        let stdout = self.0.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits"));
        let _ = killpg(pid, signal);
    }
}

impl Drop for Dyno {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

use manifold_test_support::free_port;

/// `GET path` on localhost:port, retried until the server answers or 30 s pass.
fn http_get(port: u16, path: &str) -> String {
    http_get_with(port, path, &[])
}

/// [`http_get`] with extra header lines (`Name: value`).
fn http_get_with(port: u16, path: &str, headers: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    loop {
        let attempt = TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "GET {path} HTTP/1.0\r\nHost: localhost\r\n{extra}\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        });
        match attempt {
            Ok(response) if !response.is_empty() => return response,
            _ if Instant::now() > deadline => panic!("no answer on port {port}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Builds an example twice with one cache and runs its `web` and `worker` from the slug.
/// Returns the unpacked app for example-specific checks.
fn build_and_run(example: &str, detected: &str, tmp: &Path) -> std::path::PathBuf {
    let src = repo().join("examples").join(example);
    let out = tmp.join("slug.tgz");
    let cache = tmp.join("cache");
    let cache_arg = cache.to_str().expect("utf8");

    let cold = build(&src, &out, &["--cache-dir", cache_arg]);
    assert_ok(&cold);
    let (cold_log, _) = text(&cold);
    assert!(
        cold_log.contains(&format!("-----> {detected} app detected")),
        "{cold_log}"
    );
    assert!(!cold_log.contains("Restoring cache"), "{cold_log}");
    let cold_meta = metadata(&out);

    let warm = build(&src, &out, &["--cache-dir", cache_arg]);
    assert_ok(&warm);
    let (warm_log, _) = text(&warm);
    assert!(warm_log.contains("-----> Restoring cache"), "{warm_log}");
    let meta = metadata(&out);
    let (cold_ms, warm_ms) = (
        cold_meta["duration_ms"].as_u64().expect("cold duration"),
        meta["duration_ms"].as_u64().expect("warm duration"),
    );
    assert!(
        warm_ms < cold_ms,
        "the warm build ({warm_ms} ms) is not faster than the cold one ({cold_ms} ms)"
    );

    let types = meta["process_types"].as_object().expect("process_types");
    let mut names: Vec<&str> = types.keys().map(String::as_str).collect();
    names.sort();
    assert!(
        names.contains(&"web") && names.contains(&"worker"),
        "{names:?}"
    );
    assert_eq!(meta["buildpacks"][0]["name"], detected);

    // Run from a path that is not the build directory, as a dyno does at /app.
    let app = unpack(&out, &tmp.join("dyno"));
    let port = free_port();
    let web = Dyno::start(
        &app,
        types["web"].as_str().expect("web command"),
        &[("PORT", port.to_string()), ("DYNO", "web.1".to_owned())],
    );
    let response = http_get(port, "/");
    assert!(response.starts_with("HTTP/1."), "{response}");
    assert!(response.contains("Hello from web.1"), "{response}");
    drop(web);

    let mut worker = Dyno::start(
        &app,
        types["worker"].as_str().expect("worker command"),
        &[
            ("WORKER_INTERVAL", "0.2".to_owned()),
            ("DYNO", "worker.1".to_owned()),
        ],
    );
    let lines = worker.lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("worker: tick 2")) {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("worker logged no second tick: {seen:?}"),
        }
    }
    worker.signal(Signal::SIGTERM);
    let status = worker.0.wait().expect("worker exits");
    assert!(status.success(), "worker exited with {status} on SIGTERM");
    app
}

#[test]
fn python_example_builds_caches_and_runs_from_its_slug() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = build_and_run("python-web", "Python", tmp.path());
    // .slugignore in the example names README.md.
    assert!(!app.join("README.md").exists());
    assert!(app.join("app.py").exists());
    // Console scripts do not name the build directory.
    let pip = std::fs::read_to_string(app.join(".heroku/python/bin/pip")).expect("pip script");
    assert!(pip.starts_with("#!/usr/bin/env python3\n"), "{pip}");
    assert!(app.join(".profile.d/python.sh").exists());
}

#[test]
fn node_example_builds_caches_and_runs_from_its_slug() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let app = build_and_run("node-web", "Node.js", tmp.path());
    assert!(app.join("node_modules/ms/package.json").exists());
    // `npm run build` ran.
    assert!(app.join("build-info.json").exists());
    assert!(app.join(".profile.d/nodejs.sh").exists());
}

/// Builds an example (cold cache at `tmp/cache`, config vars `env`), checks which buildpack
/// built it, and starts its `web` process from the unpacked slug on a free port.
fn serve(
    example: &str,
    detected: &str,
    env: &[(&str, &str)],
    tmp: &Path,
) -> (String, std::path::PathBuf, Dyno, u16) {
    let src = repo().join("examples").join(example);
    let out = tmp.join("slug.tgz");
    let env_dir = tmp.join("env");
    let _ = std::fs::remove_dir_all(&env_dir);
    std::fs::create_dir_all(&env_dir).expect("mkdir env");
    for (name, value) in env {
        std::fs::write(env_dir.join(name), value).expect("write config var");
    }
    let built = build(
        &src,
        &out,
        &[
            "--cache-dir",
            tmp.join("cache").to_str().expect("utf8"),
            "--env-dir",
            env_dir.to_str().expect("utf8"),
        ],
    );
    assert_ok(&built);
    let text = log(&built);
    assert!(
        text.contains(&format!("-----> {detected} app detected")),
        "{text}"
    );
    let meta = metadata(&out);
    let web = meta["process_types"]["web"]
        .as_str()
        .expect("a web process")
        .to_owned();
    let dyno = tmp.join("dyno");
    let _ = std::fs::remove_dir_all(&dyno);
    let app = unpack(&out, &dyno);
    let port = free_port();
    let web = Dyno::start(
        &app,
        &web,
        &[("PORT", port.to_string()), ("DYNO", "web.1".to_owned())],
    );
    (text, app, web, port)
}

/// A Heroku Django app: collectstatic ran at build time (else whitenoise's manifest storage
/// makes every page a 500), pages and the hashed static file answer 200 when the router says
/// the request came over https, and plain http is redirected to https. Then the same app
/// with DISABLE_COLLECTSTATIC, and with a stylesheet collectstatic cannot process. Slow: one
/// cold build installing Django (about a minute), then three from the cache.
#[test]
fn django_example_collects_static_files_and_serves_them_behind_https() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (text, app, web, port) = serve("django-web", "Python", &[], tmp.path());
    assert!(
        text.contains("-----> Using Python 3.11 specified in .python-version"),
        "{text}"
    );
    assert!(
        text.contains("-----> $ python manage.py collectstatic --noinput"),
        "{text}"
    );
    assert!(app.join("staticfiles/staticfiles.json").exists());

    let https = ["X-Forwarded-Proto: https"];
    let page = http_get_with(port, "/", &https);
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    assert!(page.contains("<h1>Hello from web.1</h1>"), "{page}");
    let css = page
        .split("href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a stylesheet link")
        .to_owned();
    assert!(
        css.starts_with("/static/hello.") && css.ends_with(".css"),
        "hashed name: {css}"
    );
    let file = http_get_with(port, &css, &https);
    assert!(file.contains(" 200 "), "{file}");
    assert!(file.contains("font-family: sans-serif"), "{file}");
    let plain = http_get(port, "/");
    assert!(plain.contains(" 301 "), "{plain}");
    assert!(
        plain
            .to_ascii_lowercase()
            .contains("location: https://localhost/"),
        "{plain}"
    );
    drop(web);

    // The same app with collectstatic turned off, from the cache.
    let (text, app, web, _) = serve(
        "django-web",
        "Python",
        &[("DISABLE_COLLECTSTATIC", "1")],
        tmp.path(),
    );
    drop(web);
    assert!(text.contains("-----> Restoring cache"), "{text}");
    assert!(
        text.contains(
            "Skipping Django collectstatic since the env var DISABLE_COLLECTSTATIC is set."
        ),
        "{text}"
    );
    assert!(!app.join("staticfiles").exists());

    // A stylesheet naming a file that does not exist: collectstatic fails, so does the build.
    let src = tmp.path().join("broken");
    copy_dir(&repo().join("examples/django-web"), &src);
    write_files(
        &src,
        &[(
            "static/hello.css",
            "body { background: url(missing.png); }\n",
        )],
    );
    let out = tmp.path().join("broken.tgz");
    let failed = build(
        &src,
        &out,
        &[
            "--cache-dir",
            tmp.path().join("cache").to_str().expect("utf8"),
        ],
    );
    assert_failed(&failed, "failed to compile Python app", &out);
    let text = log(&failed);
    for expected in [
        " !     Error: Unable to generate Django static files.",
        " !     The 'python manage.py collectstatic --noinput' Django",
        "DISABLE_COLLECTSTATIC=1",
        "missing.png",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

/// Copies a directory tree with `cp -a`.
fn copy_dir(src: &Path, dest: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dest)
        .status()
        .expect("run cp");
    assert!(status.success());
}

#[test]
fn flask_example_serves_on_gunicorn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, app, _web, port) = serve("flask-web", "Python", &[], tmp.path());
    // gunicorn's settings from .profile.d, as on Heroku.
    let env = Command::new("bash")
        .args([
            "-c",
            ". .profile.d/python.sh; echo \"$FORWARDED_ALLOW_IPS|$GUNICORN_CMD_ARGS|$WEB_CONCURRENCY\"",
        ])
        .current_dir(&app)
        .env("HOME", &app)
        .env_remove("WEB_CONCURRENCY")
        .env_remove("GUNICORN_CMD_ARGS")
        .output()
        .expect("run bash");
    let env = String::from_utf8_lossy(&env.stdout);
    let fields: Vec<&str> = env.trim().split('|').collect();
    assert_eq!(fields[..2], ["*", "--access-logfile -"], "{env}");
    assert!(fields[2].parse::<u32>().is_ok_and(|n| n >= 1), "{env}");
    let page = http_get(port, "/");
    assert!(page.contains(" 200 "), "{page}");
    assert!(page.contains("Hello from web.1 (Flask)"), "{page}");
}

#[test]
fn express_example_serves_with_npm_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (text, _, _web, port) = serve("express-web", "Node.js", &[], tmp.path());
    assert!(
        text.contains("Default types for buildpack -> web"),
        "{text}"
    );
    let page = http_get(port, "/");
    assert!(page.contains(" 200 "), "{page}");
    assert!(page.contains("Hello from web.1 (Express)"), "{page}");
}

#[test]
fn procfile_example_serves_with_the_generic_buildpack() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, _, _web, port) = serve("procfile-web", "Generic", &[], tmp.path());
    let page = http_get(port, "/");
    assert!(page.contains(" 200 "), "{page}");
    assert!(page.contains("Hello from a Procfile-only app"), "{page}");
}
