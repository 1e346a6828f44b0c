//! Blobs on the scheduler's disk (`blobs/sha256/<hex>`), the embedded default. A blob is
//! written to a temporary file, hashed while it is written, and renamed into place only when
//! complete and verified: the rename is what makes it visible, whole.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{checked, valid_digest, Blob, BlobError, Blobs, Intake, Reader, Upload};

/// How much of a blob file one read takes.
const READ_CHUNK: usize = 256 * 1024;

/// Blobs under one directory.
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into() }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
        move |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Where the blob with this digest lives (whether or not it exists yet).
    fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        Ok(self.root.join("sha256").join(checked(sha256)?))
    }

    /// Writes the upload into `tmp` and renames it into place.
    async fn store(
        &self,
        mut body: Upload<'_>,
        mut intake: Intake,
        expected: Option<&str>,
        dir: &Path,
        tmp: &Path,
    ) -> Result<Blob, BlobError> {
        let mut file = tokio::fs::File::create(tmp).await.map_err(Self::io(tmp))?;
        while let Some(chunk) = body.next().await {
            let chunk = intake.take(&chunk)?;
            file.write_all(chunk).await.map_err(Self::io(tmp))?;
        }
        file.sync_all().await.map_err(Self::io(tmp))?;
        let blob = intake.finish(expected)?;
        let path = self.path(&blob.sha256)?;
        tokio::fs::rename(tmp, &path)
            .await
            .map_err(Self::io(&path))?;
        // The blob is referenced by the store right after this returns: flush the
        // directory so that a power loss cannot take the rename back.
        tokio::fs::File::open(dir)
            .await
            .map_err(Self::io(dir))?
            .sync_all()
            .await
            .map_err(Self::io(dir))?;
        Ok(blob)
    }
}

#[async_trait::async_trait]
impl Blobs for LocalBlobs {
    async fn put(
        &self,
        body: Upload<'_>,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Blob, BlobError> {
        let intake = Intake::new(limit, expected)?;
        let dir = self.root.join("sha256");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Self::io(&dir))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let result = self.store(body, intake, expected, &dir, &tmp).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn stat(&self, sha256: &str) -> Result<Option<Blob>, BlobError> {
        let path = self.path(sha256)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(Blob {
                sha256: sha256.to_string(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(&path)(e)),
        }
    }

    async fn open(&self, sha256: &str) -> Result<Option<Reader>, BlobError> {
        let path = self.path(sha256)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::io(&path)(e)),
        };
        let size = file.metadata().await.map_err(Self::io(&path))?.len();
        // An open file stays readable whole even if collection removes its name meanwhile.
        let body = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
            .map(move |chunk| chunk.map_err(Self::io(&path)))
            .boxed();
        Ok(Some(Reader { size, body }))
    }

    async fn collect(
        &self,
        in_use: &BTreeSet<String>,
        unused_for: Duration,
    ) -> Result<Vec<String>, BlobError> {
        let dir = self.root.join("sha256");
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(&dir)(e)),
        };
        let mut removed = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(Self::io(&dir))? {
            let name = entry.file_name();
            // Blobs by digest, and temporary files an interrupted upload left.
            let Some(sha256) = name
                .to_str()
                .filter(|n| valid_digest(n) || n.starts_with(".tmp-"))
            else {
                continue;
            };
            if in_use.contains(sha256) {
                continue;
            }
            let idle = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= unused_for);
            if !idle {
                continue;
            }
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => removed.push(sha256.to_string()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&entry.path())(e)),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::tests::{self as behaviour, chunks, Inspect, HELLO};

    /// Sets a file's modification time, which is when its blob was last stored.
    fn age(path: &Path) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7200)))
            .expect("set mtime");
    }

    #[async_trait::async_trait]
    impl Inspect for LocalBlobs {
        async fn age(&self, sha256: &str) {
            age(&self.path(sha256).expect("path"));
        }

        async fn strays(&self) -> Vec<String> {
            std::fs::read_dir(self.root.join("sha256"))
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|name| !valid_digest(name))
                .collect()
        }
    }

    fn blobs() -> (tempfile::TempDir, LocalBlobs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = LocalBlobs::new(dir.path());
        (dir, blobs)
    }

    #[tokio::test]
    async fn round_trip() {
        behaviour::round_trip(&blobs().1).await;
    }

    #[tokio::test]
    async fn refusals_store_nothing() {
        behaviour::refusals(&blobs().1).await;
    }

    #[tokio::test]
    async fn concurrent_puts_of_one_blob() {
        behaviour::concurrent_puts(&blobs().1).await;
    }

    #[tokio::test]
    async fn collect_keeps_blobs_in_use_and_recent_ones() {
        behaviour::collection(&blobs().1).await;
    }

    #[tokio::test]
    async fn stores_by_digest_in_a_file() {
        let (dir, store) = blobs();
        store
            .put(chunks(&[b"hel", b"lo"]), 100, Some(HELLO))
            .await
            .expect("put");
        assert_eq!(
            std::fs::read(dir.path().join("sha256").join(HELLO)).expect("read"),
            b"hello"
        );
    }

    #[tokio::test]
    async fn collect_removes_what_interrupted_uploads_left() {
        let (dir, store) = blobs();
        store
            .put(chunks(&[b"hello"]), 100, None)
            .await
            .expect("put");
        let old = dir.path().join("sha256/.tmp-interrupted");
        let new = dir.path().join("sha256/.tmp-uploading");
        std::fs::write(&old, b"half").expect("write");
        std::fs::write(&new, b"half").expect("write");
        age(&old);
        let removed = store
            .collect(&[HELLO.to_string()].into(), Duration::from_secs(3600))
            .await
            .expect("collect");
        assert_eq!(removed, vec![".tmp-interrupted".to_string()]);
        assert!(!old.exists() && new.exists());
    }
}
