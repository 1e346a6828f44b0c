//! Log capture: turning a dyno's stdout/stderr bytes into timestamped lines.
//!
//! Heroku's Logplex splits lines longer than 10,000 bytes, and a line that a dyno prints
//! without a trailing newline before it exits is still a line. [`LineSplitter`] does both
//! and never blocks: it only buffers the current partial line (at most [`MAX_LINE`] bytes),
//! so a dyno that floods output costs the shim a bounded amount of memory.

use time::format_description::well_known::iso8601::{
    Config, EncodedConfig, Iso8601, TimePrecision,
};
use time::OffsetDateTime;

use std::time::{Duration, Instant};

/// How fast one dyno may log.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogRate {
    /// Sustained lines per second.
    pub per_second: f64,
    /// Lines a dyno may write at once above the sustained rate.
    pub burst: f64,
}

impl Default for LogRate {
    /// 2,000 lines/s with a burst of 10,000: well above what an app logs on purpose,
    /// well below what a `yes` loop writes.
    fn default() -> Self {
        LogRate {
            per_second: 2_000.0,
            burst: 10_000.0,
        }
    }
}

impl LogRate {
    /// `lines` a second, with a burst of five seconds' worth (the agent's `--log-rate`).
    pub fn per_second(lines: u32) -> Self {
        LogRate {
            per_second: f64::from(lines),
            burst: f64::from(lines) * 5.0,
        }
    }
}

/// Longest line before it is split, in bytes (Heroku: 10,000).
pub const MAX_LINE: usize = 10_000;

/// Accumulates bytes and yields whole lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `bytes`, calling `emit` for every completed line (without its newline).
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.partial.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => {
                    self.partial.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    self.emit_partial(&mut emit);
                }
                None if bytes.len() < room => {
                    self.partial.extend_from_slice(bytes);
                    bytes = &[];
                }
                None => {
                    // The line reaches MAX_LINE: split it, at a UTF-8 boundary when there is
                    // one close by, so that a split does not mangle a multi-byte character.
                    self.partial.extend_from_slice(&bytes[..room]);
                    bytes = &bytes[room..];
                    let cut = utf8_cut(&self.partial);
                    let carry = self.partial.split_off(cut);
                    self.emit_partial(&mut emit);
                    self.partial = carry;
                }
            }
        }
    }

    /// Emits the last line if the stream ended without a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.partial.is_empty() {
            self.emit_partial(&mut emit);
        }
    }

    fn emit_partial(&mut self, emit: &mut impl FnMut(&str)) {
        let line = String::from_utf8_lossy(&self.partial);
        emit(line.trim_end_matches('\r'));
        self.partial.clear();
    }
}

/// Where to cut a full buffer: before a trailing incomplete UTF-8 sequence (at most 3
/// bytes back), or at the end when there is none.
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=3.min(len) {
        let b = buf[len - back];
        if b & 0b1100_0000 != 0b1000_0000 {
            // `b` starts a character (or is ASCII): cut before it if that character is
            // longer than what the buffer holds of it.
            let need = match b {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            return if need > back { len - back } else { len };
        }
    }
    len
}

/// A dyno's log rate where its bytes arrive (the shim): a token bucket of lines. Lines past
/// it are dropped, never buffered, so a dyno that floods its output costs the host neither
/// memory nor disk nor the agent's time; what was dropped is counted for Heroku's L10
/// notice, due at most once every [`NOTICE_EVERY`].
#[derive(Debug)]
pub struct LineBudget {
    rate: LogRate,
    tokens: f64,
    refilled: Instant,
    dropped: u64,
    /// When the first line not yet reported was dropped (a Logplex timestamp).
    dropped_since: Option<String>,
    noticed: Option<Instant>,
}

/// Least time between two drop notices of one dyno (as the agent's shipper).
pub const NOTICE_EVERY: Duration = Duration::from_secs(1);

impl LineBudget {
    /// A full bucket: a dyno may log a burst at once.
    pub fn new(rate: LogRate, now: Instant) -> Self {
        LineBudget {
            rate,
            tokens: rate.burst,
            refilled: now,
            dropped: 0,
            dropped_since: None,
            noticed: None,
        }
    }

