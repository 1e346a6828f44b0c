//! `manifold run`: the built binary against a fake API that starts one-off dynos and speaks
//! attach frames (`manifold-attach`) after an HTTP/1.1 upgrade, with pipes and on a
//! pseudo-terminal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use manifold_attach::{Decoder, Frame};
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::tcgetattr;
use nix::unistd::Pid;
use serde_json::{json, Value};

const ATTACH_PATH: &str = "/apps/myapp/dynos/run.1/attach?secret=s3";
/// Long enough for a loaded CI machine, short enough that a hang fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// One attach connection, after the server's side of the upgrade.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    decoder: Decoder,
}

impl Conn {
    fn send(&mut self, frame: Frame) {
        self.writer.write_all(&frame.encode()).expect("send frame");
    }

    /// The next frame from the CLI; `None` when it closed the connection.
    fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.decoder.next_frame().expect("valid frames") {
                return Some(f);
            }
            let mut buf = [0u8; 4096];
            match self.reader.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.feed(&buf[..n]),
            }
        }
    }

    /// Closes our side cleanly and waits for the CLI to close its side, so that nothing
    /// sent is lost to a reset.
    fn close(mut self) -> Vec<Frame> {
        let _ = self.writer.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        while let Some(f) = self.recv() {
            rest.push(f);
        }
        rest
    }
}

/// What the fake does with the `n`th attach request (0 is the first).
enum Attach {
    Refuse(u16, &'static str),
    Accept(Box<dyn FnOnce(Conn) + Send>),
}

type Script = dyn Fn(usize) -> Attach + Send + Sync;

struct FakeApi {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeApi {
    fn start(script: impl Fn(usize) -> Attach + Send + Sync + 'static) -> FakeApi {
        Self::start_with_post(201, script)
    }

    /// `post_status` answers every `POST /apps/myapp/dynos` (201: a dyno `run.1`).
    fn start_with_post(
        post_status: u16,
        script: impl Fn(usize) -> Attach + Send + Sync + 'static,
    ) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let script: Arc<Script> = Arc::new(script);
        let attaches = Arc::new(Mutex::new(0usize));
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, script, attaches) = (seen.clone(), script.clone(), attaches.clone());
                thread::spawn(move || serve(stream, &seen, &*script, &attaches, post_status));
            }
        });
        FakeApi { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    fn posts(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/apps/myapp/dynos")
            .map(Request::json)
            .collect()
    }

    fn attaches(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.contains("/attach"))
            .collect()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_manifold"));
        c.args(args)
            .env("MANIFOLD_API", &self.url)
            .env("MANIFOLD_API_TOKEN", "s3cret")
            .env("USER", "tester")
            .env_remove("MANIFOLD_APP")
            .env_remove("MANIFOLD_API_TOKEN_FILE");
        c
    }

    /// Runs `manifold ARGS` with `stdin` as its input (pipes everywhere).
    fn run(&self, args: &[&str], stdin: &[u8]) -> Finished {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn manifold");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(stdin).expect("write stdin");
        drop(input);
        let out = collect(child.stdout.take().expect("stdout"));
        let err = collect(child.stderr.take().expect("stderr"));
        let status = wait(&mut child);
        Finished {
            status,
            stdout: String::from_utf8_lossy(&out.join().expect("stdout")).to_string(),
            stderr: String::from_utf8_lossy(&err.join().expect("stderr")).to_string(),
        }
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn collect(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for the child, killing it (and failing) if it hangs.
fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("manifold did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn serve(
    stream: TcpStream,
    seen: &Mutex<Vec<Request>>,
    script: &Script,
    attaches: &Mutex<usize>,
    post_status: u16,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().expect("length"));
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    let req = Request {
        method,
        path,
        headers,
        body,
    };
    seen.lock().expect("lock").push(req.clone());
    let mut out = stream;
    let answer = |out: &mut TcpStream, status: u16, body: String| {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        out.write_all(head.as_bytes()).expect("write");
        out.write_all(body.as_bytes()).expect("write");
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/apps/myapp/dynos") if post_status == 201 => {
            let attach = req.json()["attach"] == json!(true);
            let dyno = json!({
                "id": "d1", "name": "run.1", "type": "run", "state": "starting",
                "size": "standard-1x", "command": req.json()["command"],
                "attach_url": if attach { json!(ATTACH_PATH) } else { Value::Null },
            });
            answer(&mut out, 201, dyno.to_string());
        }
        ("POST", "/apps/myapp/dynos") => answer(
            &mut out,
            post_status,
            r#"{"id":"invalid_params","message":"no host has room for a standard-1x dyno"}"#.into(),
        ),
        ("POST", p) if p.ends_with("/actions/stop") => answer(&mut out, 202, "{}".into()),
        ("GET", ATTACH_PATH) => {
            let n = {
                let mut a = attaches.lock().expect("lock");
                *a += 1;
                *a - 1
            };
            match script(n) {
                Attach::Refuse(status, message) => answer(
                    &mut out,
                    status,
                    json!({"id": "x", "message": message}).to_string(),
                ),
                Attach::Accept(session) => {
                    out.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: manifold-attach\r\n\r\n",
                    )
                    .expect("write");
                    session(Conn {
                        reader,
                        writer: out,
                        decoder: Decoder::new(),
                    });
                }
            }
        }
        _ => answer(
            &mut out,
            404,
            r#"{"id":"not_found","message":"no route"}"#.into(),
        ),
    }
}

