//! `manifold-scheduler`: the control plane daemon (REST API, AgentLink hub, reconciler,
//! SQLite store). `--with-agent` also runs an agent on this host: the all-in-one node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use manifold_endpoints::Endpoints;
use manifold_logplex::PlexConfig;
use manifold_router::RouterConfig;
use manifold_scheduler::core::{Core, Settings};
use manifold_scheduler::edge::DefaultCert;
use manifold_scheduler::leadership::{campaign_forever, Candidate, Leadership};
use manifold_scheduler::store::sql::{Database, SqlStore};

#[derive(Parser)]
#[command(
    name = "manifold-scheduler",
    version,
    about = "The Manifold control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Settings file: its keys are these flags' long names (`heartbeat_deadline = "5s"`);
    /// flags and MANIFOLD_* variables win over it.
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_SCHEDULER_CONFIG",
        default_value = "/etc/manifold/scheduler.toml"
    )]
    config: PathBuf,
    /// Address for the REST API and the agents' gRPC link (one port serves both).
    #[arg(long, env = "MANIFOLD_LISTEN", default_value = "127.0.0.1:8750")]
    listen: SocketAddr,
    /// The database, blobs and generated tokens.
    #[arg(
        long,
        env = "MANIFOLD_SCHEDULER_STATE_DIR",
        default_value = "/var/lib/manifold-scheduler"
    )]
    state_dir: PathBuf,
    /// The store: a postgres:// URL (several schedulers share it), or an SQLite file
    /// (default: STATE_DIR/manifold.db).
    #[arg(long, env = "MANIFOLD_DATABASE")]
    database: Option<Database>,
    /// A host whose agent is silent this long is lost and its dynos are placed elsewhere.
    #[arg(long, env = "MANIFOLD_HEARTBEAT_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_deadline: Duration,
    /// Every dyno is replaced once per this interval plus up to 15% more (Heroku's daily
    /// cycling: 24 h plus 0 to 216 min), each dyno at its own time.
    #[arg(long, env = "MANIFOLD_CYCLE_INTERVAL", default_value = "24h", value_parser = humantime::parse_duration)]
    cycle_interval: Duration,
    /// How long a blob nothing refers to (a destroyed app's slug, a finished build's
    /// source) stays on disk before it is removed.
    #[arg(long, env = "MANIFOLD_BLOB_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    blob_retention: Duration,
    /// Largest source upload, in MiB.
    #[arg(long, env = "MANIFOLD_UPLOAD_LIMIT_MIB", default_value_t = 512)]
    upload_limit_mib: u64,
    /// The users' API token (default: STATE_DIR/api-token, generated once).
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_API_TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// The agents' token (default: STATE_DIR/agent-token, generated once).
    #[arg(long, env = "MANIFOLD_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// The token of routers and log plex processes that follow this scheduler: it opens
    /// their routes only, not the API (default: STATE_DIR/follower-token, generated once;
    /// give that file to followers as --token-file).
    #[arg(long, env = "MANIFOLD_FOLLOWER_TOKEN", hide_env_values = true)]
    follower_token: Option<String>,
    /// Where the router serves apps (`APP.DOMAIN` by the Host header); `none` for no router.
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    router_listen: String,
    /// Where the router serves apps over HTTPS (HTTP/2 or HTTP/1.1), with the certificate
    /// of --router-cert or one issued by the cluster CA, and each app's certificates for
    /// its custom domains; `none` for no HTTPS.
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_ROUTER_TLS_LISTEN",
        default_value = "127.0.0.1:8443"
    )]
    router_tls_listen: String,
    /// The router's certificate for DOMAIN and *.DOMAIN (PEM chain), instead of one issued
    /// by the cluster CA; needs --router-key.
    #[arg(long, env = "MANIFOLD_ROUTER_CERT", requires = "router_key")]
    router_cert: Option<PathBuf>,
    /// The key of --router-cert (PEM).
    #[arg(long, env = "MANIFOLD_ROUTER_KEY", requires = "router_cert")]
    router_key: Option<PathBuf>,
    /// The CA (DIR/ca.pem, DIR/ca-key.pem, as `certs ca` writes them) that issues the
    /// router's certificate for DOMAIN when --router-cert is not given. Default: the
    /// directory of --cluster-ca if its key is there, else STATE_DIR/ca (created the first
    /// time: clients trust STATE_DIR/ca/ca.pem, e.g. `curl --cacert`).
    #[arg(long, env = "MANIFOLD_ROUTER_CA")]
    router_ca: Option<PathBuf>,
    /// Apps are reached as APP.DOMAIN (`*.localhost` resolves to this machine).
    #[arg(
        long,
        global = true,
        env = "MANIFOLD_DOMAIN",
        default_value = "localhost"
    )]
    domain: String,
    /// Time to the first byte of a dyno's response before the router gives up (H12).
    #[arg(long, global = true, env = "MANIFOLD_ROUTER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    router_timeout: Duration,
    /// How long the router holds requests while an app's web dynos boot or wake (then H20).
    #[arg(long, global = true, env = "MANIFOLD_ROUTER_BOOT_HOLD", default_value = "75s", value_parser = humantime::parse_duration)]
    router_boot_hold: Duration,
    /// Apps whose web dynos are eco sleep after this long without a request (`0s`: never).
    #[arg(long, env = "MANIFOLD_SLEEP_AFTER", default_value = "30m", value_parser = humantime::parse_duration)]
    sleep_after: Duration,
    /// How long an attached one-off (`manifold run`) waits for its client to come back after
    /// the connection dropped before it is stopped (SIGHUP).
    #[arg(long, env = "MANIFOLD_RUN_RECONNECT_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    run_reconnect_grace: Duration,
    /// How long an attached one-off may go without input or output before it is stopped
    /// (Heroku: 1 h).
    #[arg(long, env = "MANIFOLD_RUN_IDLE_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    run_idle_timeout: Duration,
    /// How long an API/AgentLink connection may take to send a request's headers, counted
    /// from when it waits for one: slow senders (slowloris), silent and idle keep-alive
    /// connections are closed after it. Streaming responses are not cut.
    #[arg(long, env = "MANIFOLD_API_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    api_header_timeout: Duration,
    /// Most API/AgentLink connections served at once (each agent holds one or two); more
    /// wait to be accepted until one closes.
    #[arg(long, env = "MANIFOLD_API_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    api_max_connections: u32,
    /// Most router client connections served at once; more wait to be accepted.
    #[arg(long, global = true, env = "MANIFOLD_ROUTER_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    router_max_connections: u32,
    /// Extra CA certificates (PEM) that syslog+tls:// and https:// log drains are checked against.
    #[arg(long, env = "MANIFOLD_DRAIN_CA")]
    drain_ca: Option<PathBuf>,
    /// A network (CIDR) log drains may reach although it is loopback, private, link-local or
    /// otherwise internal, which drains are refused by default (a drain URL is user input).
    /// Repeat the flag; comma-separated in the variable, a list in the settings file.
    #[arg(long, env = "MANIFOLD_DRAIN_ALLOW", value_delimiter = ',')]
    drain_allow: Vec<manifold_logplex::IpNet>,
    /// Serve the API and AgentLink over TLS with this certificate (PEM; e.g. from
    /// `certs issue scheduler`); needs --tls-key.
    #[arg(long, env = "MANIFOLD_SCHEDULER_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MANIFOLD_SCHEDULER_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): agents must present a certificate from it for their host id
    /// (needs --tls-cert); `router` and `logplex` trust it for an https:// scheduler.
    #[arg(long, global = true, env = "MANIFOLD_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    /// This replica's API as clients and other replicas reach it, which followers name as
    /// the leader's (default: the --listen address, loopback for a wildcard one). Set it
    /// when several replicas share a database.
    #[arg(long, env = "MANIFOLD_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// The leadership lease: a leader that stops renewing it is replaced after this long
    /// (it renews every third of it). See ARCHITECTURE.md, "Leadership".
    #[arg(long, env = "MANIFOLD_LEASE_TTL", default_value = "3s", value_parser = parse_lease_ttl)]
    lease_ttl: Duration,
    /// Automated certificates for custom domains (ACME).
    #[command(flatten)]
    acme: manifold_scheduler::acme::settings::AcmeSettings,
    /// Also run `manifold-agent` on this host, connected to this scheduler (all-in-one).
    #[arg(long)]
    with_agent: bool,
    /// Extra arguments for that agent (repeat), e.g. `--agent-arg=--slots=20`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run only a router, on its own (e.g. on another machine): it follows the scheduler's
    /// routes over the API and sends it traffic, wakes and router log lines.
    Router {
        /// The scheduler replicas' APIs, comma-separated, e.g.
        /// https://10.0.0.1:8750,https://10.0.0.2:8750: it follows the leader among them.
        #[arg(long, env = "MANIFOLD_SCHEDULER", value_parser = Endpoints::parse)]
        scheduler: Endpoints,
        /// A file holding the scheduler's follower token (its STATE_DIR/follower-token;
        /// the API token works too), instead of --api-token.
        #[arg(long, env = "MANIFOLD_API_TOKEN_FILE")]
        token_file: Option<PathBuf>,
    },
    /// Run only a log plex reader, on its own: it follows every line of the scheduler and
    /// serves `manifold logs` (point MANIFOLD_API at it) without loading the scheduler.
    Logplex {
        /// The scheduler replicas' APIs, comma-separated, e.g.
        /// https://10.0.0.1:8750,https://10.0.0.2:8750: it follows the leader among them.
        #[arg(long, env = "MANIFOLD_SCHEDULER", value_parser = Endpoints::parse)]
        scheduler: Endpoints,
        /// A file holding the scheduler's follower token (its STATE_DIR/follower-token;
        /// the API token works too), instead of --api-token.
        #[arg(long, env = "MANIFOLD_API_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Where to serve GET /apps/APP/log-stream.
        #[arg(long = "logplex-listen", default_value = "127.0.0.1:8752")]
        listen: SocketAddr,
    },
    /// The cluster CA and host certificates for TLS between agents and the scheduler.
    Certs {
        #[command(subcommand)]
        command: manifold_scheduler::certs::CertsCommand,
    },
}

