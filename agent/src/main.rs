//! `manifold-agent`: runs dynos on this host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use manifold_agent::dyno::{BindMount, DynoConfig, DynoDir, HostConfig, SlugSource, DYNO_GID, DYNO_UID};
use manifold_agent::size::DynoSize;
use manifold_agent::supervisor::{Dyno, LogLine, Source};
use manifold_agent::{host, network, shim, slug};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(name = "manifold-agent", version, about = "Runs Manifold dynos on this host")]
struct Cli {
    /// Persistent state: stacks, slug layers, dynos.
    #[arg(long, global = true, env = "MANIFOLD_STATE_DIR", default_value = "/var/lib/manifold")]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one dyno in the foreground, printing its log; exits with its exit status.
    Run(RunArgs),
    /// Remove what dynos whose shim is gone left behind (mounts, cgroups, network, files).
    Gc,
    /// Internal: the per-dyno helper process. Started by `run` and the agent.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Stack to run on (a directory under STATE_DIR/stacks).
    #[arg(long, default_value = "testing")]
    stack: String,
    /// The slug: a tar.gz of ./app. Without it the dyno runs on the bare stack.
    #[arg(long)]
    slug: Option<PathBuf>,
    /// Expected sha256 of the slug (hex); the dyno refuses a slug that does not match.
    #[arg(long)]
    sha256: Option<String>,
    /// Dyno size: eco, basic, standard-1x, standard-2x, performance-m, performance-l.
    #[arg(long, default_value = "standard-1x")]
    size: DynoSize,
    /// Dyno name, `TYPE.N` (e.g. web.1, worker.2, run.4821).
    #[arg(long, default_value = "run.1")]
    name: String,
    /// $PORT; defaults to 5000 for web dynos, none for others.
    #[arg(long)]
    port: Option<u16>,
    /// Publish the dyno's $PORT on this host port (reachable at 127.0.0.1 and the host's addresses).
    #[arg(long)]
    publish: Option<u16>,
    /// Config vars, KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Bind-mount a host path into the dyno: SOURCE:DESTINATION[:ro|:rw].
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    mounts: Vec<BindMount>,
    /// The command, run by bash after .profile.d.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MANIFOLD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        // The shim must stay single-threaded: it is dispatched before any runtime exists.
        Command::Shim { dir } => shim::spawn_detached(&dir),
        Command::Run(args) => {
            let host = HostConfig::with_state_dir(&cli.state_dir);
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(run(host, args))?;
            std::process::exit(status)
        }
        Command::Gc => gc(&HostConfig::with_state_dir(&cli.state_dir)),
    }
}

async fn run(host: HostConfig, args: RunArgs) -> anyhow::Result<i32> {
    let process_type = args.name.split('.').next().unwrap_or_default().to_string();
    if args.name.is_empty() || !args.name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        bail!("invalid dyno name {:?}: use TYPE.N, e.g. web.1", args.name);
    }
    let port = args.port.or((process_type == "web").then_some(5000));
    if args.publish.is_some() && port.is_none() {
        bail!("--publish needs a $PORT: give --port or run a web dyno");
    }
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("invalid config var {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid config var name {k:?}: use letters, digits and _");
        }
        env.insert(k.to_string(), v.to_string());
    }
    let slug = match args.slug {
        Some(path) => Some(SlugSource {
            path: std::fs::canonicalize(&path)
                .with_context(|| format!("slug {} not found", path.display()))?,
            sha256: args.sha256,
        }),
        None => None,
    };
    let config = DynoConfig {
        id: format!("{}-{:08x}", args.name.replace('.', "-"), rand::random::<u32>()),
        name: args.name,
        stack: args.stack,
        slug,
        size: args.size,
        env,
        command: args.command.join(" "),
        port,
        publish: args.publish,
        grace: args.grace,
        mounts: args.mounts,
        uid: DYNO_UID,
        gid: DYNO_GID,
        host,
    };

    match host::favor_cgroup_migrations() {
        Ok(Some(path)) => tracing::info!("enabled favordynmods on {}", path.display()),
        Ok(None) => {}
        Err(err) => tracing::warn!("cannot tune cgroup migrations: {err}"),
    }
    let dyno = Dyno::start(config, std::env::current_exe()?).await?;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<LogLine>();
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if stop_tx.send(()).is_err() {
                return;
            }
        }
    });
    let printer = tokio::spawn(async move {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        while let Some(line) = line_rx.recv().await {
            let _ = writeln!(stdout, "{line}");
            if line.source == Source::Heroku {
                let _ = stdout.flush();
            }
        }
        let _ = stdout.flush();
    });
    let status = dyno.follow(line_tx, stop_rx).await?;
    printer.await?;
    Ok(status)
}

fn gc(host: &HostConfig) -> anyhow::Result<()> {
    let mut alive = Vec::new();
    let entries = match std::fs::read_dir(host.dynos_dir()) {
        Ok(e) => e.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("cannot list dynos"),
    };
    for entry in entries {
        let id = entry.file_name().to_string_lossy().to_string();
        let dir = DynoDir { root: entry.path() };
        if shim_alive(&dir) {
            alive.push(id);
            continue;
        }
        if let Ok(config) = dir.read_config() {
            for err in shim::cleanup(&config, &dir, None) {
                eprintln!("gc {id}: {err}");
            }
        }
        std::fs::remove_dir_all(&dir.root).with_context(|| format!("cannot remove {}", dir.root.display()))?;
        println!("removed dyno {id}");
    }
    let net = &host.network;
    // Repairs the host's bridge and rules too, in case someone flushed them.
    network::ensure_host(net)?;
    for id in network::sweep(net, &|id| alive.iter().any(|a| a == id))? {
        println!("released network of {id}");
    }
    slug::SlugCache::sweep_tmp(&host.slugs_dir())?;
    Ok(())
}

/// How long a dyno directory may exist without a shim pid: its supervisor is still starting
/// the shim.
const STARTING_GRACE: Duration = Duration::from_secs(60);

/// Whether the dyno's shim is still running (its pid is alive and is a `manifold-agent shim`),
/// or is about to be (the directory is new and has no pid yet).
fn shim_alive(dir: &DynoDir) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.shim_pid()) else {
        let age = std::fs::metadata(&dir.root)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        return age.is_some_and(|a| a < STARTING_GRACE);
    };
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .map(|cmd| cmd.split(|&b| b == 0).any(|arg| arg == b"shim"))
        .unwrap_or(false)
}
