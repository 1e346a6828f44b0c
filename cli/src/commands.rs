//! One function per subcommand: validate arguments, call the API, print.
//!
//! Argument validation always happens before the first request, so a typo never leaves
//! an app half-changed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::api::{App, Build, Client, Dyno, Formation, Host, Release, Reply, Settings};
use crate::cli::{Cli, Command};
use crate::run::RunSpec;
use crate::{output, run as oneoff, scale, tarball};

/// The scheduler rejects bigger uploads (413); failing before the upload saves the wait.
const MAX_SOURCE_BYTES: u64 = 512 << 20;

/// Runs one command; the exit code is 0 unless the command says otherwise (`run` passes
/// on the dyno's). Errors are for `main` to print, with exit code 1.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let client = Client::new(Settings::from_env().with_ca(cli.ca.clone()))?;
    let ctx = Ctx {
        client,
        json: cli.json,
    };
    let done = match cli.command {
        // `run` exits with the dyno's status; everything else with 0 when it worked.
        Command::Run(args) if !args.detached => {
            let app = args.app.name()?;
            let spec = RunSpec::from_args(&args)?;
            return oneoff::attached(&ctx.client, app, &spec, args.no_tty).await;
        }
        Command::Run(args) | Command::RunDetached(args) => {
            let app = args.app.name()?;
            let spec = RunSpec::from_args(&args)?;
            oneoff::detached(&ctx.client, app, &spec, ctx.json).await
        }
        Command::Apps => ctx.apps().await,
        Command::AppsCreate { name, stack } => ctx.apps_create(&name, stack).await,
        Command::AppsInfo { app } => ctx.apps_info(app.name()?).await,
        Command::AppsUpdate {
            app,
            boot_timeout,
            stop_timeout,
        } => {
            ctx.apps_update(app.name()?, boot_timeout, stop_timeout)
                .await
        }
        Command::AppsDestroy { name, app, confirm } => {
            let name = match name {
                Some(n) => n,
                None => app.name()?.to_string(),
            };
            ctx.apps_destroy(&name, confirm.as_deref()).await
        }
        Command::Deploy {
            dir,
            app,
            buildpacks,
        } => ctx.deploy(app.name()?, &dir, &buildpacks).await,
        Command::Ps { app } => ctx.ps(app.name()?).await,
        Command::PsScale { changes, app } => ctx.ps_scale(app.name()?, &changes).await,
        Command::PsRestart { target, app } => ctx.ps_restart(app.name()?, target.as_deref()).await,
        Command::PsStop { target, app } => ctx.ps_stop(app.name()?, &target).await,
        Command::Config { app } => ctx.config(app.name()?).await,
        Command::ConfigGet { key, app } => ctx.config_get(app.name()?, &key).await,
        Command::ConfigSet { pairs, app } => ctx.config_set(app.name()?, &pairs).await,
        Command::ConfigUnset { keys, app } => ctx.config_unset(app.name()?, &keys).await,
        Command::Releases { app } => ctx.releases(app.name()?).await,
        Command::ReleasesInfo { release, app } => {
            ctx.releases_info(app.name()?, release.as_deref()).await
        }
        Command::ReleasesRollback { release, app } => {
            ctx.rollback(app.name()?, release.as_deref()).await
        }
        Command::Builds { app } => ctx.builds(app.name()?).await,
        Command::Features { app } => ctx.features(app.name()?).await,
        Command::FeaturesEnable { feature, app } => {
            ctx.set_feature(app.name()?, &feature, true).await
        }
        Command::FeaturesDisable { feature, app } => {
            ctx.set_feature(app.name()?, &feature, false).await
        }
        Command::Logs {
            app,
            num,
            tail,
            ps,
            source,
        } => {
            let query = log_query(num, tail, ps.as_deref(), source.as_deref());
            ctx.logs(app.name()?, &query).await
        }
        Command::Drains { app } => ctx.drains(app.name()?).await,
        Command::DrainsAdd { url, app } => ctx.drains_add(app.name()?, &url).await,
        Command::DrainsRemove { drain, app } => ctx.drains_remove(app.name()?, &drain).await,
        Command::Hosts => ctx.hosts().await,
        Command::HostsDrain { host } => ctx.drain(&host, true).await,
        Command::HostsUndrain { host } => ctx.drain(&host, false).await,
    };
    done.map(|()| ExitCode::SUCCESS)
}

struct Ctx {
    client: Client,
    json: bool,
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A config var's (or a one-off's `--env`) name: `[A-Za-z_][A-Za-z0-9_]*`, the API's rule.
/// (The API also reserves a few names; its message for those is clear enough.)
pub fn check_var_name(key: &str) -> Result<()> {
    if key.is_empty() {
        bail!("the name before `=` is missing");
    }
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        bail!("`{key}` is not a valid variable name: use letters, digits and _, not starting with a digit")
    }
}

/// `config:set` arguments: `KEY=VALUE`, split at the first `=` (values may contain `=`).
pub fn parse_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        match p.split_once('=') {
            Some((k, v)) => {
                check_var_name(k).with_context(|| format!("invalid config var `{p}`"))?;
                out.insert(k.to_string(), v.to_string());
            }
            None => bail!("invalid config var `{p}`: expected KEY=VALUE"),
        }
    }
    Ok(out)
}

