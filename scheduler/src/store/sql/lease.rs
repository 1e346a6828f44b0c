//! The leader's lease: one row saying which scheduler leads, in which term, until when by
//! the database's clock.
//!
//! Taking or renewing the lease runs under the write lock like any write, so it is ordered
//! with every other write: once a new holder has taken the lease, each later write of the
//! old one finds, inside its own transaction and under the same lock, that its term is
//! over ([`check_fence`]) and writes nothing. A write that passed the check cannot be
//! overtaken: the lease cannot change hands until it commits and releases the lock.
//! Resigning expires the row rather than deleting it, so terms keep counting up.

use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::Row;

use crate::store::{Fence, Leadership, StoreError};

use super::dialect::Dialect;
use super::rows::to_i64;
use super::SqlStore;

/// The lease as stored.
struct Lease {
    holder: String,
    term: u64,
    expires_at_ms: i64,
}

pub(super) async fn campaign(
    store: &SqlStore,
    holder: &str,
    address: &str,
    ttl: Duration,
) -> Result<Option<u64>, StoreError> {
    let ttl_ms = to_i64(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))?;
    let mut tx = store.write_unfenced().await?;
    let now = store.dialect.now_ms();
    let now_ms: i64 = sqlx::query_scalar(&format!("SELECT {now}"))
        .fetch_one(&mut *tx)
        .await?;
    let term = match lease(&mut tx).await? {
        None => 1,
        Some(lease) if lease.expires_at_ms <= now_ms => lease.term + 1,
        Some(lease) if lease.holder == holder => lease.term,
        Some(_) => return Ok(None),
    };
    sqlx::query(&format!(
        "INSERT INTO leader_lease (id, holder, address, term, expires_at_ms)
         VALUES (1, $1, $2, $3, {now} + $4)
         ON CONFLICT (id) DO UPDATE
         SET holder = excluded.holder, address = excluded.address, term = excluded.term,
             expires_at_ms = excluded.expires_at_ms"
    ))
    .bind(holder)
    .bind(address)
    .bind(to_i64(term)?)
    .bind(ttl_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(term))
}

pub(super) async fn cluster_id(store: &SqlStore) -> Result<String, StoreError> {
    let mut tx = store.read().await?;
    let id: String = sqlx::query("SELECT id FROM cluster_identity WHERE one = 1")
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
    tx.commit().await?;
    Ok(id)
}

pub(super) async fn leader(store: &SqlStore) -> Result<Option<Leadership>, StoreError> {
    let mut tx = store.read().await?;
    let row = sqlx::query(&format!(
        "SELECT holder, address, term FROM leader_lease
         WHERE id = 1 AND expires_at_ms > {}",
        store.dialect.now_ms()
    ))
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    row.map(|row| {
        Ok(Leadership {
            holder: row.try_get("holder")?,
            address: row.try_get("address")?,
            term: term_of(row.try_get("term")?)?,
        })
    })
    .transpose()
}

