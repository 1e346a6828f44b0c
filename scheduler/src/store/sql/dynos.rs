//! Formation and dynos: what the reconciler wants running, and what the agents report.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::AnyConnection;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{
    Desired, Dyno, DynoReport, DynoState, Formation, FormationUpdate, DEFAULT_SIZE,
};
use crate::store::{DynoChanges, Reported, StoreError};

use super::apps::{app_by_name, rows_of};
use super::batch::{bind_all, list, texts, tuples, CHUNK};
use super::hosts::bump_generations;
use super::rows::{
    dyno_from_row, formation_from_row, state_count_from_row, timestamp, to_json, word,
};
use super::SqlStore;

pub(super) async fn formation(store: &SqlStore, app: &str) -> Result<Vec<Formation>, StoreError> {
    let mut tx = store.read().await?;
    let app = app_by_name(&mut tx, app).await?;
    let formation = formation_of(&mut tx, app.id).await?;
    tx.commit().await?;
    Ok(formation)
}

pub(super) async fn update_formation(
    store: &SqlStore,
    app: &str,
    updates: &[FormationUpdate],
) -> Result<Vec<Formation>, StoreError> {
    let mut tx = store.write().await?;
    let app = app_by_name(&mut tx, app).await?;
    let now = OffsetDateTime::now_utc();
    for update in updates {
        let row = sqlx::query("SELECT * FROM formations WHERE app_id = $1 AND process_type = $2")
            .bind(app.id.to_string())
            .bind(&update.process_type)
            .fetch_optional(&mut *tx)
            .await?;
        let mut formation = match row {
            Some(row) => formation_from_row(&row)?,
            None => Formation {
                app_id: app.id,
                process_type: update.process_type.clone(),
                quantity: 0,
                size: DEFAULT_SIZE.to_owned(),
                updated_at: now,
            },
        };
        if let Some(quantity) = update.quantity {
            formation.quantity = quantity;
        }
        if let Some(size) = &update.size {
            formation.size.clone_from(size);
        }
        formation.updated_at = now;
        sqlx::query(
            "INSERT INTO formations (app_id, process_type, quantity, size, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (app_id, process_type) DO UPDATE
             SET quantity = excluded.quantity, size = excluded.size,
                 updated_at = excluded.updated_at",
        )
        .bind(formation.app_id.to_string())
        .bind(&formation.process_type)
        .bind(i64::from(formation.quantity))
        .bind(&formation.size)
        .bind(timestamp(formation.updated_at)?)
        .execute(&mut *tx)
        .await?;
    }
    let formation = formation_of(&mut tx, app.id).await?;
    tx.commit().await?;
    Ok(formation)
}

pub(super) async fn dynos(store: &SqlStore, app: Option<&str>) -> Result<Vec<Dyno>, StoreError> {
    let mut tx = store.read().await?;
    let rows = rows_of(
        &mut tx,
        app,
        "SELECT * FROM dynos WHERE app_id = $1 ORDER BY name, id",
        "SELECT dynos.* FROM dynos JOIN apps ON apps.id = dynos.app_id
         ORDER BY apps.name, dynos.name, dynos.id",
    )
    .await?;
    tx.commit().await?;
    rows.iter().map(dyno_from_row).collect()
}

pub(super) async fn dyno_counts(store: &SqlStore) -> Result<Vec<(DynoState, u64)>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM dynos GROUP BY state")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(state_count_from_row).collect()
}

pub(super) async fn dynos_on_hosts(
    store: &SqlStore,
    hosts: &[String],
) -> Result<Vec<Dyno>, StoreError> {
    dynos_where(store, "dynos.host_id", hosts).await
}

pub(super) async fn dynos_of_apps(
    store: &SqlStore,
    apps: &[Uuid],
) -> Result<Vec<Dyno>, StoreError> {
    let apps: Vec<String> = apps.iter().map(Uuid::to_string).collect();
    dynos_where(store, "dynos.app_id", &apps).await
}

/// The dynos whose `column` is one of `keys`, in the order of [`dynos`] (within a chunk).
async fn dynos_where(
    store: &SqlStore,
    column: &str,
    keys: &[String],
) -> Result<Vec<Dyno>, StoreError> {
    let mut tx = store.read().await?;
    let mut dynos = Vec::new();
    for keys in keys.chunks(CHUNK) {
        let sql = format!(
            "SELECT dynos.* FROM dynos JOIN apps ON apps.id = dynos.app_id
             WHERE {column} IN ({})
             ORDER BY apps.name, dynos.name, dynos.id",
            list(1, keys.len())
        );
        for row in bind_all(&sql, keys).fetch_all(&mut *tx).await? {
            dynos.push(dyno_from_row(&row)?);
        }
    }
    tx.commit().await?;
    Ok(dynos)
}

