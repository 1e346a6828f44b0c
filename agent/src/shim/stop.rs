//! Stopping a dyno: the stop's signal to every process, the late-born, and SIGKILL.
//!
//! ```text
//!             SIGTERM/SIGINT to the shim           grace period over
//!  Running ───────────────────────────▶ Terminating ──────────────────▶ Killed
//!     │      (TERM, or HUP when attached,     │  every 250 ms: the stop's     ▲
//!     │       to every process; Stopping)     │  signal to programs born      │
//!     │                                       │  since (term_late_born)       │
//!     └──────── SIGUSR1 (R10: KILL at once, an end as a crash) ───────────────┘
//! ```
//! The init's exit ends the loop in any state (`supervise.rs`).

use std::collections::HashSet;
use std::fs::{self};
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::dyno::ShimEvent;

use super::Shim;

/// Where the stop sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopState {
    /// No stop asked for.
    Running,
    /// SIGTERM (SIGHUP) sent; SIGKILL due at the deadline.
    Terminating { deadline: Instant },
    /// SIGKILL sent (the grace period ran out, or a kill at once was asked for).
    Killed,
}

impl Shim {
    /// What a stop sends first: SIGTERM, or SIGHUP to an attached dyno, as a terminal that
    /// hangs up does (Heroku sends a one-off whose client went away SIGHUP; an interactive
    /// shell ignores SIGTERM).
    fn stop_signal(&self) -> Signal {
        if self.config.attach.is_some() {
            Signal::SIGHUP
        } else {
            Signal::SIGTERM
        }
    }

    pub(super) fn begin_stop(&mut self) -> StopState {
        self.out.event(ShimEvent::Stopping);
        // Listed before the signal: a process born between the two is then signalled again
        // by [`Shim::term_late_born`] rather than taken as signalled when it was not.
        self.termed = self.programs();
        self.signal_all(self.stop_signal());
        StopState::Terminating {
            deadline: Instant::now() + self.config.grace,
        }
    }

    /// The dyno's processes (host pids), from its cgroup.
    pub(super) fn processes(&self) -> HashSet<i32> {
        let (_, dir) = self.memory_dir();
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The dyno's programs: each process with the executable it runs now.
    pub(super) fn programs(&self) -> HashSet<(i32, Option<PathBuf>)> {
        self.processes()
            .into_iter()
            .map(|pid| (pid, fs::read_link(format!("/proc/{pid}/exe")).ok()))
            .collect()
    }

    /// The stop's signal to the dyno's programs started after it was sent. A stop that comes
    /// as the dyno starts reaches only its init, which (as PID 1 of its namespace, before the
    /// start script's trap) ignores it; the app started next would never hear of the stop and
    /// would only go at the SIGKILL. A program counts as new when its process is, and when a
    /// process it had went on to exec another: the shell's subshell may take the signal in
    /// the start script's inherited trap an instant before it resets the trap and execs the
    /// app. Each program gets the signal once: Heroku sends SIGTERM "possibly more than
    /// once", but an app that counts signals should not have to.
    pub(super) fn term_late_born(&mut self) {
        for program in self.programs() {
            let pid = program.0;
            if self.termed.insert(program) {
                let _ = signal::kill(Pid::from_raw(pid), self.stop_signal());
            }
        }
    }

    /// SIGKILL to every process of the dyno, at once (the runner's R10). Not a stop: the
    /// dyno ends as if it had died on its own, so it is `crashed`. Once is enough.
    pub(super) fn kill_now(&mut self, stop: StopState) -> StopState {
        if stop != StopState::Killed {
            self.out.event(ShimEvent::Kill);
            self.signal_all(Signal::SIGKILL);
        }
        StopState::Killed
    }

    /// Signals every process in the dyno's cgroup (Heroku: "SIGTERM is sent to all processes
    /// in the dyno"); libcontainer freezes the cgroup while it does so, so no process forks
    /// its way out of the signal.
    pub(super) fn signal_all(&mut self, sig: Signal) {
        if let Some(container) = self.container.as_mut() {
            if let Err(err) = container.kill_all(sig) {
                tracing::warn!("cannot send {sig} to dyno {}: {err}", self.config.id);
            }
        }
    }
}
