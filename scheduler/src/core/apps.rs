//! What users ask of the cluster through the API, as flows across the services: each
//! stores a change, says so in the app's log, and pokes the reconciler (or tells the
//! hosts itself where it must not wait for it).

use std::collections::BTreeMap;

use manifold_dyno::DynoSize;
use uuid::Uuid;

use super::Core;
use crate::metrics::Counters;
use crate::model::{App, Dyno, Formation, FormationUpdate, Host, Release, ReleaseStatus, Slug};
use crate::oneoff::{OneOff, OneOffError};
use crate::planner::{Rejection, Request as PlaceRequest};
use crate::reconciler::{self, size_memory};
use crate::store::{DynoChanges, Promoted, StoreError};

/// Why a scale was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    #[error("cannot run {count} {size} dyno(s) of {app}: {rejection} (nothing was changed)")]
    NoRoom {
        app: String,
        count: usize,
        size: String,
        rejection: Rejection,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Core {
    /// Sets the quantity and size of process types (`ps:scale`) once the reconciler's plan
    /// says every dyno it asks for can be placed now; otherwise nothing changes.
    pub async fn scale(
        &self,
        app: &str,
        updates: &[FormationUpdate],
        user: &str,
    ) -> Result<Vec<Formation>, ScaleError> {
        let plan = self.check_formation(app, updates).await?;
        if let Some(u) = plan.unplaced.first() {
            return Err(ScaleError::NoRoom {
                app: app.to_string(),
                count: plan.unplaced.len(),
                size: u.size.clone(),
                rejection: u.rejection.clone(),
            });
        }
        let formation = self.store.update_formation(app, updates).await?;
        let scaled: Vec<String> = formation
            .iter()
            .filter(|f| updates.iter().any(|u| u.process_type == f.process_type))
            .map(|f| {
                let size = f
                    .size
                    .parse::<DynoSize>()
                    .map_or(f.size.as_str(), |s| s.heroku_name());
                format!("{}@{}:{size}", f.process_type, f.quantity)
            })
            .collect();
        self.logs
            .log_api(app, format!("Scaled to {} by {user}", scaled.join(" ")));
        self.poke_apps(formation.iter().map(|f| f.app_id));
        Ok(formation)
    }

    /// Changes an app's config vars (`None` removes one), described as Heroku does; the
    /// new release goes live at once, or after its release phase. `None` when nothing
    /// would change.
    pub async fn set_config(
        &self,
        current: &App,
        changes: &BTreeMap<String, Option<String>>,
        user: &str,
    ) -> Result<Option<(App, Option<Release>)>, StoreError> {
        let set: Vec<&str> = changes
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.as_str())
            .collect();
        let removed: Vec<&str> = changes
            .iter()
            .filter(|(k, v)| v.is_none() && current.config.contains_key(*k))
            .map(|(k, _)| k.as_str())
            .collect();
        let mut parts = Vec::new();
        if !set.is_empty() {
            parts.push(format!("Set {} config vars", set.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(format!("Remove {} config vars", removed.join(", ")));
        }
        if parts.is_empty() {
            return Ok(None);
        }
        self.change_config(&current.name, changes, &parts.join("; "), user)
            .await
            .map(Some)
    }

    /// Applies config changes described as `description` (a release, if the app has one,
    /// live at once or after its release phase): what `set_config` and attaching an add-on
    /// share.
    pub(crate) async fn change_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        description: &str,
        user: &str,
    ) -> Result<(App, Option<Release>), StoreError> {
        let (app, release) = self
            .store
            .update_config(app, changes, description, user)
            .await?;
        match &release {
            Some(r) => self.logs.log_release(&app.name, r),
            None => self
                .logs
                .log_api(&app.name, format!("{description} by {user}")),
        }
        if let Some(r) = release
            .as_ref()
            .filter(|r| r.status == ReleaseStatus::Pending)
        {
            self.start_release_phase(&app, r, None).await;
        }
        self.poke_apps([app.id]);
        Ok((app, release))
    }

    /// Makes a copy of an earlier release current (without its release phase, as on
    /// Heroku).
    pub async fn rollback(
        &self,
        app: &str,
        version: u32,
        user: &str,
    ) -> Result<Release, StoreError> {
        let release = self.store.rollback(app, version, user).await?;
        self.logs.log_release(app, &release);
        self.poke_apps([release.app_id]);
        Ok(release)
    }

    /// Promotes `source`'s current slug down its pipeline (see [`crate::store::Store::promote`]):
    /// each target's new release goes live at once, or after its own release phase; the
    /// slug's new process types join its formation as after a deploy.
    pub async fn promote(
        &self,
        pipeline: Option<&str>,
        source: &str,
        targets: &[String],
        user: &str,
    ) -> Result<Promoted, StoreError> {
        let promoted = self.store.promote(pipeline, source, targets, user).await?;
        for (app, release) in &promoted.targets {
            self.logs.log_release(&app.name, release);
            // A target's first release starts its web dyno, as a first deploy does.
            let slug = self.store.slug(release.slug_id).await?;
            let formation = self.store.formation(&app.name).await?;
            let updates = crate::builds::new_process_types(&formation, &slug.process_types);
            if !updates.is_empty() {
                self.store.update_formation(&app.name, &updates).await?;
            }
            if release.status == ReleaseStatus::Pending {
                self.start_release_phase(app, release, None).await;
            }
        }
        self.poke_apps(promoted.targets.iter().map(|(app, _)| app.id));
        Ok(promoted)
    }

    /// Turns an app's feature (`preboot`) on or off; the reconciler follows it.
    pub async fn set_feature(
        &self,
        app: &str,
        feature: &str,
        enabled: bool,
    ) -> Result<App, StoreError> {
        let app = self.store.set_feature(app, feature, enabled).await?;
        self.poke_apps([app.id]);
        Ok(app)
    }

    /// Drains a host (its dynos move elsewhere, nothing new goes there) or undrains it.
    pub async fn set_draining(&self, host: &str, draining: bool) -> Result<Host, StoreError> {
        let host = self.store.set_draining(host, draining).await?;
        // The pass sees the host's draining changed and plans the apps on it.
        self.poke.poke_host(&host.id);
        Ok(host)
    }

    /// Places a one-off dyno of `release` on a host with room and tells that host.
    /// `slug` is the release's (the caller has read it already). It is placed here, at
    /// once, so that `manifold run` hears "no room" as a 422 rather than waiting.
    pub(crate) async fn start_one_off(
        &self,
        app: &App,
        release: &Release,
        slug: &Slug,
        spec: OneOff,
    ) -> Result<Dyno, OneOffError> {
        let size = match &spec.size {
            Some(size) => size.clone(),
            None => self
                .store
                .formation(&app.name)
                .await?
                .into_iter()
                .find(|f| f.process_type == "web")
                .map_or_else(|| crate::model::DEFAULT_SIZE.to_string(), |f| f.size),
        };
        let mut view = self.reconciling.lock().await;
        let (hosts, _) = self.look(&mut view, false).await?;
        let host = reconciler::place_one_off(
            &hosts,
            view.room(),
            view.dynos_of_app(app.id),
            &PlaceRequest {
                app: app.id.to_string(),
                process_type: spec.process_type.to_string(),
                stack: slug.stack.clone(),
                memory_bytes: size_memory(&size),
            },
        )
        .map_err(|rejection| OneOffError::NoRoom {
            size: size.clone(),
            rejection,
        })?;
        let dyno = crate::oneoff::new_dyno(
            app,
            release,
            view.dynos_of_app(app.id),
            spec,
            size,
            host.clone(),
        );
        self.store
            .apply_dyno_changes(&DynoChanges {
                create: vec![dyno.clone()],
                ..DynoChanges::default()
            })
            .await?;
        view.created(dyno.clone(), &self.settings.cycling);
        drop(view);
        Counters::add(&self.counters.placements, 1);
        tracing::info!("placing {} ({}) on {host}", dyno.name, dyno.id);
        self.cluster.push_assignments([&host]).await?;
        Ok(dyno)
    }

    /// Runs a pending release's release phase; `build` also gets its output.
    pub(crate) async fn start_release_phase(
        &self,
        app: &App,
        release: &Release,
        build: Option<Uuid>,
    ) {
        let Some((slug, spec)) = self.releases.command(app, release).await else {
            return;
        };
        match self.start_one_off(app, release, &slug, spec).await {
            Ok(dyno) => self.releases.placed(&dyno, build),
            Err(err) => {
                self.releases
                    .not_placed(app, release, build, &err.to_string())
                    .await;
            }
        }
    }

    /// Forgets an app: its dynos (their hosts are told first: their sets change, their
    /// generations move), its record, its logs and its route.
    pub(crate) async fn delete_app(&self, name: &str) -> Result<(), StoreError> {
        // Its add-ons go with it (their data too), as on Heroku.
        self.destroy_owned_addons(name).await?;
        let dynos = self.store.dynos(Some(name)).await?;
        let changed = self
            .store
            .apply_dyno_changes(&DynoChanges {
                delete: dynos.iter().map(|d| d.id.clone()).collect(),
                ..DynoChanges::default()
            })
            .await?;
        let app = self.store.delete_app(name).await?;
        self.poke_apps([app.id]);
        self.logs.remove_app(name);
        self.routing.remove_app(name);
        self.cluster.push_assignments(changed.keys()).await?;
        Ok(())
    }
}
