//! Following a dyno's files: the tail of `stream.jsonl` (woken by inotify) and the probe of
//! its `$PORT`.

use super::*;

/// Tries to connect to a web dyno's `$PORT` until it accepts.
pub(super) async fn probe(addr: SocketAddr, accepted: mpsc::UnboundedSender<()>) {
    loop {
        if accepted.is_closed() {
            return;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let _ = accepted.send(());
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Follows the shim's stream, woken by inotify rather than by polling. The shim rotates
/// `stream.jsonl`, ending each segment with a `continued` record once the next segment
/// exists; on reading it the tail opens (and watches) the new file. Only the stream file is
/// watched: a watch on the whole dyno directory measured about 8 ms slower per dyno.
pub(super) struct Tail {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
    /// `None` when no watch could be had (the agent's inotify instance could not be made,
    /// or the watch limit is reached): the tail then polls the file; failing instead would
    /// report a running dyno crashed and start a second copy beside it.
    watch: Option<Watch>,
}

/// How often a tail without inotify reads the stream again.
pub(super) const TAIL_POLL: Duration = Duration::from_millis(50);

impl Tail {
    pub(super) fn open(path: PathBuf) -> io::Result<Tail> {
        let watch = Tail::watch(&path);
        Tail::with_watch(path, watch)
    }

    /// The watch is made before the file is opened, so no write is missed.
    pub(super) fn with_watch(path: PathBuf, watch: Option<Watch>) -> io::Result<Tail> {
        Ok(Tail {
            file: File::open(&path)?,
            path,
            pending: Vec::new(),
            watch,
        })
    }

    fn watch(path: &Path) -> Option<Watch> {
        match Watch::new(path) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(
                    "cannot watch {} with inotify ({err}): polling it every {TAIL_POLL:?}",
                    path.display()
                );
                None
            }
        }
    }

    /// Every complete record appended since the last call, across rotations.
    pub(super) fn read_records(&mut self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        while self.drain(&mut records)? {
            // The new segment's watch before its first read (the next turn of the loop).
            self.watch = Tail::watch(&self.path);
            self.file = File::open(&self.path)?;
            self.pending.clear();
        }
        Ok(records)
    }

    /// Reads the current file to its end; true when it ended with `continued`.
    fn drain(&mut self, records: &mut Vec<Record>) -> io::Result<bool> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
        let mut start = 0;
        let mut continued = false;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => {
                    continued = matches!(
                        r,
                        Record::Event {
                            event: ShimEvent::Continued,
                            ..
                        }
                    );
                    records.push(r);
                }
                Err(err) => tracing::warn!("skipping a malformed stream record: {err}"),
            }
            start += nl + 1;
        }
        self.pending.drain(..start);
        Ok(continued)
    }

    /// Waits until the stream file was written to (or, without a watch, a while).
    pub(super) async fn changed(&self) {
        match &self.watch {
            Some(watch) => watch.changed().await,
            None => tokio::time::sleep(TAIL_POLL).await,
        }
    }
}
