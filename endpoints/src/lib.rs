//! The schedulers a client knows, and which to try next.
//!
//! Several `manifold-scheduler` replicas share one database; one leads, the others follow.
//! Every client (agents, separate routers and log plex processes, the CLI) is given the list
//! of their URLs (`MANIFOLD_SCHEDULER=https://a:8750,https://b:8750`, `MANIFOLD_API=…`),
//! parsed by [`Endpoints::parse`]. A client tries [`Endpoints::current`], then says how it
//! went: [`Endpoints::succeeded`] (it is the leader: remembered, for this client and every
//! clone of its list), [`Endpoints::failed`] (unreachable, or a follower answered "not the
//! leader", naming the leader or not) or [`Endpoints::dropped`] (a connection that worked
//! ended). A failure moves on at once to a candidate not tried since the last success (the
//! leader a follower named first, else the next URL in the list); once every candidate
//! failed, the next round starts after a pause that doubles from 100 ms to 2 s, so a client
//! never spins.
//!
//! ```text
//!            succeeded                       failed(leader named, not tried yet)
//!   ┌──────────────────────┐        ┌───────────────────────────▶ that leader, at once
//!   ▼                      │        │ failed(else)
//! current ──try──▶ answer ─┴────────┼───────────────────────────▶ next untried URL, at once
//!                                   │ every candidate tried
//!                                   └───────────────────────────▶ next URL after a pause
//! ```
//!
//! A follower scheduler answers writes and streams with `503` and the leader's URL in the
//! [`LEADER_HEADER`] header (on gRPC, `unavailable` with that metadata key); the body's `id`
//! is [`NOT_LEADER`].
//!
//! A DNS name with several addresses is one entry: each connection resolves it and the
//! HTTP and gRPC connectors try its addresses in turn until one accepts, with the TLS
//! server name staying the DNS name. The one that accepts may be a follower: it names the
//! leader, whose advertised URL is tried next (so each replica's certificate must name the
//! address it advertises).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// The header (and gRPC metadata key) by which a follower names the leader's URL.
pub const LEADER_HEADER: &str = "manifold-leader";
/// The `id` of a follower's JSON error body.
pub const NOT_LEADER: &str = "not_leader";

/// A URL of the list that is not a scheduler's base URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("no scheduler URL given")]
    Empty,
    #[error("scheduler URL {position} of {count} is empty (a stray comma?)")]
    Blank { position: usize, count: usize },
    #[error("scheduler URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("scheduler URLs mix http:// and https:// ({first} and {other}): give one scheme")]
    MixedSchemes { first: String, other: String },
}

/// Pauses between rounds: 100 ms doubling to 2 s, back to 100 ms after a success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(2);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The pause before the next attempt, after a failed one.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// The ordered list of scheduler URLs, the one that last worked, and this client's place
/// in its current round of attempts. Clones share what last worked and nothing else, so
/// that each loop of a process (an agent's link and its attach relays, a router's long
/// poll and its event sender) keeps its own round but starts where the others found the
/// leader.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Normalized `scheme://host[:port]`, in the order given.
    list: Arc<[String]>,
    /// The URL that last worked, for every clone.
    leader: Arc<RwLock<Option<String>>>,
    /// What to try now.
    target: String,
    /// The index in `list` of the last listed URL tried: the round goes on after it.
    cursor: usize,
    /// Tried since the last success or the round's start.
    tried: Vec<String>,
    backoff: Backoff,
}

impl Endpoints {
    /// Parses a comma-separated list of `http(s)://host[:port]` URLs (a trailing `/` is
    /// allowed; a path, query, credentials or a mix of schemes is not). The error names
    /// the bad entry.
    pub fn parse(value: &str) -> Result<Endpoints, EndpointError> {
        if value.trim().is_empty() {
            return Err(EndpointError::Empty);
        }
        let entries: Vec<&str> = value.split(',').map(str::trim).collect();
        let count = entries.len();
        let mut list: Vec<String> = Vec::with_capacity(count);
        for (i, entry) in entries.into_iter().enumerate() {
            if entry.is_empty() {
                return Err(EndpointError::Blank {
                    position: i + 1,
                    count,
                });
            }
            let url = base_url(entry)?;
            if let Some(first) = list.first() {
                if scheme(first) != scheme(&url) {
                    return Err(EndpointError::MixedSchemes {
                        first: first.clone(),
                        other: url,
                    });
                }
            }
            if !list.contains(&url) {
                list.push(url);
            }
        }
        let target = list[0].clone();
        Ok(Endpoints {
            list: list.into(),
            leader: Arc::new(RwLock::new(None)),
            target,
            cursor: 0,
            tried: Vec::new(),
            backoff: Backoff::new(),
        })
    }

    /// The URLs as given (normalized, duplicates dropped).
    pub fn urls(&self) -> &[String] {
        &self.list
    }

    /// Whether the schedulers speak TLS (all of them do, or none).
    pub fn is_https(&self) -> bool {
        scheme(&self.list[0]) == "https"
    }

