//! What other flows (review apps) call: a branch's source blob and files, through
//! [`Core::git_repo`], which restores a repository this replica lacks.
//!
//! Repositories outlive the replica that holds them: after every accepted push the leader
//! stores a bundle of the whole repository (`git bundle create --all`) in the blob store
//! (shared by the replicas with PostgreSQL) and records its digest; a replica that leads
//! later and lacks the repository on its disk rebuilds it from the newest bundle before it
//! serves the remote.

use std::path::PathBuf;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{git_command, GitError, OutputOf};
use crate::blobs::Blob;
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

    /// A source blob (tar.gz, as builds take, at most the upload limit) of the commit `rev`
    /// names in the app's repository (`refs/heads/BRANCH`, a branch name, a tag, a commit
    /// id), the repository restored first if this replica lacks it.
    pub async fn git_source_blob(&self, app: Uuid, rev: &str) -> Result<Blob, GitError> {
        self.git_repo(app).await?;
        self.git
            .source_blob(self.blobs.as_ref(), app, rev, self.settings.upload_limit)
            .await
    }

    /// One file (e.g. `app.json`) of the commit `rev` names, at most `limit` bytes, the
    /// repository restored first if this replica lacks it.
    pub async fn git_read_file(
        &self,
        app: Uuid,
        rev: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, GitError> {
        self.git_repo(app).await?;
        self.git.read_file(app, rev, path, limit).await
    }

    /// Stores a bundle of the app's repository as its newest (after a push was accepted).
    pub(crate) async fn save_git_bundle(&self, app: Uuid) -> Result<(), GitError> {
        let repo = self.git.path(app)?;
        let scratch = Scratch(self.git.scratch("bundle")?);
        let out = git_command(Some((&repo, None)))
            .args(["bundle", "create", "--quiet"])
            .arg(&scratch.0)
            .arg("--all")
            .output_of("bundle create")
            .await?;
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