/// `v3` or `3` → 3.
pub fn parse_version(s: &str) -> Result<u64> {
    s.strip_prefix('v')
        .unwrap_or(s)
        .parse()
        .with_context(|| format!("invalid release `{s}`: expected vN, e.g. v3"))
}

/// The rollback target when none is named: the newest succeeded release older than the
/// current one (rolling back onto a failed release would not bring a working slug).
pub fn rollback_target(releases: &[Release]) -> Result<u64> {
    let Some(current) = releases.iter().find(|r| r.current) else {
        bail!("the app has no current release to roll back from");
    };
    releases
        .iter()
        .filter(|r| r.version < current.version && r.status == "succeeded" && r.slug.is_some())
        .map(|r| r.version)
        .max()
        .with_context(|| format!("no release before v{} to roll back to", current.version))
}

/// `FOO`, `FOO and BAR`, `FOO, BAR and BAZ`.
/// The query string of `GET /apps/{app}/log-stream`.
pub fn log_query(num: usize, tail: bool, ps: Option<&str>, source: Option<&str>) -> String {
    let mut q = format!("lines={num}");
    if tail {
        q.push_str("&tail=true");
    }
    for (key, value) in [("dyno", ps), ("source", source)] {
        if let Some(v) = value {
            q.push_str(&format!("&{key}={}", urlencode(v)));
        }
    }
    q
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn done_with_release(reply: &Reply) -> String {
    match reply.release_version() {
        Some(v) => format!("done, v{v}"),
        None => "done".to_string(),
    }
}

impl Ctx {
    async fn apps_update(&self, app: &str, boot: Option<u32>, stop: Option<u32>) -> Result<()> {
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

    async fn apps(&self) -> Result<()> {
        let r = self.client.get("/apps").await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::apps(&r.parse::<Vec<App>>()?));
        Ok(())
    }

    async fn apps_create(&self, name: &str, stack: Option<String>) -> Result<()> {
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

    async fn apps_info(&self, app: &str) -> Result<()> {
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

    async fn apps_destroy(&self, app: &str, confirm: Option<&str>) -> Result<()> {
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

    async fn deploy(&self, app: &str, dir: &std::path::Path, buildpacks: &[String]) -> Result<()> {
        eprint!("Packing {}... ", dir.display());
        let tar = tarball::pack(dir)?;
        eprintln!("done, {:.1} MB ({})", tar.len as f64 / 1e6, tar.checksum);
        if tar.len > MAX_SOURCE_BYTES {
            bail!(
                "the source archive is {} MB; the API takes at most 512 MiB",
                tar.len / 1_000_000
            );
        }
        let checksum = tar.checksum.clone();
        let build: Build = self
            .client
            .post_build(app, buildpacks, tar.file, tar.len)
            .await?
            .parse()?;
        if !build.source_blob.checksum.is_empty() && build.source_blob.checksum != checksum {
            bail!(
                "the API stored the source as {} but we sent {checksum}",
                build.source_blob.checksum
            );
        }
        let stream_path = if build.output_stream_url.is_empty() {
            format!("/apps/{app}/builds/{}/output", build.id)
        } else {
            build.output_stream_url.clone()
        };
        self.stream_output(&stream_path).await?;
        let reply = self.wait_for_build(app, &build.id).await?;
        let build: Build = reply.parse()?;
        if self.json {
            print_json(&reply.body)?;
        }
        match build.status.as_str() {
            "succeeded" => {
                let Some(r) = build.release else {
                    if !self.json {
                        println!("Build succeeded");
                    }
                    return Ok(());
                };
                // With a release phase the slug built, yet the release may have failed.
                let release: Release = self
                    .client
                    .get(&format!("/apps/{app}/releases/{}", r.version))
                    .await?
                    .parse()?;
                match release.status.as_str() {
                    "failed" => bail!(
                        "release v{} failed in its release phase (see the output above): the current release keeps serving",
                        r.version
                    ),
                    "pending" => bail!(
                        "release v{} is still in its release phase: check `manifold releases -a {app}`",
                        r.version
                    ),
                    _ => {
                        if !self.json {
                            println!("Released v{}", r.version);
                        }
                        Ok(())
                    }
                }
            }
            "failed" => bail!("build failed: see the output above"),
            other => bail!(
                "build {} is still {other}: check `manifold builds -a {app}`",
                build.id
            ),
        }
    }

    /// Copies the build output to stdout as it arrives (to stderr with `--json`, so stdout
    /// stays parseable).
    async fn stream_output(&self, path: &str) -> Result<()> {
        let resp = self.client.stream(path).await?;
        let mut body = resp.bytes_stream();
        let mut out: Box<dyn Write> = if self.json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the build output stream broke off")?;
            out.write_all(&chunk)?;
            out.flush()?;
        }
        Ok(())
    }

    /// The output stream ends when the build does, but the status update may land a moment
    /// later: poll briefly while it still says pending.
    async fn wait_for_build(&self, app: &str, id: &str) -> Result<Reply> {
        let path = format!("/apps/{app}/builds/{id}");
        let mut reply = self.client.get(&path).await?;
        for _ in 0..30 {
            if reply.parse::<Build>()?.status != "pending" {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            reply = self.client.get(&path).await?;
        }
        Ok(reply)
    }

    async fn ps(&self, app: &str) -> Result<()> {
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

    async fn ps_scale(&self, app: &str, args: &[String]) -> Result<()> {
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

    async fn ps_restart(&self, app: &str, target: Option<&str>) -> Result<()> {
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

    async fn ps_stop(&self, app: &str, target: &str) -> Result<()> {
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

    async fn config_vars(&self, app: &str) -> Result<Reply> {
        self.client.get(&format!("/apps/{app}/config-vars")).await
    }

    async fn config(&self, app: &str) -> Result<()> {
        let r = self.config_vars(app).await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::config(app, &r.parse()?));
        Ok(())
    }

    async fn config_get(&self, app: &str, key: &str) -> Result<()> {
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

    async fn config_set(&self, app: &str, pairs: &[String]) -> Result<()> {
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

    async fn config_unset(&self, app: &str, keys: &[String]) -> Result<()> {
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

    async fn releases(&self, app: &str) -> Result<()> {
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

    async fn releases_info(&self, app: &str, release: Option<&str>) -> Result<()> {
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

    async fn rollback(&self, app: &str, release: Option<&str>) -> Result<()> {
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

    async fn builds(&self, app: &str) -> Result<()> {
        let r = self.client.get(&format!("/apps/{app}/builds")).await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::builds(app, &r.parse::<Vec<Build>>()?));
        Ok(())
    }

    /// Copies the log stream to stdout as it arrives (until the server ends it or ^C).
    async fn logs(&self, app: &str, query: &str) -> Result<()> {
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

    async fn drains(&self, app: &str) -> Result<()> {
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

    async fn drains_add(&self, app: &str, url: &str) -> Result<()> {
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

    async fn drains_remove(&self, app: &str, drain: &str) -> Result<()> {
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

    async fn hosts(&self) -> Result<()> {
        let r = self.client.get("/hosts").await?;
        if self.json {
            return print_json(&r.body);
        }
        print!("{}", output::hosts(&r.parse::<Vec<Host>>()?));
        Ok(())
    }

    async fn features(&self, app: &str) -> Result<()> {
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

    async fn set_feature(&self, app: &str, feature: &str, enabled: bool) -> Result<()> {
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

    async fn drain(&self, host: &str, drain: bool) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_split_at_first_equals() {
        let args = vec![
            "A=1".to_string(),
            "URL=postgres://x?a=b".to_string(),
            "E=".to_string(),
        ];
        let m = parse_pairs(&args).expect("valid");
        assert_eq!(m["URL"], "postgres://x?a=b");
        assert_eq!(m["E"], "");
        for (bad, why) in [
            ("NOEQ", "expected KEY=VALUE"),
            ("=v", "the name before `=` is missing"),
            ("1A=v", "`1A` is not a valid variable name"),
            ("A-B=v", "`A-B` is not a valid variable name"),
        ] {
            let err = format!("{:#}", parse_pairs(&[bad.to_string()]).expect_err(bad));
            assert!(
                err.starts_with(&format!("invalid config var `{bad}`: ")),
                "{err}"
            );
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("v3").expect("v3"), 3);
        assert_eq!(parse_version("12").expect("12"), 12);
        assert!(parse_version("vx").is_err());
    }

    #[test]
    fn log_queries() {
        assert_eq!(log_query(100, false, None, None), "lines=100");
        assert_eq!(
            log_query(5, true, Some("web.1"), Some("app")),
            "lines=5&tail=true&dyno=web.1&source=app"
        );
        assert_eq!(
            urlencode("syslog://h:1/x y"),
            "syslog%3A%2F%2Fh%3A1%2Fx%20y"
        );
    }

    #[test]
    fn and_lists() {
        assert_eq!(and_list(&["A"]), "A");
        assert_eq!(and_list(&["A", "B"]), "A and B");
        assert_eq!(and_list(&["A", "B", "C"]), "A, B and C");
    }

    #[test]
    fn rollback_skips_failed_releases() {
        let rs: Vec<Release> = serde_json::from_value(json!([
            {"version": 1, "status": "succeeded", "current": false, "slug": {"id": "a"}},
            {"version": 2, "status": "succeeded", "current": false, "slug": {"id": "b"}},
            {"version": 3, "status": "failed", "current": false, "slug": {"id": "c"}},
            {"version": 4, "status": "succeeded", "current": true, "slug": {"id": "b"}}
        ]))
        .expect("fixture");
        assert_eq!(rollback_target(&rs).expect("target"), 2);
        let only: Vec<Release> = serde_json::from_value(json!([
            {"version": 1, "status": "succeeded", "current": true, "slug": {"id": "a"}}
        ]))
        .expect("fixture");
        assert!(rollback_target(&only).is_err());
    }
}
