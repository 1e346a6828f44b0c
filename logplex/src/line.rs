//! One log line, the two sources, and the filter `manifold logs --ps/--source` applies.
//!
//! A line is kept structured (time, source, process, message) rather than as rendered text
//! so that filters, syslog framing and the `heroku logs` rendering all read the same fields.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

/// Lines longer than this are split into several lines, as Heroku's Logplex does.
pub const MAX_MESSAGE_BYTES: usize = 10_000;

/// Who wrote a line: the app's own processes (`app`) or the platform (`heroku`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Output of a dyno (`app[web.1]`) and API events (`app[api]`).
    App,
    /// Platform lines: dyno state changes, the router, the log plex itself.
    Heroku,
}

impl Source {
    /// The word shown in a rendered line and used as the syslog APP-NAME.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Heroku => "heroku",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--source` value that is neither `app` nor `heroku`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown log source {0:?}: expected \"app\" or \"heroku\"")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "app" => Ok(Source::App),
            "heroku" => Ok(Source::Heroku),
            other => Err(UnknownSource(other.to_owned())),
        }
    }
}

/// One line of an app's log stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the line was written (shown in UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// `app` or `heroku`.
    pub source: Source,
    /// The writer inside the source: `web.1`, `router`, `api`, `build`, `logplex`.
    pub process: String,
    /// The text, without a trailing newline.
    pub message: String,
}

impl LogLine {
    /// A line stamped with the current time.
    pub fn now(source: Source, process: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            time: OffsetDateTime::now_utc(),
            source,
            process: process.into(),
            message: message.into(),
        }
    }

    /// The line as `heroku logs` prints it:
    /// `2026-11-23T10:00:00.123456+00:00 app[web.1]: message`.
    pub fn render(&self) -> String {
        self.to_string()
    }

    /// Splits a message longer than [`MAX_MESSAGE_BYTES`] into several lines with the same
    /// time, source and process, cutting on character boundaries.
    pub(crate) fn split_long(self) -> Vec<LogLine> {
        if self.message.len() <= MAX_MESSAGE_BYTES {
            return vec![self];
        }
        let mut parts = Vec::new();
        let mut rest = self.message.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_MESSAGE_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (head, tail) = rest.split_at(cut);
            parts.push(LogLine {
                time: self.time,
                source: self.source,
                process: self.process.clone(),
                message: head.to_owned(),
            });
            rest = tail;
        }
        parts
    }
}

/// Writes `time` as RFC 3339 in UTC with microseconds and a numeric `+00:00` offset, the
/// form both `heroku logs` and RFC 5424 TIMESTAMP use. Written by hand because it is
/// infallible this way and sits on the hot path of every drain.
pub(crate) fn write_timestamp(f: &mut impl fmt::Write, time: OffsetDateTime) -> fmt::Result {
    let t = time.to_offset(UtcOffset::UTC);
    write!(
        f,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// [`write_timestamp`] into a new string.
pub(crate) fn timestamp(time: OffsetDateTime) -> String {
    let mut s = String::with_capacity(32);
    // Writing into a String cannot fail.
    let _ = write_timestamp(&mut s, time);
    s
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(f, self.time)?;
        write!(f, " {}[{}]: {}", self.source, self.process, self.message)
    }
}

/// Which lines a reader wants, as `manifold logs --ps P --source S`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A process type (`web` matches `web.1`, `web.2`) or one process (`web.1`, `router`).
    pub process: Option<String>,
    /// Only lines of this source.
    pub source: Option<Source>,
}

impl Filter {
    /// Whether `line` passes. A process without a dot is a process type and matches every
    /// numbered process of that type as well as a process of exactly that name (`router`).
    pub fn matches(&self, line: &LogLine) -> bool {
        if let Some(source) = self.source {
            if line.source != source {
                return false;
            }
        }
        match self.process.as_deref() {
            None => true,
            Some(wanted) if wanted.contains('.') => line.process == wanted,
            Some(wanted) => line
                .process
                .strip_prefix(wanted)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn line(source: Source, process: &str) -> LogLine {
        LogLine {
            time: datetime!(2026-11-23 10:00:00.123456 UTC),
            source,
            process: process.into(),
            message: "hello".into(),
        }
    }

    #[test]
    fn renders_like_heroku_logs() {
        assert_eq!(
            line(Source::App, "web.1").render(),
            "2026-11-23T10:00:00.123456+00:00 app[web.1]: hello"
        );
    }

    #[test]
    fn renders_other_offsets_in_utc_with_zero_padded_micros() {
        let mut l = line(Source::Heroku, "router");
        l.time = datetime!(2026-01-02 03:04:05.000007 +02:00);
        assert_eq!(
            l.render(),
            "2026-01-02T01:04:05.000007+00:00 heroku[router]: hello"
        );
    }

    #[test]
    fn serde_uses_rfc3339_and_lowercase_source() {
        let json = serde_json::to_string(&line(Source::Heroku, "web.1")).expect("serialize");
        assert!(
            json.contains("\"time\":\"2026-11-23T10:00:00.123456Z\""),
            "{json}"
        );
        assert!(json.contains("\"source\":\"heroku\""), "{json}");
        let back: LogLine = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, line(Source::Heroku, "web.1"));
    }

    #[test]
    fn source_parses() {
        assert_eq!("app".parse(), Ok(Source::App));
        assert_eq!("heroku".parse(), Ok(Source::Heroku));
        assert!("system".parse::<Source>().is_err());
    }

    #[test]
    fn filter_process_type_vs_exact() {
        let web = Filter {
            process: Some("web".into()),
            source: None,
        };
        assert!(web.matches(&line(Source::App, "web.1")));
        assert!(web.matches(&line(Source::App, "web.12")));
        assert!(web.matches(&line(Source::App, "web")));
        assert!(!web.matches(&line(Source::App, "webhook.1")));
        assert!(!web.matches(&line(Source::App, "worker.1")));

        let web1 = Filter {
            process: Some("web.1".into()),
            source: None,
        };
        assert!(web1.matches(&line(Source::App, "web.1")));
        assert!(!web1.matches(&line(Source::App, "web.12")));

        let router = Filter {
            process: Some("router".into()),
            source: Some(Source::Heroku),
        };
        assert!(router.matches(&line(Source::Heroku, "router")));
        assert!(!router.matches(&line(Source::App, "router")));
    }

    #[test]
    fn long_messages_split_on_char_boundaries() {
        let mut l = line(Source::App, "web.1");
        l.message = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let parts = l.split_long();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.message.len() <= MAX_MESSAGE_BYTES));
        assert_eq!(
            parts.iter().map(|p| p.message.len()).sum::<usize>(),
            2 * MAX_MESSAGE_BYTES
        );
    }
}
