//! `manifold-agent run`: one dyno in the foreground, its log on stdout.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use manifold_agent::dyno::{BindMount, DynoConfig, HostConfig, SlugSource, DYNO_GID, DYNO_UID};
use manifold_agent::host::{self, slug};
use manifold_agent::logs::LogRate;
use manifold_agent::runner::{Dyno, LogLine, Source};
use manifold_agent::size::DynoSize;
use tokio::sync::mpsc;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Stack to run on (a directory under STATE_DIR/stacks).
    #[arg(long, default_value = "testing")]
    pub(crate) stack: String,
    /// The slug: a tar.gz of ./app. Without it the dyno runs on the bare stack.
    #[arg(long)]
    pub(crate) slug: Option<PathBuf>,
    /// Expected sha256 of the slug (hex); the dyno refuses a slug that does not match.
    #[arg(long)]
    sha256: Option<String>,
    /// Dyno size: eco, basic, standard-1x, standard-2x, performance-m, performance-l.
    #[arg(long, default_value = "standard-1x")]
    pub(crate) size: DynoSize,
    /// Dyno name, `TYPE.N` (e.g. web.1, worker.2, run.4821).
    #[arg(long, default_value = "run.1")]
    pub(crate) name: String,
    /// $PORT; defaults to 5000 for web dynos, none for others.
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// Publish the dyno's $PORT on this host port (reachable at 127.0.0.1 and the host's addresses).
    #[arg(long)]
    pub(crate) publish: Option<u16>,
    /// Config vars, KEY=VALUE.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) grace: Duration,
    /// How long a web dyno has to accept connections on $PORT before it is killed (R10).
    #[arg(long, env = "MANIFOLD_BOOT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) boot_timeout: Duration,
    /// Lines per second the dyno may log (after a burst of 5 s worth); its shim drops the
    /// rest and says how many (Heroku's L10). 0, the default here, logs every line.
    #[arg(long, env = "MANIFOLD_LOG_RATE", default_value_t = 0)]
    pub(crate) log_rate: u32,
    /// Print the dyno's OCI runtime spec (config.json) instead of running it.
    #[arg(long)]
    pub(crate) print_spec: bool,
    /// Bind-mount a host path into the dyno: SOURCE:DESTINATION[:ro|:rw].
    #[arg(long = "mount", value_name = "SRC:DST[:ro]")]
    pub(crate) mounts: Vec<BindMount>,
    /// The command, run by bash after .profile.d.
    #[arg(last = true, required = true)]
    pub(crate) command: Vec<String>,
}

pub(crate) async fn run(host: HostConfig, args: RunArgs) -> anyhow::Result<i32> {
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
    let port = args
        .port
        .or(manifold_dyno::is_web(&process_type).then_some(manifold_dyno::WEB_PORT));
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
        access: Default::default(),
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
pub(crate) async fn follow(
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

/// Parses `KEY=VALUE` config vars, refusing names a shell could not export.
pub(crate) fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
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
