//! Sending a request to the leader among the schedulers `MANIFOLD_API` lists.
//!
//! A follower scheduler answers writes and streams with `503` (`"id": "not_leader"`) and
//! names the leader in `manifold-leader`: the request goes there next. A scheduler that
//! cannot be reached is passed over for the next one. What is sent again is decided by
//! [`Resend`]: a read always may be; a write only when it certainly reached no leader (no
//! connection was made, or a follower refused it), never after a failure mid-request, which
//! may have been applied.
//!
//! When every scheduler was tried: if none answered, the last failure is the error; if
//! followers answered without knowing the leader (an election under way), the round starts
//! again after a pause, for [`ELECTION_WAIT`] at most.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use manifold_endpoints::{Endpoints, LEADER_HEADER, NOT_LEADER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::api::transport_message;

/// How long a request waits for a leader to be elected.
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// Whether a request may be sent again after a failure without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// A read: whatever happened, it changed nothing.
    Always,
    /// A write: only when no connection was made.
    IfUnsent,
}

/// How one attempt went.
enum Attempt {
    Answered(Response),
    /// A follower refused it (naming the leader, when known).
    NotLeader(Option<String>),
    /// No answer, and nothing was sent.
    Unsent(String),
}

/// Sends `build(base)` to the current scheduler and on, as the module says; returns the
/// answer (any status but a follower's 503) or the message saying why there is none.
/// `build` is called once per attempt, so that a body can be made afresh.
pub async fn send(
    endpoints: &Mutex<Endpoints>,
    resend: Resend,
    mut build: impl FnMut(&str) -> Result<RequestBuilder, String>,
) -> Result<Response, String> {
    let lock = || endpoints.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + ELECTION_WAIT;
    let mut followers_answered = false;
    loop {
        let base = lock().current().to_string();
        let (leader, unsent) = match attempt(build(&base)?, &base, resend).await? {
            Attempt::Answered(response) => {
                lock().succeeded();
                return Ok(response);
            }
            Attempt::NotLeader(leader) => {
                followers_answered = true;
                (leader, None)
            }
            Attempt::Unsent(why) => (None, Some(why)),
        };
        let leader = leader.and_then(|l| lock().leader_hint(&l).ok());
        let pause = lock().failed(leader);
        if pause.is_zero() {
            continue;
        }
        // Every scheduler was tried.
        let urls = lock().urls().join(", ");
        if !followers_answered {
            return Err(match (unsent, lock().urls().len()) {
                (Some(why), 1) => why,
                _ => format!(
                    "cannot reach the Manifold API at any of {urls}: is manifold-scheduler running? (set MANIFOLD_API)"
                ),
            });
        }
        if Instant::now() + pause > deadline {
            return Err(format!(
                "found no leader among {urls} within {} s (followers answered: an election may be under way): try again",
                ELECTION_WAIT.as_secs()
            ));
        }
        followers_answered = false;
        tokio::time::sleep(pause).await;
    }
}

/// One attempt at `base`; `Err` is a failure after which the request must not be resent.
async fn attempt(request: RequestBuilder, base: &str, resend: Resend) -> Result<Attempt, String> {
    match request.send().await {
        Ok(response) if response.status() == StatusCode::SERVICE_UNAVAILABLE => {
            let named = response
                .headers()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.text().await.unwrap_or_default();
            let id = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
            if named.is_some() || id.as_deref() == Some(NOT_LEADER) {
                Ok(Attempt::NotLeader(named))
            } else {
                Err(crate::api::error_message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &body,
                ))
            }
        }
        Ok(response) => Ok(Attempt::Answered(response)),
        Err(err) if resend == Resend::Always || err.is_connect() => {
            Ok(Attempt::Unsent(transport_message(base, &err)))
        }
        Err(err) => Err(format!(
            "{}; it may have been carried out: check before repeating it",
            transport_message(base, &err)
        )),
    }
}
