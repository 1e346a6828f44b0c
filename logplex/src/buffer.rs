//! The bounded queue behind every tail and every drain.
//!
//! A reader that cannot keep up must never slow down `push`, so each reader gets a queue of
//! fixed size; a line that does not fit is counted instead of stored. The count and the time
//! of the first loss become Heroku's L10/L11 notice once the reader catches up.

use std::collections::VecDeque;

use time::OffsetDateTime;

use crate::line::{timestamp, LogLine, Source};

/// Lines lost since a reader last had room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overflow {
    pub count: u64,
    pub since: OffsetDateTime,
}

impl Overflow {
    /// Heroku's L10, logged when a drain's output buffer overflowed.
    pub fn drain_notice(self) -> LogLine {
        LogLine::now(
            Source::Heroku,
            "logplex",
            format!(
                "Error L10 (output buffer overflow): {} messages dropped since {}",
                self.count,
                timestamp(self.since)
            ),
        )
    }

    /// Heroku's L11, shown to a `--tail` reader that fell behind.
    pub fn tail_notice(self) -> LogLine {
        LogLine::now(
            Source::Heroku,
            "logplex",
            format!(
                "Error L11 (Tail buffer overflow): {} messages dropped since {}",
                self.count,
                timestamp(self.since)
            ),
        )
    }
}

/// A FIFO of at most `capacity` lines that counts what it had to drop.
#[derive(Debug)]
pub(crate) struct Bounded {
    lines: VecDeque<LogLine>,
    capacity: usize,
    overflow: Option<Overflow>,
}

impl Bounded {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            lines: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            overflow: None,
        }
    }

    pub fn has_room(&self) -> bool {
        self.lines.len() < self.capacity
    }

    /// Appends `line` if there is room; otherwise counts it as dropped and returns false.
    pub fn offer(&mut self, line: LogLine) -> bool {
        if self.has_room() {
            self.lines.push_back(line);
            true
        } else {
            let since = line.time;
            self.overflow
                .get_or_insert(Overflow { count: 0, since })
                .count += 1;
            false
        }
    }

    /// Appends regardless of capacity: for a notice (which takes the place of lines already
    /// lost) and the line right after it. Only called once [`Self::take_overflow`] said
    /// there is room, so the queue exceeds its capacity by one at most.
    pub fn push_notice(&mut self, line: LogLine) {
        self.lines.push_back(line);
    }

    pub fn pop(&mut self) -> Option<LogLine> {
        self.lines.pop_front()
    }

    /// Takes up to `max` lines from the front.
    pub fn take(&mut self, max: usize) -> Vec<LogLine> {
        let n = max.min(self.lines.len());
        self.lines.drain(..n).collect()
    }

    /// The pending overflow, if any, once the queue has room again (reporting it while still
    /// full would only lose the report too).
    pub fn take_overflow(&mut self) -> Option<Overflow> {
        if self.has_room() {
            self.overflow.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(n: usize) -> LogLine {
        LogLine::now(Source::App, "web.1", n.to_string())
    }

    #[test]
    fn drops_beyond_capacity_and_reports_once_there_is_room() {
        let mut b = Bounded::new(2);
        assert!(b.offer(l(1)));
        assert!(b.offer(l(2)));
        assert!(!b.offer(l(3)));
        assert!(!b.offer(l(4)));
        assert_eq!(b.take_overflow(), None, "no report while full");
        assert_eq!(b.pop().map(|l| l.message), Some("1".into()));
        let overflow = b.take_overflow().expect("overflow");
        assert_eq!(overflow.count, 2);
        assert_eq!(b.take_overflow(), None, "reported once");
        assert!(overflow
            .tail_notice()
            .message
            .starts_with("Error L11 (Tail buffer overflow): 2 messages dropped since "));
        assert!(overflow
            .drain_notice()
            .message
            .starts_with("Error L10 (output buffer overflow): 2 messages dropped since "));
    }

    #[test]
    fn take_is_fifo() {
        let mut b = Bounded::new(10);
        for i in 0..5 {
            b.offer(l(i));
        }
        let got: Vec<_> = b.take(3).into_iter().map(|l| l.message).collect();
        assert_eq!(got, ["0", "1", "2"]);
        assert_eq!(b.take(10).len(), 2);
        assert!(b.pop().is_none());
    }
}
