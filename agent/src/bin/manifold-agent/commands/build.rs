//! `manifold-agent build`: a slug from app source, built in a build dyno.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use manifold_agent::build_dyno;
use manifold_agent::daemon::{self};
use manifold_agent::dyno::HostConfig;
use manifold_agent::runner::Source;
use manifold_agent::size::DynoSize;

use super::run::{follow, parse_env};
use crate::daemon_flags::installed_buildpacks;

#[derive(Args)]
pub(crate) struct BuildArgs {
    /// The app's source directory.
    pub(crate) source: PathBuf,
    /// Where to write the slug; its metadata goes beside it (`slug.tgz` → `slug.json`).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The app's stack.
    #[arg(long, default_value = "bookworm")]
    pub(crate) stack: String,
    /// Size of the build dyno.
    #[arg(long, default_value = "standard-2x")]
    pub(crate) size: DynoSize,
    /// Config vars for the build (ENV_DIR), KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Buildpacks in order: a built-in name, a git URL or a directory. Default: detect.
    #[arg(long = "buildpack")]
    pub(crate) buildpacks: Vec<String>,
    /// Build cache kept between builds of the app (default: one per source directory).
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// The built-in buildpacks.
    #[arg(long, env = "MANIFOLD_BUILDPACKS")]
    pub(crate) buildpacks_dir: Option<PathBuf>,
    /// The slugbuilder binary (default: beside manifold-agent).
    #[arg(long)]
    pub(crate) slugbuilder: Option<PathBuf>,
    /// Build time limit.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// The largest slug accepted (compressed): bytes or like 500M.
    #[arg(long, default_value_t = build_dyno::DEFAULT_MAX_SLUG_BYTES, value_parser = daemon::parse_memory)]
    pub(crate) max_slug_size: u64,
}

pub(crate) async fn build(host: HostConfig, args: BuildArgs) -> anyhow::Result<i32> {
    let source = std::fs::canonicalize(&args.source)
        .with_context(|| format!("source {} not found", args.source.display()))?;
    let exe = std::env::current_exe()?;
    let slugbuilder = match args.slugbuilder {
        Some(p) => p,
        None => exe.with_file_name("slugbuilder"),
    };
    let buildpacks_dir = match args.buildpacks_dir {
        Some(p) => p,
        None => installed_buildpacks(&exe)
            .context("no buildpacks directory: pass --buildpacks-dir or set MANIFOLD_BUILDPACKS")?,
    };
    let cache_dir = match args.cache_dir {
        Some(p) => p,
        None => {
            use sha2::Digest;
            let key = sha2::Sha256::digest(source.as_os_str().as_encoded_bytes());
            let hex: String = key.iter().take(8).map(|b| format!("{b:02x}")).collect();
            host.state_dir.join("cache").join(hex)
        }
    };
    let id = format!("build-{:08x}", rand::random::<u32>());
    let request = build_dyno::BuildRequest {
        source,
        stack: args.stack,
        size: args.size,
        env: parse_env(&args.env)?,
        buildpacks: args.buildpacks,
        cache_dir,
        slugbuilder: std::fs::canonicalize(&slugbuilder)
            .with_context(|| format!("slugbuilder {} not found", slugbuilder.display()))?,
        buildpacks_dir: std::fs::canonicalize(&buildpacks_dir).with_context(|| {
            format!(
                "buildpacks directory {} not found",
                buildpacks_dir.display()
            )
        })?,
        timeout: args.timeout,
        directory_buildpacks: build_dyno::DirectoryBuildpacks::Anywhere,
        max_slug_bytes: args.max_slug_size,
    };
    let prepared = build_dyno::prepare(&host, &id, &request)?;
    let result = follow(prepared.dyno, |line| match line.source {
        Source::App => println!("{}", line.text),
        Source::Heroku => eprintln!("{line}"),
    })
    .await;
    let outcome = result.and_then(|status| {
        if status == 0 {
            let json = args.out.with_extension("json");
            // The build's outputs are the build's: read them back as hostile input.
            let outputs = prepared
                .output
                .read()
                .context("the build's output is refused")?;
            outputs
                .save(&args.out, &json)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
        }
        Ok(status)
    });
    if let Err(err) = std::fs::remove_dir_all(&prepared.work) {
        tracing::warn!("cannot remove {}: {err}", prepared.work.display());
    }
    outcome
}
