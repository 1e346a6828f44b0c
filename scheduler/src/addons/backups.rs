//! Backups of PostgreSQL add-ons (`pg:backups`): Debian's `pg_dump -Fc` run by the
//! scheduler against the add-on, its output streamed into the blob store (never whole in
//! memory, refused past [`BACKUP_LIMIT`]); a restore streams the blob into `pg_restore`.
//! The password goes in the tools' environment (`PGPASSWORD`), never on a command line
//! another user could read. The scheduler's host needs `postgresql-client` (scripts/setup).

use std::process::Stdio;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use uuid::Uuid;

use super::model::{Addon, AddonKind, Backup, BackupState};
use crate::blobs::{BlobError, Blobs};
use crate::store::{Store, StoreError};

/// The largest dump kept.
pub const BACKUP_LIMIT: u64 = 16 << 30;

/// How much of a tool's error output is kept for the message.
const STDERR_LIMIT: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} is not a PostgreSQL add-on: only those have backups")]
    NotPostgres(String),
    #[error("{0} is not up yet (its host has not reported it available): try again shortly")]
    NotAvailable(String),
    #[error("cannot run {tool}: {source} (install postgresql-client on the scheduler's host)")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("backup {0} has no dump (its capture failed)")]
    NoDump(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a tool connects: the add-on's host address and port, its user and database.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl Target {
    /// The add-on's target, on its host's `address`; `None` until its port is known.
    pub fn of(addon: &Addon, address: &str) -> Result<Target, BackupError> {
        if addon.kind != AddonKind::Postgresql {
            return Err(BackupError::NotPostgres(addon.name.clone()));
        }
        let port = addon
            .port
            .ok_or_else(|| BackupError::NotAvailable(addon.name.clone()))?;
        Ok(Target {
            host: address.to_string(),
            port,
            user: addon.user.clone(),
            password: addon.password.clone(),
            database: addon.database.clone(),
        })
    }

    /// `tool` with the connection's arguments and password.
    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(tool);
        command
            .arg("--host")
            .arg(&self.host)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--username")
            .arg(&self.user)
            .arg("--no-password")
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

/// Collects a tool's error output (bounded) while it runs.
fn stderr_of(child: &mut Child) -> tokio::task::JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(STDERR_LIMIT).read_to_string(&mut text).await;
        }
        text.trim().to_string()
    })
}

/// Waits for a tool; an exit other than 0 is an error with what it wrote.
async fn finished(
    tool: &'static str,
    mut child: Child,
    stderr: tokio::task::JoinHandle<String>,
) -> Result<(), BackupError> {
    let status = child
        .wait()
        .await
        .map_err(|source| BackupError::Spawn { tool, source })?;
    let stderr = stderr.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(BackupError::Tool {
            tool,
            status: status.to_string(),
            stderr,
        })
    }
}

/// Dumps the add-on into the blob store and records the backup (a failed capture is
/// recorded too, with its reason, and returned as the error).
pub async fn capture(
    store: &dyn Store,
    blobs: &dyn Blobs,
    addon: &Addon,
    target: &Target,
) -> Result<Backup, BackupError> {
    let dumped = dump(blobs, target).await;
    let mut backup = Backup {
        id: Uuid::new_v4(),
        addon_id: addon.id,
        number: 0,
        blob_sha256: None,
        size: 0,
        state: BackupState::Completed,
        reason: String::new(),
        created_at: OffsetDateTime::now_utc(),
    };
    match dumped {
        Ok(blob) => {
            backup.blob_sha256 = Some(blob.sha256);
            backup.size = blob.size;
            Ok(store.add_backup(&backup).await?)
        }
        Err(err) => {
            backup.state = BackupState::Failed;
            backup.reason = err.to_string();
            store.add_backup(&backup).await?;
            Err(err)
        }
    }
}

async fn dump(blobs: &dyn Blobs, target: &Target) -> Result<crate::blobs::Blob, BackupError> {
    const TOOL: &str = "pg_dump";
    let mut child = target
        .command(TOOL)
        .arg("--format=custom")
        .arg("--dbname")
        .arg(&target.database)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| BackupError::Spawn { tool: TOOL, source })?;
    let stderr = stderr_of(&mut child);
    let stdout = child.stdout.take().ok_or_else(|| BackupError::Spawn {
        tool: TOOL,
        source: std::io::Error::other("no stdout"),
    })?;
    let stored = blobs
        .put(
            crate::blobs::upload(tokio_util::io::ReaderStream::new(stdout)),
            BACKUP_LIMIT,
            None,
        )
        .await;
    // The dump's exit says whether what was stored is whole; a stored blob nothing refers
    // to is collected later.
    let exited = finished(TOOL, child, stderr).await;
    let blob = stored?;
    exited?;
    Ok(blob)
}

/// Restores a backup into the add-on at `target`: what the dump has replaces what is
/// there (`--clean --if-exists`), owned by the add-on's user (`--no-owner`).
pub async fn restore(
    blobs: &dyn Blobs,
    backup: &Backup,
    target: &Target,
) -> Result<(), BackupError> {
    const TOOL: &str = "pg_restore";
    let sha256 = backup
        .blob_sha256
        .as_deref()
        .ok_or_else(|| BackupError::NoDump(backup.name()))?;
    let reader = blobs
        .open(sha256)
        .await?
        .ok_or_else(|| BlobError::Damaged {
            sha256: sha256.to_string(),
            reason: "it is missing from the blob store".into(),
        })?;
    let mut child = target
        .command(TOOL)
        .args(["--clean", "--if-exists", "--no-owner", "--no-privileges"])
        .arg("--dbname")
        .arg(&target.database)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|source| BackupError::Spawn { tool: TOOL, source })?;
    let stderr = stderr_of(&mut child);
    let mut stdin = child.stdin.take().ok_or_else(|| BackupError::Spawn {
        tool: TOOL,
        source: std::io::Error::other("no stdin"),
    })?;
    let mut body = reader.body;
    let mut fed = Ok(());
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if let Err(err) = stdin.write_all(&chunk).await {
            // It stopped reading: its exit status and output say why.
            fed = Err(err);
            break;
        }
    }
    drop(stdin);
    finished(TOOL, child, stderr).await?;
    fed.map_err(|source| BackupError::Spawn { tool: TOOL, source })
}
