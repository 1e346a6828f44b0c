//! The embedded store: one SQLite file in WAL mode.
//!
//! Every [`Store`] method runs in one transaction. Methods that write start it with
//! `BEGIN IMMEDIATE`: a deferred transaction that reads before it writes can fail with
//! `SQLITE_BUSY` when another writer commits in between (the busy timeout cannot help a
//! stale snapshot), whereas an immediate one takes the write lock up front and simply waits
//! its turn. Methods that only read use a plain (deferred) transaction, which in WAL mode
//! reads one consistent snapshot without blocking writers.
//!
//! Encoding: uuids as hyphenated TEXT, timestamps as RFC 3339 TEXT in UTC with nine
//! fractional digits (so they sort lexically as time), maps and lists as JSON TEXT, enums
//! as their lowercase names. Integers the model keeps unsigned are checked on the way in
//! and out rather than cast, so a value SQLite cannot hold is an error, not a silent wrap.
//!
//! One file per aggregate, each with the operations of the [`Store`] methods on it and the
//! queries they share: `apps` (and the lookups of an app every other file starts from),
//! `drains`, `releases` (with config changes, which append to the ledger), `builds`
//! (and slugs), `dynos` (formation, placement and reports), `hosts`; `rows` holds the
//! encoding above. Each operation opens and commits its own transaction, so the
//! one-transaction rule can be checked one function at a time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{BuildOutcome, DynoChanges, Reported, Store, StoreError};
use crate::model::{
    App, Build, Cert, Domain, Dyno, DynoReport, Formation, FormationUpdate, Host, LogDrain,
    Release, ReleaseStatus, Slug,
};

mod acme;
mod apps;
mod builds;
mod domains;
mod drains;
mod dynos;
mod hosts;
mod releases;
mod rows;
#[cfg(test)]
mod test_support;

/// Enough for the scheduler's few concurrent tasks; SQLite serialises writers anyway.
const MAX_CONNECTIONS: u32 = 4;

/// How long a writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL rather than WAL's usual NORMAL: a committed change must survive a power
            // loss, since the scheduler has told an agent or a user about it.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// A transaction that will write: takes the write lock now (see the module docs).
    async fn write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A transaction that only reads, from one snapshot.
    async fn read(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin().await?)
    }
}