    /// The URL to try now.
    pub fn current(&self) -> &str {
        &self.target
    }

    /// The URL that last worked for this list or any clone of it (the leader, as far as
    /// this process knows), else the first one given. What any replica can serve (blobs,
    /// reads) goes there.
    pub fn leader(&self) -> String {
        self.leader
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| self.list[0].clone())
    }

    /// A clone starting a round of its own at [`Endpoints::leader`].
    pub fn fresh(&self) -> Endpoints {
        let mut fresh = self.clone();
        fresh.tried.clear();
        fresh.backoff.reset();
        fresh.aim(fresh.leader());
        fresh
    }

    /// Whether `url` has the origin of a scheduler this list knows: one given, or the
    /// leader one of them named.
    pub fn knows(&self, url: &str) -> bool {
        let Ok(url) = base_of(url) else {
            return false;
        };
        self.list.contains(&url)
            || url == self.target
            || self
                .leader
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_deref()
                == Some(url.as_str())
    }

    /// Checks a follower's [`LEADER_HEADER`]: a base URL with the list's scheme (a hint
    /// never takes a client from https to http).
    /// The leader a refusal named in its [`LEADER_HEADER`] value (the raw bytes of an
    /// HTTP header or a gRPC metadata entry), when it is one this list may go to; a bad
    /// name is logged and ignored, and the caller tries the next in the list.
    pub fn named_leader(&self, value: &[u8]) -> Option<String> {
        let named = std::str::from_utf8(value)
            .map_err(|_| format!("{value:?} is not text"))
            .and_then(|v| self.leader_hint(v).map_err(|e| e.to_string()));
        match named {
            Ok(url) => Some(url),
            Err(err) => {
                tracing::warn!("a scheduler named a leader that is not one: {err}");
                None
            }
        }
    }

    pub fn leader_hint(&self, value: &str) -> Result<String, EndpointError> {
        let url = base_url(value.trim())?;
        if scheme(&url) != scheme(&self.list[0]) {
            return Err(EndpointError::MixedSchemes {
                first: self.list[0].clone(),
                other: url,
            });
        }
        Ok(url)
    }

    /// [`Endpoints::current`] worked: it is the leader, remembered for every clone, and
    /// the next failure starts a new round.
    pub fn succeeded(&mut self) {
        *self.leader.write().unwrap_or_else(PoisonError::into_inner) = Some(self.target.clone());
        self.tried.clear();
        self.backoff.reset();
    }

    /// [`Endpoints::current`] did not answer, or answered that it is not the leader
    /// (naming `leader`, checked with [`Endpoints::leader_hint`], when it knows). Moves to
    /// the next candidate and returns the pause before trying it: none while a candidate is
    /// untried, a growing one when the round is over.
    pub fn failed(&mut self, leader: Option<String>) -> Duration {
        if !self.tried.contains(&self.target) {
            self.tried.push(self.target.clone());
        }
        if let Some(leader) = leader.filter(|l| !self.tried.contains(l)) {
            self.aim(leader);
            return Duration::ZERO;
        }
        let n = self.list.len();
        for step in 1..=n {
            let i = (self.cursor + step) % n;
            if !self.tried.contains(&self.list[i]) {
                self.cursor = i;
                self.target = self.list[i].clone();
                return Duration::ZERO;
            }
        }
        self.tried.clear();
        self.cursor = (self.cursor + 1) % n;
        self.target = self.list[self.cursor].clone();
        self.backoff.failed()
    }

    /// A connection to [`Endpoints::current`] that worked has ended: a new round, starting
    /// with the next candidate (a leader that went away is not waited for; one still
    /// leading is named by the next follower). With one URL, it is tried again after the
    /// first pause.
    pub fn dropped(&mut self) -> Duration {
        self.tried.clear();
        self.failed(None)
    }

    /// Points at `url`, keeping the cursor on it when it is one of the list.
    fn aim(&mut self, url: String) {
        if let Some(i) = self.list.iter().position(|u| *u == url) {
            self.cursor = i;
        }
        self.target = url;
    }
}

/// `http` or `https` of a normalized URL.
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(s, _)| s)
}

/// The normalized base (`scheme://host[:port]`) of any URL, path and all (for
/// [`Endpoints::knows`]).
fn base_of(url: &str) -> Result<String, url::ParseError> {
    let parsed = url::Url::parse(url)?;
    Ok(parsed.origin().ascii_serialization())
}

