//! `manifold run` and `run:detached`: one-off dynos (Heroku's `heroku run`).
//!
//! ```text
//! args ──validate──▶ RunSpec ──POST /apps/{app}/dynos──▶ Dyno {name, attach_url}
//!   detached: print how to follow the log, done
//!   attached: upgrade attach_url ──▶ Session::pump ◀──▶ frames (manifold-attach)
//!               stdin thread ─▶ Stdin/StdinEof      Stdout/Stderr ─▶ stdout/stderr
//!               SIGWINCH ─▶ Resize, SIGINT ─▶ Signal Status("up") ─▶ "up, run.N"
//!               connection lost ─▶ attach again (10 s)   Exit(n) ─▶ exit n, Error ─▶ exit 1
//! ```
//!
//! With a terminal on both ends the dyno gets a pseudo-terminal and the local one goes raw
//! ([`term::RawMode`]), so every key, ^C included, is a byte for the dyno. Without one the
//! dyno gets pipes; a first ^C is sent as `SIGINT`, a second within a second disconnects.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use manifold_attach::{Decoder, Frame};
use reqwest::Upgraded;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::{Client, Dyno, UpgradeError};
use crate::cli::RunArgs;
use crate::commands::check_var_name;
use crate::term;

/// The `Upgrade:` protocol of the attach endpoint (scheduler/API.md).
pub const ATTACH_PROTOCOL: &str = "manifold-attach";
/// How long a lost connection is retried; the scheduler keeps an attached one-off this long
/// (`--run-reconnect-grace`) and replays the output the client missed.
pub const REATTACH_FOR: Duration = Duration::from_secs(10);
/// A second ^C within this long of the first disconnects (pipes only).
const DOUBLE_INTERRUPT: Duration = Duration::from_secs(1);
/// Encoded input frames waiting for the connection beyond which stdin is not read.
const OUTBOX_LIMIT: usize = 256 * 1024;

/// A validated `run`: nothing is sent before all of it checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The words joined with spaces, as Heroku's CLI does; the dyno's shell splits them.
    pub command: String,
    pub size: Option<String>,
    pub env: BTreeMap<String, String>,
}

impl RunSpec {
    pub fn from_args(args: &RunArgs) -> Result<RunSpec> {
        let command = args.command.join(" ");
        if command.trim().is_empty() {
            bail!("missing command: manifold run -a APP -- COMMAND");
        }
        let size = match args.size.as_deref().map(str::trim) {
            Some("") => bail!("invalid size ``: give a dyno size such as standard-1x"),
            other => other.map(str::to_string),
        };
        let mut env = BTreeMap::new();
        for pair in &args.env {
            match pair.split_once('=') {
                Some((k, v)) => {
                    check_var_name(k).with_context(|| format!("invalid --env `{pair}`"))?;
                    env.insert(k.to_string(), v.to_string());
                }
                None => bail!("invalid --env `{pair}`: expected KEY=VALUE"),
            }
        }
        Ok(RunSpec { command, size, env })
    }
}

/// The pseudo-terminal a dyno gets: the local terminal's size and `$TERM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tty {
    pub cols: u16,
    pub rows: u16,
    pub term: String,
}

impl Tty {
    /// The local terminal's, with Heroku's CLI's fallbacks (80x24, `xterm`).
    pub fn local() -> Tty {
        let (cols, rows) = term::stdout_size().unwrap_or((80, 24));
        let term = std::env::var("TERM")
            .ok()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "xterm".to_string());
        Tty { cols, rows, term }
    }
}

/// The body of `POST /apps/{app}/dynos`. With a terminal the dyno's environment also gets
/// `TERM`, `COLUMNS` and `LINES`, as Heroku's CLI sets them (an explicit `--env` wins).
pub fn request_body(spec: &RunSpec, attach: bool, tty: Option<&Tty>) -> Value {
    let mut env = spec.env.clone();
    let mut body = json!({ "command": spec.command, "attach": attach });
    if attach {
        body["tty"] = json!(tty.is_some());
    }
    if let Some(t) = tty {
        body["cols"] = json!(t.cols);
        body["rows"] = json!(t.rows);
        for (k, v) in [
            ("TERM", t.term.clone()),
            ("COLUMNS", t.cols.to_string()),
            ("LINES", t.rows.to_string()),
        ] {
            env.entry(k.to_string()).or_insert(v);
        }
    }
    if let Some(size) = &spec.size {
        body["size"] = json!(size);
    }
    body["env"] = json!(env);
    body
}

