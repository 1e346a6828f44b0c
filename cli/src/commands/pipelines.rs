//! `pipelines`, `pipelines:create`, `pipelines:add`, `pipelines:remove`, `pipelines:info`,
//! `pipelines:promote`, `pipelines:destroy`.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::output;

use super::*;

/// A pipeline's stages, in the order slugs are promoted through them.
const STAGES: [&str; 4] = ["review", "development", "staging", "production"];

/// Checked before any request, so a typo changes nothing.
fn check_stage(stage: &str) -> Result<()> {
    if !STAGES.contains(&stage) {
        bail!("unknown stage {stage:?}: use review, development, staging or production");
    }
    Ok(())
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Ctx {
    pub(super) async fn pipelines(&self) -> Result<()> {
        let r = self.client.get("/pipelines").await?;
        if self.json {
            return print_json(&r.body);
        }
        let list = r.body.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("No pipelines: create one with `manifold pipelines:create NAME -a APP --stage STAGE`");
            return Ok(());
        }
        println!("=== Pipelines");
        for p in &list {
            println!("{}", text(p, "/name"));
        }
        Ok(())
    }

    pub(super) async fn pipelines_create(&self, name: &str, app: &str, stage: &str) -> Result<()> {
        check_stage(stage)?;
        let r = self
            .client
            .post(
                "/pipelines",
                &json!({"name": name, "app": app, "stage": stage}),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Creating {name} pipeline... done");
        println!("Adding {app} to {name} pipeline as {stage}... done");
        Ok(())
    }

    pub(super) async fn pipelines_add(&self, pipeline: &str, app: &str, stage: &str) -> Result<()> {
        check_stage(stage)?;
        let r = self
            .client
            .post(
                "/pipeline-couplings",
                &json!({"app": app, "pipeline": pipeline, "stage": stage}),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Adding {app} to {pipeline} pipeline as {stage}... done");
        Ok(())
    }

    pub(super) async fn pipelines_remove(&self, app: &str) -> Result<()> {
        let coupling = self
            .client
            .get(&format!("/apps/{app}/pipeline-couplings"))
            .await?
            .body;
        let r = self
            .client
            .delete(&format!("/pipeline-couplings/{}", text(&coupling, "/id")))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Removing {app} from {} pipeline... done",
            text(&coupling, "/pipeline/name")
        );
        Ok(())
    }

    pub(super) async fn pipelines_info(&self, pipeline: &str) -> Result<()> {
        let p = self.client.get(&format!("/pipelines/{pipeline}")).await?;
        let couplings = self
            .client
            .get(&format!("/pipelines/{pipeline}/pipeline-couplings"))
            .await?;
        if self.json {
            let mut out = p.body.clone();
            out["couplings"] = couplings.body.clone();
            return print_json(&out);
        }
        let mut rows: Vec<Vec<String>> = couplings
            .body
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                vec![
                    text(c, "/app/name").to_owned(),
                    text(c, "/stage").to_owned(),
                ]
            })
            .collect();
        rows.sort_by_key(|r| (STAGES.iter().position(|s| *s == r[1]), r[0].clone()));
        println!("=== {}", text(&p.body, "/name"));
        if rows.is_empty() {
            println!(
                "No apps: add one with `manifold pipelines:add {pipeline} -a APP --stage STAGE`"
            );
        } else {
            print!("{}", output::table(&["App Name", "Stage"], &rows));
        }
        Ok(())
    }

    pub(super) async fn pipelines_promote(&self, app: &str, to: &[String]) -> Result<()> {
        if let Some(empty) = to.iter().find(|t| t.trim().is_empty()) {
            bail!("empty app name in --to {empty:?}: use --to app1,app2");
        }
        let coupling = self
            .client
            .get(&format!("/apps/{app}/pipeline-couplings"))
            .await?
            .body;
        let targets: Vec<Value> = to.iter().map(|t| json!({"app": {"id": t}})).collect();
        let r = self
            .client
            .post(
                "/pipeline-promotions",
                &json!({
                    "pipeline": {"id": text(&coupling, "/pipeline/id")},
                    "source": {"app": {"id": app}},
                    "targets": targets,
                }),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let version = r.body.pointer("/source/release/version").cloned();
        let version = version.unwrap_or(Value::Null);
        for t in r.body["targets"].as_array().cloned().unwrap_or_default() {
            let target = text(&t, "/app/name");
            let v = t
                .pointer("/release/version")
                .cloned()
                .unwrap_or(Value::Null);
            let pending = text(&t, "/release/status") == "pending";
            println!(
                "Promoting {app} v{version} to {target}... done, v{v}{}",
                if pending {
                    format!(" (its release phase is running: see `manifold releases -a {target}`)")
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    pub(super) async fn pipelines_destroy(&self, pipeline: &str) -> Result<()> {
        let r = self
            .client
            .delete(&format!("/pipelines/{pipeline}"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Destroying {pipeline} pipeline... done (its apps stay)");
        Ok(())
    }
}
