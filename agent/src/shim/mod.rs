//! The shim: one small process per dyno that creates the container and stays its parent.
//!
//! ```text
//!  runner ──spawn──▶ `manifold-agent shim --dir D` (setsid; outlives the runner)
//!                                                             │ attached: listen on attach.sock
//!                                                             │ prepare: slug layer, overlay, spec
//!                                                             │ libcontainer build (init waits;
//!                                                             │   a terminal's master comes back
//!                                                             │   over console.sock)
//!                                                             │ network attach, start
//!                                                             ▼
//!                                            joins the dyno's CPU cgroups (`<dyno>/shim`)
//!                                            event loop, one bounded turn at a time:
//!                                                        pipes → stream.jsonl lines (past the
//!                                                          log rate: dropped, counted), or,
//!                                                          attached, pipes/pty ⇄ attach.sock
//!                                                        SIGTERM → stop (TERM all, KILL after grace;
//!                                                          HUP instead of TERM when attached)
//!                                                        SIGUSR1 → KILL all at once (R10)
//!                                                        SIGCHLD → exit status, OOM check
//!                                                             ▼
//!                                            attached: Exit frame to the client (waits ≤ 10 s
//!                                              for one), then `exited`
//!                                            leaves its CPU cgroups; cleanup: container,
//!                                              cgroups, network, overlay
//! ```
//!
//! The loop is fair: each turn reads at most [`READ_CHUNK`] from each output and then serves
//! signals, the stop's deadlines and R14 again, so a dyno that writes without end (`yes`)
//! cannot keep the shim from stopping it. Its CPU is the dyno's: the shim runs in a child
//! of the dyno's `cpu` and `cpuacct` cgroups ([`ShimCgroup`]), so a flood is paid from the
//! dyno's share and shows in its usage; and lines beyond the dyno's log rate are dropped
//! where they arrive ([`LineBudget`]), so it costs no disk, nor the agent's time.
//!
//! Why a separate process (RUNTIME-NOTES): libcontainer clones and runs Rust in the child
//! before `execve`, which can deadlock when the caller is a multi-threaded tokio process; the
//! shim is single-threaded when it calls libcontainer. Being the container init's parent it
//! can reap it and learn its exit status; holding the output pipes it keeps the dyno's logs
//! flowing into `stream.jsonl` even while no runner runs. So a dyno never depends on the
//! process that started it: the agent can restart and re-adopt it from the dyno directory.
//!
//! An attached one-off (`manifold run`, [`DynoConfig::attach`]) keeps that independence: its
//! terminal or pipes stay with the shim, which buffers output (bounded) while no client is
//! connected, so the agent's relay can come and go (`shim/attach.rs`). Its output goes only
//! to the client, as on Heroku, where an attached run logs its start and end but not what it
//! prints; the events (`started`, `exited`...) are recorded as for any dyno.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use manifold_attach::{exit_status, Frame};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, setsid, Pid};

use crate::dyno::{DynoConfig, DynoDir, Record, ShimEvent, Stream};
use crate::host::cgroup::{self, Layout, Sentinel, ShimCgroup};
use crate::host::inotify;
use crate::host::network;
use crate::host::quota;
use crate::host::rootfs::{self, Overlay};
use crate::host::seccomp::Filter;
use crate::host::slug::{SlugCache, UnpackLimits};
use crate::logs::{timestamp, LineBudget, LineSplitter};

mod attach;
pub mod spec;

use attach::{ConsoleSocket, DynoIo, Session};

/// Set by the signal handler when a stop is asked for before signals are routed to the
/// signalfd (while the container is still being built).
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Like [`STOP_REQUESTED`], for SIGUSR1: kill every process of the dyno at once.
static KILL_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_kill(_: libc::c_int) {
    KILL_REQUESTED.store(true, Ordering::SeqCst);
}

