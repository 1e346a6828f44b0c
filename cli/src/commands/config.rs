//! `config`, `config:get`, `config:set`, `config:unset`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use crate::api::Reply;
use crate::output;

use super::*;

impl Ctx {
    pub(super) async fn config_vars(&self, app: &str) -> Result<Reply> {
        self.client.get(&format!("/apps/{app}/config-vars")).await
    }

    pub(super) async fn config(&self, app: &str) -> Result<()> {
        let r = self.config_vars(app).await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::config(app, &r.parse()?));
        Ok(())
    }

    pub(super) async fn config_get(&self, app: &str, key: &str) -> Result<()> {
        let r = self.config_vars(app).await?;
        let vars: BTreeMap<String, String> = r.parse()?;
        let value = vars.get(key);
        if self.json {
            return print_json(&value.map_or(Value::Null, |v| Value::String(v.clone())));
        }
        // Like Heroku: an unset key prints an empty line, so `$(manifold config:get X)` works.
        println!("{}", value.map_or("", String::as_str));
        Ok(())
    }

    pub(super) async fn config_set(&self, app: &str, pairs: &[String]) -> Result<()> {
        let vars = parse_pairs(pairs)?;
        let body: Map<String, Value> = vars
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let r = self
            .client
            .patch(&format!("/apps/{app}/config-vars"), &Value::Object(body))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
        println!(
            "Setting {} and restarting {app}... {}",
            and_list(&keys),
            done_with_release(&r)
        );
        print!("{}", output::config_lines(&vars));
        Ok(())
    }

    pub(super) async fn config_unset(&self, app: &str, keys: &[String]) -> Result<()> {
        if let Some(bad) = keys.iter().find(|k| k.is_empty() || k.contains('=')) {
            bail!("invalid config var name `{bad}`: config:unset takes KEY ...");
        }
        let body: Map<String, Value> = keys.iter().map(|k| (k.clone(), Value::Null)).collect();
        let r = self
            .client
            .patch(&format!("/apps/{app}/config-vars"), &Value::Object(body))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        println!(
            "Unsetting {} and restarting {app}... {}",
            and_list(&keys),
            done_with_release(&r)
        );
        Ok(())
    }
}
