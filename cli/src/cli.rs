//! Command-line grammar: Heroku-style `topic:command` subcommands.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "manifold",
    version,
    about = "Manage apps and dynos on a Manifold cluster",
    after_help = "Environment: MANIFOLD_API (default http://127.0.0.1:8750), MANIFOLD_API_TOKEN \
                  or MANIFOLD_API_TOKEN_FILE, MANIFOLD_CA, MANIFOLD_APP"
)]
pub struct Cli {
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// A CA certificate (PEM) an https:// API is checked against, besides the system roots
    /// (the cluster's ca.pem).
    #[arg(long, global = true, env = "MANIFOLD_CA", value_name = "PATH")]
    pub ca: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// `-a/--app`, falling back to `MANIFOLD_APP` so a shell can be pinned to one app.
#[derive(Debug, Args)]
pub struct AppArg {
    /// The app to act on.
    #[arg(short, long, env = "MANIFOLD_APP", value_name = "APP")]
    pub app: Option<String>,
}

impl AppArg {
    pub fn name(&self) -> Result<&str> {
        match self.app.as_deref() {
            Some(a) if !a.is_empty() => Ok(a),
            _ => bail!("missing app: pass -a APP (or set MANIFOLD_APP)"),
        }
    }
}

/// The flags and command of `run` and `run:detached`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub app: AppArg,
    /// Dyno size for this dyno, e.g. standard-2x (default: the web formation's size).
    #[arg(short, long, value_name = "SIZE")]
    pub size: Option<String>,
    /// Environment variable for this dyno only, on top of the config vars (repeat for several).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Accepted for Heroku compatibility: manifold run always exits with the command's status.
    #[arg(short = 'x', long = "exit-code")]
    pub exit_code: bool,
    /// Use pipes, not a pseudo-terminal, even when stdin and stdout are a terminal.
    #[arg(long)]
    pub no_tty: bool,
    /// Do not attach: start the dyno and leave its output to the app's log.
    #[arg(long)]
    pub detached: bool,
    /// The command and its arguments, joined with spaces and run by the dyno's shell.
    /// Put `--` before it when it has options of its own.
    #[arg(
        value_name = "COMMAND",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List apps.
    #[command(name = "apps")]
    Apps,
    /// Create an app.
    #[command(name = "apps:create")]
    AppsCreate {
        name: String,
        /// Base image for the app's builds and dynos (server default: bookworm; with
        /// --from, app.json's `stack` unless given here).
        #[arg(long)]
        stack: Option<String>,
        /// Set the app up from DIR as its app.json says (stack, buildpacks, env, formation,
        /// postdeploy), deploying DIR.
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
        /// A config var for app.json's `env` (repeat for several; required ones must be given).
        #[arg(short, long = "env", value_name = "KEY=VALUE", requires = "from")]
        env: Vec<String>,
    },
    /// Show an app.
    #[command(name = "apps:info")]
    AppsInfo {
        #[command(flatten)]
        app: AppArg,
    },
    /// Change an app's settings (they apply to dynos started from now on).
    #[command(name = "apps:update")]
    AppsUpdate {
        #[command(flatten)]
        app: AppArg,
        /// Seconds a web dyno has to accept on $PORT before R10 (default 60; 0 restores it).
        #[arg(long, value_name = "SECS")]
        boot_timeout: Option<u32>,
        /// Seconds from SIGTERM to SIGKILL when a dyno stops (default 30; 0 restores it).
        #[arg(long, value_name = "SECS")]
        stop_timeout: Option<u32>,
    },
    /// Destroy an app and stop its dynos.
    #[command(name = "apps:destroy")]
    AppsDestroy {
        /// The app (or use -a).
        name: Option<String>,
        #[command(flatten)]
        app: AppArg,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Build DIR and release it.
    #[command(name = "deploy")]
    Deploy {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[command(flatten)]
        app: AppArg,
        /// Buildpack name or URL (repeat for several; default: the app's, see `buildpacks`).
        #[arg(long = "buildpack", short = 'b')]
        buildpacks: Vec<String>,
    },
    /// List dynos: the formation's by process type, then one-off dynos (run, release).
    #[command(name = "ps")]
    Ps {
        #[command(flatten)]
        app: AppArg,
    },
    /// Scale process types: web=2[:SIZE], worker+1, worker-1.
    #[command(name = "ps:scale")]
    PsScale {
        changes: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Restart all dynos, one type or one dyno.
    #[command(name = "ps:restart")]
    PsRestart {
        target: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop one dyno (web.1) or every dyno of a type (web).
    #[command(name = "ps:stop")]
    PsStop {
        target: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Run a command in a one-off dyno, attached to this terminal; exits with its status.
    #[command(
        name = "run",
        override_usage = "manifold run [-a APP] [-s SIZE] [-e KEY=VALUE]... [-x] [--no-tty] [--detached] [--] COMMAND..."
    )]
    Run(RunArgs),
    /// Run a command in a one-off dyno in the background; its output goes to the log.
    #[command(
        name = "run:detached",
        override_usage = "manifold run:detached [-a APP] [-s SIZE] [-e KEY=VALUE]... [--] COMMAND..."
    )]
    RunDetached(RunArgs),
    /// Show config vars.
    #[command(name = "config")]
    Config {
        #[command(flatten)]
        app: AppArg,
    },
    /// Print one config var.
    #[command(name = "config:get")]
    ConfigGet {
        key: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Set config vars (KEY=VALUE ...) and restart.
    #[command(name = "config:set")]
    ConfigSet {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove config vars and restart.
    #[command(name = "config:unset")]
    ConfigUnset {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// List releases, newest first.
    #[command(name = "releases")]
    Releases {
        #[command(flatten)]
        app: AppArg,
    },
    /// Show a release (default: the current one).
    #[command(name = "releases:info")]
    ReleasesInfo {
        release: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Roll back to a release (default: the one before the current).
    #[command(name = "releases:rollback", alias = "rollback")]
    ReleasesRollback {
        release: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// List builds.
    #[command(name = "builds")]
    Builds {
        #[command(flatten)]
        app: AppArg,
    },
    /// List the buildpacks the app builds with (none: a deploy detects one).
    #[command(name = "buildpacks")]
    Buildpacks {
        #[command(flatten)]
        app: AppArg,
    },
    /// Set the app's buildpack (a built-in such as heroku/python, or a git URL), replacing
    /// the one at --index.
    #[command(name = "buildpacks:set")]
    BuildpacksSet {
        buildpack: String,
        /// Which of the app's buildpacks to replace, from 1 (one more than there are: add).
        #[arg(short = 'i', long, default_value_t = 1)]
        index: usize,
        #[command(flatten)]
        app: AppArg,
    },
    /// Add a buildpack to the app's, last or at --index.
    #[command(name = "buildpacks:add")]
    BuildpacksAdd {
        buildpack: String,
        /// Where to insert it, from 1 (default: last).
        #[arg(short = 'i', long)]
        index: Option<usize>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove one of the app's buildpacks, named or by --index.
    #[command(name = "buildpacks:remove")]
    BuildpacksRemove {
        buildpack: Option<String>,
        /// Which one to remove, from 1.
        #[arg(short = 'i', long)]
        index: Option<usize>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Clear the app's buildpacks: the next deploy uses BUILDPACK_URL or detects one.
    #[command(name = "buildpacks:clear")]
    BuildpacksClear {
        #[command(flatten)]
        app: AppArg,
    },
    /// List an app's features and whether they are enabled.
    #[command(name = "features")]
    Features {
        #[command(flatten)]
        app: AppArg,
    },
    /// Enable a feature (e.g. preboot).
    #[command(name = "features:enable")]
    FeaturesEnable {
        feature: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Disable a feature.
    #[command(name = "features:disable")]
    FeaturesDisable {
        feature: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Show the app's log: the last lines, then (with --tail) new ones as they come.
    #[command(name = "logs")]
    Logs {
        #[command(flatten)]
        app: AppArg,
        /// Lines of history to show first (at most 1500).
        #[arg(short = 'n', long = "num", default_value_t = 100)]
        num: usize,
        /// Keep streaming new lines until interrupted.
        #[arg(short, long)]
        tail: bool,
        /// Only this process type or dyno (`web`, `web.1`, `router`).
        #[arg(short = 'd', long = "ps", alias = "dyno", value_name = "DYNO")]
        ps: Option<String>,
        /// Only lines from `app` (the dynos and the API) or `heroku` (the platform and router).
        #[arg(short, long, value_parser = ["app", "heroku"])]
        source: Option<String>,
    },
    /// List the app's log drains.
    #[command(name = "drains")]
    Drains {
        #[command(flatten)]
        app: AppArg,
    },
    /// Ship the app's log to URL: syslog://HOST:PORT, syslog+tls://HOST:PORT or https://...
    #[command(name = "drains:add")]
    DrainsAdd {
        url: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop shipping the app's log to a drain (by URL or id).
    #[command(name = "drains:remove")]
    DrainsRemove {
        drain: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// List the app's domains: APP.DOMAIN and its custom domains.
    #[command(name = "domains")]
    Domains {
        #[command(flatten)]
        app: AppArg,
    },
    /// Route a custom domain (www.example.com) to the app; point its DNS at the router.
    #[command(name = "domains:add")]
    DomainsAdd {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop routing a custom domain to the app.
    #[command(name = "domains:remove")]
    DomainsRemove {
        hostname: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// List the app's TLS certificates: domains, issuer, expiry, status (never keys).
    #[command(name = "certs")]
    Certs {
        #[command(flatten)]
        app: AppArg,
    },
    /// Add a certificate you bring for the app's custom domains: CERT is the PEM chain
    /// (the certificate first), KEY its PEM private key.
    #[command(name = "certs:add")]
    CertsAdd {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove one of the app's certificates (its id, from `manifold certs`).
    #[command(name = "certs:remove")]
    CertsRemove {
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Show how the app's automated certificates stand: each custom domain's status (ok,
    /// pending, failing with the reason) and expiry.
    #[command(name = "certs:auto")]
    CertsAuto {
        #[command(flatten)]
        app: AppArg,
    },
    /// Get certificates for the app's custom domains automatically from the cluster's ACME
    /// server (Let's Encrypt or another), renewed before they expire. The domains' DNS must
    /// lead to the routers.
    #[command(name = "certs:auto:enable")]
    CertsAutoEnable {
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop automated certificates for the app; the ones it has are removed.
    #[command(name = "certs:auto:disable")]
    CertsAutoDisable {
        #[command(flatten)]
        app: AppArg,
    },
    /// Show whether the app is in maintenance mode.
    #[command(name = "maintenance")]
    Maintenance {
        #[command(flatten)]
        app: AppArg,
    },
    /// Put the app in maintenance mode: the router answers Heroku's maintenance page (503,
    /// H80); dynos and one-offs keep running.
    #[command(name = "maintenance:on")]
    MaintenanceOn {
        #[command(flatten)]
        app: AppArg,
    },
    /// Take the app out of maintenance mode.
    #[command(name = "maintenance:off")]
    MaintenanceOff {
        #[command(flatten)]
        app: AppArg,
    },
    /// Add (or update) the git remote of an app in the current repository, so that
    /// `git push REMOTE main` deploys it. The token is not written into the repository:
    /// git asks `manifold git:credentials` for it.
    #[command(name = "git:remote")]
    GitRemote {
        #[command(flatten)]
        app: AppArg,
        /// The remote's name.
        #[arg(short, long, default_value = "manifold")]
        remote: String,
    },
    /// Clone an app's repository (into DIR, default the app's name), with its remote set.
    #[command(name = "git:clone")]
    GitClone {
        #[command(flatten)]
        app: AppArg,
        dir: Option<PathBuf>,
        /// The remote's name.
        #[arg(short, long, default_value = "manifold")]
        remote: String,
    },
    /// git's credential helper (git runs it): prints the API token for the app remotes.
    #[command(name = "git:credentials", hide = true)]
    GitCredentials {
        /// get, store or erase (git's helper operations).
        operation: String,
    },
    /// List pipelines.
    #[command(name = "pipelines")]
    Pipelines,
    /// Create a pipeline with an app at a stage (review, development, staging, production).
    #[command(name = "pipelines:create")]
    PipelinesCreate {
        name: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long, value_name = "STAGE")]
        stage: String,
    },
    /// Add an app to a pipeline at a stage.
    #[command(name = "pipelines:add")]
    PipelinesAdd {
        pipeline: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long, value_name = "STAGE")]
        stage: String,
    },
    /// Take an app out of its pipeline (the app stays).
    #[command(name = "pipelines:remove")]
    PipelinesRemove {
        #[command(flatten)]
        app: AppArg,
    },
    /// Show a pipeline's apps by stage.
    #[command(name = "pipelines:info")]
    PipelinesInfo { pipeline: String },
    /// Copy the app's current slug to the apps downstream as new releases, without a
    /// rebuild (default: every app of the next stage).
    #[command(name = "pipelines:promote")]
    PipelinesPromote {
        #[command(flatten)]
        app: AppArg,
        /// The apps to promote to, comma-separated.
        #[arg(short, long, value_name = "APP,APP", value_delimiter = ',')]
        to: Vec<String>,
    },
    /// Destroy a pipeline (its apps stay).
    #[command(name = "pipelines:destroy")]
    PipelinesDestroy { pipeline: String },
    /// Create a review app of a pipeline from a branch (its app.json honoured).
    #[command(name = "reviewapps:create")]
    ReviewappsCreate {
        #[arg(short, long, value_name = "PIPELINE")]
        pipeline: String,
        #[arg(short, long, value_name = "BRANCH")]
        branch: String,
        /// Destroy it after this many hours (default: never).
        #[arg(long, value_name = "HOURS")]
        ttl: Option<u32>,
        /// Upload the branch's source from DIR (default: the branch as pushed to the
        /// pipeline's repository, its staging app's git remote).
        #[arg(long, value_name = "DIR")]
        source: Option<PathBuf>,
    },
    /// List a pipeline's review apps.
    #[command(name = "reviewapps")]
    Reviewapps {
        #[arg(short, long, value_name = "PIPELINE")]
        pipeline: String,
    },
    /// Show the config vars a pipeline's review apps start with.
    #[command(name = "reviewapps:config")]
    ReviewappsConfig {
        #[arg(short, long, value_name = "PIPELINE")]
        pipeline: String,
    },
    /// Set config vars (KEY=VALUE ...) review apps of the pipeline start with.
    #[command(name = "reviewapps:config:set")]
    ReviewappsConfigSet {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(short, long, value_name = "PIPELINE")]
        pipeline: String,
    },
    /// Destroy a review app with its dynos and releases.
    #[command(name = "reviewapps:destroy")]
    ReviewappsDestroy {
        app: String,
        /// The app's name again, to confirm.
        #[arg(long)]
        confirm: Option<String>,
    },
    #[command(flatten)]
    Addons(crate::commands::addons::AddonsCommand),
    /// List hosts and their capacity.
    #[command(name = "hosts")]
    Hosts,
    /// Move every dyno off a host (web dynos: the new one is up before the old one stops)
    /// and place no new ones there.
    #[command(name = "hosts:drain")]
    HostsDrain { host: String },
    /// Let a drained host take dynos again.
    #[command(name = "hosts:undrain")]
    HostsUndrain { host: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn colon_subcommands_parse() {
        let cli = Cli::try_parse_from(["manifold", "ps:scale", "web=2", "worker=1", "-a", "x"])
            .expect("parse");
        match cli.command {
            Command::PsScale { changes, app } => {
                assert_eq!(changes, ["web=2", "worker=1"]);
                assert_eq!(app.app.as_deref(), Some("x"));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "manifold",
            "deploy",
            "src",
            "-a",
            "x",
            "--buildpack",
            "python",
            "--json",
        ])
        .expect("parse");
        assert!(cli.json);
        assert!(
            matches!(cli.command, Command::Deploy { ref buildpacks, .. } if buildpacks == &["python"])
        );
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        match Cli::try_parse_from(argv).expect("parse").command {
            Command::Run(a) | Command::RunDetached(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn run_takes_its_flags_before_the_command_and_the_rest_as_the_command() {
        let a = run_args(&[
            "manifold",
            "run",
            "-a",
            "x",
            "-s",
            "standard-2x",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-x",
            "--no-tty",
            "ls",
            "-la",
            "-a",
            "y",
        ]);
        assert_eq!(a.app.app.as_deref(), Some("x"));
        assert_eq!(a.size.as_deref(), Some("standard-2x"));
        assert_eq!(a.env, ["A=1", "B=2"]);
        assert!(a.exit_code && a.no_tty && !a.detached);
        assert_eq!(a.command, ["ls", "-la", "-a", "y"]);
        let a = run_args(&[
            "manifold", "run", "-a", "x", "--", "python", "-c", "print(1)",
        ]);
        assert_eq!(a.command, ["python", "-c", "print(1)"]);
        let a = run_args(&["manifold", "run:detached", "-a", "x", "--", "--weird"]);
        assert_eq!(a.command, ["--weird"]);
        let a = run_args(&["manifold", "run", "--detached", "-a", "x"]);
        assert!(a.detached && a.command.is_empty());
    }
}