/// Checks one entry and normalizes it to `scheme://host[:port]`.
fn base_url(entry: &str) -> Result<String, EndpointError> {
    let invalid = |reason: &str| EndpointError::Invalid {
        url: entry.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(entry).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("give http:// or https://"));
    }
    if url.host().is_none() {
        return Err(invalid("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "credentials do not belong in the URL (use the token)",
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "a scheduler URL is scheme://host:port, without a path or query",
        ));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO: Duration = Duration::ZERO;

    fn three() -> Endpoints {
        Endpoints::parse("http://a:1, http://b:2/ ,http://c:3").expect("parse")
    }

    #[test]
    fn a_list_is_parsed_normalized_and_deduplicated() {
        let e = three();
        assert_eq!(e.urls(), ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(e.current(), "http://a:1");
        assert!(!e.is_https());
        let one =
            Endpoints::parse("https://Sched.Example:443/,https://sched.example").expect("one");
        assert_eq!(one.urls(), ["https://sched.example"]);
        assert!(one.is_https());
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |v: &str| Endpoints::parse(v).expect_err(v).to_string();
        assert_eq!(err(""), "no scheduler URL given");
        assert_eq!(
            err("http://a:1,,http://b:2"),
            "scheduler URL 2 of 3 is empty (a stray comma?)"
        );
        assert_eq!(
            err("http://a:1,b:2"),
            "scheduler URL \"b:2\": give http:// or https://"
        );
        assert_eq!(
            err("http://a:1,http://b:2/api"),
            "scheduler URL \"http://b:2/api\": a scheduler URL is scheme://host:port, without a path or query"
        );
        assert_eq!(
            err("http://u:p@a:1"),
            "scheduler URL \"http://u:p@a:1\": credentials do not belong in the URL (use the token)"
        );
        assert_eq!(
            err("http://a:99999"),
            "scheduler URL \"http://a:99999\": invalid port number"
        );
        assert_eq!(
            err("http://a:1,https://b:2"),
            "scheduler URLs mix http:// and https:// (http://a:1 and https://b:2): give one scheme"
        );
    }

    #[test]
    fn an_unreachable_scheduler_moves_on_at_once_then_rounds_pause_growing() {
        let mut e = three();
        assert_eq!(e.failed(None), ZERO);
        assert_eq!(e.current(), "http://b:2");
        assert_eq!(e.failed(None), ZERO);
        assert_eq!(e.current(), "http://c:3");
        // Every one failed: a pause, then the round starts over.
        assert_eq!(e.failed(None), Duration::from_millis(100));
        assert_eq!(e.current(), "http://a:1");
        let pauses: Vec<u128> = (0..15)
            .map(|_| e.failed(None).as_millis())
            .filter(|p| *p > 0)
            .collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 2000]);
    }

    #[test]
    fn a_named_leader_is_tried_next_and_remembered_by_clones() {
        let mut e = three();
        let relay = e.clone();
        assert_eq!(relay.leader(), "http://a:1");
        let hint = e.leader_hint("http://c:3").expect("hint");
        assert_eq!(e.failed(Some(hint)), ZERO);
        assert_eq!(e.current(), "http://c:3");
        e.succeeded();
        assert_eq!(relay.leader(), "http://c:3");
        assert_eq!(relay.fresh().current(), "http://c:3");
        // A leader outside the list (one DNS name given) is followed as well.
        let mut e = Endpoints::parse("http://sched:8750").expect("parse");
        let hint = e.leader_hint("http://10.0.0.2:8750").expect("hint");
        assert_eq!(e.failed(Some(hint)), ZERO);
        assert_eq!(e.current(), "http://10.0.0.2:8750");
        assert!(e.knows("http://10.0.0.2:8750/apps/x"));
        assert!(!e.knows("http://10.0.0.3:8750/apps/x"));
    }

    #[test]
    fn followers_naming_each_other_do_not_spin() {
        // a says b leads, b says a leads: both were tried, so the round ends with a pause.
        let mut e = Endpoints::parse("http://a:1,http://b:2").expect("parse");
        assert_eq!(e.failed(Some("http://b:2".into())), ZERO);
        assert_eq!(
            e.failed(Some("http://a:1".into())),
            Duration::from_millis(100)
        );
        // No leader known (mid-election): the list, then a pause.
        assert_eq!(e.failed(None), ZERO);
        assert_eq!(e.failed(None), Duration::from_millis(200));
    }

    #[test]
    fn a_dropped_connection_tries_the_next_first() {
        let mut e = three();
        e.succeeded();
        assert_eq!(e.dropped(), ZERO);
        assert_eq!(e.current(), "http://b:2");
        // b names a, which dropped us in this round: c is tried, then a pause.
        assert_eq!(e.failed(Some("http://a:1".into())), ZERO);
        assert_eq!(e.current(), "http://c:3");
        assert_eq!(e.failed(None), Duration::from_millis(100));
        // With one URL, a drop means a short pause and the same URL again.
        let mut one = Endpoints::parse("http://a:1").expect("parse");
        one.succeeded();
        assert_eq!(one.dropped(), Duration::from_millis(100));
        assert_eq!(one.current(), "http://a:1");
    }

    #[test]
    fn a_hint_never_downgrades_to_http() {
        let e = Endpoints::parse("https://a:1").expect("parse");
        assert!(e.leader_hint("http://evil:1").is_err());
        assert!(e.leader_hint("not a url").is_err());
        assert_eq!(e.leader_hint(" https://b:2 ").expect("ok"), "https://b:2");
    }
}
