//! Starting a dyno: the shim's start steps, in order.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::pipe2;

use crate::dyno::{DynoConfig, DynoDir, ShimEvent, Stream};
use crate::host::quota;
use crate::host::rootfs::{self, Overlay};
use crate::host::seccomp::Filter;
use crate::logs::{LineBudget, LineSplitter};

use super::attach::{self, ConsoleSocket, DynoIo, Session};
use super::kernel::Streams;
use super::{spec, Running, Shim};

/// The shim's start steps, in the order they run; a failure names its step in the dyno's
/// log (`failed` event) and to an attached client. What each makes, [`cleanup`] undoes
/// (`teardown.rs`, in the reverse order):
///
/// ```text
///  step          makes                                         undone by
///  attach        attach.sock (an attached one-off)             the dyno directory's removal
///  stack, slug   the slug's layer (shared, cached per host)    slug collection (`gc`)
///  disk          the writable layer, under its quota           Undo::Disk
///  rootfs        the overlay, mount points for binds           Undo::Rootfs
///  spec,seccomp  bundle/config.json; the filter (cached)       Undo::Bundle
///  host network  the bridge and host rules (shared, once)      never per dyno
///  pipes         the dyno's standard streams                   closed with the shim
///  container     libcontainer's container and cgroups,         Undo::Container, Undo::State,
///                its init waiting                              Undo::Cgroups
///  cgroup        no swap; the shim's CPU in the dyno's         Undo::ShimCgroups
///  terminal      a one-off's terminal, sized                   closed with the shim
///  network       veth, address, port, policy rules             Undo::Network
///  start         the command runs                              the stop (`stop.rs`)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StartStep {
    Attach,
    Stack,
    Slug,
    Disk,
    Rootfs,
    Spec,
    Seccomp,
    HostNetwork,
    Pipes,
    Container,
    Cgroup,
    Terminal,
    Network,
    Start,
}

impl StartStep {
    /// The step's name in the `failed` event (and so in the dyno's log).
    pub(super) fn name(self) -> &'static str {
        match self {
            StartStep::Attach => "attach",
            StartStep::Stack => "stack",
            StartStep::Slug => "slug",
            StartStep::Disk => "disk",
            StartStep::Rootfs => "rootfs",
            StartStep::Spec => "spec",
            StartStep::Seccomp => "seccomp",
            StartStep::HostNetwork | StartStep::Network => "network",
            StartStep::Pipes => "pipes",
            StartStep::Container => "container",
            StartStep::Cgroup => "cgroup",
            StartStep::Terminal => "terminal",
            StartStep::Start => "start",
        }
    }
}

/// A failed start step and what went wrong, in words for the user.
pub(super) struct StartFailure {
    pub(super) step: &'static str,
    pub(super) message: String,
}

/// Names the step a result belongs to, so that its error becomes that step's failure.
trait Step<T> {
    fn step(self, step: StartStep) -> Result<T, StartFailure>;
}