pub(super) async fn apply_dyno_changes(
    store: &SqlStore,
    changes: &DynoChanges,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut tx = store.write().await?;
    let mut changed = BTreeSet::new();
    // Stopping an already stopped (or unknown) dyno changes no host's running set.
    for ids in changes.stop.chunks(CHUNK) {
        let sql = format!(
            "UPDATE dynos SET desired = 'stopped' WHERE desired = 'running' AND id IN ({})
             RETURNING host_id",
            list(1, ids.len())
        );
        changed.extend(texts(&bind_all(&sql, ids).fetch_all(&mut *tx).await?)?);
    }
    for ids in changes.delete.chunks(CHUNK) {
        let sql = format!(
            "DELETE FROM dynos WHERE id IN ({}) RETURNING host_id, desired",
            list(1, ids.len())
        );
        for row in bind_all(&sql, ids).fetch_all(&mut *tx).await? {
            let desired: String = row.try_get("desired")?;
            if desired == word(Desired::Running) {
                changed.insert(row.try_get::<String, _>("host_id")?);
            }
        }
    }
    let hosts: BTreeSet<&str> = changes.create.iter().map(|d| d.host_id.as_str()).collect();
    let hosts: Vec<&str> = hosts.into_iter().collect();
    let mut known = BTreeSet::new();
    for ids in hosts.chunks(CHUNK) {
        let sql = format!("SELECT id FROM hosts WHERE id IN ({})", list(1, ids.len()));
        known.extend(texts(&bind_all(&sql, ids).fetch_all(&mut *tx).await?)?);
    }
    if let Some(d) = changes.create.iter().find(|d| !known.contains(&d.host_id)) {
        return Err(StoreError::HostNotFound(d.host_id.clone()));
    }
    for dynos in changes.create.chunks(CHUNK) {
        insert_dynos(&mut tx, dynos).await?;
    }
    changed.extend(
        changes
            .create
            .iter()
            .filter(|d| d.desired == Desired::Running)
            .map(|d| d.host_id.clone()),
    );
    let generations = bump_generations(&mut tx, changed).await?;
    tx.commit().await?;
    Ok(generations)
}

pub(super) async fn report_dynos(
    store: &SqlStore,
    reports: &[(String, DynoReport)],
) -> Result<Vec<Reported>, StoreError> {
    let mut tx = store.write().await?;
    let mut out = Vec::with_capacity(reports.len());
    for (host, report) in reports {
        out.push(report_in(&mut tx, host, report).await?);
    }
    tx.commit().await?;
    Ok(out)
}

/// One report, within the batch's transaction (so a later report of the same dyno in the
/// batch follows this one).
async fn report_in(
    conn: &mut AnyConnection,
    host: &str,
    report: &DynoReport,
) -> Result<Reported, StoreError> {
    let row = sqlx::query("SELECT * FROM dynos WHERE id = $1")
        .bind(&report.id)
        .fetch_optional(&mut *conn)
        .await?;
    let stored = row.as_ref().map(dyno_from_row).transpose()?;
    Ok(match stored {
        None => Reported::Unknown,
        // The owner first: another host's agent learns nothing of the dyno's state.
        Some(dyno) if dyno.host_id != host => Reported::OtherHost(dyno.host_id),
        Some(dyno) if !report.state.may_follow(dyno.state) => Reported::Stale(dyno.state),
        Some(_) => {
            let row = sqlx::query(
                "UPDATE dynos SET state = $1, state_changed_at = $2, exit_status = $3, reason = $4,
                                  port = $5
                 WHERE id = $6
                 RETURNING *",
            )
            .bind(report.state.as_str())
            .bind(timestamp(report.changed_at)?)
            .bind(report.exit_status)
            .bind(&report.reason)
            .bind(report.port.map(i64::from))
            .bind(&report.id)
            .fetch_one(&mut *conn)
            .await?;
            Reported::Updated(Box::new(dyno_from_row(&row)?))
        }
    })
}

