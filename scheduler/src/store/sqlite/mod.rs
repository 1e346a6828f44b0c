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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::format_description::well_known::Rfc3339;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use super::{BuildOutcome, DynoChanges, Reported, Store, StoreError};
use crate::model::{
    App, Build, BuildStatus, Desired, Dyno, DynoReport, DynoState, Formation, FormationUpdate,
    Host, LogDrain, Release, ReleaseStatus, Slug, DEFAULT_SIZE, RELEASE_TYPE,
};

/// Enough for the scheduler's few concurrent tasks; SQLite serialises writers anyway.
const MAX_CONNECTIONS: u32 = 4;

/// How long a writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// RFC 3339 with a fixed width, so that TEXT order is time order (the well-known formatter
/// trims fractional digits, and `...:00Z` would sort after `...:00.5Z`).
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_app(&self, name: &str, stack: &str) -> Result<App, StoreError> {
        let mut tx = self.write().await?;
        let taken = sqlx::query("SELECT 1 FROM apps WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::AppExists(name.to_owned()));
        }
        let now = OffsetDateTime::now_utc();
        let app = App {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            stack: stack.to_owned(),
            config: BTreeMap::new(),
            features: BTreeSet::new(),
            sleeping: false,
            boot_timeout: None,
            stop_timeout: None,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO apps (id, name, stack, config, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(app.id.to_string())
        .bind(&app.name)
        .bind(&app.stack)
        .bind(to_json(&app.config)?)
        .bind(timestamp(app.created_at)?)
        .bind(timestamp(app.updated_at)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(app)
    }

    async fn set_feature(
        &self,
        app: &str,
        feature: &str,
        enabled: bool,
    ) -> Result<App, StoreError> {
        let mut tx = self.write().await?;
        let mut current = app_by_name(&mut tx, app).await?;
        if enabled {
            current.features.insert(feature.to_owned());
        } else {
            current.features.remove(feature);
        }
        current.updated_at = OffsetDateTime::now_utc();
        sqlx::query("UPDATE apps SET features = ?, updated_at = ? WHERE id = ?")
            .bind(to_json(&current.features)?)
            .bind(timestamp(current.updated_at)?)
            .bind(current.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(current)
    }

    async fn set_timeouts(
        &self,
        app: &str,
        boot: Option<u32>,
        stop: Option<u32>,
    ) -> Result<App, StoreError> {
        let mut tx = self.write().await?;
        let mut current = app_by_name(&mut tx, app).await?;
        current.boot_timeout = boot;
        current.stop_timeout = stop;
        current.updated_at = OffsetDateTime::now_utc();
        sqlx::query(
            "UPDATE apps SET boot_timeout = ?, stop_timeout = ?, updated_at = ? WHERE id = ?",
        )
        .bind(boot.map(i64::from))
        .bind(stop.map(i64::from))
        .bind(timestamp(current.updated_at)?)
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(current)
    }

    async fn set_sleeping(&self, app: &str, sleeping: bool) -> Result<App, StoreError> {
        let mut tx = self.write().await?;
        let mut current = app_by_name(&mut tx, app).await?;
        current.sleeping = sleeping;
        current.updated_at = OffsetDateTime::now_utc();
        sqlx::query("UPDATE apps SET sleeping = ?, updated_at = ? WHERE id = ?")
            .bind(i64::from(sleeping))
            .bind(timestamp(current.updated_at)?)
            .bind(current.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(current)
    }

    async fn add_drain(&self, app: &str, url: &str, token: &str) -> Result<LogDrain, StoreError> {
        let mut tx = self.write().await?;
        let app_row = app_by_name(&mut tx, app).await?;
        let taken = sqlx::query("SELECT 1 FROM log_drains WHERE app_id = ? AND url = ?")
            .bind(app_row.id.to_string())
            .bind(url)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::DrainExists {
                app: app.to_owned(),
                url: url.to_owned(),
            });
        }
        let drain = LogDrain {
            id: Uuid::new_v4(),
            app_id: app_row.id,
            url: url.to_owned(),
            token: token.to_owned(),
            created_at: OffsetDateTime::now_utc(),
        };
        sqlx::query(
            "INSERT INTO log_drains (id, app_id, url, token, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(drain.id.to_string())
        .bind(drain.app_id.to_string())
        .bind(&drain.url)
        .bind(&drain.token)
        .bind(timestamp(drain.created_at)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(drain)
    }

    async fn remove_drain(&self, app: &str, id_or_url: &str) -> Result<LogDrain, StoreError> {
        let mut tx = self.write().await?;
        let app_row = app_by_name(&mut tx, app).await?;
        let row = sqlx::query("SELECT * FROM log_drains WHERE app_id = ? AND (id = ? OR url = ?)")
            .bind(app_row.id.to_string())
            .bind(id_or_url)
            .bind(id_or_url)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::DrainNotFound {
                app: app.to_owned(),
                drain: id_or_url.to_owned(),
            })?;
        let drain = drain_from_row(&row)?;
        sqlx::query("DELETE FROM log_drains WHERE id = ?")
            .bind(drain.id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(drain)
    }

    async fn drains(&self, app: Option<&str>) -> Result<Vec<LogDrain>, StoreError> {
        let mut tx = self.read().await?;
        let rows = rows_of(
            &mut tx,
            app,
            "SELECT * FROM log_drains WHERE app_id = ? ORDER BY created_at, id",
            "SELECT * FROM log_drains ORDER BY created_at, id",
        )
        .await?;
        tx.commit().await?;
        rows.iter().map(drain_from_row).collect()
    }

    async fn app(&self, name: &str) -> Result<App, StoreError> {
        let mut tx = self.read().await?;
        let app = app_by_name(&mut tx, name).await?;
        tx.commit().await?;
        Ok(app)
    }

    async fn apps(&self) -> Result<Vec<App>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query("SELECT * FROM apps ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(app_from_row).collect()
    }

    async fn delete_app(&self, name: &str) -> Result<App, StoreError> {
        let mut tx = self.write().await?;
        let app = app_by_name(&mut tx, name).await?;
        // The app's running dynos vanish with it, so their hosts' assignment sets change:
        // bump those generations too, or a set sent later under an old generation would
        // differ from the one the agent already holds under it.
        let hosts: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT host_id FROM dynos WHERE app_id = ? AND desired = 'running'",
        )
        .bind(app.id.to_string())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM apps WHERE id = ?")
            .bind(app.id.to_string())
            .execute(&mut *tx)
            .await?;
        bump_generations(&mut tx, hosts.into_iter().collect()).await?;
        tx.commit().await?;
        Ok(app)
    }

    async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        description: &str,
        user: &str,
    ) -> Result<(App, Option<Release>), StoreError> {
        let mut tx = self.write().await?;
        let mut app = app_by_name(&mut tx, app).await?;
        for (key, value) in changes {
            match value {
                Some(value) => app.config.insert(key.clone(), value.clone()),
                None => app.config.remove(key),
            };
        }
        let now = OffsetDateTime::now_utc();
        app.updated_at = now;
        set_app_config(&mut tx, &app).await?;
        let release = match current_release_of(&mut tx, app.id).await? {
            Some(current) => {
                let slug = slug_by_id(&mut tx, current.slug_id).await?;
                Some(
                    append_release(
                        &mut tx,
                        NewRelease {
                            app_id: app.id,
                            slug_id: current.slug_id,
                            config: &app.config,
                            description,
                            user,
                            created_at: now,
                            status: status_for(&slug.process_types),
                        },
                    )
                    .await?,
                )
            }
            None => None,
        };
        tx.commit().await?;
        Ok((app, release))
    }

    async fn slug(&self, id: Uuid) -> Result<Slug, StoreError> {
        let mut tx = self.read().await?;
        let slug = slug_by_id(&mut tx, id).await?;
        tx.commit().await?;
        Ok(slug)
    }

    async fn create_build(&self, build: &Build) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO builds (id, app_id, status, source_sha256, slug_id, release_version,
                                 host_id, user, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(build.id.to_string())
        .bind(build.app_id.to_string())
        .bind(word(build.status))
        .bind(&build.source_sha256)
        .bind(build.slug_id.map(|id| id.to_string()))
        .bind(build.release_version.map(i64::from))
        .bind(&build.host_id)
        .bind(&build.user)
        .bind(timestamp(build.created_at)?)
        .bind(timestamp(build.updated_at)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn build(&self, id: Uuid) -> Result<Build, StoreError> {
        let mut tx = self.read().await?;
        let build = build_by_id(&mut tx, id).await?;
        tx.commit().await?;
        Ok(build)
    }

    async fn builds(&self, app: &str) -> Result<Vec<Build>, StoreError> {
        let mut tx = self.read().await?;
        let app = app_by_name(&mut tx, app).await?;
        let rows = sqlx::query("SELECT * FROM builds WHERE app_id = ? ORDER BY created_at, id")
            .bind(app.id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(build_from_row).collect()
    }

    async fn blobs_in_use(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut tx = self.read().await?;
        let digests: Vec<String> = sqlx::query_scalar(
            "SELECT sha256 FROM slugs \
             UNION SELECT source_sha256 FROM builds WHERE status = 'pending'",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(digests.into_iter().collect())
    }

    async fn set_build_host(&self, id: Uuid, host_id: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        let updated = sqlx::query("UPDATE builds SET host_id = ?, updated_at = ? WHERE id = ?")
            .bind(host_id)
            .bind(timestamp(OffsetDateTime::now_utc())?)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::BuildNotFound(id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn finish_build(
        &self,
        id: Uuid,
        outcome: BuildOutcome,
        user: &str,
    ) -> Result<(Build, Option<Release>), StoreError> {
        let mut tx = self.write().await?;
        let mut build = build_by_id(&mut tx, id).await?;
        let now = OffsetDateTime::now_utc();
        build.updated_at = now;
        let release = match outcome {
            BuildOutcome::Succeeded { slug, description } => {
                let app = app_by_id(&mut tx, build.app_id).await?;
                insert_slug(&mut tx, &slug).await?;
                let release = append_release(
                    &mut tx,
                    NewRelease {
                        app_id: app.id,
                        slug_id: slug.id,
                        config: &app.config,
                        description: &description,
                        user,
                        created_at: now,
                        status: status_for(&slug.process_types),
                    },
                )
                .await?;
                build.status = BuildStatus::Succeeded;
                build.slug_id = Some(slug.id);
                build.release_version = Some(release.version);
                Some(release)
            }
            BuildOutcome::Failed => {
                build.status = BuildStatus::Failed;
                None
            }
        };
        sqlx::query(
            "UPDATE builds SET status = ?, slug_id = ?, release_version = ?, updated_at = ?
             WHERE id = ?",
        )
        .bind(word(build.status))
        .bind(build.slug_id.map(|id| id.to_string()))
        .bind(build.release_version.map(i64::from))
        .bind(timestamp(build.updated_at)?)
        .bind(build.id.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((build, release))
    }

    async fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError> {
        let mut tx = self.read().await?;
        let app = app_by_name(&mut tx, app).await?;
        let rows = sqlx::query("SELECT * FROM releases WHERE app_id = ? ORDER BY version")
            .bind(app.id.to_string())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(release_from_row).collect()
    }

    async fn release(&self, app: &str, version: u32) -> Result<Release, StoreError> {
        let mut tx = self.read().await?;
        let release = release_by_version(&mut tx, app, version).await?;
        tx.commit().await?;
        Ok(release)
    }

    async fn finish_release(
        &self,
        app_id: Uuid,
        version: u32,
        status: ReleaseStatus,
    ) -> Result<Option<Release>, StoreError> {
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "UPDATE releases SET status = ? WHERE app_id = ? AND version = ? AND status = 'pending'
             RETURNING *",
        )
        .bind(word(status))
        .bind(app_id.to_string())
        .bind(i64::from(version))
        .fetch_optional(&mut *tx)
        .await?;
        let release = row.as_ref().map(release_from_row).transpose()?;
        tx.commit().await?;
        Ok(release)
    }

    async fn pending_releases(&self) -> Result<Vec<Release>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query("SELECT * FROM releases WHERE status = 'pending' ORDER BY version")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(release_from_row).collect()
    }

    async fn current_release(&self, app: &str) -> Result<Option<Release>, StoreError> {
        let mut tx = self.read().await?;
        let app = app_by_name(&mut tx, app).await?;
        let release = current_release_of(&mut tx, app.id).await?;
        tx.commit().await?;
        Ok(release)
    }

    async fn rollback(&self, app: &str, version: u32, user: &str) -> Result<Release, StoreError> {
        let mut tx = self.write().await?;
        let target = release_by_version(&mut tx, app, version).await?;
        let mut app = app_by_id(&mut tx, target.app_id).await?;
        let now = OffsetDateTime::now_utc();
        let release = append_release(
            &mut tx,
            NewRelease {
                app_id: app.id,
                slug_id: target.slug_id,
                config: &target.config,
                description: &format!("Rollback to v{version}"),
                user,
                created_at: now,
                // Heroku: a rollback does not run the release phase.
                status: ReleaseStatus::Succeeded,
            },
        )
        .await?;
        app.config = target.config;
        app.updated_at = now;
        set_app_config(&mut tx, &app).await?;
        tx.commit().await?;
        Ok(release)
    }

    async fn formation(&self, app: &str) -> Result<Vec<Formation>, StoreError> {
        let mut tx = self.read().await?;
        let app = app_by_name(&mut tx, app).await?;
        let formation = formation_of(&mut tx, app.id).await?;
        tx.commit().await?;
        Ok(formation)
    }

    async fn update_formation(
        &self,
        app: &str,
        updates: &[FormationUpdate],
    ) -> Result<Vec<Formation>, StoreError> {
        let mut tx = self.write().await?;
        let app = app_by_name(&mut tx, app).await?;
        let now = OffsetDateTime::now_utc();
        for update in updates {
            let row = sqlx::query("SELECT * FROM formations WHERE app_id = ? AND process_type = ?")
                .bind(app.id.to_string())
                .bind(&update.process_type)
                .fetch_optional(&mut *tx)
                .await?;
            let mut formation = match row {
                Some(row) => formation_from_row(&row)?,
                None => Formation {
                    app_id: app.id,
                    process_type: update.process_type.clone(),
                    quantity: 0,
                    size: DEFAULT_SIZE.to_owned(),
                    updated_at: now,
                },
            };
            if let Some(quantity) = update.quantity {
                formation.quantity = quantity;
            }
            if let Some(size) = &update.size {
                formation.size.clone_from(size);
            }
            formation.updated_at = now;
            sqlx::query(
                "INSERT INTO formations (app_id, process_type, quantity, size, updated_at)
                 VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (app_id, process_type) DO UPDATE
                 SET quantity = excluded.quantity, size = excluded.size,
                     updated_at = excluded.updated_at",
            )
            .bind(formation.app_id.to_string())
            .bind(&formation.process_type)
            .bind(i64::from(formation.quantity))
            .bind(&formation.size)
            .bind(timestamp(formation.updated_at)?)
            .execute(&mut *tx)
            .await?;
        }
        let formation = formation_of(&mut tx, app.id).await?;
        tx.commit().await?;
        Ok(formation)
    }

    async fn dynos(&self, app: Option<&str>) -> Result<Vec<Dyno>, StoreError> {
        let mut tx = self.read().await?;
        let rows = rows_of(
            &mut tx,
            app,
            "SELECT * FROM dynos WHERE app_id = ? ORDER BY name, id",
            "SELECT dynos.* FROM dynos JOIN apps ON apps.id = dynos.app_id
             ORDER BY apps.name, dynos.name, dynos.id",
        )
        .await?;
        tx.commit().await?;
        rows.iter().map(dyno_from_row).collect()
    }

    async fn apply_dyno_changes(
        &self,
        changes: &DynoChanges,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut tx = self.write().await?;
        let mut changed = BTreeSet::new();
        // Stopping an already stopped (or unknown) dyno changes no host's running set.
        for id in &changes.stop {
            let host: Option<String> = sqlx::query_scalar(
                "UPDATE dynos SET desired = 'stopped' WHERE id = ? AND desired = 'running'
                 RETURNING host_id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            changed.extend(host);
        }
        for id in &changes.delete {
            let row = sqlx::query("DELETE FROM dynos WHERE id = ? RETURNING host_id, desired")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = row {
                let desired: String = row.try_get("desired")?;
                if desired == word(Desired::Running) {
                    changed.insert(row.try_get::<String, _>("host_id")?);
                }
            }
        }
        for dyno in &changes.create {
            let host_known = sqlx::query("SELECT 1 FROM hosts WHERE id = ?")
                .bind(&dyno.host_id)
                .fetch_optional(&mut *tx)
                .await?;
            if host_known.is_none() {
                return Err(StoreError::HostNotFound(dyno.host_id.clone()));
            }
            insert_dyno(&mut tx, dyno).await?;
            if dyno.desired == Desired::Running {
                changed.insert(dyno.host_id.clone());
            }
        }
        let generations = bump_generations(&mut tx, changed).await?;
        tx.commit().await?;
        Ok(generations)
    }

    async fn report_dyno(&self, host: &str, report: &DynoReport) -> Result<Reported, StoreError> {
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "UPDATE dynos SET state = ?, state_changed_at = ?, exit_status = ?, reason = ?,
                              port = ?
             WHERE id = ? AND host_id = ?
             RETURNING *",
        )
        .bind(report.state.as_str())
        .bind(timestamp(report.changed_at)?)
        .bind(report.exit_status)
        .bind(&report.reason)
        .bind(report.port.map(i64::from))
        .bind(&report.id)
        .bind(host)
        .fetch_optional(&mut *tx)
        .await?;
        let reported = match row {
            Some(row) => Reported::Updated(Box::new(dyno_from_row(&row)?)),
            None => {
                let owner: Option<String> =
                    sqlx::query_scalar("SELECT host_id FROM dynos WHERE id = ?")
                        .bind(&report.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                owner.map_or(Reported::Unknown, Reported::OtherHost)
            }
        };
        tx.commit().await?;
        Ok(reported)
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
        let mut tx = self.write().await?;
        let seen = timestamp(seen)?;
        let row = sqlx::query(
            "INSERT INTO hosts (id, address, memory_bytes, dyno_slots, stacks, generation,
                                draining, first_seen, last_seen)
             VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?)
             ON CONFLICT (id) DO UPDATE
             SET address = excluded.address, memory_bytes = excluded.memory_bytes,
                 dyno_slots = excluded.dyno_slots, stacks = excluded.stacks,
                 last_seen = excluded.last_seen
             RETURNING *",
        )
        .bind(id)
        .bind(address)
        .bind(to_i64(memory_bytes)?)
        .bind(i64::from(dyno_slots))
        .bind(to_json(stacks)?)
        .bind(&seen)
        .bind(&seen)
        .fetch_one(&mut *tx)
        .await?;
        let host = host_from_row(&row)?;
        tx.commit().await?;
        Ok(host)
    }

    async fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        let mut tx = self.read().await?;
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(host_from_row).collect()
    }

    async fn set_draining(&self, id: &str, draining: bool) -> Result<Host, StoreError> {
        let mut tx = self.write().await?;
        let row = sqlx::query("UPDATE hosts SET draining = ? WHERE id = ? RETURNING *")
            .bind(draining)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let host = match row {
            Some(row) => host_from_row(&row)?,
            None => return Err(StoreError::HostNotFound(id.to_owned())),
        };
        tx.commit().await?;
        Ok(host)
    }
}

/// The rows `one` selects for the app named `app` (its id bound to the one `?`), or the
/// rows `all` selects when no app is named; an unknown app is an error, not no rows.
async fn rows_of(
    conn: &mut SqliteConnection,
    app: Option<&str>,
    one: &str,
    all: &str,
) -> Result<Vec<SqliteRow>, StoreError> {
    Ok(match app {
        Some(name) => {
            let app = app_by_name(&mut *conn, name).await?;
            sqlx::query(one)
                .bind(app.id.to_string())
                .fetch_all(conn)
                .await?
        }
        None => sqlx::query(all).fetch_all(conn).await?,
    })
}

async fn app_by_name(conn: &mut SqliteConnection, name: &str) -> Result<App, StoreError> {
    let row = sqlx::query("SELECT * FROM apps WHERE name = ?")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => app_from_row(&row),
        None => Err(StoreError::AppNotFound(name.to_owned())),
    }
}

/// The app a stored row points at; its absence means the foreign keys were bypassed.
async fn app_by_id(conn: &mut SqliteConnection, id: Uuid) -> Result<App, StoreError> {
    let row = sqlx::query("SELECT * FROM apps WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => app_from_row(&row),
        None => Err(StoreError::Corrupt(format!(
            "app {id} is referenced but missing"
        ))),
    }
}

async fn set_app_config(conn: &mut SqliteConnection, app: &App) -> Result<(), StoreError> {
    sqlx::query("UPDATE apps SET config = ?, updated_at = ? WHERE id = ?")
        .bind(to_json(&app.config)?)
        .bind(timestamp(app.updated_at)?)
        .bind(app.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

async fn build_by_id(conn: &mut SqliteConnection, id: Uuid) -> Result<Build, StoreError> {
    let row = sqlx::query("SELECT * FROM builds WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => build_from_row(&row),
        None => Err(StoreError::BuildNotFound(id)),
    }
}

async fn insert_slug(conn: &mut SqliteConnection, slug: &Slug) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO slugs (id, app_id, sha256, size, process_types, stack, buildpacks,
                            created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(slug.id.to_string())
    .bind(slug.app_id.to_string())
    .bind(&slug.sha256)
    .bind(to_i64(slug.size)?)
    .bind(to_json(&slug.process_types)?)
    .bind(&slug.stack)
    .bind(to_json(&slug.buildpacks)?)
    .bind(timestamp(slug.created_at)?)
    .execute(conn)
    .await?;
    Ok(())
}

async fn release_by_version(
    conn: &mut SqliteConnection,
    app: &str,
    version: u32,
) -> Result<Release, StoreError> {
    let app_row = app_by_name(&mut *conn, app).await?;
    let row = sqlx::query("SELECT * FROM releases WHERE app_id = ? AND version = ?")
        .bind(app_row.id.to_string())
        .bind(i64::from(version))
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => release_from_row(&row),
        None => Err(StoreError::ReleaseNotFound {
            app: app.to_owned(),
            version,
        }),
    }
}

async fn current_release_of(
    conn: &mut SqliteConnection,
    app_id: Uuid,
) -> Result<Option<Release>, StoreError> {
    let row = sqlx::query(
        "SELECT * FROM releases WHERE app_id = ? AND status = 'succeeded'
         ORDER BY version DESC LIMIT 1",
    )
    .bind(app_id.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(release_from_row).transpose()
}

async fn slug_by_id(conn: &mut SqliteConnection, id: Uuid) -> Result<Slug, StoreError> {
    let row = sqlx::query("SELECT * FROM slugs WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => slug_from_row(&row),
        None => Err(StoreError::SlugNotFound(id)),
    }
}

/// A release to append.
struct NewRelease<'a> {
    app_id: Uuid,
    slug_id: Uuid,
    config: &'a BTreeMap<String, String>,
    description: &'a str,
    user: &'a str,
    created_at: OffsetDateTime,
    status: ReleaseStatus,
}

/// A new release of a slug is `pending` when its Procfile has a `release` type (its
/// release phase must succeed first), else `succeeded` at once.
fn status_for(slug_process_types: &BTreeMap<String, String>) -> ReleaseStatus {
    if slug_process_types.contains_key(RELEASE_TYPE) {
        ReleaseStatus::Pending
    } else {
        ReleaseStatus::Succeeded
    }
}

/// Appends to the app's ledger under the next version. The caller's transaction holds the
/// write lock, so no other writer can take the same version in between.
async fn append_release(
    conn: &mut SqliteConnection,
    new: NewRelease<'_>,
) -> Result<Release, StoreError> {
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?")
            .bind(new.app_id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    let version = u32::try_from(next)
        .map_err(|e| StoreError::Corrupt(format!("releases.version of app {}: {e}", new.app_id)))?;
    let release = Release {
        app_id: new.app_id,
        version,
        slug_id: new.slug_id,
        config: new.config.clone(),
        description: new.description.to_owned(),
        user: new.user.to_owned(),
        status: new.status,
        created_at: new.created_at,
    };
    sqlx::query(
        "INSERT INTO releases (app_id, version, slug_id, config, description, user, status,
                               created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(release.app_id.to_string())
    .bind(i64::from(release.version))
    .bind(release.slug_id.to_string())
    .bind(to_json(&release.config)?)
    .bind(&release.description)
    .bind(&release.user)
    .bind(word(release.status))
    .bind(timestamp(release.created_at)?)
    .execute(conn)
    .await?;
    Ok(release)
}

async fn formation_of(
    conn: &mut SqliteConnection,
    app_id: Uuid,
) -> Result<Vec<Formation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM formations WHERE app_id = ? ORDER BY process_type")
        .bind(app_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(formation_from_row).collect()
}

async fn insert_dyno(conn: &mut SqliteConnection, dyno: &Dyno) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dynos (id, app_id, name, process_type, release_version, size, command,
                            host_id, desired, state, state_changed_at, exit_status, reason,
                            port, created_at, env, attach)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&dyno.id)
    .bind(dyno.app_id.to_string())
    .bind(&dyno.name)
    .bind(&dyno.process_type)
    .bind(i64::from(dyno.release_version))
    .bind(&dyno.size)
    .bind(&dyno.command)
    .bind(&dyno.host_id)
    .bind(word(dyno.desired))
    .bind(dyno.state.as_str())
    .bind(timestamp(dyno.state_changed_at)?)
    .bind(dyno.exit_status)
    .bind(&dyno.reason)
    .bind(dyno.port.map(i64::from))
    .bind(timestamp(dyno.created_at)?)
    .bind(to_json(&dyno.env)?)
    .bind(dyno.attach.as_ref().map(to_json).transpose()?)
    .execute(conn)
    .await?;
    Ok(())
}

/// Increments each host's generation once; returns the new generations.
async fn bump_generations(
    conn: &mut SqliteConnection,
    hosts: BTreeSet<String>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut generations = BTreeMap::new();
    for host in hosts {
        let generation: Option<i64> = sqlx::query_scalar(
            "UPDATE hosts SET generation = generation + 1 WHERE id = ? RETURNING generation",
        )
        .bind(&host)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(generation) = generation else {
            return Err(StoreError::HostNotFound(host));
        };
        let generation = u64::try_from(generation)
            .map_err(|e| StoreError::Corrupt(format!("hosts.generation of {host}: {e}")))?;
        generations.insert(host, generation);
    }
    Ok(generations)
}

/// Reads one row's columns, naming the table, column and row in any corruption error.
struct Cells<'r> {
    row: &'r SqliteRow,
    table: &'static str,
    key: String,
}

impl<'r> Cells<'r> {
    fn new(row: &'r SqliteRow, table: &'static str, key: String) -> Cells<'r> {
        Cells { row, table, key }
    }

    fn corrupt(&self, column: &str, error: impl Display) -> StoreError {
        StoreError::Corrupt(format!("{}.{column} of {}: {error}", self.table, self.key))
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.row.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.row.try_get(column)?)
    }

    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        let text = self.text(column)?;
        Uuid::parse_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        self.opt_text(column)?
            .map(|text| Uuid::parse_str(&text).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        let text = self.text(column)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| self.corrupt(column, e))
    }

    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn opt_json<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.row.try_get(column)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn int<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: Display,
    {
        let value: i64 = self.row.try_get(column)?;
        T::try_from(value).map_err(|e| self.corrupt(column, e))
    }

    fn opt_int<T>(&self, column: &str) -> Result<Option<T>, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: Display,
    {
        let value: Option<i64> = self.row.try_get(column)?;
        value
            .map(|value| T::try_from(value).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    /// SQLite has no booleans; the schema keeps flags as 0 or 1.
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        match self.int::<i64>(column)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format_args!("{other} is not a flag"))),
        }
    }

    fn parse<T>(&self, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
        let text = self.text(column)?;
        parse(&text).ok_or_else(|| self.corrupt(column, format_args!("unknown value {text:?}")))
    }
}

