//! The pure state machine of one dyno: the shim's records in, its state and Heroku's
//! platform lines out ([`Lifecycle`]), and the words it speaks ([`State`], [`Event`],
//! [`LogLine`]).

use super::*;

/// A run's state: the part of the one dyno state ([`DynoState`]) a run moves through (all
/// but the scheduler's `created`), with its words.
///
/// Kept as its own enum, converted with `DynoState::from`, while the daemon matches on
/// exactly these six values (`daemon/entry.rs` `proto_state`); once it converts through
/// [`DynoState`] and `manifold-proto`'s `From`, this can become [`DynoState`] itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Up,
    Stopping,
    Crashed,
    Down,
    /// A one-off dyno (`run.N`, `release.N`) or a build that finished: they are never
    /// restarted ([`runs_once`]).
    Complete,
}

impl From<State> for DynoState {
    fn from(state: State) -> DynoState {
        match state {
            State::Starting => DynoState::Starting,
            State::Up => DynoState::Up,
            State::Stopping => DynoState::Stopping,
            State::Crashed => DynoState::Crashed,
            State::Down => DynoState::Down,
            State::Complete => DynoState::Complete,
        }
    }
}

/// The dyno state's word (`up`), as `manifold ps` and the platform's lines write it.
impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DynoState::from(*self).as_str())
    }
}

/// Who a log line is from: the app's own output, or the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    App,
    Heroku,
}

/// One line of the dyno's log, in Logplex's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub ts: String,
    pub source: Source,
    pub dyno: String,
    pub stream: Option<Stream>,
    pub text: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::App => "app",
            Source::Heroku => "heroku",
        };
        write!(f, "{} {}[{}]: {}", self.ts, source, self.dyno, self.text)
    }
}

/// What following a dyno reports: its log lines and, for the daemon, its state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Line(LogLine),
    /// The dyno's state changed; `status` is set once the process ended, `reason` when the
    /// state alone does not say why (an R15, a failed start).
    State {
        state: State,
        status: Option<i32>,
        reason: Option<String>,
    },
}

/// What the I/O side must do after a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Probe `$PORT` at this address; call [`Lifecycle::port_accepted`] when it accepts, or
    /// [`Lifecycle::boot_timed_out`] if it has not after [`Lifecycle::boot_timeout`].
    ProbePort(SocketAddr),
    /// The shim is done: every resource is gone; `status` is the dyno's exit status.
    Finished { status: i32 },
}

/// The pure state machine of one dyno's run.
#[derive(Debug)]
pub struct Lifecycle {
    name: String,
    port: Option<u16>,
    grace: Duration,
    boot_timeout: Duration,
    /// What a stop sends first: SIGTERM, or SIGHUP to an attached dyno (see the shim).
    stop_signal: &'static str,
    /// The boot timeout ran out: the dyno is being killed, a late accept changes nothing.
    boot_timed_out: bool,
    one_off: bool,
    state: State,
    status: Option<i32>,
    /// Why the dyno ended, when its exit status alone does not say (`Error R15`).
    reason: Option<String>,
    /// Records seen so far, to tell how many a stream rotation dropped.
    records_seen: u64,
    last_ts: Option<String>,
}

impl Lifecycle {
    pub fn new(name: &str, port: Option<u16>, grace: Duration) -> Self {
        Lifecycle {
            name: name.to_string(),
            port,
            grace,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            stop_signal: "SIGTERM",
            boot_timed_out: false,
            // The text before the first dot, so any name the `run` command accepts is read
            // as it always was (`run.x` is a one-off, `run` alone is not).
            one_off: name
                .split_once('.')
                .is_some_and(|(process_type, _)| runs_once(process_type)),
            state: State::Starting,
            status: None,
            reason: None,
            records_seen: 0,
            last_ts: None,
        }
    }

    /// Sets the R10 limit (Heroku's 60 s by default).
    pub fn with_boot_timeout(mut self, boot_timeout: Duration) -> Self {
        self.boot_timeout = boot_timeout;
        self
    }

    /// A client is attached: a stop hangs up (SIGHUP) rather than terminates, and the log
    /// says so.
    pub fn attached(mut self, attached: bool) -> Self {
        self.stop_signal = if attached { "SIGHUP" } else { "SIGTERM" };
        self
    }

