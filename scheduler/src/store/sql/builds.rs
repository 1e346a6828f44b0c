//! Builds, and the slugs they store.

use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Build, BuildStatus, Release, Slug};
use crate::store::{BuildOutcome, StoreError};

use super::apps::{app_by_id, app_by_name};
use super::releases::{append_release, status_for, NewRelease};
use super::rows::{build_from_row, slug_from_row, timestamp, to_i64, to_json, word};
use super::SqlStore;

pub(super) async fn slug(store: &SqlStore, id: Uuid) -> Result<Slug, StoreError> {
    let mut tx = store.read().await?;
    let slug = slug_by_id(&mut tx, id).await?;
    tx.commit().await?;
    Ok(slug)
}

pub(super) async fn create_build(store: &SqlStore, build: &Build) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    sqlx::query(
        "INSERT INTO builds (id, app_id, status, source_sha256, slug_id, release_version,
                             host_id, \"user\", created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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

pub(super) async fn build(store: &SqlStore, id: Uuid) -> Result<Build, StoreError> {
    let mut tx = store.read().await?;
    let build = build_by_id(&mut tx, id).await?;
    tx.commit().await?;
    Ok(build)
}

pub(super) async fn builds(store: &SqlStore, app: &str) -> Result<Vec<Build>, StoreError> {
    let mut tx = store.read().await?;
    let app = app_by_name(&mut tx, app).await?;
    let rows = sqlx::query("SELECT * FROM builds WHERE app_id = $1 ORDER BY created_at, id")
        .bind(app.id.to_string())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(build_from_row).collect()
}

pub(super) async fn blobs_in_use(
    store: &SqlStore,
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let mut tx = store.read().await?;
    let digests: Vec<String> = sqlx::query_scalar(
        "SELECT sha256 FROM slugs \
         UNION SELECT source_sha256 FROM builds WHERE status = 'pending' \
         UNION SELECT sha256 FROM git_bundles \
         UNION SELECT blob_sha256 FROM addon_backups WHERE blob_sha256 IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(digests.into_iter().collect())
}

pub(super) async fn set_build_host(
    store: &SqlStore,
    id: Uuid,
    host_id: &str,
) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    let updated = sqlx::query("UPDATE builds SET host_id = $1, updated_at = $2 WHERE id = $3")
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

pub(super) async fn finish_build(
    store: &SqlStore,
    id: Uuid,
    outcome: BuildOutcome,
    user: &str,
) -> Result<(Build, Option<Release>), StoreError> {
    let mut tx = store.write().await?;
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
        "UPDATE builds SET status = $1, slug_id = $2, release_version = $3, updated_at = $4
         WHERE id = $5",
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

async fn build_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Build, StoreError> {
    let row = sqlx::query("SELECT * FROM builds WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => build_from_row(&row),
        None => Err(StoreError::BuildNotFound(id)),
    }
}

pub(super) async fn insert_slug(conn: &mut AnyConnection, slug: &Slug) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO slugs (id, app_id, sha256, size, process_types, stack, buildpacks,
                            created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

pub(super) async fn slug_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Slug, StoreError> {
    let row = sqlx::query("SELECT * FROM slugs WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => slug_from_row(&row),
        None => Err(StoreError::SlugNotFound(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn blobs_in_use_are_slugs_and_pending_sources() {
        on_each_backend(
            "blobs_in_use_are_slugs_and_pending_sources",
            |db| async move {
                let store = db.open().await;
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
            },
        )
        .await;
    }

    #[tokio::test]
    async fn finish_build_success_stores_slug_and_release() {
        on_each_backend(
            "finish_build_success_stores_slug_and_release",
            |db| async move {
                let store = db.open().await;
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
            },
        )
        .await;
    }

    #[tokio::test]
    async fn finish_build_failure_appends_nothing() {
        on_each_backend("finish_build_failure_appends_nothing", |db| async move {
            let store = db.open().await;
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
        })
        .await;
    }
}
