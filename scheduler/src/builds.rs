//! Builds: an uploaded source becomes a slug in a build dyno on some host with the app's
//! stack, and the slug becomes a release. The scheduler keeps each build's output in
//! memory, bounded, while it runs and for an hour after, so the CLI can stream it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manifold_proto::{build_event, scheduler_message, BuildEvent, BuildRequest};
use manifold_slugbuilder::build::SlugMetadata;
use manifold_slugbuilder::metadata;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use crate::blobs::{Blob, Blobs};
use crate::cluster::Cluster;
use crate::logs::LogFeed;
use crate::metrics::Counters;
use crate::model::{App, Build, BuildStatus, FormationUpdate, Release, ReleaseStatus, Slug};
use crate::reconciler::Liveness;
use crate::store::{BuildOutcome, Store, StoreError};
use crate::sync::lock;

/// Lines of one build's output the scheduler keeps: a build that prints more keeps its last
/// ones (a reader that fell behind is told how many it missed).
const KEPT_LINES: usize = 10_000;

/// Bytes of one build's output the scheduler keeps (whichever of the two limits comes first).
const KEPT_BYTES: usize = 4 << 20;

/// Longest line kept; a longer one is cut (an agent's line is otherwise unbounded).
const LINE_BYTES: usize = 8 << 10;

/// How long a finished build's output stays readable: long enough for a client that
/// streams it to finish, after which `builds:output` says it is gone.
const KEPT_AFTER_DONE: Duration = Duration::from_secs(60 * 60);

/// The output of one build and whether it ended. Lines are numbered from the build's
/// first; the oldest are evicted past [`KEPT_LINES`] or [`KEPT_BYTES`].
#[derive(Debug)]
struct BuildLog {
    lines: VecDeque<String>,
    /// The number of the first line in `lines` (how many were evicted before it).
    first: usize,
    bytes: usize,
    /// When the build ended, if it did.
    done: Option<Instant>,
    host: Option<String>,
    changed: watch::Sender<u64>,
}

impl BuildLog {
    fn push(&mut self, mut line: String) {
        if line.len() > LINE_BYTES {
            let mut cut = LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > KEPT_LINES || self.bytes > KEPT_BYTES {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.first += 1;
        }
    }

    /// The number after the last line.
    fn end(&self) -> usize {
        self.first + self.lines.len()
    }
}

/// The output of builds in progress (and finished ones', for [`KEPT_AFTER_DONE`]).
#[derive(Debug, Default)]
struct BuildOutputs {
    logs: Mutex<HashMap<Uuid, BuildLog>>,
}

/// What a reader of a build's output gets next.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Lines, and the number to read from next.
    Lines {
        lines: Vec<String>,
        next: usize,
    },
    Done,
    /// No such build, or its output was evicted.
    Unknown,
}

impl BuildOutputs {
    fn open(&self, id: Uuid, host: Option<String>) {
        self.evict(Instant::now());
        let (changed, _) = watch::channel(0);
        lock(&self.logs).insert(
            id,
            BuildLog {
                lines: VecDeque::new(),
                first: 0,
                bytes: 0,
                done: None,
                host,
                changed,
            },
        );
    }

    /// Forgets the output of builds that ended more than [`KEPT_AFTER_DONE`] before `now`.
    fn evict(&self, now: Instant) {
        lock(&self.logs).retain(|_, log| {
            log.done
                .is_none_or(|done| now.saturating_duration_since(done) < KEPT_AFTER_DONE)
        });
    }

    fn push(&self, id: Uuid, line: String) {
        if let Some(log) = lock(&self.logs).get_mut(&id) {
            log.push(line);
            log.changed.send_modify(|n| *n += 1);
        }
    }

    fn close(&self, id: Uuid) {
        if let Some(log) = lock(&self.logs).get_mut(&id) {
            log.done.get_or_insert_with(Instant::now);
            log.changed.send_modify(|n| *n += 1);
        }
    }

