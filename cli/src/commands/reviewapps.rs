//! `reviewapps:create`, `reviewapps`, `reviewapps:destroy`.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::api::Build;
use crate::tarball;

use super::*;

impl Ctx {
    pub(super) async fn reviewapps_create(
        &self,
        pipeline: &str,
        branch: &str,
        ttl: Option<u32>,
        dir: Option<&Path>,
    ) -> Result<()> {
        if branch.trim().is_empty() {
            bail!("missing branch: give --branch BRANCH");
        }
        let ttl = ttl.map(|h| h.to_string());
        let mut query = vec![("branch", branch)];
        if let Some(h) = &ttl {
            query.push(("ttl_hours", h.as_str()));
        }
        let path = format!("/pipelines/{}/review-apps", urlencode(pipeline));
        let reply = match dir {
            Some(dir) => {
                eprint!("Packing {}... ", dir.display());
                let tar = tarball::pack(dir)?;
                eprintln!("done, {:.1} MB ({})", tar.len as f64 / 1e6, tar.checksum);
                if tar.len > MAX_SOURCE_BYTES {
                    bail!(
                        "the source archive is {} MB; the API takes at most 512 MiB",
                        tar.len / 1_000_000
                    );
                }
                self.client
                    .post_source(&path, &query, tar.file, tar.len)
                    .await?
            }
            None => self.client.post_query(&path, &query).await?,
        };
        let review = reply.body;
        let app = review
            .pointer("/app/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        eprintln!("Creating review app {app} of {pipeline} from {branch}... done");
        let build: Build = serde_json::from_value(review["build"].clone())?;
        self.stream_output(&format!("/apps/{app}/builds/{}/output", build.id))
            .await?;
        let build: Build = self.wait_for_build(&app, &build.id).await?.parse()?;
        if self.json {
            return print_json(&review);
        }
        match build.status.as_str() {
            "succeeded" => {
                println!(
                    "Review app {app} is built: app.json's formation and postdeploy follow its release (see `manifold logs -a {app}`)"
                );
                Ok(())
            }
            "failed" => bail!(
                "the build of review app {app} failed (see above): destroy it with `manifold reviewapps:destroy {app} --confirm {app}`"
            ),
            other => bail!("build {} of {app} is still {other}", build.id),
        }
    }

    pub(super) async fn reviewapps(&self, pipeline: &str) -> Result<()> {
        let r = self
            .client
            .get(&format!("/pipelines/{}/review-apps", urlencode(pipeline)))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let rows: Vec<Vec<String>> = r
            .body
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| {
                let text = |p: &str| {
                    v.pointer(p)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let expires = text("/expires_at");
                vec![
                    text("/app/name"),
                    text("/branch"),
                    if expires.is_empty() {
                        "never".into()
                    } else {
                        expires
                    },
                ]
            })
            .collect();
        println!("=== {pipeline} review apps");
        if rows.is_empty() {
            println!("None: create one with `manifold reviewapps:create --pipeline {pipeline} --branch BRANCH`");
        } else {
            print!(
                "{}",
                crate::output::table(&["App", "Branch", "Expires"], &rows)
            );
        }
        Ok(())
    }

    /// Shows the pipeline's review config vars after setting `pairs` (none: only shows).
    pub(super) async fn reviewapps_config(&self, pipeline: &str, pairs: &[String]) -> Result<()> {
        let path = format!(
            "/pipelines/{}/stage/review/config-vars",
            urlencode(pipeline)
        );
        let r = if pairs.is_empty() {
            self.client.get(&path).await?
        } else {
            let vars = parse_pairs(pairs)?;
            self.client.patch(&path, &serde_json::json!(vars)).await?
        };
        if self.json {
            return print_json(&r.body);
        }
        print!(
            "{}",
            crate::output::config(&format!("{pipeline} review apps"), &r.parse()?)
        );
        Ok(())
    }

    pub(super) async fn reviewapps_destroy(&self, app: &str, confirm: Option<&str>) -> Result<()> {
        if confirm != Some(app) {
            bail!(
                "this destroys review app {app} with its dynos and releases; to proceed, run `manifold reviewapps:destroy {app} --confirm {app}`"
            );
        }
        let r = self.client.delete(&format!("/review-apps/{app}")).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Destroying review app {app}... done");
        Ok(())
    }
}
