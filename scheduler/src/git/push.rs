//! The scheduler's side of a push: the socket its `pre-receive` hook reaches (one per
//! `git-receive-pack` request, gone with it), and what a push does, as on Heroku:
//!
//! - `main` or `master`: build the pushed commit and release it, relaying the output;
//!   accept the push only when the release is live (a failed build or release phase
//!   rejects it and the branch stays where it was);
//! - another branch: stored, not deployed ("Pushed to non-deploy branch …");
//! - deleting the deploy branch, or moving both deploy branches at once: refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use uuid::Uuid;

use super::hook::{Pushed, Said, Update};
use super::{GitError, Quarantine, DEPLOY_BRANCHES};
use crate::builds::Deployed;
use crate::core::Core;
use crate::model::App;

/// Longest request a hook may send (its updates and paths).
const REQUEST_LIMIT: u64 = 1 << 20;

/// How long after a build's output ends its outcome may take to be recorded.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(60);

/// Longest path of a Unix socket (`sun_path` less its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

/// A push's socket: listening while its request runs; dropping it (the request ended)
/// stops the listener (a hook still waiting then sees the end, and rejects) and removes
/// the file.
pub(crate) struct PushSocket {
    pub(crate) path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    accepted: Arc<AtomicBool>,
    core: Arc<Core>,
    app: Uuid,
}

impl Drop for PushSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl PushSocket {
    /// What runs once git has ended (and moved the refs): if the hook accepted the push,
    /// the repository's new bundle is stored, before the pusher hears the push is done.
    pub(crate) fn after(&self) -> futures::future::BoxFuture<'static, ()> {
        let (accepted, core, app) = (self.accepted.clone(), self.core.clone(), self.app);
        Box::pin(async move {
            if !accepted.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = core.save_git_bundle(app).await {
                tracing::warn!("cannot store the bundle of app {app}'s repository: {e}");
            }
        })
    }
}

/// Opens the socket the hook of a push to `app`'s repository by `user` reaches.
pub(crate) fn serve_push(core: Arc<Core>, app: App, user: String) -> Result<PushSocket, GitError> {
    let path = core.git.scratch("push")?;
    if path.as_os_str().len() > SOCKET_PATH_MAX {
        return Err(GitError::Io {
            source: std::io::Error::other(format!(
                "a socket path may have at most {SOCKET_PATH_MAX} bytes: use a shorter --state-dir"
            )),
            path,
        });
    }
    let listener = UnixListener::bind(&path).map_err(|source| GitError::Io {
        path: path.clone(),
        source,
    })?;
    let accepted = Arc::new(AtomicBool::new(false));
    let (kept, id, said_yes) = (core.clone(), app.id, accepted.clone());
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            match answer(&core, &app, &user, conn).await {
                Ok(true) => said_yes.store(true, Ordering::SeqCst),
                Ok(false) => {}
                Err(e) => tracing::warn!("git push to {}: {e}", app.name),
            }
        }
    });
    Ok(PushSocket {
        path,
        task,
        accepted,
        core: kept,
        app: id,
    })
}

/// Reads the hook's request, does the push, and tells the hook each line and the verdict;
/// whether it accepted.
async fn answer(core: &Core, app: &App, user: &str, conn: UnixStream) -> std::io::Result<bool> {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    BufReader::new(read.take(REQUEST_LIMIT))
        .read_line(&mut line)
        .await?;
    let mut say = Sayer(&mut write);
    let pushed: Pushed = match serde_json::from_str(&line) {
        Ok(p) => p,
        Err(e) => {
            say.send(Said::Reject(format!("bad request from the hook: {e}")))
                .await?;
            return Ok(false);
        }
    };
    let verdict = match plan(&pushed.updates) {
        Err(why) => Said::Reject(why),
        Ok(plan) => {
            for branch in &plan.stored {
                say.line(format!(
                    "Pushed to non-deploy branch {branch}, not deploying (push to main or master to deploy)"
                ))
                .await?;
            }
            match plan.deploy {
                None => Said::Accept,
                Some(update) => {
                    deploy(
                        core,
                        app,
                        user,
                        update,
                        pushed.quarantine.as_ref(),
                        &mut say,
                    )
                    .await?
                }
            }
        }
    };
    let accepted = verdict == Said::Accept;
    say.send(verdict).await?;
    Ok(accepted)
}

/// Writes JSON lines to the hook.
struct Sayer<'a, W>(&'a mut W);

impl<W: AsyncWriteExt + Unpin> Sayer<'_, W> {
    async fn send(&mut self, said: Said) -> std::io::Result<()> {
        let mut text = serde_json::to_string(&said).map_err(std::io::Error::other)?;
        text.push('\n');
        self.0.write_all(text.as_bytes()).await?;
        self.0.flush().await
    }

    async fn line(&mut self, text: String) -> std::io::Result<()> {
        self.send(Said::Line(text)).await
    }
}

/// What a push's updates ask for.
#[derive(Debug, PartialEq)]
pub(crate) struct Plan {
    /// The deploy branch's update, if the push moves it.
    pub deploy: Option<Update>,
    /// Other branches it moves (created, updated or deleted), stored without a deploy.
    pub stored: Vec<String>,
}

