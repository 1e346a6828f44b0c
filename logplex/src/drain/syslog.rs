//! Syslog drains: RFC 5424 messages framed by RFC 6587 octet counting, over TCP or TLS.
//!
//! A message looks like Heroku's:
//! `<190>1 2026-11-23T10:00:00.123456+00:00 d.<uuid> app web.1 - - message`
//! (local7.info, the drain token as HOSTNAME, the source as APP-NAME, the process as PROCID,
//! no MSGID, no structured data), and travels as `<octets> <message>`. HTTPS drains send
//! the same frames, so [`frame`] lives here and is shared.
//!
//! A TCP write that succeeds only means the kernel took the bytes, so a write into a
//! connection the server already closed "succeeds" and is lost. Syslog servers never send,
//! so each connection has a small reader task watching for the server's EOF; the sender
//! checks it before every write and reconnects instead of writing into a dead connection
//! (servers that close idle connections lose nothing). Lines written in the instant before
//! a server closes can still be lost, as with any syslog-over-TCP sender.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::{guard, Backoff, DrainTask};
use crate::line::{write_timestamp, LogLine};
use crate::metrics::Transport;

/// PRI of every message: facility local7 (23) × 8 + severity info (6), as Heroku sends.
pub(crate) const PRI: u8 = 190;

/// Appends one octet-counted RFC 5424 frame for `line` to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, line: &LogLine, token: &str) {
    let mut msg = String::with_capacity(80 + line.message.len());
    // Writing into a String cannot fail.
    let _ = write!(msg, "<{PRI}>1 ");
    let _ = write_timestamp(&mut msg, line.time);
    msg.push(' ');
    push_field(&mut msg, token, 255);
    msg.push(' ');
    push_field(&mut msg, line.source.as_str(), 48);
    msg.push(' ');
    push_field(&mut msg, &line.process, 128);
    msg.push_str(" - - ");
    msg.push_str(&line.message);
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// Appends a header field: RFC 5424 allows only printable US-ASCII without spaces, up to a
/// maximum length, and `-` for an empty value.
fn push_field(out: &mut String, value: &str, max: usize) {
    let start = out.len();
    out.extend(
        value
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .take(max),
    );
    if out.len() == start {
        out.push('-');
    }
}

/// Frames a whole batch.
pub(crate) fn frames(lines: &[LogLine], token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() * 128);
    for line in lines {
        frame(&mut out, line, token);
    }
    out
}

/// Plain TCP or TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Security {
    Plain,
    Tls,
}

/// Why a connection or write failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum SyslogError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error(transparent)]
    Resolve(guard::ResolveError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("tls is not set up: {0}")]
    TlsSetup(#[source] std::sync::Arc<rustls::Error>),
    #[error("{0:?} is not a valid tls server name")]
    ServerName(String),
    #[error("tls handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("write failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
}

/// TCP or TLS, behind one type.
trait SyslogStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> SyslogStream for T {}

/// The write half of a connection plus the watcher of its read half.
struct Connection {
    writer: WriteHalf<Box<dyn SyslogStream>>,
    closed: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
}