/// The router settings the flags give.
fn router_config(cli: &Cli) -> RouterConfig {
    RouterConfig {
        domain: cli.domain.clone(),
        request_timeout: cli.router_timeout,
        boot_hold: cli.router_boot_hold,
        max_connections: cli.router_max_connections as usize,
        ..RouterConfig::default()
    }
}

/// A lease of at least a second and at most a minute: shorter, one slow database
/// round trip deposes the leader; longer, a failover takes that long.
fn parse_lease_ttl(value: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ttl) {
        return Err(format!("{value} is not between 1s and 60s"));
    }
    Ok(ttl)
}

/// The token a follower process uses: `--api-token`, else the file (the scheduler's
/// follower token, or its API token).
fn follower_token(cli: &Cli, token_file: Option<&Path>) -> anyhow::Result<String> {
    Ok(match (&cli.api_token, token_file) {
        (Some(t), _) if !t.is_empty() => t.clone(),
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API token from {}", path.display()))?
            .trim()
            .to_string(),
        _ => {
            anyhow::bail!("a follower needs the scheduler's follower token: --token-file STATE_DIR/follower-token (or --api-token)")
        }
    })
}

/// Runs `manifold-scheduler logplex`: a log plex reader following the scheduler.
async fn follow_logs(
    cli: &Cli,
    scheduler: &Endpoints,
    token_file: Option<&Path>,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let token = follower_token(cli, token_file)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the log plex"))?;
    tracing::info!(
        "serving logs on http://{listen}, following {}",
        scheduler.urls().join(",")
    );
    manifold_scheduler::followers::run_logplex(
        scheduler.clone(),
        token,
        manifold_scheduler::tls::follower_client(cli.cluster_ca.as_deref())?,
        listener,
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

/// Runs `manifold-scheduler router`: a router following the scheduler at `scheduler`.
async fn follow(cli: &Cli, scheduler: &Endpoints, token_file: Option<&Path>) -> anyhow::Result<()> {
    let token = follower_token(cli, token_file)?;
    let listener = tokio::net::TcpListener::bind(&cli.router_listen)
        .await
        .with_context(|| format!("cannot listen on {} for the router", cli.router_listen))?;
    tracing::info!(
        "routing http://APP.{}:{} to apps, following {}",
        cli.domain,
        listener.local_addr()?.port(),
        scheduler.urls().join(",")
    );
    let tls = router_tls_listener(cli).await?;
    let config = manifold_scheduler::followers::FollowConfig {
        scheduler: scheduler.clone(),
        token,
        router: router_config(cli),
        client: manifold_scheduler::tls::follower_client(cli.cluster_ca.as_deref())?,
    };
    manifold_scheduler::followers::run(config, listener, tls, shutdown_signal()).await?;
    Ok(())
}

/// The router's HTTPS listener, unless --router-tls-listen is `none`.
async fn router_tls_listener(cli: &Cli) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    match cli.router_tls_listen.as_str() {
        "none" => Ok(None),
        listen => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} for the router's HTTPS"))?;
            tracing::info!(
                "routing https://APP.{}:{} to apps",
                cli.domain,
                listener.local_addr()?.port()
            );
            Ok(Some(listener))
        }
    }
}

