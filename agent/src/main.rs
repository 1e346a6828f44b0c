//! `manifold-agent`: runs dynos on this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, CommandFactory, Parser, Subcommand};
use manifold_agent::daemon::restart::RestartPolicy;
use manifold_agent::daemon::{self, link};
use manifold_agent::dyno::{
    BindMount, DynoConfig, DynoDir, HostConfig, SlugSource, DYNO_GID, DYNO_UID,
};
use manifold_agent::host::{self, netpolicy, network, slug};
use manifold_agent::logs::LogRate;
use manifold_agent::runner::shim_alive;
use manifold_agent::runner::{Dyno, LogLine, Source};
use manifold_agent::size::DynoSize;
use manifold_agent::{build_dyno, shim};
use tokio::sync::mpsc;

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
#[derive(Args)]
struct DaemonArgs {
    /// The scheduler's URL (gRPC and blobs), e.g. http://scheduler:7000.
    #[arg(long, env = "MANIFOLD_SCHEDULER")]
    scheduler: Option<String>,
    /// The agent token.
    #[arg(long, env = "MANIFOLD_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file whose first line is the agent token (when --token is not given).
    #[arg(long, env = "MANIFOLD_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// This host's id (default: STATE_DIR/host-id, else the hostname).
    #[arg(long, env = "MANIFOLD_HOST_ID")]
    host_id: Option<String>,
    /// The address the router reaches published dyno ports on.
    #[arg(long, env = "MANIFOLD_ADDRESS", default_value = "127.0.0.1")]
    address: String,
    /// Memory for dynos: bytes or like 8G (default: MemTotal minus 512 MiB).
    #[arg(long, env = "MANIFOLD_MEMORY", value_parser = daemon::parse_memory)]
    memory: Option<u64>,
    /// How many dynos this host runs at most.
    #[arg(long, env = "MANIFOLD_SLOTS", default_value_t = 100)]
    slots: u32,
    /// Host ports for web dynos' $PORT.
    #[arg(long, env = "MANIFOLD_PORTS", default_value = "30000-30999")]
    ports: daemon::PortRange,
    /// Parent cgroup of every dyno's cgroup (with systemd: the slice `<parent>.slice`).
    #[arg(long, env = "MANIFOLD_CGROUP_PARENT", default_value = "manifold")]
    cgroup_parent: String,
    /// Who makes dynos' cgroups: a systemd scope per dyno, or libcontainer directly
    /// (cgroupfs). auto: systemd where it is PID 1 on cgroup v2.
    #[arg(long, env = "MANIFOLD_CGROUP_DRIVER", value_enum, default_value_t = CgroupDriver::Auto)]
    cgroup_driver: CgroupDriver,
    /// The dynos' host bridge.
    #[arg(long, env = "MANIFOLD_BRIDGE")]
    bridge: Option<String>,
    /// The dynos' subnet (CIDR).
    #[arg(long, env = "MANIFOLD_SUBNET")]
    subnet: Option<network::Ipv4Subnet>,
    /// The nft table for NAT and published ports.
    #[arg(long, env = "MANIFOLD_NFT_TABLE")]
    nft_table: Option<String>,
    /// A destination dynos may reach although it is private, shared, loopback, link-local,
    /// multicast or this host: CIDR or CIDR:PORT (e.g. 10.0.5.20:5432). Repeat the flag;
    /// comma-separated in the variable, a list in the settings file.
    #[arg(long, env = "MANIFOLD_ALLOW_EGRESS", value_delimiter = ',')]
    allow_egress: Vec<netpolicy::Destination>,
    /// Addresses (CIDR) besides this host's own that may connect to published dyno ports:
    /// the routers' (default: none, so only this host reaches dynos). Same forms as above.
    #[arg(long, env = "MANIFOLD_ROUTER_ADDRESSES", value_delimiter = ',')]
    router_addresses: Vec<netpolicy::Cidr>,
    /// How many user-namespace id ranges of 65536 this host gives its apps, one each, from
    /// host id 100000 on (range 0 is for `run` and `build` from the command line).
    #[arg(long, env = "MANIFOLD_ID_RANGES", default_value_t = manifold_agent::host::ids::DEFAULT_RANGES)]
    id_ranges: u32,
    /// Heartbeat interval.
    #[arg(long, env = "MANIFOLD_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// The built-in buildpacks, for builds.
    #[arg(long, env = "MANIFOLD_BUILDPACKS")]
    buildpacks_dir: Option<PathBuf>,
    /// The slugbuilder binary (default: beside manifold-agent).
    #[arg(long, env = "MANIFOLD_SLUGBUILDER")]
    slugbuilder: Option<PathBuf>,
    /// Cool-off before the 2nd consecutive restart of a crashing dyno (the 1st is at once),
    /// doubled for each next one, with jitter in [d/2, d].
    #[arg(long, env = "MANIFOLD_RESTART_BASE", default_value = "20s", value_parser = humantime::parse_duration)]
    restart_base: Duration,
    /// The longest cool-off between crash restarts.
    #[arg(long, env = "MANIFOLD_RESTART_CAP", default_value = "20m", value_parser = humantime::parse_duration)]
    restart_cap: Duration,
    /// How long a dyno must stay up for its crash count to start over.
    #[arg(long, env = "MANIFOLD_RESTART_RESET", default_value = "10m", value_parser = humantime::parse_duration)]
    restart_reset: Duration,
    /// How long a web dyno has to accept connections on $PORT before it is killed (R10).
    #[arg(long, env = "MANIFOLD_BOOT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    boot_timeout: Duration,
    /// Lines per second one dyno may log; beyond it (after a burst of 5 s worth) lines are
    /// dropped and counted (Heroku's L10).
    #[arg(long, env = "MANIFOLD_LOG_RATE", default_value_t = 2000)]
    log_rate: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:8751).
    #[arg(long, env = "MANIFOLD_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// How long a slug that no dyno uses stays on this host before it is removed.
    #[arg(long, env = "MANIFOLD_SLUG_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    slug_retention: std::time::Duration,
    /// The cluster CA (PEM) an https:// scheduler's certificate is checked against
    /// (default: the system roots).
    #[arg(long, env = "MANIFOLD_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    /// This host's certificate (PEM, from `manifold-scheduler certs issue HOST_ID`),
    /// presented to an https:// scheduler; needs --tls-key.
    #[arg(long, env = "MANIFOLD_AGENT_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MANIFOLD_AGENT_KEY")]
    tls_key: Option<PathBuf>,
    /// The only directory under which a build the scheduler asks for may use a buildpack
    /// named by a host path (default: --buildpacks-dir).
    #[arg(long, env = "MANIFOLD_BUILDPACK_ROOT")]
    buildpack_root: Option<PathBuf>,
    /// The largest slug a build may produce (compressed): bytes or like 500M.
    #[arg(long, env = "MANIFOLD_MAX_SLUG_SIZE", default_value_t = build_dyno::DEFAULT_MAX_SLUG_BYTES, value_parser = daemon::parse_memory)]
    max_slug_size: u64,
}

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
    /// How long a web dyno has to accept connections on $PORT before it is killed (R10).
    #[arg(long, env = "MANIFOLD_BOOT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    boot_timeout: Duration,
    /// Lines per second the dyno may log (after a burst of 5 s worth); its shim drops the
    /// rest and says how many (Heroku's L10). 0, the default here, logs every line.
    #[arg(long, env = "MANIFOLD_LOG_RATE", default_value_t = 0)]
    log_rate: u32,
    /// Print the dyno's OCI runtime spec (config.json) instead of running it.
    #[arg(long)]
    print_spec: bool,
    /// Bind-mount a host path into the dyno: SOURCE:DESTINATION[:ro|:rw].
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    mounts: Vec<BindMount>,
    /// The command, run by bash after .profile.d.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct BuildArgs {
    /// The app's source directory.
    source: PathBuf,
    /// Where to write the slug; its metadata goes beside it (`slug.tgz` → `slug.json`).
    #[arg(long)]
    out: PathBuf,
    /// The app's stack.
    #[arg(long, default_value = "bookworm")]
    stack: String,
    /// Size of the build dyno.
    #[arg(long, default_value = "standard-2x")]
    size: DynoSize,
    /// Config vars for the build (ENV_DIR), KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Buildpacks in order: a built-in name, a git URL or a directory. Default: detect.
    #[arg(long = "buildpack")]
    buildpacks: Vec<String>,
    /// Build cache kept between builds of the app (default: one per source directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The built-in buildpacks.
    #[arg(long, env = "MANIFOLD_BUILDPACKS")]
    buildpacks_dir: Option<PathBuf>,
    /// The slugbuilder binary (default: beside manifold-agent).
    #[arg(long)]
    slugbuilder: Option<PathBuf>,
    /// Build time limit.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The largest slug accepted (compressed): bytes or like 500M.
    #[arg(long, default_value_t = build_dyno::DEFAULT_MAX_SLUG_BYTES, value_parser = daemon::parse_memory)]
    max_slug_size: u64,
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
        Command::Shim { dir } => shim::main(&dir),
        Command::Run(args) => {
            let host = host_config(&cli.state_dir, &cli.daemon);
            host.check_state_dir().map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(run(host, args))?;
            std::process::exit(status)
        }
        Command::Build(args) => {
            let host = host_config(&cli.state_dir, &cli.daemon);
            host.check_state_dir().map_err(anyhow::Error::msg)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let status = runtime.block_on(build(host, args))?;
            std::process::exit(status)
        }
        Command::Gc => gc(
            &host_config(&cli.state_dir, &cli.daemon),
            cli.daemon.slug_retention,
        ),
    }
}

