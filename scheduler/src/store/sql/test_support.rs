//! What the store's unit tests share: a store on each database (an SQLite file in a temp
//! dir, then a throwaway PostgreSQL server), the rows they fill it with, and the names they
//! all use.

use std::collections::BTreeMap;
use std::future::Future;

use manifold_test_support::postgres::Postgres;
use tempfile::TempDir;
use time::OffsetDateTime;
use uuid::Uuid;

pub(super) use time::Duration as TimeDuration;

pub(super) use crate::model::{
    App, Build, BuildStatus, Dyno, DynoState, FormationUpdate, Host, Release, ReleaseStatus, Slug,
    DEFAULT_SIZE,
};
pub(super) use crate::store::{BuildOutcome, DynoChanges, Store};

pub(super) use super::{Database, SqlStore};

/// The database of one run of a test, removed when dropped.
pub(super) enum TestDb {
    Sqlite(TempDir),
    Postgres(Postgres),
}

impl TestDb {
    pub(super) fn database(&self) -> Database {
        match self {
            TestDb::Sqlite(dir) => Database::Sqlite(dir.path().join("manifold.db")),
            TestDb::Postgres(server) => Database::Postgres(server.url()),
        }
    }

    /// A store on the database: each call a new one (a new pool), as another scheduler
    /// replica, or the same scheduler restarted, would open it.
    pub(super) async fn open(&self) -> SqlStore {
        SqlStore::open(&self.database()).await.expect("open store")
    }
}

/// Runs `test` on a fresh SQLite store, then on a fresh PostgreSQL one (PostgreSQL needs
/// root and Debian's server: CI must have both, elsewhere that half skips loudly).
pub(super) async fn on_each_backend<F, Fut>(name: &str, test: F)
where
    F: Fn(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    eprintln!("{name}: on SQLite");
    test(TestDb::Sqlite(tempfile::tempdir().expect("tempdir"))).await;
    if let Some(server) = Postgres::start(name) {
        eprintln!("{name}: on PostgreSQL");
        test(TestDb::Postgres(server)).await;
    }
}

pub(super) fn config(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
        .collect()
}

pub(super) fn new_slug(app_id: Uuid) -> Slug {
    Slug {
        id: Uuid::new_v4(),
        app_id,
        sha256: "ab".repeat(32),
        size: 1234,
        process_types: [("web".to_owned(), "bin/web".to_owned())].into(),
        stack: "heroku-24".to_owned(),
        buildpacks: vec!["heroku/ruby".to_owned()],
        created_at: OffsetDateTime::now_utc(),
    }
}

pub(super) fn new_build(app_id: Uuid) -> Build {
    let now = OffsetDateTime::now_utc();
    Build {
        id: Uuid::new_v4(),
        app_id,
        status: BuildStatus::Pending,
        source_sha256: "cd".repeat(32),
        slug_id: None,
        release_version: None,
        host_id: None,
        user: "ann@example.com".to_owned(),
        created_at: now,
        updated_at: now,
    }
}

/// Builds and releases a new slug of `app`; returns the slug and its release.
pub(super) async fn deploy(store: &SqlStore, app: &App) -> (Slug, Release) {
    let build = new_build(app.id);
    store.create_build(&build).await.expect("create build");
    let slug = new_slug(app.id);
    let (_, release) = store
        .finish_build(
            build.id,
            BuildOutcome::Succeeded {
                slug: slug.clone(),
                description: "Deploy".to_owned(),
            },
            "ann@example.com",
        )
        .await
        .expect("finish build");
    (slug, release.expect("a release"))
}

/// A `web.1`-style dyno of `app` just placed on `host_id`, of release v1.
pub(super) fn new_dyno(app: &App, name: &str, host_id: &str) -> Dyno {
    Dyno::placed(
        app,
        name.to_owned(),
        1,
        DEFAULT_SIZE.to_owned(),
        "bin/web".to_owned(),
        host_id.to_owned(),
        OffsetDateTime::now_utc(),
    )
}

pub(super) async fn add_host(store: &SqlStore, id: &str) -> Host {
    store
        .upsert_host(
            id,
            &format!("{id}:7000"),
            8 << 30,
            16,
            &["heroku-24".to_owned()],
            OffsetDateTime::now_utc(),
        )
        .await
        .expect("upsert host")
}

pub(super) async fn generation(store: &SqlStore, id: &str) -> u64 {
    let hosts = store.hosts().await.expect("hosts");
    hosts
        .iter()
        .find(|h| h.id == id)
        .map(|h| h.generation)
        .expect("host listed")
}
