//! Hosts as their agents describe themselves, and the generation of each host's
//! assignment set.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;

use crate::model::Host;
use crate::store::{HostHello, StoreError};

use super::batch::{bind_all, list, CHUNK};
use super::rows::{host_from_row, timestamp, to_i64, to_json};
use super::SqlStore;

pub(super) async fn upsert_hosts(
    store: &SqlStore,
    hosts: &[HostHello<'_>],
    seen: OffsetDateTime,
) -> Result<Vec<Host>, StoreError> {
    let mut tx = store.write().await?;
    let seen = timestamp(seen)?;
    let mut out = Vec::with_capacity(hosts.len());
    // One statement per host: a multi-row upsert may not touch a row twice (PostgreSQL
    // refuses it), and a redialling agent's two `Hello`s may share a batch.
    for host in hosts {
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
        .bind(host.id)
        .bind(host.address)
        .bind(to_i64(host.memory_bytes)?)
        .bind(i64::from(host.dyno_slots))
        .bind(to_json(host.stacks)?)
        .bind(&seen)
        .bind(&seen)
        .fetch_one(&mut *tx)
        .await?;
        out.push(host_from_row(&row)?);
    }
    tx.commit().await?;
    Ok(out)
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
                let old_stacks = ["heroku-22".to_owned()];
                let hello = HostHello {
                    id: "h1",
                    address: "10.0.0.1:7000",
                    memory_bytes: 1 << 30,
                    dyno_slots: 4,
                    stacks: &old_stacks,
                };
                let host = store
                    .upsert_hosts(&[hello], first)
                    .await
                    .expect("insert")
                    .remove(0);
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
                let new_hello = HostHello {
                    address: "10.0.0.2:7000",
                    memory_bytes: 2 << 30,
                    dyno_slots: 8,
                    stacks: &stacks,
                    ..hello
                };
                let other = HostHello {
                    id: "h2",
                    ..new_hello
                };
                // A batch of Hellos may name a host twice (its agent redialled): the last
                // one counts, in one transaction.
                let mut upserted = store
                    .upsert_hosts(&[hello, other, new_hello], later)
                    .await
                    .expect("update");
                assert_eq!(upserted.len(), 3);
                let h2 = upserted.remove(1);
                assert_eq!((h2.id.as_str(), h2.generation), ("h2", 0));
                let host = upserted.remove(1);
                assert_eq!(host.address, "10.0.0.2:7000");
                assert_eq!(host.memory_bytes, 2 << 30);
                assert_eq!(host.dyno_slots, 8);
                assert_eq!(host.stacks, stacks);
                assert_eq!(host.generation, 1, "generation kept");
                assert!(host.draining, "draining kept");
                assert_eq!(host.first_seen, first, "first_seen kept");
                assert_eq!(host.last_seen, later);
                assert_eq!(store.hosts().await.expect("hosts"), vec![host, h2]);
                assert!(matches!(
                    store.set_draining("nope", true).await,
                    Err(StoreError::HostNotFound(id)) if id == "nope"
                ));
            },
        )
        .await;
    }
}