fn daemon_config(state_dir: &Path, args: DaemonArgs) -> anyhow::Result<daemon::DaemonConfig> {
    let mut host = host_config(state_dir, &args);
    let Some(scheduler) = args.scheduler else {
        bail!("give a command, or --scheduler URL (MANIFOLD_SCHEDULER) to run the daemon");
    };
    let token = match (args.token, args.token_file) {
        (Some(token), _) => Some(token),
        (None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let memory_bytes = match args.memory {
        Some(m) => m,
        None => daemon::default_memory(&std::fs::read_to_string("/proc/meminfo")?)
            .context("cannot read MemTotal from /proc/meminfo: pass --memory")?,
    };
    host.cgroup_parent = args.cgroup_parent;
    let ids = manifold_agent::host::ids::IdRanges::new(&host)?;
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for entry in ids.iter().flat_map(|ids| ids.overlaps(&text)) {
            tracing::warn!(
                "{file}: `{entry}` overlaps the user-namespace ids this host gives apps' dynos \
                 (--id-ranges from host id 100000): that user's containers would share ids \
                 with dynos"
            );
        }
    }
    let exe = std::env::current_exe()?;
    Ok(daemon::DaemonConfig {
        scheduler: link::Scheduler::configure(
            &scheduler,
            token,
            args.cluster_ca.as_deref(),
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )?,
        host_id: daemon::host_id(state_dir, args.host_id)
            .with_context(|| format!("cannot keep the host id in {}", state_dir.display()))?,
        address: args.address,
        memory_bytes,
        slots: args.slots,
        ports: args.ports,
        heartbeat: args.heartbeat,
        host,
        slugbuilder: args
            .slugbuilder
            .unwrap_or_else(|| exe.with_file_name("slugbuilder")),
        buildpacks_dir: args
            .buildpacks_dir
            .clone()
            .or_else(|| installed_buildpacks(&exe)),
        buildpack_root: args
            .buildpack_root
            .or_else(|| args.buildpacks_dir.or_else(|| installed_buildpacks(&exe))),
        max_slug_bytes: args.max_slug_size,
        shim_binary: exe,
        restart: RestartPolicy {
            base: args.restart_base,
            cap: args.restart_cap,
            reset: args.restart_reset,
        },
        boot_timeout: args.boot_timeout,
        log_rate: manifold_agent::logs::LogRate {
            per_second: f64::from(args.log_rate),
            burst: f64::from(args.log_rate) * 5.0,
        },
        metrics_listen: args.metrics_listen,
        slug_retention: args.slug_retention,
        ids,
    })
}

/// The host layout with the agent's network settings (flags, variables or settings file):
/// `run`, `build` and `gc` then use the daemon's bridge, subnet, table and policy, and a
/// one-off dyno cannot undo the operator's allow-list by installing the default rules.
/// `--cgroup-driver`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CgroupDriver {
    Auto,
    Cgroupfs,
    Systemd,
}

