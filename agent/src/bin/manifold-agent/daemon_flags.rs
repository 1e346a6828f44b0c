//! The daemon's flags, and the settings they make: the daemon's and the host's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use manifold_agent::build_dyno;
use manifold_agent::daemon::restart::RestartPolicy;
use manifold_agent::daemon::{self, link};
use manifold_agent::dyno::HostConfig;
use manifold_agent::host::{netpolicy, network};

#[derive(Args)]
pub(crate) struct DaemonArgs {
    /// The schedulers' URLs (gRPC and blobs), comma-separated, e.g.
    /// https://10.0.0.1:8750,https://10.0.0.2:8750: the agent links to the leader among them
    /// and moves to another when it goes (a DNS name with several addresses works too).
    #[arg(long, env = "MANIFOLD_SCHEDULER")]
    pub(crate) scheduler: Option<String>,
    /// The agent token.
    #[arg(long, env = "MANIFOLD_AGENT_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// A file whose first line is the agent token (when --token is not given).
    #[arg(long, env = "MANIFOLD_AGENT_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// This host's id (default: STATE_DIR/host-id, else the hostname).
    #[arg(long, env = "MANIFOLD_HOST_ID")]
    pub(crate) host_id: Option<String>,
    /// The address the router reaches published dyno ports on.
    #[arg(long, env = "MANIFOLD_ADDRESS", default_value = "127.0.0.1")]
    pub(crate) address: String,
    /// Memory for dynos: bytes or like 8G (default: MemTotal minus 512 MiB).
    #[arg(long, env = "MANIFOLD_MEMORY", value_parser = daemon::parse_memory)]
    pub(crate) memory: Option<u64>,
    /// How many dynos this host runs at most.
    #[arg(long, env = "MANIFOLD_SLOTS", default_value_t = 100)]
    pub(crate) slots: u32,
    /// Host ports for web dynos' $PORT.
    #[arg(long, env = "MANIFOLD_PORTS", default_value = "30000-30999")]
    pub(crate) ports: daemon::PortRange,
    /// Parent cgroup of every dyno's cgroup (with systemd: the slice `<parent>.slice`).
    #[arg(long, env = "MANIFOLD_CGROUP_PARENT", default_value = "manifold")]
    pub(crate) cgroup_parent: String,
    /// Who makes dynos' cgroups: a systemd scope per dyno, or libcontainer directly
    /// (cgroupfs). auto: systemd where it is PID 1 on cgroup v2.
    #[arg(long, env = "MANIFOLD_CGROUP_DRIVER", value_enum, default_value_t = CgroupDriver::Auto)]
    pub(crate) cgroup_driver: CgroupDriver,
    /// The dynos' host bridge.
    #[arg(long, env = "MANIFOLD_BRIDGE")]
    pub(crate) bridge: Option<String>,
    /// The dynos' subnet (CIDR).
    #[arg(long, env = "MANIFOLD_SUBNET")]
    pub(crate) subnet: Option<network::Ipv4Subnet>,
    /// The nft table for NAT and published ports.
    #[arg(long, env = "MANIFOLD_NFT_TABLE")]
    pub(crate) nft_table: Option<String>,
    /// A destination dynos may reach although it is private, shared, loopback, link-local,
    /// multicast or this host: CIDR or CIDR:PORT (e.g. 10.0.5.20:5432). Repeat the flag;
    /// comma-separated in the variable, a list in the settings file.
    #[arg(long, env = "MANIFOLD_ALLOW_EGRESS", value_delimiter = ',')]
    pub(crate) allow_egress: Vec<netpolicy::Destination>,
    /// Addresses (CIDR) besides this host's own that may connect to published dyno ports:
    /// the routers' (default: none, so only this host reaches dynos). Same forms as above.
    #[arg(long, env = "MANIFOLD_ROUTER_ADDRESSES", value_delimiter = ',')]
    pub(crate) router_addresses: Vec<netpolicy::Cidr>,
    /// How many user-namespace id ranges of 65536 this host gives its apps, one each, from
    /// host id 100000 on (range 0 is for `run` and `build` from the command line).
    #[arg(long, env = "MANIFOLD_ID_RANGES", default_value_t = manifold_agent::host::ids::DEFAULT_RANGES)]
    pub(crate) id_ranges: u32,
    /// Heartbeat interval.
    #[arg(long, env = "MANIFOLD_HEARTBEAT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat: Duration,
    /// The built-in buildpacks, for builds.
    #[arg(long, env = "MANIFOLD_BUILDPACKS")]
    pub(crate) buildpacks_dir: Option<PathBuf>,
    /// The slugbuilder binary (default: beside manifold-agent).
    #[arg(long, env = "MANIFOLD_SLUGBUILDER")]
    pub(crate) slugbuilder: Option<PathBuf>,
    /// Cool-off before the 2nd consecutive restart of a crashing dyno (the 1st is at once),
    /// doubled for each next one, with jitter in [d/2, d].
    #[arg(long, env = "MANIFOLD_RESTART_BASE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub(crate) restart_base: Duration,
    /// The longest cool-off between crash restarts.
    #[arg(long, env = "MANIFOLD_RESTART_CAP", default_value = "20m", value_parser = humantime::parse_duration)]
    pub(crate) restart_cap: Duration,
    /// How long a dyno must stay up for its crash count to start over.
    #[arg(long, env = "MANIFOLD_RESTART_RESET", default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) restart_reset: Duration,
    /// How long a web dyno has to accept connections on $PORT before it is killed (R10).
    #[arg(long, env = "MANIFOLD_BOOT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) boot_timeout: Duration,
    /// Lines per second one dyno may log; beyond it (after a burst of 5 s worth) lines are
    /// dropped and counted (Heroku's L10).
    #[arg(long, env = "MANIFOLD_LOG_RATE", default_value_t = 2000)]
    pub(crate) log_rate: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:8751).
    #[arg(long, env = "MANIFOLD_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// How long a slug that no dyno uses stays on this host before it is removed.
    #[arg(long, env = "MANIFOLD_SLUG_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) slug_retention: std::time::Duration,
    /// The cluster CA (PEM) an https:// scheduler's certificate is checked against
    /// (default: the system roots).
    #[arg(long, env = "MANIFOLD_CLUSTER_CA")]
    pub(crate) cluster_ca: Option<PathBuf>,
    /// This host's certificate (PEM, from `manifold-scheduler certs issue HOST_ID`),
    /// presented to an https:// scheduler; needs --tls-key.
    #[arg(long, env = "MANIFOLD_AGENT_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "MANIFOLD_AGENT_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// The only directory under which a build the scheduler asks for may use a buildpack
    /// named by a host path (default: --buildpacks-dir).
    #[arg(long, env = "MANIFOLD_BUILDPACK_ROOT")]
    pub(crate) buildpack_root: Option<PathBuf>,
    /// The largest slug a build may produce (compressed): bytes or like 500M.
    #[arg(long, env = "MANIFOLD_MAX_SLUG_SIZE", default_value_t = build_dyno::DEFAULT_MAX_SLUG_BYTES, value_parser = daemon::parse_memory)]
    pub(crate) max_slug_size: u64,
}

pub(crate) fn daemon_config(
    state_dir: &Path,
    args: DaemonArgs,
) -> anyhow::Result<daemon::DaemonConfig> {
    let mut host = host_config(state_dir, &args);
    let Some(scheduler) = args.scheduler else {
        bail!("give a command, or --scheduler URL[,URL…] (MANIFOLD_SCHEDULER) to run the daemon");
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
pub(crate) enum CgroupDriver {
    Auto,
    Cgroupfs,
    Systemd,
}

pub(crate) fn host_config(state_dir: &Path, args: &DaemonArgs) -> HostConfig {
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
pub(crate) fn installed_buildpacks(exe: &Path) -> Option<PathBuf> {
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("share/manifold/buildpacks"))
        .filter(|p| p.is_dir())
}