impl Connection {
    fn new(stream: Box<dyn SyslogStream>) -> Self {
        let (mut reader, writer) = tokio::io::split(stream);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let watcher = tokio::spawn(async move {
            let mut sink = [0u8; 512];
            // Anything a server sends is ignored; only the end of the stream matters.
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
            flag.store(true, Ordering::Release);
        });
        Self {
            writer,
            closed,
            watcher,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

async fn connect(
    task: &DrainTask,
    host: &str,
    port: u16,
    security: Security,
) -> Result<Connection, SyslogError> {
    let timeout = task.settings.timeout;
    // Connecting to the checked addresses, not the name, leaves DNS no second say.
    let addresses = tokio::time::timeout(timeout, task.settings.destinations.resolve(host, port))
        .await
        .map_err(|_| SyslogError::Timeout(timeout))?
        .map_err(SyslogError::Resolve)?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addresses[..]))
        .await
        .map_err(|_| SyslogError::Timeout(timeout))?
        .map_err(SyslogError::Connect)?;
    // Lines are written in batches already; waiting to coalesce more only adds latency.
    let _ = tcp.set_nodelay(true);
    match security {
        Security::Plain => Ok(Connection::new(Box::new(tcp))),
        Security::Tls => {
            let config = task.tls.clone().map_err(SyslogError::TlsSetup)?;
            let name = ServerName::try_from(host.to_owned())
                .map_err(|_| SyslogError::ServerName(host.to_owned()))?;
            let tls = tokio::time::timeout(timeout, TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| SyslogError::Timeout(timeout))?
                .map_err(SyslogError::Handshake)?;
            Ok(Connection::new(Box::new(tls)))
        }
    }
}

async fn write(conn: &mut Connection, bytes: &[u8], timeout: Duration) -> Result<(), SyslogError> {
    if conn.closed.load(Ordering::Acquire) {
        return Err(SyslogError::Closed);
    }
    tokio::time::timeout(timeout, async {
        conn.writer.write_all(bytes).await?;
        conn.writer.flush().await
    })
    .await
    .map_err(|_| SyslogError::Timeout(timeout))?
    .map_err(SyslogError::Write)
}

/// The drain task: connect, send batches as they come, reconnect with backoff on failure.
/// A batch that failed to send is sent again on the next connection.
pub(crate) async fn run(task: DrainTask, host: String, port: u16, security: Security) {
    let mut backoff = Backoff::new(task.settings.backoff_min, task.settings.backoff_max);
    let mut pending: Vec<LogLine> = Vec::new();
    let mut told = false;
    loop {
        let mut conn = match connect(&task, &host, port, security).await {
            Ok(conn) => {
                told = false;
                conn
            }
            Err(SyslogError::Resolve(guard::ResolveError::Refused(reason))) => {
                task.refused(Transport::Syslog, &reason, &mut told);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(error) => {
                task.metrics.failed(Transport::Syslog);
                tracing::debug!(app = %task.app, drain = %task.drain.id, %error, "syslog drain connect failed");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        loop {
            if pending.is_empty() {
                pending = task.queue.next_batch(task.settings.batch_max).await;
            }
            let bytes = frames(&pending, &task.drain.token);
            match write(&mut conn, &bytes, task.settings.timeout).await {
                Ok(()) => {
                    let sent = pending.len();
                    pending.clear();
                    // Reset only after a delivery: a server that accepts and then closes at
                    // once must still be retried slowly.
                    backoff.reset();
                    task.delivered(Transport::Syslog, sent);
                }
                Err(error) => {
                    task.metrics.failed(Transport::Syslog);
                    tracing::debug!(app = %task.app, drain = %task.drain.id, %error, "syslog drain write failed");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::Source;
    use time::macros::datetime;

    #[test]
    fn frames_like_heroku() {
        let line = LogLine {
            time: datetime!(2026-11-23 10:00:00.123456 UTC),
            source: Source::App,
            process: "web.1".into(),
            message: "hello world".into(),
        };
        let mut out = Vec::new();
        frame(&mut out, &line, "d.abc");
        let msg = "<190>1 2026-11-23T10:00:00.123456+00:00 d.abc app web.1 - - hello world";
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("{} {msg}", msg.len())
        );
    }

    #[test]
    fn header_fields_are_sanitised_and_length_counts_bytes() {
        let line = LogLine {
            time: datetime!(2026-11-23 10:00:00 UTC),
            source: Source::Heroku,
            process: "we b".into(),
            message: "héllo".into(),
        };
        let out = String::from_utf8(frames(&[line], "")).expect("utf8");
        let (len, msg) = out.split_once(' ').expect("frame");
        assert_eq!(len.parse::<usize>().expect("len"), msg.len());
        assert!(msg.contains(" - heroku we_b - - héllo"), "{msg}");
    }
}
