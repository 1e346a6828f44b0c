//! [`LogPlex`]: the per-app streams, and the one place lines enter.
//!
//! Each app has one [`AppLog`] behind its own mutex: the ring, the open tails and the
//! running drains. `push` takes that mutex for the few microseconds it needs to append to
//! the ring and offer the line to every reader's bounded queue; nothing under it waits on a
//! reader, a socket or a task, which is what keeps a slow reader from slowing the platform.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Duration;

use ipnet::IpNet;
use rustls::pki_types::CertificateDer;

use crate::drain::guard::Destinations;
use crate::drain::tls::{self, Tls};
use crate::drain::{
    parse_drain_url, Drain, DrainQueue, DrainSettings, DrainTask, DrainUrlError, RunningDrain,
};
use crate::line::{Filter, LogLine};
use crate::metrics::{Gauges, Metrics};
use crate::ring::Ring;
use crate::tail::{Offered, Tail, TailShared};

/// Sizes and timings of the plex. `PlexConfig::default()` is Heroku's.
#[derive(Clone, Debug)]
pub struct PlexConfig {
    /// Lines of history kept per app (Heroku: 1,500).
    pub ring_size: usize,
    /// Lines a `--tail` reader may fall behind before it loses lines and gets an L11.
    pub tail_buffer: usize,
    /// Lines a drain may fall behind before it loses lines and reports an L10 (Heroku: 1,024).
    pub drain_buffer: usize,
    /// Extra roots trusted for `syslog+tls://` and `https://` drains; see
    /// [`load_pem_roots`](crate::load_pem_roots).
    pub drain_roots: Vec<CertificateDer<'static>>,
    /// Whether the machine's own root certificates are trusted as well.
    pub system_roots: bool,
    /// First delay before retrying a failed drain.
    pub backoff_min: Duration,
    /// Cap of the retry delay.
    pub backoff_max: Duration,
    /// Most lines per HTTPS POST or syslog write.
    pub batch_max: usize,
    /// How long an HTTPS drain waits for a batch to fill after its first line.
    pub batch_linger: Duration,
    /// Limit for a drain's connect, TLS handshake, write or request.
    pub drain_timeout: Duration,
    /// Networks drains may reach although they are loopback, private, link-local or
    /// otherwise internal (refused by default: a drain URL is user input).
    pub drain_allow: Vec<IpNet>,
}

impl Default for PlexConfig {
    fn default() -> Self {
        Self {
            ring_size: 1500,
            tail_buffer: 1024,
            drain_buffer: 1024,
            drain_roots: Vec::new(),
            system_roots: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            batch_max: 100,
            batch_linger: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            drain_allow: Vec::new(),
        }
    }
}

/// Why [`LogPlex::set_drains`] refused a set of drains; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SetDrainsError {
    /// One drain's URL is not usable.
    #[error("drain {id}: {source}")]
    Url {
        /// The drain's id.
        id: String,
        /// What is wrong with its URL.
        source: DrainUrlError,
    },
    /// Drain tasks need a tokio runtime to run on.
    #[error("set_drains must be called from within a tokio runtime")]
    NoRuntime,
}

/// Every line of every app: history, live tails and drains. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct LogPlex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: PlexConfig,
    apps: RwLock<HashMap<String, Arc<AppLog>>>,
    metrics: Arc<Metrics>,
    /// Built on first use: reading the system roots costs a few milliseconds that a plex
    /// without TLS drains never needs to spend.
    tls: OnceLock<Tls>,
}

#[derive(Debug)]
struct AppLog {
    state: Mutex<AppState>,
}

#[derive(Debug)]
struct AppState {
    ring: Ring,
    tails: Vec<Arc<TailShared>>,
    drains: Vec<RunningDrain>,
}

impl Drop for AppState {
    /// Whatever way an app's stream goes away, its readers see the end of it.
    fn drop(&mut self) {
        for tail in &self.tails {
            tail.close();
        }
    }
}

impl AppLog {
    fn lock(&self) -> MutexGuard<'_, AppState> {
        // Each step under this lock leaves the state consistent, so a poisoned lock (a
        // panic elsewhere) is safe to keep using; losing an app's logs would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn app(&self, app: &str) -> Option<Arc<AppLog>> {
        self.apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(app)
            .cloned()
    }

    fn app_or_insert(&self, app: &str) -> Arc<AppLog> {
        if let Some(log) = self.app(app) {
            return log;
        }
        self.apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(app.to_owned())
            .or_insert_with(|| {
                Arc::new(AppLog {
                    state: Mutex::new(AppState {
                        ring: Ring::new(self.config.ring_size),
                        tails: Vec::new(),
                        drains: Vec::new(),
                    }),
                })
            })
            .clone()
    }

    fn push_to(&self, log: &AppLog, line: LogLine) {
        let mut state = log.lock();
        for line in line.split_long() {
            self.metrics.line();
            state.tails.retain(|tail| match tail.offer(&line) {
                Offered::Kept => true,
                Offered::Dropped => {
                    self.metrics.tail_dropped();
                    true
                }
                Offered::Gone => false,
            });
            for drain in &state.drains {
                if !drain.queue.offer(&line) {
                    self.metrics.drain_dropped();
                }
            }
            state.ring.push(line);
        }
    }

    fn tls(&self) -> Tls {
        self.tls
            .get_or_init(|| tls::client_config(&self.config.drain_roots, self.config.system_roots))
            .clone()
    }
}

