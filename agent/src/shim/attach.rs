//! The shim's end of an attached dyno (`manifold run`): `attach.sock`, where one client at a
//! time (the agent's relay, or a test) speaks the frames of `manifold-attach`.
//!
//! ```text
//!  client ──Stdin, StdinEof, Resize, Signal──▶ Session ──bytes──▶ stdin pipe, or the pty master
//!         ◀──Stdout, Stderr, then Exit ──────          ◀──bytes── stdout and stderr pipes, or the master
//! ```
//!
//! Nothing is lost to a slow or absent client: output waits in a bounded buffer
//! ([`OUTPUT_BOUND`]) and, once that is full, the shim stops reading the dyno, whose writes
//! then block as on a slow terminal. Input is bounded the same way ([`INPUT_BOUND`]): the
//! client is not read while the dyno does not take its stdin. A new connection replaces the
//! old one (the agent reconnects after its own restart) and gets what the old one had not
//! been sent, from a frame boundary.
//!
//! Every descriptor is nonblocking and the shim's loop only asks [`Session::interest`] what
//! to wait for, then lets [`Session::pump`] try everything: a session is a few descriptors, so
//! a few `EAGAIN`s per wake-up cost less than tracking which one woke it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use manifold_attach::{Decoder, Frame, MAX_PAYLOAD};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::stat::{umask, Mode};

/// Output of the dyno waiting for the client, at most; beyond it the dyno is not read.
pub const OUTPUT_BOUND: usize = 256 * 1024;
/// Input waiting for the dyno, at most; beyond it the client is not read.
pub const INPUT_BOUND: usize = 256 * 1024;
/// Once the dyno ended, how long the shim waits for a client to take its last frames, from
/// the last byte one took: a client that comes back (an agent restarting) still gets them.
pub const LINGER: Duration = Duration::from_secs(10);

/// Makes the frame for bytes of one output: [`Frame::Stdout`] or [`Frame::Stderr`].
type OutputFrame = fn(Vec<u8>) -> Frame;

/// The dyno's side of a session.
pub struct DynoIo {
    /// Where input goes: the write end of the stdin pipe, or the terminal's master. Closed on
    /// `StdinEof` (pipes) or when the dyno is gone.
    input: Option<File>,
    /// The stdout and stderr pipes, or the master (a terminal has one output), each with
    /// the frame its bytes travel in.
    outputs: Vec<(File, OutputFrame)>,
    tty: bool,
}

impl DynoIo {
    /// A terminal: `master` (nonblocking) carries input and output.
    pub fn tty(master: File) -> io::Result<DynoIo> {
        Ok(DynoIo {
            input: Some(master.try_clone()?),
            outputs: vec![(master, Frame::Stdout)],
            tty: true,
        })
    }

    /// Pipes: the write end of stdin and the read ends of stdout and stderr (nonblocking).
    pub fn pipes(stdin: File, stdout: File, stderr: File) -> DynoIo {
        DynoIo {
            input: Some(stdin),
            outputs: vec![(stdout, Frame::Stdout), (stderr, Frame::Stderr)],
            tty: false,
        }
    }
}

/// The connected client and what it sent that is not a whole frame yet.
struct Client {
    stream: UnixStream,
    decoder: Decoder,
}

/// One attached dyno's socket, its client and the buffers between them and the dyno.
pub struct Session {
    listener: UnixListener,
    path: PathBuf,
    client: Option<Client>,
    /// None until the container exists, and again once the dyno ended.
    dyno: Option<DynoIo>,
    /// Encoded frames for the client; `sent` bytes of the first are written already.
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    sent: usize,
    /// Bytes for the dyno's stdin or terminal.
    input: Vec<u8>,
    /// The client's stdin ended: close the pipe once `input` is written.
    input_eof: bool,
    /// Bytes written to clients, to tell whether lingering makes progress.
    delivered: u64,
}