/// Runs the dyno described in `dir` to its end, then exits the process.
///
/// The shim starts its own session so that signals for the runner's terminal (Ctrl-C)
/// do not reach it: stops come only from the runner, as SIGTERM. It needs no double
/// fork to outlive the runner: when that dies, the shim is adopted by init (or the
/// service manager's subreaper) and goes on. Must be called before any thread exists.
pub fn main(dir: &Path) -> ! {
    let code = match run(DynoDir {
        root: dir.to_path_buf(),
    }) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("shim failed: {err:#}");
            1
        }
    };
    std::process::exit(code)
}

/// The detached shim's life. Returns the process exit code of the shim itself.
fn run(dir: DynoDir) -> anyhow::Result<i32> {
    setsid()?;
    redirect_stdio(&dir.shim_log())?;
    // SAFETY: installing an async-signal-safe handler (it only stores to an atomic).
    unsafe {
        signal::signal(Signal::SIGTERM, SigHandler::Handler(request_stop))?;
        signal::signal(Signal::SIGINT, SigHandler::Handler(request_stop))?;
        signal::signal(Signal::SIGUSR1, SigHandler::Handler(request_kill))?;
    }
    // The runner starts the shim with these blocked (see `Dyno::start`): a stop or kill
    // that came early is delivered to the handler now.
    let mut early = signal::SigSet::empty();
    early.add(Signal::SIGTERM);
    early.add(Signal::SIGINT);
    early.add(Signal::SIGUSR1);
    early.thread_unblock()?;
    let mut out = Recorder::open(&dir, SEGMENT_BYTES)?;
    let config = match dir.read_config() {
        Ok(c) => c,
        Err(err) => {
            out.event(ShimEvent::Failed {
                step: "config".into(),
                error: format!("cannot read {}: {err}", dir.config().display()),
            });
            out.event(ShimEvent::Cleaned { errors: vec![] });
            return Ok(1);
        }
    };
    let mut shim = Shim {
        config,
        dir,
        out,
        container: None,
        session: None,
        termed: HashSet::new(),
        cpu: None,
        sentinel: None,
    };
    match shim.start() {
        Ok(running) => shim.supervise(running)?,
        Err(failure) => {
            // The attached client learns why, as the log does.
            if let Some(session) = shim.session.take() {
                session.finish(Frame::Error(format!(
                    "the dyno failed to start ({}): {}",
                    failure.step, failure.message
                )));
            }
            shim.out.event(ShimEvent::Failed {
                step: failure.step.to_string(),
                error: failure.message,
            })
        }
    }
    // Out of the dyno's cgroups before they are removed, which the shim's would block.
    let mut errors = shim
        .cpu
        .take()
        .map(|cpu| cpu.leave(std::process::id()))
        .unwrap_or_default();
    errors.extend(cleanup(&shim.config, &shim.dir, shim.container.take()));
    shim.out.event(ShimEvent::Cleaned { errors });
    Ok(0)
}

/// A failed start step and what went wrong, in words for the user.
struct StartFailure {
    step: &'static str,
    message: String,
}

/// The shim's own OOM score adjustment (kept across libcontainer's `build()`).
const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

/// The host's cgroup layout and the dyno's memory controller directory.
fn memory_dir(c: &DynoConfig) -> (Layout, PathBuf) {
    let root = Path::new("/sys/fs/cgroup");
    let layout = Layout::detect(root);
    (layout, layout.memory_dir(root, &c.host.dyno_cgroup(&c.id)))
}

/// libcontainer's last step in the dyno's init: puts it under its seccomp filter, then
/// executes the command as libcontainer's default executor does. Between the two only the
/// `execve`s of the `PATH` lookup run, so the filter need not allow what libcontainer's
/// setup needs, and a dyno never runs a line of its own code unfiltered.
#[derive(Clone)]
struct Filtered {
    filter: Arc<Filter>,
}

