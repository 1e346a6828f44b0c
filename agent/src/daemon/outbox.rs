//! What the daemon tells the scheduler, in order, when the link's buffer is full.
//!
//! The link to the scheduler is a bounded channel ([`crate::daemon::link::OUTBOUND_BUFFER`]); a
//! flooding dyno or a slow scheduler fills it. Log lines may then wait or be dropped (the
//! [`LogShipper`] counts them, Heroku's L10), but a dyno's state and a build's result must
//! never be lost: a build whose `BuildFinished` is dropped stays "running" for ever, and a
//! dyno whose `crashed` is dropped is routed to until the next reconnect. So every message
//! but log lines goes through an [`Outbox`] that keeps what the channel cannot take now:
//!
//! - a dyno's state reports are coalesced (only its newest state waits, at the place of its
//!   first waiting report), so the outbox holds at most one report per dyno;
//! - `BuildFinished` always waits;
//! - build output lines wait up to [`OUTPUT_LINES`]; beyond that they are dropped and counted,
//!   and the build's next event is preceded by a line saying how many were lost;
//! - a heartbeat waits only as the newest one.
//!
//! Each waiting message remembers how many log lines were queued before it: [`flush`] sends
//! those first, so that a reader of a state (the release phase's outcome, a deploy's output)
//! has the dyno's lines from before it, as it would without congestion.

use std::collections::{BTreeMap, VecDeque};

use manifold_proto as proto;
use proto::agent_message::Kind;
use tokio::sync::mpsc;

use crate::daemon::logship::LogShipper;

/// Build output lines that may wait in the outbox; more are dropped (and counted).
pub const OUTPUT_LINES: usize = 2_000;

/// A message waiting for room on the link.
#[derive(Debug)]
struct Waiting {
    kind: Kind,
    /// Log lines queued before it (as counted by [`LogShipper::queued_total`]).
    after_lines: u64,
}

/// Messages waiting for room on the link, oldest first.
#[derive(Debug, Default)]
pub struct Outbox {
    waiting: VecDeque<Waiting>,
    /// Build output lines among `waiting`.
    output_lines: usize,
    /// Output lines dropped per build, not yet told to the scheduler.
    dropped: BTreeMap<String, u64>,
    /// Build output lines dropped in all (for the agent's metrics).
    pub dropped_output: u64,
}

impl Outbox {
    /// Queues a message sent after `after_lines` log lines.
    pub fn push(&mut self, kind: Kind, after_lines: u64) {
        match &kind {
            Kind::Dyno(status) => {
                let same = self
                    .waiting
                    .iter_mut()
                    .find(|w| matches!(&w.kind, Kind::Dyno(waiting) if waiting.id == status.id));
                if let Some(waiting) = same {
                    waiting.kind = kind;
                    waiting.after_lines = after_lines;
                    return;
                }
            }
            Kind::Service(status) => {
                let same = self
                    .waiting
                    .iter_mut()
                    .find(|w| matches!(&w.kind, Kind::Service(waiting) if waiting.id == status.id));
                if let Some(waiting) = same {
                    waiting.kind = kind;
                    waiting.after_lines = after_lines;
                    return;
                }
            }
            Kind::Heartbeat(_) => {
                self.waiting
                    .retain(|w| !matches!(w.kind, Kind::Heartbeat(_)));
            }
            Kind::Build(event) => {
                let output = matches!(event.kind, Some(proto::build_event::Kind::Output(_)));
                if output && self.output_lines >= OUTPUT_LINES {
                    *self.dropped.entry(event.build_id.clone()).or_insert(0) += 1;
                    self.dropped_output += 1;
                    return;
                }
                if let Some(lost) = self.dropped.remove(&event.build_id) {
                    self.output_lines += 1;
                    self.waiting.push_back(Waiting {
                        kind: Kind::Build(proto::BuildEvent {
                            build_id: event.build_id.clone(),
                            kind: Some(proto::build_event::Kind::Output(format!(
                                "-----> {lost} lines of build output dropped: the link to the scheduler was congested"
                            ))),
                        }),
                        after_lines,
                    });
                }
                if output {
                    self.output_lines += 1;
                }
            }
            Kind::Hello(_) => {
                // The scheduler refuses a link whose first message is not `Hello`: it goes
                // before everything, lines kept while the link was down included.
                self.waiting.push_front(Waiting {
                    kind,
                    after_lines: 0,
                });
                return;
            }
            Kind::Logs(_) => {}
        }
        self.waiting.push_back(Waiting { kind, after_lines });
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Forgets everything waiting: the link it was for is gone. (The next `Hello` carries
    /// every dyno's state, and the scheduler fails the builds of a host that went away.)
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.output_lines = 0;
        self.dropped.clear();
    }

    fn pop(&mut self) -> Option<Waiting> {
        let waiting = self.waiting.pop_front()?;
        if is_output(&waiting.kind) {
            self.output_lines -= 1;
        }
        Some(waiting)
    }

    /// Puts back the message [`Outbox::pop`] gave, at the front.
    fn unpop(&mut self, waiting: Waiting) {
        if is_output(&waiting.kind) {
            self.output_lines += 1;
        }
        self.waiting.push_front(waiting);
    }
}

fn is_output(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Build(proto::BuildEvent {
            kind: Some(proto::build_event::Kind::Output(_)),
            ..
        })
    )
}

