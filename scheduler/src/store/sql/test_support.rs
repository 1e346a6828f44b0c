//! What the store's unit tests share: a store on each database (an SQLite file in a temp
//! dir, then a database of its own on a throwaway PostgreSQL server), the rows they fill it
//! with, and the names they all use.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use sqlx::{Connection, Executor, PgConnection};

use manifold_test_support::postgres::Postgres;
use tempfile::TempDir;
use time::OffsetDateTime;
use uuid::Uuid;

pub(super) use time::Duration as TimeDuration;

pub(super) use crate::model::{
    App, Build, BuildStatus, Dyno, DynoState, FormationUpdate, Host, Release, ReleaseStatus, Slug,
    DEFAULT_SIZE,
};
pub(super) use crate::store::{BuildOutcome, DynoChanges, HostHello, Store};

pub(super) use super::{Database, SqlStore};

/// The database of one run of a test, removed when dropped (PostgreSQL's with the server,
/// once no test uses it).
pub(super) enum TestDb {
    Sqlite(TempDir),
    Postgres {
        /// Held so that the server outlives the test.
        _server: Arc<Postgres>,
        url: String,
    },
}

/// The PostgreSQL server the tests running now share, each in a database of its own:
/// starting a server takes seconds, a database a moment. The last test to finish with it
/// drops it (the server is stopped and its directory removed); a later test starts another.
static SERVER: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

/// Numbers the tests' databases, unique within the server's life (and the process's).
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// A new, empty database on the shared server, or `None` when this machine cannot start
/// one (outside CI; [`Postgres::start`] says why).
async fn postgres(test: &str) -> Option<TestDb> {
    let server = {
        let mut shared = SERVER.lock().unwrap_or_else(PoisonError::into_inner);
        match shared.upgrade() {
            Some(server) => server,
            None => {
                let server = Arc::new(Postgres::start(test)?);
                *shared = Arc::downgrade(&server);
                server
            }
        }
    };
    let name = format!("test_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    let mut admin = PgConnection::connect(&server.url())
        .await
        .expect("connect to the test server");
    admin
        .execute(&*format!("CREATE DATABASE {name}"))
        .await
        .expect("create the test's database");
    admin.close().await.expect("close");
    let (base, _) = server
        .url()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_owned(), d.to_owned()))?;
    Some(TestDb::Postgres {
        _server: server,
        url: format!("{base}/{name}"),
    })
}

impl TestDb {
    pub(super) fn database(&self) -> Database {
        match self {
            TestDb::Sqlite(dir) => Database::Sqlite(dir.path().join("manifold.db")),
            TestDb::Postgres { url, .. } => Database::Postgres(url.clone()),
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
    // The server first, so that it is held through the whole test and the next test finds
    // it running.
    let postgres = postgres(name).await;
    eprintln!("{name}: on SQLite");
    test(TestDb::Sqlite(tempfile::tempdir().expect("tempdir"))).await;
    if let Some(db) = postgres {
        eprintln!("{name}: on PostgreSQL");
        test(db).await;
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
    let address = format!("{id}:7000");
    let stacks = ["heroku-24".to_owned()];
    let hello = HostHello {
        id,
        address: &address,
        memory_bytes: 8 << 30,
        dyno_slots: 16,
        stacks: &stacks,
    };
    store
        .upsert_hosts(&[hello], OffsetDateTime::now_utc())
        .await
        .expect("upsert host")
        .remove(0)
}

pub(super) async fn generation(store: &SqlStore, id: &str) -> u64 {
    let hosts = store.hosts().await.expect("hosts");
    hosts
        .iter()
        .find(|h| h.id == id)
        .map(|h| h.generation)
        .expect("host listed")
}
