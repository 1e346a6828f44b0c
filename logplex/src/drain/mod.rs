//! Drains: shipping an app's stream to a syslog server or an HTTPS endpoint.
//!
//! Every drain is its own tokio task reading its own [`DrainQueue`] (1,024 lines, as on
//! Heroku). `push` only offers lines to the queue, so a drain that is down or slow costs the
//! rest of the plex nothing: its queue fills, further lines are counted as lost, and once
//! the drain delivers again it reports the loss as Heroku's L10 line into the app's stream.
//! Delivery failures are retried with capped exponential backoff.
//!
//! Start with [`parse_drain_url`]; the transports live in [`syslog`] and [`https`].

pub(crate) mod guard;
pub(crate) mod https;
pub(crate) mod syslog;
pub(crate) mod tls;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use crate::buffer::{Bounded, Overflow};
use crate::line::LogLine;
use crate::metrics::{Metrics, Transport};

/// One drain of an app, as the scheduler stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The drain's id (a uuid chosen by the scheduler).
    pub id: String,
    /// Where to send: `syslog://`, `syslog+tls://`, `https://` (or `http://`).
    pub url: String,
    /// `d.<uuid>`: sent as the syslog HOSTNAME and the `Logplex-Drain-Token` header so the
    /// receiver can tell drains apart.
    pub token: String,
}

/// A checked drain URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainUrl {
    /// RFC 5424 over plain TCP.
    Syslog {
        /// Host name or address.
        host: String,
        /// TCP port (required: syslog has no single well-known port for TCP).
        port: u16,
    },
    /// RFC 5424 over TLS; the server certificate is checked against the plex's roots.
    SyslogTls {
        /// Host name or address, also the name checked in the certificate.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// Batched POSTs of syslog frames; `http://` is accepted for local testing.
    Https(Url),
}

/// Why a drain URL was refused. Each message says what to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrainUrlError {
    /// Not a URL at all.
    #[error("drain url {url:?} is not a valid url: {source}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What the URL parser objected to.
        source: url::ParseError,
    },
    /// A scheme the plex cannot send to.
    #[error(
        "drain url must start with syslog://, syslog+tls:// or https:// (got {scheme:?} in {url:?})"
    )]
    Scheme {
        /// The URL as given.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// No host after the scheme.
    #[error("drain url {url:?} has no host")]
    MissingHost {
        /// The URL as given.
        url: String,
    },
    /// A syslog URL without a port.
    #[error("syslog drain url {url:?} has no port: add one, as in syslog://logs.example.com:514")]
    MissingPort {
        /// The URL as given.
        url: String,
    },
    /// A syslog URL with a path, query or user name, which syslog cannot carry.
    #[error(
        "syslog drain url {url:?} must be only host and port, as in syslog://logs.example.com:514"
    )]
    SyslogExtra {
        /// The URL as given.
        url: String,
    },
}

/// Checks a drain URL and says which transport it uses.
pub fn parse_drain_url(url: &str) -> Result<DrainUrl, DrainUrlError> {
    let parsed = Url::parse(url.trim()).map_err(|source| match source {
        url::ParseError::RelativeUrlWithoutBase => DrainUrlError::Scheme {
            url: url.to_owned(),
            scheme: String::new(),
        },
        url::ParseError::EmptyHost => DrainUrlError::MissingHost {
            url: url.to_owned(),
        },
        source => DrainUrlError::Invalid {
            url: url.to_owned(),
            source,
        },
    })?;
    let tls = match parsed.scheme() {
        "syslog" => false,
        "syslog+tls" => true,
        "https" | "http" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(DrainUrlError::MissingHost {
                    url: url.to_owned(),
                });
            }
            return Ok(DrainUrl::Https(parsed));
        }
        other => {
            return Err(DrainUrlError::Scheme {
                url: url.to_owned(),
                scheme: other.to_owned(),
            })
        }
    };
    let host = match parsed.host() {
        Some(url::Host::Ipv6(addr)) => addr.to_string(),
        Some(host) => host.to_string(),
        None => {
            return Err(DrainUrlError::MissingHost {
                url: url.to_owned(),
            })
        }
    };
    if host.is_empty() {
        return Err(DrainUrlError::MissingHost {
            url: url.to_owned(),
        });
    }
    let port = parsed.port().ok_or_else(|| DrainUrlError::MissingPort {
        url: url.to_owned(),
    })?;
    if !matches!(parsed.path(), "" | "/")
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(DrainUrlError::SyslogExtra {
            url: url.to_owned(),
        });
    }
    Ok(if tls {
        DrainUrl::SyslogTls { host, port }
    } else {
        DrainUrl::Syslog { host, port }
    })
}