/// How a [`flush`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything waiting went out.
    All,
    /// The link's buffer is full: the rest waits for the next flush.
    Full,
    /// The link is closed.
    Closed,
}

/// Sends what waits, in order: each waiting message after the log lines queued before it,
/// then the remaining lines. Returns how it ended and the number of log lines sent.
pub fn flush(
    outbox: &mut Outbox,
    logs: &mut LogShipper,
    link: &mpsc::Sender<proto::AgentMessage>,
) -> (Flushed, u64) {
    let mut shipped = 0;
    loop {
        let lines_first = outbox.waiting.front().map(|w| w.after_lines);
        if lines_first.is_some_and(|after| logs.gone_total() < after) || lines_first.is_none() {
            // Log lines first: all before the next waiting message, or all there are.
            match ship_batch(logs, link) {
                (Shipped::Sent, n) => {
                    shipped += n;
                    continue;
                }
                (Shipped::Nothing, _) => {}
                (Shipped::Full, _) => return (Flushed::Full, shipped),
                (Shipped::Closed, _) => return (Flushed::Closed, shipped),
            }
        }
        let Some(waiting) = outbox.pop() else {
            return (Flushed::All, shipped);
        };
        match link.try_send(proto::AgentMessage {
            kind: Some(waiting.kind),
        }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                if let Some(kind) = message.kind {
                    outbox.unpop(Waiting {
                        kind,
                        after_lines: waiting.after_lines,
                    });
                }
                return (Flushed::Full, shipped);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return (Flushed::Closed, shipped),
        }
    }
}

enum Shipped {
    Sent,
    Nothing,
    Full,
    Closed,
}

