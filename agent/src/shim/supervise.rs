//! The shim's event loop: output, signals, the stop's deadlines and R14, to the init's exit.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use manifold_attach::{exit_status, Frame};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::dyno::{ShimEvent, Stream};
use crate::host::cgroup::{self, Layout};
use crate::logs::{LineBudget, LineSplitter};

use super::attach::Session;
use super::recorder::Recorder;
use super::stop::StopState;
use super::{memory_dir, Running, Shim, KILL_REQUESTED, STOP_REQUESTED};

/// While a stop is under way, how often the shim looks for processes born after its signal.
const LATE_TERM_CHECK: Duration = Duration::from_millis(250);

/// How often the shim samples the dyno's memory for R14.
const MEMORY_SAMPLE: Duration = Duration::from_secs(1);
/// How often R14 is repeated while the dyno stays over its quota.
const R14_REPEAT: Duration = Duration::from_secs(20);

/// What one turn of the shim's loop reads from one output pipe at most (one pipe's worth):
/// then it serves its signals and deadlines again. At most this many lines are made per
/// pipe and turn, which keeps a turn to milliseconds however the dyno writes.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading the pipes after the dyno's init exited. Every other process of
/// the dyno dies with its init (pid namespace), so EOF comes at once; this only bounds a
/// pathological case.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl Shim {
    /// The event loop: relays output, handles stop requests, waits for the init to exit.
    ///
    /// Each turn does a bounded amount of work (at most [`READ_CHUNK`] per output pipe, see
    /// [`relay`]) and begins with the stop and kill requests, the init's exit, the stop's
    /// deadlines and the R14 sample, so none of them waits on the dyno's output however
    /// fast it comes; the signalfd is read on every turn that it is ready.
    pub(super) fn supervise(&mut self, mut running: Running) -> anyhow::Result<()> {
        // From here on signals arrive through a signalfd; the init was cloned before this,
        // so it does not inherit the blocked mask.
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block()?;
        let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;

        let mut stop = StopState::Running;
        let mut exit: Option<WaitStatus> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut buf = vec![0u8; READ_CHUNK];
        let memory = self.memory_dir();
        let quota = self.config.size.limits().memory_quota;
        let mut next_sample = Instant::now() + MEMORY_SAMPLE;
        let mut last_r14: Option<Instant> = None;
        let mut next_late_check = Instant::now();

        loop {
            let now = Instant::now();
            if exit.is_none() && now >= next_sample {
                next_sample = now + MEMORY_SAMPLE;
                let usage = cgroup::memory_usage(memory.0, &memory.1).unwrap_or(0);
                if usage > quota && last_r14.is_none_or(|t| t.elapsed() >= R14_REPEAT) {
                    last_r14 = Some(now);
                    self.out
                        .event(ShimEvent::MemoryQuotaExceeded { usage, quota });
                }
            }
            if STOP_REQUESTED.swap(false, Ordering::SeqCst)
                && stop == StopState::Running
                && exit.is_none()
            {
                stop = self.begin_stop();
            }
            if KILL_REQUESTED.swap(false, Ordering::SeqCst) && exit.is_none() {
                stop = self.kill_now(stop);
            }
            if exit.is_none() {
                exit = reap(running.pid)?;
                if exit.is_some() {
                    drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
                }
            }
            if let Some((dropped, since)) =
                running.budget.as_mut().and_then(|b| b.notice(now, false))
            {
                self.out.event(ShimEvent::LinesDropped { dropped, since });
            }
            let open = !running.logged.is_empty()
                || self.session.as_ref().is_some_and(Session::outputs_open);
            if exit.is_some() && (!open || drain_deadline.is_some_and(|d| Instant::now() >= d)) {
                break;
            }
            if let StopState::Terminating { deadline } = stop {
                // Reading the cgroup's processes costs: a few times a second, not every turn.
                if exit.is_none() && now >= next_late_check {
                    next_late_check = now + LATE_TERM_CHECK;
                    self.term_late_born();
                }
                if Instant::now() >= deadline && exit.is_none() {
                    self.out.event(ShimEvent::Killing);
                    self.signal_all(Signal::SIGKILL);
                    stop = StopState::Killed;
                }
            }
            // What this turn logged is in the stream before the shim sleeps.
            self.out.flush();

            let notice = running.budget.as_ref().and_then(LineBudget::notice_due);
            let timeout = next_timeout(stop, drain_deadline, notice);
            let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
            for (file, _, _) in &running.logged {
                fds.push(PollFd::new(file.as_fd(), PollFlags::POLLIN));
            }
            if let Some(session) = &self.session {
                let interest = session.interest(exit.is_some());
                fds.extend(interest.into_iter().map(|(fd, ev)| PollFd::new(fd, ev)));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            if ready[0] {
                while let Ok(Some(info)) = sfd.read_signal() {
                    let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                    if (signo == libc::SIGTERM || signo == libc::SIGINT)
                        && stop == StopState::Running
                        && exit.is_none()
                    {
                        stop = self.begin_stop();
                    }
                    if signo == libc::SIGUSR1 && exit.is_none() {
                        stop = self.kill_now(stop);
                    }
                }
            }
            let mut slot = 0;
            let budget = &mut running.budget;
            running.logged.retain_mut(|(file, stream, splitter)| {
                slot += 1;
                let idle = !ready[slot] && exit.is_none();
                idle || relay(file, *stream, splitter, budget, &mut self.out, &mut buf)
            });
            if let Some(session) = &mut self.session {
                for sig in session.pump(exit.is_some()) {
                    if exit.is_none() {
                        self.signal_all(sig);
                    }
                }
            }
        }
        for (_, stream, splitter) in &mut running.logged {
            splitter.finish(|line| {
                if running.budget.as_mut().is_none_or(LineBudget::admit) {
                    self.out.line(*stream, line)
                }
            });
        }
        // What was dropped last is told before the end, however recent the last notice.
        if let Some((dropped, since)) = running
            .budget
            .as_mut()
            .and_then(|b| b.notice(Instant::now(), true))
        {
            self.out.event(ShimEvent::LinesDropped { dropped, since });
        }
        let (code, signal) = match exit {
            Some(WaitStatus::Exited(_, code)) => (Some(code), None),
            Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
            _ => (None, None),
        };
        // The client gets the exit status before the log says the dyno ended, so that
        // whoever waits for both (the scheduler) has it by the time the state changes.
        if let Some(session) = self.session.take() {
            session.finish(Frame::Exit(exit_status(code, signal)));
        }
        let oom = self.oom_killed();
        // Read: the scope may go now.
        self.sentinel = None;
        self.out.event(ShimEvent::Exited { code, signal, oom });
        Ok(())
    }

    /// The host's cgroup layout and the dyno's memory cgroup directory.
    pub(super) fn memory_dir(&self) -> (Layout, PathBuf) {
        memory_dir(&self.config)
    }

    fn oom_killed(&self) -> bool {
        let (layout, dir) = self.memory_dir();
        cgroup::oom_kills(layout, &dir).unwrap_or(0) > 0
    }
}

