//! The release phase (Heroku's): when a new release's slug has a Procfile `release` type,
//! the release is stored `pending` and its command runs in a one-off dyno `release.N`
//! first. Exit 0 makes the release `succeeded`, and so current: the reconciler then rolls
//! the formation onto it. Anything else (a non-zero exit, a kill, no room, a lost host)
//! makes it `failed`, and the current release keeps serving.
//!
//! ```text
//! build or config change ──▶ release vN pending ──▶ release.N (one-off, output → log
//!                                                    and the deploy's build output)
//!     exit 0 ──▶ vN succeeded: current; formation rolls      other ──▶ vN failed
//! ```
//!
//! Rollbacks skip it, as on Heroku. The release's state lives in the store (a scheduler
//! restart finds it pending and follows its dyno); a pending release whose dyno is gone
//! (its host was lost, or the scheduler died before placing it) fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::builds::Builds;
use crate::logs::LogFeed;
use crate::model::{App, Dyno, DynoState, Release, ReleaseStatus, Slug};
use crate::oneoff::OneOff;
use crate::store::Store;
use crate::sync::{lock, Poke};

/// How old a pending release must be before a missing release dyno means it failed (the
/// dyno is placed just after the release is stored).
const PLACE_WINDOW: Duration = Duration::from_secs(30);

/// The release phases running: where their output goes and which are being decided.
pub struct ReleasePhase {
    store: Arc<dyn Store>,
    logs: Arc<LogFeed>,
    builds: Arc<Builds>,
    poke: Poke,
    /// Release dynos whose output also goes to the build that made their release.
    outputs: Mutex<HashMap<String, Uuid>>,
    /// Releases whose release dyno ended and whose outcome is being decided.
    settling: Mutex<HashSet<(Uuid, u32)>>,
}

impl std::fmt::Debug for ReleasePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleasePhase").finish_non_exhaustive()
    }
}

impl ReleasePhase {
    pub fn new(
        store: Arc<dyn Store>,
        logs: Arc<LogFeed>,
        builds: Arc<Builds>,
        poke: Poke,
    ) -> ReleasePhase {
        ReleasePhase {
            store,
            logs,
            builds,
            poke,
            outputs: Mutex::new(HashMap::new()),
            settling: Mutex::new(HashSet::new()),
        }
    }

    /// What a pending release's release dyno is to run (its slug, to place it by its
    /// stack), or `None` when it has no release phase, or has failed already because its
    /// slug cannot be read.
    pub(crate) async fn command(&self, app: &App, release: &Release) -> Option<(Slug, OneOff)> {
        let slug = match self.store.slug(release.slug_id).await {
            Ok(slug) => slug,
            Err(err) => {
                self.release_failed(app, release, &format!("its slug cannot be read: {err}"))
                    .await;
                return None;
            }
        };
        let command = slug.process_types.get(manifold_dyno::RELEASE).cloned()?;
        self.logs.log_api(
            &app.name,
            format!(
                "Running release v{} commands by {}",
                release.version, release.user
            ),
        );
        let spec = OneOff {
            process_type: manifold_dyno::RELEASE,
            command,
            size: None,
            env: Default::default(),
            attach: None,
        };
        Some((slug, spec))
    }

    /// The release dyno is placed; `build` also gets its output.
    pub(crate) fn placed(&self, dyno: &Dyno, build: Option<Uuid>) {
        if let Some(build) = build {
            self.builds.push(
                build,
                format!(
                    "-----> Running release command `{}` in {}",
                    dyno.command, dyno.name
                ),
            );
            lock(&self.outputs).insert(dyno.id.clone(), build);
        }
    }

    /// The release dyno could not be placed: the release failed.
    pub(crate) async fn not_placed(
        &self,
        app: &App,
        release: &Release,
        build: Option<Uuid>,
        why: &str,
    ) {
        if let Some(build) = build {
            self.builds
                .push(build, format!("-----> Release phase failed: {why}"));
            self.builds.close(build);
        }
        self.release_failed(app, release, why).await;
    }

    /// The build a release dyno's output also goes to.
    pub(crate) fn output_of(&self, dyno_id: &str) -> Option<Uuid> {
        lock(&self.outputs).get(dyno_id).copied()
    }

