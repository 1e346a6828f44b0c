//! Acceptance: attached one-off dynos (`manifold run`), run for real through `Dyno::start`,
//! with the test speaking the attach frames on the shim's `attach.sock` as the agent's relay
//! does.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use manifold_agent::dyno::{
    AttachSpec, DynoConfig, DynoDir, HostConfig, DEFAULT_BOOT_TIMEOUT, DYNO_GID, DYNO_UID,
};
use manifold_agent::runner::{Dyno, LogLine, RunnerError, Source};
use manifold_agent::size::DynoSize;
use manifold_attach::{Decoder, Frame};
use tokio::sync::mpsc;

const PIPES: AttachSpec = AttachSpec {
    tty: false,
    cols: 0,
    rows: 0,
};

const TTY: AttachSpec = AttachSpec {
    tty: true,
    cols: 80,
    rows: 24,
};

/// An attached dyno, followed by its supervisor in the background.
struct Run {
    id: String,
    dir: DynoDir,
    runtime: tokio::runtime::Runtime,
    follow: tokio::task::JoinHandle<Result<i32, RunnerError>>,
    lines: mpsc::UnboundedReceiver<LogLine>,
    stop: mpsc::UnboundedSender<()>,
}

impl Run {
    fn start(command: &str, attach: AttachSpec) -> Run {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "attach-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let config = DynoConfig {
            id: id.clone(),
            name: "run.1".into(),
            stack: "testing".into(),
            slug: None,
            size: DynoSize::Standard1X,
            env: BTreeMap::new(),
            command: command.into(),
            port: None,
            publish: None,
            grace: Duration::from_secs(2),
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            mounts: vec![],
            uid: DYNO_UID,
            gid: DYNO_GID,
            host: HostConfig::default(),
            attach: Some(attach),
            log_rate: None,
            access: Default::default(),
        };
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let dyno = runtime.block_on(Dyno::start(config, BIN.into())).unwrap();
        let dir = dyno.dir.clone();
        let (line_tx, lines) = mpsc::unbounded_channel();
        let (stop, stop_rx) = mpsc::unbounded_channel();
        let follow = runtime.spawn(dyno.follow(line_tx, stop_rx));
        Run {
            id,
            dir,
            runtime,
            follow,
            lines,
            stop,
        }
    }

    /// Waits for the dyno's end; returns its status and log lines, having checked that
    /// nothing of it is left on the host.
    fn end(mut self) -> (i32, Vec<LogLine>) {
        let status = self
            .runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), &mut self.follow).await
            })
            .expect("the dyno ends")
            .unwrap()
            .unwrap();
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        let left = leftovers(&self.id);
        assert!(left.is_empty(), "left behind by {}: {left:#?}", self.id);
        (status, lines)
    }
}

/// What a dyno may have left on the host: its directory, container state, cgroups, mounts
/// and address lease.
fn leftovers(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    let host = HostConfig::default();
    for path in [host.dynos_dir().join(id), host.containers_dir().join(id)] {
        if path.exists() {
            found.push(path.display().to_string());
        }
    }
    let cgroups = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![cgroups.join(&host.cgroup_parent).join(id)];
    for controller in std::fs::read_dir(cgroups).unwrap().filter_map(Result::ok) {
        dirs.push(controller.path().join(&host.cgroup_parent).join(id));
    }
    found.extend(
        dirs.into_iter()
            .filter(|d| d.is_dir())
            .map(|d| d.display().to_string()),
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    found.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&format!("/dynos/{id}/")))
            .map(|l| format!("mount {l}")),
    );
    if let Ok(leases) = std::fs::read_dir(host.network.state_dir.join("leases")) {
        for lease in leases.filter_map(Result::ok) {
            let text = std::fs::read_to_string(lease.path()).unwrap_or_default();
            if text.contains(&format!("\"{id}\"")) {
                found.push(format!("lease {text}"));
            }
        }
    }
    found
}

/// The test's end of `attach.sock`.
struct Client {
    stream: UnixStream,
    decoder: Decoder,
    frames: Vec<Frame>,
    closed: bool,
}