    /// Lines from number `from` on; waits for new ones while the build runs. A reader whose
    /// lines were evicted gets a line saying how many it missed first.
    async fn read(&self, id: Uuid, from: usize) -> Output {
        loop {
            let mut rx = {
                let logs = lock(&self.logs);
                let Some(log) = logs.get(&id) else {
                    return Output::Unknown;
                };
                if log.end() > from {
                    let mut lines = Vec::new();
                    if from < log.first {
                        lines.push(format!(
                            "-----> {} lines of output not kept (the scheduler keeps a build's last {KEPT_LINES} lines, {} MiB)",
                            log.first - from,
                            KEPT_BYTES >> 20
                        ));
                    }
                    let skip = from.saturating_sub(log.first);
                    lines.extend(log.lines.iter().skip(skip).cloned());
                    return Output::Lines {
                        lines,
                        next: log.end(),
                    };
                }
                if log.done.is_some() {
                    return Output::Done;
                }
                log.changed.subscribe()
            };
            if rx.changed().await.is_err() {
                return Output::Done;
            }
        }
    }
}

impl BuildOutputs {
    /// How many builds run on each host.
    fn busy(&self) -> HashMap<String, usize> {
        let mut busy = HashMap::new();
        for log in lock(&self.logs).values().filter(|l| l.done.is_none()) {
            if let Some(h) = &log.host {
                *busy.entry(h.clone()).or_insert(0) += 1;
            }
        }
        busy
    }

    /// The builds running on `host`.
    fn running_on(&self, host: &str) -> Vec<Uuid> {
        lock(&self.logs)
            .iter()
            .filter(|(_, l)| l.done.is_none() && l.host.as_deref() == Some(host))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the build runs and, if so, on which host.
    fn running(&self, id: Uuid) -> Option<(bool, Option<String>)> {
        lock(&self.logs)
            .get(&id)
            .map(|l| (l.done.is_none(), l.host.clone()))
    }
}

/// What a build that succeeded led to.
#[derive(Debug)]
pub(crate) enum Built {
    /// Its release (of the app) waits for its release phase, whose output goes on in the
    /// build's.
    Pending(Box<(App, Release)>),
    /// Its release (of the app with this id) is live.
    Live(Uuid),
}

/// Where a build ended up (see [`Builds::outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployed {
    /// Its release, this version, is live.
    Released(u32),
    /// It built a slug that made no release.
    Built,
    BuildFailed,
    /// Its release, this version, failed in its release phase.
    ReleaseFailed(u32),
    /// Still building, or still in its release phase.
    Pending,
}

/// Builds: where they run, their output, and what a finished one becomes.
pub struct Builds {
    store: Arc<dyn Store>,
    cluster: Arc<Cluster>,
    blobs: Arc<dyn Blobs>,
    logs: Arc<LogFeed>,
    counters: Arc<Counters>,
    output: BuildOutputs,
}

impl std::fmt::Debug for Builds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builds").finish_non_exhaustive()
    }
}

impl Builds {
    pub fn new(
        store: Arc<dyn Store>,
        cluster: Arc<Cluster>,
        blobs: Arc<dyn Blobs>,
        logs: Arc<LogFeed>,
        counters: Arc<Counters>,
    ) -> Builds {
        Builds {
            store,
            cluster,
            blobs,
            logs,
            counters,
            output: BuildOutputs::default(),
        }
    }

    /// Adds a line to a build's output (a running build's only).
    pub(crate) fn push(&self, id: Uuid, line: String) {
        self.output.push(id, line);
    }

    /// Ends a build's output: its readers get the rest and then the end.
    pub(crate) fn close(&self, id: Uuid) {
        self.output.close(id);
    }

    /// Lines from number `from` on; waits for new ones while the build runs. A reader whose
    /// lines were evicted gets a line saying how many it missed first.
    pub async fn read(&self, id: Uuid, from: usize) -> Output {
        self.output.read(id, from).await
    }
    /// The build's output as it comes, batch by batch, ending when the build (and its
    /// release phase) does: what `builds/{id}/output` streams and a `git push` relays.
    pub fn lines(self: Arc<Self>, id: Uuid) -> impl futures::Stream<Item = Vec<String>> {
        futures::stream::unfold((self, 0usize), move |(builds, from)| async move {
            match builds.read(id, from).await {
                Output::Lines { lines, next } => Some((lines, (builds, next))),
                Output::Done | Output::Unknown => None,
            }
        })
    }