impl LogPlex {
    /// An empty plex.
    pub fn new(config: PlexConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                apps: RwLock::new(HashMap::new()),
                metrics: Arc::new(Metrics::default()),
                tls: OnceLock::new(),
            }),
        }
    }

    /// Appends a line to the app's stream: its history, its tails and its drains. Never
    /// waits for a reader; a reader that is full loses the line and is told later (L10/L11).
    /// Messages over 10,000 bytes are split into several lines.
    pub fn push(&self, app: &str, line: LogLine) {
        let log = self.inner.app_or_insert(app);
        self.inner.push_to(&log, line);
    }

    /// The last `n` lines of the app that pass `filter`, oldest first.
    pub fn recent(&self, app: &str, filter: &Filter, n: usize) -> Vec<LogLine> {
        match self.inner.app(app) {
            Some(log) => log.lock().ring.recent(filter, n),
            None => Vec::new(),
        }
    }

    /// The app's lines from now on that pass `filter`.
    pub fn tail(&self, app: &str, filter: Filter) -> Tail {
        self.recent_and_tail(app, filter, 0).1
    }

    /// The last `n` lines and a tail starting right after them, taken at one instant so
    /// `manifold logs --tail` shows no line twice and misses none in between.
    pub fn recent_and_tail(&self, app: &str, filter: Filter, n: usize) -> (Vec<LogLine>, Tail) {
        let log = self.inner.app_or_insert(app);
        let mut state = log.lock();
        let recent = state.ring.recent(&filter, n);
        let shared = TailShared::new(filter, self.inner.config.tail_buffer);
        state.tails.push(shared.clone());
        (recent, Tail::new(shared))
    }

    /// Forgets a destroyed app: its history goes, its tails end, its drains stop.
    pub fn remove_app(&self, app: &str) {
        let removed = self
            .inner
            .apps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app);
        if let Some(log) = removed {
            let mut state = log.lock();
            for tail in state.tails.drain(..) {
                tail.close();
            }
            state.drains.clear();
        }
    }

    /// Makes the app's running drains match `drains`: new ones start, missing ones stop,
    /// unchanged ones (same id, URL and token) keep running with their queue. Every URL is
    /// checked first; on error nothing changes. Must be called within a tokio runtime, on
    /// which the drain tasks then run.
    pub fn set_drains(&self, app: &str, drains: Vec<Drain>) -> Result<(), SetDrainsError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SetDrainsError::NoRuntime)?;
        let mut parsed = Vec::with_capacity(drains.len());
        for drain in drains {
            let url = parse_drain_url(&drain.url).map_err(|source| SetDrainsError::Url {
                id: drain.id.clone(),
                source,
            })?;
            parsed.push((drain, url));
        }
        let log = if parsed.is_empty() {
            match self.inner.app(app) {
                Some(log) => log,
                None => return Ok(()),
            }
        } else {
            self.inner.app_or_insert(app)
        };
        let mut state = log.lock();
        let mut current = std::mem::take(&mut state.drains);
        for (drain, url) in parsed {
            if let Some(i) = current.iter().position(|r| r.drain == drain) {
                state.drains.push(current.swap_remove(i));
                continue;
            }
            let task = DrainTask {
                app: app.to_owned(),
                drain,
                queue: Arc::new(DrainQueue::new(self.inner.config.drain_buffer)),
                settings: self.drain_settings(),
                tls: self.inner.tls(),
                metrics: self.inner.metrics.clone(),
                report: self.reporter(app),
            };
            state.drains.push(RunningDrain::start(&runtime, url, task));
        }
        // What is left in `current` is no longer wanted; dropping it stops those tasks.
        drop(current);
        Ok(())
    }

    /// The drains running for the app, for the scheduler to compare with its store.
    pub fn drains(&self, app: &str) -> Vec<Drain> {
        match self.inner.app(app) {
            Some(log) => log.lock().drains.iter().map(|r| r.drain.clone()).collect(),
            None => Vec::new(),
        }
    }

    /// Counters and sizes in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let mut gauges = Gauges::default();
        let apps: Vec<Arc<AppLog>> = self
            .inner
            .apps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        gauges.apps = apps.len();
        for log in apps {
            let state = log.lock();
            gauges.tails += state.tails.len();
            gauges.drains += state.drains.len();
        }
        self.inner.metrics.render(&gauges)
    }

    fn drain_settings(&self) -> DrainSettings {
        let c = &self.inner.config;
        DrainSettings {
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            batch_max: c.batch_max.max(1),
            batch_linger: c.batch_linger,
            timeout: c.drain_timeout,
            destinations: Destinations::new(c.drain_allow.clone()),
        }
    }

    /// How a drain task writes its L10 line into the app's stream. It holds the plex weakly
    /// (the plex owns the task, not the other way round) and writes only while the app
    /// still exists, so a stopping drain cannot bring a removed app back.
    fn reporter(&self, app: &str) -> crate::drain::Report {
        let plex: Weak<Inner> = Arc::downgrade(&self.inner);
        let app = app.to_owned();
        Arc::new(move |line| {
            if let Some(inner) = plex.upgrade() {
                if let Some(log) = inner.app(&app) {
                    inner.push_to(&log, line);
                }
            }
        })
    }
}
