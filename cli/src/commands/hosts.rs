//! `hosts`, `hosts:drain`, `hosts:undrain`.

use anyhow::Result;
use serde_json::json;

use crate::api::Host;
use crate::output;

use super::*;

impl Ctx {
    pub(super) async fn hosts(&self) -> Result<()> {
        let r = self.client.get("/hosts").await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::hosts(&r.parse::<Vec<Host>>()?));
        Ok(())
    }

    pub(super) async fn drain(&self, host: &str, drain: bool) -> Result<()> {
        let action = if drain { "drain" } else { "undrain" };
        let r = self
            .client
            .post(&format!("/hosts/{host}/actions/{action}"), &json!({}))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        if drain {
            println!("Draining {host}... done, its dynos are moving to other hosts");
        } else {
            println!("Undraining {host}... done, it takes new dynos again");
        }
        Ok(())
    }
}