impl Executor for Filtered {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        self.filter
            .install()
            .map_err(|e| ExecutorError::Other(format!("seccomp filter not installed: {e}")))?;
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

trait Step<T> {
    fn step(self, step: &'static str) -> Result<T, StartFailure>;
}

impl<T, E: Into<anyhow::Error>> Step<T> for Result<T, E> {
    fn step(self, step: &'static str) -> Result<T, StartFailure> {
        self.map_err(|e| StartFailure {
            step,
            message: format!("{:#}", e.into()),
        })
    }
}

struct Shim {
    config: DynoConfig,
    dir: DynoDir,
    out: Recorder,
    container: Option<Container>,
    /// An attached dyno's socket and the buffers between its client and the dyno, from
    /// before the container exists to the dyno's end.
    session: Option<Session>,
    /// The dyno's programs that got the stop's signal, as (host pid, executable) (see
    /// [`Shim::term_late_born`]).
    termed: HashSet<(i32, Option<PathBuf>)>,
    /// The shim's place in the dyno's CPU cgroups, once it joined them.
    cpu: Option<ShimCgroup>,
    /// Keeps a systemd scope (and its `memory.events`) until the dyno's end is read.
    sentinel: Option<Sentinel>,
}

/// The container's running state, as the event loop sees it.
struct Running {
    pid: Pid,
    /// The stdout and stderr pipes whose lines go to `stream.jsonl`, each with its partial
    /// line; none for an attached dyno, whose output is its [`Session`]'s.
    logged: Vec<(File, Stream, LineSplitter)>,
    /// The dyno's log rate over both pipes, if it has one.
    budget: Option<LineBudget>,
}

/// The shim's ends of the dyno's standard streams.
enum Stdio {
    /// stdin is /dev/null; stdout and stderr are pipes whose lines the shim logs.
    Logged { stdout: File, stderr: File },
    /// Pipes both ways, relayed to the attached client.
    Pipes {
        stdin: File,
        stdout: File,
        stderr: File,
    },
    /// A terminal: its master comes back over the console socket once the container is built.
    Tty(ConsoleSocket),
}

/// Makes the dyno's standard streams: the shim's ends (nonblocking), and the dyno's stdin,
/// stdout and stderr for libcontainer (none for a terminal, which the init opens itself).
fn stdio(c: &DynoConfig, dir: &DynoDir) -> io::Result<(Stdio, Option<[OwnedFd; 3]>)> {
    if c.attach.is_some_and(|a| a.tty) {
        return Ok((
            Stdio::Tty(ConsoleSocket::listen(&dir.console_socket())?),
            None,
        ));
    }
    let ours = |fd: OwnedFd| -> io::Result<File> {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok(File::from(fd))
    };
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (stdout, stderr) = (ours(out_r)?, ours(err_r)?);
    if c.attach.is_none() {
        let devnull = OwnedFd::from(File::open("/dev/null")?);
        return Ok((
            Stdio::Logged { stdout, stderr },
            Some([devnull, out_w, err_w]),
        ));
    }
    let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC)?;
    let stdin = ours(in_w)?;
    Ok((
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        },
        Some([in_r, out_w, err_w]),
    ))
}

/// Where the stop sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopState {
    /// No stop asked for.
    Running,
    /// SIGTERM (SIGHUP) sent; SIGKILL due at the deadline.
    Terminating { deadline: Instant },
    /// SIGKILL sent (the grace period ran out, or a kill at once was asked for).
    Killed,
}

/// While a stop is under way, how often the shim looks for processes born after its signal.
const LATE_TERM_CHECK: Duration = Duration::from_millis(250);

/// How often the shim samples the dyno's memory for R14.
const MEMORY_SAMPLE: Duration = Duration::from_secs(1);
/// How often R14 is repeated while the dyno stays over its quota.
const R14_REPEAT: Duration = Duration::from_secs(20);

/// What one turn of the shim's loop reads from one output pipe at most (one pipe's worth):
/// then it serves its signals and deadlines again. At most this many lines are made per
/// pipe and turn, which keeps a turn to milliseconds however the dyno writes.
const READ_CHUNK: usize = 64 * 1024;

