//! Helpers shared by the agent's acceptance tests: they drive the real `manifold-agent`
//! binary, as root, against the real kernel.

#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_manifold-agent");

/// Whether the acceptance tests can run here. In CI they must: a skipped acceptance test is a
/// missing one, so there a missing precondition fails the test instead.
pub fn ready() -> bool {
    manifold_test_support::require(
        "agent acceptance test",
        &[
            (manifold_test_support::is_root(), "it needs root"),
            (
                Path::new("/var/lib/manifold/stacks/testing/bin/busybox").exists(),
                "the testing stack is missing: run `rootfs/build-stack testing`",
            ),
        ],
    )
}

/// Runs `manifold-agent run ARGS -- COMMAND` to completion.
pub fn run(args: &[&str], command: &str) -> Output {
    Command::new(BIN)
        .arg("run")
        .args(args)
        .arg("--")
        .arg(command)
        .stdin(Stdio::null())
        .output()
        .expect("run manifold-agent")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `app[...]` lines' messages, in order.
pub fn app_lines(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .filter_map(|l| l.split_once(" app[").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("]: ").map(|(_, m)| m.to_string()))
        .collect()
}

/// The `heroku[...]` lines' messages, in order.
pub fn platform_lines(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .filter_map(|l| l.split_once(" heroku[").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("]: ").map(|(_, m)| m.to_string()))
        .collect()
}

/// Builds a slug (`tar.gz` of `./app`) holding `files` (path under app/, contents, mode).
pub fn slug(dir: &Path, name: &str, files: &[(&str, &str, u32)]) -> PathBuf {
    let path = dir.join(name);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    let mut dirs = std::collections::BTreeSet::new();
    for (file, _, _) in files {
        let mut p = Path::new(file).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header.clone(), "./app/", std::io::empty())
        .unwrap();
    for d in dirs {
        tar.append_data(
            &mut header.clone(),
            Path::new("./app").join(d),
            std::io::empty(),
        )
        .unwrap();
    }
    for (file, contents, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(contents.len() as u64);
        tar.append_data(&mut h, Path::new("./app").join(file), contents.as_bytes())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

pub use manifold_test_support::{free_port, free_ports};

/// A `manifold-agent run` started in the background. Dropping it stops the dyno (SIGTERM,
/// then SIGKILL) so that a failing test does not leave a dyno running.
pub struct Background {
    pub child: Option<std::process::Child>,
}

impl Background {
    pub fn spawn(cmd: &mut Command) -> Background {
        Background {
            child: Some(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap(),
            ),
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Stops the dyno with SIGTERM and collects its output.
    pub fn stop(mut self) -> Output {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.child.take().unwrap().wait_with_output().unwrap()
    }

    /// Reads the dyno's output until a line holds `want`, then stops it as [`Background::stop`]
    /// does; the output returned has every line, those read while waiting included. For
    /// what the supervisor reports on its own time (a web dyno is `up` once its probe
    /// connected, which may come after a client already had an answer).
    pub fn stop_after(mut self, want: &str) -> Output {
        use std::io::{BufRead, Read};
        let mut stdout =
            std::io::BufReader::new(self.child.as_mut().unwrap().stdout.take().unwrap());
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen)
            .lines()
            .any(|l| l.contains(want))
        {
            let read = stdout.read_until(b'\n', &mut seen).unwrap();
            assert!(read > 0, "the dyno ended before a line with {want:?}");
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        stdout.read_to_end(&mut seen).unwrap();
        let mut output = self.child.take().unwrap().wait_with_output().unwrap();
        output.stdout = seen;
        output
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

/// GETs `path` from 127.0.0.1:`port` until it answers 200 (a dyno may still be booting), and
/// returns the whole response. Panics after `within`.
pub fn http_get_ok(port: u16, path: &str, within: std::time::Duration) -> String {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut buf = String::new();
            let ok = |l: &str| l.starts_with("HTTP/1.") && l.contains(" 200");
            if s.read_to_string(&mut buf).is_ok() && buf.lines().next().is_some_and(ok) {
                return buf;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing answered 200 on 127.0.0.1:{port}{path}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Asserts that `lines` (as from [`app_lines`] or [`platform_lines`]) has the line `want`.
pub fn assert_has(lines: &[String], want: &str) {
    assert!(
        lines.iter().any(|l| l == want),
        "no line {want:?} in {lines:?}"
    );
}

/// Builds the isolation tests' probe (`agent/tests/probe/probe.c`) with the host's
/// `cc -static` into `dir`, which is made searchable by the dynos' unprivileged host uid, so
/// that a dyno can bind-mount it (`--mount DIR:/.probe:ro`). Returns the mount argument.
pub fn build_probe(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/probe.c");
    let out = Command::new("cc")
        .args(["-static", "-O1", "-Wall", "-Werror", "-o"])
        .arg(dir.join("probe"))
        .arg(&src)
        .arg("-lpthread")
        .output()
        .expect("the isolation tests need the host's C compiler (cc)");
    assert!(
        out.status.success(),
        "cannot build {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:/.probe:ro", dir.display())
}

/// `name=value` lines (as the probe prints them) as a map.
pub fn key_values(lines: &[String]) -> std::collections::BTreeMap<String, String> {
    lines
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
