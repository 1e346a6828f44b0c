//! Repositories outlive the replica that holds them: after every accepted push the leader
//! stores a bundle of the whole repository (`git bundle create --all`) in the blob store
//! (shared by the replicas with PostgreSQL) and records its digest; a replica that leads
//! later and lacks the repository on its disk rebuilds it from the newest bundle before it
//! serves the remote.

use std::path::PathBuf;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{git_command, GitError};
use crate::core::Core;

/// A file in the repositories' directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Core {
    /// The app's repository, made on first use: restored from its newest bundle when this
    /// replica has none (another one took the pushes), else empty.
    pub async fn git_repo(&self, app: Uuid) -> Result<PathBuf, GitError> {
        let path = self.git.path(app)?;
        if path.join("HEAD").exists() {
            return Ok(path);
        }
        let Some(sha) = self.store.git_bundle(app).await? else {
            return self.git.ensure(app, None).await;
        };
        let Some(mut reader) = self.blobs.open(&sha).await? else {
            tracing::warn!("the bundle {sha} of app {app}'s repository is gone: starting it empty");
            return self.git.ensure(app, None).await;
        };
        let scratch = Scratch(self.git.scratch("bundle")?);
        let io = |source| GitError::Io {
            path: scratch.0.clone(),
            source,
        };
        let mut file = tokio::fs::File::create(&scratch.0).await.map_err(io)?;
        while let Some(chunk) = reader.body.next().await {
            file.write_all(&chunk?).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        drop(file);
        tracing::info!("restoring app {app}'s repository from its bundle {sha}");
        self.git.ensure(app, Some(&scratch.0)).await
    }

    /// Stores a bundle of the app's repository as its newest (after a push was accepted).
    pub(crate) async fn save_git_bundle(&self, app: Uuid) -> Result<(), GitError> {
        let repo = self.git.path(app)?;
        let scratch = Scratch(self.git.scratch("bundle")?);
        let out = git_command(Some((&repo, None)))
            .args(["bundle", "create", "--quiet"])
            .arg(&scratch.0)
            .arg("--all")
            .output()
            .await
            .map_err(|source| GitError::Spawn {
                what: "bundle create".into(),
                source,
            })?;
        if !out.status.success() {
            // A repository with no refs left (every branch deleted) makes no bundle.
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.contains("empty bundle") {
                return Ok(());
            }
            return Err(GitError::Git {
                what: "bundle create".into(),
                stderr,
            });
        }
        let file = tokio::fs::File::open(&scratch.0)
            .await
            .map_err(|source| GitError::Io {
                path: scratch.0.clone(),
                source,
            })?;
        let stream = tokio_util::io::ReaderStream::new(file);
        let blob = self
            .blobs
            .put(crate::blobs::upload(stream), self.settings.slug_limit, None)
            .await?;
        Ok(self.store.set_git_bundle(app, &blob.sha256).await?)
    }
}
