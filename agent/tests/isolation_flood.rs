//! Isolation: a dyno that floods its output (issue 16, item 6), run for real with
//! `manifold-agent run`. Its shim must still serve stops, the grace period's SIGKILL and R10,
//! log at most the dyno's rate (with Heroku's L10 notice for the rest), relay the flood on
//! the dyno's own CPU, and leave nothing behind.
//!
//! Every dyno here is watched: one still running well past its bounds is killed (shim and
//! supervisor) and collected with `gc`, so a regression fails the test instead of hanging it.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Lines per second the flooding dynos may log (`--log-rate`); their burst is five seconds'.
const RATE: u64 = 100;
const BURST: u64 = 5 * RATE;
/// Longer than any dyno here may take once told to stop: past it the test fails.
const WATCHDOG: Duration = Duration::from_secs(60);

/// A `manifold-agent run` whose output is read as it comes, and the dyno id it printed.
struct Flood {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    id: String,
    shim: i32,
    started: Instant,
}

impl Flood {
    /// Runs `command` (after it prints `id=$(hostname)`) as dyno `name`.
    fn start(name: &str, extra: &[&str], command: &str) -> Flood {
        let rate = RATE.to_string();
        let mut child = Command::new(BIN)
            .args(["run", "--name", name, "--grace", "3s", "--log-rate", &rate])
            .args(extra)
            .arg("--")
            .arg(format!("echo id=$(hostname); {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (id_tx, id_rx) = mpsc::channel();
        let all = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some((_, id)) = line.split_once("]: id=") {
                    let _ = id_tx.send(id.to_string());
                }
                all.lock().unwrap().push(line);
            }
        });
        let started = Instant::now();
        let id = match id_rx.recv_timeout(WATCHDOG) {
            Ok(id) => id,
            Err(_) => {
                let _ = child.kill();
                panic!("the dyno did not print its id: {:?}", lines.lock().unwrap());
            }
        };
        let pid_file = dyno_dir(&id).join("shim.pid");
        let shim = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Flood {
            child: Some(child),
            lines,
            id,
            shim,
            started,
        }
    }

    /// Asks for a stop as Ctrl-C or a service manager would: SIGTERM to `run`.
    fn stop(&self) {
        kill(self.run_pid(), Signal::SIGTERM).unwrap();
    }

    fn run_pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// Waits for `run` to exit; past the watchdog, kills and collects the dyno and fails.
    fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + WATCHDOG;
        let mut child = self.child.take().unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                self.kill_and_collect();
                panic!(
                    "the flooding dyno {} was still running {WATCHDOG:?} later; last lines: {:?}",
                    self.id,
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends with the pipe, just after `run` exits.
        let until = Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.lines) > 1 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        (status, self.lines.lock().unwrap().clone())
    }

    fn tail(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(10)..].to_vec()
    }

    /// SIGKILL to the shim and `run`, then `gc`: what a failing test must not leave behind.
    fn kill_and_collect(&mut self) {
        let _ = kill(Pid::from_raw(self.shim), Signal::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(BIN).arg("gc").output();
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_and_collect();
        }
    }
}

fn dyno_dir(id: &str) -> PathBuf {
    Path::new("/var/lib/manifold/dynos").join(id)
}

/// The messages of `source[...]` lines (`app` or `heroku`).
fn messages(lines: &[String], source: &str) -> Vec<String> {
    let tag = format!(" {source}[");
    lines
        .iter()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once("]: ").map(|(_, m)| m.to_string()))
        .collect()
}

/// The flood's app lines: after the `id=` line, before the last one (which the kill may
/// have cut short).
fn between(lines: &[String]) -> Vec<String> {
    let app = messages(lines, "app");
    match app.len() {
        0..=2 => Vec::new(),
        n => app[1..n - 1].to_vec(),
    }
}

/// Checks the platform lines say the shim dropped lines (L10), and that no more app lines
/// were logged than the rate allows over `elapsed` (with a little slack for the start).
fn assert_rate_limited(lines: &[String], elapsed: Duration) {
    let platform = messages(lines, "heroku");
    let l10: Vec<&String> = platform
        .iter()
        .filter(|l| l.starts_with("Error L10 (output buffer overflow): "))
        .collect();
    assert!(!l10.is_empty(), "no L10 notice in {platform:?}");
    let dropped: u64 = l10
        .iter()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "{l10:?}");
    // The notice comes once a second at most, not once a line.
    assert!(
        l10.len() as u64 <= elapsed.as_secs() + 2,
        "{} notices in {elapsed:?}",
        l10.len()
    );
    let app = messages(lines, "app").len() as u64;
    let allowed = BURST + RATE * (elapsed.as_secs() + 1) + 10;
    assert!(
        app <= allowed,
        "{app} app lines in {elapsed:?}, at most {allowed} allowed"
    );
    assert!(app > 1, "the flood was logged, up to the rate");
}

