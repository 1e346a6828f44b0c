//! Running buildpack scripts and `git`: output streamed as it comes, a deadline enforced.
//!
//! Each script runs in its own process group so that a timeout kills everything it started,
//! not just the script. Output is read by one thread per pipe and the exit status by a third,
//! all feeding one channel that the caller's thread drains with `recv_timeout(deadline)`:
//! nothing polls, so a script that ends is noticed at once (this is most of the slugbuilder's
//! overhead over running the scripts by hand).

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long output is still drained after the script exited and its process group was
/// killed: a process that left the group (`setsid`) may hold the pipe open forever.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Where a script's standard output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stdout {
    /// Streamed to the build log, like its standard error.
    Log,
    /// Kept and returned (`bin/detect`'s name, `bin/release`'s YAML).
    Capture,
}

/// A script that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    /// Standard output when [`Stdout::Capture`] was asked for; empty otherwise.
    pub stdout: Vec<u8>,
}

/// Why a buildpack script or `git` did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} did not finish before the deadline and was killed")]
    TimedOut { program: String },
    #[error("cannot write the build log")]
    Log { source: io::Error },
}

enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Closed,
    Exited(io::Result<ExitStatus>),
}

/// Runs `command` with stdin closed, standard error streamed to `log`, until it exits or
/// `deadline` passes (then its whole process group is killed).
pub(crate) fn run(
    command: &mut Command,
    stdout: Stdout,
    deadline: Instant,
    log: &mut dyn Write,
) -> Result<Finished, RunError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })?;
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (tx, rx) = mpsc::channel();
    let mut open_pipes = 0;
    if let Some(pipe) = child.stdout.take() {
        forward(pipe, tx.clone(), Event::Stdout);
        open_pipes += 1;
    }
    if let Some(pipe) = child.stderr.take() {
        forward(pipe, tx.clone(), Event::Stderr);
        open_pipes += 1;
    }
    thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });

    let mut captured = Vec::new();
    let mut status = None;
    let mut timed_out = false;
    let mut stop_at = deadline;
    while open_pipes > 0 || status.is_none() {
        let event = match rx.recv_timeout(stop_at.saturating_duration_since(Instant::now())) {
            Ok(event) => event,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if timed_out || status.is_some() {
                    // Output still open after the grace period: give up on it.
                    break;
                }
                timed_out = true;
                let _ = killpg(group, Signal::SIGKILL);
                stop_at = Instant::now() + DRAIN_GRACE;
                continue;
            }
        };
        match event {
            Event::Stdout(bytes) if stdout == Stdout::Capture => captured.extend(bytes),
            Event::Stdout(bytes) | Event::Stderr(bytes) => {
                log.write_all(&bytes)
                    .and_then(|()| log.flush())
                    .map_err(|source| RunError::Log { source })?;
            }
            Event::Closed => open_pipes -= 1,
            Event::Exited(result) => {
                // Whatever the script left running in its group goes with it, as on Heroku;
                // the group id cannot be reused while any member is alive.
                let _ = killpg(group, Signal::SIGKILL);
                status = Some(result.map_err(|source| RunError::Spawn {
                    program: program.clone(),
                    source,
                })?);
                stop_at = stop_at.min(Instant::now() + DRAIN_GRACE);
            }
        }
    }
    match status {
        Some(status) if !timed_out => Ok(Finished {
            status,
            stdout: captured,
        }),
        _ => Err(RunError::TimedOut { program }),
    }
}

/// Copies a pipe to the channel in chunks as they arrive, then reports that it closed.
fn forward(
    mut pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<Event>,
    wrap: fn(Vec<u8>) -> Event,
) {
    thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut command = Command::new("bash");
        command.arg("-c").arg(script);
        command
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn streams_output_and_returns_status() {
        let mut log = Vec::new();
        let finished = run(
            &mut sh("echo out; echo err >&2; exit 3"),
            Stdout::Log,
            far(),
            &mut log,
        )
        .expect("run");
        assert_eq!(finished.status.code(), Some(3));
        let log = String::from_utf8(log).expect("utf8");
        assert!(log.contains("out\n") && log.contains("err\n"), "{log}");
    }

    #[test]
    fn captures_stdout_apart_from_stderr() {
        let mut log = Vec::new();
        let finished = run(
            &mut sh("echo name; echo note >&2"),
            Stdout::Capture,
            far(),
            &mut log,
        )
        .expect("run");
        assert_eq!(finished.stdout, b"name\n");
        assert_eq!(log, b"note\n");
    }

    #[test]
    fn deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("survivor");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let err = run(&mut sh(&script), Stdout::Log, deadline, &mut Vec::new())
            .expect_err("must time out");
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a background child outlived the timeout");
    }

    #[test]
    fn background_children_do_not_hold_the_build() {
        let started = Instant::now();
        let finished = run(
            &mut sh("sleep 30 & echo done"),
            Stdout::Log,
            far(),
            &mut Vec::new(),
        )
        .expect("run");
        assert!(finished.status.success());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