async fn formation_of(
    conn: &mut AnyConnection,
    app_id: Uuid,
) -> Result<Vec<Formation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM formations WHERE app_id = $1 ORDER BY process_type")
        .bind(app_id.to_string())
        .fetch_all(conn)
        .await?;
    rows.iter().map(formation_from_row).collect()
}

/// Inserts the dynos in one statement (at most [`CHUNK`] of them).
async fn insert_dynos(conn: &mut AnyConnection, dynos: &[Dyno]) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO dynos (id, app_id, name, process_type, release_version, size, command,
                            host_id, desired, state, state_changed_at, exit_status, reason,
                            port, created_at, env, attach)
         VALUES {}",
        tuples(dynos.len(), 17)
    );
    let mut query = sqlx::query(&sql);
    for dyno in dynos {
        query = query
            .bind(&dyno.id)
            .bind(dyno.app_id.to_string())
            .bind(&dyno.name)
            .bind(&dyno.process_type)
            .bind(i64::from(dyno.release_version))
            .bind(&dyno.size)
            .bind(&dyno.command)
            .bind(&dyno.host_id)
            .bind(word(dyno.desired))
            .bind(dyno.state.as_str())
            .bind(timestamp(dyno.state_changed_at)?)
            .bind(dyno.exit_status)
            .bind(&dyno.reason)
            .bind(dyno.port.map(i64::from))
            .bind(timestamp(dyno.created_at)?)
            .bind(to_json(&dyno.env)?)
            .bind(dyno.attach.as_ref().map(to_json).transpose()?);
    }
    query.execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn formation_upserts_with_defaults() {
        on_each_backend("formation_upserts_with_defaults", |db| async move {
            let store = db.open().await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            assert!(store.formation("app").await.expect("formation").is_empty());
            let formation = store
                .update_formation(
                    "app",
                    &[
                        FormationUpdate {
                            process_type: "worker".to_owned(),
                            quantity: None,
                            size: Some("performance-m".to_owned()),
                        },
                        FormationUpdate {
                            process_type: manifold_dyno::WEB.to_owned(),
                            quantity: Some(3),
                            size: None,
                        },
                    ],
                )
                .await
                .expect("update");
            let summary: Vec<_> = formation
                .iter()
                .map(|f| {
                    (
                        f.app_id,
                        f.process_type.as_str(),
                        f.quantity,
                        f.size.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                summary,
                vec![
                    (app.id, "web", 3, "standard-1x"),
                    (app.id, "worker", 0, "performance-m"),
                ]
            );
            let formation = store
                .update_formation(
                    "app",
                    &[FormationUpdate {
                        process_type: manifold_dyno::WEB.to_owned(),
                        quantity: None,
                        size: Some("standard-2x".to_owned()),
                    }],
                )
                .await
                .expect("update");
            assert_eq!(formation[0].quantity, 3, "quantity kept");
            assert_eq!(formation[0].size, "standard-2x");
            assert_eq!(formation[1].size, "performance-m", "other type untouched");
            assert_eq!(store.formation("app").await.expect("formation"), formation);
        })
        .await;
    }

    #[tokio::test]
    async fn dyno_changes_bump_only_changed_hosts() {
        on_each_backend("dyno_changes_bump_only_changed_hosts", |db| async move {
            let store = db.open().await;
            for host in ["h1", "h2", "h3"] {
                add_host(&store, host).await;
            }
            let a = store
                .create_app("alpha", "heroku-24")
                .await
                .expect("create");
            let b = store
                .create_app("bravo", "heroku-24")
                .await
                .expect("create");
            let on_h1 = new_dyno(&a, "web.2", "h1");
            let on_h2 = new_dyno(&a, "web.1", "h2");
            let mut stopped = new_dyno(&a, "worker.1", "h3");
            stopped.desired = Desired::Stopped;
            let bumped = store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![
                        new_dyno(&b, "web.1", "h1"),
                        on_h1.clone(),
                        on_h2.clone(),
                        stopped.clone(),
                    ],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            assert_eq!(
                bumped,
                BTreeMap::from([("h1".to_owned(), 1), ("h2".to_owned(), 1)]),
                "a dyno created stopped changes no running set"
            );
            let names: Vec<_> = store
                .dynos(None)
                .await
                .expect("dynos")
                .into_iter()
                .map(|d| (d.app_id, d.name))
                .collect();
            assert_eq!(
                names,
                vec![
                    (a.id, "web.1".to_owned()),
                    (a.id, "web.2".to_owned()),
                    (a.id, "worker.1".to_owned()),
                    (b.id, "web.1".to_owned()),
                ]
            );
            assert_eq!(store.dynos(Some("bravo")).await.expect("dynos").len(), 1);

            let bumped = store
                .apply_dyno_changes(&DynoChanges {
                    stop: vec![on_h1.id.clone(), "no-such-dyno".to_owned()],
                    delete: vec![stopped.id.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            assert_eq!(
                bumped,
                BTreeMap::from([("h1".to_owned(), 2)]),
                "deleting a stopped dyno changes no running set"
            );
            let dynos = store.dynos(Some("alpha")).await.expect("dynos");
            assert_eq!(dynos.len(), 2, "stop keeps the row, delete removes it");
            let kept = dynos
                .iter()
                .find(|d| d.id == on_h1.id)
                .expect("stopped row");
            assert_eq!(kept.desired, Desired::Stopped);
            assert!(dynos.iter().all(|d| d.id != stopped.id));

            // Stopping again changes nothing; deleting a running dyno does.
            let bumped = store
                .apply_dyno_changes(&DynoChanges {
                    stop: vec![on_h1.id.clone()],
                    delete: vec![on_h2.id.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            assert_eq!(bumped, BTreeMap::from([("h2".to_owned(), 2)]));
            assert_eq!(generation(&store, "h1").await, 2);
            assert_eq!(generation(&store, "h2").await, 2);
            assert_eq!(generation(&store, "h3").await, 0);
        })
        .await;
    }

    #[tokio::test]
    async fn failed_dyno_changes_leave_nothing() {
        on_each_backend("failed_dyno_changes_leave_nothing", |db| async move {
            let store = db.open().await;
            add_host(&store, "h1").await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            let running = new_dyno(&app, "web.1", "h1");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![running.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            let before = store.dynos(None).await.expect("dynos");

            let result = store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![
                        new_dyno(&app, "web.2", "h1"),
                        new_dyno(&app, "web.3", "ghost"),
                    ],
                    stop: vec![running.id.clone()],
                    delete: Vec::new(),
                })
                .await;
            assert!(matches!(result, Err(StoreError::HostNotFound(id)) if id == "ghost"));
            assert_eq!(
                store.dynos(None).await.expect("dynos"),
                before,
                "neither the stop nor the valid create happened"
            );
            assert_eq!(generation(&store, "h1").await, 1);
        })
        .await;
    }

    #[tokio::test]
    async fn report_dyno_refuses_a_late_report() {
        on_each_backend("report_dyno_refuses_a_late_report", |db| async move {
            let store = db.open().await;
            add_host(&store, "h1").await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            let dyno = new_dyno(&app, "web.1", "h1");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![dyno.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            let start = OffsetDateTime::now_utc();
            let report = |state, seconds, exit_status| DynoReport {
                id: dyno.id.clone(),
                state,
                changed_at: start + TimeDuration::seconds(seconds),
                exit_status,
                reason: String::new(),
                port: Some(30001),
            };
            let up = report(DynoState::Up, 1, None);
            let down = report(DynoState::Down, 2, Some(0));
            for sent in [&up, &down, &down] {
                let reported = store.report_dyno("h1", sent).await.expect("report");
                assert!(matches!(reported, Reported::Updated(_)), "{reported:?}");
            }

            // The `up` again, delivered late: it cannot follow `down`.
            let late = store.report_dyno("h1", &up).await.expect("report");
            assert_eq!(late, Reported::Stale(DynoState::Down));
            let stored = &store.dynos(None).await.expect("dynos")[0];
            assert_eq!(
                stored.state,
                DynoState::Down,
                "the late report changed nothing"
            );
            assert_eq!(stored.state_changed_at, down.changed_at);
            assert_eq!(stored.exit_status, Some(0));

            // Another host's agent is told nothing of the dyno's state.
            add_host(&store, "h2").await;
            assert_eq!(
                store.report_dyno("h2", &up).await.expect("report"),
                Reported::OtherHost("h1".to_owned())
            );

            // A new run starts from anything.
            let restarted = store
                .report_dyno("h1", &report(DynoState::Starting, 3, None))
                .await
                .expect("report");
            let Reported::Updated(restarted) = restarted else {
                panic!("a new run refused: {restarted:?}");
            };
            assert_eq!(restarted.state, DynoState::Starting);
            assert_eq!(restarted.exit_status, None);
        })
        .await;
    }

    #[tokio::test]
    async fn dynos_are_counted_by_state_without_being_read() {
        on_each_backend(
            "dynos_are_counted_by_state_without_being_read",
            |db| async move {
                let store = db.open().await;
                assert!(store.dyno_counts().await.expect("counts").is_empty());
                add_host(&store, "h1").await;
                let app = store.create_app("app", "heroku-24").await.expect("create");
                let dynos: Vec<Dyno> = (1..=3)
                    .map(|n| new_dyno(&app, &format!("web.{n}"), "h1"))
                    .collect();
                store
                    .apply_dyno_changes(&DynoChanges {
                        create: dynos.clone(),
                        ..DynoChanges::default()
                    })
                    .await
                    .expect("apply");
                let report = DynoReport {
                    id: dynos[0].id.clone(),
                    state: DynoState::Up,
                    changed_at: OffsetDateTime::now_utc() + TimeDuration::seconds(1),
                    exit_status: None,
                    reason: String::new(),
                    port: Some(30001),
                };
                store.report_dyno("h1", &report).await.expect("report");
                let mut counts = store.dyno_counts().await.expect("counts");
                counts.sort_by_key(|(state, _)| state.as_str());
                assert_eq!(
                    counts,
                    vec![(dynos[1].state, 2), (DynoState::Up, 1)],
                    "one up, the others as placed"
                );
            },
        )
        .await;
    }

    #[tokio::test]
    async fn report_dyno_updates_known_only() {
        on_each_backend("report_dyno_updates_known_only", |db| async move {
            let store = db.open().await;
            add_host(&store, "h1").await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            let dyno = new_dyno(&app, "web.1", "h1");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![dyno.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            let changed_at = OffsetDateTime::now_utc() + TimeDuration::seconds(3);
            let report = DynoReport {
                id: dyno.id.clone(),
                state: DynoState::Crashed,
                changed_at,
                exit_status: Some(137),
                reason: "out of memory".to_owned(),
                port: Some(30001),
            };
            // Another host's agent cannot touch it.
            add_host(&store, "h2").await;
            let refused = store.report_dyno("h2", &report).await.expect("report");
            assert_eq!(refused, Reported::OtherHost("h1".to_owned()));
            assert_eq!(
                store.dynos(None).await.expect("dynos")[0].state,
                dyno.state,
                "refused report changed nothing"
            );
            let updated = store.report_dyno("h1", &report).await.expect("report");
            let Reported::Updated(updated) = updated else {
                panic!("own host's report not recorded: {updated:?}");
            };
            assert_eq!(updated.state, report.state);
            let stored = store.dynos(None).await.expect("dynos");
            assert_eq!(stored.len(), 1);
            assert_eq!(stored[0].state, DynoState::Crashed);
            assert_eq!(stored[0].state_changed_at, changed_at);
            assert_eq!(stored[0].exit_status, Some(137));
            assert_eq!(stored[0].reason, "out of memory");
            assert_eq!(stored[0].port, Some(30001));
            assert_eq!(stored[0].desired, Desired::Running, "desired untouched");

            let unknown = DynoReport {
                id: "app-web-9-deadbeef".to_owned(),
                ..report
            };
            assert_eq!(
                store.report_dyno("h1", &unknown).await.expect("report"),
                Reported::Unknown
            );
            assert_eq!(store.dynos(None).await.expect("dynos").len(), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_of_reports_is_each_one_in_order() {
        on_each_backend("a_batch_of_reports_is_each_one_in_order", |db| async move {
            let store = db.open().await;
            add_host(&store, "h1").await;
            add_host(&store, "h2").await;
            let app = store.create_app("app", "heroku-24").await.expect("create");
            let dyno = new_dyno(&app, "web.1", "h1");
            store
                .apply_dyno_changes(&DynoChanges {
                    create: vec![dyno.clone()],
                    ..DynoChanges::default()
                })
                .await
                .expect("apply");
            let start = OffsetDateTime::now_utc();
            let report = |state, seconds| DynoReport {
                id: dyno.id.clone(),
                state,
                changed_at: start + TimeDuration::seconds(seconds),
                exit_status: None,
                reason: String::new(),
                port: Some(30001),
            };
            let up = report(DynoState::Up, 1);
            let batch = [
                ("h1".to_owned(), report(DynoState::Starting, 0)),
                ("h2".to_owned(), up.clone()),
                ("h1".to_owned(), up.clone()),
                ("h1".to_owned(), report(DynoState::Down, 2)),
                // Late within the batch: it cannot follow the `down` just before it.
                ("h1".to_owned(), up.clone()),
                (
                    "h1".to_owned(),
                    DynoReport {
                        id: "app-web-9-deadbeef".to_owned(),
                        ..up.clone()
                    },
                ),
            ];
            let outcomes = store.report_dynos(&batch).await.expect("report");
            let kinds: Vec<String> = outcomes
                .iter()
                .map(|o| match o {
                    Reported::Updated(d) => format!("updated {}", d.state.as_str()),
                    other => format!("{other:?}"),
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "updated starting",
                    "OtherHost(\"h1\")",
                    "updated up",
                    "updated down",
                    "Stale(Down)",
                    "Unknown"
                ]
            );
            let stored = &store.dynos(None).await.expect("dynos")[0];
            assert_eq!(stored.state, DynoState::Down);
        })
        .await;
    }

    #[tokio::test]
    async fn changes_beyond_one_statement_apply_at_once() {
        on_each_backend(
            "changes_beyond_one_statement_apply_at_once",
            |db| async move {
                let store = db.open().await;
                add_host(&store, "h1").await;
                add_host(&store, "h2").await;
                let app = store.create_app("app", "heroku-24").await.expect("create");
                // More than one chunk of each kind.
                let n = CHUNK * 2 + 7;
                let dynos: Vec<Dyno> = (0..n)
                    .map(|i| new_dyno(&app, &format!("web.{}", i + 1), ["h1", "h2"][i % 2]))
                    .collect();
                let generations = store
                    .apply_dyno_changes(&DynoChanges {
                        create: dynos.clone(),
                        ..DynoChanges::default()
                    })
                    .await
                    .expect("apply");
                assert_eq!(
                    generations.into_iter().collect::<Vec<_>>(),
                    [("h1".to_owned(), 1), ("h2".to_owned(), 1)]
                );
                assert_eq!(store.dynos(None).await.expect("dynos").len(), n);
                let ids = |range: std::ops::Range<usize>| -> Vec<String> {
                    dynos[range].iter().map(|d| d.id.clone()).collect()
                };
                store
                    .apply_dyno_changes(&DynoChanges {
                        stop: ids(0..CHUNK + 3),
                        delete: ids(CHUNK + 3..n),
                        ..DynoChanges::default()
                    })
                    .await
                    .expect("apply");
                let left = store.dynos(None).await.expect("dynos");
                assert_eq!(left.len(), CHUNK + 3);
                assert!(left.iter().all(|d| d.desired == Desired::Stopped));

                // A placement on an unknown host is refused whole.
                let stray = new_dyno(&app, "worker.1", "nowhere");
                let err = store
                    .apply_dyno_changes(&DynoChanges {
                        create: vec![new_dyno(&app, "worker.2", "h1"), stray],
                        stop: ids(0..1),
                        ..DynoChanges::default()
                    })
                    .await
                    .expect_err("unknown host");
                assert!(
                    matches!(err, StoreError::HostNotFound(ref h) if h == "nowhere"),
                    "{err}"
                );
                assert_eq!(store.dynos(None).await.expect("dynos").len(), CHUNK + 3);
                assert_eq!(generation(&store, "h1").await, 2, "nothing more bumped");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_one_off_keeps_its_env_and_attach_settings() {
        on_each_backend(
            "a_one_off_keeps_its_env_and_attach_settings",
            |db| async move {
                let store = db.open().await;
                add_host(&store, "h1").await;
                let app = store.create_app("app", "heroku-24").await.expect("create");
                let mut dyno = new_dyno(&app, "run.4821", "h1");
                dyno.env = [("TERM".to_owned(), "xterm".to_owned())].into();
                dyno.attach = Some(crate::model::Attach {
                    tty: true,
                    cols: 120,
                    rows: 40,
                    secret: "s3cret".to_owned(),
                });
                store
                    .apply_dyno_changes(&DynoChanges {
                        create: vec![dyno.clone()],
                        ..DynoChanges::default()
                    })
                    .await
                    .expect("apply");
                let stored = store.dynos(Some("app")).await.expect("dynos");
                assert_eq!(stored, vec![dyno]);
            },
        )
        .await;
    }
}