/// Decides a push from its updates: deploying at most one deploy branch, never deleting it.
pub(crate) fn plan(updates: &[Update]) -> Result<Plan, String> {
    let mut deploy = None;
    let mut stored = Vec::new();
    for u in updates {
        if DEPLOY_BRANCHES.contains(&u.name.as_str()) {
            let branch = u.name.trim_start_matches("refs/heads/");
            if u.deletes() {
                return Err(format!(
                    "cannot delete {branch}: it is the app's deploy branch (destroy the app instead)"
                ));
            }
            if deploy.is_some() {
                return Err("push main or master, not both: each deploys the app".to_string());
            }
            deploy = Some(u.clone());
        } else if let Some(branch) = u.name.strip_prefix("refs/heads/") {
            if !u.deletes() {
                stored.push(branch.to_string());
            }
        }
    }
    Ok(Plan { deploy, stored })
}

/// Builds the pushed commit and waits for its release; the verdict.
async fn deploy<W: AsyncWriteExt + Unpin>(
    core: &Core,
    app: &App,
    user: &str,
    update: Update,
    quarantine: Option<&Quarantine>,
    say: &mut Sayer<'_, W>,
) -> std::io::Result<Said> {
    let branch = update.name.trim_start_matches("refs/heads/");
    let short = &update.new[..update.new.len().min(8)];
    say.line(format!(
        "-----> Building {branch} ({short}) of {}",
        app.name
    ))
    .await?;
    if let Some(q) = quarantine {
        if let Err(why) =
            check_quarantine(&core.git.path(app.id).map_err(std::io::Error::other)?, q)
        {
            return Ok(Said::Reject(why));
        }
    }
    let source = match core
        .git
        .archive(
            core.blobs.as_ref(),
            app.id,
            &update.new,
            quarantine,
            core.settings.upload_limit,
        )
        .await
    {
        Ok(blob) => blob,
        Err(e) => return Ok(Said::Reject(format!("cannot pack the pushed code: {e}"))),
    };
    let chosen = match crate::api::choose_buildpacks(core, app, Vec::new()).await {
        Ok(chosen) => chosen,
        Err(e) => return Ok(Said::Reject(format!("cannot build: {}", e.message()))),
    };
    let (buildpacks, origin) = chosen;
    let build = match core
        .builds
        .start(app, &source, buildpacks, origin, user)
        .await
    {
        Ok(build) => build,
        Err(e) => return Ok(Said::Reject(format!("cannot start the build: {e}"))),
    };
    let mut output = Box::pin(core.builds.clone().lines(build.id));
    while let Some(lines) = output.next().await {
        for line in lines {
            say.line(line).await?;
        }
    }
    let outcome = core.builds.outcome(app, build.id, OUTCOME_PATIENCE).await;
    Ok(match outcome {
        Ok(Deployed::Released(v)) => {
            say.line(format!("-----> {} deployed: v{v} from {branch} ({short})", app.name))
                .await?;
            Said::Accept
        }
        Ok(Deployed::Built) => Said::Accept,
        Ok(Deployed::BuildFailed) => {
            Said::Reject(format!("Push rejected to {}: the build failed (see above)", app.name))
        }
        Ok(Deployed::ReleaseFailed(v)) => Said::Reject(format!(
            "Push rejected to {}: release v{v} failed in its release phase (see above); the current release keeps serving",
            app.name
        )),
        Ok(Deployed::Pending) => Said::Reject(format!(
            "Push rejected to {}: build {} has not ended; see `manifold builds -a {}`",
            app.name, build.id, app.name
        )),
        Err(e) => Said::Reject(format!("cannot tell how build {} ended: {e}", build.id)),
    })
}

/// A hook's quarantine must be inside the app's repository: the hook's word is only
/// where git put the push's objects.
fn check_quarantine(repo: &Path, q: &Quarantine) -> Result<(), String> {
    let inside = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .zip(std::fs::canonicalize(repo).ok())
            .is_some_and(|(p, repo)| p.starts_with(repo))
    };
    let alternates = q.alternates.split(':').filter(|a| !a.is_empty());
    if !inside(&q.objects) || !alternates.clone().all(|a| inside(Path::new(a))) {
        return Err("the hook named objects outside the app's repository".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str, new: &str) -> Update {
        Update {
            old: "0".repeat(40),
            new: new.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_push_deploys_one_deploy_branch_and_stores_the_others() {
        let sha = "a".repeat(40);
        let zero = "0".repeat(40);
        let p = plan(&[
            update("refs/heads/feature", &sha),
            update("refs/heads/main", &sha),
            update("refs/tags/v1", &sha),
            update("refs/heads/old", &zero),
        ])
        .expect("plan");
        assert_eq!(p.deploy, Some(update("refs/heads/main", &sha)));
        assert_eq!(p.stored, vec!["feature".to_string()]);
        let p = plan(&[update("refs/heads/master", &sha)]).expect("plan");
        assert_eq!(p.deploy.map(|u| u.name), Some("refs/heads/master".into()));
        let err = plan(&[update("refs/heads/main", &zero)]).expect_err("delete");
        assert!(err.contains("cannot delete main"), "{err}");
        let err = plan(&[
            update("refs/heads/main", &sha),
            update("refs/heads/master", &sha),
        ])
        .expect_err("both");
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn a_quarantine_outside_the_repository_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("r.git");
        std::fs::create_dir_all(repo.join("objects/incoming-x")).expect("dirs");
        let good = Quarantine {
            objects: repo.join("objects/incoming-x"),
            alternates: repo.join("objects").display().to_string(),
        };
        assert!(check_quarantine(&repo, &good).is_ok());
        let bad = Quarantine {
            objects: repo.join("objects/incoming-x"),
            alternates: format!("{}:/etc", repo.join("objects").display()),
        };
        assert!(check_quarantine(&repo, &bad).is_err());
        let escape = Quarantine {
            objects: repo.join("objects/../../"),
            alternates: String::new(),
        };
        assert!(check_quarantine(&repo, &escape).is_err());
    }
}
