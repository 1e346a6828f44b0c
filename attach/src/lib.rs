//! The attach codec: how a one-off dyno's terminal travels between the `manifold run` CLI,
//! the scheduler, the agent and the dyno's shim.
//!
//! ```text
//! manifold run ──HTTP upgrade──▶ scheduler ──gRPC AgentLink.Attach──▶ agent ──unix socket──▶ shim ──pty/pipes──▶ dyno
//!              ◀─────────── the same frames on every hop, in both directions ───────────────
//! ```
//!
//! One wire format on all three hops means no hop translates: each only reads the frames it
//! acts on (the scheduler watches for activity and [`Frame::Exit`], the shim applies
//! [`Frame::Resize`] and [`Frame::Signal`]) and passes the bytes on. A frame is
//! `kind: u8, length: u32 big-endian, payload`; payloads are at most [`MAX_PAYLOAD`] bytes,
//! so a reader never buffers more than one frame of a hostile peer.
//!
//! Toward the dyno: [`Frame::Stdin`], [`Frame::StdinEof`], [`Frame::Resize`],
//! [`Frame::Signal`]. From the dyno: [`Frame::Stdout`], [`Frame::Stderr`] (pipes only: a
//! terminal has one output), [`Frame::Status`], [`Frame::Exit`], [`Frame::Error`].

use std::fmt;

/// Largest payload of one frame. Readers split output into frames of at most this.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Bytes before a frame's payload.
pub const HEADER: usize = 5;

/// One message of an attach session.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Bytes for the dyno's standard input (or its terminal).
    Stdin(Vec<u8>),
    /// The client's input ended: the dyno's stdin is closed (pipes only; a terminal has no
    /// end of input but the ^D its user types).
    StdinEof,
    /// The client's terminal changed size.
    Resize { cols: u16, rows: u16 },
    /// A signal for the dyno's processes (a piped client's Ctrl-C is `SIGINT`; with a
    /// terminal, Ctrl-C is a byte of input and the dyno's terminal makes the signal).
    Signal(i32),
    /// Output of the dyno's terminal, or its standard output.
    Stdout(Vec<u8>),
    /// The dyno's standard error (pipes only).
    Stderr(Vec<u8>),
    /// What the platform says about the dyno while the client waits (`starting`, `up`).
    Status(String),
    /// The dyno's command ended with this status (128 + n for a signal n); the last frame.
    Exit(i32),
    /// The session cannot go on (the dyno failed to start, its host was lost, it timed out
    /// idle); the last frame.
    Error(String),
}

impl fmt::Debug for Frame {
    /// Payloads shown by length: a terminal's bytes are noise in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Stdin(b) => write!(f, "Stdin({} bytes)", b.len()),
            Frame::StdinEof => write!(f, "StdinEof"),
            Frame::Resize { cols, rows } => write!(f, "Resize({cols}x{rows})"),
            Frame::Signal(s) => write!(f, "Signal({s})"),
            Frame::Stdout(b) => write!(f, "Stdout({} bytes)", b.len()),
            Frame::Stderr(b) => write!(f, "Stderr({} bytes)", b.len()),
            Frame::Status(s) => write!(f, "Status({s:?})"),
            Frame::Exit(c) => write!(f, "Exit({c})"),
            Frame::Error(e) => write!(f, "Error({e:?})"),
        }
    }
}

mod kind {
    pub const STDIN: u8 = 1;
    pub const STDIN_EOF: u8 = 2;
    pub const RESIZE: u8 = 3;
    pub const SIGNAL: u8 = 4;
    pub const STDOUT: u8 = 16;
    pub const STDERR: u8 = 17;
    pub const STATUS: u8 = 18;
    pub const EXIT: u8 = 19;
    pub const ERROR: u8 = 20;
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown attach frame kind {0}")]
    UnknownKind(u8),
    #[error("attach frame of {0} bytes is over the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("attach frame kind {kind} has a payload of {len} bytes, which it cannot have")]
    BadLength { kind: u8, len: usize },
    #[error("attach frame has text that is not UTF-8")]
    NotUtf8,
}

impl Frame {
    /// Whether the frame ends the session (nothing follows it).
    pub fn is_last(&self) -> bool {
        matches!(self, Frame::Exit(_) | Frame::Error(_))
    }