/// Checks, without blocking, whether the init has exited.
fn reap(pid: Pid) -> anyhow::Result<Option<WaitStatus>> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => Ok(None),
        Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => Ok(Some(status)),
        Ok(_) => Ok(None),
        Err(Errno::ECHILD) => Ok(Some(WaitStatus::Exited(pid, 255))),
        Err(e) => Err(e.into()),
    }
}

/// Reads one chunk (at most [`READ_CHUNK`] bytes) from one pipe into lines of the stream:
/// one turn's share, so that a dyno that writes without end (`yes`) cannot keep the shim
/// from its signals and deadlines. Lines past the dyno's log rate are dropped here, where
/// they arrive, and counted. Returns whether the pipe is still open.
fn relay(
    mut file: &File,
    stream: Stream,
    splitter: &mut LineSplitter,
    budget: &mut Option<LineBudget>,
    out: &mut Recorder,
    buf: &mut [u8],
) -> bool {
    loop {
        let read = file.read(buf);
        if let (Ok(1..), Some(b)) = (&read, budget.as_mut()) {
            b.refill(Instant::now());
        }
        let mut line = |text: &str| {
            if budget.as_mut().is_none_or(LineBudget::admit) {
                out.line(stream, text);
            }
        };
        match read {
            Ok(n) if n > 0 => {
                splitter.feed(&buf[..n], &mut line);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The end, or an error: a last line without its newline is still a line.
            _ => {
                splitter.finish(&mut line);
                return false;
            }
        }
    }
}

/// How long `poll` may sleep: until the next deadline (the stop's, the drain's, a due drop
/// notice), and never more than a second, so a SIGCHLD that arrived before the signalfd
/// existed is still noticed.
fn next_timeout(stop: StopState, drain: Option<Instant>, notice: Option<Instant>) -> PollTimeout {
    let now = Instant::now();
    let mut wait = Duration::from_secs(1);
    if let Some(n) = notice {
        wait = wait.min(n.saturating_duration_since(now));
    }
    if let StopState::Terminating { deadline } = stop {
        wait = wait
            .min(deadline.saturating_duration_since(now))
            .min(LATE_TERM_CHECK);
    }
    if let Some(d) = drain {
        wait = wait.min(d.saturating_duration_since(now));
    }
    PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX)
}
