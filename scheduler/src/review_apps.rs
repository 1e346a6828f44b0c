//! Review apps: a temporary app of a pipeline made from one branch's source, set up as
//! its app.json says, and destroyed by the user or when its time is up.
//!
//! Making one (the API has checked the request and stored the source): read app.json
//! from the source, work out the config vars (the pipeline's review config vars, then
//! app.json's `env`: a required var neither provides stops it here, before anything is
//! created), create the app coupled at stage review in one store transaction, provision
//! app.json's add-ons, start its build, and then [`follow`] the build: once its release is
//! live, scale app.json's formation, and once the add-ons are available (their URLs set, the
//! release that set them live too) run `scripts.postdeploy` once in a one-off dyno (its
//! output in the app's log), so that a postdeploy seeding the database finds it. The leader
//! destroys review apps, with their add-ons, whose time is up ([`expire_forever`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use manifold_appjson::AppJson;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::addons::model::AddonState;
use crate::blobs::Blobs;
use crate::core::Core;
use crate::model::{BuildStatus, FormationUpdate, Release, ReleaseStatus};
use crate::oneoff::{OneOff, OneOffError};

/// How often the leader looks for review apps whose time is up.
const EXPIRY_CHECK: Duration = Duration::from_secs(30);
/// How long [`follow`] waits for a build and then its release phase.
const FOLLOW_FOR: Duration = Duration::from_secs(3600);
/// Between two looks at a build or release still pending.
const POLL: Duration = Duration::from_millis(500);

/// The bytes of `app.json` at the top of a stored source (a tar.gz), if it has one: the
/// archive is read as it streams from the blob store, in a blocking task, and no further
/// than that file. At most [`manifold_appjson::MAX_SIZE`] + 1 bytes are kept (enough for
/// the parser to refuse an oversize file).
pub async fn app_json_in(blobs: &dyn Blobs, sha256: &str) -> Result<Option<Vec<u8>>, String> {
    let reader = blobs
        .open(sha256)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the source {sha256} is not stored"))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let find = tokio::task::spawn_blocking(move || {
        let stream = ChannelReader {
            rx: &mut rx,
            chunk: Bytes::new(),
        };
        find_app_json(stream)
    });
    let mut body = reader.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("cannot read the source: {e}"))?;
        // A closed channel: the reader found app.json (or gave up) and needs no more.
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    find.await.map_err(|e| e.to_string())?
}

/// The blocking side of [`app_json_in`]: `std::io::Read` over the chunks sent.
struct ChannelReader<'a> {
    rx: &'a mut tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl std::io::Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.chunk = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

fn find_app_json(stream: impl std::io::Read) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read;
    let bad = |e: std::io::Error| format!("the source is not a readable tar.gz: {e}");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(stream));
    for entry in archive.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let top = path.strip_prefix(".").unwrap_or(&path);
        if top == std::path::Path::new("app.json") && entry.header().entry_type().is_file() {
            let mut bytes = Vec::new();
            entry
                .take(manifold_appjson::MAX_SIZE as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(bad)?;
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// After a review app's build: once its release is live, its formation, then its
/// postdeploy, once. What goes wrong is said in the app's log (no one waits on this).
pub async fn follow(core: Arc<Core>, app: String, build: Uuid, manifest: AppJson) {
    let say = |line: String| core.logs.log_api(&app, line);
    if !wait_for_release(&core, &app, build).await {
        say("review app: the build did not release: no formation or postdeploy".into());
        return;
    }
    let updates: Vec<FormationUpdate> = manifest
        .formation
        .iter()
        .map(|(kind, f)| FormationUpdate {
            process_type: kind.clone(),
            quantity: f.quantity,
            size: f.size.clone(),
        })
        .collect();
    if !updates.is_empty() {
        if let Err(err) = core.scale(&app, &updates, "app.json").await {
            say(format!(
                "review app: app.json's formation was refused: {err}"
            ));
        }
    }
    let Some(script) = manifest.postdeploy else {
        return;
    };
    let Some(release) = settled(&core, &app).await else {
        say(format!(
            "review app: its add-ons or its latest release did not come up: postdeploy `{}` not run",
            script.command
        ));
        return;
    };
    let started = async {
        let a = core.store.app(&app).await.map_err(OneOffError::from)?;
        let slug = core.store.slug(release.slug_id).await?;
        let spec = OneOff {
            process_type: manifold_dyno::RUN,
            command: script.command.clone(),
            size: script.size.clone(),
            env: Default::default(),
            attach: None,
        };
        core.start_one_off(&a, &release, &slug, spec).await
    };
    match started.await {
        Ok(dyno) => say(format!(
            "review app: postdeploy `{}` runs in {}",
            script.command, dyno.name
        )),
        Err(err) => say(format!(
            "review app: postdeploy `{}` could not start: {err}",
            script.command
        )),
    }
}

/// Whether the release `build` made went live; false when the build or its release phase
/// failed, or took longer than [`FOLLOW_FOR`].
async fn wait_for_release(core: &Core, app: &str, build: Uuid) -> bool {
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let build = loop {
        let Ok(b) = core.store.build(build).await else {
            return false;
        };
        if b.status != BuildStatus::Pending {
            break b;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    };
    let Some(version) = build.release_version else {
        return false;
    };
    loop {
        match core.store.release(app, version).await.map(|r| r.status) {
            Ok(ReleaseStatus::Succeeded) => return true,
            Ok(ReleaseStatus::Pending) if tokio::time::Instant::now() <= deadline => {
                tokio::time::sleep(POLL).await
            }
            _ => return false,
        }
    }
}

/// The app's current release once every add-on of the app is available and that release
/// (the one setting their URLs, when they came up after the build) is live; `None` when an
/// add-on crashed, a release failed, or it took longer than [`FOLLOW_FOR`].
async fn settled(core: &Core, app: &str) -> Option<Release> {
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    loop {
        let addons = core.store.addons(Some(app)).await.ok()?;
        if addons.iter().any(|a| a.state == AddonState::Crashed) {
            return None;
        }
        if addons.iter().all(|a| a.state == AddonState::Available) {
            let newest = core.store.releases(app).await.ok()?;
            let release = newest.into_iter().max_by_key(|r| r.version)?;
            match release.status {
                ReleaseStatus::Succeeded => return Some(release),
                ReleaseStatus::Failed => return None,
                ReleaseStatus::Pending => {}
            }
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Destroys the review apps whose time is up (as `reviewapps:destroy` does).
pub async fn expire(
    core: &Core,
    now: OffsetDateTime,
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut gone = Vec::new();
    for review in core.store.review_apps(None).await? {
        if review.expires_at.is_some_and(|t| t <= now) {
            tracing::info!("review app {} expired: destroying it", review.app);
            core.delete_app(&review.app).await?;
            gone.push(review.app);
        }
    }
    Ok(gone)
}

/// The leader's duty: [`expire`] every [`EXPIRY_CHECK`].
pub async fn expire_forever(core: Arc<Core>) {
    let mut every = tokio::time::interval(EXPIRY_CHECK);
    loop {
        every.tick().await;
        if let Err(err) = expire(&core, OffsetDateTime::now_utc()).await {
            tracing::warn!("expiring review apps: {err}");
        }
    }
}