/// Timing and sizes every drain task follows (from [`crate::PlexConfig`]).
#[derive(Clone, Debug)]
pub(crate) struct DrainSettings {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub batch_max: usize,
    pub batch_linger: Duration,
    pub timeout: Duration,
    /// Where drains may connect (see [`guard`]).
    pub destinations: guard::Destinations,
}

/// A drain's bounded queue: filled by `push`, emptied by the drain task.
#[derive(Debug)]
pub(crate) struct DrainQueue {
    lines: Mutex<Bounded>,
    ready: Notify,
}

impl DrainQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Mutex::new(Bounded::new(capacity)),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Bounded> {
        // Every operation under this lock is a single queue step, so a poisoned lock still
        // guards a consistent queue.
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a copy of `line`, or counts it as lost when full; never waits.
    pub fn offer(&self, line: &LogLine) -> bool {
        let kept = self.lock().offer(line.clone());
        if kept {
            self.ready.notify_one();
        }
        kept
    }

    /// Waits for at least one line, then takes up to `max`.
    pub async fn next_batch(&self, max: usize) -> Vec<LogLine> {
        loop {
            let batch = self.lock().take(max);
            if !batch.is_empty() {
                return batch;
            }
            self.ready.notified().await;
        }
    }

    /// Like [`Self::next_batch`], then keeps collecting until the batch is full or `linger`
    /// has passed since the first line: fewer, larger requests under load.
    pub async fn next_batch_lingering(&self, max: usize, linger: Duration) -> Vec<LogLine> {
        let mut batch = self.next_batch(max).await;
        let deadline = Instant::now() + linger;
        while batch.len() < max {
            if tokio::time::timeout_at(deadline, self.ready.notified())
                .await
                .is_err()
            {
                break;
            }
            batch.extend(self.lock().take(max - batch.len()));
        }
        // A wake-up that arrived while collecting may be stored; it is harmless (the next
        // `next_batch` finds the queue empty and waits again).
        batch.extend(self.lock().take(max - batch.len()));
        batch
    }

    /// Lines lost while full, once the queue has room again.
    pub fn take_overflow(&self) -> Option<Overflow> {
        self.lock().take_overflow()
    }
}

/// Capped exponential backoff between delivery attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Writes a line into the app's stream; how a drain task reports L10.
pub(crate) type Report = Arc<dyn Fn(LogLine) + Send + Sync>;

/// Everything a drain task needs.
pub(crate) struct DrainTask {
    pub app: String,
    pub drain: Drain,
    pub queue: Arc<DrainQueue>,
    pub settings: DrainSettings,
    pub tls: tls::Tls,
    pub metrics: Arc<Metrics>,
    pub report: Report,
}

impl DrainTask {
    /// Called when the drain's host is refused (see [`guard`]): logs it, and the first time
    /// in a row also tells the app, in its own stream, why its drain gets nothing.
    fn refused(&self, transport: Transport, reason: &guard::Refused, told: &mut bool) {
        self.metrics.failed(transport);
        tracing::warn!(app = %self.app, drain = %self.drain.id, %reason, "log drain refused");
        if !*told {
            *told = true;
            (self.report)(LogLine::now(
                crate::Source::Heroku,
                "logplex",
                format!("Error: log drain {} refused: {reason}", self.drain.token),
            ));
        }
    }