fn host_config(state_dir: &Path, args: &DaemonArgs) -> HostConfig {
    let mut host = HostConfig::with_state_dir(state_dir);
    match args.cgroup_driver {
        CgroupDriver::Auto => {}
        CgroupDriver::Cgroupfs => {
            host.cgroup_driver = manifold_agent::host::cgroup::Driver::Cgroupfs
        }
        CgroupDriver::Systemd => host.cgroup_driver = manifold_agent::host::cgroup::Driver::Systemd,
    }
    let net = &mut host.network;
    if let Some(bridge) = &args.bridge {
        net.bridge.clone_from(bridge);
    }
    if let Some(subnet) = args.subnet {
        net.subnet = subnet;
    }
    if let Some(table) = &args.nft_table {
        net.table.clone_from(table);
    }
    net.allow_egress.clone_from(&args.allow_egress);
    net.router_addresses.clone_from(&args.router_addresses);
    net.resolvers = netpolicy::dyno_resolvers();
    host.id_ranges = args.id_ranges;
    host
}

/// `PREFIX/share/manifold/buildpacks` for a binary installed as `PREFIX/bin/manifold-agent`.
fn installed_buildpacks(exe: &Path) -> Option<PathBuf> {
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("share/manifold/buildpacks"))
        .filter(|p| p.is_dir())
}

