//! Add-ons, their attachments to apps and their backups (see [`crate::addons`]).

use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::addons::model::{Addon, AddonState, Attachment, Backup};
use crate::store::{AddonStore, StoreError};

use super::apps::app_by_name;
use super::hosts::bump_generations;
use super::rows::{addon_from_row, attachment_from_row, backup_from_row, timestamp, to_i64};
use super::SqlStore;

/// Add-ons with their owning app's name.
const ADDONS: &str =
    "SELECT addons.*, apps.name AS app FROM addons LEFT JOIN apps ON apps.id = addons.app_id";

/// Attachments with their add-on's and app's names.
const ATTACHMENTS: &str = "SELECT addon_attachments.*, addons.name AS addon, apps.name AS app \
     FROM addon_attachments \
     JOIN addons ON addons.id = addon_attachments.addon_id \
     JOIN apps ON apps.id = addon_attachments.app_id";

async fn addon_by(conn: &mut AnyConnection, id_or_name: &str) -> Result<Addon, StoreError> {
    let row = sqlx::query(&format!(
        "{ADDONS} WHERE addons.id = $1 OR addons.name = $1"
    ))
    .bind(id_or_name)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => addon_from_row(&row),
        None => Err(StoreError::AddonNotFound(id_or_name.to_owned())),
    }
}

