//! One function per subcommand: validate arguments, call the API, print.
//!
//! Argument validation always happens before the first request, so a typo never leaves
//! an app half-changed.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::api::{Client, Release, Reply, Settings};
use crate::cli::{Cli, Command};
use crate::run as oneoff;
use crate::run::RunSpec;

pub mod addons;
mod apps;
mod buildpacks;
mod config;
mod deploy;
mod domains;
mod features;
mod git;
mod hosts;
mod logs;
mod pipelines;
mod ps;
mod releases;
mod reviewapps;
mod setup;

/// The scheduler rejects bigger uploads (413); failing before the upload saves the wait.
const MAX_SOURCE_BYTES: u64 = 512 << 20;

/// Runs one command; the exit code is 0 unless the command says otherwise (`run` passes
/// on the dyno's). Errors are for `main` to print, with exit code 1.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let client = Client::new(Settings::from_env()?.with_ca(cli.ca.clone()))?;
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
        Command::AppsCreate {
            name,
            stack,
            from: None,
            ..
        } => ctx.apps_create(&name, stack).await,
        Command::AppsCreate {
            name,
            stack,
            from: Some(dir),
            env,
        } => ctx.apps_setup(&name, stack, &dir, &env).await,
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
        Command::Buildpacks { app } => ctx.buildpacks(app.name()?).await,
        Command::BuildpacksSet {
            buildpack,
            index,
            app,
        } => {
            ctx.change_buildpacks(app.name()?, buildpacks::Change::Set(buildpack, index))
                .await
        }
        Command::BuildpacksAdd {
            buildpack,
            index,
            app,
        } => {
            ctx.change_buildpacks(app.name()?, buildpacks::Change::Add(buildpack, index))
                .await
        }
        Command::BuildpacksRemove {
            buildpack,
            index,
            app,
        } => {
            let change = buildpacks::Change::remove(buildpack, index)?;
            ctx.change_buildpacks(app.name()?, change).await
        }
        Command::BuildpacksClear { app } => {
            ctx.change_buildpacks(app.name()?, buildpacks::Change::Clear)
                .await
        }
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
        Command::Domains { app } => ctx.domains(app.name()?).await,
        Command::DomainsAdd { hostname, app } => ctx.domains_add(app.name()?, &hostname).await,
        Command::DomainsRemove { hostname, app } => {
            ctx.domains_remove(app.name()?, &hostname).await
        }
        Command::Certs { app } => ctx.certs(app.name()?).await,
        Command::CertsAdd { cert, key, app } => ctx.certs_add(app.name()?, &cert, &key).await,
        Command::CertsRemove { id, app } => ctx.certs_remove(app.name()?, &id).await,
        Command::CertsAuto { app } => ctx.certs_auto(app.name()?).await,
        Command::CertsAutoEnable { app } => ctx.set_certs_auto(app.name()?, true).await,
        Command::CertsAutoDisable { app } => ctx.set_certs_auto(app.name()?, false).await,
        Command::Maintenance { app } => ctx.maintenance(app.name()?).await,
        Command::MaintenanceOn { app } => ctx.set_maintenance(app.name()?, true).await,
        Command::MaintenanceOff { app } => ctx.set_maintenance(app.name()?, false).await,
        Command::GitRemote { app, remote } => ctx.git_remote(app.name()?, &remote).await,
        Command::GitClone { app, dir, remote } => {
            ctx.git_clone(app.name()?, dir.as_deref(), &remote).await
        }
        Command::GitCredentials { operation } => git::credentials(&ctx.client, &operation),
        Command::Pipelines => ctx.pipelines().await,
        Command::PipelinesCreate { name, app, stage } => {
            ctx.pipelines_create(&name, app.name()?, &stage).await
        }
        Command::PipelinesAdd {
            pipeline,
            app,
            stage,
        } => ctx.pipelines_add(&pipeline, app.name()?, &stage).await,
        Command::PipelinesRemove { app } => ctx.pipelines_remove(app.name()?).await,
        Command::PipelinesInfo { pipeline } => ctx.pipelines_info(&pipeline).await,
        Command::PipelinesPromote { app, to } => ctx.pipelines_promote(app.name()?, &to).await,
        Command::PipelinesDestroy { pipeline } => ctx.pipelines_destroy(&pipeline).await,
        Command::ReviewappsCreate {
            pipeline,
            branch,
            ttl,
            source,
        } => {
            ctx.reviewapps_create(&pipeline, &branch, ttl, source.as_deref())
                .await
        }
        Command::Reviewapps { pipeline } => ctx.reviewapps(&pipeline).await,
        Command::ReviewappsConfig { pipeline } => ctx.reviewapps_config(&pipeline, &[]).await,
        Command::ReviewappsConfigSet { pairs, pipeline } => {
            ctx.reviewapps_config(&pipeline, &pairs).await
        }
        Command::ReviewappsDestroy { app, confirm } => {
            ctx.reviewapps_destroy(&app, confirm.as_deref()).await
        }
        Command::Addons(command) => ctx.addons_command(command).await,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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
