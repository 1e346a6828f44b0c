//! Apps: their rows, features, timeouts and sleep, and the lookups every other aggregate
//! starts from (an app by name or id).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::App;
use crate::store::StoreError;

use super::batch::{bind_all, list, CHUNK};
use super::hosts::bump_generations;
use super::rows::{app_from_row, timestamp, to_json};
use super::SqlStore;

pub(super) async fn create_app(
    store: &SqlStore,
    name: &str,
    stack: &str,
) -> Result<App, StoreError> {
    let mut tx = store.write().await?;
    let app = insert_app(&mut tx, name, stack).await?;
    tx.commit().await?;
    Ok(app)
}

/// Inserts a new app (no config yet); a taken name is refused.
pub(super) async fn insert_app(
    conn: &mut AnyConnection,
    name: &str,
    stack: &str,
) -> Result<App, StoreError> {
    let taken = sqlx::query("SELECT 1 FROM apps WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
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
        maintenance: false,
        acm: false,
        boot_timeout: None,
        stop_timeout: None,
        created_at: now,
        updated_at: now,
    };
    sqlx::query(
        "INSERT INTO apps (id, name, stack, config, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(app.id.to_string())
    .bind(&app.name)
    .bind(&app.stack)
    .bind(to_json(&app.config)?)
    .bind(timestamp(app.created_at)?)
    .bind(timestamp(app.updated_at)?)
    .execute(conn)
    .await?;
    Ok(app)
}

pub(super) async fn set_feature(
    store: &SqlStore,
    app: &str,
    feature: &str,
    enabled: bool,
) -> Result<App, StoreError> {
    let mut tx = store.write().await?;
    let mut current = app_by_name(&mut tx, app).await?;
    if enabled {
        current.features.insert(feature.to_owned());
    } else {
        current.features.remove(feature);
    }
    current.updated_at = OffsetDateTime::now_utc();
    sqlx::query("UPDATE apps SET features = $1, updated_at = $2 WHERE id = $3")
        .bind(to_json(&current.features)?)
        .bind(timestamp(current.updated_at)?)
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(current)
}

pub(super) async fn set_timeouts(
    store: &SqlStore,
    app: &str,
    boot: Option<u32>,
    stop: Option<u32>,
) -> Result<App, StoreError> {
    let mut tx = store.write().await?;
    let mut current = app_by_name(&mut tx, app).await?;
    current.boot_timeout = boot;
    current.stop_timeout = stop;
    current.updated_at = OffsetDateTime::now_utc();
    sqlx::query(
        "UPDATE apps SET boot_timeout = $1, stop_timeout = $2, updated_at = $3 WHERE id = $4",
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

/// One of the app's flags (the schema keeps them as 0 or 1 in a column of their own).
#[derive(Debug, Clone, Copy)]
pub(super) enum Flag {
    Sleeping,
    Maintenance,
    Acm,
}

pub(super) async fn set_flag(
    store: &SqlStore,
    app: &str,
    flag: Flag,
    on: bool,
) -> Result<App, StoreError> {
    let mut tx = store.write().await?;
    let mut current = app_by_name(&mut tx, app).await?;
    let sql = match flag {
        Flag::Sleeping => {
            current.sleeping = on;
            "UPDATE apps SET sleeping = $1, updated_at = $2 WHERE id = $3"
        }
        Flag::Maintenance => {
            current.maintenance = on;
            "UPDATE apps SET maintenance = $1, updated_at = $2 WHERE id = $3"
        }
        Flag::Acm => {
            current.acm = on;
            "UPDATE apps SET acm = $1, updated_at = $2 WHERE id = $3"
        }
    };
    current.updated_at = OffsetDateTime::now_utc();
    sqlx::query(sql)
        .bind(i64::from(on))
        .bind(timestamp(current.updated_at)?)
        .bind(current.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(current)
}

pub(super) async fn buildpacks(store: &SqlStore, app: &str) -> Result<Vec<String>, StoreError> {
    let mut tx = store.read().await?;
    let current = app_by_name(&mut tx, app).await?;
    let urls =
        sqlx::query_scalar("SELECT url FROM app_buildpacks WHERE app_id = $1 ORDER BY ordinal")
            .bind(current.id.to_string())
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(urls)
}

/// Replaces the app's buildpacks with `urls`, in order, at once.
pub(super) async fn set_buildpacks(
    store: &SqlStore,
    app: &str,
    urls: &[String],
) -> Result<Vec<String>, StoreError> {
    let mut tx = store.write().await?;
    let current = app_by_name(&mut tx, app).await?;
    replace_buildpacks(&mut tx, current.id, urls).await?;
    tx.commit().await?;
    Ok(urls.to_vec())
}

/// Replaces the buildpacks of the app with `app_id`.
pub(super) async fn replace_buildpacks(
    conn: &mut AnyConnection,
    app_id: Uuid,
    urls: &[String],
) -> Result<(), StoreError> {
    let id = app_id.to_string();
    sqlx::query("DELETE FROM app_buildpacks WHERE app_id = $1")
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    for (ordinal, url) in urls.iter().enumerate() {
        sqlx::query("INSERT INTO app_buildpacks (app_id, ordinal, url) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(
                i64::try_from(ordinal)
                    .map_err(|_| StoreError::Corrupt("too many buildpacks".into()))?,
            )
            .bind(url)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(super) async fn app(store: &SqlStore, name: &str) -> Result<App, StoreError> {
    let mut tx = store.read().await?;
    let app = app_by_name(&mut tx, name).await?;
    tx.commit().await?;
    Ok(app)
}

pub(super) async fn apps(store: &SqlStore) -> Result<Vec<App>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT * FROM apps ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(app_from_row).collect()
}

pub(super) async fn apps_of(store: &SqlStore, ids: &[Uuid]) -> Result<Vec<App>, StoreError> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let mut tx = store.read().await?;
    let mut apps = Vec::new();
    for ids in ids.chunks(CHUNK) {
        let sql = format!("SELECT * FROM apps WHERE id IN ({})", list(1, ids.len()));
        for row in bind_all(&sql, ids).fetch_all(&mut *tx).await? {
            apps.push(app_from_row(&row)?);
        }
    }
    tx.commit().await?;
    apps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(apps)
}

pub(super) async fn delete_app(store: &SqlStore, name: &str) -> Result<App, StoreError> {
    let mut tx = store.write().await?;
    let app = app_by_name(&mut tx, name).await?;
    // The app's running dynos vanish with it, so their hosts' assignment sets change:
    // bump those generations too, or a set sent later under an old generation would
    // differ from the one the agent already holds under it.
    let hosts: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT host_id FROM dynos WHERE app_id = $1 AND desired = 'running'",
    )
    .bind(app.id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM apps WHERE id = $1")
        .bind(app.id.to_string())
        .execute(&mut *tx)
        .await?;
    bump_generations(&mut tx, hosts.into_iter().collect()).await?;
    tx.commit().await?;
    Ok(app)
}

/// The rows `one` selects for the app named `app` (its id bound to the one `?`), or the
/// rows `all` selects when no app is named; an unknown app is an error, not no rows.
pub(super) async fn rows_of(
    conn: &mut AnyConnection,
    app: Option<&str>,
    one: &str,
    all: &str,
) -> Result<Vec<AnyRow>, StoreError> {
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

pub(super) async fn app_by_name(conn: &mut AnyConnection, name: &str) -> Result<App, StoreError> {
    let row = sqlx::query("SELECT * FROM apps WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => app_from_row(&row),
        None => Err(StoreError::AppNotFound(name.to_owned())),
    }
}

/// The app a stored row points at; its absence means the foreign keys were bypassed.
pub(super) async fn app_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<App, StoreError> {
    let row = sqlx::query("SELECT * FROM apps WHERE id = $1")
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

pub(super) async fn set_app_config(conn: &mut AnyConnection, app: &App) -> Result<(), StoreError> {
    sqlx::query("UPDATE apps SET config = $1, updated_at = $2 WHERE id = $3")
        .bind(to_json(&app.config)?)
        .bind(timestamp(app.updated_at)?)
        .bind(app.id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn buildpacks_are_kept_in_order_replaced_cleared_and_go_with_the_app() {
        on_each_backend(
            "buildpacks_are_kept_in_order_replaced_cleared_and_go_with_the_app",
            |db| async move {
                let store = db.open().await;
                store.create_app("bp", "heroku-24").await.expect("create");
                store
                    .create_app("other", "heroku-24")
                    .await
                    .expect("create");
                assert!(store.buildpacks("bp").await.expect("none").is_empty());
                let set = vec![
                    "nodejs".to_owned(),
                    "https://example.test/bp.git#v1".to_owned(),
                ];
                assert_eq!(store.set_buildpacks("bp", &set).await.expect("set"), set);
                assert_eq!(store.buildpacks("bp").await.expect("get"), set);
                assert!(store.buildpacks("other").await.expect("other").is_empty());
                let reversed: Vec<String> = set.iter().rev().cloned().collect();
                store
                    .set_buildpacks("bp", &reversed)
                    .await
                    .expect("replace");
                assert_eq!(store.buildpacks("bp").await.expect("get"), reversed);
                store.set_buildpacks("bp", &[]).await.expect("clear");
                assert!(store.buildpacks("bp").await.expect("cleared").is_empty());
                assert!(matches!(
                    store.set_buildpacks("nope", &set).await,
                    Err(StoreError::AppNotFound(_))
                ));
                store.set_buildpacks("bp", &set).await.expect("set");
                store.delete_app("bp").await.expect("delete");
                store.create_app("bp", "heroku-24").await.expect("again");
                assert!(store.buildpacks("bp").await.expect("new app").is_empty());
            },
        )
        .await;
    }

    #[tokio::test]
    async fn apps_create_get_list_duplicate_unknown() {
        on_each_backend("apps_create_get_list_duplicate_unknown", |db| async move {
            let store = db.open().await;
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
        })
        .await;
    }

    #[tokio::test]
    async fn delete_app_removes_all_its_rows() {
        on_each_backend("delete_app_removes_all_its_rows", |db| async move {
            let store = db.open().await;
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
                        process_type: manifold_dyno::WEB.to_owned(),
                        quantity: Some(2),
                        size: None,
                    }],
                )
                .await
                .expect("formation");
            let changes = DynoChanges {
                create: vec![
                    new_dyno(&app, "web.1", "h1"),
                    new_dyno(&other, "web.1", "h1"),
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
        })
        .await;
    }
}