pub(super) async fn resign(store: &SqlStore, holder: &str, term: u64) -> Result<(), StoreError> {
    let mut tx = store.write_unfenced().await?;
    sqlx::query(
        "UPDATE leader_lease SET expires_at_ms = 0 WHERE id = 1 AND holder = $1 AND term = $2",
    )
    .bind(holder)
    .bind(to_i64(term)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Fails with [`StoreError::Fenced`] unless `fence`'s holder still holds the lease in its
/// term, unexpired. Runs inside a write transaction, after its write lock.
pub(super) async fn check_fence(
    conn: &mut AnyConnection,
    dialect: Dialect,
    fence: &Fence,
) -> Result<(), StoreError> {
    let held = sqlx::query(&format!(
        "SELECT 1 FROM leader_lease
         WHERE id = 1 AND holder = $1 AND term = $2 AND expires_at_ms > {}",
        dialect.now_ms()
    ))
    .bind(&fence.holder)
    .bind(to_i64(fence.term)?)
    .fetch_optional(conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced { term: fence.term }),
    }
}

async fn lease(conn: &mut AnyConnection) -> Result<Option<Lease>, StoreError> {
    let row = sqlx::query("SELECT holder, term, expires_at_ms FROM leader_lease WHERE id = 1")
        .fetch_optional(conn)
        .await?;
    row.map(|row| {
        Ok(Lease {
            holder: row.try_get("holder")?,
            term: term_of(row.try_get("term")?)?,
            expires_at_ms: row.try_get("expires_at_ms")?,
        })
    })
    .transpose()
}

fn term_of(stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|e| StoreError::Corrupt(format!("leader_lease.term: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use time::OffsetDateTime;

    use crate::model::DynoReport;
    use crate::store::sql::test_support::*;
    use crate::store::Reported;

    const LONG: Duration = Duration::from_secs(600);

    fn fence(holder: &str, term: u64) -> Option<Fence> {
        Some(Fence {
            holder: holder.to_owned(),
            term,
        })
    }

    #[tokio::test]
    async fn a_database_has_one_cluster_id_and_another_database_another() {
        let other_db = TestDb::Sqlite(tempfile::tempdir().expect("tempdir"));
        let other = other_db.open().await.cluster_id().await.expect("other id");
        on_each_backend(
            "a_database_has_one_cluster_id_and_another_database_another",
            |db| {
                let other = other.clone();
                async move {
                    // Two replicas on one database, and the same one reopened, agree.
                    let (a, b) = (db.open().await, db.open().await);
                    let id = a.cluster_id().await.expect("id");
                    assert_eq!(id.len(), 32, "{id}");
                    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
                    assert_eq!(b.cluster_id().await.expect("id"), id);
                    drop(a);
                    assert_eq!(db.open().await.cluster_id().await.expect("id"), id);
                    assert_ne!(id, other, "a new database is a new cluster");
                }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn one_holder_at_a_time_renewal_keeps_the_term_resigning_hands_over() {
        on_each_backend(
            "one_holder_at_a_time_renewal_keeps_the_term_resigning_hands_over",
            |db| async move {
                // Two replicas: two stores, two pools, one database.
                let (a, b) = (db.open().await, db.open().await);
                assert_eq!(a.leader().await.expect("leader"), None);
                assert_eq!(
                    a.campaign("a", "10.0.0.1:8750", LONG).await.expect("a"),
                    Some(1)
                );
                assert_eq!(
                    b.campaign("b", "10.0.0.2:8750", LONG).await.expect("b"),
                    None
                );
                let lead = Leadership {
                    holder: "a".to_owned(),
                    address: "10.0.0.1:8750".to_owned(),
                    term: 1,
                };
                assert_eq!(b.leader().await.expect("leader"), Some(lead.clone()));
                assert_eq!(
                    a.campaign("a", "10.0.0.1:8750", LONG).await.expect("renew"),
                    Some(1),
                    "renewal keeps the term"
                );
                // Resigning a term not held changes nothing.
                a.resign("a", 7).await.expect("resign another term");
                b.resign("b", 1).await.expect("resign as another");
                assert_eq!(b.leader().await.expect("leader"), Some(lead));
                a.resign("a", 1).await.expect("resign");
                assert_eq!(b.leader().await.expect("leader"), None, "free at once");
                assert_eq!(
                    b.campaign("b", "10.0.0.2:8750", LONG).await.expect("b"),
                    Some(2)
                );
                assert_eq!(
                    a.campaign("a", "10.0.0.1:8750", LONG).await.expect("a"),
                    None
                );
                assert_eq!(
                    a.leader()
                        .await
                        .expect("leader")
                        .map(|l| (l.holder, l.term)),
                    Some(("b".to_owned(), 2))
                );
            },
        )
        .await;
    }

    #[tokio::test]
    async fn an_expired_lease_passes_to_another_in_the_next_term() {
        on_each_backend(
            "an_expired_lease_passes_to_another_in_the_next_term",
            |db| async move {
                let (a, b) = (db.open().await, db.open().await);
                let short = Duration::from_millis(300);
                assert_eq!(a.campaign("a", "a:1", short).await.expect("a"), Some(1));
                // Taken only once the database's clock passes the expiry; polled, with a
                // deadline far beyond the lease.
                let deadline = Instant::now() + Duration::from_secs(30);
                let term = loop {
                    if let Some(term) = b.campaign("b", "b:1", LONG).await.expect("b") {
                        break term;
                    }
                    assert!(Instant::now() < deadline, "the lease never expired");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                assert_eq!(term, 2);
                assert_eq!(a.campaign("a", "a:1", short).await.expect("a"), None);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_fenced_old_leader_writes_nothing_and_the_new_one_writes() {
        on_each_backend(
            "a_fenced_old_leader_writes_nothing_and_the_new_one_writes",
            |db| async move {
                let (old, new) = (db.open().await, db.open().await);
                add_host(&old, "h1").await;
                let app = old.create_app("app", "heroku-24").await.expect("create");
                deploy(&old, &app).await;
                let dyno = new_dyno(&app, "web.1", "h1");
                old.apply_dyno_changes(&DynoChanges {
                    create: vec![dyno.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");

                assert_eq!(
                    old.campaign("old", "o:1", LONG).await.expect("old"),
                    Some(1)
                );
                old.set_fence(fence("old", 1));
                old.update_config("app", &config(&[("A", Some("1"))]), "Set A", "ann")
                    .await
                    .expect("the leader writes");
                // The old leader's lease runs out (a renewal of no length) and the new
                // one takes it.
                old.campaign("old", "o:1", Duration::ZERO)
                    .await
                    .expect("expire");
                assert_eq!(
                    new.campaign("new", "n:1", LONG).await.expect("new"),
                    Some(2)
                );
                new.set_fence(fence("new", 2));

                let before = (
                    new.app("app").await.expect("app"),
                    new.releases("app").await.expect("releases"),
                    new.dynos(None).await.expect("dynos"),
                    new.hosts().await.expect("hosts"),
                );
                let fenced = |result: Result<_, StoreError>| {
                    assert!(
                        matches!(result, Err(StoreError::Fenced { term: 1 })),
                        "{:?}",
                        result.map(|_| ())
                    );
                };
                fenced(
                    old.update_config("app", &config(&[("B", Some("2"))]), "Set B", "ann")
                        .await
                        .map(|_| ()),
                );
                fenced(
                    old.apply_dyno_changes(&DynoChanges {
                        stop: vec![dyno.id.clone()],
                        create: vec![new_dyno(&app, "web.2", "h1")],
                        ..DynoChanges::default()
                    })
                    .await
                    .map(|_| ()),
                );
                let report = DynoReport {
                    id: dyno.id.clone(),
                    state: DynoState::Crashed,
                    changed_at: OffsetDateTime::now_utc(),
                    exit_status: Some(1),
                    reason: "fenced".to_owned(),
                    port: None,
                };
                fenced(old.report_dyno("h1", &report).await.map(|_| ()));
                fenced(old.create_app("other", "heroku-24").await.map(|_| ()));
                let after = (
                    new.app("app").await.expect("app"),
                    new.releases("app").await.expect("releases"),
                    new.dynos(None).await.expect("dynos"),
                    new.hosts().await.expect("hosts"),
                );
                assert_eq!(before, after, "the fenced writes changed nothing");
                assert!(matches!(
                    new.app("other").await,
                    Err(StoreError::AppNotFound(_))
                ));
                // Reads stay open to the old leader (it serves as a follower now).
                assert_eq!(old.app("app").await.expect("read"), after.0);

                // The new leader's writes go through.
                let (app_now, release) = new
                    .update_config("app", &config(&[("B", Some("2"))]), "Set B", "ann")
                    .await
                    .expect("the new leader writes");
                assert_eq!(app_now.config.len(), 2);
                assert_eq!(release.map(|r| r.version), Some(3));
                assert!(matches!(
                    new.report_dyno("h1", &report).await.expect("report"),
                    Reported::Updated(_)
                ));
                new.apply_dyno_changes(&DynoChanges {
                    stop: vec![dyno.id.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
                // Without a fence (tools, tests) nothing is checked.
                old.set_fence(None);
                old.set_draining("h1", true).await.expect("unfenced write");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_lapsed_lease_fences_its_holder_even_with_no_successor() {
        on_each_backend(
            "a_lapsed_lease_fences_its_holder_even_with_no_successor",
            |db| async move {
                let store = db.open().await;
                store.set_fence(fence("a", 1));
                assert!(
                    matches!(
                        store.create_app("app", "heroku-24").await,
                        Err(StoreError::Fenced { term: 1 })
                    ),
                    "no lease at all"
                );
                assert_eq!(store.campaign("a", "a:1", LONG).await.expect("a"), Some(1));
                store.create_app("app", "heroku-24").await.expect("leading");
                store
                    .campaign("a", "a:1", Duration::ZERO)
                    .await
                    .expect("lapse");
                assert!(matches!(
                    store.set_sleeping("app", true).await,
                    Err(StoreError::Fenced { term: 1 })
                ));
                assert!(!store.app("app").await.expect("app").sleeping);
                // Campaigning again after a lapse is a new term: the old fence stays shut.
                assert_eq!(store.campaign("a", "a:1", LONG).await.expect("a"), Some(2));
                assert!(matches!(
                    store.set_sleeping("app", true).await,
                    Err(StoreError::Fenced { term: 1 })
                ));
                store.set_fence(fence("a", 2));
                store
                    .set_sleeping("app", true)
                    .await
                    .expect("term 2 writes");
            },
        )
        .await;
    }
}
