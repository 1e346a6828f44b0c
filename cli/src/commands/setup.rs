//! `apps:create NAME --from DIR`: an app set up as DIR's app.json says. Everything that
//! can be wrong with app.json or the `--env` given (a bad field, a required var missing)
//! is found before the app is created; then the app is created with app.json's stack,
//! buildpacks and config vars, DIR is deployed as `deploy` does, the formation is scaled,
//! and `scripts.postdeploy` runs once in an attached one-off dyno after the first release.

use std::path::Path;

use anyhow::{bail, Context, Result};
use manifold_appjson::{AppJson, MAX_SIZE};
use serde_json::{json, Value};

use crate::run::RunSpec;

use super::*;

/// DIR/app.json parsed (an empty manifest when there is none), or what is wrong with it.
fn read_manifest(dir: &Path) -> Result<AppJson> {
    let path = dir.join("app.json");
    let size = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            return Ok(AppJson::default());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Checked before reading, so a huge file is not read to be refused.
    if size > MAX_SIZE as u64 {
        bail!(
            "{}: app.json is {size} bytes; the limit is {MAX_SIZE}",
            path.display()
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    AppJson::parse(&bytes).with_context(|| format!("{} is not usable", path.display()))
}

impl Ctx {
    pub(super) async fn apps_setup(
        &self,
        name: &str,
        stack: Option<String>,
        dir: &Path,
        env: &[String],
    ) -> Result<()> {
        let manifest = read_manifest(dir)?;
        let given = parse_pairs(env)?;
        let config = manifest.resolve_env(&given)?;
        let mut body = json!({ "name": name });
        if let Some(s) = stack.or(manifest.stack.clone()) {
            body["stack"] = Value::String(s);
        }
        self.client.post("/apps", &body).await?;
        println!("Creating {name}... done");
        let after_create = || {
            format!("{name} was created but not set up: destroy it with `manifold apps:destroy {name} --confirm {name}`")
        };
        if !manifest.buildpacks.is_empty() {
            let updates: Vec<Value> = manifest
                .buildpacks
                .iter()
                .map(|b| json!({ "buildpack": b }))
                .collect();
            self.client
                .put(
                    &format!("/apps/{name}/buildpack-installations"),
                    &json!({ "updates": updates }),
                )
                .await
                .with_context(after_create)?;
            println!(
                "Setting buildpacks {}... done",
                manifest.buildpacks.join(", ")
            );
        }
        if !config.is_empty() {
            self.client
                .patch(&format!("/apps/{name}/config-vars"), &json!(config))
                .await
                .with_context(after_create)?;
            let keys: Vec<&str> = config.keys().map(String::as_str).collect();
            println!("Setting {}... done", keys.join(", "));
        }
        // Add-ons first, as Heroku's app setups do: the build's release then carries their
        // URLs, and its release phase migrates the database.
        for addon in &manifest.addons {
            self.addons_create(name, &addon.service, addon.attach_as.as_deref())
                .await
                .with_context(after_create)?;
        }
        if !manifest.addons.is_empty() {
            self.wait_addons_available(name)
                .await
                .with_context(after_create)?;
        }
        self.deploy(name, dir, &[]).await?;
        let updates: Vec<Value> = manifest
            .formation
            .iter()
            .map(|(kind, f)| {
                let mut u = json!({ "type": kind });
                if let Some(q) = f.quantity {
                    u["quantity"] = json!(q);
                }
                if let Some(s) = &f.size {
                    u["size"] = json!(s);
                }
                u
            })
            .collect();
        if !updates.is_empty() {
            self.client
                .patch(
                    &format!("/apps/{name}/formation"),
                    &json!({ "updates": updates }),
                )
                .await
                .context("the app is deployed, but its formation was refused")?;
            let scaled: Vec<String> = manifest
                .formation
                .iter()
                .map(|(kind, f)| {
                    format!(
                        "{kind}={}",
                        f.quantity.map_or("-".into(), |q| q.to_string())
                    )
                })
                .collect();
            println!("Scaling {}... done", scaled.join(" "));
        }
        if let Some(script) = &manifest.postdeploy {
            println!("Running postdeploy: {}", script.command);
            let spec = RunSpec {
                command: script.command.clone(),
                size: script.size.clone(),
                env: Default::default(),
            };
            let code = oneoff::attached(&self.client, name, &spec, true).await?;
            if code != std::process::ExitCode::SUCCESS {
                bail!(
                    "postdeploy `{}` failed (see its output above): {name} is deployed, but its postdeploy did not finish",
                    script.command
                );
            }
            println!("postdeploy finished");
        }
        Ok(())
    }
}