async fn run(host: HostConfig, args: RunArgs) -> anyhow::Result<i32> {
    let print_spec = args.print_spec;
    let process_type = args.name.split('.').next().unwrap_or_default().to_string();
    if args.name.is_empty()
        || !args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("invalid dyno name {:?}: use TYPE.N, e.g. web.1", args.name);
    }
    let port = args.port.or((process_type == "web").then_some(5000));
    if args.publish.is_some() && port.is_none() {
        bail!("--publish needs a $PORT: give --port or run a web dyno");
    }
    let env = parse_env(&args.env)?;
    let slug = match args.slug {
        Some(path) => {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("slug {} not found", path.display()))?;
            // The digest goes into `dyno.json`, which is how `gc` knows the layer is in
            // use; hashing here rather than in the shim costs nothing more.
            let sha256 = match args.sha256 {
                Some(sha256) => sha256,
                None => slug::sha256_file(&path)
                    .with_context(|| format!("cannot read slug {}", path.display()))?,
            };
            Some(SlugSource {
                path,
                sha256: Some(sha256),
            })
        }
        None => None,
    };
    let config = DynoConfig {
        id: format!(
            "{}-{:08x}",
            args.name.replace('.', "-"),
            rand::random::<u32>()
        ),
        name: args.name,
        stack: args.stack,
        slug,
        size: args.size,
        env,
        command: args.command.join(" "),
        port,
        publish: args.publish,
        grace: args.grace,
        boot_timeout: args.boot_timeout,
        mounts: args.mounts,
        uid: DYNO_UID,
        gid: DYNO_GID,
        host,
        attach: None,
        log_rate: (args.log_rate > 0).then(|| LogRate::per_second(args.log_rate)),
    };

    if print_spec {
        let stack =
            manifold_agent::host::rootfs::find_stack(&config.host.stacks_dir(), &config.stack)?;
        let dir = manifold_agent::dyno::DynoDir::new(&config.host, &config.id);
        let spec = manifold_agent::shim::spec::build(
            &config,
            &dir,
            manifold_agent::shim::spec::shell_for(&stack),
        )?;
        println!("{}", serde_json::to_string_pretty(&spec)?);
        return Ok(0);
    }
    follow(config, |line| {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{line}");
        if line.source == Source::Heroku {
            let _ = stdout.flush();
        }
    })
    .await
}

