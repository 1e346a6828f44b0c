//! The cluster's ACME accounts, one per directory URL (`acme/account.rs` says why they are
//! kept). The credentials are a secret: stored as given, never logged.

use time::OffsetDateTime;

use crate::store::StoreError;

use super::rows::timestamp;
use super::SqlStore;

pub(super) async fn account(
    store: &SqlStore,
    directory: &str,
) -> Result<Option<String>, StoreError> {
    let mut tx = store.read().await?;
    let credentials =
        sqlx::query_scalar("SELECT credentials FROM acme_accounts WHERE directory = $1")
            .bind(directory)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(credentials)
}

pub(super) async fn save_account(
    store: &SqlStore,
    directory: &str,
    credentials: &str,
) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    sqlx::query(
        "INSERT INTO acme_accounts (directory, credentials, created_at)
         VALUES ($1, $2, $3)
         ON CONFLICT (directory) DO UPDATE
         SET credentials = excluded.credentials, created_at = excluded.created_at",
    )
    .bind(directory)
    .bind(credentials)
    .bind(timestamp(OffsetDateTime::now_utc())?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::sql::test_support::*;
    use crate::store::StoreError;

    #[tokio::test]
    async fn accounts_are_kept_by_directory_and_the_acm_flag_by_app() {
        on_each_backend(
            "accounts_are_kept_by_directory_and_the_acm_flag_by_app",
            |db| async move {
                let store = db.open().await;
                let a = "https://acme.test/dir";
                assert_eq!(store.acme_account(a).await.expect("read"), None);
                store
                    .save_acme_account(a, "{\"id\":1}")
                    .await
                    .expect("save");
                store
                    .save_acme_account("https://other.test/dir", "{\"id\":2}")
                    .await
                    .expect("save");
                store
                    .save_acme_account(a, "{\"id\":3}")
                    .await
                    .expect("replace");
                assert_eq!(
                    store.acme_account(a).await.expect("read").as_deref(),
                    Some("{\"id\":3}")
                );
                store.create_app("web", "testing").await.expect("create");
                assert!(!store.app("web").await.expect("app").acm);
                assert!(store.set_acm("web", true).await.expect("on").acm);
                assert!(store.app("web").await.expect("app").acm);
                assert!(matches!(
                    store.set_acm("nosuch", true).await,
                    Err(StoreError::AppNotFound(_))
                ));
            },
        )
        .await;
    }
}