/// How long to keep reading the pipes after the dyno's init exited. Every other process of
/// the dyno dies with its init (pid namespace), so EOF comes at once; this only bounds a
/// pathological case.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl Shim {
    /// Prepares everything and starts the dyno's process. On error, whatever was made is
    /// left for [`cleanup`], which removes it idempotently.
    fn start(&mut self) -> Result<Running, StartFailure> {
        let c = &self.config;
        // First, so that the agent's relay can connect (and a client type ahead) at once.
        if c.attach.is_some() {
            self.session = Some(Session::listen(&self.dir.attach_socket()).step("attach")?);
        }
        let stack = rootfs::find_stack(&c.host.stacks_dir(), &c.stack).step("stack")?;
        let mut lower = Vec::new();
        if let Some(slug) = &c.slug {
            let cache = SlugCache::new(
                c.host.slug_layers_dir(c.host_ids()),
                UnpackLimits::default(),
                Some(c.host_ids()),
            );
            let layer = cache
                .layer(&slug.path, slug.sha256.as_deref())
                .step("slug")?;
            lower.push(layer.dir);
        }
        lower.push(stack.clone());
        let overlay = Overlay {
            lower,
            upper: self.dir.upper(),
            work: self.dir.work(),
            merged: self.dir.rootfs(),
        };
        let app_owner = c.slug.is_none().then_some(c.host_ids());
        rootfs::close_to_host_users(&self.dir.root, c.host.host_ids(0, 0).1).step("rootfs")?;
        if let quota::Made::Unlimited(why) =
            quota::limited_dir(&self.dir.disk(), c.size.limits().disk).step("disk")?
        {
            tracing::debug!("dyno {}: no disk quota: {why}", c.id);
        }
        overlay.mount(app_owner).step("rootfs")?;
        let binds: Vec<_> = c
            .mounts
            .iter()
            .map(|m| (m.source.clone(), m.destination.clone()))
            .collect();
        rootfs::make_mount_points(&self.dir.rootfs(), &binds).step("rootfs")?;

        let mut spec = spec::build(c, &self.dir, spec::shell_for(&stack)).step("spec")?;
        // The filter is installed by the shim's executor, compiled once per host, rather
        // than compiled by libcontainer in every dyno (`seccomp` module).
        let profile = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.seccomp_mut().take())
            .ok_or_else(|| anyhow::anyhow!("the spec has no seccomp profile"))
            .step("seccomp")?;
        let filter = Filter::cached(&profile, &c.host.seccomp_dir()).step("seccomp")?;
        spec::write(&spec, &self.dir).step("spec")?;
        network::ensure_host_cached(&c.host.network).step("network")?;

        let (stdio, theirs) = stdio(c, &self.dir).step("pipes")?;
        fs::create_dir_all(c.host.containers_dir()).step("container")?;
        // libcontainer writes the spec's `oomScoreAdj` into its caller, the shim, for the
        // dyno's init to inherit; the shim itself keeps the agent's protection, so that the
        // host's OOM killer takes the dyno's memory, never the process that reports its end.
        let own_oom_score_adj = fs::read_to_string(OOM_SCORE_ADJ).step("container")?;
        // Rust ignores SIGPIPE; the dyno must not inherit that.
        // SAFETY: restoring a default disposition.
        unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }.step("container")?;
        let built = ContainerBuilder::new(c.id.clone(), SyscallType::default())
            .with_root_path(c.host.containers_dir())
            .and_then(|b| b.validate_id())
            .map(|b| {
                match theirs {
                    Some([stdin, stdout, stderr]) => {
                        b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
                    }
                    None => b.with_console_socket(Some(self.dir.console_socket())),
                }
                .with_executor(Filtered {
                    filter: Arc::new(filter),
                })
                .as_init(self.dir.bundle())
                .with_systemd(c.host.cgroup_driver == cgroup::Driver::Systemd)
                .with_detach(true)
            })
            .and_then(|b| b.build());
        // SAFETY: back to Rust's usual disposition for the shim's own writes.
        unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }.step("container")?;
        let container = self.container.insert(built.step("container")?);
        fs::write(OOM_SCORE_ADJ, own_oom_score_adj.trim()).step("container")?;
        let (layout, memory) = memory_dir(c);
        cgroup::forbid_swap(layout, &memory).step("cgroup")?;
        if c.host.cgroup_driver == cgroup::Driver::Systemd {
            match Sentinel::start(&memory) {
                Ok(sentinel) => self.sentinel = Some(sentinel),
                Err(err) => tracing::warn!(
                    "dyno {}: its scope may go before its end is read (an OOM kill then goes unreported): {err}",
                    c.id
                ),
            }
        }
        let pid = container
            .pid()
            .ok_or_else(|| anyhow::anyhow!("container has no init pid"))
            .step("container")?;
        // Its user namespace exists and its command has not started: give the namespace its
        // own inotify limits, so that the dyno cannot use up host root's (a child process
        // does it while the network is wired below).
        let limiting = inotify::raise_host_limit(Path::new("/proc/sys"))
            .and_then(|()| inotify::limit_dyno(Pid::from_raw(pid.as_raw())));
        // The dyno's cgroups exist now; its command has not started, so all it writes is
        // relayed on the dyno's CPU. Not joining costs the host, not the dyno: warned about.
        let cgroup_path = c.host.dyno_cgroup(&c.id);
        match cgroup::own_cgroups().and_then(|own| {
            ShimCgroup::join(
                Path::new("/sys/fs/cgroup"),
                &cgroup_path,
                std::process::id(),
                &own,
            )
        }) {
            Ok(cpu) => self.cpu = Some(cpu),
            Err(err) => tracing::warn!(
                "dyno {}: the shim's CPU stays outside the dyno: {}",
                c.id,
                crate::error::chain(&err)
            ),
        }
        let logged = match stdio {
            Stdio::Logged { stdout, stderr } => vec![
                (stdout, Stream::Out, LineSplitter::default()),
                (stderr, Stream::Err, LineSplitter::default()),
            ],
            Stdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(session) = &mut self.session {
                    session.connect_dyno(DynoIo::pipes(stdin, stdout, stderr));
                }
                Vec::new()
            }
            Stdio::Tty(console) => {
                let master = console.receive().step("terminal")?;
                // Before the command starts, so that it never sees another size first.
                let size = c.attach.map(|a| (a.cols, a.rows)).unwrap_or_default();
                attach::set_window_size(&master, size.0, size.1).step("terminal")?;
                let io = DynoIo::tty(master).step("terminal")?;
                if let Some(session) = &mut self.session {
                    session.connect_dyno(io);
                }
                Vec::new()
            }
        };

        let publish = c.publish.zip(c.port);
        let attachment =
            network::attach(&c.host.network, &c.id, pid.as_raw(), publish).step("network")?;
        if let Err(err) = limiting.and_then(inotify::Limiting::wait) {
            tracing::warn!("dyno {}: inotify limits not set: {err}", c.id);
        }
        container.start().step("start")?;
        self.out.event(ShimEvent::Started {
            pid: pid.as_raw(),
            address: attachment.address,
        });
        let budget = c.log_rate.map(|rate| LineBudget::new(rate, Instant::now()));
        Ok(Running {
            pid,
            logged,
            budget,
        })
    }

    /// The event loop: relays output, handles stop requests, waits for the init to exit.
    ///
    /// Each turn does a bounded amount of work (at most [`READ_CHUNK`] per output pipe, see
    /// [`relay`]) and begins with the stop and kill requests, the init's exit, the stop's
    /// deadlines and the R14 sample, so none of them waits on the dyno's output however
    /// fast it comes; the signalfd is read on every turn that it is ready.
    fn supervise(&mut self, mut running: Running) -> anyhow::Result<()> {
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

    fn begin_stop(&mut self) -> StopState {
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
    fn processes(&self) -> HashSet<i32> {
        let (_, dir) = self.memory_dir();
        fs::read_to_string(dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// The dyno's programs: each process with the executable it runs now.
    fn programs(&self) -> HashSet<(i32, Option<PathBuf>)> {
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
    fn term_late_born(&mut self) {
        for program in self.programs() {
            let pid = program.0;
            if self.termed.insert(program) {
                let _ = signal::kill(Pid::from_raw(pid), self.stop_signal());
            }
        }
    }

    /// SIGKILL to every process of the dyno, at once (the runner's R10). Not a stop: the
    /// dyno ends as if it had died on its own, so it is `crashed`. Once is enough.
    fn kill_now(&mut self, stop: StopState) -> StopState {
        if stop != StopState::Killed {
            self.out.event(ShimEvent::Kill);
            self.signal_all(Signal::SIGKILL);
        }
        StopState::Killed
    }

    /// Signals every process in the dyno's cgroup (Heroku: "SIGTERM is sent to all processes
    /// in the dyno"); libcontainer freezes the cgroup while it does so, so no process forks
    /// its way out of the signal.
    fn signal_all(&mut self, sig: Signal) {
        if let Some(container) = self.container.as_mut() {
            if let Err(err) = container.kill(sig, true) {
                tracing::warn!("cannot send {sig} to dyno {}: {err}", self.config.id);
            }
        }
    }

    /// The host's cgroup layout and the dyno's memory cgroup directory.
    fn memory_dir(&self) -> (Layout, PathBuf) {
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

/// Removes a dyno whose shim is gone (`gc`, or an agent finding it at start-up): whatever it
/// left (see [`cleanup`]), then its directory. Returns what [`cleanup`] could not remove; an
/// error when the directory stays.
pub fn remove_dead(dir: &DynoDir) -> io::Result<Vec<String>> {
    let errors = match dir.read_config() {
        Ok(config) => cleanup(&config, dir, None),
        Err(_) => Vec::new(),
    };
    fs::remove_dir_all(&dir.root)?;
    Ok(errors)
}

/// Removes everything a dyno had, whatever state it is in; each step is idempotent, so this
/// also serves a sweep after a crash. Returns what could not be removed.
pub fn cleanup(config: &DynoConfig, dir: &DynoDir, container: Option<Container>) -> Vec<String> {
    // A shim that died in the dyno's CPU cgroups left its (now empty) directories there,
    // which would keep libcontainer from removing the dyno's.
    let mut errors = cgroup::remove_shim_cgroups(
        Path::new("/sys/fs/cgroup"),
        &config.host.dyno_cgroup(&config.id),
    );
    let container =
        container.or_else(|| Container::load(config.host.containers_dir().join(&config.id)).ok());
    if let Some(mut container) = container {
        if let Err(err) = container.delete(true) {
            errors.push(format!("container: {err}"));
        }
    }
    let state = config.host.containers_dir().join(&config.id);
    if state.exists() {
        if let Err(err) = fs::remove_dir_all(&state) {
            errors.push(format!("container state {}: {err}", state.display()));
        }
    }
    // A scope is systemd's: it goes by itself once empty.
    if config.host.cgroup_driver == cgroup::Driver::Cgroupfs {
        errors.extend(remove_cgroups(&config.host.cgroup_parent, &config.id));
    }
    // The container is gone, so its netns is going and takes the veth pair along.
    if let Err(err) = network::release(&config.host.network, &config.id) {
        errors.push(format!("network: {err}"));
    }
    if let Err(err) = rootfs::unmount(&dir.rootfs()) {
        errors.push(format!("rootfs: {err}"));
    }
    for d in [dir.bundle(), dir.disk()] {
        match fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("{}: {e}", d.display())),
        }
    }
    errors
}

/// Removes the dyno's cgroup directories if libcontainer left any (a crash mid-create leaves
/// a cgroup but no state for `delete` to find).
fn remove_cgroups(parent: &str, id: &str) -> Vec<String> {
    let root = Path::new("/sys/fs/cgroup");
    let dirs: Vec<PathBuf> = match Layout::detect(root) {
        Layout::V2 => vec![root.join(parent).join(id)],
        Layout::V1 => fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path().join(parent).join(id))
                    .collect()
            })
            .unwrap_or_default(),
    };
    dirs.into_iter()
        .filter(|d| d.is_dir())
        .filter_map(|d| {
            fs::remove_dir(&d)
                .err()
                .map(|e| format!("cgroup {}: {e}", d.display()))
        })
        .collect()
}

/// The stream's write buffer: a turn's lines go out in a few system calls.
const RECORDER_BUFFER: usize = 64 * 1024;

/// Size at which `stream.jsonl` is rotated: a dyno's records use at most two segments
/// (the current one and `stream.jsonl.1`) of disk, however much it prints.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Appends records to `stream.jsonl`, rotating it at [`SEGMENT_BYTES`]. Write errors are
/// logged and otherwise ignored: losing a log line must never take the dyno down.
///
/// Lines are buffered for the rest of the shim's turn ([`Recorder::flush`] before it sleeps),
/// rather than written one system call each; events are written at once.
struct Recorder {
    file: BufWriter<File>,
    path: PathBuf,
    previous: PathBuf,
    /// Bytes in the current segment.
    written: u64,
    /// Records written in all segments.
    records: u64,
    segment_bytes: u64,
    /// The `started` event, repeated at the top of every new segment: a reader that starts
    /// late (an agent re-adopting the dyno) may never see the segment that had it, and a web
    /// dyno's state needs its address.
    started: Option<ShimEvent>,
}

impl Recorder {
    fn open(dir: &DynoDir, segment_bytes: u64) -> io::Result<Self> {
        let path = dir.stream();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Recorder {
            file: BufWriter::with_capacity(RECORDER_BUFFER, file),
            path,
            previous: dir.stream_previous(),
            written,
            records: 0,
            segment_bytes,
            started: None,
        })
    }

    fn write(&mut self, record: &Record) {
        if let Err(err) = self.append(record) {
            tracing::warn!("cannot write to the stream: {err}");
            return;
        }
        if self.written >= self.segment_bytes {
            if let Err(err) = self.rotate() {
                tracing::warn!("cannot rotate the stream: {err}");
            }
        }
    }

    /// Writes one record as a JSON line and counts it.
    fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes what is buffered.
    fn flush(&mut self) {
        if let Err(err) = self.file.flush() {
            tracing::warn!("cannot write to the stream: {err}");
        }
    }

    /// Moves the current segment aside (dropping the one before) and starts a new one whose
    /// first record says how many records came before it.
    ///
    /// Order matters to readers, which watch files, not the directory: the new segment exists
    /// before the old one's last record (`continued`) tells them to open it. And
    /// `stream.jsonl` never goes missing, not even for an instant: a reader a segment or more
    /// behind opens it whenever it reaches a `continued`, which may be in the middle of a
    /// later rotation (a rename of the current segment aside, then a create, left a moment
    /// without one, and such a reader failed with "No such file"). So the new segment is made
    /// under another name, the current one is linked to `stream.jsonl.1` (a rename over the
    /// older one), and the new one is renamed over `stream.jsonl`: each step is atomic.
    fn rotate(&mut self) -> io::Result<()> {
        let staged = self.path.with_extension("jsonl.next");
        let link = self.path.with_extension("jsonl.1.next");
        for stale in [&staged, &link] {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let next = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&staged)?;
        fs::hard_link(&self.path, &link)?;
        fs::rename(&link, &self.previous)?;
        fs::rename(&staged, &self.path)?;
        self.append(&Record::Event {
            ts: timestamp(),
            event: ShimEvent::Continued,
        })?;
        self.file.flush()?;
        self.file = BufWriter::with_capacity(RECORDER_BUFFER, next);
        self.written = 0;
        let records_before = self.records;
        self.append(&Record::Event {
            ts: timestamp(),
            event: ShimEvent::Rotated { records_before },
        })?;
        match self.started.clone() {
            Some(event) => self.append(&Record::Event {
                ts: timestamp(),
                event,
            }),
            None => Ok(()),
        }
    }

    fn line(&mut self, stream: Stream, text: &str) {
        self.write(&Record::Line {
            ts: timestamp(),
            stream,
            text: text.to_string(),
        });
    }

    fn event(&mut self, event: ShimEvent) {
        if matches!(event, ShimEvent::Started { .. }) {
            self.started = Some(event.clone());
        }
        self.write(&Record::Event {
            ts: timestamp(),
            event,
        });
        self.flush();
    }
}

