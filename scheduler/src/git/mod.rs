//! Git remotes of apps, as Heroku's `https://git.heroku.com/APP.git`: `{API}/{app}.git`
//! served over smart HTTP by git's own `git http-backend` ([`cgi`]), one bare repository per
//! app on this replica's disk, named by the app's id so that renaming the app keeps it.
//!
//! A push to `main` or `master` builds and releases inside the push: every repository's
//! `pre-receive` hook is this scheduler's binary ([`hook`]), which hands the pushed commits
//! to the scheduler over a socket that lives as long as the push's request (`push.rs`),
//! prints the build's output as it comes (git shows it as `remote: …` lines) and refuses
//! the push when the build or the release phase fails, so the branch only moves to code
//! that runs.
//!
//! ```text
//! git push ─HTTP─▶ api/git.rs ─CGI─▶ git http-backend ─▶ receive-pack ─▶ pre-receive hook
//!                                                                          │ unix socket
//!            push.rs: git archive ─▶ blob ─▶ build ─▶ release phase ◀──────┘
//! ```
//!
//! [`crate::core::Core::git_source_blob`] and [`crate::core::Core::git_read_file`] serve other
//! flows (review apps) too.
//! The repositories are on the leader's disk; `bundle.rs` keeps a copy of each in the blob
//! store for the replica that leads next.

mod bundle;
pub mod cgi;
pub mod hook;
mod push;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use uuid::Uuid;

use crate::blobs::{Blob, BlobError, Blobs};

pub(crate) use push::serve_push;

/// The branches whose pushes deploy, as on Heroku.
pub const DEPLOY_BRANCHES: [&str; 2] = ["refs/heads/main", "refs/heads/master"];

/// Where the repositories live, the hook program, and the `git http-backend` to run.
#[derive(Debug)]
struct Layout {
    root: PathBuf,
    backend: PathBuf,
    hooks: PathBuf,
}

/// The apps' repositories on this replica. Configured once at start
/// ([`Repos::configure`]); until then (in tests that need no git) every call says so.
#[derive(Debug, Default)]
pub struct Repos {
    layout: OnceLock<Layout>,
}

/// What went wrong with a repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not set up on this scheduler (it has no repository directory)")]
    NotConfigured,
    #[error("no branch or commit {rev:?} in the app's repository")]
    UnknownRev { rev: String },
    #[error("invalid git revision {rev:?}: give a branch name, refs/heads/BRANCH or a commit id")]
    BadRev { rev: String },
    #[error("invalid path {path:?}: give a path relative to the repository's top, e.g. app.json")]
    BadPath { path: String },
    #[error("{path} is not in {rev}")]
    FileNotFound { rev: String, path: String },
    #[error("{path} in {rev} is larger than {limit} bytes")]
    FileTooLarge {
        rev: String,
        path: String,
        limit: u64,
    },
    #[error("cannot run git ({what}): {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("git {what} failed: {stderr}")]
    Git { what: String, stderr: String },
    #[error("cannot set up {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot store or read a blob: {0}")]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Objects a push brought that git keeps apart until its `pre-receive` hook accepts them
/// (git's quarantine): reading the pushed commit needs them, and they are only inside the
/// repository's own directory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Quarantine {
    /// `GIT_OBJECT_DIRECTORY` in the hook.
    pub objects: PathBuf,
    /// `GIT_ALTERNATE_OBJECT_DIRECTORIES` in the hook.
    pub alternates: String,
}

/// The `pre-receive` hook every repository runs: `core.hooksPath` names its directory on
/// each request, so a scheduler binary that moved is picked up at its next start.
fn hook_script(program: &Path) -> String {
    let quoted = program.to_string_lossy().replace('\'', r"'\''");
    format!("#!/bin/sh\n# Written by manifold-scheduler at start: pushes build and release here.\nexec '{quoted}' git-hook pre-receive\n")
}