impl Session {
    /// Listens on `path` (mode 0600: only root may attach), before the dyno exists, so that a
    /// client can connect, and send input, as early as it likes.
    pub fn listen(path: &Path) -> io::Result<Session> {
        let listener = bind_private(path)?;
        listener.set_nonblocking(true)?;
        Ok(Session {
            listener,
            path: path.to_path_buf(),
            client: None,
            dyno: None,
            out: VecDeque::new(),
            out_bytes: 0,
            sent: 0,
            input: Vec::new(),
            input_eof: false,
            delivered: 0,
        })
    }

    /// The container exists: input and output flow from now on.
    pub fn connect_dyno(&mut self, dyno: DynoIo) {
        self.dyno = Some(dyno);
    }

    /// Whether the dyno's output can still bring anything.
    pub fn outputs_open(&self) -> bool {
        self.dyno.as_ref().is_some_and(|d| !d.outputs.is_empty())
    }

    /// What to wait for. Once the dyno has `exited` its output is read whatever the buffer
    /// holds: nothing writes to it any more, so what is left is bounded by the kernel's own
    /// buffers, and reading it lets the shim see its end.
    pub fn interest(&self, exited: bool) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        if let Some(client) = &self.client {
            let mut flags = PollFlags::empty();
            if self.input.len() < INPUT_BOUND {
                flags |= PollFlags::POLLIN;
            }
            if !self.out.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            // A descriptor waited on for nothing would still report a hang-up, at once and
            // forever: leave it out instead.
            if !flags.is_empty() {
                fds.push((client.stream.as_fd(), flags));
            }
        }
        if let Some(dyno) = &self.dyno {
            if exited || self.out_bytes < OUTPUT_BOUND {
                fds.extend(
                    dyno.outputs
                        .iter()
                        .map(|(f, _)| (f.as_fd(), PollFlags::POLLIN)),
                );
            }
            if let Some(input) = dyno.input.as_ref().filter(|_| !self.input.is_empty()) {
                fds.push((input.as_fd(), PollFlags::POLLOUT));
            }
        }
        fds
    }

    /// Moves whatever can move without blocking. Returns the signals the client asked to be
    /// sent to the dyno's processes.
    pub fn pump(&mut self, exited: bool) -> Vec<Signal> {
        let mut signals = Vec::new();
        self.accept();
        self.read_client(&mut signals);
        self.write_input();
        self.write_client();
        self.read_outputs(exited);
        self.write_client();
        signals
    }

    /// The dyno ended: queues `last` (its `Exit`, or the `Error` that kept it from starting),
    /// serves the socket until a client has taken everything or [`LINGER`] passed with no
    /// client taking anything, then closes the connection and the socket.
    pub fn finish(mut self, last: Frame) {
        self.dyno = None;
        self.queue(last);
        let mut deadline = Instant::now() + LINGER;
        while !self.out.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "no client took the end of the attached session within {LINGER:?}: {} bytes dropped",
                    self.out_bytes
                );
                break;
            }
            let timeout = PollTimeout::try_from(deadline - now).unwrap_or(PollTimeout::MAX);
            let mut fds: Vec<PollFd> = self
                .interest(true)
                .into_iter()
                .map(|(fd, flags)| PollFd::new(fd, flags))
                .collect();
            if let Err(err) = poll(&mut fds, timeout) {
                if err != nix::errno::Errno::EINTR {
                    tracing::warn!("attach socket: poll failed: {err}");
                    break;
                }
            }
            drop(fds);
            let before = self.delivered;
            self.pump(true);
            if self.delivered > before {
                deadline = Instant::now() + LINGER;
            }
        }
    }

    fn queue(&mut self, frame: Frame) {
        let bytes = frame.encode();
        self.out_bytes += bytes.len();
        self.out.push_back(bytes);
    }

    /// Takes the newest waiting connection; an older client is dropped.
    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(err) = stream.set_nonblocking(true) {
                        tracing::warn!("attach socket: {err}");
                        continue;
                    }
                    if self.client.is_some() {
                        tracing::info!("a new attach client replaces the previous one");
                    }
                    self.client = Some(Client {
                        stream,
                        decoder: Decoder::new(),
                    });
                    // The old client may have had part of the first frame: the new one gets
                    // it whole.
                    self.sent = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    tracing::warn!("attach socket: accept failed: {err}");
                    return;
                }
            }
        }
    }

    fn read_client(&mut self, signals: &mut Vec<Signal>) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        while self.input.len() < INPUT_BOUND {
            let Some(client) = self.client.as_mut() else {
                return;
            };
            let n = match client.stream.read(&mut buf) {
                Ok(0) => {
                    self.client = None;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.client = None;
                    return;
                }
            };
            client.decoder.feed(&buf[..n]);
            let mut frames = Vec::new();
            loop {
                match client.decoder.next_frame() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!("dropping the attach client: {err}");
                        self.client = None;
                        break;
                    }
                }
            }
            for frame in frames {
                self.apply(frame, signals);
            }
        }
    }

    /// Acts on one frame from the client.
    fn apply(&mut self, frame: Frame, signals: &mut Vec<Signal>) {
        let Some(dyno) = self.dyno.as_ref() else {
            // The dyno ended (or never started): there is no one to give it to. A client that
            // connects early is not read before the container exists, so its input waits.
            return;
        };
        match frame {
            Frame::Stdin(bytes) if dyno.input.is_some() && !self.input_eof => {
                self.input.extend_from_slice(&bytes)
            }
            // A terminal has no end of input but the ^D its user types.
            Frame::StdinEof if !dyno.tty => self.input_eof = true,
            Frame::Resize { cols, rows } if dyno.tty => {
                if let Some(master) = &dyno.input {
                    if let Err(err) = set_window_size(master, cols, rows) {
                        tracing::warn!("cannot resize the dyno's terminal: {err}");
                    }
                }
            }
            Frame::Signal(n) => match Signal::try_from(n) {
                Ok(sig) => signals.push(sig),
                Err(_) => tracing::warn!("ignoring the attach client's unknown signal {n}"),
            },
            _ => {}
        }
    }

    fn write_input(&mut self) {
        let Some(dyno) = self.dyno.as_mut() else {
            return;
        };
        while let Some(file) = dyno.input.as_mut().filter(|_| !self.input.is_empty()) {
            match file.write(&self.input) {
                Ok(n) => {
                    self.input.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The dyno closed its stdin (EPIPE), or its terminal is gone (EIO).
                Err(_) => {
                    dyno.input = None;
                    self.input.clear();
                }
            }
        }
        if self.input_eof && self.input.is_empty() {
            dyno.input = None;
        }
    }

    fn read_outputs(&mut self, exited: bool) {
        let Some(dyno) = self.dyno.as_mut() else {
            return;
        };
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let mut closed = Vec::new();
        for (i, (file, frame)) in dyno.outputs.iter_mut().enumerate() {
            while exited || self.out_bytes < OUTPUT_BOUND {
                match file.read(&mut buf) {
                    Ok(0) => {
                        closed.push(i);
                        break;
                    }
                    Ok(n) => {
                        let bytes = frame(buf[..n].to_vec()).encode();
                        self.out_bytes += bytes.len();
                        self.out.push_back(bytes);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // A terminal's master reads EIO once every holder of its other side is gone.
                    Err(_) => {
                        closed.push(i);
                        break;
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            dyno.outputs.remove(i);
        }
        if dyno.tty && dyno.outputs.is_empty() {
            dyno.input = None;
        }
    }

    fn write_client(&mut self) {
        while let (Some(client), Some(front)) = (self.client.as_mut(), self.out.front()) {
            match client.stream.write(&front[self.sent..]) {
                Ok(n) => {
                    self.sent += n;
                    self.delivered += n as u64;
                    if self.sent == front.len() {
                        self.out_bytes -= front.len();
                        self.out.pop_front();
                        self.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.client = None;
                    self.sent = 0;
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on a unix socket only root can connect to: created under a umask of 0177 rather
/// than chmod-ed after `bind`, which would leave a moment when anyone could connect. The
/// shim is single-threaded, so changing its umask for the call races with nothing.
pub(super) fn bind_private(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = umask(Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    umask(old);
    listener
}

/// Sets the terminal's window size; the kernel sends SIGWINCH to its foreground process group.
pub fn set_window_size(tty: &impl AsRawFd, cols: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which lives for the whole call; a bad descriptor
    // is an error return, not undefined behaviour.
    let rc = unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// libcontainer's console socket: the container's init opens a pseudo-terminal in the
/// container's own devpts and sends its master here (SCM_RIGHTS) while the container is built.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `path`; it must exist before libcontainer's build, which connects to it.
    pub fn listen(path: &Path) -> io::Result<ConsoleSocket> {
        let listener = bind_private(path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The terminal's master (nonblocking), once the build has returned: by then the init has
    /// sent it, so it waits in the connection that build made.
    pub fn receive(self) -> io::Result<File> {
        let (stream, _) = self.listener.accept().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::other("the container was built without connecting to its console socket")
            } else {
                e
            }
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut received = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process just now;
                // nothing else owns them.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let master = received.into_iter().next().ok_or_else(|| {
            io::Error::other("the container's init sent no terminal on its console socket")
        })?;
        let master = File::from(master);
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use manifold_attach::decode_all;
    use nix::unistd::pipe2;

    use super::*;

    /// A pipe's (read, write) ends, ours nonblocking as the shim makes them.
    fn pipe(ours_read: bool) -> (File, File) {
        let (r, w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (r, w) = (File::from(r), File::from(w));
        let ours = if ours_read { &r } else { &w };
        nix::fcntl::fcntl(
            ours.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking");
        (r, w)
    }

    /// A session over pipes, and the dyno's ends: (stdin to read, stdout and stderr to write).
    fn piped(dir: &Path) -> (Session, File, File, File) {
        let (in_r, in_w) = pipe(false);
        let (out_r, out_w) = pipe(true);
        let (err_r, err_w) = pipe(true);
        let mut session = Session::listen(&dir.join("attach.sock")).expect("listen");
        session.connect_dyno(DynoIo::pipes(in_w, out_r, err_r));
        (session, in_r, out_w, err_w)
    }

    fn client(dir: &Path) -> UnixStream {
        let c = UnixStream::connect(dir.join("attach.sock")).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        c
    }

    fn send(client: &mut UnixStream, frames: &[Frame]) {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode_into(&mut bytes);
        }
        client.write_all(&bytes).expect("send");
    }

    /// Pumps and reads the client until `done` holds for the frames it got.
    fn pump_until(
        session: &mut Session,
        client: &mut UnixStream,
        done: impl Fn(&[Frame]) -> bool,
    ) -> Vec<Frame> {
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..500 {
            session.pump(false);
            if let Ok(n) = client.read(&mut buf) {
                decoder.feed(&buf[..n]);
            }
            while let Some(f) = decoder.next_frame().expect("frames") {
                frames.push(f);
            }
            if done(&frames) {
                return frames;
            }
        }
        panic!("gave up with {frames:?}");
    }

    fn output(frames: &[Frame], stderr: bool) -> String {
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|f| match f {
                Frame::Stdout(b) if !stderr => b.clone(),
                Frame::Stderr(b) if stderr => b.clone(),
                _ => Vec::new(),
            })
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn pipes_carry_input_then_its_end_and_output_by_stream() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut session, mut stdin, mut stdout, mut stderr) = piped(tmp.path());
        let mut c = client(tmp.path());
        send(
            &mut c,
            &[
                Frame::Stdin(b"hello\n".to_vec()),
                Frame::StdinEof,
                Frame::Signal(2),
            ],
        );
        let mut signals = Vec::new();
        for _ in 0..100 {
            signals.extend(session.pump(false));
        }
        assert_eq!(signals, [Signal::SIGINT]);
        let mut got = String::new();
        stdin.read_to_string(&mut got).expect("stdin ends");
        assert_eq!(got, "hello\n", "input, then the end of it");

        stdout.write_all(b"out").expect("write");
        stderr.write_all(b"err").expect("write");
        let frames = pump_until(&mut session, &mut c, |f| {
            output(f, false) == "out" && output(f, true) == "err"
        });
        assert!(frames.iter().all(|f| !f.is_input()), "{frames:?}");
        drop((stdout, stderr));
        for _ in 0..10 {
            session.pump(true);
        }
        assert!(!session.outputs_open());
    }

    #[test]
    fn output_waits_bounded_for_a_client_and_arrives_whole_and_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut session, _stdin, stdout, _stderr) = piped(tmp.path());
        let writer = std::thread::spawn(move || {
            let mut stdout = stdout;
            for i in 0..100_000 {
                writeln!(stdout, "line {i}").expect("write");
            }
        });
        // No client: the shim reads up to its bound, then leaves the dyno blocked.
        for _ in 0..200 {
            session.pump(false);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(session.out_bytes >= OUTPUT_BOUND - MAX_PAYLOAD);
        assert!(session.out_bytes < OUTPUT_BOUND + MAX_PAYLOAD + 64);
        let waiting_for_output = session.interest(false).len();
        assert_eq!(
            waiting_for_output, 1,
            "only the listener: the buffer is full"
        );
        assert!(!writer.is_finished(), "the dyno is held back");

        let mut c = client(tmp.path());
        let frames = pump_until(&mut session, &mut c, |f| {
            output(f, false).ends_with("line 99999\n")
        });
        writer.join().expect("writer");
        let text = output(&frames, false);
        let expected: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        assert!(text == expected, "every byte, in order");
    }

    #[test]
    fn a_new_client_replaces_the_old_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut session, _stdin, mut stdout, _stderr) = piped(tmp.path());
        let mut old = client(tmp.path());
        session.pump(false);
        let mut new = client(tmp.path());
        stdout.write_all(b"for the new one").expect("write");
        let frames = pump_until(&mut session, &mut new, |f| !f.is_empty());
        assert_eq!(output(&frames, false), "for the new one");
        let mut buf = [0u8; 16];
        assert_eq!(
            old.read(&mut buf).expect("eof"),
            0,
            "the old one was closed"
        );
    }

    #[test]
    fn finish_hands_over_the_exit_status_then_closes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut session, _stdin, mut stdout, _stderr) = piped(tmp.path());
        let mut c = client(tmp.path());
        stdout.write_all(b"last words").expect("write");
        drop(stdout);
        session.pump(true);
        session.finish(Frame::Exit(3));
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut bytes = Vec::new();
        c.read_to_end(&mut bytes).expect("to the end");
        let frames = decode_all(&bytes).expect("whole frames");
        assert_eq!(
            frames,
            [Frame::Stdout(b"last words".to_vec()), Frame::Exit(3)]
        );
        assert!(
            !tmp.path().join("attach.sock").exists(),
            "the socket is removed"
        );
    }

    #[test]
    fn a_terminal_is_resized_and_takes_input() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let master = File::from(pty.master);
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("nonblocking");
        set_window_size(&master, 80, 24).expect("size");
        let mut session = Session::listen(&tmp.path().join("attach.sock")).expect("listen");
        session.connect_dyno(DynoIo::tty(master).expect("tty"));
        let mut c = client(tmp.path());
        send(
            &mut c,
            &[
                Frame::Resize {
                    cols: 100,
                    rows: 40,
                },
                Frame::StdinEof,
                Frame::Stdin(b"typed\n".to_vec()),
            ],
        );
        for _ in 0..100 {
            session.pump(false);
        }
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills the `winsize` it is given, which outlives the call.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 40));
        let mut slave = File::from(pty.slave);
        let mut line = [0u8; 6];
        slave.read_exact(&mut line).expect("read");
        assert_eq!(&line, b"typed\n", "a terminal ignores the end of input");
    }
}
