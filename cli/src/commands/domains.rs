//! `domains`, `domains:add`, `domains:remove`; `certs`, `certs:add`, `certs:remove`;
//! `certs:auto`, `certs:auto:enable`, `certs:auto:disable`;
//! `maintenance`, `maintenance:on`, `maintenance:off`: what the router does for an app
//! besides sending it requests.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::output;

use super::*;

/// Largest certificate or key file sent (the API refuses more than 64 KiB of PEM).
const MAX_PEM_FILE: u64 = 64 * 1024;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A PEM file's text; refused before any request when unreadable or too big.
fn read_pem(what: &str, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    if meta.len() > MAX_PEM_FILE {
        bail!(
            "the {what} {} is {} bytes: a PEM {what} is a few KiB (at most {MAX_PEM_FILE} bytes)",
            path.display(),
            meta.len()
        );
    }
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?;
    String::from_utf8(pem).with_context(|| format!("the {what} {} is not PEM text", path.display()))
}

impl Ctx {
    pub(super) async fn domains(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/domains")).await?;
        if self.json {
            return print_json(&r.body);
        }
        let domains: Vec<Value> = r.parse()?;
        println!("=== {app} Default Domain");
        for d in domains.iter().filter(|d| d["kind"] == "default") {
            println!("{}", text(&d["hostname"]));
        }
        let custom: Vec<Vec<String>> = domains
            .iter()
            .filter(|d| d["kind"] == "custom")
            .map(|d| vec![text(&d["hostname"])])
            .collect();
        if !custom.is_empty() {
            println!("\n=== {app} Custom Domains");
            print!("{}", output::table(&["Domain Name"], &custom));
        }
        Ok(())
    }

    pub(super) async fn domains_add(&self, app: &str, hostname: &str) -> Result<()> {
        let r = self
            .client
            .post(
                &format!("/apps/{app}/domains"),
                &json!({ "hostname": hostname }),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let added = text(&r.body["hostname"]);
        println!("Adding {added} to {app}... done");
        println!("Point {added}'s DNS at the router; for HTTPS, `manifold certs:auto:enable -a {app}` or `manifold certs:add CERT KEY -a {app}`");
        Ok(())
    }

    pub(super) async fn domains_remove(&self, app: &str, hostname: &str) -> Result<()> {
        let r = self
            .client
            .delete(&format!("/apps/{app}/domains/{hostname}"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Removing {} from {app}... done", text(&r.body["hostname"]));
        Ok(())
    }

    pub(super) async fn certs(&self, app: &str) -> Result<()> {
        let r = self
            .client
            .get(&format!("/apps/{app}/sni-endpoints"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let certs: Vec<Value> = r.parse()?;
        if certs.is_empty() {
            println!("{app} has no certificates of its own (APP.DOMAIN uses the cluster's)");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = certs
            .iter()
            .map(|c| {
                let domains: Vec<String> = c["domains"]
                    .as_array()
                    .map(|d| d.iter().map(text).collect())
                    .unwrap_or_default();
                let mut status = text(&c["status"]);
                if let Some(error) = c["last_error"].as_str() {
                    status.push_str(&format!(": {error}"));
                }
                vec![
                    text(&c["id"]),
                    text(&c["source"]),
                    domains.join(", "),
                    text(&c["issuer"]),
                    text(&c["expires_at"]),
                    status,
                ]
            })
            .collect();
        println!("=== {app} Certificates");
        print!(
            "{}",
            output::table(
                &["ID", "Source", "Domains", "Issuer", "Expires", "Status"],
                &rows
            )
        );
        Ok(())
    }

    pub(super) async fn certs_add(&self, app: &str, cert: &Path, key: &Path) -> Result<()> {
        let chain = read_pem("certificate", cert)?;
        let key = read_pem("key", key)?;
        let r = self
            .client
            .post(
                &format!("/apps/{app}/sni-endpoints"),
                &json!({ "certificate_chain": chain, "private_key": key }),
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let domains: Vec<String> = r.body["domains"]
            .as_array()
            .map(|d| d.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "Adding a certificate to {app}... done: {} served for {} (expires {})",
            text(&r.body["id"]),
            domains.join(", "),
            text(&r.body["expires_at"])
        );
        Ok(())
    }

    pub(super) async fn certs_remove(&self, app: &str, id: &str) -> Result<()> {
        let r = self
            .client
            .delete(&format!("/apps/{app}/sni-endpoints/{id}"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!("Removing certificate {id} from {app}... done");
        Ok(())
    }

    pub(super) async fn certs_auto(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/acm")).await?;
        if self.json {
            return print_json(&r.body);
        }
        if r.body["acm"].as_bool() != Some(true) {
            println!("Automated certificates are off for {app}: turn them on with `manifold certs:auto:enable -a {app}`");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = r.body["domains"]
            .as_array()
            .map(|d| d.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|d| {
                let mut status = text(&d["status"]);
                if let Some(reason) = d["reason"].as_str() {
                    status.push_str(&format!(": {reason}"));
                }
                vec![text(&d["hostname"]), status, text(&d["expires_at"])]
            })
            .collect();
        println!("=== Automated certificates of {app}");
        if rows.is_empty() {
            println!("{app} has no custom domains: add one with `manifold domains:add HOSTNAME -a {app}`");
            return Ok(());
        }
        print!("{}", output::table(&["Domain", "Status", "Expires"], &rows));
        Ok(())
    }

    pub(super) async fn set_certs_auto(&self, app: &str, on: bool) -> Result<()> {
        let path = format!("/apps/{app}/acm");
        let r = if on {
            self.client.post(&path, &json!({})).await?
        } else {
            self.client.delete(&path).await?
        };
        if self.json {
            return print_json(&r.body);
        }
        if on {
            println!("Enabling automated certificates for {app}... done: see `manifold certs:auto -a {app}`");
        } else {
            println!("Disabling automated certificates for {app}... done");
        }
        Ok(())
    }

    pub(super) async fn maintenance(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}")).await?;
        if self.json {
            return print_json(&json!({ "maintenance": r.body["maintenance"] }));
        }
        let on = r.body["maintenance"].as_bool() == Some(true);
        println!("{}", if on { "on" } else { "off" });
        Ok(())
    }

    pub(super) async fn set_maintenance(&self, app: &str, on: bool) -> Result<()> {
        let r = self
            .client
            .patch(&format!("/apps/{app}"), &json!({ "maintenance": on }))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let verb = if on { "Enabling" } else { "Disabling" };
        println!("{verb} maintenance mode for {app}... done");
        Ok(())
    }
}
