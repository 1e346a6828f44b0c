//! Shipping the dynos' log lines to the scheduler's log plex.
//!
//! Two things must never happen: a dyno that floods its output slowing the agent or the
//! other dynos, and lines piling up without bound while the scheduler is away. So each dyno
//! has a token bucket ([`LogLimits`]): lines beyond its rate are dropped and counted, and when
//! the dyno is allowed again the count goes out first as Heroku's
//! `Error L10 (output buffer overflow): N messages dropped since T`. Lines wait in one bounded
//! queue while the link is down; when it is full the oldest go (counted the same way, as a
//! platform line of the agent itself) and the rest are sent, in order, once it is back.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use manifold_proto as proto;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::logs::{format_timestamp, LogRate};
use crate::runner::{LogLine, Source};

/// How many lines wait for the scheduler at most (about 2 MiB of typical lines).
pub const QUEUE_LINES: usize = 20_000;

/// Lines per message to the scheduler.
const BATCH_LINES: usize = 500;

/// A dyno's bucket and what it dropped since it last could log.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    dropped_since: Option<OffsetDateTime>,
    /// When the last L10 line went out: a dyno that keeps flooding gets one a second, not
    /// one per line that gets through.
    noticed: Option<Instant>,
}

/// Least time between two L10 lines of one dyno.
const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Per-dyno rate limits plus the queue of lines waiting for the scheduler.
#[derive(Debug)]
pub struct LogShipper {
    rate: LogRate,
    buckets: HashMap<String, Bucket>,
    queue: VecDeque<proto::LogEntry>,
    capacity: usize,
    /// Lines the full queue lost, and since when.
    lost: u64,
    lost_since: Option<OffsetDateTime>,
    /// Totals for the agent's metrics.
    pub dropped_rate: u64,
    pub dropped_queue: u64,
    /// Lines ever queued: a message sent after the lines queued so far waits until
    /// [`LogShipper::gone_total`] reaches this (see [`crate::daemon::outbox`]).
    queued: u64,
}

impl LogShipper {
    pub fn new(rate: LogRate, capacity: usize) -> Self {
        LogShipper {
            rate,
            buckets: HashMap::new(),
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            lost: 0,
            lost_since: None,
            dropped_rate: 0,
            dropped_queue: 0,
            queued: 0,
        }
    }

    /// Lines ever queued.
    pub fn queued_total(&self) -> u64 {
        self.queued
    }

    /// Lines ever queued that left the queue (sent or dropped).
    pub fn gone_total(&self) -> u64 {
        self.queued
            .saturating_sub(u64::try_from(self.queue.len()).unwrap_or(u64::MAX))
    }

    /// Takes one line of a dyno of `app`. Platform lines are never rate-limited: they are
    /// few, and they say what happened to the dyno.
    pub fn line(&mut self, app: &str, dyno_id: &str, line: &LogLine, now: Instant) {
        let time =
            OffsetDateTime::parse(&line.ts, &Rfc3339).unwrap_or_else(|_| OffsetDateTime::now_utc());
        if line.source == Source::App {
            let rate = self.rate;
            let bucket = self.buckets.entry(dyno_id.to_string()).or_insert(Bucket {
                tokens: rate.burst,
                refilled: now,
                dropped: 0,
                dropped_since: None,
                noticed: None,
            });
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                bucket.dropped += 1;
                self.dropped_rate += 1;
                bucket.dropped_since.get_or_insert(time);
                return;
            }
            bucket.tokens -= 1.0;
            let due = bucket
                .noticed
                .is_none_or(|at| now.saturating_duration_since(at) >= NOTICE_EVERY);
            if let Some(since) = bucket.dropped_since.filter(|_| due) {
                bucket.dropped_since = None;
                bucket.noticed = Some(now);
                let dropped = std::mem::take(&mut bucket.dropped);
                self.enqueue(entry(
                    app,
                    dyno_id,
                    &line.dyno,
                    true,
                    time,
                    overflow_message(dropped, since),
                ));
            }
        }
        let platform = line.source == Source::Heroku;
        self.enqueue(entry(
            app,
            dyno_id,
            &line.dyno,
            platform,
            time,
            line.text.clone(),
        ));
    }

    /// Forgets a dyno's bucket once it is gone for good.
    pub fn forget(&mut self, dyno_id: &str) {
        self.buckets.remove(dyno_id);
    }

    /// Whether enough lines wait to send a batch now rather than at the next tick.
    pub fn batch_ready(&self) -> bool {
        self.queue.len() >= BATCH_LINES
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.lost == 0
    }

    /// The next batch to send, oldest lines first. A batch that could not be sent goes
    /// back with [`LogShipper::unsend`].
    pub fn batch(&mut self) -> Option<proto::LogBatch> {
        let mut lines = Vec::new();
        if let Some(since) = self.lost_since.take() {
            let lost = std::mem::take(&mut self.lost);
            lines.push(entry(
                "",
                "",
                "agent",
                true,
                OffsetDateTime::now_utc(),
                overflow_message(lost, since),
            ));
        }
        let take = BATCH_LINES.min(self.queue.len());
        lines.extend(self.queue.drain(..take));
        (!lines.is_empty()).then_some(proto::LogBatch { lines })
    }

    /// Puts back a batch the link could not take, ahead of newer lines.
    pub fn unsend(&mut self, batch: proto::LogBatch) {
        for line in batch.lines.into_iter().rev() {
            if line.app.is_empty() {
                // The queue's own overflow notice: counted again below if still needed.
                continue;
            }
            self.queue.push_front(line);
        }
        while self.queue.len() > self.capacity {
            self.drop_oldest();
        }
    }

    fn enqueue(&mut self, line: proto::LogEntry) {
        if self.queue.len() >= self.capacity {
            self.drop_oldest();
        }
        self.queued += 1;
        self.queue.push_back(line);
    }

    fn drop_oldest(&mut self) {
        if let Some(old) = self.queue.pop_front() {
            self.lost += 1;
            self.dropped_queue += 1;
            self.lost_since.get_or_insert_with(|| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(old.time_us) * 1000)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc())
            });
        }
    }
}

