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
    fn timestamps_look_like_logplex() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_704_110_400_123_456_000)
            .expect("valid time");
        assert_eq!(format_timestamp(t), "2024-01-01T12:00:00.123456+00:00");
    }
}
