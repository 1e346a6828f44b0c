//! A warm shim: `manifold-agent shim --warm SOCKET`, exec'd ahead of its dyno and waiting
//! on a Unix socket for a runner to hand it one (`runner::warm`), so that a start does not
//! pay for exec'ing and loading the agent's binary (about 2 ms of every start).
//!
//! ```text
//!  runner ──spawn──▶ shim --warm S: new session, bind S.<pid> (root only), rename to S
//!                    waiting: poll S (1 s turns); exits if a stop signal is pending, if
//!                      S no longer names its socket (replaced, or the state removed), or
//!                      after IDLE with no dyno
//!  runner ──connect S, "DIR\n"──▶ accept, close S, answer "<pid>\n"
//!                    └──▶ the dyno's shim, exactly as `shim --dir DIR` (`shim::main`)
//! ```
//!
//! The socket is bound under a name of its own and renamed into place, so a runner never
//! connects before it listens; only root may connect (a connection names a directory whose
//! `config.json` the shim runs as root), and a line that is not an absolute path ends the
//! shim without running anything. It takes one dyno: the listener is closed at the first
//! connection, so a second runner racing for it gets its connection reset and starts a shim
//! of its own. Stop signals stay blocked while it waits (as the runner spawns every shim), so
//! one sent to it is seen pending and ends it rather than the dyno it would have taken.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::linux::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::setsid;

/// How long a warm shim waits for a dyno before it exits (an idle host keeps no process).
const IDLE: Duration = Duration::from_secs(600);
/// How often it wakes to check it is still wanted.
const TURN: Duration = Duration::from_secs(1);
/// How long a runner has to send the dyno's directory once connected.
const HANDOFF: Duration = Duration::from_secs(5);

/// Waits for a dyno on `socket`, then runs it as its shim; exits when not wanted.
pub fn main(socket: &Path) -> ! {
    match wait(socket) {
        Ok(Some(dir)) => super::main(&dir),
        Ok(None) => std::process::exit(0),
        Err(err) => {
            tracing::debug!("warm shim on {}: {err}", socket.display());
            std::process::exit(1)
        }
    }
}

/// The dyno directory a runner handed over, or `None` when the shim is no longer wanted.
fn wait(socket: &Path) -> io::Result<Option<PathBuf>> {
    setsid()?;
    redirect_stdio()?;
    close_inherited()?;
    let bound = PathBuf::from(format!("{}.{}", socket.display(), std::process::id()));
    let listener = super::attach::bind_private(&bound)?;
    let ours = std::fs::metadata(&bound)?.st_ino();
    std::fs::rename(&bound, socket)?;
    let since = Instant::now();
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(TURN).unwrap_or(PollTimeout::MAX);
        let ready = match poll(&mut fds, timeout) {
            Ok(n) => n > 0,
            Err(nix::errno::Errno::EINTR) => false,
            Err(e) => return Err(e.into()),
        };
        if ready {
            let (stream, _) = listener.accept()?;
            drop(listener);
            return handoff(stream).map(Some);
        }
        let still_ours = std::fs::metadata(socket).is_ok_and(|m| m.st_ino() == ours);
        if stop_pending()? || !still_ours || since.elapsed() > IDLE {
            if still_ours {
                let _ = std::fs::remove_file(socket);
            }
            return Ok(None);
        }
    }
}

/// Reads the dyno's directory and answers with this process's id.
fn handoff(stream: std::os::unix::net::UnixStream) -> io::Result<PathBuf> {
    stream.set_read_timeout(Some(HANDOFF))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let dir = line
        .strip_suffix('\n')
        .filter(|d| d.starts_with('/'))
        .ok_or_else(|| io::Error::other(format!("no dyno directory in {line:?}")))?;
    (&stream).write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(PathBuf::from(dir))
}

/// Whether a stop (SIGTERM, SIGINT) or kill (SIGUSR1) was sent while it waited.
fn stop_pending() -> io::Result<bool> {
    let mut pending = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending fills the set it is given; it is read only once filled.
    let pending = unsafe {
        if libc::sigpending(pending.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        pending.assume_init()
    };
    Ok([libc::SIGTERM, libc::SIGINT, libc::SIGUSR1]
        .into_iter()
        // SAFETY: a filled set and a valid signal number.
        .any(|s| unsafe { libc::sigismember(&pending, s) } == 1))
}

/// Closes every descriptor past stdio that the runner's own parent let it inherit (one
/// without close-on-exec): a shim that waits for minutes must not hold, say, the write end
/// of a pipe whose reader waits for its end.
fn close_inherited() -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; none past stdio is in use yet.
    if unsafe { libc::syscall(libc::SYS_close_range, 3, libc::c_uint::MAX, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Holds nothing of the runner that spawned it: stdio on /dev/null until a dyno's log.
fn redirect_stdio() -> io::Result<()> {
    super::redirect_stdio(Path::new("/dev/null"))
}