impl<T, E: Into<anyhow::Error>> Step<T> for Result<T, E> {
    fn step(self, step: StartStep) -> Result<T, StartFailure> {
        self.map_err(|e| StartFailure {
            step: step.name(),
            message: format!("{:#}", e.into()),
        })
    }
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
fn stdio(c: &DynoConfig, dir: &DynoDir) -> io::Result<(Stdio, Streams)> {
    if c.attach.is_some_and(|a| a.tty) {
        return Ok((
            Stdio::Tty(ConsoleSocket::listen(&dir.console_socket())?),
            Streams::Terminal,
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
            Streams::Fds([devnull, out_w, err_w]),
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
        Streams::Fds([in_r, out_w, err_w]),
    ))
}

impl Shim {
    /// Prepares everything and starts the dyno's process: the steps of [`StartStep`], in
    /// order. On error, whatever was made is left for [`cleanup`], which undoes every step
    /// idempotently (and so also serves a dyno whose shim died half-way).
    pub(super) fn start(&mut self) -> Result<Running, StartFailure> {
        self.listen_for_client()?;
        let stack = self.mount_rootfs()?;
        let filter = self.write_spec(&stack)?;
        let (stdio, container) = self.build_container(filter)?;
        let pid = container
            .pid()
            .ok_or_else(|| anyhow::anyhow!("container has no init pid"))
            .step(StartStep::Container)?;
        self.container = Some(container);
        self.limit_cgroups()?;
        let limiting = self.kernel.runtime.limit_user_namespace(pid);
        self.join_cpu_cgroups();
        let logged = self.connect_stdio(stdio)?;
        let plug = self
            .kernel
            .network
            .plug(&self.config, pid)
            .step(StartStep::Network)?;
        if let Err(err) = limiting() {
            tracing::warn!("dyno {}: inotify limits not set: {err}", self.config.id);
        }
        if let Some(container) = self.container.as_mut() {
            container.start().step(StartStep::Start)?;
        }
        self.out.event(ShimEvent::Started {
            pid: pid.as_raw(),
            address: plug.address,
        });
        let budget = self
            .config
            .log_rate
            .map(|rate| LineBudget::new(rate, Instant::now()));
        Ok(Running {
            pid,
            logged,
            budget,
        })
    }

    /// [`StartStep::Attach`], first, so that the agent's relay can connect (and a client
    /// type ahead) at once.
    fn listen_for_client(&mut self) -> Result<(), StartFailure> {
        if self.config.attach.is_some() {
            self.session =
                Some(Session::listen(&self.dir.attach_socket()).step(StartStep::Attach)?);
        }
        Ok(())
    }

    /// [`StartStep::Stack`], [`StartStep::Slug`], [`StartStep::Disk`] and
    /// [`StartStep::Rootfs`]: the overlay of the slug's layer on the stack, with the dyno's
    /// writable layer under its disk quota. Returns the stack's directory.
    fn mount_rootfs(&mut self) -> Result<PathBuf, StartFailure> {
        let (c, mounts) = (&self.config, &self.kernel.mounts);
        let stack = rootfs::find_stack(&c.host.stacks_dir(), &c.stack).step(StartStep::Stack)?;
        let mut lower: Vec<PathBuf> = mounts
            .slug_layer(c)
            .step(StartStep::Slug)?
            .into_iter()
            .collect();
        lower.push(stack.clone());
        let overlay = Overlay {
            lower,
            upper: self.dir.upper(),
            work: self.dir.work(),
            merged: self.dir.rootfs(),
        };
        if let quota::Made::Unlimited(why) = mounts
            .limit_disk(&self.dir.disk(), c.size.limits().disk)
            .step(StartStep::Disk)?
        {
            tracing::debug!("dyno {}: no disk quota: {why}", c.id);
        }
        let binds: Vec<_> = c
            .mounts
            .iter()
            .map(|m| (m.source.clone(), m.destination.clone()))
            .collect();
        mounts
            .mount(c, &self.dir, &overlay, &binds)
            .step(StartStep::Rootfs)?;
        Ok(stack)
    }

    /// [`StartStep::Spec`] and [`StartStep::Seccomp`]: the bundle's `config.json`, and the
    /// seccomp filter taken out of it, to be installed by the runtime just before the
    /// command (compiled once per host, rather than by libcontainer in every dyno:
    /// `seccomp` module).
    fn write_spec(&mut self, stack: &Path) -> Result<Filter, StartFailure> {
        let c = &self.config;
        let mut spec = spec::build(c, &self.dir, spec::shell_for(stack)).step(StartStep::Spec)?;
        let profile = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.seccomp_mut().take())
            .ok_or_else(|| anyhow::anyhow!("the spec has no seccomp profile"))
            .step(StartStep::Seccomp)?;
        let filter = Filter::cached(&profile, &c.host.seccomp_dir()).step(StartStep::Seccomp)?;
        spec::write(&spec, &self.dir).step(StartStep::Spec)?;
        Ok(filter)
    }

    /// [`StartStep::HostNetwork`], [`StartStep::Pipes`] and [`StartStep::Container`]: the
    /// runtime builds the container, whose init waits for [`StartStep::Start`]. Returns the
    /// shim's ends of the dyno's standard streams, and the container.
    fn build_container(
        &mut self,
        filter: Filter,
    ) -> Result<(Stdio, Box<dyn super::kernel::Container>), StartFailure> {
        let c = &self.config;
        self.kernel
            .network
            .ensure_host(c)
            .step(StartStep::HostNetwork)?;
        let (stdio, theirs) = stdio(c, &self.dir).step(StartStep::Pipes)?;
        let container = self
            .kernel
            .runtime
            .build(c, &self.dir, theirs, filter)
            .step(StartStep::Container)?;
        Ok((stdio, container))
    }

    /// [`StartStep::Cgroup`]: no swap for the dyno, and a systemd scope kept until its end
    /// is read.
    fn limit_cgroups(&mut self) -> Result<(), StartFailure> {
        let c = &self.config;
        self.kernel.cgroups.forbid_swap(c).step(StartStep::Cgroup)?;
        match self.kernel.cgroups.keep_scope(c) {
            Ok(sentinel) => self.sentinel = sentinel,
            Err(err) => tracing::warn!(
                "dyno {}: its scope may go before its end is read (an OOM kill then goes unreported): {err}",
                c.id
            ),
        }
        Ok(())
    }

    /// The shim's own CPU into the dyno's cgroups (`<dyno>/shim`), once they exist and
    /// before its command starts, so that all the dyno writes is relayed on the dyno's CPU.
    /// Not joining costs the host, not the dyno: warned about, not a failure.
    fn join_cpu_cgroups(&mut self) {
        match self.kernel.cgroups.join_cpu(&self.config) {
            Ok(cpu) => self.cpu = Some(cpu),
            Err(err) => tracing::warn!(
                "dyno {}: the shim's CPU stays outside the dyno: {}",
                self.config.id,
                crate::error::chain(&err)
            ),
        }
    }

    /// [`StartStep::Terminal`]: the dyno's output to the stream, or its pipes or terminal to
    /// the attached client's session. Returns the pipes whose lines the shim logs.
    fn connect_stdio(
        &mut self,
        stdio: Stdio,
    ) -> Result<Vec<(File, Stream, LineSplitter)>, StartFailure> {
        Ok(match stdio {
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
                let master = console.receive().step(StartStep::Terminal)?;
                // Before the command starts, so that it never sees another size first.
                let size = self
                    .config
                    .attach
                    .map(|a| (a.cols, a.rows))
                    .unwrap_or_default();
                attach::set_window_size(&master, size.0, size.1).step(StartStep::Terminal)?;
                let io = DynoIo::tty(master).step(StartStep::Terminal)?;
                if let Some(session) = &mut self.session {
                    session.connect_dyno(io);
                }
                Vec::new()
            }
        })
    }
}
