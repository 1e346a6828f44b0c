//! The `heroku[router]` log line, in Heroku's exact field order, so tools that parse
//! Heroku's router logs parse ours:
//!
//! ```text
//! at=info method=GET path="/" host=app.localhost request_id=… fwd="127.0.0.1" dyno=web.1 connect=1ms service=12ms status=200 bytes=13 protocol=http
//! at=error code=H12 desc="Request timeout" method=GET path="/slow" host=… dyno=web.1 connect=0ms service=30000ms status=503 bytes=0 protocol=http
//! ```
//!
//! A request that never reached a dyno has `dyno= connect= service=` and `bytes=` empty.

use std::fmt::Write;
use std::time::Duration;

use crate::codes::Code;

/// What one line says about one request.
pub(crate) struct LogLine<'a> {
    pub(crate) code: Option<Code>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) host: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) fwd: &'a str,
    pub(crate) dyno: Option<&'a str>,
    pub(crate) connect: Option<Duration>,
    pub(crate) service: Option<Duration>,
    pub(crate) status: u16,
    pub(crate) bytes: Option<u64>,
    /// `http` or `https`: how the client reached the router.
    pub(crate) protocol: &'a str,
}

impl LogLine<'_> {
    pub(crate) fn render(&self) -> String {
        let mut line = String::with_capacity(256);
        // Writing to a String cannot fail.
        let _ = self.write(&mut line);
        line
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(
                out,
                "at={} code={} desc=\"{}\" ",
                if code.logged_as_info() {
                    "info"
                } else {
                    "error"
                },
                code.name(),
                code.desc()
            )?,
            None => out.push_str("at=info "),
        }
        write!(out, "method={} path=\"", self.method)?;
        quoted(out, self.path);
        write!(
            out,
            "\" host={} request_id={} fwd=\"",
            self.host, self.request_id
        )?;
        quoted(out, self.fwd);
        write!(out, "\" dyno={} connect=", self.dyno.unwrap_or(""))?;
        millis(out, self.connect)?;
        out.push_str(" service=");
        millis(out, self.service)?;
        write!(out, " status={} bytes=", self.status)?;
        if let Some(bytes) = self.bytes {
            write!(out, "{bytes}")?;
        }
        write!(out, " protocol={}", self.protocol)?;
        Ok(())
    }
}

fn millis(out: &mut String, d: Option<Duration>) -> std::fmt::Result {
    match d {
        Some(d) => write!(out, "{}ms", d.as_millis()),
        None => Ok(()),
    }
}

/// Copies `s` escaping what would end or confuse a quoted value.
fn quoted(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_line() {
        let line = LogLine {
            code: None,
            method: "GET",
            path: "/",
            host: "app.localhost",
            request_id: "abc",
            fwd: "127.0.0.1",
            dyno: Some("web.1"),
            connect: Some(Duration::from_millis(1)),
            service: Some(Duration::from_millis(12)),
            status: 200,
            bytes: Some(13),
            protocol: "http",
        };
        assert_eq!(
            line.render(),
            "at=info method=GET path=\"/\" host=app.localhost request_id=abc fwd=\"127.0.0.1\" \
             dyno=web.1 connect=1ms service=12ms status=200 bytes=13 protocol=http"
        );
    }

    #[test]
    fn error_line_without_dyno() {
        let line = LogLine {
            code: Some(Code::H10),
            method: "POST",
            path: "/a\"b",
            host: "app.localhost",
            request_id: "abc",
            fwd: "10.0.0.1, 127.0.0.1",
            dyno: None,
            connect: None,
            service: None,
            status: 503,
            bytes: None,
            protocol: "https",
        };
        assert_eq!(
            line.render(),
            "at=error code=H10 desc=\"App crashed\" method=POST path=\"/a\\\"b\" host=app.localhost \
             request_id=abc fwd=\"10.0.0.1, 127.0.0.1\" dyno= connect= service= status=503 bytes= \
             protocol=https"
        );
    }
}