    /// Called after each successful delivery: reports lines lost meanwhile as L10.
    fn delivered(&self, transport: Transport, lines: usize) {
        self.metrics.delivered(transport, lines);
        if let Some(overflow) = self.queue.take_overflow() {
            tracing::warn!(
                app = %self.app,
                drain = %self.drain.id,
                dropped = overflow.count,
                "drain buffer overflowed"
            );
            (self.report)(overflow.drain_notice());
        }
    }
}

/// A running drain; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct RunningDrain {
    pub drain: Drain,
    pub queue: Arc<DrainQueue>,
    task: JoinHandle<()>,
}

impl RunningDrain {
    /// Starts the task for `url` on the given runtime.
    pub fn start(handle: &tokio::runtime::Handle, url: DrainUrl, task: DrainTask) -> Self {
        let drain = task.drain.clone();
        let queue = task.queue.clone();
        let join = match url {
            DrainUrl::Syslog { host, port } => {
                handle.spawn(syslog::run(task, host, port, syslog::Security::Plain))
            }
            DrainUrl::SyslogTls { host, port } => {
                handle.spawn(syslog::run(task, host, port, syslog::Security::Tls))
            }
            DrainUrl::Https(url) => handle.spawn(https::run(task, url)),
        };
        Self {
            drain,
            queue,
            task: join,
        }
    }
}

impl Drop for RunningDrain {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        assert_eq!(
            parse_drain_url("syslog://logs.example.com:514"),
            Ok(DrainUrl::Syslog {
                host: "logs.example.com".into(),
                port: 514
            })
        );
        assert_eq!(
            parse_drain_url("syslog+tls://127.0.0.1:6514"),
            Ok(DrainUrl::SyslogTls {
                host: "127.0.0.1".into(),
                port: 6514
            })
        );
        assert_eq!(
            parse_drain_url("syslog://[::1]:514"),
            Ok(DrainUrl::Syslog {
                host: "::1".into(),
                port: 514
            })
        );
        assert!(matches!(
            parse_drain_url("https://user:pw@logs.example.com/drain?x=1"),
            Ok(DrainUrl::Https(_))
        ));
        assert!(matches!(
            parse_drain_url("http://127.0.0.1:8080/"),
            Ok(DrainUrl::Https(_))
        ));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |u: &str| parse_drain_url(u).expect_err(u).to_string();
        assert!(err("ftp://x:1").starts_with(
            "drain url must start with syslog://, syslog+tls:// or https:// (got \"ftp\""
        ));
        assert!(err("logs.example.com:514").starts_with("drain url must start with"));
        assert!(err("/var/log").starts_with("drain url must start with"));
        assert!(err("syslog://logs.example.com").contains("has no port"));
        assert!(err("syslog+tls://logs.example.com").contains("has no port"));
        assert!(
            err("syslog://:514").contains("has no host"),
            "{}",
            err("syslog://:514")
        );
        assert!(err("syslog://h:514/path").contains("only host and port"));
        assert!(
            err("https://").contains("has no host"),
            "{}",
            err("https://")
        );
        assert!(err("syslog://h:99999").contains("not a valid url"));
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[tokio::test]
    async fn lingering_batch_collects_until_full_or_linger() {
        let q = DrainQueue::new(1024);
        for i in 0..3 {
            q.offer(&LogLine::now(crate::Source::App, "web.1", i.to_string()));
        }
        let batch = q.next_batch_lingering(2, Duration::from_secs(60)).await;
        assert_eq!(batch.len(), 2, "full batch returns at once");
        let batch = q.next_batch_lingering(10, Duration::from_millis(20)).await;
        assert_eq!(batch.len(), 1, "partial batch returns after the linger");
    }
}
