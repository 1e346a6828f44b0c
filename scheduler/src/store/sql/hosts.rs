//! Hosts as their agents describe themselves, and the generation of each host's
//! assignment set.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;

use crate::model::Host;
use crate::store::StoreError;

use super::batch::{bind_all, list, CHUNK};
use super::rows::{host_from_row, timestamp, to_i64, to_json};
use super::SqlStore;

pub(super) async fn upsert_host(
    store: &SqlStore,
    id: &str,
    address: &str,
    memory_bytes: u64,
    dyno_slots: u32,
    stacks: &[String],
    seen: OffsetDateTime,
) -> Result<Host, StoreError> {
    let mut tx = store.write().await?;
    let seen = timestamp(seen)?;
    let row = sqlx::query(
        "INSERT INTO hosts (id, address, memory_bytes, dyno_slots, stacks, generation,
                            draining, first_seen, last_seen)
         VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7)
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

pub(super) async fn hosts(store: &SqlStore) -> Result<Vec<Host>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT * FROM hosts ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(host_from_row).collect()
}

pub(super) async fn set_draining(
    store: &SqlStore,
    id: &str,
    draining: bool,
) -> Result<Host, StoreError> {
    let mut tx = store.write().await?;
    let row = sqlx::query("UPDATE hosts SET draining = $1 WHERE id = $2 RETURNING *")
        .bind(i64::from(draining))
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

/// Increments each host's generation once; returns the new generations.
pub(super) async fn bump_generations(
    conn: &mut AnyConnection,
    hosts: BTreeSet<String>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut generations = BTreeMap::new();
    let hosts: Vec<String> = hosts.into_iter().collect();
    for ids in hosts.chunks(CHUNK) {
        let sql = format!(
            "UPDATE hosts SET generation = generation + 1 WHERE id IN ({})
             RETURNING id, generation",
            list(1, ids.len())
        );
        for row in bind_all(&sql, ids).fetch_all(&mut *conn).await? {
            let host: String = row.try_get("id")?;
            let generation = u64::try_from(row.try_get::<i64, _>("generation")?)
                .map_err(|e| StoreError::Corrupt(format!("hosts.generation of {host}: {e}")))?;
            generations.insert(host, generation);
        }
    }
    if let Some(missing) = hosts.into_iter().find(|h| !generations.contains_key(h)) {
        return Err(StoreError::HostNotFound(missing));
    }
    Ok(generations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn host_upsert_keeps_generation_draining_first_seen() {
        on_each_backend(
            "host_upsert_keeps_generation_draining_first_seen",
            |db| async move {
                let store = db.open().await;
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
                        create: vec![new_dyno(&app, "web.1", "h1")],
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
            },
        )
        .await;
    }
}
