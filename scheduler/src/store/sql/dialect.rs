//! Which database the store speaks to (`--database`), and the few statements that differ
//! between SQLite and PostgreSQL. Everything else is one SQL text for both: `$N`
//! placeholders, `ON CONFLICT … DO UPDATE`, `RETURNING`, `"user"` quoted.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;

/// The key of the advisory lock every PostgreSQL write transaction takes ("manifold" in
/// ASCII): one lock, so writers queue one at a time exactly as SQLite's `BEGIN IMMEDIATE`
/// makes them.
const WRITE_LOCK: i64 = 0x6d61_6e69_666f_6c64;

/// Where the store lives, as `--database` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created if missing): the embedded default.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL, shared by every scheduler replica.
    Postgres(String),
}

/// A `--database` value that names no database the store can open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad database {given:?}: {why}")]
pub struct BadDatabase {
    pub given: String,
    pub why: String,
}

impl FromStr for Database {
    type Err = BadDatabase;

    /// `postgres://…` or `postgresql://…`, `sqlite://PATH`, or a plain file path.
    fn from_str(given: &str) -> Result<Database, BadDatabase> {
        let bad = |why: String| BadDatabase {
            given: redacted(given),
            why,
        };
        if given.trim().is_empty() {
            return Err(bad(
                "it is empty: give a postgres:// URL or a SQLite file".into()
            ));
        }
        match given.split_once("://") {
            Some(("postgres" | "postgresql", _)) => {
                PgConnectOptions::from_str(given).map_err(|e| bad(e.to_string()))?;
                Ok(Database::Postgres(given.to_owned()))
            }
            Some(("sqlite", "")) => Err(bad("sqlite:// names no file".into())),
            Some(("sqlite", path)) if path.contains('?') => Err(bad(
                "SQLite options are the store's to choose: give only the file".into(),
            )),
            Some(("sqlite", path)) => Ok(Database::Sqlite(PathBuf::from(path))),
            Some((scheme, _)) => Err(bad(format!(
                "unknown scheme {scheme}: give a postgres:// or postgresql:// URL, or a \
                 SQLite file (sqlite://PATH or PATH)"
            ))),
            None => Ok(Database::Sqlite(PathBuf::from(given))),
        }
    }
}

/// Names the database without its password, for logs and errors.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_owned(),
    }
}

/// The SQL the two databases cannot share. Kept to this one place on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

impl Dialect {
    /// Starts a transaction that will write. SQLite's `IMMEDIATE` takes the write lock
    /// at once; PostgreSQL starts at READ COMMITTED, where each statement sees every commit
    /// made before it, so the statements after [`Dialect::write_lock`] see the last writer's.
    pub(super) fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// The statement that serialises writers, run first in every write transaction; SQLite
    /// needs none (`BEGIN IMMEDIATE` did it). Released at commit or rollback.
    pub(super) fn write_lock(self) -> Option<String> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(format!("SELECT pg_advisory_xact_lock({WRITE_LOCK})")),
        }
    }

    /// Starts a transaction that only reads, from one snapshot (as WAL gives SQLite).
    pub(super) fn begin_read(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    /// An expression for the database's clock in integer milliseconds since the epoch:
    /// the lease's one clock, whatever the replicas' clocks say. PostgreSQL's
    /// `clock_timestamp()` rather than `now()`, which is frozen at the transaction's start
    /// (before it waited for the write lock).
    pub(super) fn now_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Dialect::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// The schema's migrations in this dialect (the same tables, version for version).
    pub(super) fn migrator(self) -> &'static Migrator {
        match self {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_parse_from_urls_and_paths() {
        let cases = [
            (
                "/var/lib/manifold/manifold.db",
                Database::Sqlite("/var/lib/manifold/manifold.db".into()),
            ),
            (
                "state/manifold.db",
                Database::Sqlite("state/manifold.db".into()),
            ),
            ("sqlite:///tmp/m.db", Database::Sqlite("/tmp/m.db".into())),
            ("sqlite://m.db", Database::Sqlite("m.db".into())),
            (
                "postgres://manifold@10.0.0.5:5432/manifold",
                Database::Postgres("postgres://manifold@10.0.0.5:5432/manifold".into()),
            ),
            (
                "postgresql://db.internal/manifold?sslmode=require",
                Database::Postgres("postgresql://db.internal/manifold?sslmode=require".into()),
            ),
        ];
        for (given, expected) in cases {
            assert_eq!(given.parse::<Database>(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn bad_databases_are_refused_naming_them() {
        for (given, why) in [
            ("mysql://db/manifold", "unknown scheme mysql"),
            ("", "it is empty"),
            ("sqlite://", "names no file"),
            ("sqlite:///tmp/m.db?mode=ro", "give only the file"),
            ("postgres://db:notaport/manifold", "invalid port"),
        ] {
            let error = given.parse::<Database>().expect_err(given);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("bad database {given:?}: ")),
                "{message}"
            );
            assert!(message.contains(why), "{given}: {message}");
        }
    }

    #[test]
    fn passwords_stay_out_of_names_and_errors() {
        let db: Database = "postgres://manifold:s3cret@db:5432/manifold"
            .parse()
            .expect("parse");
        assert_eq!(db.to_string(), "postgres://manifold:***@db:5432/manifold");
        let error = "postgres://manifold:s3cret@db:x/manifold"
            .parse::<Database>()
            .expect_err("bad port");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
