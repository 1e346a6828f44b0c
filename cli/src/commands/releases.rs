//! `releases`, `releases:info`, `releases:rollback`.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::api::{Release, Reply};
use crate::output;

use super::*;

impl Ctx {
    pub(super) async fn releases(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/releases")).await?;
        if self.json {
            return print_json(&r.body);
        }
        print!(
            "{}",
            output::releases(app, &r.parse::<Vec<Release>>()?, OffsetDateTime::now_utc())
        );
        Ok(())
    }

    pub(super) async fn releases_info(&self, app: &str, release: Option<&str>) -> Result<()> {
        let version = release.map(parse_version).transpose()?;
        let reply = match version {
            Some(v) => {
                self.client
                    .get(&format!("/apps/{app}/releases/{v}"))
                    .await?
            }
            None => {
                let all = self.client.get(&format!("/apps/{app}/releases")).await?;
                let current = all
                    .body
                    .as_array()
                    .and_then(|rs| {
                        rs.iter()
                            .find(|r| r.get("current").and_then(Value::as_bool) == Some(true))
                    })
                    .cloned()
                    .with_context(|| format!("{app} has no current release"))?;
                Reply {
                    body: current,
                    headers: all.headers,
                }
            }
        };
        if self.json {
            return print_json(&reply.body);
        }
        print!(
            "{}",
            output::release_info(&reply.parse()?, OffsetDateTime::now_utc())
        );
        Ok(())
    }

    pub(super) async fn rollback(&self, app: &str, release: Option<&str>) -> Result<()> {
        let target = match release.map(parse_version).transpose()? {
            Some(v) => v,
            None => {
                let all: Vec<Release> = self
                    .client
                    .get(&format!("/apps/{app}/releases"))
                    .await?
                    .parse()?;
                rollback_target(&all).with_context(|| format!("cannot roll back {app}"))?
            }
        };
        let r = self
            .client
            .post(
                &format!("/apps/{app}/releases"),
                &json!({ "release": target }),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let new: Release = r.parse()?;
        println!("Rolling back {app} to v{target}... done, v{}", new.version);
        Ok(())
    }
}