    /// What an ended build of `app` led to, as `manifold deploy` reports it: its release is
    /// live, or the build failed, or its release phase did. The store may record the end a
    /// moment after the output closes: this waits (up to `patience`) while either pends.
    pub async fn outcome(
        &self,
        app: &App,
        id: Uuid,
        patience: Duration,
    ) -> Result<Deployed, StoreError> {
        let deadline = Instant::now() + patience;
        loop {
            let build = self.store.build(id).await?;
            let outcome = match (build.status, build.release_version) {
                (BuildStatus::Failed, _) => Deployed::BuildFailed,
                (BuildStatus::Succeeded, None) => Deployed::Built,
                (BuildStatus::Succeeded, Some(v)) => {
                    match self.store.release(&app.name, v).await?.status {
                        ReleaseStatus::Succeeded => Deployed::Released(v),
                        ReleaseStatus::Failed => Deployed::ReleaseFailed(v),
                        ReleaseStatus::Pending => Deployed::Pending,
                    }
                }
                (BuildStatus::Pending, _) => Deployed::Pending,
            };
            if outcome != Deployed::Pending || Instant::now() >= deadline {
                return Ok(outcome);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts a build of an uploaded source on a connected host with the app's stack; its
    /// output starts with `origin`, which says where its buildpacks came from. Without such
    /// a host the build fails at once, with the reason in its output.
    pub async fn start(
        &self,
        app: &App,
        source: &Blob,
        buildpacks: Vec<String>,
        origin: String,
        user: &str,
    ) -> Result<Build, StoreError> {
        let now = OffsetDateTime::now_utc();
        let build = Build {
            id: Uuid::new_v4(),
            app_id: app.id,
            status: BuildStatus::Pending,
            source_sha256: source.sha256.clone(),
            slug_id: None,
            release_version: None,
            host_id: None,
            user: user.to_string(),
            created_at: now,
            updated_at: now,
        };
        self.store.create_build(&build).await?;
        let host = self.build_host(&app.stack).await?;
        self.output.open(build.id, host.clone());
        self.output.push(build.id, origin);
        let Some(host) = host else {
            self.output.push(
                build.id,
                format!(
                    "-----> Build failed: no connected host has the {} stack (see `manifold hosts`)",
                    app.stack
                ),
            );
            self.output.close(build.id);
            let (build, _) = self
                .store
                .finish_build(build.id, BuildOutcome::Failed, user)
                .await?;
            return Ok(build);
        };
        self.store.set_build_host(build.id, &host).await?;
        self.output
            .push(build.id, format!("-----> Building on {host}"));
        let sent = self.cluster.send(
            &host,
            scheduler_message::Kind::Build(BuildRequest {
                build_id: build.id.to_string(),
                app: app.name.clone(),
                stack: app.stack.clone(),
                source_sha256: source.sha256.clone(),
                env: app.config.clone().into_iter().collect(),
                buildpacks,
            }),
        );
        if !sent {
            self.fail_build(build.id, "the build host disconnected")
                .await;
        }
        self.store.build(build.id).await
    }

    /// A connected host with the stack, the one running the fewest builds.
    async fn build_host(&self, stack: &str) -> Result<Option<String>, StoreError> {
        let busy = self.output.busy();
        let mut candidates: Vec<(usize, String)> = self
            .store
            .hosts()
            .await?
            .into_iter()
            .filter(|h| {
                h.stacks.iter().any(|s| s == stack)
                    && !h.draining
                    && self.cluster.liveness(&h.id) == Liveness::Connected
            })
            .map(|h| (busy.get(&h.id).copied().unwrap_or(0), h.id))
            .collect();
        candidates.sort();
        Ok(candidates.into_iter().next().map(|(_, id)| id))
    }

    async fn fail_build(&self, id: Uuid, why: &str) {
        self.output.push(id, format!("-----> Build failed: {why}"));
        self.output.close(id);
        if let Err(err) = self.store.finish_build(id, BuildOutcome::Failed, "").await {
            tracing::warn!("cannot record the failure of build {id}: {err}");
        }
    }

    /// Fails every running build of a host whose link ended.
    pub(crate) async fn host_failed(&self, host: &str) {
        for id in self.output.running_on(host) {
            self.fail_build(id, &format!("host {host} disconnected during the build"))
                .await;
        }
    }

    /// An agent's build output or result; what the build led to once it succeeded.
    pub(crate) async fn event(&self, host: &str, event: BuildEvent) -> Option<Built> {
        let id = event.build_id.parse::<Uuid>().ok()?;
        match self.output.running(id) {
            Some((true, Some(given))) if given == host => {}
            Some((_, Some(given))) if given != host => {
                // Only the host a build was sent to speaks for it.
                Counters::add(&self.counters.refused_reports, 1);
                tracing::warn!(
                    "host {host}: refused its event for build {id}: that build was sent to host {given}"
                );
                return None;
            }
            // Unknown, or ended already (a late line after a failure).
            _ => return None,
        }
        match event.kind {
            Some(build_event::Kind::Output(line)) => {
                self.output.push(id, line);
                None
            }
            Some(build_event::Kind::Finished(f)) => {
                if f.status != 0 {
                    let why = if f.error.is_empty() {
                        format!("the build exited with status {}", f.status)
                    } else {
                        f.error
                    };
                    self.fail_build(id, &why).await;
                    return None;
                }
                match self.build_succeeded(id, &f.slug_sha256, &f.slug_json).await {
                    // The output goes on with the release phase's, which closes it.
                    Ok((app, release)) if release.status == ReleaseStatus::Pending => {
                        Some(Built::Pending(Box::new((app, release))))
                    }
                    Ok((app, release)) => {
                        self.output
                            .push(id, format!("-----> Released v{}", release.version));
                        self.output.close(id);
                        Some(Built::Live(app.id))
                    }
                    Err(why) => {
                        self.fail_build(id, &why).await;
                        None
                    }
                }
            }
            None => None,
        }
    }

    /// A build's `slug.json`, validated as the untrusted input it is (it was written inside
    /// the build dyno, where the app's code runs, and relayed by an agent): process types
    /// as a Procfile allows them, the app's stack, bounded sizes.
    async fn slug_metadata(&self, build: &Build, json: &str) -> Result<SlugMetadata, String> {
        if json.len() as u64 > metadata::MAX_METADATA_BYTES {
            return Err(format!(
                "invalid slug.json: longer than {} bytes",
                metadata::MAX_METADATA_BYTES
            ));
        }
        let app = self
            .store
            .apps()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|a| a.id == build.app_id)
            .ok_or("the app was deleted during the build")?;
        metadata::parse(json.as_bytes(), &app.stack).map_err(|e| {
            let mut text = format!("invalid slug.json: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })
    }

    /// Stores the slug and its release; on an app's first release, runs one web dyno
    /// (as Heroku does when the Procfile has `web`).
    async fn build_succeeded(
        &self,
        id: Uuid,
        sha256: &str,
        json: &str,
    ) -> Result<(App, Release), String> {
        let build = self.store.build(id).await.map_err(|e| e.to_string())?;
        let meta = self.slug_metadata(&build, json).await?;
        let size = self
            .blobs
            .stat(sha256)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the slug {sha256} was not uploaded"))?
            .size;
        let slug = Slug {
            id: Uuid::new_v4(),
            app_id: build.app_id,
            sha256: sha256.to_string(),
            size,
            process_types: meta.process_types.clone(),
            stack: meta.stack,
            buildpacks: meta.buildpacks.into_iter().map(|b| b.name).collect(),
            created_at: OffsetDateTime::now_utc(),
        };
        let description = format!(
            "Deploy {}",
            &build.source_sha256[..8.min(build.source_sha256.len())]
        );
        let (build, release) = self
            .store
            .finish_build(
                id,
                BuildOutcome::Succeeded { slug, description },
                &build.user,
            )
            .await
            .map_err(|e| e.to_string())?;
        let release = release.ok_or("the store made no release")?;
        let app = self
            .store
            .apps()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|a| a.id == build.app_id)
            .ok_or("the app was deleted during the build")?;
        self.logs.log_release(&app.name, &release);
        let formation = self
            .store
            .formation(&app.name)
            .await
            .map_err(|e| e.to_string())?;
        let updates = new_process_types(&formation, &meta.process_types);
        if !updates.is_empty() {
            self.store
                .update_formation(&app.name, &updates)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok((app, release))
    }
}

/// The formation rows a new slug's process types add to an app's `formation`: each type
/// it lacks (not `release`) at 0, except one web dyno for an app with no formation yet
/// (as Heroku does on an app's first release when the Procfile has `web`).
pub(crate) fn new_process_types(
    formation: &[crate::model::Formation],
    process_types: &std::collections::BTreeMap<String, String>,
) -> Vec<FormationUpdate> {
    process_types
        .keys()
        .filter(|t| {
            *t != manifold_dyno::RELEASE && !formation.iter().any(|f| &f.process_type == *t)
        })
        .map(|t| FormationUpdate {
            process_type: t.clone(),
            quantity: Some(u32::from(formation.is_empty() && manifold_dyno::is_web(t))),
            size: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(output: Output) -> (Vec<String>, usize) {
        match output {
            Output::Lines { lines, next } => (lines, next),
            other => panic!("expected lines, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_long_build_keeps_its_last_lines_and_tells_a_late_reader() {
        let builds = BuildOutputs::default();
        let id = Uuid::new_v4();
        builds.open(id, None);
        for i in 0..KEPT_LINES + 25 {
            builds.push(id, format!("line {i}"));
        }
        let (got, next) = lines(builds.read(id, 0).await);
        assert_eq!(next, KEPT_LINES + 25);
        assert_eq!(got.len(), KEPT_LINES + 1, "the notice and the kept lines");
        assert!(got[0].contains("25 lines of output not kept"), "{}", got[0]);
        assert_eq!(got[1], "line 25");
        assert_eq!(got[KEPT_LINES], format!("line {}", KEPT_LINES + 24));
        // A reader that kept up gets exactly what follows.
        builds.push(id, "last".into());
        assert_eq!(
            lines(builds.read(id, next).await),
            (vec!["last".to_string()], next + 1)
        );
    }

    #[tokio::test]
    async fn a_build_keeps_at_most_its_bytes_and_cuts_long_lines() {
        let builds = BuildOutputs::default();
        let id = Uuid::new_v4();
        builds.open(id, None);
        let long = "é".repeat(LINE_BYTES); // 2 bytes each: cut on a char boundary
        for _ in 0..(KEPT_BYTES / LINE_BYTES) + 10 {
            builds.push(id, long.clone());
        }
        let logs = lock(&builds.logs);
        let log = logs.get(&id).expect("open");
        assert!(log.bytes <= KEPT_BYTES, "{} bytes kept", log.bytes);
        assert_eq!(log.bytes, log.lines.iter().map(String::len).sum::<usize>());
        assert!(log.lines.iter().all(|l| l.len() == LINE_BYTES));
        assert!(log.first >= 10);
    }

    #[tokio::test]
    async fn finished_builds_output_is_evicted_after_a_while_running_ones_never() {
        let builds = BuildOutputs::default();
        let (done, running) = (Uuid::new_v4(), Uuid::new_v4());
        builds.open(done, None);
        builds.open(running, None);
        builds.push(done, "built".into());
        builds.close(done);
        let now = Instant::now();
        builds.evict(now);
        assert_eq!(
            lines(builds.read(done, 0).await).0,
            vec!["built".to_string()],
            "kept for a while"
        );
        assert_eq!(builds.read(done, 1).await, Output::Done);
        builds.evict(now + KEPT_AFTER_DONE + Duration::from_secs(1));
        assert_eq!(builds.read(done, 0).await, Output::Unknown);
        builds.push(running, "still going".into());
        assert_eq!(
            lines(builds.read(running, 0).await).0,
            vec!["still going".to_string()]
        );
    }
}