impl Repos {
    /// Keeps the repositories under `root` (made if missing), with `program` (this
    /// scheduler's binary) as their hook. Also finds `git http-backend`.
    pub fn configure(&self, root: &Path, program: &Path) -> Result<(), GitError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| GitError::Io { path, source }
        };
        let hooks = root.join(".hooks");
        for dir in [&hooks, &root.join(".push")] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let script = hooks.join("pre-receive");
        std::fs::write(&script, hook_script(program)).map_err(io(&script))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&script))?;
        let exec_path = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .map_err(|source| GitError::Spawn {
                what: "git --exec-path (is git installed?)".into(),
                source,
            })?;
        let backend = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim())
            .join("git-http-backend");
        if !backend.exists() {
            return Err(GitError::Io {
                path: backend,
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let layout = Layout {
            root: root.to_path_buf(),
            backend,
            hooks,
        };
        // A second configure (a test's) keeps the first.
        let _ = self.layout.set(layout);
        Ok(())
    }

    fn layout(&self) -> Result<&Layout, GitError> {
        self.layout.get().ok_or(GitError::NotConfigured)
    }

    /// `git http-backend` and the environment it runs in beside the request's: the
    /// repositories, none of the scheduler's own variables (its tokens), and the settings
    /// of every push, given on each request (`GIT_CONFIG_*`) rather than kept in the
    /// repositories: this scheduler's hook, force pushes allowed as on Heroku, deletes left
    /// to the hook (which refuses the deploy branch's), packs bounded by `limit`.
    pub(crate) fn backend_env(
        &self,
        limit: u64,
    ) -> Result<(PathBuf, Vec<(OsString, OsString)>), GitError> {
        let layout = self.layout()?;
        let config = [
            ("core.hooksPath", layout.hooks.display().to_string()),
            ("receive.denyNonFastForwards", "false".into()),
            ("receive.denyDeletes", "false".into()),
            ("receive.maxInputSize", limit.to_string()),
            ("http.receivepack", "true".into()),
        ];
        let mut env: Vec<(OsString, OsString)> = vec![
            ("GIT_PROJECT_ROOT".into(), layout.root.clone().into()),
            (
                "PATH".into(),
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            ),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("HOME".into(), "/nonexistent".into()),
            ("LC_ALL".into(), "C".into()),
            ("GIT_CONFIG_COUNT".into(), config.len().to_string().into()),
        ];
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}").into(), key.into()));
            env.push((format!("GIT_CONFIG_VALUE_{i}").into(), value.into()));
        }
        Ok((layout.backend.clone(), env))
    }

    /// The directory of the app's repository (whether or not it exists yet).
    pub fn path(&self, app: Uuid) -> Result<PathBuf, GitError> {
        Ok(self.layout()?.root.join(format!("{app}.git")))
    }

    /// A fresh path for a push's socket or a bundle, in a directory only the scheduler
    /// reads.
    pub(crate) fn scratch(&self, what: &str) -> Result<PathBuf, GitError> {
        Ok(self
            .layout()?
            .root
            .join(".push")
            .join(format!("{what}-{}", Uuid::new_v4().simple())))
    }

    /// The app's repository, made (bare, `main` as HEAD) if missing: empty, or with every
    /// ref of `bundle` (see [`crate::core::Core::git_repo`], which also restores).
    pub async fn ensure(&self, app: Uuid, bundle: Option<&Path>) -> Result<PathBuf, GitError> {
        let path = self.path(app)?;
        if path.join("HEAD").exists() {
            return Ok(path);
        }
        // Made aside and renamed into place, so two first pushes at once make one.
        let root = &self.layout()?.root;
        let aside = root.join(format!(".new-{}", Uuid::new_v4().simple()));
        let out = git_command(None)
            .args(["init", "--bare", "--quiet", "--initial-branch=main"])
            .arg(&aside)
            .output_of("init")
            .await?;
        if !out.status.success() {
            return Err(GitError::Git {
                what: "init".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if let Some(bundle) = bundle {
            let out = git_command(Some((&aside, None)))
                .args(["fetch", "--quiet"])
                .arg(bundle)
                .arg("refs/*:refs/*")
                .output_of("fetch")
                .await?;
            if !out.status.success() {
                let _ = tokio::fs::remove_dir_all(&aside).await;
                return Err(GitError::Git {
                    what: "fetch from the bundle".into(),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        if tokio::fs::rename(&aside, &path).await.is_err() {
            let _ = tokio::fs::remove_dir_all(&aside).await;
            if !path.join("HEAD").exists() {
                return Err(GitError::Io {
                    path,
                    source: std::io::Error::other("the new repository could not be put in place"),
                });
            }
        }
        Ok(path)
    }

    /// Deletes the app's repository (the app was destroyed).
    pub async fn remove(&self, app: Uuid) {
        let Ok(path) = self.path(app) else { return };
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot delete the repository {}: {e}", path.display()),
        }
    }

    /// The commit `rev` names in the app's repository (a branch, `refs/heads/BRANCH`, a tag,
    /// a commit id), seeing the objects of a push in progress when given its quarantine.
    async fn commit(
        &self,
        app: Uuid,
        rev: &str,
        quarantine: Option<&Quarantine>,
    ) -> Result<(PathBuf, String), GitError> {
        check_rev(rev)?;
        let repo = self.path(app)?;
        if !repo.join("HEAD").exists() {
            return Err(GitError::UnknownRev { rev: rev.into() });
        }
        let out = git_command(Some((&repo, quarantine)))
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"))
            .output_of("rev-parse")
            .await?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || sha.is_empty() {
            return Err(GitError::UnknownRev { rev: rev.into() });
        }
        Ok((repo, sha))
    }

    /// A source blob (a tar.gz of the tree, as `manifold deploy` uploads) of the commit
    /// `rev` names in the app's repository, at most `limit` bytes: what a build takes.
    pub async fn source_blob(
        &self,
        blobs: &dyn Blobs,
        app: Uuid,
        rev: &str,
        limit: u64,
    ) -> Result<Blob, GitError> {
        self.archive(blobs, app, rev, None, limit).await
    }

    /// [`Repos::source_blob`], of a push in progress (see [`Quarantine`]).
    pub(crate) async fn archive(
        &self,
        blobs: &dyn Blobs,
        app: Uuid,
        rev: &str,
        quarantine: Option<&Quarantine>,
        limit: u64,
    ) -> Result<Blob, GitError> {
        let (repo, sha) = self.commit(app, rev, quarantine).await?;
        let spawn = |source| GitError::Spawn {
            what: "archive".into(),
            source,
        };
        let mut child = git_command(Some((&repo, quarantine)))
            .args(["archive", "--format=tar.gz", &sha])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn)?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(spawn(std::io::Error::other("no pipes")));
        };
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = (&mut stderr).take(8192).read_to_string(&mut text).await;
            text
        });
        let stream = tokio_util::io::ReaderStream::new(stdout);
        let stored = blobs
            .put(crate::blobs::upload(stream.boxed()), limit, None)
            .await;
        let status = child.wait().await.map_err(spawn)?;
        let stderr = errors.await.unwrap_or_default();
        if !status.success() {
            return Err(GitError::Git {
                what: "archive".into(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(stored?)
    }

    /// One file of the commit `rev` names (e.g. `app.json`), at most `limit` bytes.
    pub async fn read_file(
        &self,
        app: Uuid,
        rev: &str,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, GitError> {
        if path.is_empty()
            || path.starts_with('/')
            || path.len() > 1024
            || path.contains(['\0', '\n', ':'])
            || path.split('/').any(|p| p == ".." || p == ".")
        {
            return Err(GitError::BadPath { path: path.into() });
        }
        let (repo, sha) = self.commit(app, rev, None).await?;
        let object = format!("{sha}:{path}");
        let run = |args: Vec<String>| {
            let repo = repo.clone();
            async move {
                git_command(Some((&repo, None)))
                    .args(&args)
                    .output_of("cat-file")
                    .await
            }
        };
        let kind = run(vec!["cat-file".into(), "-t".into(), object.clone()]).await?;
        if !kind.status.success() || String::from_utf8_lossy(&kind.stdout).trim() != "blob" {
            return Err(GitError::FileNotFound {
                rev: rev.into(),
                path: path.into(),
            });
        }
        let size = run(vec!["cat-file".into(), "-s".into(), object.clone()]).await?;
        let size: u64 = String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if size > limit {
            return Err(GitError::FileTooLarge {
                rev: rev.into(),
                path: path.into(),
                limit,
            });
        }
        let out = run(vec!["cat-file".into(), "blob".into(), object]).await?;
        if !out.status.success() {
            return Err(GitError::Git {
                what: "cat-file".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(out.stdout)
    }
}

/// A revision a user or a hook gave: no options, no control characters, bounded.
fn check_rev(rev: &str) -> Result<(), GitError> {
    if rev.is_empty()
        || rev.len() > 256
        || rev.starts_with('-')
        || rev.chars().any(|c| c.is_control() || c == ' ')
    {
        return Err(GitError::BadRev { rev: rev.into() });
    }
    Ok(())
}

/// `git` with nothing of this machine's or user's git configuration and none of the
/// scheduler's environment (its tokens): only `PATH`, and the repository (with a push's
/// quarantined objects) when given.
/// Running a git command to its end, its failure to start named by what it was for.
trait OutputOf {
    async fn output_of(&mut self, what: &str) -> Result<std::process::Output, GitError>;
}

impl OutputOf for Command {
    async fn output_of(&mut self, what: &str) -> Result<std::process::Output, GitError> {
        self.output().await.map_err(|source| GitError::Spawn {
            what: what.into(),
            source,
        })
    }
}

fn git_command(repo: Option<(&Path, Option<&Quarantine>)>) -> Command {
    let mut cmd = Command::new("git");
    isolate(&mut cmd);
    if let Some((repo, quarantine)) = repo {
        cmd.env("GIT_DIR", repo);
        if let Some(q) = quarantine {
            cmd.env("GIT_OBJECT_DIRECTORY", &q.objects)
                .env("GIT_ALTERNATE_OBJECT_DIRECTORIES", &q.alternates);
        }
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Clears a git process's environment down to `PATH`, with no system or global config.
fn isolate(cmd: &mut Command) {
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/nonexistent")
        .env("LC_ALL", "C");
}

/// Whether an API path is a git remote's: `/{app}.git/info/refs`, `/git-upload-pack`,
/// `/git-receive-pack`.
pub fn is_git_path(path: &str) -> bool {
    repo_of(path).is_some()
}

/// The repository segment's app name, if `path` is a git remote's.
pub(crate) fn repo_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (repo, action) = rest.split_once('/')?;
    let name = repo.strip_suffix(".git")?;
    matches!(action, "info/refs" | "git-upload-pack" | "git-receive-pack").then_some(name)
}

/// An answer git shows its user: git prints a `text/plain` error body as `remote: …`
/// lines, and ignores JSON.
pub fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    let mut res = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"manifold\""),
        );
    }
    res
}

/// The user name and password of HTTP Basic authentication, as git sends them.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests;
