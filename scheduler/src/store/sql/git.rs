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