/// Nothing of the dyno is left: its directory, container state, mounts, cgroups, address
/// lease, and its shim.
fn assert_gone(id: &str, shim: i32) {
    assert!(!dyno_dir(id).exists(), "dyno directory {id} left");
    assert!(
        !Path::new("/run/manifold/containers").join(id).exists(),
        "container state {id} left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(id)),
        "a mount of {id} left"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
    {
        let dir = hierarchy.path().join("manifold").join(id);
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
    if let Ok(leases) = std::fs::read_dir("/var/lib/manifold/net/leases") {
        for lease in leases.filter_map(Result::ok) {
            let text = std::fs::read_to_string(lease.path()).unwrap_or_default();
            assert!(!text.contains(id), "lease {text} left");
        }
    }
    let shim_cmdline = std::fs::read(format!("/proc/{shim}/cmdline")).unwrap_or_default();
    assert!(
        !shim_cmdline.split(|&b| b == 0).any(|a| a == b"shim"),
        "the shim {shim} still runs"
    );
}

/// Stops a flooding dyno with `run --grace 3s` and checks how it ended.
fn stop_flood(name: &str, command: &str, status: i32) -> Vec<String> {
    if !ready() {
        return Vec::new();
    }
    let mut dyno = Flood::start(name, &[], command);
    // Long enough for the burst to be spent and the pipe to stay full.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    dyno.stop();
    let (exit, lines) = dyno.wait();
    let stopped_in = asked.elapsed();
    let platform = messages(&lines, "heroku");
    assert_eq!(exit.code(), Some(status), "{platform:?}");
    assert_has(&platform, "Stopping all processes with SIGTERM");
    assert_has(&platform, &format!("Process exited with status {status}"));
    assert_has(&platform, "State changed from up to down");
    // Grace (3 s) plus a generous bound: before the fix it was still running after 40 s.
    assert!(
        stopped_in < Duration::from_secs(3 + 12),
        "stopped {stopped_in:?} after the request: {platform:?}"
    );
    assert_rate_limited(&lines, dyno.started.elapsed());
    assert_gone(&dyno.id, dyno.shim);
    lines
}

#[test]
fn a_dyno_flooding_stdout_that_ignores_sigterm_is_killed_after_its_grace() {
    let lines = stop_flood("worker.1", "trap '' TERM; yes", 137);
    if lines.is_empty() {
        return;
    }
    let platform = messages(&lines, "heroku");
    assert!(
        platform
            .iter()
            .any(|l| l == "Error R12 (Exit timeout) -> At least one process failed to exit within 3 seconds of SIGTERM"),
        "{platform:?}"
    );
    assert_has(&platform, "Stopping remaining processes with SIGKILL");
    assert!(between(&lines).iter().all(|l| l == "y"));
}

#[test]
fn a_dyno_flooding_stderr_stops_at_sigterm() {
    let lines = stop_flood("worker.1", "exec yes flood >&2", 143);
    if lines.is_empty() {
        return;
    }
    let platform = messages(&lines, "heroku");
    assert!(
        !platform.iter().any(|l| l.starts_with("Error R12")),
        "SIGTERM reached the flood: {platform:?}"
    );
    assert!(between(&lines).iter().all(|l| l == "flood"));
}

#[test]
fn a_dyno_writing_one_endless_line_is_split_limited_and_killed_after_its_grace() {
    let lines = stop_flood("worker.1", "trap '' TERM; tr '\\0' x < /dev/zero", 137);
    if lines.is_empty() {
        return;
    }
    assert!(
        between(&lines).iter().all(|l| l.len() == 10_000),
        "split at Heroku's 10,000 bytes"
    );
}

#[test]
fn a_web_dyno_flooding_stdout_without_binding_its_port_gets_r10() {
    if !ready() {
        return;
    }
    let mut dyno = Flood::start("web.1", &["--boot-timeout", "2s"], "exec yes");
    let (exit, lines) = dyno.wait();
    let platform = messages(&lines, "heroku");
    assert_eq!(exit.code(), Some(137), "{platform:?}");
    let r10 = "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds of launch";
    let tail: Vec<&str> = platform
        .iter()
        .map(String::as_str)
        .skip_while(|l| *l != r10)
        .filter(|l| !l.starts_with("Error L10"))
        .collect();
    assert_eq!(
        tail,
        vec![
            r10,
            "Stopping process with SIGKILL",
            "Process exited with status 137",
            "State changed from starting to crashed",
        ],
        "{platform:?}"
    );
    assert_rate_limited(&lines, dyno.started.elapsed());
    assert_gone(&dyno.id, dyno.shim);
}

/// CPU time used by the cgroup (`cpuacct.usage`, nanoseconds, its children included).
fn cpuacct_usage(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cpuacct.usage"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The CPU time of a process (user + system), in nanoseconds.
fn process_cpu(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    ticks * 1_000_000_000 / hz
}

#[test]
fn the_shim_relays_a_flood_on_the_dynos_cpu_and_leaves_no_cgroup() {
    if !ready() {
        return;
    }
    let cgroup = Path::new("/sys/fs/cgroup");
    if cgroup.join("cgroup.controllers").exists() {
        panic!("this host has cgroup v2 only, where the shim stays outside the dyno's cgroup");
    }
    let mut dyno = Flood::start("worker.1", &[], "exec yes");
    let cpuacct = cgroup.join("cpuacct/manifold").join(&dyno.id);
    let shim_dir = cpuacct.join("shim");
    let procs = std::fs::read_to_string(shim_dir.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.lines().collect::<Vec<_>>(),
        vec![dyno.shim.to_string()],
        "the shim alone is in the dyno's cpuacct child"
    );
    let cpu_shim = cgroup.join("cpu/manifold").join(&dyno.id).join("shim");
    assert_eq!(
        std::fs::read_to_string(cpu_shim.join("cgroup.procs"))
            .unwrap()
            .trim(),
        dyno.shim.to_string()
    );
    assert_eq!(
        std::fs::read_to_string(cpu_shim.join("cpu.shares"))
            .unwrap()
            .trim(),
        "262144"
    );
    // Only the CPU hierarchies: a stop freezes (freezer) and signals (devices) the dyno's
    // processes, and the shim counts them (memory); it is none of them.
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", dyno.shim)).unwrap();
    for line in own.lines() {
        let controllers = line.split(':').nth(1).unwrap();
        if controllers.split(',').any(|c| c == "cpu" || c == "cpuacct") {
            assert!(
                line.ends_with(&format!("/manifold/{}/shim", dyno.id)),
                "{own}"
            );
        } else {
            assert!(!line.contains(&dyno.id), "{own}");
        }
    }
    let before = cpuacct_usage(&shim_dir);
    std::thread::sleep(Duration::from_secs(2));
    let shim_usage = cpuacct_usage(&shim_dir);
    let dyno_usage = cpuacct_usage(&cpuacct);
    let shim_total = process_cpu(dyno.shim);
    assert!(
        shim_usage > before + 20_000_000,
        "relaying `yes` for 2 s costs the shim CPU, counted in its cgroup: {before} → {shim_usage} ns"
    );
    assert!(
        dyno_usage >= shim_usage,
        "the dyno's usage includes its shim's: {dyno_usage} < {shim_usage}"
    );
    assert!(
        shim_usage <= shim_total + 50_000_000,
        "the cgroup counts the shim's own time ({shim_usage} ns), which is at most its total ({shim_total} ns)"
    );
    dyno.stop();
    let (exit, lines) = dyno.wait();
    assert_eq!(exit.code(), Some(143), "{:?}", messages(&lines, "heroku"));
    assert_has(&messages(&lines, "heroku"), "State changed from up to down");
    assert_gone(&dyno.id, dyno.shim);
}

/// The shim outlives its supervisor (an agent restart) while in the dyno's cgroup; a stop
/// through it still ends the dyno. Then a shim that dies in the dyno's cgroup (SIGKILL) is
/// collected by `gc`, its cgroup with the dyno's.
#[test]
fn a_flooding_dyno_is_stopped_through_its_shim_alone_and_a_dead_shim_is_collected() {
    if !ready() {
        return;
    }
    let stream_has = |id: &str, what: &str| {
        ["stream.jsonl", "stream.jsonl.1"]
            .iter()
            .any(|f| std::fs::read_to_string(dyno_dir(id).join(f)).is_ok_and(|t| t.contains(what)))
    };
    // The supervisor dies; whoever comes next stops the dyno through the shim.
    let mut dyno = Flood::start("worker.1", &[], "exec yes");
    let mut run = dyno.child.take().unwrap();
    run.kill().unwrap();
    run.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    kill(Pid::from_raw(dyno.shim), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + WATCHDOG;
    while !stream_has(&dyno.id, "\"type\":\"cleaned\"") {
        if Instant::now() >= deadline {
            dyno.kill_and_collect();
            panic!("the shim did not finish the stop of {}", dyno.id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stream_has(&dyno.id, "\"type\":\"stopping\""));
    assert!(stream_has(&dyno.id, "\"type\":\"exited\""));
    assert!(stream_has(&dyno.id, "\"type\":\"lines_dropped\""));
    let text = std::fs::read_to_string(dyno_dir(&dyno.id).join("stream.jsonl")).unwrap();
    assert!(
        text.contains("\"type\":\"cleaned\",\"errors\":[]"),
        "the shim left its cgroup and the dyno's were removed: {}",
        &text[text.len().saturating_sub(600)..]
    );
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_gone(&dyno.id, dyno.shim);

    // The shim is killed in the dyno's cgroup, the dyno flooding on.
    let mut dyno = Flood::start("worker.1", &[], "exec yes");
    let mut run = dyno.child.take().unwrap();
    run.kill().unwrap();
    run.wait().unwrap();
    kill(Pid::from_raw(dyno.shim), Signal::SIGKILL).unwrap();
    let shim_gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", dyno.shim)).exists() && Instant::now() < shim_gone {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gc = Command::new(BIN).arg("gc").output().unwrap();
    assert!(
        gc.status.success(),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert_gone(&dyno.id, dyno.shim);
}
