//! A CGI program (RFC 3875) behind an axum handler: the request's body streams into its
//! stdin, its header lines become the response's status and headers, and the rest of its
//! stdout streams back as the body, as it comes. For `git http-backend`, the rest is the
//! push's progress and its hook's output, which the pusher must see live.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

/// Longest header section a program may print.
const HEADER_LIMIT: usize = 64 * 1024;

/// Lines of a program's stderr that reach the scheduler's log, per request.
const STDERR_LINES: usize = 50;

/// What went wrong running the program.
#[derive(Debug, thiserror::Error)]
pub enum CgiError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} ended without a response")]
    NoResponse { program: String },
    #[error("{program} printed an invalid header section: {why}")]
    BadHeaders { program: String, why: String },
}

/// A task aborted when dropped: the request's feeder ends with its response.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The program's stdout after its headers, with what must live until it ends and what
/// runs then.
struct Tail<G> {
    out: BufReader<ChildStdout>,
    child: Child,
    _feeder: AbortOnDrop,
    _guard: G,
    after: Option<BoxFuture<'static, ()>>,
}

/// Runs `program` with exactly `env` (plus nothing inherited), `body` on its stdin (cut
/// after `limit` bytes: the program sees the input end there and fails, as a short request
/// would), and answers with what it prints. `guard` is kept until the response body ends
/// or is dropped (the client went away); the program is killed then if still running.
/// `after` runs once the program has ended, before the response does.
pub async fn run<G: Send + 'static>(
    program: &Path,
    env: Vec<(OsString, OsString)>,
    body: Body,
    limit: u64,
    guard: G,
    after: Option<BoxFuture<'static, ()>>,
) -> Result<Response, CgiError> {
    let name = program.display().to_string();
    let mut child = tokio::process::Command::new(program)
        .env_clear()
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CgiError::Spawn {
            program: name.clone(),
            source,
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(CgiError::NoResponse { program: name });
    };
    let feeder_name = name.clone();
    let feeder = AbortOnDrop(tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut sent = 0u64;
        while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            sent += chunk.len() as u64;
            if sent > limit {
                tracing::warn!("{feeder_name}: request body over {limit} bytes: cut");
                break;
            }
            if stdin.write_all(&chunk).await.is_err() {
                // The program stopped reading (it failed, or needs no more).
                break;
            }
        }
        // Dropping stdin ends the program's input.
    }));
    let stderr_name = name.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut n = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            if n < STDERR_LINES {
                tracing::info!("{stderr_name}: {line}");
            }
            n += 1;
        }
    });
    let mut out = BufReader::new(stdout);
    let (status, headers) = read_headers(&mut out, &name).await?;
    let tail = Tail {
        out,
        child,
        _feeder: feeder,
        _guard: guard,
        after,
    };
    let stream = futures::stream::unfold(Some(tail), |state| async move {
        let mut tail = state?;
        let mut buf = vec![0u8; 16 * 1024];
        match tail.out.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if let Ok(status) = tail.child.wait().await {
                    if !status.success() {
                        tracing::debug!("CGI program ended with {status}");
                    }
                }
                if let Some(after) = tail.after.take() {
                    after.await;
                }
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(tail)))
            }
        }
    });
    let mut res = Response::new(Body::from_stream(stream));
    *res.status_mut() = status;
    res.headers_mut().extend(headers);
    Ok(res)
}

/// The CGI header section: `Status: 404 Not Found` sets the status (200 without it), the
/// other lines are response headers, an empty line ends it.
async fn read_headers(
    out: &mut BufReader<ChildStdout>,
    program: &str,
) -> Result<(StatusCode, axum::http::HeaderMap), CgiError> {
    let bad = |why: String| CgiError::BadHeaders {
        program: program.to_string(),
        why,
    };
    let mut status = StatusCode::OK;
    let mut headers = axum::http::HeaderMap::new();
    let mut read = 0usize;
    loop {
        let mut line = Vec::new();
        let n = (&mut *out)
            .take((HEADER_LIMIT - read) as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            return Err(CgiError::NoResponse {
                program: program.to_string(),
            });
        }
        read += n;
        if read > HEADER_LIMIT {
            return Err(bad(format!("longer than {HEADER_LIMIT} bytes")));
        }
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("{line:?} is not a header")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| bad(format!("bad status {value:?}")))?;
            continue;
        }
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad(format!("bad header name {name:?}")))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| bad(format!("bad value of {name}")))?;
        headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    /// A CGI script in `dir`.
    fn script(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("cgi");
        std::fs::write(&path, format!("#!/bin/sh\n{text}")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// The response streams while the program runs, and the request streams into it: the
    /// program's first line arrives while it still waits for the rest of the request,
    /// which is only sent once that line came.
    #[tokio::test]
    async fn request_and_response_stream_both_ways() {
        let dir = tempfile::tempdir().expect("dir");
        let program = script(
            dir.path(),
            "printf 'Status: 201 Created\\r\\nX-Mine: yes\\r\\n\\r\\n'\necho first\nread line\necho \"then $line\"\n",
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let res = run(&program, vec![], body, 1024, (), None)
            .await
            .expect("run");
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()["x-mine"], "yes");
        let mut stream = res.into_body().into_data_stream();
        let first = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the first line comes before the request ends")
            .expect("a chunk")
            .expect("bytes");
        assert_eq!(&first[..], b"first\n");
        tx.send(Ok(Bytes::from_static(b"second\n")))
            .await
            .expect("send");
        drop(tx);
        let mut rest = Vec::new();
        while let Some(chunk) = stream.next().await {
            rest.extend_from_slice(&chunk.expect("bytes"));
        }
        assert_eq!(rest, b"then second\n");
    }

    #[tokio::test]
    async fn a_program_without_a_proper_header_section_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        for (text, want) in [
            ("exit 0\n", "ended without a response"),
            ("echo 'no colon here'\necho\n", "is not a header"),
            ("printf 'Status: abc\\n\\n'\n", "bad status"),
        ] {
            let program = script(dir.path(), text);
            let err = run(&program, vec![], Body::empty(), 1024, (), None)
                .await
                .expect_err(text);
            assert!(err.to_string().contains(want), "{text}: {err}");
        }
        let err = run(
            Path::new("/nonexistent/cgi"),
            vec![],
            Body::empty(),
            1024,
            (),
            None,
        )
        .await
        .expect_err("missing");
        assert!(err.to_string().contains("cannot start"), "{err}");
    }
}