fn app_from_row(row: &SqliteRow) -> Result<App, StoreError> {
    let c = Cells::new(row, "apps", row.try_get("name")?);
    Ok(App {
        id: c.uuid("id")?,
        name: c.text("name")?,
        stack: c.text("stack")?,
        config: c.json("config")?,
        features: c.json("features")?,
        sleeping: c.flag("sleeping")?,
        boot_timeout: c.opt_int("boot_timeout")?,
        stop_timeout: c.opt_int("stop_timeout")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

fn drain_from_row(row: &SqliteRow) -> Result<LogDrain, StoreError> {
    let c = Cells::new(row, "log_drains", row.try_get("id")?);
    Ok(LogDrain {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        url: c.text("url")?,
        token: c.text("token")?,
        created_at: c.time("created_at")?,
    })
}

fn slug_from_row(row: &SqliteRow) -> Result<Slug, StoreError> {
    let c = Cells::new(row, "slugs", row.try_get("id")?);
    Ok(Slug {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        sha256: c.text("sha256")?,
        size: c.int("size")?,
        process_types: c.json("process_types")?,
        stack: c.text("stack")?,
        buildpacks: c.json("buildpacks")?,
        created_at: c.time("created_at")?,
    })
}

fn build_from_row(row: &SqliteRow) -> Result<Build, StoreError> {
    let c = Cells::new(row, "builds", row.try_get("id")?);
    Ok(Build {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        status: c.parse("status", from_word)?,
        source_sha256: c.text("source_sha256")?,
        slug_id: c.opt_uuid("slug_id")?,
        release_version: c.opt_int("release_version")?,
        host_id: c.opt_text("host_id")?,
        user: c.text("user")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

fn release_from_row(row: &SqliteRow) -> Result<Release, StoreError> {
    let key = format!(
        "v{} of app {}",
        row.try_get::<i64, _>("version")?,
        row.try_get::<String, _>("app_id")?
    );
    let c = Cells::new(row, "releases", key);
    Ok(Release {
        app_id: c.uuid("app_id")?,
        version: c.int("version")?,
        slug_id: c.uuid("slug_id")?,
        config: c.json("config")?,
        description: c.text("description")?,
        user: c.text("user")?,
        status: c.parse("status", from_word)?,
        created_at: c.time("created_at")?,
    })
}

fn formation_from_row(row: &SqliteRow) -> Result<Formation, StoreError> {
    let key = format!(
        "{} of app {}",
        row.try_get::<String, _>("process_type")?,
        row.try_get::<String, _>("app_id")?
    );
    let c = Cells::new(row, "formations", key);
    Ok(Formation {
        app_id: c.uuid("app_id")?,
        process_type: c.text("process_type")?,
        quantity: c.int("quantity")?,
        size: c.text("size")?,
        updated_at: c.time("updated_at")?,
    })
}

fn dyno_from_row(row: &SqliteRow) -> Result<Dyno, StoreError> {
    let c = Cells::new(row, "dynos", row.try_get("id")?);
    Ok(Dyno {
        id: c.text("id")?,
        app_id: c.uuid("app_id")?,
        name: c.text("name")?,
        process_type: c.text("process_type")?,
        release_version: c.int("release_version")?,
        size: c.text("size")?,
        command: c.text("command")?,
        host_id: c.text("host_id")?,
        desired: c.parse("desired", from_word)?,
        state: c.parse("state", DynoState::parse)?,
        state_changed_at: c.time("state_changed_at")?,
        exit_status: c.opt_int("exit_status")?,
        reason: c.text("reason")?,
        port: c.opt_int("port")?,
        created_at: c.time("created_at")?,
        env: c.json("env")?,
        attach: c.opt_json("attach")?,
    })
}

fn host_from_row(row: &SqliteRow) -> Result<Host, StoreError> {
    let c = Cells::new(row, "hosts", row.try_get("id")?);
    Ok(Host {
        id: c.text("id")?,
        address: c.text("address")?,
        memory_bytes: c.int("memory_bytes")?,
        dyno_slots: c.int("dyno_slots")?,
        stacks: c.json("stacks")?,
        generation: c.int("generation")?,
        draining: c.flag("draining")?,
        first_seen: c.time("first_seen")?,
        last_seen: c.time("last_seen")?,
    })
}

/// An enum as the lowercase word serde names it (`succeeded`): the form the schema stores.
fn word<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The enum a stored word names.
fn from_word<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

/// Encodes a timestamp in the fixed-width UTC form the schema uses.
fn timestamp(at: OffsetDateTime) -> Result<String, StoreError> {
    at.to_offset(UtcOffset::UTC)
        .format(TIMESTAMP)
        .map_err(encode_error)
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(encode_error)
}

/// SQLite integers are signed; a `u64` above `i64::MAX` cannot be stored faithfully.
fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(encode_error)
}

/// A value the database cannot hold is an encoding failure, as sqlx itself reports them.
fn encode_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(Box::new(error)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;
    use time::Duration as TimeDuration;

    use super::*;

    async fn open(dir: &TempDir) -> SqliteStore {
        SqliteStore::open(&dir.path().join("manifold.db"))
            .await
            .expect("open store")
    }

    fn config(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    fn new_slug(app_id: Uuid) -> Slug {
        Slug {
            id: Uuid::new_v4(),
            app_id,
            sha256: "ab".repeat(32),
            size: 1234,
            process_types: [("web".to_owned(), "bin/web".to_owned())].into(),
            stack: "heroku-24".to_owned(),
            buildpacks: vec!["heroku/ruby".to_owned()],
            created_at: OffsetDateTime::now_utc(),
        }
    }

    fn new_build(app_id: Uuid) -> Build {
        let now = OffsetDateTime::now_utc();
        Build {
            id: Uuid::new_v4(),
            app_id,
            status: BuildStatus::Pending,
            source_sha256: "cd".repeat(32),
            slug_id: None,
            release_version: None,
            host_id: None,
            user: "ann@example.com".to_owned(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Builds and releases a new slug of `app`; returns the slug and its release.
    async fn deploy(store: &SqliteStore, app: &App) -> (Slug, Release) {
        let build = new_build(app.id);
        store.create_build(&build).await.expect("create build");
        let slug = new_slug(app.id);
        let (_, release) = store
            .finish_build(
                build.id,
                BuildOutcome::Succeeded {
                    slug: slug.clone(),
                    description: "Deploy".to_owned(),
                },
                "ann@example.com",
            )
            .await
            .expect("finish build");
        (slug, release.expect("a release"))
    }

    fn new_dyno(app_id: Uuid, name: &str, host_id: &str) -> Dyno {
        let now = OffsetDateTime::now_utc();
        Dyno {
            id: format!("{app_id}-{}", name.replace('.', "-")),
            app_id,
            name: name.to_owned(),
            process_type: name.split('.').next().unwrap_or(name).to_owned(),
            release_version: 1,
            size: DEFAULT_SIZE.to_owned(),
            command: "bin/web".to_owned(),
            host_id: host_id.to_owned(),
            desired: Desired::Running,
            state: DynoState::Created,
            state_changed_at: now,
            exit_status: None,
            reason: String::new(),
            port: None,
            created_at: now,
            env: BTreeMap::new(),
            attach: None,
        }
    }

    async fn add_host(store: &SqliteStore, id: &str) -> Host {
        store
            .upsert_host(
                id,
                &format!("{id}:7000"),
                8 << 30,
                16,
                &["heroku-24".to_owned()],
                OffsetDateTime::now_utc(),
            )
            .await
            .expect("upsert host")
    }

    async fn generation(store: &SqliteStore, id: &str) -> u64 {
        let hosts = store.hosts().await.expect("hosts");
        hosts
            .iter()
            .find(|h| h.id == id)
            .map(|h| h.generation)
            .expect("host listed")
    }

    #[tokio::test]
    async fn blobs_in_use_are_slugs_and_pending_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        assert!(store.blobs_in_use().await.expect("in use").is_empty());
        let app = store.create_app("kept", "testing").await.expect("create");
        let (slug, _) = deploy(&store, &app).await;
        let mut pending = new_build(app.id);
        pending.source_sha256 = "ef".repeat(32);
        store.create_build(&pending).await.expect("create build");
        // The deployed build's source ("cd"…) is no longer needed; its slug and the
        // pending build's source are.
        assert_eq!(
            store.blobs_in_use().await.expect("in use"),
            [slug.sha256.clone(), pending.source_sha256.clone()].into()
        );
        store.delete_app("kept").await.expect("delete");
        assert!(store.blobs_in_use().await.expect("in use").is_empty());
    }

    #[tokio::test]
    async fn apps_create_get_list_duplicate_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let b = store
            .create_app("bravo", "heroku-24")
            .await
            .expect("create");
        let a = store
            .create_app("alpha", "heroku-22")
            .await
            .expect("create");
        assert_eq!(b.name, "bravo");
        assert_eq!(b.stack, "heroku-24");
        assert!(b.config.is_empty());
        assert_eq!(store.app("bravo").await.expect("get"), b);
        assert_eq!(store.apps().await.expect("list"), vec![a, b.clone()]);
        assert!(matches!(
            store.create_app("bravo", "heroku-22").await,
            Err(StoreError::AppExists(name)) if name == "bravo"
        ));
        assert_eq!(
            store.app("bravo").await.expect("get"),
            b,
            "duplicate changed nothing"
        );
        assert!(matches!(
            store.app("nope").await,
            Err(StoreError::AppNotFound(name)) if name == "nope"
        ));
        assert!(matches!(
            store.releases("nope").await,
            Err(StoreError::AppNotFound(_))
        ));
        assert!(matches!(
            store.update_formation("nope", &[]).await,
            Err(StoreError::AppNotFound(_))
        ));
        assert!(matches!(
            store.dynos(Some("nope")).await,
            Err(StoreError::AppNotFound(_))
        ));
        assert!(matches!(
            store.delete_app("nope").await,
            Err(StoreError::AppNotFound(_))
        ));
    }

    #[tokio::test]
    async fn drains_sleep_and_timeouts_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(&dir).await;
            store.create_app("logged", "testing").await.expect("create");
            store.create_app("other", "testing").await.expect("create");
            let a = store
                .add_drain("logged", "syslog://127.0.0.1:514", "d.1")
                .await
                .expect("add");
            store
                .add_drain("logged", "https://logs.example/x", "d.2")
                .await
                .expect("add");
            store
                .add_drain("other", "syslog://127.0.0.1:514", "d.3")
                .await
                .expect("the same URL on another app");
            let again = store
                .add_drain("logged", "syslog://127.0.0.1:514", "d.4")
                .await;
            assert!(
                matches!(again, Err(StoreError::DrainExists { .. })),
                "{again:?}"
            );
            let removed = store
                .remove_drain("logged", "https://logs.example/x")
                .await
                .expect("by url");
            assert_eq!(removed.token, "d.2");
            let gone = store.remove_drain("logged", "nosuch").await;
            assert!(
                matches!(gone, Err(StoreError::DrainNotFound { .. })),
                "{gone:?}"
            );
            let missing = store.drains(Some("nosuch")).await;
            assert!(
                matches!(missing, Err(StoreError::AppNotFound(_))),
                "{missing:?}"
            );
            assert_eq!(store.drains(Some("logged")).await.expect("drains"), [a]);
            assert_eq!(store.drains(None).await.expect("all").len(), 2);
            store.set_sleeping("logged", true).await.expect("sleep");
            store
                .set_timeouts("logged", Some(120), None)
                .await
                .expect("timeouts");
        }
        let store = open(&dir).await;
        let app = store.app("logged").await.expect("app");
        assert!(app.sleeping);
        assert_eq!((app.boot_timeout, app.stop_timeout), (Some(120), None));
        store.delete_app("logged").await.expect("delete");
        assert_eq!(
            store.drains(None).await.expect("all").len(),
            1,
            "drains go with the app"
        );
    }

    #[tokio::test]
    async fn delete_app_removes_all_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        add_host(&store, "h1").await;
        let app = store
            .create_app("doomed", "heroku-24")
            .await
            .expect("create");
        let other = store.create_app("kept", "heroku-24").await.expect("create");
        let (slug, _) = deploy(&store, &app).await;
        let failed = new_build(app.id);
        store.create_build(&failed).await.expect("create build");
        store
            .update_formation(
                "doomed",
                &[FormationUpdate {
                    process_type: "web".to_owned(),
                    quantity: Some(2),
                    size: None,
                }],
            )
            .await
            .expect("formation");
        let changes = DynoChanges {
            create: vec![
                new_dyno(app.id, "web.1", "h1"),
                new_dyno(other.id, "web.1", "h1"),
            ],
            ..DynoChanges::default()
        };
        store.apply_dyno_changes(&changes).await.expect("apply");
        let before = generation(&store, "h1").await;

        let deleted = store.delete_app("doomed").await.expect("delete");
        assert_eq!(deleted.id, app.id);
        assert!(matches!(
            store.app("doomed").await,
            Err(StoreError::AppNotFound(_))
        ));
        assert!(matches!(
            store.slug(slug.id).await,
            Err(StoreError::SlugNotFound(_))
        ));
        assert!(matches!(
            store.build(failed.id).await,
            Err(StoreError::BuildNotFound(_))
        ));
        let dynos = store.dynos(None).await.expect("dynos");
        assert_eq!(dynos.len(), 1);
        assert_eq!(dynos[0].app_id, other.id);
        assert_eq!(
            generation(&store, "h1").await,
            before + 1,
            "the host lost a running dyno"
        );

        // A new app of the same name starts from nothing.
        store
            .create_app("doomed", "heroku-24")
            .await
            .expect("recreate");
        assert!(store.releases("doomed").await.expect("releases").is_empty());
        assert!(store
            .formation("doomed")
            .await
            .expect("formation")
            .is_empty());
        assert!(store.builds("doomed").await.expect("builds").is_empty());
        assert!(store.dynos(Some("doomed")).await.expect("dynos").is_empty());
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM releases) + (SELECT COUNT(*) FROM slugs)
                  + (SELECT COUNT(*) FROM builds) + (SELECT COUNT(*) FROM formations)",
        )
        .fetch_one(&store.pool)
        .await
        .expect("count");
        assert_eq!(rows, 0, "no orphaned rows");
    }

    #[tokio::test]
    async fn config_before_any_release_appends_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        store.create_app("app", "heroku-24").await.expect("create");
        let (app, release) = store
            .update_config(
                "app",
                &config(&[("FOO", Some("1")), ("BAR", Some("2"))]),
                "Set FOO, BAR config vars",
                "ann",
            )
            .await
            .expect("update");
        assert!(release.is_none());
        assert_eq!(app.config.get("FOO").map(String::as_str), Some("1"));
        let (app, release) = store
            .update_config("app", &config(&[("BAR", None)]), "Unset BAR", "ann")
            .await
            .expect("update");
        assert!(release.is_none());
        assert_eq!(
            app.config,
            BTreeMap::from([("FOO".to_owned(), "1".to_owned())])
        );
        assert_eq!(store.app("app").await.expect("get").config, app.config);
        assert!(store.releases("app").await.expect("releases").is_empty());
        assert!(store
            .current_release("app")
            .await
            .expect("current")
            .is_none());
    }

    #[tokio::test]
    async fn config_after_deploy_appends_releases_with_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let (slug, v1) = deploy(&store, &app).await;
        assert_eq!(v1.version, 1);

        let (app, v2) = store
            .update_config("app", &config(&[("FOO", Some("1"))]), "Set FOO", "bob")
            .await
            .expect("update");
        let v2 = v2.expect("a release");
        assert_eq!(v2.version, 2);
        assert_eq!(v2.slug_id, slug.id);
        assert_eq!(v2.config, app.config);
        assert_eq!(v2.description, "Set FOO");
        assert_eq!(v2.user, "bob");
        assert_eq!(v2.status, ReleaseStatus::Succeeded);

        let (_, v3) = store
            .update_config(
                "app",
                &config(&[("FOO", None), ("BAR", Some("x"))]),
                "Change",
                "bob",
            )
            .await
            .expect("update");
        let v3 = v3.expect("a release");
        assert_eq!(v3.version, 3);

        let ledger = store.releases("app").await.expect("releases");
        assert_eq!(ledger, vec![v1.clone(), v2.clone(), v3.clone()]);
        assert!(ledger[0].config.is_empty());
        assert_eq!(ledger[1].config.get("FOO").map(String::as_str), Some("1"));
        assert_eq!(
            ledger[2].config,
            BTreeMap::from([("BAR".to_owned(), "x".to_owned())])
        );
        assert_eq!(store.release("app", 2).await.expect("v2"), v2);
        assert_eq!(
            store.current_release("app").await.expect("current"),
            Some(v3)
        );
    }

    #[tokio::test]
    async fn finish_build_success_stores_slug_and_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        store.create_app("app", "heroku-24").await.expect("create");
        let (app, _) = store
            .update_config("app", &config(&[("FOO", Some("1"))]), "Set FOO", "ann")
            .await
            .expect("update");
        let build = new_build(app.id);
        store.create_build(&build).await.expect("create build");
        assert_eq!(store.build(build.id).await.expect("build"), build);
        store.set_build_host(build.id, "h1").await.expect("host");
        let slug = new_slug(app.id);
        let (finished, release) = store
            .finish_build(
                build.id,
                BuildOutcome::Succeeded {
                    slug: slug.clone(),
                    description: "Deploy cdcdcdcd".to_owned(),
                },
                "ann",
            )
            .await
            .expect("finish");
        let release = release.expect("a release");
        assert_eq!(release.version, 1);
        assert_eq!(release.slug_id, slug.id);
        assert_eq!(release.config, app.config);
        assert_eq!(release.description, "Deploy cdcdcdcd");
        assert_eq!(release.status, ReleaseStatus::Succeeded);
        assert_eq!(finished.status, BuildStatus::Succeeded);
        assert_eq!(finished.slug_id, Some(slug.id));
        assert_eq!(finished.release_version, Some(1));
        assert_eq!(finished.host_id.as_deref(), Some("h1"));
        assert_eq!(store.build(build.id).await.expect("build"), finished);
        assert_eq!(store.builds("app").await.expect("builds"), vec![finished]);
        assert_eq!(store.slug(slug.id).await.expect("slug"), slug);
        assert_eq!(
            store.current_release("app").await.expect("current"),
            Some(release)
        );
    }

    #[tokio::test]
    async fn finish_build_failure_appends_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let build = new_build(app.id);
        store.create_build(&build).await.expect("create build");
        let (finished, release) = store
            .finish_build(build.id, BuildOutcome::Failed, "ann")
            .await
            .expect("finish");
        assert!(release.is_none());
        assert_eq!(finished.status, BuildStatus::Failed);
        assert_eq!(finished.slug_id, None);
        assert_eq!(store.build(build.id).await.expect("build"), finished);
        assert!(store.releases("app").await.expect("releases").is_empty());

        let unknown = Uuid::new_v4();
        assert!(matches!(
            store.finish_build(unknown, BuildOutcome::Failed, "ann").await,
            Err(StoreError::BuildNotFound(id)) if id == unknown
        ));
        assert!(matches!(
            store.set_build_host(unknown, "h1").await,
            Err(StoreError::BuildNotFound(_))
        ));
    }

    #[tokio::test]
    async fn rollback_copies_slug_and_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        store
            .update_config("app", &config(&[("FOO", Some("old"))]), "Set FOO", "ann")
            .await
            .expect("update");
        let (first_slug, v1) = deploy(&store, &app).await;
        let (second_slug, v2) = deploy(&store, &app).await;
        assert_eq!(v2.version, 2);
        store
            .update_config("app", &config(&[("FOO", Some("new"))]), "Set FOO", "ann")
            .await
            .expect("update");

        let v4 = store.rollback("app", 1, "bob").await.expect("rollback");
        assert_eq!(v4.version, 4);
        assert_eq!(v4.slug_id, first_slug.id);
        assert_ne!(v4.slug_id, second_slug.id);
        assert_eq!(v4.config, v1.config);
        assert_eq!(v4.description, "Rollback to v1");
        assert_eq!(v4.user, "bob");
        assert_eq!(store.app("app").await.expect("get").config, v1.config);
        assert_eq!(
            store.current_release("app").await.expect("current"),
            Some(v4)
        );
        assert_eq!(store.releases("app").await.expect("releases").len(), 4);
        assert!(matches!(
            store.rollback("app", 9, "bob").await,
            Err(StoreError::ReleaseNotFound { app, version: 9 }) if app == "app"
        ));
        assert_eq!(store.releases("app").await.expect("releases").len(), 4);
    }

    #[tokio::test]
    async fn formation_upserts_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        assert!(store.formation("app").await.expect("formation").is_empty());
        let formation = store
            .update_formation(
                "app",
                &[
                    FormationUpdate {
                        process_type: "worker".to_owned(),
                        quantity: None,
                        size: Some("performance-m".to_owned()),
                    },
                    FormationUpdate {
                        process_type: "web".to_owned(),
                        quantity: Some(3),
                        size: None,
                    },
                ],
            )
            .await
            .expect("update");
        let summary: Vec<_> = formation
            .iter()
            .map(|f| {
                (
                    f.app_id,
                    f.process_type.as_str(),
                    f.quantity,
                    f.size.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (app.id, "web", 3, "standard-1x"),
                (app.id, "worker", 0, "performance-m"),
            ]
        );
        let formation = store
            .update_formation(
                "app",
                &[FormationUpdate {
                    process_type: "web".to_owned(),
                    quantity: None,
                    size: Some("standard-2x".to_owned()),
                }],
            )
            .await
            .expect("update");
        assert_eq!(formation[0].quantity, 3, "quantity kept");
        assert_eq!(formation[0].size, "standard-2x");
        assert_eq!(formation[1].size, "performance-m", "other type untouched");
        assert_eq!(store.formation("app").await.expect("formation"), formation);
    }

    #[tokio::test]
    async fn dyno_changes_bump_only_changed_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        for host in ["h1", "h2", "h3"] {
            add_host(&store, host).await;
        }
        let a = store
            .create_app("alpha", "heroku-24")
            .await
            .expect("create");
        let b = store
            .create_app("bravo", "heroku-24")
            .await
            .expect("create");
        let mut stopped = new_dyno(a.id, "worker.1", "h3");
        stopped.desired = Desired::Stopped;
        let bumped = store
            .apply_dyno_changes(&DynoChanges {
                create: vec![
                    new_dyno(b.id, "web.1", "h1"),
                    new_dyno(a.id, "web.2", "h1"),
                    new_dyno(a.id, "web.1", "h2"),
                    stopped.clone(),
                ],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        assert_eq!(
            bumped,
            BTreeMap::from([("h1".to_owned(), 1), ("h2".to_owned(), 1)]),
            "a dyno created stopped changes no running set"
        );
        let names: Vec<_> = store
            .dynos(None)
            .await
            .expect("dynos")
            .into_iter()
            .map(|d| (d.app_id, d.name))
            .collect();
        assert_eq!(
            names,
            vec![
                (a.id, "web.1".to_owned()),
                (a.id, "web.2".to_owned()),
                (a.id, "worker.1".to_owned()),
                (b.id, "web.1".to_owned()),
            ]
        );
        assert_eq!(store.dynos(Some("bravo")).await.expect("dynos").len(), 1);

        let on_h1 = new_dyno(a.id, "web.2", "h1");
        let on_h2 = new_dyno(a.id, "web.1", "h2");
        let bumped = store
            .apply_dyno_changes(&DynoChanges {
                stop: vec![on_h1.id.clone(), "no-such-dyno".to_owned()],
                delete: vec![stopped.id.clone()],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        assert_eq!(
            bumped,
            BTreeMap::from([("h1".to_owned(), 2)]),
            "deleting a stopped dyno changes no running set"
        );
        let dynos = store.dynos(Some("alpha")).await.expect("dynos");
        assert_eq!(dynos.len(), 2, "stop keeps the row, delete removes it");
        let kept = dynos
            .iter()
            .find(|d| d.id == on_h1.id)
            .expect("stopped row");
        assert_eq!(kept.desired, Desired::Stopped);
        assert!(dynos.iter().all(|d| d.id != stopped.id));

        // Stopping again changes nothing; deleting a running dyno does.
        let bumped = store
            .apply_dyno_changes(&DynoChanges {
                stop: vec![on_h1.id.clone()],
                delete: vec![on_h2.id.clone()],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        assert_eq!(bumped, BTreeMap::from([("h2".to_owned(), 2)]));
        assert_eq!(generation(&store, "h1").await, 2);
        assert_eq!(generation(&store, "h2").await, 2);
        assert_eq!(generation(&store, "h3").await, 0);
    }

    #[tokio::test]
    async fn failed_dyno_changes_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        add_host(&store, "h1").await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let running = new_dyno(app.id, "web.1", "h1");
        store
            .apply_dyno_changes(&DynoChanges {
                create: vec![running.clone()],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        let before = store.dynos(None).await.expect("dynos");

        let result = store
            .apply_dyno_changes(&DynoChanges {
                create: vec![
                    new_dyno(app.id, "web.2", "h1"),
                    new_dyno(app.id, "web.3", "ghost"),
                ],
                stop: vec![running.id.clone()],
                delete: Vec::new(),
            })
            .await;
        assert!(matches!(result, Err(StoreError::HostNotFound(id)) if id == "ghost"));
        assert_eq!(
            store.dynos(None).await.expect("dynos"),
            before,
            "neither the stop nor the valid create happened"
        );
        assert_eq!(generation(&store, "h1").await, 1);
    }

    #[tokio::test]
    async fn report_dyno_updates_known_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        add_host(&store, "h1").await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let dyno = new_dyno(app.id, "web.1", "h1");
        store
            .apply_dyno_changes(&DynoChanges {
                create: vec![dyno.clone()],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        let changed_at = OffsetDateTime::now_utc() + TimeDuration::seconds(3);
        let report = DynoReport {
            id: dyno.id.clone(),
            state: DynoState::Crashed,
            changed_at,
            exit_status: Some(137),
            reason: "out of memory".to_owned(),
            port: Some(30001),
        };
        // Another host's agent cannot touch it.
        add_host(&store, "h2").await;
        let refused = store.report_dyno("h2", &report).await.expect("report");
        assert_eq!(refused, Reported::OtherHost("h1".to_owned()));
        assert_eq!(
            store.dynos(None).await.expect("dynos")[0].state,
            dyno.state,
            "refused report changed nothing"
        );
        let updated = store.report_dyno("h1", &report).await.expect("report");
        let Reported::Updated(updated) = updated else {
            panic!("own host's report not recorded: {updated:?}");
        };
        assert_eq!(updated.state, report.state);
        let stored = store.dynos(None).await.expect("dynos");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].state, DynoState::Crashed);
        assert_eq!(stored[0].state_changed_at, changed_at);
        assert_eq!(stored[0].exit_status, Some(137));
        assert_eq!(stored[0].reason, "out of memory");
        assert_eq!(stored[0].port, Some(30001));
        assert_eq!(stored[0].desired, Desired::Running, "desired untouched");

        let unknown = DynoReport {
            id: "app-web-9-deadbeef".to_owned(),
            ..report
        };
        assert_eq!(
            store.report_dyno("h1", &unknown).await.expect("report"),
            Reported::Unknown
        );
        assert_eq!(store.dynos(None).await.expect("dynos").len(), 1);
    }

    #[tokio::test]
    async fn host_upsert_keeps_generation_draining_first_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let first = OffsetDateTime::now_utc() - TimeDuration::minutes(5);
        let host = store
            .upsert_host(
                "h1",
                "10.0.0.1:7000",
                1 << 30,
                4,
                &["heroku-22".to_owned()],
                first,
            )
            .await
            .expect("insert");
        assert_eq!(host.generation, 0);
        assert!(!host.draining);
        assert_eq!(host.first_seen, first);
        assert_eq!(host.last_seen, first);

        let app = store.create_app("app", "heroku-24").await.expect("create");
        store
            .apply_dyno_changes(&DynoChanges {
                create: vec![new_dyno(app.id, "web.1", "h1")],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        let drained = store.set_draining("h1", true).await.expect("drain");
        assert!(drained.draining);

        let later = OffsetDateTime::now_utc();
        let stacks = vec!["heroku-22".to_owned(), "heroku-24".to_owned()];
        let host = store
            .upsert_host("h1", "10.0.0.2:7000", 2 << 30, 8, &stacks, later)
            .await
            .expect("update");
        assert_eq!(host.address, "10.0.0.2:7000");
        assert_eq!(host.memory_bytes, 2 << 30);
        assert_eq!(host.dyno_slots, 8);
        assert_eq!(host.stacks, stacks);
        assert_eq!(host.generation, 1, "generation kept");
        assert!(host.draining, "draining kept");
        assert_eq!(host.first_seen, first, "first_seen kept");
        assert_eq!(host.last_seen, later);
        assert_eq!(store.hosts().await.expect("hosts"), vec![host]);
        assert!(matches!(
            store.set_draining("nope", true).await,
            Err(StoreError::HostNotFound(id)) if id == "nope"
        ));
    }

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
                        process_type: "web".to_owned(),
                        quantity: Some(1),
                        size: None,
                    }],
                )
                .await
                .expect("formation");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![new_dyno(app.id, "web.1", "h1")],
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

    #[tokio::test]
    async fn unreadable_rows_are_reported_as_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        store.create_app("app", "heroku-24").await.expect("create");
        sqlx::query("UPDATE apps SET config = 'not json' WHERE name = 'app'")
            .execute(&store.pool)
            .await
            .expect("corrupt it");
        match store.app("app").await {
            Err(StoreError::Corrupt(message)) => {
                assert!(message.starts_with("apps.config of app:"), "{message}");
            }
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_release_phase_keeps_a_release_pending_until_it_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let (_, v1) = deploy(&store, &app).await;
        assert_eq!(
            v1.status,
            ReleaseStatus::Succeeded,
            "no release type: live at once"
        );
        // A slug with a `release` type: its release waits for the release phase.
        let build = new_build(app.id);
        store.create_build(&build).await.expect("create build");
        let mut slug = new_slug(app.id);
        slug.process_types
            .insert(RELEASE_TYPE.to_owned(), "bin/migrate".to_owned());
        let (_, v2) = store
            .finish_build(
                build.id,
                BuildOutcome::Succeeded {
                    slug,
                    description: "Deploy".to_owned(),
                },
                "ann@example.com",
            )
            .await
            .expect("finish build");
        let v2 = v2.expect("a release");
        assert_eq!(v2.status, ReleaseStatus::Pending);
        let current = store.current_release("app").await.expect("current");
        assert_eq!(current.map(|r| r.version), Some(1), "v1 serves meanwhile");
        let pending = store.pending_releases().await.expect("pending");
        assert_eq!(pending.iter().map(|r| r.version).collect::<Vec<_>>(), [2]);
        // A config change of a slug with a release phase is pending too (of v1's slug: no).
        let (_, v3) = store
            .update_config("app", &config(&[("A", Some("1"))]), "Set A", "ann")
            .await
            .expect("config");
        assert_eq!(v3.map(|r| r.status), Some(ReleaseStatus::Succeeded));
        // Failing v2 leaves v3 current; it cannot be finished twice.
        let failed = store
            .finish_release(app.id, 2, ReleaseStatus::Failed)
            .await
            .expect("finish");
        assert_eq!(failed.map(|r| r.status), Some(ReleaseStatus::Failed));
        assert!(store
            .finish_release(app.id, 2, ReleaseStatus::Succeeded)
            .await
            .expect("finish again")
            .is_none());
        assert_eq!(
            store
                .current_release("app")
                .await
                .expect("current")
                .map(|r| r.version),
            Some(3)
        );
        // A rollback to v2's slug has no release phase.
        let v4 = store.rollback("app", 2, "ann").await.expect("rollback");
        assert_eq!(v4.status, ReleaseStatus::Succeeded);
    }

    #[tokio::test]
    async fn a_one_off_keeps_its_env_and_attach_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir).await;
        add_host(&store, "h1").await;
        let app = store.create_app("app", "heroku-24").await.expect("create");
        let mut dyno = new_dyno(app.id, "run.4821", "h1");
        dyno.env = [("TERM".to_owned(), "xterm".to_owned())].into();
        dyno.attach = Some(crate::model::Attach {
            tty: true,
            cols: 120,
            rows: 40,
            secret: "s3cret".to_owned(),
        });
        store
            .apply_dyno_changes(&DynoChanges {
                create: vec![dyno.clone()],
                ..DynoChanges::default()
            })
            .await
            .expect("apply");
        let stored = store.dynos(Some("app")).await.expect("dynos");
        assert_eq!(stored, vec![dyno]);
    }
}
