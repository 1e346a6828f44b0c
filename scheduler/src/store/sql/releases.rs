//! The release ledger, and config changes (which append to it once an app has a release).

use std::collections::BTreeMap;

use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use manifold_dyno::RELEASE;

use crate::model::{App, Release, ReleaseStatus};
use crate::store::StoreError;

use super::apps::{app_by_id, app_by_name, set_app_config};
use super::builds::slug_by_id;
use super::rows::{release_from_row, timestamp, to_json, word};
use super::SqlStore;

pub(super) async fn update_config(
    store: &SqlStore,
    app: &str,
    changes: &BTreeMap<String, Option<String>>,
    description: &str,
    user: &str,
) -> Result<(App, Option<Release>), StoreError> {
    let mut tx = store.write().await?;
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

pub(super) async fn releases(store: &SqlStore, app: &str) -> Result<Vec<Release>, StoreError> {
    let mut tx = store.read().await?;
    let app = app_by_name(&mut tx, app).await?;
    let rows = sqlx::query("SELECT * FROM releases WHERE app_id = $1 ORDER BY version")
        .bind(app.id.to_string())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(release_from_row).collect()
}

pub(super) async fn release(
    store: &SqlStore,
    app: &str,
    version: u32,
) -> Result<Release, StoreError> {
    let mut tx = store.read().await?;
    let release = release_by_version(&mut tx, app, version).await?;
    tx.commit().await?;
    Ok(release)
}

pub(super) async fn finish_release(
    store: &SqlStore,
    app_id: Uuid,
    version: u32,
    status: ReleaseStatus,
) -> Result<Option<Release>, StoreError> {
    let mut tx = store.write().await?;
    let row = sqlx::query(
        "UPDATE releases SET status = $1 WHERE app_id = $2 AND version = $3 AND status = 'pending'
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

pub(super) async fn pending_releases(store: &SqlStore) -> Result<Vec<Release>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT * FROM releases WHERE status = 'pending' ORDER BY version")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(release_from_row).collect()
}

pub(super) async fn current_release(
    store: &SqlStore,
    app: &str,
) -> Result<Option<Release>, StoreError> {
    let mut tx = store.read().await?;
    let app = app_by_name(&mut tx, app).await?;
    let release = current_release_of(&mut tx, app.id).await?;
    tx.commit().await?;
    Ok(release)
}

pub(super) async fn rollback(
    store: &SqlStore,
    app: &str,
    version: u32,
    user: &str,
) -> Result<Release, StoreError> {
    let mut tx = store.write().await?;
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

async fn release_by_version(
    conn: &mut AnyConnection,
    app: &str,
    version: u32,
) -> Result<Release, StoreError> {
    let app_row = app_by_name(&mut *conn, app).await?;
    let row = sqlx::query("SELECT * FROM releases WHERE app_id = $1 AND version = $2")
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

pub(super) async fn current_release_of(
    conn: &mut AnyConnection,
    app_id: Uuid,
) -> Result<Option<Release>, StoreError> {
    let row = sqlx::query(
        "SELECT * FROM releases WHERE app_id = $1 AND status = 'succeeded'
         ORDER BY version DESC LIMIT 1",
    )
    .bind(app_id.to_string())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(release_from_row).transpose()
}

/// A release to append.
pub(super) struct NewRelease<'a> {
    pub(super) app_id: Uuid,
    pub(super) slug_id: Uuid,
    pub(super) config: &'a BTreeMap<String, String>,
    pub(super) description: &'a str,
    pub(super) user: &'a str,
    pub(super) created_at: OffsetDateTime,
    pub(super) status: ReleaseStatus,
}

/// A new release of a slug is `pending` when its Procfile has a `release` type (its
/// release phase must succeed first), else `succeeded` at once.
pub(super) fn status_for(slug_process_types: &BTreeMap<String, String>) -> ReleaseStatus {
    if slug_process_types.contains_key(RELEASE) {
        ReleaseStatus::Pending
    } else {
        ReleaseStatus::Succeeded
    }
}

/// Appends to the app's ledger under the next version. The caller's transaction holds the
/// write lock, so no other writer can take the same version in between.
pub(super) async fn append_release(
    conn: &mut AnyConnection,
    new: NewRelease<'_>,
) -> Result<Release, StoreError> {
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = $1")
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
        "INSERT INTO releases (app_id, version, slug_id, config, description, \"user\", status,
                               created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn config_before_any_release_appends_none() {
        on_each_backend("config_before_any_release_appends_none", |db| async move {
            let store = db.open().await;
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
        })
        .await;
    }

    #[tokio::test]
    async fn config_after_deploy_appends_releases_with_snapshots() {
        on_each_backend(
            "config_after_deploy_appends_releases_with_snapshots",
            |db| async move {
                let store = db.open().await;
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
            },
        )
        .await;
    }

    #[tokio::test]
    async fn rollback_copies_slug_and_config() {
        on_each_backend("rollback_copies_slug_and_config", |db| async move {
            let store = db.open().await;
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
        })
        .await;
    }

    #[tokio::test]
    async fn a_release_phase_keeps_a_release_pending_until_it_ends() {
        on_each_backend(
            "a_release_phase_keeps_a_release_pending_until_it_ends",
            |db| async move {
                let store = db.open().await;
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
                    .insert(RELEASE.to_owned(), "bin/migrate".to_owned());
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
            },
        )
        .await;
    }
}