    /// Adds what the time since the last refill earned; called once per chunk of output
    /// rather than per line, since a chunk arrives at one instant.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.refilled = now;
    }

    /// Whether one more line may be logged; a line that may not is counted as dropped.
    pub fn admit(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.dropped += 1;
        if self.dropped_since.is_none() {
            self.dropped_since = Some(timestamp());
        }
        false
    }

    /// The drop count and the time of the first drop, when a notice is due: lines were
    /// dropped and the last notice is [`NOTICE_EVERY`] old (or `flush`, at the dyno's end).
    pub fn notice(&mut self, now: Instant, flush: bool) -> Option<(u64, String)> {
        let due = flush
            || self
                .noticed
                .is_none_or(|at| now.saturating_duration_since(at) >= NOTICE_EVERY);
        if !due || self.dropped == 0 {
            return None;
        }
        self.noticed = Some(now);
        let since = self.dropped_since.take().unwrap_or_else(timestamp);
        Some((std::mem::take(&mut self.dropped), since))
    }

    /// When the next notice can be due, if lines wait to be reported: the shim's loop must
    /// wake then even if the dyno went quiet.
    pub fn notice_due(&self) -> Option<Instant> {
        (self.dropped > 0).then(|| self.noticed.map_or(self.refilled, |at| at + NOTICE_EVERY))
    }
}

const TIMESTAMP: EncodedConfig = Config::DEFAULT
    .set_time_precision(TimePrecision::Second {
        decimal_digits: std::num::NonZeroU8::new(6),
    })
    .encode();

/// The current time as Logplex prints it: `2024-01-01T12:00:00.123456+00:00`.
pub fn timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

/// Formats `t` the way Logplex does.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    t.format(&Iso8601::<TIMESTAMP>)
        .map(|s| s.replace('Z', "+00:00"))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_string()));
        }
        s.finish(|l| out.push(l.to_string()));
        out
    }

    #[test]
    fn lines_across_chunks_and_last_partial_line() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\r\n", b"tail"]),
            vec!["hello", "world", "tail"]
        );
        assert_eq!(split(&[b"\n\n"]), vec!["", ""]);
        assert!(split(&[]).is_empty());
    }

    #[test]
    fn long_lines_split_at_ten_thousand_bytes() {
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let out = split(&[&long, b"\n"]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), MAX_LINE);
        assert_eq!(out[1].len(), MAX_LINE);
        assert_eq!(out[2].len(), 5);
    }

    #[test]
    fn split_does_not_break_a_utf8_character() {
        let mut s = vec![b'a'; MAX_LINE - 1];
        s.extend_from_slice("é".as_bytes()); // two bytes straddling the limit
        s.push(b'\n');
        let out = split(&[&s]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), MAX_LINE - 1);
        assert_eq!(out[1], "é");
    }

    #[test]
    fn a_budget_admits_a_burst_then_its_rate_and_counts_the_rest() {
        let start = Instant::now();
        let rate = LogRate {
            per_second: 10.0,
            burst: 20.0,
        };
        let mut b = LineBudget::new(rate, start);
        let admitted = (0..50).filter(|_| b.admit()).count();
        assert_eq!(admitted, 20, "the burst");
        assert_eq!(b.notice_due(), Some(start), "a first notice is due at once");
        let (dropped, since) = b.notice(start, false).expect("a notice");
        assert_eq!(dropped, 30);
        assert!(since.ends_with("+00:00"), "{since}");
        // Half a second later: 5 lines earned, and no second notice within the second.
        let later = start + Duration::from_millis(500);
        b.refill(later);
        let admitted = (0..10).filter(|_| b.admit()).count();
        assert_eq!(admitted, 5);
        assert_eq!(b.notice(later, false), None, "one notice a second at most");
        assert_eq!(b.notice_due(), Some(start + NOTICE_EVERY));
        let (dropped, _) = b.notice(later, true).expect("flushed at the end");
        assert_eq!(dropped, 5);
        assert_eq!(b.notice_due(), None, "nothing left to report");
        // The bucket never holds more than the burst, however long the dyno was quiet.
        b.refill(later + Duration::from_secs(3600));
        assert_eq!((0..100).filter(|_| b.admit()).count(), 20);
    }

    #[test]
    fn timestamps_look_like_logplex() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_704_110_400_123_456_000)
            .expect("valid time");
        assert_eq!(format_timestamp(t), "2024-01-01T12:00:00.123456+00:00");
    }
}
