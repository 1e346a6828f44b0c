//! The recorder: the dyno's lines and the shim's events into `stream.jsonl`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use crate::dyno::{DynoDir, Record, ShimEvent, Stream};
use crate::logs::timestamp;

/// The stream's write buffer: a turn's lines go out in a few system calls.
const RECORDER_BUFFER: usize = 64 * 1024;

/// Size at which `stream.jsonl` is rotated: a dyno's records use at most two segments
/// (the current one and `stream.jsonl.1`) of disk, however much it prints.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Appends records to `stream.jsonl`, rotating it at [`SEGMENT_BYTES`]. Write errors are
/// logged and otherwise ignored: losing a log line must never take the dyno down.
///
/// Lines are buffered for the rest of the shim's turn ([`Recorder::flush`] before it sleeps),
/// rather than written one system call each; events are written at once.
pub(super) struct Recorder {
    file: BufWriter<File>,
    path: PathBuf,
    previous: PathBuf,
    /// Bytes in the current segment.
    written: u64,
    /// Records written in all segments.
    records: u64,
    segment_bytes: u64,
    /// The `started` event, repeated at the top of every new segment: a reader that starts
    /// late (an agent re-adopting the dyno) may never see the segment that had it, and a web
    /// dyno's state needs its address.
    started: Option<ShimEvent>,
}

impl Recorder {
    pub(super) fn open(dir: &DynoDir, segment_bytes: u64) -> io::Result<Self> {
        let path = dir.stream();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let written = file.metadata()?.len();
        Ok(Recorder {
            file: BufWriter::with_capacity(RECORDER_BUFFER, file),
            path,
            previous: dir.stream_previous(),
            written,
            records: 0,
            segment_bytes,
            started: None,
        })
    }

    pub(super) fn write(&mut self, record: &Record) {
        if let Err(err) = self.append(record) {
            tracing::warn!("cannot write to the stream: {err}");
            return;
        }
        if self.written >= self.segment_bytes {
            if let Err(err) = self.rotate() {
                tracing::warn!("cannot rotate the stream: {err}");
            }
        }
    }

    /// Writes one record as a JSON line and counts it.
    fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        self.records += 1;
        Ok(())
    }

    /// Writes what is buffered.
    pub(super) fn flush(&mut self) {
        if let Err(err) = self.file.flush() {
            tracing::warn!("cannot write to the stream: {err}");
        }
    }

    /// Moves the current segment aside (dropping the one before) and starts a new one whose
    /// first record says how many records came before it.
    ///
    /// Order matters to readers, which watch files, not the directory: the new segment exists
    /// before the old one's last record (`continued`) tells them to open it. And
    /// `stream.jsonl` never goes missing, not even for an instant: a reader a segment or more
    /// behind opens it whenever it reaches a `continued`, which may be in the middle of a
    /// later rotation (a rename of the current segment aside, then a create, left a moment
    /// without one, and such a reader failed with "No such file"). So the new segment is made
    /// under another name, the current one is linked to `stream.jsonl.1` (a rename over the
    /// older one), and the new one is renamed over `stream.jsonl`: each step is atomic.
    fn rotate(&mut self) -> io::Result<()> {
        let staged = self.path.with_extension("jsonl.next");
        let link = self.path.with_extension("jsonl.1.next");
        for stale in [&staged, &link] {
            match fs::remove_file(stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let next = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&staged)?;
        fs::hard_link(&self.path, &link)?;
        fs::rename(&link, &self.previous)?;
        fs::rename(&staged, &self.path)?;
        self.append(&Record::Event {
            ts: timestamp(),
            event: ShimEvent::Continued,
        })?;
        self.file.flush()?;
        self.file = BufWriter::with_capacity(RECORDER_BUFFER, next);
        self.written = 0;
        let records_before = self.records;
        self.append(&Record::Event {
            ts: timestamp(),
            event: ShimEvent::Rotated { records_before },
        })?;
        match self.started.clone() {
            Some(event) => self.append(&Record::Event {
                ts: timestamp(),
                event,
            }),
            None => Ok(()),
        }
    }

    pub(super) fn line(&mut self, stream: Stream, text: &str) {
        self.write(&Record::Line {
            ts: timestamp(),
            stream,
            text: text.to_string(),
        });
    }

    pub(super) fn event(&mut self, event: ShimEvent) {
        if matches!(event, ShimEvent::Started { .. }) {
            self.started = Some(event.clone());
        }
        self.write(&Record::Event {
            ts: timestamp(),
            event,
        });
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn recorder_rotates_and_counts_records_before_each_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let mut r = Recorder::open(&dir, 300).expect("open");
        for i in 0..20 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        let current = fs::read_to_string(dir.stream()).expect("current");
        let previous = fs::read_to_string(dir.stream_previous()).expect("previous");
        assert!(previous.len() < 300 + 200, "segments stay near the limit");
        let last_of_previous: Record =
            serde_json::from_str(previous.lines().last().expect("a line")).expect("record");
        assert!(
            matches!(
                last_of_previous,
                Record::Event {
                    event: ShimEvent::Continued,
                    ..
                }
            ),
            "a segment ends with `continued`: {previous}"
        );
        let first: Record =
            serde_json::from_str(current.lines().next().expect("a line")).expect("record");
        let Record::Event {
            event: ShimEvent::Rotated { records_before },
            ..
        } = first
        else {
            panic!("a segment starts with its rotation record: {current}");
        };
        let kept_lines = current.lines().count() as u64 - 1;
        assert!(current.contains("line 19"));
        // Every record is counted: those before the last rotation, then this segment's.
        assert_eq!(records_before + 1 + kept_lines, r.records);
        let mut names: Vec<_> = fs::read_dir(tmp.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["stream.jsonl", "stream.jsonl.1"],
            "nothing staged is left"
        );
    }

    /// A reader opening `stream.jsonl` at any moment finds it, however fast segments turn.
    #[test]
    fn the_current_segment_never_goes_missing_during_rotations() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let path = dir.stream();
        let mut r = Recorder::open(&dir, 200).expect("open");
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let reader = {
            let (done, path) = (done.clone(), path.clone());
            std::thread::spawn(move || {
                let mut opens = 0u64;
                while !done.load(Ordering::SeqCst) {
                    File::open(&path).expect("stream.jsonl is always there");
                    opens += 1;
                }
                opens
            })
        };
        for i in 0..20_000 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().expect("the reader found every open") > 0);
    }

    #[test]
    fn every_new_segment_repeats_the_started_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DynoDir {
            root: tmp.path().to_path_buf(),
        };
        let mut r = Recorder::open(&dir, 300).expect("open");
        let started = ShimEvent::Started {
            pid: 7,
            address: std::net::Ipv4Addr::new(10, 0, 0, 2),
        };
        r.event(started.clone());
        for i in 0..20 {
            r.line(Stream::Out, &format!("line {i}"));
        }
        r.flush();
        let current = fs::read_to_string(dir.stream()).expect("current");
        let second: Record =
            serde_json::from_str(current.lines().nth(1).expect("two lines")).expect("record");
        assert!(
            matches!(second, Record::Event { event, .. } if event == started),
            "{current}"
        );
    }
}
