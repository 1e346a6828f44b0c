//! The blob store: slugs and uploaded sources, content-addressed by sha256 on the
//! scheduler's disk (`blobs/sha256/<hex>`). A blob is written to a temporary file, hashed
//! while it is written, and renamed into place only when complete and (if a checksum was
//! given) verified, so a reader never sees a partial blob and a blob never changes.

use std::io;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

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
        source: io::Error,
    },
}

/// How often the scheduler collects blobs nothing refers to.
pub const COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Collects, every [`COLLECT_INTERVAL`], the blobs the store no longer refers to (slugs of
/// destroyed apps, sources of finished builds) once they are `retention` old: without it the
/// scheduler's disk keeps every upload and slug ever made.
pub async fn collect_forever(
    store: std::sync::Arc<dyn crate::store::Store>,
    blobs: BlobStore,
    retention: std::time::Duration,
) {
    let mut every = tokio::time::interval(COLLECT_INTERVAL);
    loop {
        every.tick().await;
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

/// Blobs under one directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
}

/// Whether `s` is a hex sha256 as blobs are named.
pub fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into() }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
        move |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Where the blob with this digest lives (whether or not it exists yet).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !valid_digest(sha256) {
            return Err(BlobError::InvalidDigest(sha256.to_string()));
        }
        Ok(self.root.join("sha256").join(sha256))
    }

    pub fn exists(&self, sha256: &str) -> bool {
        self.path(sha256).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Removes the blobs not in `in_use` whose last store is at least `unused_for` old
    /// (and temporary files of uploads as old); returns their names. The age keeps a blob just uploaded whose build or slug row is
    /// not written yet (and storing a blob that exists marks it as stored now).
    pub async fn collect(
        &self,
        in_use: &std::collections::BTreeSet<String>,
        unused_for: std::time::Duration,
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

    /// Stores a stream of chunks; refuses more than `limit` bytes and, when `expected` is
    /// given, content with another digest. Storing a blob that exists is a no-op.
    pub async fn put<S, B, E>(
        &self,
        mut body: S,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Blob, BlobError>
    where
        S: Stream<Item = Result<B, E>> + Unpin,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        if let Some(e) = expected {
            self.path(e)?;
        }
        let dir = self.root.join("sha256");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Self::io(&dir))?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(Self::io(&tmp))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Upload(e.to_string()))?;
                let chunk = chunk.as_ref();
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(chunk);
                file.write_all(chunk).await.map_err(Self::io(&tmp))?;
            }
            file.sync_all().await.map_err(Self::io(&tmp))?;
            let actual: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if let Some(expected) = expected {
                if expected != actual {
                    return Err(BlobError::Mismatch {
                        expected: expected.to_string(),
                        actual,
                    });
                }
            }
            let path = self.path(&actual)?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(Self::io(&path))?;
            // The blob is referenced by the store right after this returns: flush the
            // directory so that a power loss cannot take the rename back.
            tokio::fs::File::open(&dir)
                .await
                .map_err(Self::io(&dir))?
                .sync_all()
                .await
                .map_err(Self::io(&dir))?;
            Ok(Blob {
                sha256: actual,
                size,
            })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<&'static [u8], String>> + Unpin {
        futures::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[tokio::test]
    async fn collect_keeps_blobs_in_use_and_recent_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let hello = store
            .put(chunks(&[b"hello"]), 100, None)
            .await
            .expect("put");
        let bye = store.put(chunks(&[b"bye"]), 100, None).await.expect("put");
        let fresh = store
            .put(chunks(&[b"fresh"]), 100, None)
            .await
            .expect("put");
        let tmp = dir.path().join("sha256/.tmp-interrupted");
        std::fs::write(&tmp, b"half").expect("write");
        let age = |path: &Path| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_modified(
                        std::time::SystemTime::now() - std::time::Duration::from_secs(7200),
                    )
                })
                .expect("set mtime");
        };
        for path in [
            store.path(&hello.sha256).expect("path"),
            store.path(&bye.sha256).expect("path"),
            tmp.clone(),
        ] {
            age(&path);
        }
        let in_use = [hello.sha256.clone()].into();
        let mut removed = store
            .collect(&in_use, std::time::Duration::from_secs(3600))
            .await
            .expect("collect");
        removed.sort();
        let mut want = vec![bye.sha256.clone(), ".tmp-interrupted".to_string()];
        want.sort();
        assert_eq!(removed, want);
        assert!(store.exists(&hello.sha256) && store.exists(&fresh.sha256));
        assert!(!store.exists(&bye.sha256) && !tmp.exists());
        // Storing a blob again marks it as stored now: it is not collected at once.
        age(&store.path(&hello.sha256).expect("path"));
        store
            .put(chunks(&[b"hello"]), 100, None)
            .await
            .expect("put");
        assert!(store
            .collect(&Default::default(), std::time::Duration::from_secs(3600))
            .await
            .expect("collect")
            .is_empty());
    }

    #[tokio::test]
    async fn stores_by_digest_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path());
        let blob = store
            .put(chunks(&[b"hel", b"lo"]), 100, Some(HELLO))
            .await
            .expect("put");
        assert_eq!(
            blob,
            Blob {
                sha256: HELLO.into(),
                size: 5
            }
        );
        assert_eq!(
            std::fs::read(store.path(HELLO).expect("path")).expect("read"),
            b"hello"
        );
        let err = store
            .put(chunks(&[b"hellO"]), 100, Some(HELLO))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        let err = store
            .put(chunks(&[b"hello"]), 4, None)
            .await
            .expect_err("limit");
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }));
        // Nothing but the one good blob is left.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sha256"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(HELLO)]);
        assert!(store.path("../etc/passwd").is_err());
    }
}