/// Where the router's certificate for the cluster's domain comes from (see --router-ca).
fn default_cert(cli: &Cli) -> anyhow::Result<DefaultCert> {
    if cli.router_tls_listen == "none" {
        return Ok(DefaultCert::None);
    }
    if let (Some(cert), Some(key)) = (&cli.router_cert, &cli.router_key) {
        let read = |what: &str, path: &Path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the router's {what} {}", path.display()))
        };
        let chain_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let checked = manifold_scheduler::edge::inspect::inspect(&chain_pem, &key_pem)
            .with_context(|| format!("the router's certificate {}", cert.display()))?;
        return Ok(DefaultCert::Given(manifold_router::TlsCert {
            names: checked.names,
            chain_pem,
            key_pem,
        }));
    }
    let beside_cluster_ca = cli
        .cluster_ca
        .as_deref()
        .and_then(Path::parent)
        .filter(|dir| dir.join("ca-key.pem").exists());
    let dir = match (&cli.router_ca, beside_cluster_ca) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.to_path_buf(),
        (None, None) => {
            let dir = cli.state_dir.join("ca");
            if !dir.join("ca.pem").exists() {
                manifold_scheduler::certs::create_ca(
                    &dir,
                    false,
                    manifold_scheduler::certs::CA_DAYS,
                )
                .with_context(|| format!("cannot create the router's CA in {}", dir.display()))?;
                tracing::info!(
                    "created a CA for the router's HTTPS in {} (clients trust {})",
                    dir.display(),
                    dir.join("ca.pem").display()
                );
            }
            dir
        }
    };
    Ok(DefaultCert::ClusterCa(dir))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Reads a token file, or writes a new random token there (mode 0600) the first time.