impl Client {
    /// Connects as soon as the shim listens.
    fn connect(socket: &Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(err) => {
                    assert!(Instant::now() < deadline, "no {}: {err}", socket.display());
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Client {
            stream,
            decoder: Decoder::new(),
            frames: Vec::new(),
            closed: false,
        }
    }

    fn send(&mut self, frames: &[Frame]) {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode_into(&mut bytes);
        }
        self.stream.write_all(&bytes).unwrap();
    }

    fn typed(&mut self, text: &str) {
        self.send(&[Frame::Stdin(text.as_bytes().to_vec())]);
    }

    /// Reads frames until `done` holds for all those read so far, the shim closes, or a
    /// minute passes (a failure, with what came).
    fn until(&mut self, what: &str, done: impl Fn(&Client) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 65536];
        while !done(self) {
            assert!(
                !self.closed && Instant::now() < deadline,
                "waiting for {what}, got {:?}: {:?}",
                self.frames,
                self.stdout()
            );
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // The shim closes after the last frame; unread input of ours makes that a reset.
                Err(_) => self.closed = true,
            }
            while let Some(f) = self.decoder.next_frame().unwrap() {
                self.frames.push(f);
            }
        }
    }

    fn read_to_the_end(&mut self) {
        self.until("the end", |c| c.closed);
    }

    fn stdout(&self) -> String {
        self.text(|f| match f {
            Frame::Stdout(b) => Some(b),
            _ => None,
        })
    }

    fn stderr(&self) -> String {
        self.text(|f| match f {
            Frame::Stderr(b) => Some(b),
            _ => None,
        })
    }

    fn text(&self, pick: impl Fn(&Frame) -> Option<&Vec<u8>>) -> String {
        let bytes: Vec<u8> = self
            .frames
            .iter()
            .filter_map(pick)
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn exit(&self) -> Option<i32> {
        match self.frames.last() {
            Some(Frame::Exit(code)) => Some(*code),
            _ => None,
        }
    }
}

fn app_lines(lines: &[LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.source == Source::App)
        .map(|l| l.text.as_str())
        .collect()
}

fn platform(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.source == Source::Heroku)
        .map(|l| l.text.clone())
        .collect()
}

