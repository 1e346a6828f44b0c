//! The store in SQL, one implementation for SQLite and PostgreSQL.
//!
//! Why one: the two would otherwise be two copies of every query, free to drift apart.
//! sqlx's `Any` driver runs the same SQL text on either (the schema's encoding is portable:
//! uuids as hyphenated TEXT, timestamps as RFC 3339 TEXT in UTC with nine fractional digits,
//! so they sort lexically as time, maps and lists as JSON TEXT, enums as their lowercase
//! names, flags as 0 or 1, every integer 64-bit). The queries keep to what both speak: `$N`
//! placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`, `"user"` quoted (reserved in
//! PostgreSQL). What cannot be shared (how a transaction starts, the clock, the migrations)
//! is in `dialect`, and nowhere else. Integers the model keeps unsigned are checked on the
//! way in and out rather than cast, so a value the database cannot hold is an error, not a
//! silent wrap.
//!
//! Every [`Store`] method runs in one transaction. Methods that write take the one write
//! lock first, so writers run one at a time, and a method may read then write (the next
//! release version is the last plus one) without another writer slipping in between. On
//! SQLite that is `BEGIN IMMEDIATE`: a deferred transaction that reads before it writes can
//! fail with `SQLITE_BUSY` when another writer commits in between, whereas an immediate one
//! takes the write lock up front and simply waits its turn. PostgreSQL gets the same by a
//! transaction-scoped advisory lock on one key (`pg_advisory_xact_lock`), taken first; the
//! transaction is READ COMMITTED, so every statement after the lock sees the last writer's
//! commit (REPEATABLE READ would keep the snapshot taken before the wait). Serialisable
//! transactions would do too, but would make every method retry on conflicts; the scheduler's
//! writes are small and few, and one queue is simpler to reason about. Methods that only read
//! take one snapshot and block no writer: a deferred transaction in WAL mode on SQLite,
//! REPEATABLE READ READ ONLY on PostgreSQL.
//!
//! The leader's lease (`lease`) lives in the same database and is taken under the same write
//! lock, which is what makes fencing sound: a write checks its holder's term after taking the
//! lock, and the lease cannot change hands until that write commits.
//!
//! One file per aggregate, each with the operations of the [`Store`] methods on it and the
//! queries they share: `apps` (and the lookups of an app every other file starts from),
//! `drains`, `releases` (with config changes, which append to the ledger), `builds`
//! (and slugs), `dynos` (formation, placement and reports), `hosts`, `domains`, `acme`,
//! `addons` (with attachments and backups), `lease`, `pipelines` (with promotions); `rows`
//! holds the encoding above. Each operation opens and commits its own
//! transaction, so the one-transaction rule can be checked one function at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    BuildOutcome, DynoChanges, Fence, HostHello, Leadership, NewReviewApp, Promoted, Reported,
    Store, StoreError,
};
use crate::model::{
    App, Build, Cert, Domain, Dyno, DynoReport, DynoState, Formation, FormationUpdate, Host,
    LogDrain, Release, ReleaseStatus, Slug,
};
use crate::pipelines::{Coupling, Pipeline, ReviewApp, Stage};

use dialect::Dialect;
pub use dialect::{BadDatabase, Database};

mod acme;
mod addons;
mod apps;
mod batch;
mod builds;
mod desired;
mod dialect;
mod domains;
mod drains;
mod dynos;
mod git;
mod hosts;
mod lease;
mod pipelines;
mod releases;
mod rows;
#[cfg(test)]
mod test_support;

/// Enough for the scheduler's few concurrent tasks; the write lock serialises writers anyway.
const MAX_CONNECTIONS: u32 = 4;

/// How long an SQLite writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long PostgreSQL lets one of the store's sessions sit idle inside a transaction
/// before it ends the session (see `open`): well above any transaction's own pauses, well
/// below how long the lab allows a failover to take.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(10);

/// The [`Store`] on SQLite or PostgreSQL, one SQL for both (see the module docs).
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    /// The leader's lease's own connection (see `open`).
    lease_pool: AnyPool,
    dialect: Dialect,
    /// The lease every write must still hold, if any ([`Store::set_fence`]); shared by
    /// the store's clones.
    fence: Arc<Mutex<Option<Fence>>>,
}

