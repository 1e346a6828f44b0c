//! Pipelines, their couplings, and promotions (which append to the targets' ledgers).

use std::collections::BTreeMap;

use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{App, Slug};
use crate::pipelines::{self, Coupling, Pipeline, PromotionError, ReviewApp, Stage};
use crate::store::{NewReviewApp, Promoted, StoreError};

use super::apps::{app_by_id, app_by_name, insert_app, replace_buildpacks, set_app_config};
use super::builds::{insert_slug, slug_by_id};
use super::releases::{append_release, current_release_of, status_for, NewRelease};
use super::rows::{
    coupling_from_row, pipeline_from_row, review_app_from_row, timestamp, to_json, word,
};
use super::SqlStore;

/// Couplings with their pipeline's and app's names.
const COUPLINGS: &str = "SELECT pipeline_couplings.*, pipelines.name AS pipeline, apps.name AS app
     FROM pipeline_couplings
     JOIN pipelines ON pipelines.id = pipeline_couplings.pipeline_id
     JOIN apps ON apps.id = pipeline_couplings.app_id";

pub(super) async fn create_pipeline(
    store: &SqlStore,
    name: &str,
    first: Option<(&str, Stage)>,
) -> Result<(Pipeline, Option<Coupling>), StoreError> {
    let mut tx = store.write().await?;
    let taken = sqlx::query("SELECT 1 FROM pipelines WHERE name = $1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(StoreError::PipelineExists(name.to_owned()));
    }
    let pipeline = Pipeline {
        id: Uuid::new_v4(),
        name: name.to_owned(),
        review_config: BTreeMap::new(),
        created_at: OffsetDateTime::now_utc(),
    };
    sqlx::query(
        "INSERT INTO pipelines (id, name, review_config, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(pipeline.id.to_string())
    .bind(&pipeline.name)
    .bind(to_json(&pipeline.review_config)?)
    .bind(timestamp(pipeline.created_at)?)
    .execute(&mut *tx)
    .await?;
    let coupling = match first {
        Some((app, stage)) => Some(insert_coupling(&mut tx, &pipeline, app, stage).await?),
        None => None,
    };
    tx.commit().await?;
    Ok((pipeline, coupling))
}

pub(super) async fn pipeline(store: &SqlStore, id_or_name: &str) -> Result<Pipeline, StoreError> {
    let mut tx = store.read().await?;
    let pipeline = pipeline_by(&mut tx, id_or_name).await?;
    tx.commit().await?;
    Ok(pipeline)
}

pub(super) async fn pipelines(store: &SqlStore) -> Result<Vec<Pipeline>, StoreError> {
    let mut tx = store.read().await?;
    let rows = sqlx::query("SELECT * FROM pipelines ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter().map(pipeline_from_row).collect()
}

/// Deletes the pipeline and its couplings; its apps stay. One with review apps is refused
/// (they would outlive it as apps no one expires).
pub(super) async fn delete_pipeline(
    store: &SqlStore,
    id_or_name: &str,
) -> Result<Pipeline, StoreError> {
    let mut tx = store.write().await?;
    let pipeline = pipeline_by(&mut tx, id_or_name).await?;
    let reviews: Vec<String> = sqlx::query_scalar(
        "SELECT apps.name FROM review_apps JOIN apps ON apps.id = review_apps.app_id
         WHERE review_apps.pipeline_id = $1 ORDER BY apps.name",
    )
    .bind(pipeline.id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    if !reviews.is_empty() {
        return Err(StoreError::PipelineHasReviewApps {
            pipeline: pipeline.name,
            apps: reviews,
        });
    }
    sqlx::query("DELETE FROM pipelines WHERE id = $1")
        .bind(pipeline.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(pipeline)
}

pub(super) async fn couple(
    store: &SqlStore,
    pipeline: &str,
    app: &str,
    stage: Stage,
) -> Result<Coupling, StoreError> {
    let mut tx = store.write().await?;
    let pipeline = pipeline_by(&mut tx, pipeline).await?;
    let coupling = insert_coupling(&mut tx, &pipeline, app, stage).await?;
    tx.commit().await?;
    Ok(coupling)
}

pub(super) async fn uncouple(store: &SqlStore, app: &str) -> Result<Coupling, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let coupling = coupling_of(&mut tx, &app_row)
        .await?
        .ok_or_else(|| StoreError::NotCoupled(app.to_owned()))?;
    sqlx::query("DELETE FROM pipeline_couplings WHERE id = $1")
        .bind(coupling.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(coupling)
}

pub(super) async fn couplings(
    store: &SqlStore,
    pipeline: Option<&str>,
) -> Result<Vec<Coupling>, StoreError> {
    let mut tx = store.read().await?;
    let rows = match pipeline {
        Some(p) => {
            let pipeline = pipeline_by(&mut tx, p).await?;
            sqlx::query(&format!(
                "{COUPLINGS} WHERE pipeline_couplings.pipeline_id = $1 ORDER BY apps.name"
            ))
            .bind(pipeline.id.to_string())
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            sqlx::query(&format!("{COUPLINGS} ORDER BY pipelines.name, apps.name"))
                .fetch_all(&mut *tx)
                .await?
        }
    };
    tx.commit().await?;
    rows.iter().map(coupling_from_row).collect()
}

pub(super) async fn set_review_config(
    store: &SqlStore,
    pipeline: &str,
    changes: &BTreeMap<String, Option<String>>,
) -> Result<Pipeline, StoreError> {
    let mut tx = store.write().await?;
    let mut pipeline = pipeline_by(&mut tx, pipeline).await?;
    for (key, value) in changes {
        match value {
            Some(value) => pipeline.review_config.insert(key.clone(), value.clone()),
            None => pipeline.review_config.remove(key),
        };
    }
    sqlx::query("UPDATE pipelines SET review_config = $1 WHERE id = $2")
        .bind(to_json(&pipeline.review_config)?)
        .bind(pipeline.id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(pipeline)
}

/// Copies `source`'s current slug to each target as a new release of it, all at once or
/// not at all. Each target gets a slug row of its own (apps own their slugs' rows, and an
/// app's deletion takes them) naming the same blob, so the checksum is the source's and
/// the blob is kept while any of the rows is.
pub(super) async fn promote(
    store: &SqlStore,
    pipeline: Option<&str>,
    source: &str,
    targets: &[String],
    user: &str,
) -> Result<Promoted, StoreError> {
    let mut tx = store.write().await?;
    let source_app = app_by_name(&mut tx, source).await?;
    for target in targets {
        app_by_name(&mut tx, target).await?;
    }
    let couplings = sqlx::query(COUPLINGS)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(coupling_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(named) = pipeline {
        let named = pipeline_by(&mut tx, named).await?;
        if let Some(c) = couplings.iter().find(|c| c.app == source) {
            if c.pipeline_id != named.id {
                return Err(PromotionError::OtherPipeline {
                    app: source.to_owned(),
                    actual: c.pipeline.clone(),
                    expected: named.name,
                }
                .into());
            }
        }
    }
    let chosen = pipelines::plan_promotion(&couplings, source, targets)?;
    let current = current_release_of(&mut tx, source_app.id)
        .await?
        .ok_or_else(|| StoreError::NoRelease {
            app: source.to_owned(),
        })?;
    let slug = slug_by_id(&mut tx, current.slug_id).await?;
    let mut apps = Vec::new();
    for coupling in &chosen {
        let app = app_by_id(&mut tx, coupling.app_id).await?;
        if app.stack != slug.stack {
            return Err(PromotionError::StackMismatch {
                from: source.to_owned(),
                target: app.name,
                target_stack: app.stack,
                slug_stack: slug.stack,
            }
            .into());
        }
        apps.push(app);
    }
    let now = OffsetDateTime::now_utc();
    let description = pipelines::description(source, current.version);
    let mut released = Vec::new();
    for app in apps {
        let copy = Slug {
            id: Uuid::new_v4(),
            app_id: app.id,
            created_at: now,
            ..slug.clone()
        };
        insert_slug(&mut tx, &copy).await?;
        let release = append_release(
            &mut tx,
            NewRelease {
                app_id: app.id,
                slug_id: copy.id,
                config: &app.config,
                description: &description,
                user,
                created_at: now,
                status: status_for(&copy.process_types),
            },
        )
        .await?;
        released.push((app, release));
    }
    let pipeline = pipeline_by(&mut tx, &chosen[0].pipeline_id.to_string()).await?;
    tx.commit().await?;
    Ok(Promoted {
        pipeline,
        source: current,
        targets: released,
    })
}

/// Review apps with their app's and pipeline's names.
const REVIEW_APPS: &str = "SELECT review_apps.*, apps.name AS app, pipelines.name AS pipeline
     FROM review_apps
     JOIN apps ON apps.id = review_apps.app_id
     JOIN pipelines ON pipelines.id = review_apps.pipeline_id";

/// Creates a review app at once: the app with its config and buildpacks, its coupling at
/// stage review, and its review app row.
pub(super) async fn create_review_app(
    store: &SqlStore,
    new: &NewReviewApp<'_>,
) -> Result<(App, ReviewApp), StoreError> {
    let mut tx = store.write().await?;
    let pipeline = pipeline_by(&mut tx, new.pipeline).await?;
    let mut app = insert_app(&mut tx, new.app, new.stack).await?;
    app.config = new.config.clone();
    set_app_config(&mut tx, &app).await?;
    replace_buildpacks(&mut tx, app.id, new.buildpacks).await?;
    insert_coupling(&mut tx, &pipeline, &app.name, Stage::Review).await?;
    let review = ReviewApp {
        app_id: app.id,
        app: app.name.clone(),
        pipeline_id: pipeline.id,
        pipeline: pipeline.name,
        branch: new.branch.to_owned(),
        expires_at: new.expires_at,
        created_at: app.created_at,
    };
    sqlx::query(
        "INSERT INTO review_apps (app_id, pipeline_id, branch, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(review.app_id.to_string())
    .bind(review.pipeline_id.to_string())
    .bind(&review.branch)
    .bind(review.expires_at.map(timestamp).transpose()?)
    .bind(timestamp(review.created_at)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((app, review))
}

pub(super) async fn review_apps(
    store: &SqlStore,
    pipeline: Option<&str>,
) -> Result<Vec<ReviewApp>, StoreError> {
    let mut tx = store.read().await?;
    let rows = match pipeline {
        Some(p) => {
            let pipeline = pipeline_by(&mut tx, p).await?;
            sqlx::query(&format!(
                "{REVIEW_APPS} WHERE review_apps.pipeline_id = $1 ORDER BY review_apps.created_at, apps.name"
            ))
            .bind(pipeline.id.to_string())
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "{REVIEW_APPS} ORDER BY review_apps.created_at, apps.name"
            ))
            .fetch_all(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    rows.iter().map(review_app_from_row).collect()
}

/// A pipeline by its id or its name.
async fn pipeline_by(conn: &mut AnyConnection, id_or_name: &str) -> Result<Pipeline, StoreError> {
    let row = sqlx::query("SELECT * FROM pipelines WHERE id = $1 OR name = $2")
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(conn)
        .await?;
    match row {
        Some(row) => pipeline_from_row(&row),
        None => Err(StoreError::PipelineNotFound(id_or_name.to_owned())),
    }
}

async fn coupling_of(conn: &mut AnyConnection, app: &App) -> Result<Option<Coupling>, StoreError> {
    let row = sqlx::query(&format!("{COUPLINGS} WHERE pipeline_couplings.app_id = $1"))
        .bind(app.id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(coupling_from_row).transpose()
}

async fn insert_coupling(
    conn: &mut AnyConnection,
    pipeline: &Pipeline,
    app: &str,
    stage: Stage,
) -> Result<Coupling, StoreError> {
    let app = app_by_name(&mut *conn, app).await?;
    if let Some(existing) = coupling_of(&mut *conn, &app).await? {
        return Err(StoreError::AppCoupled {
            app: app.name,
            pipeline: existing.pipeline,
            stage: existing.stage,
        });
    }
    let coupling = Coupling {
        id: Uuid::new_v4(),
        pipeline_id: pipeline.id,
        pipeline: pipeline.name.clone(),
        app_id: app.id,
        app: app.name,
        stage,
        created_at: OffsetDateTime::now_utc(),
    };
    sqlx::query(
        "INSERT INTO pipeline_couplings (id, pipeline_id, app_id, stage, created_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(coupling.id.to_string())
    .bind(coupling.pipeline_id.to_string())
    .bind(coupling.app_id.to_string())
    .bind(word(coupling.stage))
    .bind(timestamp(coupling.created_at)?)
    .execute(conn)
    .await?;
    Ok(coupling)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    async fn pipeline_of(store: &SqlStore) -> Pipeline {
        for app in ["shop-staging", "shop-prod", "shop-eu", "other"] {
            store.create_app(app, "heroku-24").await.expect("create");
        }
        let (pipeline, first) = store
            .create_pipeline("shop", Some(("shop-staging", Stage::Staging)))
            .await
            .expect("pipeline");
        assert_eq!(first.expect("coupled").stage, Stage::Staging);
        store
            .couple("shop", "shop-prod", Stage::Production)
            .await
            .expect("couple");
        store
            .couple(&pipeline.id.to_string(), "shop-eu", Stage::Production)
            .await
            .expect("couple by id");
        pipeline
    }

    #[tokio::test]
    async fn pipelines_couple_each_app_once_and_forget_deleted_apps() {
        on_each_backend(
            "pipelines_couple_each_app_once_and_forget_deleted_apps",
            |db| async move {
                let store = db.open().await;
                let shop = pipeline_of(&store).await;
                assert!(matches!(
                    store.create_pipeline("shop", None).await,
                    Err(StoreError::PipelineExists(_))
                ));
                // Creating with an unknown first app creates nothing.
                assert!(matches!(
                    store
                        .create_pipeline("blog", Some(("nobody", Stage::Staging)))
                        .await,
                    Err(StoreError::AppNotFound(_))
                ));
                assert!(matches!(
                    store.pipeline("blog").await,
                    Err(StoreError::PipelineNotFound(_))
                ));
                store.create_pipeline("blog", None).await.expect("blog");
                match store.couple("blog", "shop-prod", Stage::Staging).await {
                    Err(StoreError::AppCoupled {
                        pipeline, stage, ..
                    }) => assert_eq!((pipeline.as_str(), stage), ("shop", Stage::Production)),
                    other => panic!("{other:?}"),
                }
                let names = |cs: Vec<Coupling>| {
                    cs.into_iter()
                        .map(|c| format!("{}:{}:{}", c.pipeline, c.app, c.stage))
                        .collect::<Vec<_>>()
                };
                assert_eq!(
                    names(store.couplings(Some("shop")).await.expect("couplings")),
                    [
                        "shop:shop-eu:production",
                        "shop:shop-prod:production",
                        "shop:shop-staging:staging"
                    ]
                );
                assert_eq!(
                    store.pipeline(&shop.id.to_string()).await.expect("by id"),
                    shop
                );
                store.delete_app("shop-eu").await.expect("delete app");
                assert_eq!(store.couplings(None).await.expect("all").len(), 2);
                let gone = store.uncouple("shop-prod").await.expect("uncouple");
                assert_eq!(gone.stage, Stage::Production);
                assert!(matches!(
                    store.uncouple("shop-prod").await,
                    Err(StoreError::NotCoupled(_))
                ));
                let pipeline = store
                    .set_review_config("shop", &config(&[("A", Some("1")), ("B", Some("2"))]))
                    .await
                    .expect("review config");
                let pipeline = store
                    .set_review_config(&pipeline.name, &config(&[("A", None)]))
                    .await
                    .expect("review config");
                assert_eq!(
                    store.pipeline("shop").await.expect("shop").review_config,
                    pipeline.review_config
                );
                assert_eq!(pipeline.review_config.len(), 1);
                // Deleting the pipeline uncouples its apps and keeps them.
                store.delete_pipeline("shop").await.expect("delete");
                assert!(store.couplings(None).await.expect("all").is_empty());
                assert!(store.app("shop-staging").await.is_ok());
                let left: Vec<String> = store
                    .pipelines()
                    .await
                    .expect("pipelines")
                    .into_iter()
                    .map(|p| p.name)
                    .collect();
                assert_eq!(left, ["blog"]);
            },
        )
        .await;
    }

    #[tokio::test]
    async fn promotion_copies_the_current_slug_with_each_targets_config() {
        on_each_backend(
            "promotion_copies_the_current_slug_with_each_targets_config",
            |db| async move {
                let store = db.open().await;
                pipeline_of(&store).await;
                store
                    .update_config("shop-prod", &config(&[("WHO", Some("prod"))]), "Set", "ann")
                    .await
                    .expect("config");
                // No release yet: nothing to promote, nothing written.
                match store.promote(None, "shop-staging", &[], "ann").await {
                    Err(StoreError::NoRelease { app }) => assert_eq!(app, "shop-staging"),
                    other => panic!("{other:?}"),
                }
                let staging = store.app("shop-staging").await.expect("app");
                let (slug, _) = deploy(&store, &staging).await;
                store
                    .update_config(
                        "shop-staging",
                        &config(&[("WHO", Some("staging"))]),
                        "Set",
                        "ann",
                    )
                    .await
                    .expect("config");
                let promoted = store
                    .promote(Some("shop"), "shop-staging", &[], "bob")
                    .await
                    .expect("promote");
                assert_eq!(promoted.source.version, 2);
                assert_eq!(promoted.pipeline.name, "shop");
                let targets: Vec<&str> = promoted
                    .targets
                    .iter()
                    .map(|(a, _)| a.name.as_str())
                    .collect();
                assert_eq!(targets, ["shop-eu", "shop-prod"]);
                let prod = store.releases("shop-prod").await.expect("releases");
                assert_eq!(prod.len(), 1);
                assert_eq!(prod[0].description, "Promote shop-staging v2");
                assert_eq!(prod[0].user, "bob");
                assert_eq!(prod[0].config.get("WHO").map(String::as_str), Some("prod"));
                let copy = store.slug(prod[0].slug_id).await.expect("slug");
                assert_ne!(copy.id, slug.id);
                assert_eq!(copy.app_id, prod[0].app_id);
                assert_eq!(
                    (copy.sha256.as_str(), copy.size, &copy.process_types),
                    (slug.sha256.as_str(), slug.size, &slug.process_types)
                );
                // The blob is still needed once the source app is gone.
                store.delete_app("shop-staging").await.expect("delete");
                assert!(store
                    .blobs_in_use()
                    .await
                    .expect("in use")
                    .contains(&slug.sha256));
            },
        )
        .await;
    }

    #[tokio::test]
    async fn review_apps_are_made_whole_and_go_with_their_app() {
        on_each_backend(
            "review_apps_are_made_whole_and_go_with_their_app",
            |db| async move {
                let store = db.open().await;
                pipeline_of(&store).await;
                let config = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
                let buildpacks = vec!["heroku/python".to_owned()];
                let expires = OffsetDateTime::now_utc() + TimeDuration::hours(2);
                let new = NewReviewApp {
                    pipeline: "shop",
                    app: "shop-pr-x-0001",
                    stack: "heroku-24",
                    branch: "feature/x",
                    config: &config,
                    buildpacks: &buildpacks,
                    expires_at: Some(expires),
                };
                let (app, review) = store.create_review_app(&new).await.expect("create");
                assert_eq!(app.config, config);
                assert_eq!(store.buildpacks(&app.name).await.expect("bps"), buildpacks);
                assert_eq!(review.pipeline, "shop");
                let listed = store.review_apps(Some("shop")).await.expect("list");
                assert_eq!(listed.len(), 1);
                assert_eq!(listed[0].branch, "feature/x");
                assert_eq!(
                    listed[0].expires_at.map(|t| t.unix_timestamp()),
                    Some(expires.unix_timestamp())
                );
                let coupling = store.couplings(Some("shop")).await.expect("couplings");
                assert!(coupling
                    .iter()
                    .any(|c| c.app == app.name && c.stage == Stage::Review));
                // A taken name or an unknown pipeline makes nothing.
                assert!(matches!(
                    store.create_review_app(&new).await,
                    Err(StoreError::AppExists(_))
                ));
                let elsewhere = NewReviewApp {
                    pipeline: "nope",
                    app: "nope-pr-x-0002",
                    ..new
                };
                assert!(matches!(
                    store.create_review_app(&elsewhere).await,
                    Err(StoreError::PipelineNotFound(_))
                ));
                assert!(store.app("nope-pr-x-0002").await.is_err());
                store.delete_app(&app.name).await.expect("delete");
                assert!(store.review_apps(None).await.expect("list").is_empty());
                // A pipeline with a review app cannot go (the app would be orphaned).
                let again = NewReviewApp {
                    app: "shop-pr-x-0003",
                    ..new
                };
                store.create_review_app(&again).await.expect("create");
                match store.delete_pipeline("shop").await {
                    Err(StoreError::PipelineHasReviewApps { apps, .. }) => {
                        assert_eq!(apps, ["shop-pr-x-0003"])
                    }
                    other => panic!("{other:?}"),
                }
                store.delete_app("shop-pr-x-0003").await.expect("delete");
                store.delete_pipeline("shop").await.expect("then it goes");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn refused_promotions_change_nothing() {
        on_each_backend("refused_promotions_change_nothing", |db| async move {
            let store = db.open().await;
            pipeline_of(&store).await;
            let staging = store.app("shop-staging").await.expect("app");
            deploy(&store, &staging).await;
            store
                .create_app("odd-stack", "other-stack")
                .await
                .expect("odd");
            store
                .couple("shop", "odd-stack", Stage::Production)
                .await
                .expect("couple");
            store.create_pipeline("blog", None).await.expect("blog");
            let t = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let refused = [
                store
                    .promote(None, "shop-staging", &t(&["nobody"]), "ann")
                    .await,
                store
                    .promote(None, "shop-staging", &t(&["other"]), "ann")
                    .await,
                store
                    .promote(None, "shop-prod", &t(&["shop-staging"]), "ann")
                    .await,
                store
                    .promote(Some("blog"), "shop-staging", &[], "ann")
                    .await,
                store
                    .promote(Some("nope"), "shop-staging", &[], "ann")
                    .await,
                // The default targets include the app on another stack: none is promoted.
                store.promote(None, "shop-staging", &[], "ann").await,
            ];
            let said: Vec<String> = refused
                .into_iter()
                .map(|r| r.expect_err("refused").to_string())
                .collect();
            let expected = [
                "app nobody not found",
                "other is not in a pipeline",
                "is not downstream of shop-prod",
                "shop-staging is in pipeline shop, not blog",
                "pipeline nope not found",
                "odd-stack is on stack other-stack",
            ];
            for (said, expected) in said.iter().zip(expected) {
                assert!(said.contains(expected), "{said:?} should say {expected:?}");
            }
            for app in ["shop-prod", "shop-eu", "odd-stack", "other"] {
                assert!(
                    store.releases(app).await.expect("releases").is_empty(),
                    "{app}"
                );
            }
        })
        .await;
    }
}