/// Each operation lives with its aggregate's module; this only dispatches to it.
#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_app(&self, name: &str, stack: &str) -> Result<App, StoreError> {
        apps::create_app(self, name, stack).await
    }

    async fn app(&self, name: &str) -> Result<App, StoreError> {
        apps::app(self, name).await
    }

    async fn apps(&self) -> Result<Vec<App>, StoreError> {
        apps::apps(self).await
    }

    async fn delete_app(&self, name: &str) -> Result<App, StoreError> {
        apps::delete_app(self, name).await
    }

    async fn set_feature(
        &self,
        app: &str,
        feature: &str,
        enabled: bool,
    ) -> Result<App, StoreError> {
        apps::set_feature(self, app, feature, enabled).await
    }

    async fn buildpacks(&self, app: &str) -> Result<Vec<String>, StoreError> {
        apps::buildpacks(self, app).await
    }

    async fn set_buildpacks(&self, app: &str, urls: &[String]) -> Result<Vec<String>, StoreError> {
        apps::set_buildpacks(self, app, urls).await
    }

    async fn set_timeouts(
        &self,
        app: &str,
        boot: Option<u32>,
        stop: Option<u32>,
    ) -> Result<App, StoreError> {
        apps::set_timeouts(self, app, boot, stop).await
    }

    async fn set_sleeping(&self, app: &str, sleeping: bool) -> Result<App, StoreError> {
        apps::set_flag(self, app, apps::Flag::Sleeping, sleeping).await
    }

    async fn set_maintenance(&self, app: &str, on: bool) -> Result<App, StoreError> {
        apps::set_flag(self, app, apps::Flag::Maintenance, on).await
    }

    async fn set_acm(&self, app: &str, on: bool) -> Result<App, StoreError> {
        apps::set_flag(self, app, apps::Flag::Acm, on).await
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        acme::account(self, directory).await
    }

    async fn save_acme_account(
        &self,
        directory: &str,
        credentials: &str,
    ) -> Result<(), StoreError> {
        acme::save_account(self, directory, credentials).await
    }

    async fn add_domain(&self, app: &str, hostname: &str) -> Result<Domain, StoreError> {
        domains::add_domain(self, app, hostname).await
    }

    async fn remove_domain(&self, app: &str, hostname: &str) -> Result<Domain, StoreError> {
        domains::remove_domain(self, app, hostname).await
    }

    async fn domains(&self, app: Option<&str>) -> Result<Vec<Domain>, StoreError> {
        domains::domains(self, app).await
    }

    async fn save_cert(&self, cert: &Cert) -> Result<(), StoreError> {
        domains::save_cert(self, cert).await
    }

    async fn remove_cert(&self, app: &str, id: Uuid) -> Result<Cert, StoreError> {
        domains::remove_cert(self, app, id).await
    }

    async fn certs(&self, app: Option<&str>) -> Result<Vec<Cert>, StoreError> {
        domains::certs(self, app).await
    }

    async fn add_drain(&self, app: &str, url: &str, token: &str) -> Result<LogDrain, StoreError> {
        drains::add_drain(self, app, url, token).await
    }

    async fn remove_drain(&self, app: &str, id_or_url: &str) -> Result<LogDrain, StoreError> {
        drains::remove_drain(self, app, id_or_url).await
    }

    async fn drains(&self, app: Option<&str>) -> Result<Vec<LogDrain>, StoreError> {
        drains::drains(self, app).await
    }

    async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        description: &str,
        user: &str,
    ) -> Result<(App, Option<Release>), StoreError> {
        releases::update_config(self, app, changes, description, user).await
    }

    async fn slug(&self, id: Uuid) -> Result<Slug, StoreError> {
        builds::slug(self, id).await
    }

    async fn blobs_in_use(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        builds::blobs_in_use(self).await
    }

    async fn create_build(&self, build: &Build) -> Result<(), StoreError> {
        builds::create_build(self, build).await
    }

    async fn build(&self, id: Uuid) -> Result<Build, StoreError> {
        builds::build(self, id).await
    }

    async fn builds(&self, app: &str) -> Result<Vec<Build>, StoreError> {
        builds::builds(self, app).await
    }

    async fn set_build_host(&self, id: Uuid, host_id: &str) -> Result<(), StoreError> {
        builds::set_build_host(self, id, host_id).await
    }

    async fn finish_build(
        &self,
        id: Uuid,
        outcome: BuildOutcome,
        user: &str,
    ) -> Result<(Build, Option<Release>), StoreError> {
        builds::finish_build(self, id, outcome, user).await
    }

    async fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        releases::releases(self, app).await
    }

    async fn release(&self, app: &str, version: u32) -> Result<Release, StoreError> {
        releases::release(self, app, version).await
    }

    async fn finish_release(
        &self,
        app_id: Uuid,
        version: u32,
        status: ReleaseStatus,
    ) -> Result<Option<Release>, StoreError> {
        releases::finish_release(self, app_id, version, status).await
    }

    async fn pending_releases(&self) -> Result<Vec<Release>, StoreError> {
        releases::pending_releases(self).await
    }

    async fn current_release(&self, app: &str) -> Result<Option<Release>, StoreError> {
        releases::current_release(self, app).await
    }

    async fn rollback(&self, app: &str, version: u32, user: &str) -> Result<Release, StoreError> {
        releases::rollback(self, app, version, user).await
    }

    async fn formation(&self, app: &str) -> Result<Vec<Formation>, StoreError> {
        dynos::formation(self, app).await
    }

    async fn update_formation(
        &self,
        app: &str,
        updates: &[FormationUpdate],
    ) -> Result<Vec<Formation>, StoreError> {
        dynos::update_formation(self, app, updates).await
    }

    async fn dynos(&self, app: Option<&str>) -> Result<Vec<Dyno>, StoreError> {
        dynos::dynos(self, app).await
    }

    async fn apply_dyno_changes(
        &self,
        changes: &DynoChanges,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        dynos::apply_dyno_changes(self, changes).await
    }

    async fn report_dyno(&self, host: &str, report: &DynoReport) -> Result<Reported, StoreError> {
        dynos::report_dyno(self, host, report).await
    }

    async fn upsert_host(
        &self,
        id: &str,
        address: &str,
        memory_bytes: u64,
        dyno_slots: u32,
        stacks: &[String],
        seen: OffsetDateTime,
    ) -> Result<Host, StoreError> {
        hosts::upsert_host(self, id, address, memory_bytes, dyno_slots, stacks, seen).await
    }

    async fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        hosts::hosts(self).await
    }

    async fn set_draining(&self, id: &str, draining: bool) -> Result<Host, StoreError> {
        hosts::set_draining(self, id, draining).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::sqlite::test_support::*;

    #[tokio::test]
    async fn reopening_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, slug, releases, formation, dynos, hosts, builds) = {
            let store = open(&dir).await;
            add_host(&store, "h1").await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            let (slug, _) = deploy(&store, &app).await;
            let (app, _) = store
                .update_config("app", &config(&[("FOO", Some("1"))]), "Set FOO", "ann")
                .await
                .expect("update");
            let formation = store
                .update_formation(
                    "app",
                    &[FormationUpdate {
                        process_type: manifold_dyno::WEB.to_owned(),
                        quantity: Some(1),
                        size: None,
                    }],
                )
                .await
                .expect("formation");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![new_dyno(&app, "web.1", "h1")],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            (
                app,
                slug,
                store.releases("app").await.expect("releases"),
                formation,
                store.dynos(None).await.expect("dynos"),
                store.hosts().await.expect("hosts"),
                store.builds("app").await.expect("builds"),
            )
            // The store is dropped here, as when the scheduler stops.
        };
        let store = open(&dir).await;
        assert_eq!(store.apps().await.expect("apps"), vec![app]);
        assert_eq!(store.slug(slug.id).await.expect("slug"), slug);
        assert_eq!(releases.len(), 2);
        assert_eq!(store.releases("app").await.expect("releases"), releases);
        assert_eq!(store.formation("app").await.expect("formation"), formation);
        assert_eq!(store.dynos(None).await.expect("dynos"), dynos);
        assert_eq!(store.hosts().await.expect("hosts"), hosts);
        assert_eq!(hosts[0].generation, 1);
        assert_eq!(store.builds("app").await.expect("builds"), builds);
        // The ledger continues where it left off.
        let (_, v3) = store
            .update_config("app", &config(&[("BAR", Some("2"))]), "Set BAR", "ann")
            .await
            .expect("update");
        assert_eq!(v3.map(|r| r.version), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_and_versions_stay_unique() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(&dir).await);
        let app = store.create_app("app", "heroku-24").await.expect("create");
        deploy(&store, &app).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let key = format!("K{i}");
                    store
                        .update_config("app", &config(&[(&key, Some("v"))]), "Set", "ann")
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("join").expect("update");
        }
        let versions: Vec<u32> = store
            .releases("app")
            .await
            .expect("releases")
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, (1..=17).collect::<Vec<_>>());
        assert_eq!(store.app("app").await.expect("get").config.len(), 16);
    }
}
