//! One inotify instance for the whole agent, shared by every dyno's stream tail.
//!
//! Instances are scarce: `fs.inotify.max_user_instances` is 128 by default and counts every
//! process of the user (root's systemd, udev, editors...), so one instance per dyno ran out
//! at about 120 dynos and the rest had to poll. Watches are plentiful
//! (`max_user_watches` is 8192 or more), so the agent takes one instance and one watch per
//! followed file. A thread of its own reads the instance (blocking) and wakes the tail whose
//! file changed; being outside any tokio runtime, it serves tails on every runtime of the
//! process alike.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::Notify;

/// The tails waiting on each watch descriptor. The kernel gives the same descriptor to two
/// watches of one file, so a descriptor can have several.
type Waiters = HashMap<WatchDescriptor, Vec<(u64, Arc<Notify>)>>;

struct Watcher {
    inotify: Inotify,
    waiters: Mutex<Waiters>,
    next_key: Mutex<u64>,
}

/// The agent's watcher, made on first use; `Err` (kept) when no instance could be had.
fn watcher() -> Result<&'static Watcher, io::Error> {
    static WATCHER: OnceLock<Result<&'static Watcher, io::ErrorKind>> = OnceLock::new();
    let made = WATCHER.get_or_init(|| {
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| io::Error::from(e).kind())?;
        let watcher: &'static Watcher = Box::leak(Box::new(Watcher {
            inotify,
            waiters: Mutex::new(HashMap::new()),
            next_key: Mutex::new(0),
        }));
        std::thread::Builder::new()
            .name("inotify".into())
            .spawn(move || watcher.dispatch())
            .map_err(|e| e.kind())?;
        Ok(watcher)
    });
    made.map_err(|kind| io::Error::new(kind, "no inotify instance"))
}

impl Watcher {
    /// Wakes the waiters of each event's descriptor, for the life of the process.
    fn dispatch(&self) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    // Not seen in practice (a blocking read of an inotify descriptor fails
                    // only on a bad descriptor); the tails' own timers still run.
                    tracing::error!("reading inotify events failed: {err}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            for event in events {
                for (_, notify) in waiters.get(&event.wd).into_iter().flatten() {
                    notify.notify_one();
                }
            }
        }
    }
}

/// A watch on one file's writes. Dropping it removes the watch (once no other watch of the
/// same file is left).
pub struct Watch {
    wd: WatchDescriptor,
    key: u64,
    notify: Arc<Notify>,
}

impl Watch {
    /// Watches `path` for writes. Fails when the agent has no inotify instance or the
    /// watch limit is reached: the caller polls instead.
    pub fn new(path: &Path) -> io::Result<Watch> {
        let watcher = watcher()?;
        let key = {
            let mut next = watcher
                .next_key
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        let notify = Arc::new(Notify::new());
        // Registered under the lock the dispatcher takes, so an event that comes right
        // after `add_watch` finds its waiter.
        let mut waiters = watcher
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wd = watcher
            .inotify
            .add_watch(path, AddWatchFlags::IN_MODIFY)
            .map_err(io::Error::from)?;
        waiters
            .entry(wd)
            .or_default()
            .push((key, Arc::clone(&notify)));
        Ok(Watch { wd, key, notify })
    }

    /// Waits until the file was written to since the last wait returned (a write made
    /// before this call, after the last wake-up, is not lost: it left a permit).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Ok(watcher) = watcher() else {
            return;
        };
        let mut waiters = watcher
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = waiters.get_mut(&self.wd) {
            list.retain(|(key, _)| *key != self.key);
            if list.is_empty() {
                waiters.remove(&self.wd);
                // Fails when the kernel removed it already (the file is gone): nothing to do.
                let _ = watcher.inotify.rm_watch(self.wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn append(path: &Path, line: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(line)
            .unwrap();
    }

    async fn woken(watch: &Watch) -> bool {
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_write_wakes_every_watch_of_the_file_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let (wa1, wa2, wb) = (
            Watch::new(&a).unwrap(),
            Watch::new(&a).unwrap(),
            Watch::new(&b).unwrap(),
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
        f.write_all(b"x\n").unwrap();
        assert!(woken(&wa1).await);
        assert!(woken(&wa2).await);
        let quiet = tokio::time::timeout(Duration::from_millis(200), wb.changed()).await;
        assert!(quiet.is_err(), "b was not written");
        // One of a's two watches gone: the other still wakes.
        drop(wa1);
        f.write_all(b"y\n").unwrap();
        assert!(woken(&wa2).await);
    }

    #[tokio::test]
    async fn a_write_before_the_wait_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream");
        std::fs::write(&path, "").unwrap();
        let watch = Watch::new(&path).unwrap();
        append(&path, b"x\n");
        // The dispatcher thread may take a moment; the permit waits for us either way.
        std::thread::sleep(Duration::from_millis(50));
        assert!(woken(&watch).await);
    }

    #[test]
    fn watches_outlive_the_runtime_that_made_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "").unwrap();
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let watch = Watch::new(&path).unwrap();
            append(&path, b"x\n");
            assert!(rt.block_on(woken(&watch)));
        }
    }

    #[test]
    fn a_missing_file_cannot_be_watched() {
        assert!(Watch::new(Path::new("/nonexistent/stream.jsonl")).is_err());
    }
}