fn token(state_dir: &Path, name: &str, given: Option<String>) -> anyhow::Result<String> {
    if let Some(t) = given.filter(|t| !t.is_empty()) {
        return Ok(t);
    }
    let path = state_dir.join(name);
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let t: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{t}")?;
    Ok(t)
}

fn main() -> anyhow::Result<()> {
    // Run by git inside a push (see `manifold_scheduler::git`), with git's environment:
    // before settings and logging, which are the server's.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("git-hook") {
        std::process::exit(manifold_scheduler::git::hook::main(&args[1..]));
    }
    // Before any thread: the settings file becomes the flags' variables.
    let settings = manifold_settings::apply(Cli::command(), std::env::args_os())?;
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MANIFOLD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if settings.is_some() {
        tracing::info!("settings from {}", cli.config.display());
    }
    tokio::runtime::Runtime::new()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Router {
            scheduler,
            token_file,
        }) => return follow(&cli, scheduler, token_file.as_deref()).await,
        Some(Command::Logplex {
            scheduler,
            token_file,
            listen,
        }) => return follow_logs(&cli, scheduler, token_file.as_deref(), *listen).await,
        Some(Command::Certs { command }) => return Ok(command.run()?),
        None => {}
    }
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.cluster_ca) {
        (Some(cert), Some(key), ca) => Some(Arc::new(
            manifold_scheduler::tls::ServerTls::load(cert, key, ca.as_deref())
                .context("cannot set up TLS")?,
        )),
        (_, _, Some(_)) => anyhow::bail!(
            "--cluster-ca (MANIFOLD_CLUSTER_CA) needs TLS: give --tls-cert and --tls-key too"
        ),
        _ => None,
    };
    // Checked at start: a bad directory URL or CA bundle stops the scheduler here.
    let acme = cli
        .acme
        .config()
        .context("cannot set up automated certificates")?;
    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("cannot create {}", cli.state_dir.display()))?;
    let settings = Settings {
        heartbeat_deadline: cli.heartbeat_deadline,
        reconcile_interval: Duration::from_secs(1),
        cycling: manifold_scheduler::reconciler::Cycling::every(cli.cycle_interval),
        upload_limit: cli.upload_limit_mib * 1024 * 1024,
        slug_limit: 1024 * 1024 * 1024,
        router: router_config(&cli),
        api_token: token(&cli.state_dir, "api-token", cli.api_token.clone())?,
        agent_token: token(&cli.state_dir, "agent-token", cli.agent_token.clone())?,
        follower_token: token(&cli.state_dir, "follower-token", cli.follower_token.clone())?,
        agent_certs: tls.as_ref().is_some_and(|t| t.checks_clients()),
        plex: PlexConfig {
            drain_roots: match &cli.drain_ca {
                Some(path) => manifold_logplex::load_pem_roots(path)
                    .with_context(|| format!("cannot read the drain CA {}", path.display()))?,
                None => Vec::new(),
            },
            // Agents send lines in batches of up to 500: a tail must hold a few batches
            // while its reader catches up, or a burst costs it lines (L11).
            tail_buffer: 10_000,
            drain_allow: cli.drain_allow.clone(),
            ..PlexConfig::default()
        },
        sleep_after: (!cli.sleep_after.is_zero()).then_some(cli.sleep_after),
        run: manifold_scheduler::attach::RunSettings {
            reconnect_grace: cli.run_reconnect_grace,
            idle_timeout: cli.run_idle_timeout,
        },
        api: manifold_scheduler::server::ListenerLimits {
            header_timeout: cli.api_header_timeout,
            max_connections: cli.api_max_connections as usize,
        },
        default_cert: default_cert(&cli)?,
        acme,
    };
    let db = (cli.database.clone())
        .unwrap_or_else(|| Database::Sqlite(cli.state_dir.join("manifold.db")));
    let store = SqlStore::open(&db)
        .await
        .with_context(|| format!("cannot open the store {db}"))?;
    let store: Arc<dyn manifold_scheduler::store::Store> = Arc::new(store);
    let blobs = manifold_scheduler::blobs::open(&db, &cli.state_dir)
        .await
        .with_context(|| format!("cannot open the blob store in {db}"))?;
    let leadership = Arc::new(Leadership::follower(cli.lease_ttl));
    let core = Core::new(store.clone(), blobs, settings.clone(), leadership.clone());
    core.git
        .configure(&cli.state_dir.join("git"), &std::env::current_exe()?)
        .context("cannot set up the apps' git remotes")?;
    tokio::spawn(manifold_scheduler::blobs::collect_forever(
        core.clone(),
        cli.blob_retention,
    ));
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let candidate = Candidate::new(
        cli.advertise_url
            .clone()
            .unwrap_or_else(|| all_in_one_url(scheme, addr)),
        cli.lease_ttl,
    );
    tracing::info!(
        "campaigning for the leadership as {} ({})",
        candidate.holder,
        candidate.address
    );
    let (resign, resigned) = tokio::sync::oneshot::channel::<()>();
    let campaign = tokio::spawn(campaign_forever(store, leadership, candidate, async {
        let _ = resigned.await;
    }));
    tracing::info!(
        "serving the API and AgentLink on {scheme}://{addr}{}",
        if settings.agent_certs {
            ", agents with a certificate from the cluster CA"
        } else {
            ""
        }
    );
    core.logs
        .load_drains()
        .await
        .context("cannot load the log drains")?;
    let router = match cli.router_listen.as_str() {
        "none" => None,
        listen => {
            let router = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} for the router"))?;
            tracing::info!(
                "routing http://APP.{}:{} to apps",
                cli.domain,
                router.local_addr()?.port()
            );
            Some(router)
        }
    };
    let router = manifold_scheduler::server::RouterListeners {
        http: router,
        https: router_tls_listener(&cli).await?,
    };
    let mut agent = if cli.with_agent {
        let exe = std::env::current_exe()?.with_file_name("manifold-agent");
        let child = tokio::process::Command::new(&exe)
            .arg("--scheduler")
            .arg(all_in_one_url(scheme, addr))
            // With TLS the agent trusts the cluster CA; its own certificate comes with
            // --agent-arg=--tls-cert=… and --agent-arg=--tls-key=….
            .envs(
                cli.cluster_ca
                    .as_ref()
                    .map(|ca| ("MANIFOLD_CLUSTER_CA", ca)),
            )
            .args(&cli.agent_args)
            .env("MANIFOLD_AGENT_TOKEN", &settings.agent_token)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        tracing::info!("started the all-in-one agent ({})", exe.display());
        Some(child)
    } else {
        None
    };
    // systemd's `Type=notify`: the store is open and both listeners accept.
    notify(sd_notify::NotifyState::Ready);
    manifold_scheduler::server::serve(core, listener, tls, router, async move {
        shutdown_signal().await;
        notify(sd_notify::NotifyState::Stopping);
        // Give the lease up first, so that another replica leads at once rather than after
        // this one's requests are done: the duties stop and agents are sent on now.
        let _ = resign.send(());
    })
    .await?;
    let _ = campaign.await;
    if let Some(child) = agent.as_mut() {
        // The agent leaves its dynos running when it stops; stopping dynos is up to the user.
        if let Some(pid) = child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = child.wait().await;
    }
    Ok(())
}

