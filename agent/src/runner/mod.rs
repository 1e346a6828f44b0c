//! The dyno runner: starts a dyno's shim, follows what it reports, and turns that into
//! the dyno's state and Heroku's platform log lines.
//!
//! ```text
//!            Started (worker)                 Exited (no stop asked)
//! starting ───────────────────────▶ up ─────────────────────────────▶ crashed
//!     │  Started (web) + $PORT accepts ▲   │ stop()
//!     │                                    ▼
//!     │                               stopping ──Exited──▶ down
//!     ├──Failed──▶ crashed
//!     └──boot timeout (web, $PORT never accepted: R10) ──Kill, Exited 137──▶ crashed
//!
//! A one-off dyno (`run.N`, `release.N`, a build) that exits on its own is `complete`, not `crashed`.
//! ```
//!
//! The boot timeout is Heroku's R10: a web dyno that has not accepted a connection on `$PORT`
//! within `boot_timeout` of its start is killed at once (SIGUSR1 asks the shim for SIGKILL to
//! every process, no grace) and counts as a crash, so the daemon's restart schedule applies.
//!
//! [`Lifecycle`] is the pure state machine (records in, state and lines out, unit-tested);
//! [`Dyno`] does the I/O: it writes `dyno.json`, spawns `manifold-agent shim`, tails
//! `stream.jsonl` with inotify, probes `$PORT`, and forwards stop requests as SIGTERM to the
//! shim. The same code serves `manifold-agent run` and the agent daemon, which also uses
//! [`Dyno::adopt`] to follow again, after its own restart, a dyno whose shim outlived it.

mod identity;
mod lifecycle;
mod tail;
mod warm;
pub mod watch;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manifold_dyno::{runs_once, DynoState};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::dyno::{DynoConfig, DynoDir, Record, ShimEvent, Stream, DEFAULT_BOOT_TIMEOUT};
use crate::logs::timestamp;
use crate::runner::watch::Watch;
use crate::shim;

pub use identity::{shim_alive, ShimIdentity};
pub use lifecycle::{Action, Event, Lifecycle, LogLine, Source, State};
use tail::{probe, Tail};
pub use warm::retire_warm_shims;
use warm::WarmShim;

/// Errors starting or following a dyno.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot prepare dyno directory {path}")]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the shim {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot follow {path}")]
    Follow {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot adopt the dyno in {path}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running dyno and the handle to follow it.
#[derive(Debug)]
pub struct Dyno {
    pub config: DynoConfig,
    pub dir: DynoDir,
    shim_pid: Pid,
    /// Found running rather than started by this process: following it replays its stream
    /// from the start to rebuild its state, without re-emitting the lines already logged.
    adopted: bool,
    /// The warm shim to put in place once this dyno's shim has reported (`warm.rs`).
    warm: Option<WarmShim>,
}

/// `binary` as a shim, spawned the way every shim is: stdio on /dev/null, and a stop
/// signal blocked until the shim handles it. A stop can come before the shim has installed
/// its handlers (a dyno unassigned as it is launched): the shim unblocks them once it
/// handles them, so such a stop is a graceful one rather than the default action.
fn shim_command(binary: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary);
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: `pthread_sigmask` is async-signal-safe and touches only the child's mask.
    unsafe {
        command.pre_exec(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGINT);
            set.add(Signal::SIGUSR1);
            set.thread_block().map_err(io::Error::from)
        });
    }
    command
}

/// How often a web dyno's `$PORT` is tried while it boots.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// How often the runner checks the shim is alive when nothing else happens.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a dyno directory may exist without a shim pid: its runner is still starting
/// the shim.
const STARTING_GRACE: Duration = Duration::from_secs(60);