async fn attachment_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Attachment, StoreError> {
    let row = sqlx::query(&format!("{ATTACHMENTS} WHERE addon_attachments.id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => attachment_from_row(&row),
        None => Err(StoreError::AttachmentNotFound(id.to_string())),
    }
}

/// Inserts an attachment of `addon` to the app named `app`, refusing a name it has.
async fn insert_attachment(
    conn: &mut AnyConnection,
    addon: Uuid,
    app: &str,
    name: &str,
) -> Result<Attachment, StoreError> {
    let app = app_by_name(&mut *conn, app).await?;
    let taken = sqlx::query("SELECT id FROM addon_attachments WHERE app_id = $1 AND name = $2")
        .bind(app.id.to_string())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if taken.is_some() {
        return Err(StoreError::AttachmentExists {
            app: app.name,
            name: name.to_owned(),
        });
    }
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO addon_attachments (id, addon_id, app_id, name, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(addon.to_string())
    .bind(app.id.to_string())
    .bind(name)
    .bind(timestamp(OffsetDateTime::now_utc())?)
    .execute(&mut *conn)
    .await?;
    attachment_by_id(conn, id).await
}

async fn create_addon(
    store: &SqlStore,
    addon: &Addon,
    attachment: &str,
) -> Result<(Addon, Attachment), StoreError> {
    let mut tx = store.write().await?;
    let owner = app_by_name(&mut tx, addon.app.as_deref().unwrap_or_default()).await?;
    sqlx::query(
        "INSERT INTO addons (id, name, kind, plan, app_id, host_id, port, \"user\", password,
             database, state, reason, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(addon.id.to_string())
    .bind(&addon.name)
    .bind(addon.kind.as_str())
    .bind(&addon.plan)
    .bind(owner.id.to_string())
    .bind(&addon.host_id)
    .bind(addon.port.map(i64::from))
    .bind(&addon.user)
    .bind(&addon.password)
    .bind(&addon.database)
    .bind(addon.state.as_str())
    .bind(&addon.reason)
    .bind(timestamp(addon.created_at)?)
    .execute(&mut *tx)
    .await?;
    let attached = insert_attachment(&mut tx, addon.id, &owner.name, attachment).await?;
    // The host's set of services changed: a new generation (as for its dynos).
    bump_generations(&mut tx, [addon.host_id.clone()].into()).await?;
    let stored = addon_by(&mut tx, &addon.id.to_string()).await?;
    tx.commit().await?;
    Ok((stored, attached))
}

async fn addon(store: &SqlStore, id_or_name: &str) -> Result<Addon, StoreError> {
    let mut tx = store.read().await?;
    let addon = addon_by(&mut tx, id_or_name).await?;
    tx.commit().await?;
    Ok(addon)
}

async fn addons(store: &SqlStore, app: Option<&str>) -> Result<Vec<Addon>, StoreError> {
    let mut tx = store.read().await?;
    let rows = match app {
        Some(name) => {
            let app = app_by_name(&mut tx, name).await?;
            sqlx::query(&format!(
                "{ADDONS} WHERE addons.id IN \
                 (SELECT addon_id FROM addon_attachments WHERE app_id = $1) \
                 ORDER BY addons.name"
            ))
            .bind(app.id.to_string())
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            sqlx::query(&format!("{ADDONS} ORDER BY addons.name"))
                .fetch_all(&mut *tx)
                .await?
        }
    };
    tx.commit().await?;
    rows.iter().map(addon_from_row).collect()
}

async fn set_addon_state(
    store: &SqlStore,
    id: Uuid,
    state: AddonState,
    reason: &str,
    port: Option<u16>,
) -> Result<Option<Addon>, StoreError> {
    let mut tx = store.write().await?;
    let Ok(before) = addon_by(&mut tx, &id.to_string()).await else {
        return Ok(None);
    };
    let updated = sqlx::query(
        "UPDATE addons SET state = $1, reason = $2, port = COALESCE(port, $3) WHERE id = $4",
    )
    .bind(state.as_str())
    .bind(reason)
    .bind(port.map(i64::from))
    .bind(id.to_string())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    let addon = addon_by(&mut tx, &id.to_string()).await?;
    if before.port != addon.port {
        // The port is in the host's `Service`: its set changed.
        bump_generations(&mut tx, [addon.host_id.clone()].into()).await?;
    }
    tx.commit().await?;
    Ok(Some(addon))
}

async fn destroy_addon(store: &SqlStore, id: Uuid) -> Result<(Addon, Vec<Attachment>), StoreError> {
    let mut tx = store.write().await?;
    let rows = sqlx::query(&format!(
        "{ATTACHMENTS} WHERE addon_attachments.addon_id = $1 ORDER BY apps.name, addon_attachments.name"
    ))
    .bind(id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    let attachments = rows
        .iter()
        .map(attachment_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query("DELETE FROM addon_attachments WHERE addon_id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let updated = sqlx::query("UPDATE addons SET state = $1, reason = '' WHERE id = $2")
        .bind(AddonState::Destroying.as_str())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::AddonNotFound(id.to_string()));
    }
    let addon = addon_by(&mut tx, &id.to_string()).await?;
    bump_generations(&mut tx, [addon.host_id.clone()].into()).await?;
    tx.commit().await?;
    Ok((addon, attachments))
}

async fn delete_addon(store: &SqlStore, id: Uuid) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    let host: Option<String> =
        sqlx::query_scalar("DELETE FROM addons WHERE id = $1 RETURNING host_id")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
    // It leaves the host's `destroyed_services`.
    bump_generations(&mut tx, host.into_iter().collect()).await?;
    tx.commit().await?;
    Ok(())
}

async fn attach_addon(
    store: &SqlStore,
    addon: Uuid,
    app: &str,
    name: &str,
) -> Result<Attachment, StoreError> {
    let mut tx = store.write().await?;
    let target = addon_by(&mut tx, &addon.to_string()).await?;
    if target.state == AddonState::Destroying {
        return Err(StoreError::AddonNotFound(target.name));
    }
    let attached = insert_attachment(&mut tx, addon, app, name).await?;
    tx.commit().await?;
    Ok(attached)
}

async fn detach_addon(store: &SqlStore, id: Uuid) -> Result<Attachment, StoreError> {
    let mut tx = store.write().await?;
    let attachment = attachment_by_id(&mut tx, id).await?;
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM addon_attachments WHERE addon_id = $1")
            .bind(attachment.addon_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
    if count <= 1 {
        return Err(StoreError::LastAttachment {
            addon: attachment.addon,
            attachment: attachment.name,
        });
    }
    sqlx::query("DELETE FROM addon_attachments WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(attachment)
}

async fn attachments(store: &SqlStore, app: Option<&str>) -> Result<Vec<Attachment>, StoreError> {
    let mut tx = store.read().await?;
    let order = "ORDER BY apps.name, addon_attachments.name";
    let rows = super::apps::rows_of(
        &mut tx,
        app,
        &format!("{ATTACHMENTS} WHERE addon_attachments.app_id = $1 {order}"),
        &format!("{ATTACHMENTS} {order}"),
    )
    .await?;
    tx.commit().await?;
    rows.iter().map(attachment_from_row).collect()
}

async fn add_backup(store: &SqlStore, backup: &Backup) -> Result<Backup, StoreError> {
    let mut tx = store.write().await?;
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(number) FROM addon_backups WHERE addon_id = $1")
            .bind(backup.addon_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
    let number = last.unwrap_or(0) + 1;
    sqlx::query(
        "INSERT INTO addon_backups (id, addon_id, number, blob_sha256, size, state, reason,
             created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(backup.id.to_string())
    .bind(backup.addon_id.to_string())
    .bind(number)
    .bind(backup.blob_sha256.as_deref())
    .bind(to_i64(backup.size)?)
    .bind(backup.state.as_str())
    .bind(&backup.reason)
    .bind(timestamp(backup.created_at)?)
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query("SELECT * FROM addon_backups WHERE id = $1")
        .bind(backup.id.to_string())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    backup_from_row(&row)
}

async fn backups(store: &SqlStore, addon: Uuid) -> Result<Vec<Backup>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT * FROM addon_backups WHERE addon_id = $1 ORDER BY number")
        .bind(addon.to_string())
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(backup_from_row).collect()
}

/// Each operation is one transaction (see the parent module).
#[async_trait::async_trait]
impl AddonStore for SqlStore {
    async fn create_addon(
        &self,
        addon: &Addon,
        attachment: &str,
    ) -> Result<(Addon, Attachment), StoreError> {
        create_addon(self, addon, attachment).await
    }

    async fn addon(&self, id_or_name: &str) -> Result<Addon, StoreError> {
        addon(self, id_or_name).await
    }

    async fn addons(&self, app: Option<&str>) -> Result<Vec<Addon>, StoreError> {
        addons(self, app).await
    }

    async fn set_addon_state(
        &self,
        id: Uuid,
        state: AddonState,
        reason: &str,
        port: Option<u16>,
    ) -> Result<Option<Addon>, StoreError> {
        set_addon_state(self, id, state, reason, port).await
    }

    async fn destroy_addon(&self, id: Uuid) -> Result<(Addon, Vec<Attachment>), StoreError> {
        destroy_addon(self, id).await
    }

    async fn delete_addon(&self, id: Uuid) -> Result<(), StoreError> {
        delete_addon(self, id).await
    }

    async fn attach_addon(
        &self,
        addon: Uuid,
        app: &str,
        name: &str,
    ) -> Result<Attachment, StoreError> {
        attach_addon(self, addon, app, name).await
    }

    async fn detach_addon(&self, id: Uuid) -> Result<Attachment, StoreError> {
        detach_addon(self, id).await
    }

    async fn attachments(&self, app: Option<&str>) -> Result<Vec<Attachment>, StoreError> {
        attachments(self, app).await
    }

    async fn add_backup(&self, backup: &Backup) -> Result<Backup, StoreError> {
        add_backup(self, backup).await
    }

    async fn backups(&self, addon: Uuid) -> Result<Vec<Backup>, StoreError> {
        backups(self, addon).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addons::model::{AddonKind, BackupState};
    use crate::store::sql::test_support::*;

    fn new_addon(app: &str, host: &str, name: &str) -> Addon {
        Addon {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            kind: AddonKind::Postgresql,
            plan: "heroku-postgresql".to_owned(),
            app_id: None,
            app: Some(app.to_owned()),
            host_id: host.to_owned(),
            port: None,
            user: "u1".to_owned(),
            password: "p1".to_owned(),
            database: "d1".to_owned(),
            state: AddonState::Provisioning,
            reason: String::new(),
            created_at: OffsetDateTime::now_utc(),
        }
    }

    #[tokio::test]
    async fn addons_attach_keep_their_port_and_are_forgotten_once_destroyed() {
        on_each_backend(
            "addons_attach_keep_their_port_and_are_forgotten_once_destroyed",
            |db| async move {
                let store = db.open().await;
                let demo = store.create_app("demo", "testing").await.expect("create");
                store.create_app("other", "testing").await.expect("create");
                add_host(&store, "h1").await;
                let before = generation(&store, "h1").await;
                let addon = new_addon("demo", "h1", "postgresql-curved-12345");
                let (stored, attached) = store
                    .create_addon(&addon, "DATABASE")
                    .await
                    .expect("create");
                assert_eq!(stored.app_id, Some(demo.id));
                assert_eq!(
                    (stored.port, stored.state),
                    (None, AddonState::Provisioning)
                );
                assert_eq!(attached.config_var(), "DATABASE_URL");
                assert_eq!(attached.addon, "postgresql-curved-12345");
                assert!(
                    generation(&store, "h1").await > before,
                    "the host's set changed"
                );
                let unknown = store
                    .create_addon(&new_addon("nope", "h1", "postgresql-x-1"), "DATABASE")
                    .await;
                assert!(
                    matches!(unknown, Err(StoreError::AppNotFound(_))),
                    "{unknown:?}"
                );
                assert_eq!(
                    store.addons(None).await.expect("all").len(),
                    1,
                    "nothing half-made"
                );

                // By name or id.
                assert_eq!(store.addon(&stored.name).await.expect("by name"), stored);
                assert_eq!(
                    store.addon(&stored.id.to_string()).await.expect("by id"),
                    stored
                );
                assert!(matches!(
                    store.addon("postgresql-none-1").await,
                    Err(StoreError::AddonNotFound(_))
                ));

                // The first port reported is kept for life.
                let up = store
                    .set_addon_state(stored.id, AddonState::Available, "", Some(40001))
                    .await
                    .expect("up")
                    .expect("exists");
                assert_eq!(up.port, Some(40001));
                let later = store
                    .set_addon_state(stored.id, AddonState::Crashed, "oom", Some(40002))
                    .await
                    .expect("crash")
                    .expect("exists");
                assert_eq!((later.port, later.reason.as_str()), (Some(40001), "oom"));
                assert!(store
                    .set_addon_state(Uuid::new_v4(), AddonState::Available, "", None)
                    .await
                    .expect("unknown")
                    .is_none());

                // Shared with another app; one name per app.
                let shared = store
                    .attach_addon(stored.id, "other", "SHARED")
                    .await
                    .expect("attach");
                let clash = store.attach_addon(stored.id, "other", "SHARED").await;
                assert!(
                    matches!(clash, Err(StoreError::AttachmentExists { .. })),
                    "{clash:?}"
                );
                let names: Vec<String> = store
                    .addons(Some("other"))
                    .await
                    .expect("other's")
                    .into_iter()
                    .map(|a| a.name)
                    .collect();
                assert_eq!(names, ["postgresql-curved-12345"]);
                assert_eq!(store.attachments(None).await.expect("all").len(), 2);
                assert_eq!(store.detach_addon(shared.id).await.expect("detach"), shared);
                let last = store.detach_addon(attached.id).await;
                assert!(
                    matches!(last, Err(StoreError::LastAttachment { .. })),
                    "{last:?}"
                );

                // Backups are numbered within the add-on and keep their blobs.
                for (sha, state) in [
                    (Some("ab".repeat(32)), BackupState::Completed),
                    (None, BackupState::Failed),
                ] {
                    let backup = Backup {
                        id: Uuid::new_v4(),
                        addon_id: stored.id,
                        number: 0,
                        blob_sha256: sha,
                        size: 10,
                        state,
                        reason: String::new(),
                        created_at: OffsetDateTime::now_utc(),
                    };
                    store.add_backup(&backup).await.expect("backup");
                }
                let backups = store.backups(stored.id).await.expect("backups");
                let names: Vec<String> = backups.iter().map(Backup::name).collect();
                assert_eq!(names, ["b001", "b002"]);
                assert!(store
                    .blobs_in_use()
                    .await
                    .expect("in use")
                    .contains(&"ab".repeat(32)));

                // Destroyed: detached at once, forgotten with its backups when gone.
                let (destroying, was) = store.destroy_addon(stored.id).await.expect("destroy");
                assert_eq!(destroying.state, AddonState::Destroying);
                assert_eq!(was.len(), 1);
                assert!(store.attachments(None).await.expect("none").is_empty());
                store.delete_addon(stored.id).await.expect("delete");
                assert!(store.addons(None).await.expect("none").is_empty());
                assert!(store.backups(stored.id).await.expect("none").is_empty());
                assert!(store.blobs_in_use().await.expect("in use").is_empty());
            },
        )
        .await;
    }

    #[tokio::test]
    async fn an_addon_outlives_its_deleted_owner_until_destroyed() {
        on_each_backend(
            "an_addon_outlives_its_deleted_owner_until_destroyed",
            |db| async move {
                let store = db.open().await;
                store.create_app("demo", "testing").await.expect("create");
                add_host(&store, "h1").await;
                let (stored, _) = store
                    .create_addon(&new_addon("demo", "h1", "redis-round-10000"), "REDIS")
                    .await
                    .expect("create");
                store.delete_app("demo").await.expect("delete app");
                let kept = store.addon(&stored.name).await.expect("kept");
                assert_eq!((kept.app_id, kept.app), (None, None));
                assert!(store.attachments(None).await.expect("none").is_empty());
            },
        )
        .await;
    }
}
