//! Row encoding and decoding, in the column formats the parent module describes.

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use time::format_description::well_known::Rfc3339;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::model::{
    App, Build, Cert, CertMaterial, CertSource, CertStatus, Domain, Dyno, DynoState, Formation,
    Host, LogDrain, Release, Slug,
};
use crate::pipelines::{Coupling, Pipeline, ReviewApp, Stage};
use crate::store::StoreError;

/// RFC 3339 with a fixed width, so that TEXT order is time order (the well-known formatter
/// trims fractional digits, and `...:00Z` would sort after `...:00.5Z`).
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// Reads one row's columns, naming the table, column and row in any corruption error.
struct Cells<'r> {
    row: &'r AnyRow,
    table: &'static str,
    key: String,
}

impl<'r> Cells<'r> {
    fn new(row: &'r AnyRow, table: &'static str, key: String) -> Cells<'r> {
        Cells { row, table, key }
    }

    fn corrupt(&self, column: &str, error: impl Display) -> StoreError {
        StoreError::Corrupt(format!("{}.{column} of {}: {error}", self.table, self.key))
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        Ok(self.row.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        Ok(self.row.try_get(column)?)
    }

    fn uuid(&self, column: &str) -> Result<Uuid, StoreError> {
        let text = self.text(column)?;
        Uuid::parse_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StoreError> {
        self.opt_text(column)?
            .map(|text| Uuid::parse_str(&text).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        let text = self.text(column)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(|e| self.corrupt(column, e))
    }

    fn opt_time(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.opt_text(column)?
            .map(|t| OffsetDateTime::parse(&t, &Rfc3339).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, StoreError> {
        let text = self.text(column)?;
        serde_json::from_str(&text).map_err(|e| self.corrupt(column, e))
    }

    fn opt_json<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self.row.try_get(column)?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    fn int<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: Display,
    {
        let value: i64 = self.row.try_get(column)?;
        T::try_from(value).map_err(|e| self.corrupt(column, e))
    }

    fn opt_int<T>(&self, column: &str) -> Result<Option<T>, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: Display,
    {
        let value: Option<i64> = self.row.try_get(column)?;
        value
            .map(|value| T::try_from(value).map_err(|e| self.corrupt(column, e)))
            .transpose()
    }

    /// SQLite has no booleans; the schema keeps flags as 0 or 1.
    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        match self.int::<i64>(column)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(column, format_args!("{other} is not a flag"))),
        }
    }

    fn parse<T>(&self, column: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
        let text = self.text(column)?;
        parse(&text).ok_or_else(|| self.corrupt(column, format_args!("unknown value {text:?}")))
    }
}

/// A row of `SELECT state, COUNT(*) AS n FROM dynos GROUP BY state`.
pub(super) fn state_count_from_row(row: &AnyRow) -> Result<(DynoState, u64), StoreError> {
    let c = Cells::new(row, "dynos", row.try_get("state")?);
    Ok((c.parse("state", DynoState::parse)?, c.int("n")?))
}

pub(super) fn app_from_row(row: &AnyRow) -> Result<App, StoreError> {
    let c = Cells::new(row, "apps", row.try_get("name")?);
    Ok(App {
        id: c.uuid("id")?,
        name: c.text("name")?,
        stack: c.text("stack")?,
        config: c.json("config")?,
        features: c.json("features")?,
        sleeping: c.flag("sleeping")?,
        maintenance: c.flag("maintenance")?,
        acm: c.flag("acm")?,
        boot_timeout: c.opt_int("boot_timeout")?,
        stop_timeout: c.opt_int("stop_timeout")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

pub(super) fn pipeline_from_row(row: &AnyRow) -> Result<Pipeline, StoreError> {
    let c = Cells::new(row, "pipelines", row.try_get("name")?);
    Ok(Pipeline {
        id: c.uuid("id")?,
        name: c.text("name")?,
        review_config: c.json("review_config")?,
        created_at: c.time("created_at")?,
    })
}

/// A coupling row joined with its pipeline's (`pipeline`) and app's (`app`) names.
pub(super) fn coupling_from_row(row: &AnyRow) -> Result<Coupling, StoreError> {
    let c = Cells::new(row, "pipeline_couplings", row.try_get("id")?);
    Ok(Coupling {
        id: c.uuid("id")?,
        pipeline_id: c.uuid("pipeline_id")?,
        pipeline: c.text("pipeline")?,
        app_id: c.uuid("app_id")?,
        app: c.text("app")?,
        stage: c.parse("stage", |s| Stage::parse(s).ok())?,
        created_at: c.time("created_at")?,
    })
}

/// A review app row joined with its app's (`app`) and pipeline's (`pipeline`) names.
pub(super) fn review_app_from_row(row: &AnyRow) -> Result<ReviewApp, StoreError> {
    let c = Cells::new(row, "review_apps", row.try_get("app_id")?);
    Ok(ReviewApp {
        app_id: c.uuid("app_id")?,
        app: c.text("app")?,
        pipeline_id: c.uuid("pipeline_id")?,
        pipeline: c.text("pipeline")?,
        branch: c.text("branch")?,
        expires_at: c.opt_time("expires_at")?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn drain_from_row(row: &AnyRow) -> Result<LogDrain, StoreError> {
    let c = Cells::new(row, "log_drains", row.try_get("id")?);
    Ok(LogDrain {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        url: c.text("url")?,
        token: c.text("token")?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn domain_from_row(row: &AnyRow) -> Result<Domain, StoreError> {
    let c = Cells::new(row, "domains", row.try_get("hostname")?);
    Ok(Domain {
        hostname: c.text("hostname")?,
        app_id: c.uuid("app_id")?,
        app: c.text("app")?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn cert_from_row(row: &AnyRow) -> Result<Cert, StoreError> {
    let c = Cells::new(row, "certs", row.try_get("id")?);
    let material = match (c.opt_text("chain_pem")?, c.opt_text("key_pem")?) {
        (Some(chain_pem), Some(key_pem)) => Some(CertMaterial {
            chain_pem,
            key_pem,
            issuer: c.text("issuer")?,
            not_before: c.time("not_before")?,
            not_after: c.time("not_after")?,
        }),
        (None, None) => None,
        _ => {
            return Err(c.corrupt(
                "key_pem",
                "a certificate without its key, or a key without its certificate",
            ))
        }
    };
    Ok(Cert {
        id: c.uuid("id")?,
        app_id: c.opt_uuid("app_id")?,
        source: c.parse("source", CertSource::parse)?,
        names: c.json("names")?,
        material,
        status: c.parse("status", CertStatus::parse)?,
        last_error: c.opt_text("last_error")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

pub(super) fn slug_from_row(row: &AnyRow) -> Result<Slug, StoreError> {
    let c = Cells::new(row, "slugs", row.try_get("id")?);
    Ok(Slug {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        sha256: c.text("sha256")?,
        size: c.int("size")?,
        process_types: c.json("process_types")?,
        stack: c.text("stack")?,
        buildpacks: c.json("buildpacks")?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn build_from_row(row: &AnyRow) -> Result<Build, StoreError> {
    let c = Cells::new(row, "builds", row.try_get("id")?);
    Ok(Build {
        id: c.uuid("id")?,
        app_id: c.uuid("app_id")?,
        status: c.parse("status", from_word)?,
        source_sha256: c.text("source_sha256")?,
        slug_id: c.opt_uuid("slug_id")?,
        release_version: c.opt_int("release_version")?,
        host_id: c.opt_text("host_id")?,
        user: c.text("user")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

pub(super) fn release_from_row(row: &AnyRow) -> Result<Release, StoreError> {
    let key = format!(
        "v{} of app {}",
        row.try_get::<i64, _>("version")?,
        row.try_get::<String, _>("app_id")?
    );
    let c = Cells::new(row, "releases", key);
    Ok(Release {
        app_id: c.uuid("app_id")?,
        version: c.int("version")?,
        slug_id: c.uuid("slug_id")?,
        config: c.json("config")?,
        description: c.text("description")?,
        user: c.text("user")?,
        status: c.parse("status", from_word)?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn formation_from_row(row: &AnyRow) -> Result<Formation, StoreError> {
    let key = format!(
        "{} of app {}",
        row.try_get::<String, _>("process_type")?,
        row.try_get::<String, _>("app_id")?
    );
    let c = Cells::new(row, "formations", key);
    Ok(Formation {
        app_id: c.uuid("app_id")?,
        process_type: c.text("process_type")?,
        quantity: c.int("quantity")?,
        size: c.text("size")?,
        updated_at: c.time("updated_at")?,
    })
}

pub(super) fn dyno_from_row(row: &AnyRow) -> Result<Dyno, StoreError> {
    let c = Cells::new(row, "dynos", row.try_get("id")?);
    Ok(Dyno {
        id: c.text("id")?,
        app_id: c.uuid("app_id")?,
        name: c.text("name")?,
        process_type: c.text("process_type")?,
        release_version: c.int("release_version")?,
        size: c.text("size")?,
        command: c.text("command")?,
        host_id: c.text("host_id")?,
        desired: c.parse("desired", from_word)?,
        state: c.parse("state", DynoState::parse)?,
        state_changed_at: c.time("state_changed_at")?,
        exit_status: c.opt_int("exit_status")?,
        reason: c.text("reason")?,
        port: c.opt_int("port")?,
        created_at: c.time("created_at")?,
        env: c.json("env")?,
        attach: c.opt_json("attach")?,
    })
}

pub(super) fn host_from_row(row: &AnyRow) -> Result<Host, StoreError> {
    let c = Cells::new(row, "hosts", row.try_get("id")?);
    Ok(Host {
        id: c.text("id")?,
        address: c.text("address")?,
        memory_bytes: c.int("memory_bytes")?,
        dyno_slots: c.int("dyno_slots")?,
        stacks: c.json("stacks")?,
        generation: c.int("generation")?,
        draining: c.flag("draining")?,
        first_seen: c.time("first_seen")?,
        last_seen: c.time("last_seen")?,
    })
}

/// An enum as the lowercase word serde names it (`succeeded`): the form the schema stores.
pub(super) fn word<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The enum a stored word names.
fn from_word<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

/// Encodes a timestamp in the fixed-width UTC form the schema uses.
pub(super) fn timestamp(at: OffsetDateTime) -> Result<String, StoreError> {
    at.to_offset(UtcOffset::UTC)
        .format(TIMESTAMP)
        .map_err(encode_error)
}

pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(encode_error)
}

/// SQLite integers are signed; a `u64` above `i64::MAX` cannot be stored faithfully.
pub(super) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(encode_error)
}

/// A value the database cannot hold is an encoding failure, as sqlx itself reports them.
fn encode_error(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(sqlx::Error::Encode(Box::new(error)))
}

/// An add-on row joined with its owning app's name (`app`, NULL when it has none).
pub(super) fn addon_from_row(row: &AnyRow) -> Result<crate::addons::model::Addon, StoreError> {
    use crate::addons::model::{Addon, AddonKind, AddonState};
    let c = Cells::new(row, "addons", row.try_get("name")?);
    Ok(Addon {
        id: c.uuid("id")?,
        name: c.text("name")?,
        kind: c.parse("kind", AddonKind::parse)?,
        plan: c.text("plan")?,
        app_id: c.opt_uuid("app_id")?,
        app: c.opt_text("app")?,
        host_id: c.text("host_id")?,
        port: c.opt_int("port")?,
        user: c.text("user")?,
        password: c.text("password")?,
        database: c.text("database")?,
        state: c.parse("state", AddonState::parse)?,
        reason: c.text("reason")?,
        created_at: c.time("created_at")?,
    })
}

/// An attachment row joined with its add-on's (`addon`) and app's (`app`) names.
pub(super) fn attachment_from_row(
    row: &AnyRow,
) -> Result<crate::addons::model::Attachment, StoreError> {
    let c = Cells::new(row, "addon_attachments", row.try_get("id")?);
    Ok(crate::addons::model::Attachment {
        id: c.uuid("id")?,
        addon_id: c.uuid("addon_id")?,
        addon: c.text("addon")?,
        app_id: c.uuid("app_id")?,
        app: c.text("app")?,
        name: c.text("name")?,
        created_at: c.time("created_at")?,
    })
}

pub(super) fn backup_from_row(row: &AnyRow) -> Result<crate::addons::model::Backup, StoreError> {
    use crate::addons::model::{Backup, BackupState};
    let c = Cells::new(row, "addon_backups", row.try_get("id")?);
    Ok(Backup {
        id: c.uuid("id")?,
        addon_id: c.uuid("addon_id")?,
        number: c.int("number")?,
        blob_sha256: c.opt_text("blob_sha256")?,
        size: c.int("size")?,
        state: c.parse("state", BackupState::parse)?,
        reason: c.text("reason")?,
        created_at: c.time("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::test_support::*;

    #[tokio::test]
    async fn unreadable_rows_are_reported_as_corrupt() {
        on_each_backend("unreadable_rows_are_reported_as_corrupt", |db| async move {
            let store = db.open().await;
            store.create_app("app", "heroku-24").await.expect("create");
            sqlx::query("UPDATE apps SET config = 'not json' WHERE name = 'app'")
                .execute(&store.pool)
                .await
                .expect("corrupt it");
            match store.app("app").await {
                Err(StoreError::Corrupt(message)) => {
                    assert!(message.starts_with("apps.config of app:"), "{message}");
                }
                other => panic!("expected corrupt, got {other:?}"),
            }
        })
        .await;
    }
}
