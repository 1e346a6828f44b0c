//! `ps`, `ps:scale`, `ps:restart`, `ps:stop`.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::api::{Dyno, Formation};
use crate::{output, scale};

use super::*;

impl Ctx {
    pub(super) async fn ps(&self, app: &str) -> Result<()> {
        let dynos = self.client.get(&format!("/apps/{app}/dynos")).await?;
        if self.json {
            return print_json(&dynos.body);
        }
        let formation: Vec<Formation> = self
            .client
            .get(&format!("/apps/{app}/formation"))
            .await?
            .parse()?;
        print!(
            "{}",
            output::ps(
                app,
                &dynos.parse::<Vec<Dyno>>()?,
                &formation,
                OffsetDateTime::now_utc()
            )
        );
        Ok(())
    }

    pub(super) async fn ps_scale(&self, app: &str, args: &[String]) -> Result<()> {
        let changes = scale::parse_all(args)?;
        let path = format!("/apps/{app}/formation");
        let current: Vec<Formation> = if changes.is_empty()
            || changes
                .iter()
                .any(|c| !matches!(c.quantity, scale::Quantity::Set(_)))
        {
            let r = self.client.get(&path).await?;
            if changes.is_empty() {
                if self.json {
                    return print_json(&r.body);
                }
                print!("{}", output::formation(&r.parse::<Vec<Formation>>()?));
                return Ok(());
            }
            r.parse()?
        } else {
            Vec::new()
        };
        let updates: Vec<Value> = changes
            .iter()
            .map(|c| {
                let now = current
                    .iter()
                    .find(|f| f.kind == c.kind)
                    .map_or(0, |f| f.quantity);
                let mut u = json!({ "type": c.kind, "quantity": c.resolve(now) });
                if let Some(size) = &c.size {
                    u["size"] = Value::String(size.clone());
                }
                u
            })
            .collect();
        let r = self
            .client
            .patch(&path, &json!({ "updates": updates }))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let result: Vec<Formation> = r.parse()?;
        let now: Vec<String> = changes
            .iter()
            .filter_map(|c| result.iter().find(|f| f.kind == c.kind))
            .map(|f| format!("{} at {}:{}", f.kind, f.quantity, f.size))
            .collect();
        println!("Scaling dynos... done, now running {}", now.join(", "));
        Ok(())
    }

    pub(super) async fn ps_restart(&self, app: &str, target: Option<&str>) -> Result<()> {
        let (path, what) = match target {
            None => (format!("/apps/{app}/dynos"), "dynos".to_string()),
            Some(t) if t.contains('.') => (format!("/apps/{app}/dynos/{t}"), format!("{t} dyno")),
            Some(t) => (format!("/apps/{app}/dynos/{t}"), format!("{t} dynos")),
        };
        let r = self.client.delete(&path).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Restarting {what} on {app}... done");
        Ok(())
    }

    pub(super) async fn ps_stop(&self, app: &str, target: &str) -> Result<()> {
        let names: Vec<String> = if target.contains('.') {
            vec![target.to_string()]
        } else {
            let dynos: Vec<Dyno> = self
                .client
                .get(&format!("/apps/{app}/dynos"))
                .await?
                .parse()?;
            let names: Vec<String> = dynos
                .into_iter()
                .filter(|d| d.kind == target)
                .map(|d| d.name)
                .collect();
            if names.is_empty() {
                bail!("no {target} dynos on {app}");
            }
            names
        };
        let mut replies = Vec::new();
        for name in &names {
            let r = self
                .client
                .post(
                    &format!("/apps/{app}/dynos/{name}/actions/stop"),
                    &json!({}),
                )
                .await?;
            if !self.json {
                println!("Stopping {name} dyno on {app}... done");
            }
            replies.push(r.body);
        }
        if self.json {
            return print_json(&Value::Array(replies));
        }
        Ok(())
    }
}