/// Sends `frames` and closes.
fn replay(frames: Vec<Frame>) -> Attach {
    Attach::Accept(Box::new(move |mut conn| {
        for f in frames {
            conn.send(f);
        }
        conn.close();
    }))
}

fn stdin_of(frames: &[Frame]) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| match f {
            Frame::Stdin(b) => b.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn piped_run_passes_stdin_output_and_exit_status() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    let api = FakeApi::start(move |_| {
        let record = record.clone();
        Attach::Accept(Box::new(move |mut conn| {
            conn.send(Frame::Status("starting".into()));
            while let Some(f) = conn.recv() {
                let eof = f == Frame::StdinEof;
                record.lock().expect("lock").push(f);
                if eof {
                    break;
                }
            }
            conn.send(Frame::Status("up".into()));
            conn.send(Frame::Stdout(b"out\n".to_vec()));
            conn.send(Frame::Stderr(b"err\n".to_vec()));
            conn.send(Frame::Exit(3));
            conn.close();
        }))
    });
    let o = api.run(
        &[
            "run",
            "-a",
            "myapp",
            "-s",
            "standard-2x",
            "-e",
            "FOO=a=b",
            "--",
            "cat",
            "-n",
        ],
        b"hello",
    );
    assert_eq!(o.status.code(), Some(3), "{}", o.stderr);
    assert_eq!(o.stdout, "out\n");
    assert_eq!(o.stderr, "Running `cat -n` on ⬢ myapp... up, run.1\nerr\n");
    assert_eq!(
        api.posts(),
        [json!({"command": "cat -n", "attach": true, "tty": false,
                "size": "standard-2x", "env": {"FOO": "a=b"}})]
    );
    let frames = got.lock().expect("lock").clone();
    assert_eq!(stdin_of(&frames), b"hello");
    assert_eq!(frames.last(), Some(&Frame::StdinEof));
    assert!(
        frames
            .iter()
            .all(|f| matches!(f, Frame::Stdin(_) | Frame::StdinEof)),
        "{frames:?}"
    );
    let attach = &api.attaches()[0];
    assert_eq!(attach.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(attach.header("upgrade"), Some("manifold-attach"));
    assert!(attach
        .header("connection")
        .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")));
}

#[test]
fn error_frame_exits_1_with_its_message() {
    let api = FakeApi::start(|_| {
        replay(vec![
            Frame::Status("starting".into()),
            Frame::Error("run.1 failed to start: the app has no release".into()),
        ])
    });
    let o = api.run(&["run", "-a", "myapp", "true"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(o.stdout, "");
    assert_eq!(
        o.stderr,
        "Running `true` on ⬢ myapp... failed\nmanifold: run.1 failed to start: the app has no release\n"
    );
}

#[test]
fn dropped_connection_attaches_again_and_continues() {
    let api = FakeApi::start(|n| match n {
        0 => replay(vec![
            Frame::Status("up".into()),
            Frame::Stdout(b"one\n".to_vec()),
        ]),
        1 => Attach::Refuse(503, "the scheduler is restarting"),
        _ => replay(vec![Frame::Stdout(b"two\n".to_vec()), Frame::Exit(0)]),
    });
    let o = api.run(&["run", "-a", "myapp", "--", "sh", "-c", "x"], b"");
    assert_eq!(o.status.code(), Some(0), "{}", o.stderr);
    assert_eq!(o.stdout, "one\ntwo\n");
    assert_eq!(o.stderr, "Running `sh -c x` on ⬢ myapp... up, run.1\n");
    let attaches = api.attaches();
    assert_eq!(attaches.len(), 3);
    for a in &attaches {
        assert_eq!(a.path, ATTACH_PATH);
        assert_eq!(a.header("authorization"), Some("Bearer s3cret"));
    }
    assert_eq!(api.posts().len(), 1, "one dyno, attached to three times");
}

#[test]
fn reattach_refused_for_good_is_explained() {
    let api = FakeApi::start(|n| match n {
        0 => replay(vec![Frame::Status("up".into())]),
        _ => Attach::Refuse(409, "run.1 has ended"),
    });
    let o = api.run(&["run", "-a", "myapp", "ls"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        o.stderr,
        "Running `ls` on ⬢ myapp... up, run.1\nmanifold: lost the connection to run.1: run.1 has ended\n"
    );
    assert_eq!(api.attaches().len(), 2);
}

#[test]
fn refused_attach_and_refused_start_show_the_api_message() {
    let api = FakeApi::start(|_| Attach::Refuse(403, "wrong attach secret"));
    let o = api.run(&["run", "-a", "myapp", "ls"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        o.stderr,
        "Running `ls` on ⬢ myapp... failed\nmanifold: cannot attach to run.1: wrong attach secret\n"
    );
    assert_eq!(api.attaches().len(), 1, "a 403 is not retried");

    let api = FakeApi::start_with_post(422, |_| Attach::Refuse(500, "unused"));
    let o = api.run(&["run", "-a", "myapp", "ls"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        o.stderr,
        "Running `ls` on ⬢ myapp... failed\nmanifold: no host has room for a standard-1x dyno\n"
    );
    assert!(api.attaches().is_empty());
}

#[test]
fn bad_run_arguments_fail_before_any_request() {
    let api = FakeApi::start(|_| Attach::Refuse(500, "unused"));
    for (args, wanted) in [
        (&["run", "-a", "myapp"][..], "manifold: missing command: manifold run -a APP -- COMMAND\n"),
        (&["run:detached", "-a", "myapp", "--"][..], "manifold: missing command: manifold run -a APP -- COMMAND\n"),
        (&["run", "-a", "myapp", "-e", "1A=x", "ls"][..], "manifold: invalid --env `1A=x`: `1A` is not a valid variable name: use letters, digits and _, not starting with a digit\n"),
        (&["run", "-a", "myapp", "-e", "NOEQ", "ls"][..], "manifold: invalid --env `NOEQ`: expected KEY=VALUE\n"),
        (&["run", "-a", "myapp", "-e", "=v", "ls"][..], "manifold: invalid --env `=v`: the name before `=` is missing\n"),
        (&["run", "-a", "myapp", "-s", "", "ls"][..], "manifold: invalid size ``: give a dyno size such as standard-1x\n"),
        (&["run", "ls"][..], "manifold: missing app: pass -a APP (or set MANIFOLD_APP)\n"),
    ] {
        let o = api.run(args, b"");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert_eq!(o.stderr, wanted, "{args:?}");
    }
    assert!(api.requests().is_empty());
}

#[test]
fn detached_run_points_at_the_log() {
    let api = FakeApi::start(|_| Attach::Refuse(500, "unused"));
    for args in [
        &[
            "run:detached",
            "-a",
            "myapp",
            "-e",
            "A=1",
            "--",
            "sleep",
            "10",
        ][..],
        &[
            "run",
            "--detached",
            "-a",
            "myapp",
            "-e",
            "A=1",
            "sleep",
            "10",
        ][..],
    ] {
        let o = api.run(args, b"");
        assert!(o.status.success(), "{}", o.stderr);
        assert_eq!(
            o.stdout,
            "Run `manifold logs -a myapp --dyno run.1` to view the output.\n"
        );
        assert_eq!(o.stderr, "Running `sleep 10` on ⬢ myapp... up, run.1\n");
    }
    let o = api.run(&["run:detached", "-a", "myapp", "--json", "ls"], b"");
    assert!(o.status.success(), "{}", o.stderr);
    let dyno: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(dyno["name"], "run.1");
    assert_eq!(o.stderr, "");
    let body = json!({"command": "sleep 10", "attach": false, "env": {"A": "1"}});
    assert_eq!(
        api.posts(),
        [
            body.clone(),
            body,
            json!({"command": "ls", "attach": false, "env": {}})
        ]
    );
    assert!(api.attaches().is_empty());
}

#[test]
fn ps_stop_stops_a_one_off() {
    let api = FakeApi::start(|_| Attach::Refuse(500, "unused"));
    let o = api.run(&["ps:stop", "run.1", "-a", "myapp"], b"");
    assert!(o.status.success(), "{}", o.stderr);
    assert_eq!(o.stdout, "Stopping run.1 dyno on myapp... done\n");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", "/apps/myapp/dynos/run.1/actions/stop")
    );
}

/// Reads a child's stream in the background; `wait_for` blocks until some text shows up.
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    fn new(mut r: impl Read + Send + 'static) -> Tail {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let fill = buf.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                fill.lock().expect("lock").extend_from_slice(&chunk[..n]);
            }
        });
        Tail(buf)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).to_string()
    }

    fn wait_for(&self, wanted: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.text().contains(wanted) {
            assert!(
                Instant::now() < deadline,
                "no {wanted:?} in {:?}",
                self.text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Frames the fake received, handed to the test as they come.
fn forward(tx: mpsc::Sender<Frame>, mut conn: Conn, last: impl Fn(&Frame) -> Option<Vec<Frame>>) {
    while let Some(f) = conn.recv() {
        let end = last(&f);
        let _ = tx.send(f);
        if let Some(frames) = end {
            for f in frames {
                conn.send(f);
            }
            conn.close();
            return;
        }
    }
}

fn next_frame(rx: &mpsc::Receiver<Frame>) -> Frame {
    rx.recv_timeout(PATIENCE).expect("a frame from manifold")
}

#[test]
fn piped_interrupt_is_sent_then_a_second_one_disconnects() {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let api = FakeApi::start(move |_| {
        let tx = tx.lock().expect("lock").clone();
        Attach::Accept(Box::new(move |mut conn| {
            conn.send(Frame::Status("up".into()));
            forward(tx, conn, |_| None);
        }))
    });
    let mut child = api
        .command(&["run", "-a", "myapp", "sleep", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _stdin = child.stdin.take();
    let err = Tail::new(child.stderr.take().expect("stderr"));
    err.wait_for("up, run.1\n");
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).expect("kill");
    loop {
        if next_frame(&rx) == Frame::Signal(2) {
            break;
        }
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "one ^C only goes to the dyno"
    );
    kill(pid, Signal::SIGINT).expect("kill");
    assert_eq!(wait(&mut child).code(), Some(130));
}

nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, nix::libc::winsize);

fn winsize(cols: u16, rows: u16) -> nix::libc::winsize {
    nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// `manifold ARGS` with the pseudo-terminal `slave` as its controlling terminal and its
/// stdin, stdout and stderr.
fn spawn_on(api: &FakeApi, slave: &OwnedFd, args: &[&str]) -> Child {
    let dup = || Stdio::from(slave.try_clone().expect("dup"));
    let mut cmd = api.command(args);
    cmd.env("TERM", "xterm-256color")
        .stdin(dup())
        .stdout(dup())
        .stderr(dup());
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (setsid, ioctl) and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if nix::libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn manifold")
}

#[test]
fn tty_run_is_raw_resizes_and_restores_the_terminal() {
    let pty = nix::pty::openpty(Some(&winsize(100, 30)), None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let api = FakeApi::start(move |_| {
        let tx = tx.lock().expect("lock").clone();
        Attach::Accept(Box::new(move |mut conn| {
            conn.send(Frame::Status("up".into()));
            forward(tx, conn, |f| {
                (*f == Frame::Resize {
                    cols: 120,
                    rows: 40,
                })
                .then(|| vec![Frame::Stdout(b"bye\r\n".to_vec()), Frame::Exit(7)])
            });
        }))
    });
    let mut child = spawn_on(&api, &pty.slave, &["run", "-a", "myapp", "bash"]);
    let master = std::fs::File::from(pty.master);
    let screen = Tail::new(master.try_clone().expect("dup"));
    screen.wait_for("Running `bash` on ⬢ myapp... up, run.1\r\n");

    assert_eq!(
        api.posts(),
        [
            json!({"command": "bash", "attach": true, "tty": true, "cols": 100, "rows": 30,
                "env": {"TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}})
        ]
    );
    assert_ne!(
        tcgetattr(&pty.slave).expect("tcgetattr"),
        before,
        "raw while attached"
    );

    // ^C, ^Z and CR are bytes for the dyno, unchanged; none of them stops the CLI.
    (&master).write_all(b"\x03\x1a\r").expect("type");
    let mut typed = Vec::new();
    while typed.len() < 3 {
        match next_frame(&rx) {
            Frame::Stdin(b) => typed.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(typed, b"\x03\x1a\r");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "^C is not a signal in raw mode"
    );

    // SAFETY: TIOCSWINSZ reads one `winsize` that outlives the call, on an open descriptor.
    unsafe { tiocswinsz(master.as_raw_fd(), &winsize(120, 40)) }.expect("TIOCSWINSZ");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGWINCH).expect("SIGWINCH");
    loop {
        match next_frame(&rx) {
            Frame::Resize {
                cols: 120,
                rows: 40,
            } => break,
            // The kernel's own SIGWINCH and ours may both be seen.
            Frame::Resize { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(wait(&mut child).code(), Some(7));
    screen.wait_for("bye\r\n");
    assert_eq!(
        tcgetattr(&pty.slave).expect("tcgetattr"),
        before,
        "the terminal's settings are back"
    );
}

#[test]
fn tty_run_restores_the_terminal_after_an_error() {
    let pty = nix::pty::openpty(Some(&winsize(80, 24)), None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let api = FakeApi::start(move |_| {
        let tx = tx.lock().expect("lock").clone();
        Attach::Accept(Box::new(move |mut conn| {
            conn.send(Frame::Status("up".into()));
            forward(tx, conn, |f| {
                (*f == Frame::Stdin(b"x".to_vec()))
                    .then(|| vec![Frame::Error("the dyno's host was lost".into())])
            });
        }))
    });
    let mut child = spawn_on(&api, &pty.slave, &["run", "-a", "myapp", "bash"]);
    let master = std::fs::File::from(pty.master);
    let screen = Tail::new(master.try_clone().expect("dup"));
    screen.wait_for("up, run.1\r\n");
    (&master).write_all(b"x").expect("type");
    assert_eq!(next_frame(&rx), Frame::Stdin(b"x".to_vec()));
    assert_eq!(wait(&mut child).code(), Some(1));
    screen.wait_for("manifold: the dyno's host was lost\r\n");
    assert_eq!(tcgetattr(&pty.slave).expect("tcgetattr"), before);
}
