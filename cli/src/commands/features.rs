//! `features`, `features:enable`, `features:disable`.

use anyhow::Result;
use serde_json::{json, Value};

use super::*;

impl Ctx {
    pub(super) async fn features(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/features")).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("=== {app} Features");
        let features: Vec<Value> = r.parse()?;
        for f in &features {
            let on = if f["enabled"].as_bool() == Some(true) {
                "[+]"
            } else {
                "[ ]"
            };
            println!(
                "{on} {}  {}",
                f["name"].as_str().unwrap_or_default(),
                f["description"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    }

    pub(super) async fn set_feature(&self, app: &str, feature: &str, enabled: bool) -> Result<()> {
        let r = self
            .client
            .patch(
                &format!("/apps/{app}/features/{feature}"),
                &json!({ "enabled": enabled }),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let verb = if enabled { "Enabling" } else { "Disabling" };
        println!("{verb} {feature} for {app}... done");
        Ok(())
    }
}
