//! The blob store: slugs and uploaded sources, content-addressed by sha256. A blob is
//! hashed while it is stored and becomes visible only when complete and (if a checksum was
//! given) verified, so a reader never sees a partial blob and a blob never changes.
//!
//! Two implementations behind [`Blobs`]:
//! - [`LocalBlobs`], the embedded default: files on the scheduler's disk. Nothing to run,
//!   but the blobs live and die with that one machine.
//! - [`PgBlobs`]: in the PostgreSQL database the scheduler replicas share, so that any
//!   replica serves a slug another one stored, and losing a scheduler's disk loses no slug.
//!
//! [`open`] picks the one that goes with the scheduler's database.

mod local;
mod postgres;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use crate::store::sql::Database;

pub use local::LocalBlobs;
pub use postgres::PgBlobs;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    InvalidDigest(String),
    #[error("blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("blob does not match its checksum: expected {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("upload failed: {0}")]
    Upload(String),
    #[error("blob store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob store database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("blob {sha256} cannot be read whole: {reason}")]
    Damaged { sha256: String, reason: String },
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

/// What [`Blobs::put`] stores: chunks of any size as they arrive (an upload's body), or
/// the reason the sender failed.
pub type Upload<'a> = BoxStream<'a, Result<Bytes, String>>;

/// An upload from any stream of byte chunks (see [`Upload`]).
pub fn upload<'a, S, B, E>(body: S) -> Upload<'a>
where
    S: Stream<Item = Result<B, E>> + Send + 'a,
    B: Into<Bytes>,
    E: std::fmt::Display,
{
    body.map(|chunk| chunk.map(Into::into).map_err(|e| e.to_string()))
        .boxed()
}

/// A stored blob being read: its size (known before the first byte, for Content-Length)
/// and its bytes.
pub struct Reader {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, BlobError>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where slugs and sources are kept.
#[async_trait::async_trait]
pub trait Blobs: Send + Sync + std::fmt::Debug {
    /// Stores an upload; refuses more than `limit` bytes and, when `expected` is given,
    /// content with another digest (either way nothing is stored). Storing a blob that
    /// exists stores nothing new but marks it as stored now (see [`Blobs::collect`]).
    async fn put(
        &self,
        body: Upload<'_>,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Blob, BlobError>;

    /// The blob with this digest, if it is stored.
    async fn stat(&self, sha256: &str) -> Result<Option<Blob>, BlobError>;

    /// Reads the blob with this digest, if it is stored.
    async fn open(&self, sha256: &str) -> Result<Option<Reader>, BlobError>;

    /// Removes the blobs not in `in_use` whose last store is at least `unused_for` old,
    /// and what interrupted uploads left as old; returns their names. The age keeps a blob
    /// just uploaded whose build or slug row is not written yet.
    async fn collect(
        &self,
        in_use: &BTreeSet<String>,
        unused_for: Duration,
    ) -> Result<Vec<String>, BlobError>;
}

/// The blob store that goes with the scheduler's `database`: with PostgreSQL, in that
/// database too (the replicas share it); with SQLite, files under `state_dir/blobs`.
pub async fn open(database: &Database, state_dir: &Path) -> Result<Arc<dyn Blobs>, BlobError> {
    match database {
        Database::Postgres(url) => Ok(Arc::new(PgBlobs::connect(url).await?)),
        Database::Sqlite(_) => Ok(Arc::new(LocalBlobs::new(state_dir.join("blobs")))),
    }
}

/// Whether `s` is a hex sha256 as blobs are named.
pub fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256` if it names a blob, else the error saying it does not.
fn checked(sha256: &str) -> Result<&str, BlobError> {
    if valid_digest(sha256) {
        Ok(sha256)
    } else {
        Err(BlobError::InvalidDigest(sha256.to_string()))
    }
}

/// What every store does with an upload's bytes as they pass: count them against the
/// limit and hash them; at the end, check the digest.
struct Intake {
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl Intake {
    fn new(limit: u64, expected: Option<&str>) -> Result<Intake, BlobError> {
        if let Some(expected) = expected {
            checked(expected)?;
        }
        Ok(Intake {
            hasher: Sha256::new(),
            size: 0,
            limit,
        })
    }

    /// Takes the next chunk of the upload (or the sender's failure).
    fn take<'c>(&mut self, chunk: &'c Result<Bytes, String>) -> Result<&'c [u8], BlobError> {
        let chunk = chunk.as_ref().map_err(|e| BlobError::Upload(e.clone()))?;
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        Ok(chunk)
    }

    /// The blob received, if it is the one `expected`.
    fn finish(self, expected: Option<&str>) -> Result<Blob, BlobError> {
        let actual: String = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match expected {
            Some(expected) if expected != actual => Err(BlobError::Mismatch {
                expected: expected.to_string(),
                actual,
            }),
            _ => Ok(Blob {
                sha256: actual,
                size: self.size,
            }),
        }
    }
}

/// How often the scheduler collects blobs nothing refers to.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(3600);

/// Collects, every [`COLLECT_INTERVAL`], the blobs the store no longer refers to (slugs of
/// destroyed apps, sources of finished builds) once they are `retention` old: without it the
/// blob store keeps every upload and slug ever made. Only the leader collects: replicas
/// share the blob store, and one collector is enough.
pub async fn collect_forever(core: Arc<crate::core::Core>, retention: Duration) {
    let mut every = tokio::time::interval(COLLECT_INTERVAL);
    loop {
        every.tick().await;
        if core.leadership.holds().is_none() {
            continue;
        }
        let (store, blobs) = (&core.store, &core.blobs);
        let in_use = match store.blobs_in_use().await {
            Ok(in_use) => in_use,
            Err(err) => {
                tracing::warn!("blob collection skipped: cannot read the store: {err}");
                continue;
            }
        };
        match blobs.collect(&in_use, retention).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "removed blobs nothing refers to")
            }
            Ok(_) => {}
            Err(err) => tracing::warn!("blob collection failed: {err}"),
        }
    }
}