/// Heroku's L10 line.
fn overflow_message(dropped: u64, since: OffsetDateTime) -> String {
    format!(
        "Error L10 (output buffer overflow): {dropped} messages dropped since {}",
        format_timestamp(since)
    )
}

fn entry(
    app: &str,
    dyno_id: &str,
    process: &str,
    platform: bool,
    time: OffsetDateTime,
    message: String,
) -> proto::LogEntry {
    proto::LogEntry {
        app: app.to_string(),
        dyno_id: dyno_id.to_string(),
        process: process.to_string(),
        platform,
        time_us: i64::try_from(time.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line(source: Source, text: &str) -> LogLine {
        LogLine {
            ts: crate::logs::timestamp(),
            source,
            dyno: "web.1".into(),
            stream: None,
            text: text.into(),
        }
    }

    fn drain(s: &mut LogShipper) -> Vec<proto::LogEntry> {
        let mut out = Vec::new();
        while let Some(b) = s.batch() {
            out.extend(b.lines);
        }
        out
    }

    #[test]
    fn a_flooding_dyno_is_limited_and_told_how_much_it_lost() {
        let rate = LogRate {
            per_second: 10.0,
            burst: 5.0,
        };
        let mut s = LogShipper::new(rate, 1000);
        let t0 = Instant::now();
        for i in 0..20 {
            s.line("a", "d1", &line(Source::App, &format!("l{i}")), t0);
        }
        // Another dyno is not affected by the first one's flood.
        s.line("a", "d2", &line(Source::App, "other"), t0);
        // Platform lines always pass.
        s.line("a", "d1", &line(Source::Heroku, "State changed"), t0);
        let first = drain(&mut s);
        let texts: Vec<&str> = first.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            texts,
            ["l0", "l1", "l2", "l3", "l4", "other", "State changed"]
        );
        // A second later the bucket has refilled: the drop count goes out first.
        s.line(
            "a",
            "d1",
            &line(Source::App, "back"),
            t0 + Duration::from_secs(1),
        );
        let next = drain(&mut s);
        assert_eq!(next.len(), 2);
        assert!(next[0].platform);
        assert!(
            next[0]
                .message
                .starts_with("Error L10 (output buffer overflow): 15 messages dropped since "),
            "{}",
            next[0].message
        );
        assert_eq!(next[1].message, "back");
    }

    #[test]
    fn a_dyno_that_keeps_flooding_gets_one_notice_a_second() {
        let rate = LogRate {
            per_second: 100.0,
            burst: 10.0,
        };
        let mut s = LogShipper::new(rate, 100_000);
        let t0 = Instant::now();
        // 10,000 lines/s for 3 s against a limit of 100/s.
        for i in 0..30_000u64 {
            let at = t0 + Duration::from_micros(i * 100);
            s.line("a", "d", &line(Source::App, "flood"), at);
        }
        let lines = drain(&mut s);
        let notices = lines.iter().filter(|l| l.platform).count();
        assert!((2..=4).contains(&notices), "{notices} notices");
        let passed = lines.len() - notices;
        assert!((300..=320).contains(&passed), "{passed} lines passed");
        let dropped: u64 = lines
            .iter()
            .filter(|l| l.platform)
            .map(|l| {
                l.message
                    .split_whitespace()
                    .nth(5)
                    .and_then(|n| n.parse::<u64>().ok())
                    .expect("a count")
            })
            .sum();
        assert!(dropped + passed as u64 <= 30_000);
        // The last second's drops go out with the next notice.
        assert!(dropped > 19_000, "{dropped}");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_so() {
        let mut s = LogShipper::new(LogRate::default(), 3);
        let now = Instant::now();
        for i in 0..5 {
            s.line("a", "d", &line(Source::App, &format!("l{i}")), now);
        }
        let lines = drain(&mut s);
        assert!(lines[0]
            .message
            .starts_with("Error L10 (output buffer overflow): 2 messages dropped since "));
        let rest: Vec<&str> = lines[1..].iter().map(|l| l.message.as_str()).collect();
        assert_eq!(rest, ["l2", "l3", "l4"]);
        assert!(s.is_empty());
    }

    #[test]
    fn an_unsent_batch_goes_back_in_order() {
        let mut s = LogShipper::new(LogRate::default(), 100);
        let now = Instant::now();
        for i in 0..3 {
            s.line("a", "d", &line(Source::App, &format!("l{i}")), now);
        }
        let batch = s.batch().expect("a batch");
        s.line("a", "d", &line(Source::App, "l3"), now);
        s.unsend(batch);
        let texts: Vec<String> = drain(&mut s).into_iter().map(|l| l.message).collect();
        assert_eq!(texts, ["l0", "l1", "l2", "l3"]);
    }
}