    /// Whether the frame goes toward the dyno (client input) rather than from it.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Frame::Stdin(_) | Frame::StdinEof | Frame::Resize { .. } | Frame::Signal(_)
        )
    }

    /// Appends the frame's bytes to `out`. Payloads over [`MAX_PAYLOAD`] are split into
    /// several frames of the same kind (output and input only; other kinds are small).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(b) => (kind::STDIN, b.as_slice().into()),
            Frame::StdinEof => (kind::STDIN_EOF, (&[][..]).into()),
            Frame::Resize { cols, rows } => {
                let mut p = cols.to_be_bytes().to_vec();
                p.extend_from_slice(&rows.to_be_bytes());
                (kind::RESIZE, p.into())
            }
            Frame::Signal(s) => (kind::SIGNAL, s.to_be_bytes().to_vec().into()),
            Frame::Stdout(b) => (kind::STDOUT, b.as_slice().into()),
            Frame::Stderr(b) => (kind::STDERR, b.as_slice().into()),
            Frame::Status(s) => (kind::STATUS, truncate(s).into()),
            Frame::Exit(c) => (kind::EXIT, c.to_be_bytes().to_vec().into()),
            Frame::Error(e) => (kind::ERROR, truncate(e).into()),
        };
        if payload.is_empty() {
            out.push(kind);
            out.extend_from_slice(&0u32.to_be_bytes());
            return;
        }
        for chunk in payload.chunks(MAX_PAYLOAD) {
            out.push(kind);
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn decode(kind: u8, payload: &[u8]) -> Result<Frame, DecodeError> {
        let fixed = |n: usize| {
            if payload.len() == n {
                Ok(())
            } else {
                Err(DecodeError::BadLength {
                    kind,
                    len: payload.len(),
                })
            }
        };
        let text = || String::from_utf8(payload.to_vec()).map_err(|_| DecodeError::NotUtf8);
        let int = || i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
        Ok(match kind {
            kind::STDIN => Frame::Stdin(payload.to_vec()),
            kind::STDIN_EOF => {
                fixed(0)?;
                Frame::StdinEof
            }
            kind::RESIZE => {
                fixed(4)?;
                Frame::Resize {
                    cols: u16::from_be_bytes([payload[0], payload[1]]),
                    rows: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            kind::SIGNAL => {
                fixed(4)?;
                Frame::Signal(int())
            }
            kind::STDOUT => Frame::Stdout(payload.to_vec()),
            kind::STDERR => Frame::Stderr(payload.to_vec()),
            kind::STATUS => Frame::Status(text()?),
            kind::EXIT => {
                fixed(4)?;
                Frame::Exit(int())
            }
            kind::ERROR => Frame::Error(text()?),
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Text frames are short messages; a longer one is cut at a character boundary.
fn truncate(s: &str) -> Vec<u8> {
    let mut end = s.len().min(MAX_PAYLOAD);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.as_bytes()[..end].to_vec()
}

/// Turns a byte stream back into frames, however it was cut into reads.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if the bytes fed so far hold one. After an error the stream is
    /// out of step and must be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let frame = Frame::decode(kind, &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        frame.map(Some)
    }

    /// Bytes fed and not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Decodes a buffer that holds whole frames only (a gRPC message of the attach stream).
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
    let mut d = Decoder::new();
    d.feed(bytes);
    let mut frames = Vec::new();
    while let Some(f) = d.next_frame()? {
        frames.push(f);
    }
    if d.pending() > 0 {
        return Err(DecodeError::BadLength {
            kind: d.buf[0],
            len: d.pending(),
        });
    }
    Ok(frames)
}

/// The exit status a shell would show for a process that ended with `code` or by `signal`.
pub fn exit_status(code: Option<i32>, signal: Option<i32>) -> i32 {
    match (code, signal) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Stdin(b"ls\n".to_vec()),
            Frame::StdinEof,
            Frame::Resize {
                cols: 132,
                rows: 43,
            },
            Frame::Signal(2),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(b"oops".to_vec()),
            Frame::Status("up".into()),
            Frame::Exit(130),
            Frame::Error("host lost".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_whatever_the_reads() {
        let frames = all();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode_into(&mut bytes);
        }
        for step in [1, 2, 3, 7, bytes.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in bytes.chunks(step) {
                d.feed(chunk);
                while let Some(f) = d.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "reads of {step} bytes");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn large_output_is_split_into_frames_under_the_limit() {
        let big = vec![b'x'; MAX_PAYLOAD * 2 + 10];
        let frames = decode_all(&Frame::Stdout(big.clone()).encode()).expect("valid");
        assert_eq!(frames.len(), 3);
        let joined: Vec<u8> = frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Stdout(b) => b,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(joined, big);
    }

    #[test]
    fn hostile_headers_are_refused_before_buffering() {
        let mut d = Decoder::new();
        d.feed(&[kind::STDOUT, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            d.next_frame(),
            Err(DecodeError::TooLarge(u32::MAX as usize))
        );
        let mut d = Decoder::new();
        d.feed(&[99, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(DecodeError::UnknownKind(99)));
        let mut d = Decoder::new();
        d.feed(&[kind::EXIT, 0, 0, 0, 1, 7]);
        assert!(matches!(d.next_frame(), Err(DecodeError::BadLength { .. })));
        let mut d = Decoder::new();
        d.feed(&[kind::STATUS, 0, 0, 0, 1, 0xff]);
        assert_eq!(d.next_frame(), Err(DecodeError::NotUtf8));
        assert!(
            decode_all(&[kind::STDIN, 0, 0, 0, 5, 1]).is_err(),
            "a cut frame"
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_PAYLOAD);
        let frames = decode_all(&Frame::Error(s).encode()).expect("valid");
        let [Frame::Error(e)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert!(e.len() <= MAX_PAYLOAD && e.chars().all(|c| c == 'é'));
    }

    #[test]
    fn kinds_say_which_way_they_go_and_which_end_a_session() {
        let input: Vec<bool> = all().iter().map(Frame::is_input).collect();
        assert_eq!(
            input,
            [true, true, true, true, false, false, false, false, false]
        );
        let last: Vec<bool> = all().iter().map(Frame::is_last).collect();
        assert_eq!(
            last,
            [false, false, false, false, false, false, false, true, true]
        );
        assert_eq!(exit_status(Some(3), None), 3);
        assert_eq!(exit_status(None, Some(9)), 137);
    }
}