/// Sends one batch of log lines, if there is one; a batch the link cannot take goes back.
fn ship_batch(logs: &mut LogShipper, link: &mpsc::Sender<proto::AgentMessage>) -> (Shipped, u64) {
    let Some(batch) = logs.batch() else {
        return (Shipped::Nothing, 0);
    };
    let lines = u64::try_from(batch.lines.len()).unwrap_or(u64::MAX);
    match link.try_send(proto::AgentMessage {
        kind: Some(Kind::Logs(batch)),
    }) {
        Ok(()) => (Shipped::Sent, lines),
        Err(err) => {
            let closed = matches!(err, mpsc::error::TrySendError::Closed(_));
            if let Some(Kind::Logs(batch)) = err.into_inner().kind {
                logs.unsend(batch);
            }
            if closed {
                (Shipped::Closed, 0)
            } else {
                (Shipped::Full, 0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::logs::LogRate;
    use crate::runner::{LogLine, Source};

    fn status(id: &str, state: proto::DynoState) -> Kind {
        Kind::Dyno(proto::DynoStatus {
            id: id.to_string(),
            state: state.into(),
            ..Default::default()
        })
    }

    fn build(id: &str, kind: proto::build_event::Kind) -> Kind {
        Kind::Build(proto::BuildEvent {
            build_id: id.to_string(),
            kind: Some(kind),
        })
    }

    fn line(text: &str) -> LogLine {
        LogLine {
            ts: "2026-01-01T00:00:00.000000+00:00".to_string(),
            source: Source::App,
            dyno: "web.1".to_string(),
            stream: None,
            text: text.to_string(),
        }
    }

    /// Everything the link's receiver holds now.
    fn received(rx: &mut mpsc::Receiver<proto::AgentMessage>) -> Vec<Kind> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.extend(m.kind);
        }
        out
    }

    #[test]
    fn hello_goes_before_the_lines_kept_while_the_link_was_down() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut outbox = Outbox::default();
        let mut logs = LogShipper::new(LogRate::default(), 100);
        logs.line("app", "d1", &line("while away"), Instant::now());
        outbox.push(
            Kind::Hello(proto::Hello {
                host_id: "h1".to_string(),
                ..Default::default()
            }),
            logs.queued_total(),
        );
        assert_eq!(flush(&mut outbox, &mut logs, &tx), (Flushed::All, 1));
        let got = received(&mut rx);
        assert!(
            matches!(&got[0], Kind::Hello(h) if h.host_id == "h1"),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], Kind::Logs(b) if b.lines[0].message == "while away"),
            "{got:?}"
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_full_link_loses_no_state_report_nor_build_result() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut outbox = Outbox::default();
        let mut logs = LogShipper::new(LogRate::default(), 100);
        // The link's buffer is full (of heartbeats, say).
        for _ in 0..2 {
            tx.try_send(proto::AgentMessage {
                kind: Some(Kind::Heartbeat(proto::Heartbeat { generation: 1 })),
            })
            .expect("room");
        }
        logs.line("app", "d1", &line("before the crash"), Instant::now());
        outbox.push(status("d1", proto::DynoState::Up), logs.queued_total());
        outbox.push(status("d1", proto::DynoState::Crashed), logs.queued_total());
        outbox.push(
            build(
                "b1",
                proto::build_event::Kind::Finished(proto::BuildFinished::default()),
            ),
            logs.queued_total(),
        );
        logs.line("app", "d1", &line("after"), Instant::now());
        assert_eq!(flush(&mut outbox, &mut logs, &tx).0, Flushed::Full);
        assert!(!outbox.is_empty(), "kept, not dropped");
        // The scheduler reads what was in the buffer; the next flush sends the rest.
        assert_eq!(received(&mut rx).len(), 2);
        let mut got = Vec::new();
        loop {
            let (flushed, _) = flush(&mut outbox, &mut logs, &tx);
            got.extend(received(&mut rx));
            if flushed == Flushed::All {
                break;
            }
        }
        let texts: Vec<String> = got
            .iter()
            .map(|k| match k {
                Kind::Logs(b) => format!(
                    "logs {}",
                    b.lines
                        .iter()
                        .map(|l| l.message.as_str())
                        .collect::<Vec<_>>()
                        .join("|")
                ),
                Kind::Dyno(s) => format!("dyno {} {}", s.id, s.state().as_str_name()),
                Kind::Build(b) => format!("build {} {:?}", b.build_id, b.kind.is_some()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            texts,
            [
                // The line before the report goes first (a batch takes the later one along).
                "logs before the crash|after",
                // Coalesced: the newest state of the dyno, where its first report waited.
                "dyno d1 CRASHED",
                "build b1 true",
            ],
        );
    }

    #[test]
    fn build_output_beyond_the_cap_is_dropped_and_counted_before_the_result() {
        let mut outbox = Outbox::default();
        for i in 0..OUTPUT_LINES + 7 {
            outbox.push(
                build("b1", proto::build_event::Kind::Output(format!("l{i}"))),
                0,
            );
        }
        assert_eq!(outbox.dropped_output, 7);
        outbox.push(
            build(
                "b1",
                proto::build_event::Kind::Finished(proto::BuildFinished::default()),
            ),
            0,
        );
        let kinds: Vec<Kind> = std::iter::from_fn(|| outbox.pop().map(|w| w.kind)).collect();
        assert_eq!(kinds.len(), OUTPUT_LINES + 2);
        let Kind::Build(notice) = &kinds[OUTPUT_LINES] else {
            panic!("no notice: {:?}", kinds[OUTPUT_LINES]);
        };
        assert_eq!(
            notice.kind,
            Some(proto::build_event::Kind::Output(
                "-----> 7 lines of build output dropped: the link to the scheduler was congested"
                    .to_string()
            ))
        );
        assert!(matches!(
            &kinds[OUTPUT_LINES + 1],
            Kind::Build(proto::BuildEvent {
                kind: Some(proto::build_event::Kind::Finished(_)),
                ..
            })
        ));
        assert_eq!(outbox.output_lines, 0);
    }

    #[test]
    fn only_the_newest_heartbeat_waits() {
        let mut outbox = Outbox::default();
        for generation in 1..=3 {
            outbox.push(Kind::Heartbeat(proto::Heartbeat { generation }), 0);
        }
        let kinds: Vec<Kind> = std::iter::from_fn(|| outbox.pop().map(|w| w.kind)).collect();
        assert_eq!(
            kinds,
            vec![Kind::Heartbeat(proto::Heartbeat { generation: 3 })]
        );
    }
}