impl Dyno {
    /// Writes the dyno's directory and starts its shim: hands it to the warm shim waiting
    /// for it (`warm.rs`), or else execs `shim_binary shim --dir DIR`.
    /// Lines and the exit status are then had from [`Dyno::follow`].
    pub async fn start(config: DynoConfig, shim_binary: PathBuf) -> Result<Dyno, RunnerError> {
        let dir = DynoDir::new(&config.host, &config.id);
        let prepare = |source| RunnerError::Prepare {
            path: dir.root.clone(),
            source,
        };
        dir.write_config(&config).map_err(prepare)?;
        File::create(dir.stream()).map_err(prepare)?;
        let warm = WarmShim::of(&config.host, &shim_binary);
        let pid = match &warm {
            Some(warm) => warm.claim(&dir.root).await,
            None => None,
        };
        let pid = match pid {
            Some(pid) => pid,
            None => Self::spawn_shim(&dir, &shim_binary)?,
        };
        // The shim cannot have been reaped yet (its reaper is this process, or, for a warm
        // one, a process that only reaps it once it exits), so its pid still names it while
        // its start time is read.
        ShimIdentity::of(pid)
            .and_then(|shim| shim.write(&dir))
            .map_err(prepare)?;
        Ok(Dyno {
            config,
            dir,
            shim_pid: Pid::from_raw(pid),
            adopted: false,
            warm,
        })
    }