    /// How long `$PORT` may take to accept, from the dyno's start; none for dynos without a
    /// `$PORT` and for one-offs, which Heroku never kills for not binding.
    pub fn boot_timeout(&self) -> Option<Duration> {
        (self.port.is_some() && !self.one_off).then_some(self.boot_timeout)
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The exit status, once the process ended.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// Why the dyno crashed, when the state alone does not say.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The first platform line, written before the shim is started.
    pub fn starting(&self, command: &str, out: &mut Vec<LogLine>) {
        self.platform(out, format!("Starting process with command `{command}`"));
    }

    /// Feeds one record of the shim's stream.
    pub fn record(&mut self, record: Record, out: &mut Vec<LogLine>) -> Option<Action> {
        if let Record::Event {
            event: ShimEvent::Rotated { records_before },
            ..
        } = record
        {
            let dropped = records_before.saturating_sub(self.records_seen);
            if dropped > 0 {
                let since = self.last_ts.clone().unwrap_or_else(timestamp);
                self.platform(
                    out,
                    format!("Error L10 (output buffer overflow): {dropped} messages dropped since {since}"),
                );
            }
            self.records_seen = records_before + 1;
            return None;
        }
        self.records_seen += 1;
        let ts = match &record {
            Record::Line { ts, .. } | Record::Event { ts, .. } => ts.clone(),
        };
        self.last_ts = Some(ts);
        match record {
            Record::Line { ts, stream, text } => {
                out.push(LogLine {
                    ts,
                    source: Source::App,
                    dyno: self.name.clone(),
                    stream: Some(stream),
                    text,
                });
                None
            }
            Record::Event { event, .. } => self.event(event, out),
        }
    }

    fn event(&mut self, event: ShimEvent, out: &mut Vec<LogLine>) -> Option<Action> {
        match event {
            // The shim repeats `started` at the top of each stream segment so that a reader
            // that starts late (an agent re-adopting the dyno) still learns the address.
            ShimEvent::Started { .. } if self.state != State::Starting => None,
            ShimEvent::Started { address, .. } => match self.port {
                Some(port) => Some(Action::ProbePort(SocketAddr::from((address, port)))),
                None => {
                    self.transition(State::Up, out);
                    None
                }
            },
            ShimEvent::Failed { step, error } => {
                let text = format!("Error starting dyno ({step}): {error}");
                self.platform(out, text.clone());
                self.reason = Some(text);
                self.status = Some(1);
                self.transition(State::Crashed, out);
                None
            }
            ShimEvent::Stopping => {
                let signal = self.stop_signal;
                self.platform(out, format!("Stopping all processes with {signal}"));
                if self.state != State::Stopping {
                    self.state = State::Stopping;
                }
                None
            }
            ShimEvent::Killing => {
                self.platform(
                    out,
                    format!(
                        "Error R12 (Exit timeout) -> At least one process failed to exit within {} seconds of {}",
                        self.grace.as_secs(),
                        self.stop_signal
                    ),
                );
                self.platform(out, "Stopping remaining processes with SIGKILL".into());
                None
            }
            ShimEvent::Kill => {
                self.platform(out, "Stopping process with SIGKILL".into());
                None
            }
            ShimEvent::Exited { code, signal, oom } => {
                let status = manifold_attach::exit_status(code, signal);
                if oom {
                    self.reason = Some("Error R15".into());
                    self.platform(out, "Error R15 (Memory quota vastly exceeded)".into());
                    self.platform(out, "Stopping process with SIGKILL".into());
                }
                self.platform(out, format!("Process exited with status {status}"));
                self.status = Some(status);
                let next = if self.state == State::Stopping {
                    State::Down
                } else if self.one_off {
                    State::Complete
                } else {
                    State::Crashed
                };
                self.transition(next, out);
                None
            }
            // Handled in `record`, which counts records across segments.
            // `continued` only tells the tail to open the next segment.
            ShimEvent::Rotated { .. } | ShimEvent::Continued => None,
            // The shim's log rate, in Heroku's words (as the agent's shipper says it).
            ShimEvent::LinesDropped { dropped, since } => {
                self.platform(
                    out,
                    format!("Error L10 (output buffer overflow): {dropped} messages dropped since {since}"),
                );
                None
            }
            ShimEvent::MemoryQuotaExceeded { usage, quota } => {
                let mb = usage / (1024 * 1024);
                let percent = usage as f64 * 100.0 / quota.max(1) as f64;
                self.platform(out, format!("Process running mem={mb}MB({percent:.1}%)"));
                self.platform(out, "Error R14 (Memory quota exceeded)".into());
                None
            }
            ShimEvent::Cleaned { errors } => {
                for e in errors {
                    self.platform(out, format!("Cleanup incomplete: {e}"));
                }
                Some(Action::Finished {
                    status: self.status.unwrap_or(1),
                })
            }
        }
    }

    /// The web dyno's `$PORT` accepted a connection.
    pub fn port_accepted(&mut self, out: &mut Vec<LogLine>) {
        if self.state == State::Starting && !self.boot_timed_out {
            self.transition(State::Up, out);
        }
    }

    /// The boot timeout ran out. Returns whether the dyno must be killed at once (it is still
    /// starting: R10); its end, with the shim's `kill` and `exited` records, is a crash.
    pub fn boot_timed_out(&mut self, out: &mut Vec<LogLine>) -> bool {
        if self.state != State::Starting || self.boot_timeout().is_none() || self.boot_timed_out {
            return false;
        }
        self.boot_timed_out = true;
        let text = format!(
            "Error R10 (Boot timeout) -> Web process failed to bind to $PORT within {} seconds of launch",
            self.boot_timeout.as_secs()
        );
        self.platform(out, text.clone());
        self.reason = Some(text);
        true
    }

    fn transition(&mut self, to: State, out: &mut Vec<LogLine>) {
        // Heroku logs the state a stop started from, not "stopping", which it does not show.
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        let shown_from = if from == State::Stopping {
            State::Up
        } else {
            from
        };
        self.platform(out, format!("State changed from {shown_from} to {to}"));
    }

    fn platform(&self, out: &mut Vec<LogLine>, text: String) {
        out.push(LogLine {
            ts: timestamp(),
            source: Source::Heroku,
            dyno: self.name.clone(),
            stream: None,
            text,
        });
    }
}
