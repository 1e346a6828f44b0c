//! What every app wants, read for the reconciler in a constant number of set queries.
//!
//! Why its own file: the reconciler's snapshot used to take three queries per app (its
//! formation, its current release, that release's slug), 300,000 a pass at 100,000 apps.
//! Here it is four set queries whatever the number of apps (apps, formations, current
//! releases, their slugs), or four per chunk of [`CHUNK`] apps when only some are asked for
//! (the reconciler's dirty apps), all from one read snapshot, so the four agree.

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::model::{Formation, Release, Slug};
use crate::reconciler::AppDesired;
use crate::store::StoreError;

use super::batch::{list, CHUNK};
use super::rows::{app_from_row, formation_from_row, release_from_row, slug_from_row};
use super::SqlStore;

/// Each app's newest succeeded release (the current one), as a derived table `c` of
/// `(app_id, current)`; `{filter}` narrows it to some apps.
const CURRENT: &str = "(SELECT app_id, MAX(version) AS current FROM releases
                        WHERE status = 'succeeded' {filter} GROUP BY app_id) c";

/// Every app's desired state (`only`: just these apps'), ordered by app name (the order the
/// reconciler plans in). An id in `only` without an app (deleted) is simply absent.
pub(super) async fn desired(
    store: &SqlStore,
    only: Option<&[Uuid]>,
) -> Result<Vec<AppDesired>, StoreError> {
    let mut tx = store.read().await?;
    let mut out = Vec::new();
    match only {
        None => out = desired_of(&mut tx, None).await?,
        Some(ids) => {
            for chunk in ids.chunks(CHUNK) {
                out.extend(desired_of(&mut tx, Some(chunk)).await?);
            }
            out.sort_by(|a, b| a.app.name.cmp(&b.app.name));
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// The four queries, for all apps or for the apps in `ids`.
async fn desired_of(
    conn: &mut AnyConnection,
    ids: Option<&[Uuid]>,
) -> Result<Vec<AppDesired>, StoreError> {
    let (filter_apps, filter_rows) = match ids {
        None => (String::new(), String::new()),
        Some(ids) => {
            let list = list(1, ids.len());
            (
                format!("WHERE id IN ({list})"),
                format!("AND app_id IN ({list})"),
            )
        }
    };
    let current = CURRENT.replace("{filter}", &filter_rows);
    let apps = fetch(
        conn,
        &format!("SELECT * FROM apps {filter_apps} ORDER BY name"),
        ids,
    )
    .await?;
    let formations = fetch(
        conn,
        &format!(
            "SELECT * FROM formations WHERE 1 = 1 {filter_rows} ORDER BY app_id, process_type"
        ),
        ids,
    )
    .await?;
    let releases = fetch(
        conn,
        &format!(
            "SELECT r.* FROM releases r JOIN {current}
             ON c.app_id = r.app_id AND c.current = r.version"
        ),
        ids,
    )
    .await?;
    let slugs = fetch(
        conn,
        &format!(
            "SELECT * FROM slugs WHERE id IN (SELECT r.slug_id FROM releases r JOIN {current}
                                              ON c.app_id = r.app_id AND c.current = r.version)"
        ),
        ids,
    )
    .await?;

    let mut formations_of: HashMap<Uuid, Vec<Formation>> = HashMap::new();
    for row in &formations {
        let f = formation_from_row(row)?;
        formations_of.entry(f.app_id).or_default().push(f);
    }
    let slugs: HashMap<Uuid, Slug> = slugs
        .iter()
        .map(|row| slug_from_row(row).map(|s| (s.id, s)))
        .collect::<Result<_, _>>()?;
    let mut releases_of: HashMap<Uuid, Release> = HashMap::new();
    for row in &releases {
        let r = release_from_row(row)?;
        releases_of.insert(r.app_id, r);
    }
    apps.iter()
        .map(|row| {
            let app = app_from_row(row)?;
            let release = match releases_of.remove(&app.id) {
                Some(r) => {
                    let slug = slugs
                        .get(&r.slug_id)
                        .cloned()
                        .ok_or(StoreError::SlugNotFound(r.slug_id))?;
                    Some((r, slug))
                }
                None => None,
            };
            Ok(AppDesired {
                formation: formations_of.remove(&app.id).unwrap_or_default(),
                release,
                app,
            })
        })
        .collect()
}

/// Runs `sql` with the ids bound to `$1…$n` (every placeholder may appear more than once).
async fn fetch(
    conn: &mut AnyConnection,
    sql: &str,
    ids: Option<&[Uuid]>,
) -> Result<Vec<AnyRow>, StoreError> {
    let mut query = sqlx::query(sql);
    for id in ids.unwrap_or_default() {
        query = query.bind(id.to_string());
    }
    Ok(query.fetch_all(conn).await?)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::store::Store;

    /// The set queries give what the per-app reads give, for all apps and for some.
    #[tokio::test]
    async fn desired_states_match_the_per_app_reads() {
        on_each_backend("desired_states_match_the_per_app_reads", |db| async move {
            let store = db.open().await;
            let mut apps = Vec::new();
            for name in ["zeta", "alpha", "mid", "bare"] {
                apps.push(store.create_app(name, "heroku-24").await.expect("create"));
            }
            for app in &apps[..3] {
                deploy(&store, app).await;
                deploy(&store, app).await;
                store
                    .update_formation(
                        &app.name,
                        &[FormationUpdate {
                            process_type: "web".to_owned(),
                            quantity: Some(2),
                            size: None,
                        }],
                    )
                    .await
                    .expect("scale");
            }
            let all = store.desired(None).await.expect("desired");
            let names: Vec<&str> = all.iter().map(|a| a.app.name.as_str()).collect();
            assert_eq!(names, ["alpha", "bare", "mid", "zeta"], "by name");
            for want in &all {
                let name = &want.app.name;
                assert_eq!(want.app, store.app(name).await.expect("app"));
                assert_eq!(want.formation, store.formation(name).await.expect("f"));
                let current = store.current_release(name).await.expect("current");
                assert_eq!(want.release.as_ref().map(|(r, _)| r), current.as_ref());
                if let Some((r, slug)) = &want.release {
                    assert_eq!(*slug, store.slug(r.slug_id).await.expect("slug"));
                }
            }
            assert_eq!(all[3].release.as_ref().map(|(r, _)| r.version), Some(2));
            assert!(all[1].release.is_none() && all[1].formation.is_empty());

            let gone = uuid::Uuid::new_v4();
            let some = store
                .desired(Some(&[apps[0].id, apps[2].id, gone]))
                .await
                .expect("desired");
            let names: Vec<&str> = some.iter().map(|a| a.app.name.as_str()).collect();
            assert_eq!(names, ["mid", "zeta"], "just those, an unknown id skipped");
            assert_eq!(some[1].formation, all[3].formation);
        })
        .await;
    }
}

/// The snapshot's read at scale, the old way (three reads per app) against the set queries:
/// `MANIFOLD_BENCH_APPS=10000 cargo test -p manifold-scheduler --lib
/// desired_read_at_scale -- --ignored --nocapture` (BENCHMARKS.md, issue 22).
#[cfg(test)]
mod bench {
    use std::time::{Duration, Instant};

    use super::super::test_support::*;
    use crate::store::Store;

    /// Copies `template`'s app, slug, releases and formation `n` times in one transaction.
    async fn fill(store: &SqlStore, template: &App, n: usize) {
        let mut tx = store.write().await.expect("write");
        // Each statement with the values it binds: the copy's id, name and slug id, and the
        // template's id.
        let copies = [
            "INSERT INTO apps (id, name, stack, config, created_at, updated_at)
             SELECT $1, $2, stack, config, created_at, updated_at FROM apps WHERE id = $3",
            "INSERT INTO slugs (id, app_id, sha256, size, process_types, stack, buildpacks,
                                created_at)
             SELECT $2, $1, sha256, size, process_types, stack, buildpacks, created_at
             FROM slugs WHERE app_id = $3",
            "INSERT INTO releases (app_id, version, slug_id, config, description, \"user\",
                                   status, created_at)
             SELECT $1, version, $2, config, description, \"user\", status, created_at
             FROM releases WHERE app_id = $3",
            "INSERT INTO formations (app_id, process_type, quantity, size, updated_at)
             SELECT $1, process_type, quantity, size, updated_at FROM formations
             WHERE app_id = $2",
        ];
        let template = template.id.to_string();
        for i in 0..n {
            let id = uuid::Uuid::new_v4().to_string();
            let name = format!("app-{i:07}");
            let slug = uuid::Uuid::new_v4().to_string();
            let binds: [&[&str]; 4] = [
                &[&id, &name, &template],
                &[&id, &slug, &template],
                &[&id, &slug, &template],
                &[&id, &template],
            ];
            for (sql, values) in copies.iter().zip(binds) {
                values
                    .iter()
                    .fold(sqlx::query(sql), |q, v| q.bind(*v))
                    .execute(&mut *tx)
                    .await
                    .expect("copy");
            }
        }
        tx.commit().await.expect("commit");
    }

    /// The fastest of three runs of `read`.
    async fn best<F, Fut>(read: F) -> (Duration, usize)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = usize>,
    {
        let mut fastest = Duration::MAX;
        let mut apps = 0;
        for _ in 0..3 {
            let start = Instant::now();
            apps = read().await;
            fastest = fastest.min(start.elapsed());
        }
        (fastest, apps)
    }

    #[tokio::test]
    #[ignore = "a benchmark: run it on its own with --ignored --nocapture"]
    async fn desired_read_at_scale() {
        let n: usize = std::env::var("MANIFOLD_BENCH_APPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        on_each_backend("desired_read_at_scale", |db| async move {
            let store = db.open().await;
            let template = store
                .create_app("template", "heroku-24")
                .await
                .expect("app");
            deploy(&store, &template).await;
            store
                .update_formation(
                    "template",
                    &[FormationUpdate {
                        process_type: "web".to_owned(),
                        quantity: Some(10),
                        size: None,
                    }],
                )
                .await
                .expect("scale");
            fill(&store, &template, n).await;
            let (per_app, counted) = best(|| async {
                let apps = store.apps().await.expect("apps");
                for app in &apps {
                    store.formation(&app.name).await.expect("formation");
                    if let Some(r) = store.current_release(&app.name).await.expect("release") {
                        store.slug(r.slug_id).await.expect("slug");
                    }
                }
                apps.len()
            })
            .await;
            let (set, read) =
                best(|| async { store.desired(None).await.expect("desired").len() }).await;
            assert_eq!(counted, read, "both read every app");
            eprintln!(
                "{read} apps: per-app reads {per_app:?}, set queries {set:?} ({:.1}x)",
                per_app.as_secs_f64() / set.as_secs_f64()
            );
        })
        .await;
    }
}
