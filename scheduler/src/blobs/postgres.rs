//! Blobs in PostgreSQL (`--database postgres://…`), so that every scheduler replica reads
//! what any of them stored and no slug is lost with a scheduler's disk.
//!
//! A blob is `bytea` chunks of [`CHUNK`] bytes (`blob_chunks`) and one row in `blobs` naming
//! its size and the upload its chunks came from:
//! - **Chunks**, because a slug can be hundreds of MiB: an upload is streamed in and a
//!   download streamed out one chunk at a time, and neither the scheduler nor the database
//!   ever holds a whole blob in memory (a single `bytea` value is at most 1 GiB, and is read
//!   and written whole). Large objects would stream too, but they live outside the tables
//!   (`pg_largeobject`, with their own permissions and no cascade), so a lost reference leaks
//!   them; chunk rows are plain rows that one `DELETE` removes.
//! - **The `blobs` row last, in the upload's transaction**: the digest is only known once
//!   the last byte is in, so chunks are keyed by an upload number and the row that names the
//!   blob by digest is inserted after them and committed with them. A reader (on any replica)
//!   finds either no blob or a whole one; a refused, failed or abandoned upload (its
//!   connection closed by a crash) rolls back and leaves nothing to clean up. Two uploads of
//!   the same blob at once both write chunks; the second to insert the row waits for the
//!   first, keeps its chunks (refreshing `stored_at_ms`) and drops its own.
//!
//! Times (`stored_at_ms`) are the database's clock, so replicas whose clocks disagree still
//! agree on a blob's age.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{checked, Blob, BlobError, Blobs, Intake, Reader, Upload};

/// The size of every chunk but a blob's last.
pub const CHUNK: usize = 1 << 20;
/// Chunks a download reads ahead of the one being sent.
const READ_AHEAD: usize = 2;
/// Connections of the blob store's pool: an upload holds one until it ends.
const CONNECTIONS: u32 = 16;
/// Now on the database's clock, in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Blobs in one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgBlobs {
    pool: PgPool,
}

impl PgBlobs {
    /// Connects to the database at `url` and brings its schema up to date.
    pub async fn connect(url: &str) -> Result<PgBlobs, BlobError> {
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
        Ok(PgBlobs { pool })
    }

