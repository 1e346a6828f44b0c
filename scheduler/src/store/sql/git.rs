//! The newest bundle of each app's git repository (see `crate::git::bundle`).

use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::StoreError;

use super::rows::timestamp;
use super::SqlStore;

pub(super) async fn git_bundle(store: &SqlStore, app: Uuid) -> Result<Option<String>, StoreError> {
    let mut tx = store.read().await?;
    let sha = sqlx::query_scalar("SELECT sha256 FROM git_bundles WHERE app_id = $1")
        .bind(app.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(sha)
}

pub(super) async fn set_git_bundle(
    store: &SqlStore,
    app: Uuid,
    sha256: &str,
) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM apps WHERE id = $1")
        .bind(app.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::AppNotFound(app.to_string()));
    }
    sqlx::query(
        "INSERT INTO git_bundles (app_id, sha256, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (app_id) DO UPDATE SET sha256 = excluded.sha256, updated_at = excluded.updated_at",
    )
    .bind(app.to_string())
    .bind(sha256)
    .bind(timestamp(OffsetDateTime::now_utc())?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::on_each_backend;
    use crate::store::{Store, StoreError};

    #[tokio::test]
    async fn an_apps_git_bundle_is_kept_replaced_and_goes_with_the_app() {
        on_each_backend("git_bundles", |db| async move {
            let store = db.open().await;
            let app = store.create_app("pushed", "testing").await.expect("app");
            assert_eq!(store.git_bundle(app.id).await.expect("read"), None);
            store
                .set_git_bundle(app.id, &"ab".repeat(32))
                .await
                .expect("set");
            store
                .set_git_bundle(app.id, &"cd".repeat(32))
                .await
                .expect("replace");
            assert_eq!(
                store.git_bundle(app.id).await.expect("read"),
                Some("cd".repeat(32))
            );
            let in_use = store.blobs_in_use().await.expect("in use");
            assert!(in_use.contains(&"cd".repeat(32)));
            assert!(!in_use.contains(&"ab".repeat(32)), "the old bundle may go");
            let unknown = uuid::Uuid::new_v4();
            assert!(matches!(
                store.set_git_bundle(unknown, &"ef".repeat(32)).await,
                Err(StoreError::AppNotFound(_))
            ));
            store.delete_app("pushed").await.expect("delete");
            assert_eq!(store.git_bundle(app.id).await.expect("read"), None);
            assert!(store.blobs_in_use().await.expect("in use").is_empty());
        })
        .await;
    }
}
