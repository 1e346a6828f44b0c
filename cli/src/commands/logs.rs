//! `logs` and the log drains.

use std::io::Write;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use super::*;

impl Ctx {
    /// Copies the log stream to stdout as it arrives (until the server ends it or ^C).
    pub(super) async fn logs(&self, app: &str, query: &str) -> Result<()> {
        let resp = self
            .client
            .stream(&format!("/apps/{app}/log-stream?{query}"))
            .await?;
        let mut body = resp.bytes_stream();
        let mut out = std::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the log stream broke off")?;
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(())
    }

    pub(super) async fn drains(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/log-drains")).await?;
        if self.json {
            return print_json(&r.body);
        }
        let drains: Vec<Value> = r.parse()?;
        if drains.is_empty() {
            println!("{app} has no drains");
        }
        for d in &drains {
            println!(
                "{}  ({})",
                d["url"].as_str().unwrap_or_default(),
                d["token"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }

    pub(super) async fn drains_add(&self, app: &str, url: &str) -> Result<()> {
        let r = self
            .client
            .post(&format!("/apps/{app}/log-drains"), &json!({ "url": url }))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Successfully added drain {url} (token {})",
            r.body["token"].as_str().unwrap_or_default()
        );
        Ok(())
    }

    pub(super) async fn drains_remove(&self, app: &str, drain: &str) -> Result<()> {
        let r = self
            .client
            .delete(&format!("/apps/{app}/log-drains/{}", urlencode(drain)))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Successfully removed drain {}",
            r.body["url"].as_str().unwrap_or(drain)
        );
        Ok(())
    }
}