    /// Writes one chunk of upload `upload`.
    async fn chunk(
        tx: &mut Transaction<'_, Postgres>,
        upload: i64,
        seq: i32,
        data: &[u8],
    ) -> Result<(), BlobError> {
        sqlx::query("INSERT INTO blob_chunks (upload, seq, data) VALUES ($1, $2, $3)")
            .bind(upload)
            .bind(seq)
            .bind(data)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The size of chunk `seq` of a blob of `size` bytes.
fn chunk_len(size: u64, seq: u64) -> u64 {
    (size - seq * CHUNK as u64).min(CHUNK as u64)
}

#[async_trait::async_trait]
impl Blobs for PgBlobs {
    async fn put(
        &self,
        mut body: Upload<'_>,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Blob, BlobError> {
        let mut intake = Intake::new(limit, expected)?;
        // Dropped without a commit (an error, or the upload's request abandoned), the
        // transaction rolls back: nothing of this upload stays.
        let mut tx = self.pool.begin().await?;
        let upload: i64 = sqlx::query_scalar("SELECT nextval('blob_uploads')")
            .fetch_one(&mut *tx)
            .await?;
        let mut seq = 0i32;
        let mut pending = Vec::with_capacity(CHUNK);
        while let Some(chunk) = body.next().await {
            let mut chunk = intake.take(&chunk)?;
            while !chunk.is_empty() {
                let n = (CHUNK - pending.len()).min(chunk.len());
                pending.extend_from_slice(&chunk[..n]);
                chunk = &chunk[n..];
                if pending.len() == CHUNK {
                    Self::chunk(&mut tx, upload, seq, &pending).await?;
                    pending.clear();
                    seq += 1;
                }
            }
        }
        if !pending.is_empty() {
            Self::chunk(&mut tx, upload, seq, &pending).await?;
        }
        let blob = intake.finish(expected)?;
        let size = i64::try_from(blob.size).map_err(|_| BlobError::TooLarge { limit })?;
        let kept: i64 = sqlx::query_scalar(&format!(
            "INSERT INTO blobs (sha256, upload, size, stored_at_ms) VALUES ($1, $2, $3, {NOW_MS})
             ON CONFLICT (sha256) DO UPDATE SET stored_at_ms = EXCLUDED.stored_at_ms
             RETURNING upload"
        ))
        .bind(&blob.sha256)
        .bind(upload)
        .bind(size)
        .fetch_one(&mut *tx)
        .await?;
        if kept != upload {
            // The blob was stored already: its chunks stay, these go.
            sqlx::query("DELETE FROM blob_chunks WHERE upload = $1")
                .bind(upload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(blob)
    }

    async fn stat(&self, sha256: &str) -> Result<Option<Blob>, BlobError> {
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE sha256 = $1")
            .bind(checked(sha256)?)
            .fetch_optional(&self.pool)
            .await?;
        Ok(size.map(|size| Blob {
            sha256: sha256.to_string(),
            size: size.unsigned_abs(),
        }))
    }

    async fn open(&self, sha256: &str) -> Result<Option<Reader>, BlobError> {
        let Some((upload, size)) =
            sqlx::query_as::<_, (i64, i64)>("SELECT upload, size FROM blobs WHERE sha256 = $1")
                .bind(checked(sha256)?)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let size = size.unsigned_abs();
        let pool = self.pool.clone();
        let sha256 = sha256.to_string();
        // Each chunk is its own query (no connection is held while the client reads), a
        // few ahead. A chunk missing or of the wrong size ends the body with an error rather
        // than a short or wrong blob: collection removed the blob while it was read.
        let body = futures::stream::iter(0..size.div_ceil(CHUNK as u64))
            .map(move |seq| {
                let (pool, sha256) = (pool.clone(), sha256.clone());
                async move {
                    let data: Option<Vec<u8>> = sqlx::query_scalar(
                        "SELECT data FROM blob_chunks WHERE upload = $1 AND seq = $2",
                    )
                    .bind(upload)
                    .bind(i32::try_from(seq).unwrap_or(i32::MAX))
                    .fetch_optional(&pool)
                    .await?;
                    let want = chunk_len(size, seq);
                    match data {
                        Some(data) if data.len() as u64 == want => Ok(Bytes::from(data)),
                        Some(data) => Err(BlobError::Damaged {
                            sha256,
                            reason: format!("chunk {seq} has {} bytes, not {want}", data.len()),
                        }),
                        None => Err(BlobError::Damaged {
                            sha256,
                            reason: format!("chunk {seq} is gone (the blob was collected)"),
                        }),
                    }
                }
            })
            .buffered(READ_AHEAD)
            .boxed();
        Ok(Some(Reader { size, body }))
    }

    async fn collect(
        &self,
        in_use: &BTreeSet<String>,
        unused_for: Duration,
    ) -> Result<Vec<String>, BlobError> {
        // One statement: a blob's row and its chunks go together. A put of the blob that
        // refreshes it meanwhile either commits first (the row is then no longer old and is
        // skipped) or finds it gone and stores it anew with its own chunks.
        let removed = sqlx::query_scalar(&format!(
            "WITH gone AS (
                 DELETE FROM blobs
                 WHERE stored_at_ms <= {NOW_MS} - $1 AND sha256 <> ALL($2)
                 RETURNING sha256, upload
             ), chunks AS (
                 DELETE FROM blob_chunks WHERE upload IN (SELECT upload FROM gone)
             )
             SELECT sha256 FROM gone"
        ))
        .bind(i64::try_from(unused_for.as_millis()).unwrap_or(i64::MAX))
        .bind(in_use.iter().cloned().collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::tests::{self as behaviour, chunks, Inspect, HELLO};
    use manifold_test_support::postgres::Postgres;

    #[async_trait::async_trait]
    impl Inspect for PgBlobs {
        async fn age(&self, sha256: &str) {
            let aged = sqlx::query(&format!(
                "UPDATE blobs SET stored_at_ms = {NOW_MS} - 7200000 WHERE sha256 = $1"
            ))
            .bind(sha256)
            .execute(&self.pool)
            .await
            .expect("age");
            assert_eq!(aged.rows_affected(), 1, "{sha256} is stored");
        }

        /// Chunks no blob names (uploads that should have rolled back).
        async fn strays(&self) -> Vec<String> {
            sqlx::query_scalar(
                "SELECT DISTINCT upload::text FROM blob_chunks c
                 WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.upload = c.upload)",
            )
            .fetch_all(&self.pool)
            .await
            .expect("strays")
        }
    }

    /// A fresh server and the blob store on it (`None`: skipped outside CI).
    async fn blobs(test: &str) -> Option<(Postgres, PgBlobs)> {
        let server = Postgres::start(test)?;
        let blobs = PgBlobs::connect(&server.url()).await.expect("connect");
        Some((server, blobs))
    }

    #[tokio::test]
    async fn round_trip_and_refusals() {
        let Some((_server, blobs)) = blobs("round_trip_and_refusals").await else {
            return;
        };
        behaviour::round_trip(&blobs).await;
        behaviour::refusals(&blobs).await;
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_blob() {
        let Some((_server, blobs)) = blobs("concurrent_puts_of_one_blob").await else {
            return;
        };
        behaviour::concurrent_puts(&blobs).await;
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_chunks")
            .fetch_one(&blobs.pool)
            .await
            .expect("count");
        assert_eq!(chunks, 3, "one copy of the blob's chunks");
    }

    #[tokio::test]
    async fn collect_keeps_blobs_in_use_and_recent_ones() {
        let Some((_server, blobs)) = blobs("collect_keeps_blobs_in_use_and_recent_ones").await
        else {
            return;
        };
        behaviour::collection(&blobs).await;
        let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_chunks")
            .fetch_one(&blobs.pool)
            .await
            .expect("count");
        assert_eq!(
            chunks, 2,
            "the chunks of the two blobs left, none of the others"
        );
    }

    /// What one replica stores, another (its own pool, as another process has) reads; the
    /// selection by URL picks this store; and a blob survives the database's restart.
    #[tokio::test]
    async fn another_replica_reads_what_one_stored() {
        let Some((mut server, one)) = blobs("another_replica_reads_what_one_stored").await else {
            return;
        };
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = crate::blobs::open(
            &crate::store::sql::Database::Postgres(server.url()),
            other_dir.path(),
        )
        .await
        .expect("open");
        let data: Vec<u8> = (0..CHUNK * 2 + 99).map(|i| (i % 251) as u8).collect();
        let blob = one
            .put(
                futures::stream::iter(vec![Ok(Bytes::from(data.clone()))]).boxed(),
                u64::MAX,
                None,
            )
            .await
            .expect("put");
        assert!(behaviour::read(&*other, &blob.sha256).await == data);
        assert!(std::fs::read_dir(other_dir.path())
            .expect("list")
            .next()
            .is_none());
        server.stop();
        server.resume();
        for replica in [&one as &dyn Blobs, &*other] {
            assert_eq!(
                reconnected(replica, &blob.sha256).await.map(|b| b.size),
                Some(data.len() as u64)
            );
        }
        other
            .put(chunks(&[b"hello"]), 100, Some(HELLO))
            .await
            .expect("put");
        assert_eq!(behaviour::read(&one, HELLO).await, b"hello");
    }

    /// The blob's stat once the pool has reconnected to a restarted server.
    async fn reconnected(blobs: &dyn Blobs, sha256: &str) -> Option<Blob> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match blobs.stat(sha256).await {
                Ok(blob) => return blob,
                Err(err) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no reconnection: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