    /// A release dyno ended: its exit status decides its release. Its agent sent the dyno's
    /// last lines before this state (on the same stream), so the deploy's output has them.
    /// Only a pending release changes, so a later report of the same end (`down`) is a no-op.
    pub(crate) async fn dyno_ended(&self, dyno: &Dyno) {
        // Marked while decided, so that the reconciler (which may forget the ended dyno
        // meanwhile) does not take the release for one whose dyno was lost.
        let key = (dyno.app_id, dyno.release_version);
        lock(&self.settling).insert(key);
        self.settle_release(dyno).await;
        lock(&self.settling).remove(&key);
    }

    async fn settle_release(&self, dyno: &Dyno) {
        let build = lock(&self.outputs).remove(&dyno.id);
        let apps = match self.store.apps().await {
            Ok(apps) => apps,
            Err(err) => {
                tracing::warn!("release phase of {}: {err}", dyno.id);
                return;
            }
        };
        let Some(app) = apps.into_iter().find(|a| a.id == dyno.app_id) else {
            return;
        };
        let Ok(release) = self.store.release(&app.name, dyno.release_version).await else {
            return;
        };
        let succeeded = dyno.state == DynoState::Complete && dyno.exit_status == Some(0);
        if succeeded {
            match self
                .store
                .finish_release(app.id, release.version, ReleaseStatus::Succeeded)
                .await
            {
                Ok(Some(_)) => {
                    self.logs.log_api(
                        &app.name,
                        format!(
                            "Release v{} command succeeded: v{} is live",
                            release.version, release.version
                        ),
                    );
                    if let Some(build) = build {
                        self.builds
                            .push(build, format!("-----> Released v{}", release.version));
                        self.builds.close(build);
                    }
                    self.poke.poke_apps([app.id]);
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(
                    "cannot record release v{} of {}: {err}",
                    release.version,
                    app.name
                ),
            }
            return;
        }
        let why = match dyno.exit_status {
            Some(status) => format!("the release command exited with status {status}"),
            None if !dyno.reason.is_empty() => dyno.reason.clone(),
            None => "the release command did not finish".to_string(),
        };
        if let Some(build) = build {
            self.builds
                .push(build, format!("-----> Release phase failed: {why}"));
            self.builds.close(build);
        }
        self.release_failed(&app, &release, &why).await;
    }

    /// Marks a pending release failed and says so in the app's log.
    async fn release_failed(&self, app: &App, release: &Release, why: &str) {
        match self
            .store
            .finish_release(app.id, release.version, ReleaseStatus::Failed)
            .await
        {
            Ok(Some(_)) => {
                let current = match self.store.current_release(&app.name).await {
                    Ok(Some(r)) => format!("v{} keeps serving", r.version),
                    _ => "no release is live".to_string(),
                };
                self.logs.log_api(
                    &app.name,
                    format!(
                        "Release v{} command failed by {}: {why}; {current}",
                        release.version, release.user
                    ),
                );
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(
                "cannot record release v{} of {}: {err}",
                release.version,
                app.name
            ),
        }
    }

    /// Fails pending releases whose release dyno is gone (its host was lost, or the
    /// scheduler stopped between storing the release and placing its dyno). `app` gives
    /// an app by id with its dynos: only pending releases' apps are looked at, not every
    /// dyno of the cluster.
    pub(crate) async fn orphaned<'a>(&self, app: impl Fn(Uuid) -> Option<(&'a App, &'a [Dyno])>) {
        let pending = match self.store.pending_releases().await {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!("cannot read pending releases: {err}");
                return;
            }
        };
        if pending.is_empty() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        for release in pending {
            let Some((app, own)) = app(release.app_id) else {
                continue;
            };
            let running = own.iter().any(|d| {
                d.process_type == manifold_dyno::RELEASE && d.release_version == release.version
            }) || lock(&self.settling).contains(&(release.app_id, release.version));
            if running || now - release.created_at < PLACE_WINDOW {
                continue;
            }
            self.release_failed(app, &release, "its release dyno was lost")
                .await;
        }
    }
}