/// Where the all-in-one agent dials: the listener's own address, but loopback for a
/// wildcard one (`0.0.0.0`, `::`). With TLS the scheduler's certificate must name that
/// address (`certs issue scheduler --ip 127.0.0.1`); no certificate names a wildcard.
fn all_in_one_url(scheme: &str, addr: std::net::SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{scheme}://{addr}")
}

/// Tells the service manager, if one started us with a notify socket, what state we are in.
fn notify(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify the service manager: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_all_in_one_agent_dials_loopback_for_a_wildcard_listener() {
        let url = |a: &str| all_in_one_url("https", a.parse().expect("address"));
        assert_eq!(url("0.0.0.0:8750"), "https://127.0.0.1:8750");
        assert_eq!(url("[::]:8750"), "https://[::1]:8750");
        assert_eq!(url("10.0.0.2:8750"), "https://10.0.0.2:8750");
        assert_eq!(url("127.0.0.1:9"), "https://127.0.0.1:9");
    }

    #[test]
    fn acme_settings_are_flags_and_settings_file_keys() {
        let file = "acme_directory = \"https://acme.test/dir\"\n\
                    acme-contact = \"ops@example.com\"\n\
                    acme_ca = \"/etc/manifold/acme-ca.pem\"\n";
        let settings =
            manifold_settings::resolve(&Cli::command(), Path::new("scheduler.toml"), file)
                .expect("ACME settings are known keys");
        let mut variables: Vec<_> = settings.iter().map(|s| s.variable.clone()).collect();
        variables.sort();
        assert_eq!(
            variables,
            [
                "MANIFOLD_ACME_CA",
                "MANIFOLD_ACME_CONTACT",
                "MANIFOLD_ACME_DIRECTORY"
            ]
        );
        let cli = Cli::try_parse_from([
            "manifold-scheduler",
            "--acme-directory",
            "https://acme.test/dir",
            "--acme-contact",
            "ops@example.com",
        ])
        .expect("flags");
        let acme = cli.acme.config().expect("valid").expect("on");
        assert_eq!(acme.contact, ["mailto:ops@example.com"]);
        // A contact or CA without a directory is a mistake, not something ignored.
        let err = Cli::try_parse_from(["manifold-scheduler", "--acme-contact", "a@b.example"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("--acme-directory"), "{err}");
    }
}
