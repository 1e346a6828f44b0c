//! `slugbuilder`: the command line over [`manifold_slugbuilder`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use manifold_slugbuilder::build::{self, BuildDir, BuildOptions};
use manifold_slugbuilder::pack::{self, PackOptions};

#[derive(Parser)]
#[command(
    name = "slugbuilder",
    version,
    about = "Turn an app's source into a slug with classic buildpacks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build SRC_DIR into a slug; the metadata JSON goes beside it (slug.tgz → slug.json).
    Build(Box<BuildArgs>),
    /// Pack a directory as a slug (`./app/...`, gzip) without building it.
    Pack {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// gzip level 0-9.
        #[arg(long, default_value_t = 6)]
        level: u32,
        /// Compression threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// The app's source directory.
    src_dir: PathBuf,
    /// Where to write the slug.
    #[arg(long)]
    out: PathBuf,
    /// A buildpack: a directory, a git URL (optionally `#ref`) or a built-in name
    /// (python, nodejs, generic). Repeat to run several in order. Default: detect a built-in.
    #[arg(long = "buildpack", value_name = "PATH_OR_GIT_URL")]
    buildpacks: Vec<String>,
    /// CACHE_DIR for bin/compile; keep it between builds of one app.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// ENV_DIR for bin/compile: one file per config var.
    #[arg(long)]
    env_dir: Option<PathBuf>,
    /// The stack name, passed to buildpacks as STACK and recorded in the metadata.
    #[arg(long, env = "STACK", default_value = "bookworm")]
    stack: String,
    /// The built-in buildpacks' directory.
    #[arg(long, env = "MANIFOLD_BUILDPACKS")]
    buildpacks_dir: Option<PathBuf>,
    /// Where git buildpacks are cloned and kept between builds.
    #[arg(long, env = "MANIFOLD_BUILDPACK_CACHE")]
    buildpack_cache: Option<PathBuf>,
    /// Compile in a copy of the source at this path (absent or empty), e.g. /app.
    #[arg(long, conflicts_with = "in_place")]
    build_dir: Option<PathBuf>,
    /// Compile in SRC_DIR itself (inside a build dyno whose source is at /app).
    #[arg(long)]
    in_place: bool,
    /// SOURCE_VERSION for the buildpacks (default: the source's git HEAD, if any).
    #[arg(long, env = "SOURCE_VERSION")]
    source_version: Option<String>,
    /// Build time limit, e.g. 15m, 90s.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Compressed slug size limit in bytes, or with a K, M or G suffix (powers of 1024).
    #[arg(long, default_value = "500M", value_parser = parse_size)]
    max_slug_size: u64,
}

/// `500M` → 500 MiB; a bare number is bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, shift) = match text.trim().char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        _ => (text, 0),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("invalid size {text:?}: expected bytes, or a number with K, M or G"))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Heroku's marker for a failed build, so the reason stands out in the log.
            eprintln!(" !     error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Build(args) => {
            let args = *args;
            let options = BuildOptions {
                buildpacks: args.buildpacks,
                builtins_dir: args.buildpacks_dir,
                cache_dir: args.cache_dir,
                env_dir: args.env_dir,
                git_cache: args.buildpack_cache,
                build_dir: match (args.in_place, args.build_dir) {
                    (true, _) => BuildDir::InPlace,
                    (false, Some(dir)) => BuildDir::At(dir),
                    (false, None) => BuildDir::Temp,
                },
                stack: args.stack,
                source_version: args.source_version,
                timeout: args.timeout,
                max_slug_size: args.max_slug_size,
                ..BuildOptions::new(args.src_dir, args.out)
            };
            let stdout = std::io::stdout();
            let mut log = stdout.lock();
            build::build(&options, &mut log).context("build failed")?;
            log.flush()?;
        }
        Cmd::Pack {
            dir,
            out,
            level,
            threads,
        } => {
            let packed = pack::pack(
                &dir,
                &out,
                &PackOptions {
                    level,
                    threads,
                    ..PackOptions::default()
                },
            )?;
            println!("{} {} {}", out.display(), packed.size, packed.sha256);
        }
    }
    Ok(())
}