/// The host pid of the dyno's init, from its `started` record.
fn started_pid(dir: &DynoDir) -> i32 {
    let stream = std::fs::read_to_string(dir.stream()).unwrap();
    let (_, rest) = stream.split_once("\"pid\":").expect("a started record");
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn started(dir: &DynoDir) -> bool {
    std::fs::read_to_string(dir.stream())
        .unwrap_or_default()
        .contains("\"type\":\"started\"")
}

#[test]
fn piped_run_takes_input_and_gives_output_and_its_exit_status_not_the_log() {
    if !ready() {
        return;
    }
    let run = Run::start("read line; echo \"got $line\"; echo err >&2; exit 3", PIPES);
    let mut client = Client::connect(&run.dir.attach_socket());
    client.send(&[Frame::Stdin(b"hello\n".to_vec()), Frame::StdinEof]);
    client.read_to_the_end();
    assert_eq!(client.stdout(), "got hello\n", "{:?}", client.frames);
    assert_eq!(client.stderr(), "err\n");
    assert_eq!(client.exit(), Some(3), "{:?}", client.frames);
    let (status, lines) = run.end();
    assert_eq!(status, 3);
    assert!(
        app_lines(&lines).is_empty(),
        "output is the client's: {lines:?}"
    );
    let p = platform(&lines);
    assert_has(&p, "Process exited with status 3");
    assert_has(&p, "State changed from up to complete");
}

#[test]
fn input_sent_before_the_dyno_starts_is_delivered() {
    if !ready() {
        return;
    }
    let run = Run::start("cat; echo done", PIPES);
    let mut client = Client::connect(&run.dir.attach_socket());
    client.send(&[Frame::Stdin(b"early\n".to_vec()), Frame::StdinEof]);
    assert!(
        !started(&run.dir),
        "the input was meant to go before the dyno started"
    );
    client.read_to_the_end();
    assert_eq!(client.stdout(), "early\ndone\n");
    assert_eq!(client.exit(), Some(0));
    assert_eq!(run.end().0, 0);
}

#[test]
fn a_terminal_has_the_clients_size_follows_resizes_and_makes_ctrl_c_a_signal() {
    if !ready() {
        return;
    }
    let run = Run::start("PS1='$ ' exec sh -i", TTY);
    let mut client = Client::connect(&run.dir.attach_socket());
    client.until("a prompt", |c| c.stdout().contains("$ "));
    client.typed("stty size\r");
    client.until("the size", |c| c.stdout().contains("24 80"));
    client.send(&[Frame::Resize {
        cols: 100,
        rows: 40,
    }]);
    client.typed("stty size\r");
    client.until("the new size", |c| c.stdout().contains("40 100"));

    client.typed("sleep 100\r");
    std::thread::sleep(Duration::from_millis(500));
    let before = client.stdout().len();
    client.typed("\x03");
    client.until("the prompt after ^C", |c| {
        c.stdout()[before..].contains("$ ")
    });
    client.typed("echo o''k\r");
    client.until("ok", |c| c.stdout().contains("\nok"));
    client.typed("exit 5\r");
    client.read_to_the_end();
    assert_eq!(client.exit(), Some(5), "{:?}", client.stdout());
    assert!(
        client.frames.iter().all(|f| !matches!(f, Frame::Stderr(_))),
        "a terminal has one output"
    );
    let (status, lines) = run.end();
    assert_eq!(status, 5);
    assert!(app_lines(&lines).is_empty(), "{lines:?}");
}

#[test]
fn a_signal_frame_reaches_every_process_of_a_piped_run() {
    if !ready() {
        return;
    }
    let run = Run::start(
        "trap 'echo INT; exit 7' INT; echo ready; while :; do sleep 0.1; done",
        PIPES,
    );
    let mut client = Client::connect(&run.dir.attach_socket());
    client.until("ready", |c| c.stdout().contains("ready\n"));
    client.send(&[Frame::Signal(2)]);
    client.read_to_the_end();
    assert_eq!(client.stdout(), "ready\nINT\n");
    assert_eq!(client.exit(), Some(7));
    assert_eq!(run.end().0, 7);
}

#[test]
fn stopping_an_attached_run_hangs_it_up() {
    if !ready() {
        return;
    }
    let run = Run::start(
        "trap 'echo HUP; exit 0' HUP; trap 'echo TERM; exit 1' TERM; echo ready; while :; do sleep 0.1; done",
        PIPES,
    );
    let mut client = Client::connect(&run.dir.attach_socket());
    client.until("ready", |c| c.stdout().contains("ready\n"));
    run.stop.send(()).unwrap();
    client.read_to_the_end();
    assert_eq!(client.stdout(), "ready\nHUP\n");
    assert_eq!(client.exit(), Some(0));
    let (status, lines) = run.end();
    assert_eq!(status, 0);
    let p = platform(&lines);
    assert_has(&p, "Stopping all processes with SIGHUP");
    assert_has(&p, "State changed from up to down");
}

/// The agent's relay comes and goes (an agent restart): output waits for it at the shim,
/// and the dyno's end too, for a while.
#[test]
fn output_and_the_exit_status_wait_for_a_client_that_comes_late() {
    if !ready() {
        return;
    }
    let run = Run::start("echo first; sleep 1; echo second; exit 4", PIPES);
    let mut first = Client::connect(&run.dir.attach_socket());
    first.until("first", |c| c.stdout() == "first\n");
    // Gone long before the dyno prints again (what a client never read is lost with it),
    // and the dyno ends while no client is there.
    drop(first);
    let pid = started_pid(&run.dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the dyno did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut late = Client::connect(&run.dir.attach_socket());
    late.read_to_the_end();
    assert_eq!(late.stdout(), "second\n");
    assert_eq!(late.exit(), Some(4));
    assert_eq!(run.end().0, 4);
}

/// Nobody ever attaches: the shim gives up on delivering the end after its linger and the
/// dyno is cleaned up as usual.
#[test]
fn a_run_nobody_attaches_to_still_ends() {
    if !ready() {
        return;
    }
    let started = Instant::now();
    let run = Run::start("echo unheard", PIPES);
    let socket: PathBuf = run.dir.attach_socket();
    let (status, lines) = run.end();
    assert_eq!(status, 0);
    assert!(app_lines(&lines).is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "it waited for a client"
    );
    assert!(!socket.exists());
}