    /// Execs a shim for the dyno in `dir` (`shim_binary shim --dir DIR`); its pid.
    fn spawn_shim(dir: &DynoDir, shim_binary: &Path) -> Result<i32, RunnerError> {
        let spawn_err = |source| RunnerError::Spawn {
            binary: shim_binary.to_path_buf(),
            source,
        };
        let mut child = shim_command(shim_binary)
            .arg("shim")
            .arg("--dir")
            .arg(&dir.root)
            .spawn()
            .map_err(spawn_err)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_err(io::Error::other("the shim exited at once")))?;
        let pid = i32::try_from(pid).map_err(|e| spawn_err(io::Error::other(e)))?;
        // Reap the shim while this process lives; if it dies first, init adopts the shim.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(pid)
    }

    /// Takes over a dyno whose shim outlived the process that started it (an agent restart):
    /// reads its `dyno.json` and `shim.pid`. Check [`shim_alive`] first; following a dyno
    /// whose shim is dead cleans up in the shim's place, as [`Dyno::follow`] always does.
    pub fn adopt(dir: DynoDir) -> Result<Dyno, RunnerError> {
        let adopt = |source| RunnerError::Adopt {
            path: dir.root.clone(),
            source,
        };
        let config = dir.read_config().map_err(adopt)?;
        let shim = ShimIdentity::read(&dir).map_err(adopt)?;
        Ok(Dyno {
            config,
            dir,
            shim_pid: Pid::from_raw(shim.pid),
            adopted: true,
            warm: None,
        })
    }

    /// The shim's process id.
    pub fn shim_pid(&self) -> i32 {
        self.shim_pid.as_raw()
    }

    /// Asks the dyno to stop: SIGTERM to all its processes, SIGKILL after the grace period.
    pub fn stop(&self) {
        if let Err(err) = kill(self.shim_pid, Signal::SIGTERM) {
            tracing::debug!("shim {} already gone: {err}", self.shim_pid);
        }
    }

    /// Asks the shim to kill every process of the dyno at once, without a grace period (R10).
    pub fn kill_now(&self) {
        if let Err(err) = kill(self.shim_pid, Signal::SIGUSR1) {
            tracing::debug!("shim {} already gone: {err}", self.shim_pid);
        }
    }

    /// Follows the dyno to its end, sending every log line to `lines`; `stop` asks for a
    /// stop (e.g. on Ctrl-C). Returns the exit status. Removes the dyno's directory at the end.
    pub async fn follow(
        self,
        lines: mpsc::UnboundedSender<LogLine>,
        stop: mpsc::UnboundedReceiver<()>,
    ) -> Result<i32, RunnerError> {
        self.follow_with(
            move |event| {
                if let Event::Line(line) = event {
                    let _ = lines.send(line);
                }
            },
            stop,
        )
        .await
    }

    /// Like [`Dyno::follow`], but also reports every state change. An adopted dyno's stream
    /// is replayed to rebuild its state: the state changes of the replay are reported, its
    /// lines (already logged by the previous runner) are not.
    pub async fn follow_events(
        self,
        events: mpsc::UnboundedSender<Event>,
        stop: mpsc::UnboundedReceiver<()>,
    ) -> Result<i32, RunnerError> {
        self.follow_with(
            move |event| {
                let _ = events.send(event);
            },
            stop,
        )
        .await
    }

    async fn follow_with(
        mut self,
        emit: impl FnMut(Event),
        mut stop: mpsc::UnboundedReceiver<()>,
    ) -> Result<i32, RunnerError> {
        let mut life = Lifecycle::new(&self.config.name, self.config.port, self.config.grace)
            .with_boot_timeout(self.config.boot_timeout)
            .attached(self.config.attach.is_some());
        let mut out = Vec::new();
        if !self.adopted {
            life.starting(&self.config.command, &mut out);
        }
        let mut report = Reporter {
            emit,
            shown: life.state(),
            replaying: self.adopted,
        };
        let follow_err = |source| RunnerError::Follow {
            path: self.dir.stream(),
            source,
        };
        let mut tail = Tail::open(self.dir.stream()).map_err(follow_err)?;
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let mut stop_open = true;
        // Armed when a web dyno starts (for an adopted one: when the replay reaches its start,
        // so a re-adopted dyno gets a whole boot timeout again rather than none).
        let mut boot_deadline: Option<tokio::time::Instant> = None;
        // Set when the liveness check found the shim gone; acted on only once the stream has
        // been read to its end, so the shim's last records are never skipped.
        let mut shim_gone = false;
        let status = 'outer: loop {
            report.flush(&life, &mut out);
            let records = tail.read_records().map_err(follow_err)?;
            if shim_gone && records.is_empty() {
                // The shim died without finishing: clean up in its place.
                // `cleanup` is blocking (and runs its own runtime for netlink), so
                // it must not run on this task's thread.
                let (config, dir) = (self.config.clone(), self.dir.clone());
                let errors =
                    tokio::task::spawn_blocking(move || shim::cleanup_on_host(&config, &dir))
                        .await
                        .unwrap_or_else(|e| vec![format!("cleanup: {e}")]);
                life.record(
                    Record::Event {
                        ts: timestamp(),
                        event: ShimEvent::Exited {
                            code: None,
                            signal: Some(9),
                            oom: false,
                        },
                    },
                    &mut out,
                );
                report.flush(&life, &mut out);
                life.record(
                    Record::Event {
                        ts: timestamp(),
                        event: ShimEvent::Cleaned { errors },
                    },
                    &mut out,
                );
                report.flush(&life, &mut out);
                break 'outer 137;
            }
            shim_gone = false;
            if !records.is_empty() {
                // The shim has built the container (or failed to): the next warm shim's
                // exec no longer competes with this start.
                if let Some(warm) = self.warm.take() {
                    warm.replenish();
                }
            }
            for record in records {
                let action = life.record(record, &mut out);
                report.flush(&life, &mut out);
                match action {
                    Some(Action::ProbePort(addr)) => {
                        tokio::spawn(probe(addr, probe_tx.clone()));
                        boot_deadline =
                            life.boot_timeout().map(|t| tokio::time::Instant::now() + t);
                    }
                    Some(Action::Finished { status }) => break 'outer status,
                    None => {}
                }
            }
            report.replaying = false;
            tokio::select! {
                () = tail.changed() => {}
                Some(()) = probe_rx.recv() => life.port_accepted(&mut out),
                () = tokio::time::sleep_until(boot_deadline.unwrap_or_else(tokio::time::Instant::now)), if boot_deadline.is_some() => {
                    boot_deadline = None;
                    if life.boot_timed_out(&mut out) {
                        self.kill_now();
                    }
                }
                req = stop.recv(), if stop_open => match req {
                    Some(()) => self.stop(),
                    None => stop_open = false,
                },
                () = tokio::time::sleep(LIVENESS_INTERVAL) => {
                    shim_gone = kill(self.shim_pid, None).is_err();
                }
            }
        };
        if let Err(err) = remove_dyno_dir(&self.dir.root).await {
            tracing::warn!("cannot remove {}: {err}", self.dir.root.display());
        }
        Ok(status)
    }
}

/// Removes an ended dyno's directory. The daemon may be writing a file into it as it goes
/// (`state-since`, for the state it is still reporting): a removal that found the directory
/// not empty at the end tries again, a moment later, rather than leave it behind.
async fn remove_dyno_dir(root: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(root) {
            Err(err) if err.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20 * tries)).await;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            result => return result,
        }
    }
}

/// Hands a follower's lines and state changes to its consumer, in the order they happened.
struct Reporter<F> {
    emit: F,
    /// The state last reported.
    shown: State,
    /// Replaying an adopted dyno's stream: its lines were logged before.
    replaying: bool,
}

