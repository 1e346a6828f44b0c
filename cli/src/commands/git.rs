//! `git:remote`, `git:clone` and git's credential helper `git:credentials`: an app's git
//! remote is `{API}/{APP}.git`, and git gets the API token from this CLI when it asks
//! (as Heroku's CLI does), so the token is never written into a repository's config.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::api::Client;

use super::*;

impl Ctx {
    /// The remote's URL, once the app is known to exist (which also finds the leader).
    async fn remote_url(&self, app: &str) -> Result<String> {
        self.client.get(&format!("/apps/{app}")).await?;
        Ok(format!("{}/{app}.git", self.client.base()))
    }

    /// The `-c` settings a repository needs for the remote at `url`.
    fn remote_config(&self, url: &str) -> Result<Vec<(String, String)>> {
        let exe = std::env::current_exe().context("cannot tell where manifold is")?;
        let quoted = exe.to_string_lossy().replace('\'', r"'\''");
        let mut config = vec![
            // An empty helper first: helpers set elsewhere for this URL do not answer first.
            (format!("credential.{url}.helper"), String::new()),
            (
                format!("credential.{url}.helper"),
                format!("!'{quoted}' git:credentials"),
            ),
        ];
        if let Some(ca) = &self.client.settings().ca {
            let ca = std::path::absolute(ca)
                .with_context(|| format!("cannot resolve {}", ca.display()))?;
            config.push((format!("http.{url}.sslCAInfo"), ca.display().to_string()));
        }
        Ok(config)
    }

    pub(super) async fn git_remote(&self, app: &str, remote: &str) -> Result<()> {
        let url = self.remote_url(app).await?;
        let repo =
            git(&["rev-parse", "--git-dir"]).context("run git:remote in a git repository")?;
        let repo = repo.trim();
        let exists = Command::new("git")
            .args(["remote", "get-url", remote])
            .output()
            .context("cannot run git")?
            .status
            .success();
        if exists {
            git(&["remote", "set-url", remote, &url])?;
        } else {
            git(&["remote", "add", remote, &url])?;
        }
        let config = self.remote_config(&url)?;
        let mut keys: Vec<&str> = config.iter().map(|(k, _)| k.as_str()).collect();
        keys.dedup();
        for key in keys {
            // Absent the first time: unset may fail.
            let _ = Command::new("git")
                .args(["config", "--unset-all", key])
                .output();
        }
        for (key, value) in &config {
            git(&["config", "--add", key, value])?;
        }
        if !self.json {
            println!("set git remote {remote} to {url} (in {repo})");
        }
        Ok(())
    }

    pub(super) async fn git_clone(
        &self,
        app: &str,
        dir: Option<&Path>,
        remote: &str,
    ) -> Result<()> {
        let url = self.remote_url(app).await?;
        let dir = dir.unwrap_or(Path::new(app));
        let mut cmd = Command::new("git");
        cmd.arg("clone").args(["--origin", remote]);
        for (key, value) in self.remote_config(&url)? {
            cmd.arg("-c").arg(format!("{key}={value}"));
        }
        let status = cmd.arg(&url).arg(dir).status().context("cannot run git")?;
        if !status.success() {
            bail!("git clone {url} failed (see above)");
        }
        Ok(())
    }
}

/// git's credential helper: `get` answers with the API token (nothing without one, and
/// git asks the user); `store` and `erase` keep nothing, as the token lives elsewhere.
pub(super) fn credentials(client: &Client, operation: &str) -> Result<()> {
    // git writes what it asks on stdin: read it all so it never blocks.
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line?.is_empty() {
            break;
        }
    }
    match operation {
        "get" => {
            if let Some(token) = &client.settings().token {
                let mut out = std::io::stdout();
                // The scheduler checks only the password; the name is the builds' user, as
                // `Manifold-User` is for `deploy`.
                writeln!(out, "username={}", client.settings().user)?;
                writeln!(out, "password={token}")?;
            }
            Ok(())
        }
        "store" | "erase" => Ok(()),
        other => {
            bail!("unknown credential operation {other:?}: git runs this with get, store or erase")
        }
    }
}

/// Runs git in the current directory; its stdout.
fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
