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
