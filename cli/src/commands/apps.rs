//! `apps`, `apps:create`, `apps:info`, `apps:update`, `apps:destroy`.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::api::{App, Dyno};
use crate::output;

use super::*;

impl Ctx {
    pub(super) async fn apps_update(
        &self,
        app: &str,
        boot: Option<u32>,
        stop: Option<u32>,
    ) -> Result<()> {
        if boot.is_none() && stop.is_none() {
            bail!("nothing to change: give --boot-timeout SECS and/or --stop-timeout SECS");
        }
        let mut body = serde_json::Map::new();
        if let Some(b) = boot {
            body.insert("boot_timeout".into(), json!(b));
        }
        if let Some(s) = stop {
            body.insert("stop_timeout".into(), json!(s));
        }
        let r = self
            .client
            .patch(&format!("/apps/{app}"), &Value::Object(body))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let a: App = r.parse()?;
        println!(
            "Updating {app}... done: boot timeout {} s, stop timeout {} s (for dynos started from now on)",
            a.boot_timeout.unwrap_or(60),
            a.stop_timeout.unwrap_or(30)
        );
        Ok(())
    }

    pub(super) async fn apps(&self) -> Result<()> {
        let r = self.client.get("/apps").await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::apps(&r.parse::<Vec<App>>()?));
        Ok(())
    }

    pub(super) async fn apps_create(&self, name: &str, stack: Option<String>) -> Result<()> {
        let mut body = json!({ "name": name });
        if let Some(s) = stack {
            body["stack"] = Value::String(s);
        }
        let r = self.client.post("/apps", &body).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Creating {name}... done");
        Ok(())
    }

    pub(super) async fn apps_info(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}")).await?;
        if self.json {
            return print_json(&r.body);
        }
        let dynos: Vec<Dyno> = self
            .client
            .get(&format!("/apps/{app}/dynos"))
            .await?
            .parse()?;
        print!(
            "{}",
            output::app_info(&r.parse()?, &dynos, OffsetDateTime::now_utc())
        );
        Ok(())
    }

    pub(super) async fn apps_destroy(&self, app: &str, confirm: Option<&str>) -> Result<()> {
        if confirm != Some(app) {
            bail!(
                "this destroys {app} and stops its dynos; to proceed, run `manifold apps:destroy {app} --confirm {app}`"
            );
        }
        let r = self.client.delete(&format!("/apps/{app}")).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Destroying {app} (including all dynos)... done");
        Ok(())
    }
}