/// Points the shim's own stdin at /dev/null and stdout/stderr at its log file, so that it
/// holds nothing of the process that started it.
fn redirect_stdio(log: &Path) -> io::Result<()> {
    let devnull = File::open("/dev/null")?;
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    nix::unistd::dup2(devnull.as_raw_fd(), 0)?;
    nix::unistd::dup2(log.as_raw_fd(), 1)?;
    nix::unistd::dup2(log.as_raw_fd(), 2)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_rotates_and_counts_records_before_each_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let mut r = Recorder::open(&dir, 300).expect("open");
        for i in 0..20 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        let current = fs::read_to_string(dir.stream()).expect("current");
        let previous = fs::read_to_string(dir.stream_previous()).expect("previous");
        assert!(previous.len() < 300 + 200, "segments stay near the limit");
        let last_of_previous: Record =
            serde_json::from_str(previous.lines().last().expect("a line")).expect("record");
        assert!(
            matches!(
                last_of_previous,
                Record::Event {
                    event: ShimEvent::Continued,
                    ..
                }
            ),
            "a segment ends with `continued`: {previous}"
        );
        let first: Record =
            serde_json::from_str(current.lines().next().expect("a line")).expect("record");
        let Record::Event {
            event: ShimEvent::Rotated { records_before },
            ..
        } = first
        else {
            panic!("a segment starts with its rotation record: {current}");
        };
        let kept_lines = current.lines().count() as u64 - 1;
        assert!(current.contains("line 19"));
        // Every record is counted: those before the last rotation, then this segment's.
        assert_eq!(records_before + 1 + kept_lines, r.records);
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["stream.jsonl", "stream.jsonl.1"],
            "nothing staged is left"
        );
    }

    /// A reader opening `stream.jsonl` at any moment finds it, however fast segments turn.
    #[test]
    fn the_current_segment_never_goes_missing_during_rotations() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let path = dir.stream();
        let mut r = Recorder::open(&dir, 200).expect("open");
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let reader = {
            let (done, path) = (done.clone(), path.clone());
            std::thread::spawn(move || {
                let mut opens = 0u64;
                while !done.load(Ordering::SeqCst) {
                    File::open(&path).expect("stream.jsonl is always there");
                    opens += 1;
                }
                opens
            })
        };
        for i in 0..20_000 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().expect("the reader found every open") > 0);
    }

    #[test]
    fn every_new_segment_repeats_the_started_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let mut r = Recorder::open(&dir, 300).expect("open");
        let started = ShimEvent::Started {
            pid: 7,
            address: std::net::Ipv4Addr::new(10, 0, 0, 2),
        };
        r.event(started.clone());
        for i in 0..20 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        let current = fs::read_to_string(dir.stream()).expect("current");
        let second: Record =
            serde_json::from_str(current.lines().nth(1).expect("two lines")).expect("record");
        assert!(
            matches!(second, Record::Event { event, .. } if event == started),
            "{current}"
        );
    }
}