impl<F: FnMut(Event)> Reporter<F> {
    fn flush(&mut self, life: &Lifecycle, out: &mut Vec<LogLine>) {
        for line in out.drain(..) {
            if !self.replaying {
                (self.emit)(Event::Line(line));
            }
        }
        if life.state() != self.shown {
            self.shown = life.state();
            (self.emit)(Event::State {
                state: life.state(),
                status: life.status(),
                reason: life.reason().map(str::to_string),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::identity::{exited, proc_stat, start_ticks};
    use super::*;

    #[test]
    fn a_shim_that_exited_is_not_alive_before_it_is_reaped() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        let shim = ShimIdentity::of(pid).expect("identity");
        // Not waited for yet: a zombie, which keeps its pid and start time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !proc_stat(pid).is_ok_and(|(state, _)| exited(state)) {
            assert!(std::time::Instant::now() < deadline, "true did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(start_ticks(pid).ok(), shim.started.as_ref().map(|s| s.0));
        assert!(!shim.is_alive());
        child.wait().expect("reap");
    }

    #[test]
    fn a_shim_is_known_by_its_start_time_not_its_pid_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let me = ShimIdentity::of(std::process::id() as i32).expect("own identity");
        me.write(&dir).expect("write");
        assert_eq!(ShimIdentity::read(&dir).expect("read"), me);
        assert!(me.is_alive());
        assert!(shim_alive(&dir));

        // The same pid, started at another time (a later process that reuses the pid).
        let (ticks, boot) = me.started.clone().expect("started");
        let reused = ShimIdentity {
            pid: me.pid,
            started: Some((ticks + 1, boot.clone())),
        };
        reused.write(&dir).expect("write");
        assert!(!reused.is_alive());
        assert!(!shim_alive(&dir), "a reused pid passed for the shim");
        // The same process in another boot.
        let other_boot = ShimIdentity {
            pid: me.pid,
            started: Some((ticks, "another-boot".into())),
        };
        assert!(!other_boot.is_alive());

        // A shim of an older agent (no shim.start) is known by its command line: this test
        // binary is not a `shim`.
        std::fs::remove_file(dir.shim_start()).expect("rm");
        assert_eq!(ShimIdentity::read(&dir).expect("read").started, None);
        assert!(!shim_alive(&dir));

        std::fs::write(dir.shim_start(), "soon").expect("write");
        assert!(ShimIdentity::read(&dir).is_err(), "garbage accepted");
    }

    fn ev(event: ShimEvent) -> Record {
        Record::Event {
            ts: "t".into(),
            event,
        }
    }

    fn texts(out: &[LogLine]) -> Vec<String> {
        out.iter().map(|l| l.text.clone()).collect()
    }

    #[test]
    fn worker_runs_and_crashes() {
        let mut life = Lifecycle::new("worker.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        life.starting("bin/work", &mut out);
        life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            }),
            &mut out,
        );
        assert_eq!(life.state(), State::Up);
        life.record(
            Record::Line {
                ts: "t".into(),
                stream: Stream::Out,
                text: "hello".into(),
            },
            &mut out,
        );
        life.record(
            ev(ShimEvent::Exited {
                code: Some(3),
                signal: None,
                oom: false,
            }),
            &mut out,
        );
        let done = life.record(ev(ShimEvent::Cleaned { errors: vec![] }), &mut out);
        assert_eq!(done, Some(Action::Finished { status: 3 }));
        assert_eq!(
            texts(&out),
            vec![
                "Starting process with command `bin/work`",
                "State changed from starting to up",
                "hello",
                "Process exited with status 3",
                "State changed from up to crashed",
            ]
        );
        assert_eq!(out[2].to_string(), "t app[worker.1]: hello");
        assert!(out[0]
            .to_string()
            .contains(" heroku[worker.1]: Starting process"));
    }

    #[test]
    fn web_is_up_only_when_port_accepts_and_stop_ends_down() {
        let mut life = Lifecycle::new("web.1", Some(5000), Duration::from_secs(2));
        let mut out = Vec::new();
        let a = life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::new(10, 0, 0, 2),
            }),
            &mut out,
        );
        assert_eq!(
            a,
            Some(Action::ProbePort("10.0.0.2:5000".parse().expect("addr")))
        );
        assert_eq!(life.state(), State::Starting);
        life.port_accepted(&mut out);
        assert_eq!(life.state(), State::Up);
        life.record(ev(ShimEvent::Stopping), &mut out);
        life.record(ev(ShimEvent::Killing), &mut out);
        life.record(
            ev(ShimEvent::Exited {
                code: None,
                signal: Some(9),
                oom: false,
            }),
            &mut out,
        );
        assert_eq!(life.state(), State::Down);
        assert_eq!(
            texts(&out),
            vec![
                "State changed from starting to up",
                "Stopping all processes with SIGTERM",
                "Error R12 (Exit timeout) -> At least one process failed to exit within 2 seconds of SIGTERM",
                "Stopping remaining processes with SIGKILL",
                "Process exited with status 137",
                "State changed from up to down",
            ]
        );
    }

    #[test]
    fn an_attached_one_off_is_hung_up_and_says_so() {
        let mut life = Lifecycle::new("run.1", None, Duration::from_secs(2)).attached(true);
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            }),
            &mut out,
        );
        life.record(ev(ShimEvent::Stopping), &mut out);
        life.record(ev(ShimEvent::Killing), &mut out);
        assert_eq!(
            texts(&out)[1..],
            [
                "Stopping all processes with SIGHUP",
                "Error R12 (Exit timeout) -> At least one process failed to exit within 2 seconds of SIGHUP",
                "Stopping remaining processes with SIGKILL",
            ]
        );
    }

    #[test]
    fn web_that_never_binds_is_an_r10_kill_and_a_crash() {
        let mut life = Lifecycle::new("web.1", Some(5000), Duration::from_secs(30))
            .with_boot_timeout(Duration::from_secs(2));
        assert_eq!(life.boot_timeout(), Some(Duration::from_secs(2)));
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            }),
            &mut out,
        );
        assert!(life.boot_timed_out(&mut out), "still starting: kill it");
        assert!(!life.boot_timed_out(&mut out), "asked once");
        // An accept that races the kill does not make it `up`.
        life.port_accepted(&mut out);
        assert_eq!(life.state(), State::Starting);
        life.record(ev(ShimEvent::Kill), &mut out);
        life.record(
            ev(ShimEvent::Exited {
                code: None,
                signal: Some(9),
                oom: false,
            }),
            &mut out,
        );
        assert_eq!(life.state(), State::Crashed);
        assert_eq!(life.status(), Some(137));
        assert!(life.reason().is_some_and(|r| r.starts_with("Error R10")));
        assert_eq!(
            texts(&out),
            vec![
                "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 2 seconds of launch",
                "Stopping process with SIGKILL",
                "Process exited with status 137",
                "State changed from starting to crashed",
            ]
        );
    }

    #[test]
    fn only_a_starting_formation_web_dyno_has_a_boot_timeout() {
        let mut out = Vec::new();
        let mut up = Lifecycle::new("web.1", Some(5000), Duration::from_secs(30));
        assert_eq!(up.boot_timeout(), Some(DEFAULT_BOOT_TIMEOUT));
        up.port_accepted(&mut out);
        assert!(!up.boot_timed_out(&mut out), "bound in time");
        let mut worker = Lifecycle::new("worker.1", None, Duration::from_secs(30));
        assert_eq!(worker.boot_timeout(), None);
        assert!(!worker.boot_timed_out(&mut out));
        let one_off = Lifecycle::new("run.1", Some(5000), Duration::from_secs(30));
        assert_eq!(one_off.boot_timeout(), None);
        assert_eq!(texts(&out), vec!["State changed from starting to up"]);
    }

    #[test]
    fn oom_is_reported_as_r15_and_failures_as_crashes() {
        let mut life = Lifecycle::new("web.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            }),
            &mut out,
        );
        life.record(
            ev(ShimEvent::Exited {
                code: None,
                signal: Some(9),
                oom: true,
            }),
            &mut out,
        );
        assert!(texts(&out).contains(&"Error R15 (Memory quota vastly exceeded)".to_string()));
        assert_eq!(life.state(), State::Crashed);

        let mut life = Lifecycle::new("web.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::Failed {
                step: "slug".into(),
                error: "bad".into(),
            }),
            &mut out,
        );
        let done = life.record(ev(ShimEvent::Cleaned { errors: vec![] }), &mut out);
        assert_eq!(done, Some(Action::Finished { status: 1 }));
        assert_eq!(texts(&out)[0], "Error starting dyno (slug): bad");
    }

    #[test]
    fn lines_the_shim_dropped_are_an_l10_platform_line() {
        let mut life = Lifecycle::new("worker.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::LinesDropped {
                dropped: 12,
                since: "t0".into(),
            }),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].source, Source::Heroku);
        assert_eq!(
            out[0].text,
            "Error L10 (output buffer overflow): 12 messages dropped since t0"
        );
    }

    #[test]
    fn rotation_that_outran_the_reader_is_an_l10_with_the_count() {
        let mut life = Lifecycle::new("worker.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        let line = |text: &str| Record::Line {
            ts: "t1".into(),
            stream: Stream::Out,
            text: text.into(),
        };
        life.record(line("a"), &mut out);
        life.record(line("b"), &mut out);
        // The reader kept up: two records before the rotation, two seen.
        life.record(ev(ShimEvent::Rotated { records_before: 2 }), &mut out);
        assert!(!texts(&out).iter().any(|t| t.contains("L10")));
        life.record(line("c"), &mut out);
        // A whole segment went by unread: records 5..=9 were never seen.
        life.record(ev(ShimEvent::Rotated { records_before: 9 }), &mut out);
        let l10 = texts(&out)
            .into_iter()
            .find(|t| t.contains("L10"))
            .expect("an L10 line");
        assert_eq!(
            l10,
            "Error L10 (output buffer overflow): 5 messages dropped since t1"
        );
    }

    #[test]
    fn memory_over_quota_is_r14_in_herokus_words() {
        let mut life = Lifecycle::new("web.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        let quota = 512 * 1024 * 1024;
        life.record(
            ev(ShimEvent::MemoryQuotaExceeded {
                usage: quota / 100 * 103 + 5 * 1024 * 1024,
                quota,
            }),
            &mut out,
        );
        assert_eq!(
            texts(&out),
            vec![
                "Process running mem=532MB(104.0%)",
                "Error R14 (Memory quota exceeded)"
            ]
        );
    }

    #[test]
    fn a_repeated_started_record_changes_nothing() {
        // The shim repeats `started` at the top of each stream segment.
        let mut life = Lifecycle::new("worker.1", None, Duration::from_secs(30));
        let mut out = Vec::new();
        let started = || {
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            })
        };
        life.record(started(), &mut out);
        life.record(ev(ShimEvent::Stopping), &mut out);
        assert_eq!(life.record(started(), &mut out), None);
        assert_eq!(life.state(), State::Stopping);
        let mut web = Lifecycle::new("web.1", Some(5000), Duration::from_secs(30));
        assert!(web.record(started(), &mut out).is_some());
        web.port_accepted(&mut out);
        assert_eq!(web.record(started(), &mut out), None, "no second probe");
        assert_eq!(web.state(), State::Up);
    }

    #[test]
    fn one_off_that_exits_is_complete() {
        let mut life = Lifecycle::new("run.4821", None, Duration::from_secs(30));
        let mut out = Vec::new();
        life.record(
            ev(ShimEvent::Started {
                pid: 9,
                address: Ipv4Addr::LOCALHOST,
            }),
            &mut out,
        );
        life.record(
            ev(ShimEvent::Exited {
                code: Some(0),
                signal: None,
                oom: false,
            }),
            &mut out,
        );
        assert_eq!(life.state(), State::Complete);
        assert_eq!(
            texts(&out).last().map(String::as_str),
            Some("State changed from up to complete")
        );
    }

    /// Without inotify (the machine's per-user instances used up) a tail polls: it still
    /// sees every record written after it opened.
    #[tokio::test]
    async fn a_tail_without_inotify_polls() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stream.jsonl");
        let mut file = File::create(&path).expect("create");
        let mut tail = Tail::with_watch(path, None).expect("open");
        assert!(tail.read_records().expect("read").is_empty());
        let line = serde_json::to_string(&ev(ShimEvent::Stopping)).expect("json");
        writeln!(file, "{line}").expect("write");
        let records = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tail.changed().await;
                let records = tail.read_records().expect("read");
                if !records.is_empty() {
                    return records;
                }
            }
        })
        .await
        .expect("the polling tail saw the record");
        assert_eq!(records, vec![ev(ShimEvent::Stopping)]);
    }
}