/// Starts a dyno and follows it to its end, handing each log line to `print`; Ctrl-C or
/// SIGTERM stops the dyno. Returns its exit status.
async fn follow(
    config: DynoConfig,
    mut print: impl FnMut(LogLine) + Send + 'static,
) -> anyhow::Result<i32> {
    match host::tuning::favor_cgroup_migrations() {
        Ok(Some(path)) => tracing::info!("enabled favordynmods on {}", path.display()),
        Ok(None) => {}
        Err(err) => tracing::warn!("cannot tune cgroup migrations: {err}"),
    }
    // Before the shim exists: a SIGTERM that comes while the dyno starts must stop it, not
    // kill this process (the default action) and leave the dyno running without anyone.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let dyno = Dyno::start(config, std::env::current_exe()?).await?;
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<LogLine>();
    let (stop_tx, stop_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
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
        while let Some(line) = line_rx.recv().await {
            print(line);
        }
    });
    let status = dyno.follow(line_tx, stop_rx).await?;
    printer.await?;
    Ok(status)
}

async fn build(host: HostConfig, args: BuildArgs) -> anyhow::Result<i32> {
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

/// Parses `KEY=VALUE` config vars, refusing names a shell could not export.
fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    for kv in pairs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("invalid config var {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("invalid config var name {k:?}: use letters, digits and _, not starting with a digit");
        }
        env.insert(k.to_string(), v.to_string());
    }
    Ok(env)
}

fn gc(host: &HostConfig, slug_retention: std::time::Duration) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(host.dynos_dir()) {
        Ok(e) => e.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("cannot list dynos"),
    };
    for entry in entries {
        let id = entry.file_name().to_string_lossy().to_string();
        let dir = DynoDir { root: entry.path() };
        if shim_alive(&dir) {
            continue;
        }
        let errors = shim::remove_dead(&dir)
            .with_context(|| format!("cannot remove {}", dir.root.display()))?;
        for err in errors {
            eprintln!("gc {id}: {err}");
        }
        println!("removed dyno {id}");
    }
    let net = &host.network;
    // Repairs the host's bridge and rules too, in case someone flushed them.
    network::ensure_host(net)?;
    // Asked afresh for each dyno holding a network: a dyno started since the listing above
    // (by a daemon or another `run`) has its directory before it attaches, so it is kept.
    let alive = |id: &str| {
        shim_alive(&DynoDir {
            root: host.dynos_dir().join(id),
        })
    };
    for id in network::sweep(net, &alive)? {
        println!("released network of {id}");
    }
    if let Ok(owners) = std::fs::read_dir(host.slugs_dir()) {
        for owner in owners.filter_map(Result::ok).filter(|e| e.path().is_dir()) {
            slug::SlugCache::sweep_tmp(&owner.path())?;
        }
    }
    let collected = manifold_agent::host::gc::collect_slugs(host, slug_retention)?;
    for sha256 in collected.layers {
        println!("removed slug layer {sha256}");
    }
    for sha256 in collected.archives {
        println!("removed slug archive {sha256}");
    }
    if let Some(ids) = manifold_agent::host::ids::IdRanges::new(host)? {
        for app in ids.release_unused(host, manifold_agent::host::ids::RELEASE_AFTER)? {
            println!("gave back the id range of app {app}");
        }
    }
    Ok(())
}