/// The process's exit code for a dyno's exit status (a status outside 0..=255 cannot be
/// passed on as it is, and must not wrap around to success).
pub fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(255))
}

/// `run:detached`: start, say where the output goes.
pub async fn detached(client: &Client, app: &str, spec: &RunSpec, json: bool) -> Result<()> {
    let body = request_body(spec, false, None);
    if json {
        let r = client.post(&format!("/apps/{app}/dynos"), &body).await?;
        println!("{}", serde_json::to_string_pretty(&r.body)?);
        return Ok(());
    }
    let mut line = StatusLine::start(app, &spec.command);
    let result = async {
        let dyno: Dyno = client
            .post(&format!("/apps/{app}/dynos"), &body)
            .await?
            .parse()?;
        line.up(&dyno.name);
        println!(
            "Run `manifold logs -a {app} --dyno {}` to view the output.",
            dyno.name
        );
        Ok(())
    }
    .await;
    line.fail_if_open();
    result
}

/// `run`: start, attach, pass the terminal through, exit with the dyno's status.
pub async fn attached(
    client: &Client,
    app: &str,
    spec: &RunSpec,
    no_tty: bool,
) -> Result<ExitCode> {
    let tty = term::wants_tty(no_tty).then(Tty::local);
    let mut line = StatusLine::start(app, &spec.command);
    let result = attached_session(client, app, spec, tty, &mut line).await;
    line.fail_if_open();
    result
}

async fn attached_session(
    client: &Client,
    app: &str,
    spec: &RunSpec,
    tty: Option<Tty>,
    line: &mut StatusLine,
) -> Result<ExitCode> {
    let body = request_body(spec, true, tty.as_ref());
    let dyno: Dyno = client
        .post(&format!("/apps/{app}/dynos"), &body)
        .await?
        .parse()?;
    let url = dyno.attach_url.clone().with_context(|| {
        format!(
            "the API started {} without an attach_url: is the scheduler older than this CLI?",
            dyno.name
        )
    })?;
    let conn = attach_until(Instant::now() + REATTACH_FOR, || {
        client.upgrade(&url, ATTACH_PROTOCOL)
    })
    .await
    .map_err(|e| anyhow!("cannot attach to {}: {e}", dyno.name))?;
    // Handled from here on, so that no signal leaves the terminal raw.
    let signals = Signals::new()?;
    // Raw from here on: keys typed while the dyno starts are kept by the scheduler.
    let raw = match tty {
        Some(_) => Some(term::RawMode::enter().context("cannot put the terminal in raw mode")?),
        None => None,
    };
    line.raw = raw.is_some();
    let mut session = Session {
        dyno: dyno.name.clone(),
        tty: tty.is_some(),
        line,
        input: read_stdin(),
        stdin_open: true,
        outbox: Outbox::default(),
        signals,
        last_interrupt: None,
    };
    let result = session
        .run(conn, || reattach(client, &url, &dyno.name))
        .await;
    drop(session);
    drop(raw);
    line.raw = false;
    result.map(exit_code)
}

/// Attaches again after a lost connection, for [`REATTACH_FOR`] at most.
async fn reattach(client: &Client, url: &str, dyno: &str) -> Result<Upgraded> {
    attach_until(Instant::now() + REATTACH_FOR, || {
        client.upgrade(url, ATTACH_PROTOCOL)
    })
    .await
    .map_err(|e| match e {
        UpgradeError::Refused { message, .. } => {
            anyhow!("lost the connection to {dyno}: {message}")
        }
        UpgradeError::Transport(t) => anyhow!(
            "lost the connection to {dyno} and could not attach again within {} s: {t}",
            REATTACH_FOR.as_secs()
        ),
    })
}

