//! End-to-end: one-off dynos (`manifold run`, attached over pipes and over a real
//! pseudo-terminal, and detached) and the release phase, on a real scheduler and agent with
//! real dynos. As root, with the `testing` stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::{assert_clean, deploy_tiny, wait_for, Cluster, API_TOKEN, TINY, UP};
use serde_json::Value;

/// Runs the CLI with `input` on its stdin; returns (exit code, stdout, stderr).
fn run_piped(c: &Cluster, args: &[&str], input: &str) -> (i32, String, String) {
    let out = c.cli_with_input(args, input);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_offs(c: &Cluster, app: &str) -> Vec<Value> {
    c.dynos(app)
        .into_iter()
        .filter(|d| d["type"] == "run")
        .collect()
}

/// Piped runs: output, stderr, exit status, `-e`; a detached run's output in the log;
/// `ps` lists one-offs apart; `ps:restart` leaves them; `ps:stop run.N` stops one.
#[test]
fn piped_and_detached_runs() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("runner", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "oneoff");
    c.wait_dynos("oneoff", &["web.1"], "up", UP);

    let (code, out, err) = run_piped(
        &c,
        &[
            "run",
            "-a",
            "oneoff",
            "-e",
            "WHO=e2e",
            "--",
            "read line; echo \"got $line from $WHO on $DYNO\"; echo oops >&2; exit 3",
        ],
        "hello\n",
    );
    assert_eq!(code, 3, "the command's exit status: {out} {err}");
    assert!(out.contains("got hello from e2e on run."), "{out}");
    assert!(err.contains("oops"), "{err}");
    assert!(!out.contains("oops"), "stderr stays apart: {out}");

    // Input larger than one frame and larger than a pipe's buffer arrives whole.
    let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let (code, out, _) = run_piped(&c, &["run", "-a", "oneoff", "--", "wc -l"], &big);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "20000", "{out}");

    // Detached: returns at once; the output is in the log.
    let out = c.ok(&[
        "run:detached",
        "-a",
        "oneoff",
        "--",
        "echo detached-output; sleep 1",
    ]);
    assert!(out.contains("run."), "{out}");
    let log = wait_for("the detached run's line", UP, || {
        let log = c.logs("oneoff", &[]);
        log.lines()
            .any(|l| l.contains(" app[run.") && l.ends_with(": detached-output"))
            .then_some(log)
    });
    assert!(log.contains("Starting process with command `echo detached-output; sleep 1` by e2e"));

    // A long one: listed under `run`, untouched by ps:restart, stopped by ps:stop.
    c.ok(&["run:detached", "-a", "oneoff", "--", "sleep 1000"]);
    let run = wait_for("the one-off to be up", UP, || {
        one_offs(&c, "oneoff")
            .into_iter()
            .find(|d| d["state"] == "up" && d["command"] == "sleep 1000")
    });
    let name = run["name"].as_str().unwrap().to_string();
    wait_for("the detached run to end", UP, || {
        (one_offs(&c, "oneoff").len() == 1).then_some(())
    });
    let n: u32 = name.strip_prefix("run.").unwrap().parse().unwrap();
    assert!((1000..10000).contains(&n), "run.N with four digits: {name}");
    let ps = c.ok(&["ps", "-a", "oneoff"]);
    assert!(ps.contains("=== run: one-off processes (1)"), "{ps}");
    assert!(ps.contains(&format!("{name} (")), "{ps}");
    c.ok(&["ps:restart", "-a", "oneoff"]);
    std::thread::sleep(Duration::from_secs(2));
    let still = one_offs(&c, "oneoff");
    assert!(
        still
            .iter()
            .any(|d| d["name"] == name.as_str() && d["state"] == "up"),
        "ps:restart leaves one-offs alone: {still:?}"
    );
    c.ok(&["ps:stop", &name, "-a", "oneoff"]);
    wait_for("the one-off to be gone", UP, || {
        one_offs(&c, "oneoff").is_empty().then_some(())
    });

    c.ok(&["apps:destroy", "oneoff", "--confirm", "oneoff"]);
    assert_clean(&c, 0);
}

/// A child process on a new pseudo-terminal, and a thread collecting what it writes.
struct Terminal {
    master: std::fs::File,
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

fn set_size(fd: &impl AsRawFd, cols: u16, rows: u16) {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
    assert_eq!(r, 0, "TIOCSWINSZ");
}

impl Terminal {
    fn spawn(c: &Cluster, args: &[&str], cols: u16, rows: u16) -> Terminal {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_size(&pty.master, cols, rows);
        let slave: OwnedFd = pty.slave;
        let mut cmd = Command::new(harness::bins().join("manifold"));
        cmd.args(args)
            .env("MANIFOLD_API", c.api())
            .env("MANIFOLD_API_TOKEN", API_TOKEN)
            .env("USER", "e2e")
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child gets the terminal as
        // its controlling terminal, as a shell would give it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if nix::libc::setsid() < 0 || nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            master,
            child,
            output,
            seen: String::new(),
        }
    }

    fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Waits until the output since the last match contains `what`.
    fn expect(&mut self, what: &str) {
        assert!(
            self.shows_within(what, UP),
            "no {what:?} on the terminal; it shows: {:?}",
            self.seen
        );
    }

    /// Whether the output since the last match comes to contain `what` within `wait`.
    fn shows_within(&mut self, what: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = self.seen.find(what) {
                self.seen.drain(..i + what.len());
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => return false,
            }
        }
    }

    fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + UP;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the CLI did not exit: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `manifold run` on a real terminal: an interactive shell in the dyno with the client's
/// window size, Ctrl-C interrupting the foreground command (not the session), a resize
/// reaching the dyno, and the shell's exit status as the CLI's.
#[test]
fn a_run_on_a_terminal_is_interactive() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("console", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "console");

    let mut t = Terminal::spawn(&c, &["run", "-a", "console", "--", "sh -i"], 100, 30);
    t.expect("up, run.");
    // The CLI also passes COLUMNS and LINES (as Heroku's does), which busybox's `stty`
    // would report instead of the terminal's own size.
    t.type_in("echo $COLUMNS/$LINES; unset COLUMNS LINES; tty; stty size\r");
    t.expect("100/30");
    t.expect("/dev/");
    t.expect("30 100");
    // The marker is computed so that the terminal's echo of the typed line cannot match.
    t.type_in("echo sleeping-$((1+1)); sleep 100; echo not-interrupted\r");
    t.expect("sleeping-2");
    t.type_in("\x03");
    t.type_in("echo after-$((40+2))\r");
    t.expect("after-42");
    assert!(!t.seen.contains("not-interrupted"), "{:?}", t.seen);

    set_size(&t.master, 120, 40);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(t.child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    // The resize travels on its own; ask until the dyno's terminal has it.
    let resized = (0..30).any(|_| {
        t.type_in("stty size\r");
        t.shows_within("40 120", Duration::from_secs(1))
    });
    assert!(
        resized,
        "the dyno's terminal never got 120x40: {:?}",
        t.seen
    );
    t.type_in("exit 5\r");
    assert_eq!(t.wait(), 5, "the shell's status: {:?}", t.seen);
    wait_for("the one-off to be gone", UP, || {
        one_offs(&c, "console").is_empty().then_some(())
    });
    // Only its start and end reach the log, not the session.
    let log = c.logs("console", &[]);
    assert!(
        log.contains("Starting process with command `sh -i`"),
        "{log}"
    );
    assert!(
        !log.contains("after-42"),
        "an attached session stays out of the log: {log}"
    );

    c.ok(&["apps:destroy", "console", "--confirm", "console"]);
    assert_clean(&c, 0);
}

/// A client that goes away: its one-off is stopped after the grace (SIGHUP). A client that
/// sends and gets nothing: stopped after the idle timeout, the CLI told why.
#[test]
fn disconnected_and_idle_runs_are_stopped() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start_with(
        Duration::from_secs(10),
        &["--run-reconnect-grace", "2s", "--run-idle-timeout", "4s"],
    );
    c.add_agent("hangup", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "hangup");

    let mut child = c.spawn_cli(&[
        "run",
        "-a",
        "hangup",
        "--",
        "trap 'echo got-hup' HUP; while true; do echo tick; sleep 1; done",
    ]);
    wait_for("the one-off to be up", UP, || {
        one_offs(&c, "hangup")
            .into_iter()
            .find(|d| d["state"] == "up")
    });
    child.kill().unwrap();
    let _ = child.wait();
    let gone = Instant::now();
    wait_for("the orphaned one-off to stop", UP, || {
        one_offs(&c, "hangup").is_empty().then_some(())
    });
    assert!(
        gone.elapsed() >= Duration::from_secs(2),
        "not before the grace"
    );
    let log = c.logs("hangup", &[]);
    assert!(
        log.contains("Client connection closed. Sending SIGHUP to all processes"),
        "{log}"
    );

    // Idle: no output, stdin open but silent.
    let mut child = c.spawn_cli(&["run", "-a", "hangup", "--", "sleep 1000"]);
    let status = wait_for("the idle run to end", UP, || child.try_wait().unwrap());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("no input or output for 4s"), "{err}");
    wait_for("the idle one-off to stop", UP, || {
        one_offs(&c, "hangup").is_empty().then_some(())
    });

    c.ok(&["apps:destroy", "hangup", "--confirm", "hangup"]);
    assert_clean(&c, 0);
}

