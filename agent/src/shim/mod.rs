//! The shim: one small process per dyno that creates the container and stays its parent.
//!
//! ```text
//!  runner ──spawn──▶ `manifold-agent shim --dir D` (setsid; outlives the runner)
//!                                                             │ attached: listen on attach.sock
//!                                                             │ prepare: slug layer, overlay, spec
//!                                                             │ libcontainer build (init waits;
//!                                                             │   a terminal's master comes back
//!                                                             │   over console.sock)
//!                                                             │ network plug, start
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
//!
//! Files: `start.rs` (the start steps, in order), `supervise.rs` (the event loop), `stop.rs`
//! (the stop's states and signals), `teardown.rs` (each step undone, in reverse),
//! `recorder.rs` (`stream.jsonl`), `attach.rs` (an attached one-off's session), `spec.rs`
//! (the OCI spec), `kernel/` (the kernel work of the steps and the teardown, behind traits:
//! this host's, or the recording fake `tests.rs` runs the shim's decisions against).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use manifold_attach::Frame;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{getpid, getsid, setsid, Pid};

use crate::dyno::{DynoConfig, DynoDir, ShimEvent, Stream};
use crate::host::cgroup::{self, Layout, Sentinel, ShimCgroup};
use crate::logs::{LineBudget, LineSplitter};

mod attach;
mod kernel;
mod recorder;
pub mod spec;
mod start;
mod stop;
mod supervise;
mod teardown;
#[cfg(test)]
mod tests;
pub mod warm;

use attach::Session;
use kernel::{Container, Kernel};
use recorder::Recorder;
pub use recorder::SEGMENT_BYTES;
use teardown::cleanup;
pub use teardown::{cleanup_on_host, remove_dead};

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
    // A warm shim (`warm.rs`) made its session while it waited.
    if getsid(None)? != getpid() {
        setsid()?;
    }
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
        kernel: Kernel::host(),
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
    errors.extend(cleanup(
        &shim.kernel,
        &shim.config,
        &shim.dir,
        shim.container.take(),
    ));
    shim.out.event(ShimEvent::Cleaned { errors });
    Ok(0)
}

/// The host's cgroup layout and the dyno's memory controller directory.
fn memory_dir(c: &DynoConfig) -> (Layout, PathBuf) {
    let root = Path::new(cgroup::ROOT);
    let layout = Layout::detect(root);
    (layout, layout.memory_dir(root, &c.host.dyno_cgroup(&c.id)))
}

struct Shim {
    config: DynoConfig,
    dir: DynoDir,
    out: Recorder,
    /// The kernel work of its steps (`kernel/`): this host's, or a test's fake.
    kernel: Kernel,
    container: Option<Box<dyn Container>>,
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
