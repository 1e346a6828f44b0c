//! `addons`, `addons:create`, `addons:info`, `addons:destroy`, `addons:attach`,
//! `addons:detach`; `pg:backups`, `pg:backups:capture`, `pg:backups:restore`,
//! `pg:backups:download`: add-ons provisioned on the cluster (a PostgreSQL or Redis on one
//! of its hosts) and their backups.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::cli::AppArg;
use crate::output;

use super::*;

/// How long an app setup waits for its add-ons to come up (a first PostgreSQL boot runs
/// initdb).
const ADDONS_UP: std::time::Duration = std::time::Duration::from_secs(300);

/// The add-on commands (flattened into the CLI's grammar).
#[derive(Debug, Subcommand)]
pub enum AddonsCommand {
    /// List the app's add-ons (owned or attached), or every add-on of the cluster.
    #[command(name = "addons")]
    Addons {
        #[command(flatten)]
        app: AppArg,
    },
    /// Create an add-on (postgresql or redis) on a host of the cluster and attach it to the
    /// app: DATABASE_URL (REDIS_URL) is set as a new release once it is up.
    #[command(name = "addons:create")]
    AddonsCreate {
        /// postgresql, heroku-postgresql, redis or heroku-redis.
        plan: String,
        #[command(flatten)]
        app: AppArg,
        /// The attachment's name: its config var is NAME_URL (default DATABASE, REDIS).
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
    },
    /// Show an add-on: its state, host, attachments.
    #[command(name = "addons:info")]
    AddonsInfo { addon: String },
    /// Destroy an add-on and delete its data (detaching it from every app).
    #[command(name = "addons:destroy")]
    AddonsDestroy {
        addon: String,
        #[command(flatten)]
        app: AppArg,
        /// The app's name again, to confirm (asked for when not given).
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Attach an existing add-on to another app.
    #[command(name = "addons:attach")]
    AddonsAttach {
        addon: String,
        #[command(flatten)]
        app: AppArg,
        /// The attachment's name: its config var is NAME_URL.
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
    },
    /// Detach an add-on from the app (ATTACHMENT: its attachment name, e.g. DATABASE).
    #[command(name = "addons:detach")]
    AddonsDetach {
        attachment: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// List the backups of the app's PostgreSQL add-ons.
    #[command(name = "pg:backups")]
    PgBackups {
        #[command(flatten)]
        app: AppArg,
    },
    /// Back up a PostgreSQL add-on of the app (default: the one attached as DATABASE).
    #[command(name = "pg:backups:capture")]
    PgBackupsCapture {
        addon: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Restore a backup (b001) into its add-on, or into ADDON: what is there is replaced.
    #[command(name = "pg:backups:restore")]
    PgBackupsRestore {
        backup: String,
        addon: Option<String>,
        #[command(flatten)]
        app: AppArg,
        /// The app's name again, to confirm (asked for when not given).
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Download a backup (a pg_dump custom-format archive).
    #[command(name = "pg:backups:download")]
    PgBackupsDownload {
        backup: String,
        #[command(flatten)]
        app: AppArg,
        /// Where to write it (default: latest.dump).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Heroku's confirmation of a destructive command: `--confirm APP`, or typing the app's
/// name at the prompt when there is a terminal to ask on.
fn confirmed(app: &str, what: &str, confirm: Option<&str>) -> Result<()> {
    let given = match confirm {
        Some(given) => given.to_owned(),
        None if std::io::stdin().is_terminal() => {
            eprintln!(" !    WARNING: {what}");
            eprint!(
                " !    To proceed, type {app} or re-run this command with --confirm {app}\n\n> "
            );
            std::io::stderr().flush()?;
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim().to_owned()
        }
        None => bail!("{what}; to proceed, re-run this command with --confirm {app}"),
    };
    if given != app {
        bail!("confirmation {given:?} did not match {app}: nothing was done");
    }
    Ok(())
}

impl Ctx {
    pub(super) async fn addons_command(&self, command: AddonsCommand) -> Result<()> {
        match command {
            AddonsCommand::Addons { app } => self.addons(app.app.as_deref()).await,
            AddonsCommand::AddonsCreate { plan, app, name } => {
                self.addons_create(app.name()?, &plan, name.as_deref())
                    .await
            }
            AddonsCommand::AddonsInfo { addon } => self.addons_info(&addon).await,
            AddonsCommand::AddonsDestroy {
                addon,
                app,
                confirm,
            } => {
                let app = app.name()?;
                confirmed(
                    app,
                    &format!("this destroys {addon} and deletes its data"),
                    confirm.as_deref(),
                )?;
                self.addons_destroy(app, &addon).await
            }
            AddonsCommand::AddonsAttach { addon, app, name } => {
                self.addons_attach(app.name()?, &addon, name.as_deref())
                    .await
            }
            AddonsCommand::AddonsDetach { attachment, app } => {
                self.addons_detach(app.name()?, &attachment).await
            }
            AddonsCommand::PgBackups { app } => self.pg_backups(app.name()?).await,
            AddonsCommand::PgBackupsCapture { addon, app } => {
                self.pg_backups_capture(app.name()?, addon.as_deref()).await
            }
            AddonsCommand::PgBackupsRestore {
                backup,
                addon,
                app,
                confirm,
            } => {
                let app = app.name()?;
                confirmed(
                    app,
                    &format!("restoring {backup} replaces the data of {app}'s database"),
                    confirm.as_deref(),
                )?;
                self.pg_backups_restore(app, &backup, addon.as_deref())
                    .await
            }
            AddonsCommand::PgBackupsDownload {
                backup,
                app,
                output,
            } => {
                let output = output.unwrap_or_else(|| PathBuf::from("latest.dump"));
                self.pg_backups_download(app.name()?, &backup, &output)
                    .await
            }
        }
    }

    async fn addons(&self, app: Option<&str>) -> Result<()> {
        let path = match app {
            Some(app) => format!("/apps/{app}/addons"),
            None => "/addons".to_owned(),
        };
        let r = self.client.get(&path).await?;
        if self.json {
            return print_json(&r.body);
        }
        let addons: Vec<Value> = r.parse()?;
        if addons.is_empty() {
            println!("No add-ons: create one with `manifold addons:create postgresql -a APP`");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = addons
            .iter()
            .map(|a| {
                let vars: Vec<String> = a["config_vars"]
                    .as_array()
                    .map(|v| v.iter().map(text).collect())
                    .unwrap_or_default();
                vec![
                    text(&a["name"]),
                    text(&a["plan"]["name"]),
                    text(&a["app"]["name"]),
                    vars.join(", "),
                    text(&a["state"]),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["Add-on", "Plan", "Owner", "Config vars", "State"], &rows)
        );
        Ok(())
    }

    pub(super) async fn addons_create(
        &self,
        app: &str,
        plan: &str,
        name: Option<&str>,
    ) -> Result<()> {
        let mut body = json!({ "plan": plan });
        if let Some(name) = name {
            body["attachment"] = json!({ "name": name });
        }
        let r = self
            .client
            .post(&format!("/apps/{app}/addons"), &body)
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        let vars: Vec<String> = r.body["config_vars"]
            .as_array()
            .map(|v| v.iter().map(text).collect())
            .unwrap_or_default();
        println!(
            "Creating {} on {app}... done: {} (on host {})",
            text(&r.body["plan"]["name"]),
            text(&r.body["name"]),
            text(&r.body["host"]["id"])
        );
        println!(
            "{} is being provisioned: {} is set as a new release once it is up \
             (see `manifold addons:info {}`)",
            text(&r.body["name"]),
            vars.join(", "),
            text(&r.body["name"])
        );
        Ok(())
    }

    /// Waits until every add-on of `app` is available (their URLs set as a release), as an
    /// app setup does before it builds: the release phase then migrates the database.
    pub(super) async fn wait_addons_available(&self, app: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ADDONS_UP;
        loop {
            let addons: Vec<Value> = self
                .client
                .get(&format!("/apps/{app}/addons"))
                .await?
                .parse()?;
            if let Some(bad) = addons.iter().find(|a| text(&a["state"]) == "crashed") {
                bail!(
                    "add-on {} of {app} crashed while provisioning: see `manifold addons:info {}`",
                    text(&bad["name"]),
                    text(&bad["name"])
                );
            }
            if addons.iter().all(|a| text(&a["state"]) == "available") {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the add-ons of {app} were not available within {} s: see `manifold addons -a {app}`",
                    ADDONS_UP.as_secs()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }

    async fn addons_info(&self, addon: &str) -> Result<()> {
        let r = self.client.get(&format!("/addons/{addon}")).await?;
        if self.json {
            return print_json(&r.body);
        }
        let a = &r.body;
        let attachments: Vec<String> = a["attachments"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|t| format!("{}::{}", text(&t["app"]["name"]), text(&t["name"])))
                    .collect()
            })
            .unwrap_or_default();
        let mut state = text(&a["state"]);
        if !text(&a["reason"]).is_empty() {
            state.push_str(&format!(": {}", text(&a["reason"])));
        }
        println!("=== {}", text(&a["name"]));
        for (key, value) in [
            ("Attachments", attachments.join(", ")),
            ("Installed at", text(&a["created_at"])),
            ("Owning app", text(&a["app"]["name"])),
            ("Plan", text(&a["plan"]["name"])),
            ("Host", text(&a["host"]["id"])),
            ("State", state),
        ] {
            println!("{key:<13} {value}");
        }
        Ok(())
    }

    async fn addons_destroy(&self, app: &str, addon: &str) -> Result<()> {
        let r = self
            .client
            .delete(&format!("/apps/{app}/addons/{addon}"))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Destroying {} on {app}... done: its host deletes its data",
            text(&r.body["name"])
        );
        Ok(())
    }

    async fn addons_attach(&self, app: &str, addon: &str, name: Option<&str>) -> Result<()> {
        let mut body = json!({ "addon": {"name": addon}, "app": {"name": app} });
        if let Some(name) = name {
            body["name"] = json!(name);
        }
        let r = self.client.post("/addon-attachments", &body).await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Attaching {addon} to {app} as {}... done ({})",
            text(&r.body["name"]),
            text(&r.body["config_var"])
        );
        Ok(())
    }

    async fn addons_detach(&self, app: &str, attachment: &str) -> Result<()> {
        let r = self
            .client
            .get(&format!("/apps/{app}/addon-attachments"))
            .await?;
        let attachments: Vec<Value> = r.parse()?;
        let wanted = attachment.to_ascii_uppercase();
        let Some(found) = attachments
            .iter()
            .find(|a| text(&a["name"]) == wanted || text(&a["id"]) == attachment)
        else {
            let names: Vec<String> = attachments.iter().map(|a| text(&a["name"])).collect();
            bail!(
                "{app} has no attachment {attachment}{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!(": it has {}", names.join(", "))
                }
            );
        };
        let r = self
            .client
            .delete(&format!("/addon-attachments/{}", text(&found["id"])))
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Detaching {} ({}) from {app}... done",
            text(&r.body["name"]),
            text(&r.body["addon"]["name"])
        );
        Ok(())
    }

    async fn pg_backups(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/pg-backups")).await?;
        if self.json {
            return print_json(&r.body);
        }
        let backups: Vec<Value> = r.parse()?;
        if backups.is_empty() {
            println!("No backups: capture one with `manifold pg:backups:capture -a {app}`");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = backups
            .iter()
            .map(|b| {
                let mut state = text(&b["state"]);
                if !text(&b["reason"]).is_empty() {
                    state.push_str(&format!(": {}", text(&b["reason"])));
                }
                vec![
                    text(&b["name"]),
                    text(&b["created_at"]),
                    state,
                    b["size"].as_u64().unwrap_or(0).to_string(),
                    text(&b["addon"]["name"]),
                ]
            })
            .collect();
        println!("=== Backups of {app}");
        print!(
            "{}",
            output::table(&["ID", "Created at", "Status", "Size", "Database"], &rows)
        );
        Ok(())
    }

    async fn pg_backups_capture(&self, app: &str, addon: Option<&str>) -> Result<()> {
        let body = match addon {
            Some(addon) => json!({ "addon": addon }),
            None => json!({}),
        };
        let r = self
            .client
            .post(&format!("/apps/{app}/pg-backups"), &body)
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Backing up {} to {}... done ({} bytes)",
            text(&r.body["addon"]["name"]),
            text(&r.body["name"]),
            r.body["size"].as_u64().unwrap_or(0)
        );
        Ok(())
    }

    async fn pg_backups_restore(&self, app: &str, backup: &str, addon: Option<&str>) -> Result<()> {
        let body = match addon {
            Some(addon) => json!({ "addon": addon }),
            None => json!({}),
        };
        let r = self
            .client
            .post(
                &format!("/apps/{app}/pg-backups/{backup}/actions/restore"),
                &body,
            )
            .await?;
        if self.json {
            return print_json(&r.body);
        }
        println!(
            "Restoring {} into {}... done",
            text(&r.body["name"]),
            addon.map_or_else(|| text(&r.body["addon"]["name"]), str::to_owned)
        );
        Ok(())
    }

    async fn pg_backups_download(&self, app: &str, backup: &str, output: &PathBuf) -> Result<()> {
        let resp = self
            .client
            .stream(&format!("/apps/{app}/pg-backups/{backup}/download"))
            .await?;
        let partial = output.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let mut body = resp.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download was cut")?;
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write {}", partial.display()))?;
        }
        file.sync_all().await?;
        // Only a whole download takes the name.
        tokio::fs::rename(&partial, output)
            .await
            .with_context(|| format!("cannot write {}", output.display()))?;
        println!(
            "Downloading {backup} of {app}... done: {} ({size} bytes)",
            output.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parsed(argv: &[&str]) -> AddonsCommand {
        match Cli::try_parse_from(argv).expect("parse").command {
            Command::Addons(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn addon_commands_parse_as_on_heroku() {
        match parsed(&[
            "manifold",
            "addons:create",
            "postgresql",
            "-a",
            "x",
            "--as",
            "main",
        ]) {
            AddonsCommand::AddonsCreate { plan, app, name } => {
                assert_eq!(plan, "postgresql");
                assert_eq!(app.app.as_deref(), Some("x"));
                assert_eq!(name.as_deref(), Some("main"));
            }
            other => panic!("{other:?}"),
        }
        match parsed(&[
            "manifold",
            "pg:backups:restore",
            "b001",
            "-a",
            "x",
            "--confirm",
            "x",
        ]) {
            AddonsCommand::PgBackupsRestore {
                backup,
                addon,
                confirm,
                ..
            } => {
                assert_eq!(backup, "b001");
                assert_eq!(addon, None);
                assert_eq!(confirm.as_deref(), Some("x"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parsed(&["manifold", "addons"]),
            AddonsCommand::Addons { app } if app.app.is_none()
        ));
    }

    #[test]
    fn destroying_needs_the_apps_name() {
        assert!(confirmed("x", "it goes", Some("x")).is_ok());
        let err = confirmed("x", "it goes", Some("y")).expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            "confirmation \"y\" did not match x: nothing was done"
        );
    }
}
