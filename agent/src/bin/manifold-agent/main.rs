//! `manifold-agent`: runs dynos on this host. This binary only parses flags and settings and
//! calls the library (`manifold_agent`): without a command it runs the daemon (flags in
//! `daemon_flags.rs`); `run`, `build` and `gc` are in `commands/`; `shim` is the per-dyno process.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use manifold_agent::daemon;
use manifold_agent::host::network;
use manifold_agent::shim;

mod commands;
mod daemon_flags;

use commands::{build::BuildArgs, run::RunArgs};
use daemon_flags::{daemon_config, host_config, DaemonArgs};

#[derive(Parser)]
#[command(
    name = "manifold-agent",
    version,
    about = "Runs Manifold dynos on this host"
)]
struct Cli {
    /// Persistent state: stacks, slug layers, dynos.
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_STATE_DIR",
        default_value = "/var/lib/manifold"
    )]
    state_dir: PathBuf,
    /// Settings file: its keys are these flags' long names (`cgroup_parent = "manifold"`);
    /// flags and MANIFOLD_* variables win over it.
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_AGENT_CONFIG",
        default_value = "/etc/manifold/agent.toml"
    )]
    config: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Without a command, runs the daemon.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The daemon's flags (no subcommand).

#[derive(Subcommand)]
enum Command {
    /// Run one dyno in the foreground, printing its log; exits with its exit status.
    Run(RunArgs),
    /// Build a slug from app source in a build dyno on the app's stack (buildpacks, isolated).
    Build(BuildArgs),
    /// Remove what dynos whose shim is gone left behind (mounts, cgroups, network, files),
    /// and the slugs no dyno has used for --slug-retention.
    Gc,
    /// Internal: the per-dyno helper process. Started by `run` and the agent.
    #[command(hide = true)]
    Shim {
        #[arg(long, required_unless_present = "warm")]
        dir: Option<PathBuf>,
        /// Wait on this socket for the dyno to run (a warm shim, exec'd ahead).
        #[arg(long, conflicts_with = "dir")]
        warm: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    // Before any thread: the settings file becomes the flags' variables.
    let settings = manifold_settings::apply(Cli::command(), std::env::args_os())?;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MANIFOLD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if settings.is_some() {
        tracing::info!("settings from {}", cli.config.display());
    }
    let Some(command) = cli.command else {
        let config = daemon_config(&cli.state_dir, cli.daemon)?;
        config.host.check_state_dir().map_err(anyhow::Error::msg)?;
        // The policy holds from the start, not from the first dyno's.
        network::ensure_host_cached(&config.host.network)
            .context("cannot set up the dynos' network and its policy")?;
        let runtime = tokio::runtime::Runtime::new()?;
        return Ok(runtime.block_on(daemon::run(config))?);
    };
    match command {
        // The shim must stay single-threaded: it is dispatched before any runtime exists.
        Command::Shim { dir: Some(dir), .. } => shim::main(&dir),
        Command::Shim {
            warm: Some(socket), ..
        } => shim::warm::main(&socket),
        Command::Shim { .. } => anyhow::bail!("shim: --dir or --warm is required"),
        Command::Run(args) => {
            let host = host_config(&cli.state_dir, &cli.daemon);
            host.check_state_dir().map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(commands::run::run(host, args))?;
            std::process::exit(status)
        }
        Command::Build(args) => {
            let host = host_config(&cli.state_dir, &cli.daemon);
            host.check_state_dir().map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(commands::build::build(host, args))?;
            std::process::exit(status)
        }
        Command::Gc => commands::gc::gc(
            &host_config(&cli.state_dir, &cli.daemon),
            cli.daemon.slug_retention,
        ),
    }
}
