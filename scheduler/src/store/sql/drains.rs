//! Log drains: where an app's lines are shipped.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::LogDrain;
use crate::store::StoreError;

use super::apps::{app_by_name, rows_of};
use super::rows::{drain_from_row, timestamp};
use super::SqlStore;

pub(super) async fn add_drain(
    store: &SqlStore,
    app: &str,
    url: &str,
    token: &str,
) -> Result<LogDrain, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let taken = sqlx::query("SELECT 1 FROM log_drains WHERE app_id = $1 AND url = $2")
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
        "INSERT INTO log_drains (id, app_id, url, token, created_at) VALUES ($1, $2, $3, $4, $5)",
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

pub(super) async fn remove_drain(
    store: &SqlStore,
    app: &str,
    id_or_url: &str,
) -> Result<LogDrain, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let row = sqlx::query("SELECT * FROM log_drains WHERE app_id = $1 AND (id = $2 OR url = $3)")
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
    sqlx::query("DELETE FROM log_drains WHERE id = $1")
        .bind(drain.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(drain)
}

pub(super) async fn drains(
    store: &SqlStore,
    app: Option<&str>,
) -> Result<Vec<LogDrain>, StoreError> {
    let mut tx = store.read().await?;
    let rows = rows_of(
        &mut tx,
        app,
        "SELECT * FROM log_drains WHERE app_id = $1 ORDER BY created_at, id",
        "SELECT * FROM log_drains ORDER BY created_at, id",
    )
    .await?;
    tx.commit().await?;
    rows.iter().map(drain_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn drains_sleep_and_timeouts_are_kept() {
        on_each_backend("drains_sleep_and_timeouts_are_kept", |db| async move {
            {
                let store = db.open().await;
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
            let store = db.open().await;
            let app = store.app("logged").await.expect("app");
            assert!(app.sleeping);
            assert_eq!((app.boot_timeout, app.stop_timeout), (Some(120), None));
            store.delete_app("logged").await.expect("delete");
            assert_eq!(
                store.drains(None).await.expect("all").len(),
                1,
                "drains go with the app"
            );
        })
        .await;
    }
}