impl SqlStore {
    /// Opens the database (an SQLite file is created if missing) and brings its schema up
    /// to date. A database that cannot be reached is an error naming it, at once.
    pub async fn open(database: &Database) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let connect = |source| StoreError::Connect {
            database: database.to_string(),
            source,
        };
        let (dialect, options) = match database {
            Database::Sqlite(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    // WAL is a property of the file: set once here, before the pool opens
                    // its connections (switching needs the file to itself).
                    .journal_mode(SqliteJournalMode::Wal);
                options.connect().await.map_err(connect)?.close().await?;
                // The file exists now; an absolute path keeps the URL from reading a
                // relative one's first component as a host.
                let path = std::fs::canonicalize(path).map_err(|e| connect(e.into()))?;
                let options = SqliteConnectOptions::new().filename(path);
                (
                    Dialect::Sqlite,
                    AnyConnectOptions::from_url(&options.to_url_lossy()),
                )
            }
            Database::Postgres(url) => (Dialect::Postgres, url.parse()),
        };
        let options = options.map_err(connect)?;
        // One connection first, so an unreachable database fails now with its own error
        // (the pool would retry a refused connection until its timeout and say only that).
        options.connect().await.map_err(connect)?.close().await?;
        // The lease has a connection of its own: under a herd of agents' `Hello`s the shared
        // pool's queue can be hundreds of tasks long, and a campaign waiting its turn there
        // took longer than its interval, so a lone scheduler lost its own lease and refused
        // every agent (BENCHMARKS.md, "The restart herd"). On its own connection a campaign
        // waits for the one write in progress at most (the write lock is still shared, which
        // is what fencing needs).
        let pool = pool_options(dialect)
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options.clone())
            .await
            .map_err(connect)?;
        let lease_pool = pool_options(dialect)
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(connect)?;
        dialect.migrator().run(&pool).await?;
        Ok(SqlStore {
            pool,
            lease_pool,
            dialect,
            fence: Arc::new(Mutex::new(None)),
        })
    }

    /// A transaction that will write: takes the write lock now (see the module docs), then
    /// checks the fence, if one is set.
    async fn write(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.write_unfenced().await?;
        let fence = self
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(fence) = fence {
            lease::check_fence(&mut tx, self.dialect, &fence).await?;
        }
        Ok(tx)
    }

    /// A transaction that will write, whoever holds the lease: the lease's own, on the
    /// lease's own connection.
    async fn write_unfenced(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self
            .lease_pool
            .begin_with(self.dialect.begin_write())
            .await?;
        if let Some(lock) = self.dialect.write_lock() {
            sqlx::query(&lock).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// A transaction that only reads, from one snapshot.
    async fn read(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(self.pool.begin_with(self.dialect.begin_read()).await?)
    }
}

/// The pool's settings shared by the store's pools: each connection's session settings.
fn pool_options(dialect: Dialect) -> AnyPoolOptions {
    AnyPoolOptions::new().after_connect(move |conn, _| {
        Box::pin(async move {
            if dialect == Dialect::Sqlite {
                // FULL rather than WAL's usual NORMAL: a committed change must survive
                // a power loss, since the scheduler has told an agent or a user about
                // it. Foreign keys are on by sqlx's default.
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute(&*format!(
                    "PRAGMA busy_timeout = {}",
                    BUSY_TIMEOUT.as_millis()
                ))
                .await?;
            } else {
                // A replica cut off from the database in the middle of a write
                // leaves its server-side session idle in its transaction, holding
                // the write lock (an advisory lock) until TCP gives up, minutes
                // later: no replica could campaign meanwhile. The store's
                // transactions never wait on anything but the database, so the
                // server ends one idle this long and the lock with it.
                conn.execute(&*format!(
                    "SET idle_in_transaction_session_timeout = {}",
                    IDLE_IN_TRANSACTION.as_millis()
                ))
                .await?;
            }
            Ok(())
        })
    })
}

/// Each operation lives with its aggregate's module; this only dispatches to it.
#[async_trait::async_trait]
impl Store for SqlStore {
    async fn campaign(
        &self,
        holder: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        lease::campaign(self, holder, address, ttl).await
    }

    async fn leader(&self) -> Result<Option<Leadership>, StoreError> {
        lease::leader(self).await
    }

    async fn cluster_id(&self) -> Result<String, StoreError> {
        lease::cluster_id(self).await
    }

    async fn resign(&self, holder: &str, term: u64) -> Result<(), StoreError> {
        lease::resign(self, holder, term).await
    }

    fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(PoisonError::into_inner) = fence;
    }

    async fn create_app(&self, name: &str, stack: &str) -> Result<App, StoreError> {
        apps::create_app(self, name, stack).await
    }

    async fn app(&self, name: &str) -> Result<App, StoreError> {
        apps::app(self, name).await
    }

    async fn apps(&self) -> Result<Vec<App>, StoreError> {
        apps::apps(self).await
    }

    async fn apps_of(&self, ids: &[Uuid]) -> Result<Vec<App>, StoreError> {
        apps::apps_of(self, ids).await
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

    async fn create_pipeline(
        &self,
        name: &str,
        first: Option<(&str, Stage)>,
    ) -> Result<(Pipeline, Option<Coupling>), StoreError> {
        pipelines::create_pipeline(self, name, first).await
    }

    async fn pipeline(&self, id_or_name: &str) -> Result<Pipeline, StoreError> {
        pipelines::pipeline(self, id_or_name).await
    }

    async fn pipelines(&self) -> Result<Vec<Pipeline>, StoreError> {
        pipelines::pipelines(self).await
    }

    async fn delete_pipeline(&self, id_or_name: &str) -> Result<Pipeline, StoreError> {
        pipelines::delete_pipeline(self, id_or_name).await
    }

    async fn couple(
        &self,
        pipeline: &str,
        app: &str,
        stage: Stage,
    ) -> Result<Coupling, StoreError> {
        pipelines::couple(self, pipeline, app, stage).await
    }

    async fn uncouple(&self, app: &str) -> Result<Coupling, StoreError> {
        pipelines::uncouple(self, app).await
    }

    async fn couplings(&self, pipeline: Option<&str>) -> Result<Vec<Coupling>, StoreError> {
        pipelines::couplings(self, pipeline).await
    }

    async fn set_review_config(
        &self,
        pipeline: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Pipeline, StoreError> {
        pipelines::set_review_config(self, pipeline, changes).await
    }

    async fn create_review_app(
        &self,
        new: &NewReviewApp<'_>,
    ) -> Result<(App, ReviewApp), StoreError> {
        pipelines::create_review_app(self, new).await
    }

    async fn review_apps(&self, pipeline: Option<&str>) -> Result<Vec<ReviewApp>, StoreError> {
        pipelines::review_apps(self, pipeline).await
    }

    async fn promote(
        &self,
        pipeline: Option<&str>,
        source: &str,
        targets: &[String],
        user: &str,
    ) -> Result<Promoted, StoreError> {
        pipelines::promote(self, pipeline, source, targets, user).await
    }

    async fn blobs_in_use(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        builds::blobs_in_use(self).await
    }

    async fn git_bundle(&self, app: Uuid) -> Result<Option<String>, StoreError> {
        git::git_bundle(self, app).await
    }

    async fn set_git_bundle(&self, app: Uuid, sha256: &str) -> Result<(), StoreError> {
        git::set_git_bundle(self, app, sha256).await
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

    async fn desired(
        &self,
        only: Option<&[Uuid]>,
    ) -> Result<Vec<crate::reconciler::AppDesired>, StoreError> {
        desired::desired(self, only).await
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

    async fn dyno_counts(&self) -> Result<Vec<(DynoState, u64)>, StoreError> {
        dynos::dyno_counts(self).await
    }

    async fn dynos_on_hosts(&self, hosts: &[String]) -> Result<Vec<Dyno>, StoreError> {
        dynos::dynos_on_hosts(self, hosts).await
    }

    async fn dynos_of_apps(&self, apps: &[Uuid]) -> Result<Vec<Dyno>, StoreError> {
        dynos::dynos_of_apps(self, apps).await
    }

    async fn apply_dyno_changes(
        &self,
        changes: &DynoChanges,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        dynos::apply_dyno_changes(self, changes).await
    }

    async fn report_dynos(
        &self,
        reports: &[(String, DynoReport)],
    ) -> Result<Vec<Reported>, StoreError> {
        dynos::report_dynos(self, reports).await
    }

    async fn upsert_hosts(
        &self,
        hosts: &[HostHello<'_>],
        seen: OffsetDateTime,
    ) -> Result<Vec<Host>, StoreError> {
        hosts::upsert_hosts(self, hosts, seen).await
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
    use std::error::Error as _;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use manifold_test_support::postgres::Postgres;

    use super::*;
    use crate::store::sql::test_support::*;

    /// The error and every cause under it, as an operator would read them.
    fn chain(error: &StoreError) -> String {
        let mut text = error.to_string();
        let mut cause = error.source();
        while let Some(next) = cause {
            text.push_str(": ");
            text.push_str(&next.to_string());
            cause = next.source();
        }
        text
    }

    #[tokio::test]
    async fn a_database_that_is_down_is_named_at_once() {
        if let Some(mut server) = Postgres::start("a_database_that_is_down_is_named_at_once") {
            let url = server.url();
            server.stop();
            let started = Instant::now();
            let error = SqlStore::open(&Database::Postgres(url.clone()))
                .await
                .expect_err("the server is down");
            assert!(matches!(error, StoreError::Connect { .. }), "{error:?}");
            let message = chain(&error);
            assert!(
                message.starts_with(&format!("cannot connect to the database {url}: ")),
                "{message}"
            );
            assert!(message.contains("refused"), "{message}");
            // A refused connection fails in milliseconds; the pool would have retried it
            // for its 30 s acquire timeout and then said only that it timed out.
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "it failed at once, not after the pool's retries"
            );
        }
        // An SQLite file where none can be created.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("manifold.db");
        let error = SqlStore::open(&Database::Sqlite(path.clone()))
            .await
            .expect_err("no directory");
        let message = chain(&error);
        assert!(
            message.starts_with(&format!(
                "cannot connect to the database {}: ",
                path.display()
            )),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_database_made_before_the_dialects_split_opens_and_migrates_on() {
        // Until the PostgreSQL dialect came, the SQLite migrations were `migrations/*.sql`
        // and every scheduler's database recorded them (with their checksums) from there.
        // Made here as it was made then: those seven files, from a directory of their own.
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("migrations");
        std::fs::create_dir(&old).expect("mkdir");
        let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for entry in std::fs::read_dir(&ours).expect("read migrations") {
            let entry = entry.expect("entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.as_str() < "0008" {
                std::fs::copy(entry.path(), old.join(&name)).expect("copy");
            }
        }
        let path = dir.path().join("manifold.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = options.connect().await.expect("connect");
        let migrator = sqlx::migrate::Migrator::new(old.as_path())
            .await
            .expect("old migrations");
        assert_eq!(migrator.iter().count(), 7);
        migrator.run(&mut conn).await.expect("the old schema");
        sqlx::query(
            "INSERT INTO apps (id, name, stack, config, created_at, updated_at)
             VALUES ('6f1c0e1e-7d4a-4d7e-9d3a-2b1f0a9c8e11', 'kept', 'heroku-24', '{}',
                     '2026-01-01T00:00:00.000000000Z', '2026-01-01T00:00:00.000000000Z')",
        )
        .execute(&mut conn)
        .await
        .expect("an app of then");
        conn.close().await.expect("close");

        let store = SqlStore::open(&Database::Sqlite(path.clone()))
            .await
            .expect("the old database opens");
        assert_eq!(store.app("kept").await.expect("kept").stack, "heroku-24");
        assert_eq!(
            store
                .campaign("a", "a:1", Duration::from_secs(600))
                .await
                .expect("lease"),
            Some(1)
        );
        drop(store);
        // And again, as every later start will.
        let store = SqlStore::open(&Database::Sqlite(path))
            .await
            .expect("reopens");
        assert_eq!(
            store.leader().await.expect("leader").map(|l| l.term),
            Some(1)
        );
    }

    #[tokio::test]
    async fn reopening_keeps_everything() {
        on_each_backend("reopening_keeps_everything", |db| async move {
            let (app, slug, releases, formation, dynos, hosts, builds) = {
                let store = db.open().await;
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
            let store = db.open().await;
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
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_wait_and_versions_stay_unique() {
        on_each_backend(
            "concurrent_writers_wait_and_versions_stay_unique",
            |db| async move {
                let store = Arc::new(db.open().await);
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
            },
        )
        .await;
    }
}