/// Tries `attempt` until it connects, the server refuses for good, or `deadline` passes
/// (the last error then). Waits grow from 100 ms to 1 s between tries.
pub async fn attach_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, UpgradeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, UpgradeError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        let err = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => e,
            Err(_) => return Err(UpgradeError::Transport("no answer in time".to_string())),
        };
        if !err.is_transient() || Instant::now() + wait >= deadline {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// `Running `CMD` on ⬢ APP... ` on stderr, finished by `up, run.N` once the dyno is up
/// (or `failed` when it never comes up).
struct StatusLine {
    open: bool,
    /// The terminal is raw: a newline needs its carriage return.
    raw: bool,
}

impl StatusLine {
    fn start(app: &str, command: &str) -> StatusLine {
        eprint!("Running `{command}` on ⬢ {app}... ");
        let _ = std::io::stderr().flush();
        StatusLine {
            open: true,
            raw: false,
        }
    }

    fn finish(&mut self, text: &str) {
        if self.open {
            self.open = false;
            let nl = if self.raw { "\r\n" } else { "\n" };
            eprint!("{text}{nl}");
            let _ = std::io::stderr().flush();
        }
    }

    fn up(&mut self, dyno: &str) {
        self.finish(&format!("up, {dyno}"));
    }

    fn fail_if_open(&mut self) {
        self.finish("failed");
    }
}

/// What the stdin thread reads.
#[derive(Debug)]
enum Input {
    Bytes(Vec<u8>),
    /// End of input (or a read error, which ends it just the same).
    Eof,
}

/// Reads stdin on a thread of its own: a blocking read of a terminal cannot be cancelled,
/// and a plain thread (unlike tokio's blocking pool) does not hold up the exit.
fn read_stdin() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let input = match stdin.read(&mut buf) {
                Ok(0) => Input::Eof,
                Ok(n) => Input::Bytes(buf[..n].to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => Input::Eof,
            };
            let last = matches!(input, Input::Eof);
            if tx.blocking_send(input).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// The signals the session handles instead of dying: ^C (without a terminal), window size
/// changes, and hangup/terminate (to put the terminal back before exiting).
struct Signals {
    interrupt: Signal,
    winch: Signal,
    hangup: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        let on = |kind| signal(kind).context("cannot handle signals");
        Ok(Signals {
            interrupt: on(SignalKind::interrupt())?,
            winch: on(SignalKind::window_change())?,
            hangup: on(SignalKind::hangup())?,
            terminate: on(SignalKind::terminate())?,
        })
    }
}

/// Encoded input frames not yet written, whole frames only: after a lost connection the
/// next one starts with the first frame not entirely written.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Vec<u8>>,
    /// Bytes of the front frame already written on the current connection.
    written: usize,
    len: usize,
}

impl Outbox {
    fn push(&mut self, frame: &Frame) {
        let bytes = frame.encode();
        self.len += bytes.len();
        self.frames.push_back(bytes);
    }

    fn unwritten(&self) -> &[u8] {
        self.frames.front().map_or(&[], |f| &f[self.written..])
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
        if let Some(front) = self.frames.front() {
            if self.written >= front.len() {
                self.len -= front.len();
                self.frames.pop_front();
                self.written = 0;
            }
        }
    }

    fn restart(&mut self) {
        self.written = 0;
    }
}

/// How one connection ended.
#[derive(Debug)]
enum End {
    /// The dyno's command ended with this status (or the user gave up: 130, 128+n).
    Exit(i32),
    /// The connection broke before the last frame: attach again.
    Dropped,
}

struct Session<'a> {
    dyno: String,
    tty: bool,
    line: &'a mut StatusLine,
    input: mpsc::Receiver<Input>,
    stdin_open: bool,
    outbox: Outbox,
    signals: Signals,
    last_interrupt: Option<Instant>,
}

