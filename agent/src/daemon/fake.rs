//! Test doubles for the daemon's seams ([`super::driver`]): a driver whose dynos live by a
//! script and that records what it was asked (Nomad's mock driver), and a blob store that
//! has every slug. They stand in for the runner as the daemon sees it: state changes as
//! [`Event`]s, then the end of the run.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::*;
use crate::daemon::link::BlobError;
use crate::runner::RunnerError;

/// How one run of a dyno goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Script {
    /// Its start fails (the shim cannot be spawned).
    StartFails,
    /// Up, then crashes with status 1 after running this long.
    CrashesAfter(Duration),
    /// A web dyno that never binds `$PORT`: killed at its boot timeout (R10), a crash.
    NeverBinds,
    /// Up, then exits with `status` on its own after `after`.
    Exits { after: Duration, status: i32 },
    /// Up until it is stopped.
    RunsUntilStopped,
}

/// What the driver was asked, by run (container id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Start {
        run: String,
        name: String,
    },
    Stop {
        run: String,
    },
    /// The R10 kill (the runner's own, in the real driver).
    Kill {
        run: String,
    },
}

/// Calls with the (virtual) time they were made at.
type Calls = Arc<Mutex<Vec<(tokio::time::Instant, Call)>>>;

/// A driver of scripted dynos.
#[derive(Default)]
pub(super) struct FakeDriver {
    /// How the next starts go, in order; then [`Script::RunsUntilStopped`].
    scripts: Mutex<VecDeque<Script>>,
    /// Dynos left running by a previous daemon, by directory.
    left: Mutex<HashMap<PathBuf, (DynoConfig, Script)>>,
    calls: Calls,
}

impl FakeDriver {
    pub(super) fn script(&self, scripts: impl IntoIterator<Item = Script>) {
        lock(&self.scripts).extend(scripts);
    }

    /// A dyno that runs in `dir` as a previous daemon left it.
    pub(super) fn leave_running(&self, dir: &DynoDir, config: DynoConfig, script: Script) {
        lock(&self.left).insert(dir.root.clone(), (config, script));
    }

    pub(super) fn calls(&self) -> Vec<(tokio::time::Instant, Call)> {
        lock(&self.calls).clone()
    }

    pub(super) fn starts(&self) -> Vec<tokio::time::Instant> {
        self.calls()
            .into_iter()
            .filter(|(_, call)| matches!(call, Call::Start { .. }))
            .map(|(at, _)| at)
            .collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(calls: &Calls, call: Call) {
    lock(calls).push((tokio::time::Instant::now(), call));
}

impl DynoDriver for FakeDriver {
    fn start(
        &self,
        config: DynoConfig,
    ) -> BoxFuture<'static, Result<Box<dyn DriverDyno>, RunnerError>> {
        record(
            &self.calls,
            Call::Start {
                run: config.id.clone(),
                name: config.name.clone(),
            },
        );
        let script = lock(&self.scripts)
            .pop_front()
            .unwrap_or(Script::RunsUntilStopped);
        let calls = self.calls.clone();
        Box::pin(async move {
            if script == Script::StartFails {
                return Err(RunnerError::Spawn {
                    binary: PathBuf::from("fake-shim"),
                    source: std::io::Error::other("scripted start failure"),
                });
            }
            let dir = DynoDir::new(&config.host, &config.id);
            Ok(Box::new(FakeDyno {
                config,
                dir,
                script,
                calls,
            }) as Box<dyn DriverDyno>)
        })
    }

    fn find(&self, dir: &DynoDir) -> Found {
        match lock(&self.left).remove(&dir.root) {
            Some((config, script)) => Found::Running(Box::new(FakeDyno {
                config,
                dir: dir.clone(),
                script,
                calls: self.calls.clone(),
            })),
            None => Found::Dead,
        }
    }

    fn remove_dead(&self, dir: DynoDir) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = std::fs::remove_dir_all(&dir.root);
        })
    }
}

struct FakeDyno {
    config: DynoConfig,
    dir: DynoDir,
    script: Script,
    calls: Calls,
}

/// The exit status of a dyno stopped with SIGTERM.
const STOPPED: i32 = 143;
/// The exit status of a dyno killed with SIGKILL.
const KILLED: i32 = 137;

impl DriverDyno for FakeDyno {
    fn config(&self) -> &DynoConfig {
        &self.config
    }

    fn dir(&self) -> &DynoDir {
        &self.dir
    }

    fn follow(
        self: Box<Self>,
        events: mpsc::UnboundedSender<Event>,
        mut stop: mpsc::UnboundedReceiver<()>,
    ) -> BoxFuture<'static, Result<i32, RunnerError>> {
        Box::pin(async move {
            let status = self.run(events, &mut stop).await;
            // As the runner does, once the dyno is gone.
            let _ = std::fs::remove_dir_all(&self.dir.root);
            Ok(status)
        })
    }
}

impl FakeDyno {
    /// Plays the script: the states the runner would report, then the exit status.
    async fn run(
        &self,
        events: mpsc::UnboundedSender<Event>,
        stop: &mut mpsc::UnboundedReceiver<()>,
    ) -> i32 {
        let state = |state, status, reason: Option<&str>| {
            let _ = events.send(Event::State {
                state,
                status,
                reason: reason.map(str::to_string),
            });
        };
        // How long it runs on its own, and how that ends.
        let (lasts, ends) = match self.script {
            Script::StartFails | Script::RunsUntilStopped => (None, None),
            Script::CrashesAfter(after) => (Some(after), Some((State::Crashed, 1, None))),
            Script::NeverBinds => (
                Some(self.config.boot_timeout),
                Some((State::Crashed, KILLED, Some("Error R10 (Boot timeout)"))),
            ),
            // As the runner says it: a one-off that exits on its own is complete, whatever
            // its status.
            Script::Exits { after, status } => {
                let end = if entry::one_off(&self.config.name) {
                    State::Complete
                } else {
                    State::Crashed
                };
                (Some(after), Some((end, status, None)))
            }
        };
        if self.script != Script::NeverBinds {
            state(State::Up, None, None);
        }
        let ran = async {
            match lasts {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        let stopped = async {
            // The sender gone (the entry removed) is no stop.
            if stop.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        };
        let run = self.config.id.clone();
        tokio::select! {
            () = ran => {
                let Some((end, status, reason)) = ends else {
                    return 0;
                };
                if self.script == Script::NeverBinds {
                    record(&self.calls, Call::Kill { run });
                }
                state(end, Some(status), reason);
                status
            }
            () = stopped => {
                record(&self.calls, Call::Stop { run });
                state(State::Stopping, None, None);
                state(State::Down, Some(STOPPED), None);
                STOPPED
            }
        }
    }
}

/// A blob store that has every blob, and takes every upload.
pub(super) struct FakeBlobs;

impl BlobStore for FakeBlobs {
    fn fetch<'a>(
        &'a self,
        sha256: &'a str,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<PathBuf, BlobError>> {
        Box::pin(async move { Ok(dir.join(format!("{sha256}.tgz"))) })
    }

    fn upload<'a>(
        &'a self,
        _file: std::fs::File,
        _size: u64,
        _sha256: &'a str,
    ) -> BoxFuture<'a, Result<(), BlobError>> {
        Box::pin(async { Ok(()) })
    }
}