/// The tiny app with a release phase: it prints its release's marker and fails when
/// `FAIL_RELEASE` is set.
fn tiny_with_release_phase(dir: &std::path::Path) -> String {
    let app = dir.join("tiny-release");
    let status = Command::new("cp")
        .args(["-r", TINY])
        .arg(&app)
        .status()
        .unwrap();
    assert!(status.success());
    let mut procfile = std::fs::OpenOptions::new()
        .append(true)
        .open(app.join("Procfile"))
        .unwrap();
    writeln!(
        procfile,
        "release: echo \"migrating with GREETING=${{GREETING:-none}}\"; if [ -n \"${{FAIL_RELEASE:-}}\" ]; then echo 'migration failed' >&2; exit 4; fi"
    )
    .unwrap();
    app.to_string_lossy().into_owned()
}

fn web_versions(c: &Cluster, app: &str) -> Vec<u64> {
    c.dynos(app)
        .iter()
        .filter(|d| d["type"] == "web" && d["state"] == "up")
        .map(|d| d["release"]["version"].as_u64().unwrap())
        .collect()
}

/// A release command runs before each release goes live: its output reaches the deploy
/// and the log; exit 0 rolls the formation, non-zero leaves the last release serving and
/// marks the new one failed; a rollback does not run it.
#[test]
fn the_release_phase_gates_each_release() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("releaser", 20);
    c.wait_hosts(1);
    let source = tiny_with_release_phase(c.dir.path());
    c.ok(&["apps:create", "phased", "--stack", "testing"]);
    let out = c.ok(&["deploy", &source, "-a", "phased"]);
    assert!(out.contains("Running release command"), "{out}");
    assert!(out.contains("migrating with GREETING=none"), "{out}");
    assert!(out.contains("Released v1"), "{out}");
    c.wait_dynos("phased", &["web.1"], "up", UP);
    let (status, _) = c.route("phased", "/cgi-bin/greeting", &[]);
    assert_eq!(status, 200);

    // A failing release command: v2 is failed, v1 keeps serving.
    let out = c.cli(&["config:set", "FAIL_RELEASE=1", "-a", "phased"]);
    assert!(out.status.success(), "{out:?}");
    let releases = wait_for("v2 to fail", UP, || {
        let r = c.json(&["releases", "-a", "phased"]);
        (r[1]["status"] == "failed").then_some(r)
    });
    assert_eq!(releases[0]["current"], true, "{releases}");
    assert_eq!(releases[1]["current"], false, "{releases}");
    let shown = c.ok(&["releases", "-a", "phased"]);
    assert!(shown.contains("failed"), "{shown}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(web_versions(&c, "phased"), vec![1], "v1 keeps running");
    let (status, _) = c.route("phased", "/cgi-bin/greeting", &[]);
    assert_eq!(status, 200, "and serving");
    let log = c.logs("phased", &[]);
    assert!(log.contains("migration failed"), "{log}");
    assert!(log.contains("Release v2 command failed"), "{log}");

    // A succeeding one rolls the formation onto the new release.
    c.ok(&["config:unset", "FAIL_RELEASE", "-a", "phased"]);
    wait_for("the formation on v3", UP, || {
        (web_versions(&c, "phased") == vec![3]).then_some(())
    });
    let (status, _) = c.route("phased", "/cgi-bin/greeting", &[]);
    assert_eq!(status, 200);

    // A deploy whose release command fails: the CLI says so, v3 keeps serving.
    c.ok(&["config:set", "FAIL_RELEASE=1", "-a", "phased"]);
    wait_for("v4 to fail", UP, || {
        let r = c.json(&["releases", "-a", "phased"]);
        (r[3]["status"] == "failed").then_some(())
    });
    let out = c.cli(&["deploy", &source, "-a", "phased"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Release phase failed"), "{text}");
    assert_eq!(web_versions(&c, "phased"), vec![3]);

    // A rollback skips the release phase (it would fail here).
    c.ok(&["releases:rollback", "v3", "-a", "phased"]);
    let releases = c.json(&["releases", "-a", "phased"]);
    let last = releases.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "succeeded", "{releases}");
    assert_eq!(last["current"], true, "{releases}");

    c.ok(&["apps:destroy", "phased", "--confirm", "phased"]);
    assert_clean(&c, 0);
}