impl Session<'_> {
    /// Pumps connection after connection until the dyno's status; `Err` for an `Error`
    /// frame or when attaching again fails.
    async fn run<F, Fut>(&mut self, conn: Upgraded, mut reattach: F) -> Result<i32>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Upgraded>>,
    {
        let mut conn = conn;
        loop {
            match self.pump(conn).await? {
                End::Exit(status) => return Ok(status),
                End::Dropped => conn = reattach().await?,
            }
        }
    }

    /// Runs one connection until the dyno's last frame or until the connection breaks.
    async fn pump(&mut self, conn: Upgraded) -> Result<End> {
        let (mut rd, mut wr): (ReadHalf<Upgraded>, WriteHalf<Upgraded>) = tokio::io::split(conn);
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        self.outbox.restart();
        loop {
            let pending = !self.outbox.unwritten().is_empty();
            let room = self.outbox.len < OUTBOX_LIMIT;
            tokio::select! {
                read = rd.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return Ok(End::Dropped),
                        Ok(n) => n,
                    };
                    decoder.feed(&buf[..n]);
                    while let Some(frame) = decoder
                        .next_frame()
                        .with_context(|| format!("garbled attach stream from {}", self.dyno))?
                    {
                        if let Some(end) = self.show(frame)? {
                            let _ = wr.shutdown().await;
                            return Ok(end);
                        }
                    }
                }
                written = wr.write(self.outbox.unwritten()), if pending => {
                    match written {
                        Ok(0) | Err(_) => return Ok(End::Dropped),
                        Ok(n) => self.outbox.advance(n),
                    }
                }
                input = self.input.recv(), if self.stdin_open && room => match input {
                    Some(Input::Bytes(b)) => self.outbox.push(&Frame::Stdin(b)),
                    Some(Input::Eof) | None => {
                        self.stdin_open = false;
                        // A terminal has no end of input (^D is a byte); pipes do.
                        if !self.tty {
                            self.outbox.push(&Frame::StdinEof);
                        }
                    }
                },
                Some(()) = self.signals.interrupt.recv() => {
                    let now = Instant::now();
                    if self.last_interrupt.is_some_and(|t| now - t < DOUBLE_INTERRUPT) {
                        return Ok(End::Exit(130));
                    }
                    self.last_interrupt = Some(now);
                    self.outbox.push(&Frame::Signal(nix::libc::SIGINT));
                }
                Some(()) = self.signals.winch.recv(), if self.tty => {
                    if let Some((cols, rows)) = term::stdout_size() {
                        self.outbox.push(&Frame::Resize { cols, rows });
                    }
                }
                Some(()) = self.signals.hangup.recv() => return Ok(End::Exit(128 + nix::libc::SIGHUP)),
                Some(()) = self.signals.terminate.recv() => return Ok(End::Exit(128 + nix::libc::SIGTERM)),
            }
        }
    }

    /// Shows one frame from the dyno; `Some` when it was the last.
    fn show(&mut self, frame: Frame) -> Result<Option<End>> {
        match frame {
            Frame::Status(s) => {
                if s == "up" {
                    self.line.up(&self.dyno);
                }
            }
            Frame::Stdout(b) => {
                self.line.up(&self.dyno);
                let mut out = std::io::stdout().lock();
                out.write_all(&b)?;
                out.flush()?;
            }
            Frame::Stderr(b) => {
                self.line.up(&self.dyno);
                let mut err = std::io::stderr().lock();
                err.write_all(&b)?;
                err.flush()?;
            }
            Frame::Exit(status) => {
                self.line.up(&self.dyno);
                return Ok(Some(End::Exit(status)));
            }
            Frame::Error(message) => bail!(message),
            // Input frames never come this way; ignore rather than fail.
            Frame::Stdin(_) | Frame::StdinEof | Frame::Resize { .. } | Frame::Signal(_) => {}
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn args(command: &[&str], size: Option<&str>, env: &[&str]) -> RunArgs {
        RunArgs {
            app: crate::cli::AppArg {
                app: Some("myapp".into()),
            },
            size: size.map(str::to_string),
            env: env.iter().map(|e| e.to_string()).collect(),
            exit_code: false,
            no_tty: false,
            detached: false,
            command: command.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn spec_joins_words_and_splits_env_at_first_equals() {
        let spec = RunSpec::from_args(&args(
            &["python", "-c", "print(1)"],
            Some("standard-2x"),
            &["A=1", "URL=pg://x?a=b", "E="],
        ))
        .expect("valid");
        assert_eq!(spec.command, "python -c print(1)");
        assert_eq!(spec.size.as_deref(), Some("standard-2x"));
        assert_eq!(spec.env["URL"], "pg://x?a=b");
        assert_eq!(spec.env["E"], "");
    }

    #[test]
    fn spec_refuses_bad_arguments() {
        for (a, wanted) in [
            (args(&[], None, &[]), "missing command"),
            (args(&["", " "], None, &[]), "missing command"),
            (args(&["ls"], Some(""), &[]), "invalid size"),
            (args(&["ls"], Some("  "), &[]), "invalid size"),
            (args(&["ls"], None, &["NOEQ"]), "invalid --env `NOEQ`"),
            (args(&["ls"], None, &["=v"]), "invalid --env `=v`"),
            (args(&["ls"], None, &["1A=v"]), "invalid --env `1A=v`"),
            (args(&["ls"], None, &["A-B=v"]), "invalid --env `A-B=v`"),
        ] {
            let err = format!("{:#}", RunSpec::from_args(&a).expect_err(wanted));
            assert!(err.contains(wanted), "{err}");
        }
    }

    #[test]
    fn body_with_a_terminal_sets_its_size_and_env() {
        let spec =
            RunSpec::from_args(&args(&["bash"], None, &["FOO=bar", "TERM=dumb"])).expect("valid");
        let tty = Tty {
            cols: 132,
            rows: 43,
            term: "xterm-256color".into(),
        };
        assert_eq!(
            request_body(&spec, true, Some(&tty)),
            json!({"command": "bash", "attach": true, "tty": true, "cols": 132, "rows": 43,
                   "env": {"FOO": "bar", "TERM": "dumb", "COLUMNS": "132", "LINES": "43"}})
        );
    }

    #[test]
    fn body_with_pipes_or_detached() {
        let spec =
            RunSpec::from_args(&args(&["ls", "-la"], Some("performance-m"), &[])).expect("valid");
        assert_eq!(
            request_body(&spec, true, None),
            json!({"command": "ls -la", "attach": true, "tty": false,
                   "size": "performance-m", "env": {}})
        );
        assert_eq!(
            request_body(&spec, false, None),
            json!({"command": "ls -la", "attach": false, "size": "performance-m", "env": {}})
        );
    }

    #[test]
    fn exit_codes_pass_through_without_wrapping() {
        assert_eq!(exit_code(0), ExitCode::SUCCESS);
        assert_eq!(exit_code(3), ExitCode::from(3));
        assert_eq!(exit_code(137), ExitCode::from(137));
        assert_eq!(exit_code(256), ExitCode::from(255));
        assert_eq!(exit_code(-1), ExitCode::from(255));
    }

    #[test]
    fn outbox_resends_a_partly_written_frame_whole() {
        let mut o = Outbox::default();
        o.push(&Frame::Stdin(b"abc".to_vec()));
        o.push(&Frame::StdinEof);
        assert_eq!(o.len, 8 + 5);
        o.advance(3);
        assert_eq!(o.unwritten().len(), 5);
        o.restart();
        assert_eq!(o.unwritten(), Frame::Stdin(b"abc".to_vec()).encode());
        o.advance(8);
        assert_eq!(o.unwritten(), Frame::StdinEof.encode());
        assert_eq!(o.len, 5);
        o.advance(5);
        assert!(o.unwritten().is_empty());
        assert_eq!(o.len, 0);
    }

    fn refused(status: StatusCode) -> UpgradeError {
        UpgradeError::Refused {
            status,
            message: format!("answered {status}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attach_retries_transient_failures_until_the_deadline() {
        let start = Instant::now();
        let mut tries = 0;
        let got: Result<(), _> = attach_until(start + REATTACH_FOR, || {
            tries += 1;
            async { Err(UpgradeError::Transport("connection refused".into())) }
        })
        .await;
        assert_eq!(
            got,
            Err(UpgradeError::Transport("connection refused".into()))
        );
        let waited = Instant::now() - start;
        assert!(
            waited <= REATTACH_FOR && waited >= Duration::from_secs(9),
            "{waited:?}"
        );
        // 0.1 + 0.2 + 0.4 + 0.8 s, then every second.
        assert!((12..=15).contains(&tries), "{tries} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn attach_stops_at_a_final_answer_and_succeeds_after_a_gateway_error() {
        let start = Instant::now();
        let mut tries = 0;
        let got: Result<(), _> = attach_until(start + REATTACH_FOR, || {
            tries += 1;
            async { Err(refused(StatusCode::CONFLICT)) }
        })
        .await;
        assert_eq!(got, Err(refused(StatusCode::CONFLICT)));
        assert_eq!(tries, 1);

        let mut tries = 0;
        let got = attach_until(start + REATTACH_FOR, || {
            tries += 1;
            let n = tries;
            async move {
                if n < 3 {
                    Err(refused(StatusCode::SERVICE_UNAVAILABLE))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn attach_gives_up_on_an_attempt_that_hangs() {
        let start = Instant::now();
        let got: Result<(), _> = attach_until(start + REATTACH_FOR, std::future::pending).await;
        assert!(matches!(got, Err(UpgradeError::Transport(_))));
        assert_eq!(Instant::now() - start, REATTACH_FOR);
    }
}
