//! The control plane's records: what the store keeps and the API shows.
//!
//! Names follow Heroku's Platform API where the concept is the same (app, release, slug,
//! build, formation, dyno); hosts are Manifold's own.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// An app: a name, a stack, and its current config vars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub id: Uuid,
    pub name: String,
    pub stack: String,
    /// The config vars new releases get. Before the first release they are only kept here;
    /// after, every change also appends a release.
    pub config: BTreeMap<String, String>,
    /// Enabled features (`preboot`).
    #[serde(default)]
    pub features: BTreeSet<String>,
    /// Asleep after a while without web traffic (eco dynos only): its web and worker dynos
    /// are stopped and shown `idle` until a request wakes it.
    #[serde(default)]
    pub sleeping: bool,
    /// In maintenance mode: the router answers Heroku's maintenance page (H80) instead of
    /// the app; its dynos and one-offs keep running.
    #[serde(default)]
    pub maintenance: bool,
    /// Automated certificates on (`certs:auto:enable`): each custom domain gets one from
    /// the cluster's ACME server.
    #[serde(default)]
    pub acm: bool,
    /// Seconds a web dyno has to accept on `$PORT` before R10 (`None`: 60).
    #[serde(default)]
    pub boot_timeout: Option<u32>,
    /// Seconds from SIGTERM to SIGKILL when a dyno stops (`None`: 30).
    #[serde(default)]
    pub stop_timeout: Option<u32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The features an app can enable, with what they do.
pub const FEATURES: &[(&str, &str)] = &[(
    "preboot",
    "new web dynos start and are up before the old ones stop, on a release or a formation change",
)];

/// A log drain: where an app's lines are shipped (syslog over TCP or TLS, or HTTPS).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogDrain {
    pub id: Uuid,
    pub app_id: Uuid,
    pub url: String,
    /// Sent with every line (syslog HOSTNAME, `Logplex-Drain-Token`) so the receiver can
    /// tell drains apart (Heroku's `d.` tokens).
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A custom domain: a name the router routes to its app besides `APP.DOMAIN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    /// Lowercase, without a trailing dot.
    pub hostname: String,
    pub app_id: Uuid,
    /// The app's name (the router routes by it).
    pub app: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Where a certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSource {
    /// The cluster domain's (`*.DOMAIN` and each `APP.DOMAIN`), issued by the cluster CA or
    /// given by the operator.
    Default,
    /// Brought by the user (`manifold certs:add`).
    Uploaded,
    /// Obtained over ACME (`manifold certs:auto:enable`).
    Acme,
}

/// Where a certificate is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    /// No certificate yet (an ACME order in progress).
    Pending,
    /// Served.
    Active,
    /// The last attempt failed (`last_error`); a certificate it had is still served.
    Failed,
}

impl CertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Default => "default",
            CertSource::Uploaded => "uploaded",
            CertSource::Acme => "acme",
        }
    }

    pub fn parse(text: &str) -> Option<CertSource> {
        [CertSource::Default, CertSource::Uploaded, CertSource::Acme]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Pending => "pending",
            CertStatus::Active => "active",
            CertStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<CertStatus> {
        [CertStatus::Pending, CertStatus::Active, CertStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A certificate chain with its key, and what was read from it.
#[derive(Clone, PartialEq)]
pub struct CertMaterial {
    /// PEM, leaf first.
    pub chain_pem: String,
    /// PEM. Never logged, never in an API answer.
    pub key_pem: String,
    /// The issuer's distinguished name, as shown by `manifold certs`.
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertMaterial")
            .field("issuer", &self.issuer)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A TLS certificate the routers serve for its names (chosen by SNI).
#[derive(Debug, Clone, PartialEq)]
pub struct Cert {
    pub id: Uuid,
    /// `None` for the cluster domain's default certificate.
    pub app_id: Option<Uuid>,
    pub source: CertSource,
    /// The DNS names it covers (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// `None` until there is a certificate (an ACME order in progress).
    pub material: Option<CertMaterial>,
    pub status: CertStatus,
    /// Why the last attempt to obtain or renew it failed.
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A built slug: the archive lives in the blob store under `sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slug {
    pub id: Uuid,
    pub app_id: Uuid,
    /// Hex sha256 of the archive.
    pub sha256: String,
    pub size: u64,
    /// Procfile process types: `web` → command.
    pub process_types: BTreeMap<String, String>,
    pub stack: String,
    pub buildpacks: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    Pending,
    Succeeded,
    Failed,
}

/// A build of uploaded source into a slug, run in a build dyno on some host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub id: Uuid,
    pub app_id: Uuid,
    pub status: BuildStatus,
    /// The source tarball in the blob store.
    pub source_sha256: String,
    pub slug_id: Option<Uuid>,
    /// The release the build created, when it succeeded.
    pub release_version: Option<u32>,
    /// Where it ran.
    pub host_id: Option<String>,
    pub user: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseStatus {
    Pending,
    Succeeded,
    Failed,
}

/// One entry of an app's append-only release ledger: a slug bound to a config snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub app_id: Uuid,
    /// `v1`, `v2`, … per app, never reused.
    pub version: u32,
    pub slug_id: Uuid,
    pub config: BTreeMap<String, String>,
    /// `Deploy 1a2b3c4d`, `Set FOO config vars`, `Rollback to v2`.
    pub description: String,
    pub user: String,
    pub status: ReleaseStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// How many dynos of a process type to run, and of what size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formation {
    pub app_id: Uuid,
    pub process_type: String,
    pub quantity: u32,
    /// A dyno size name (`standard-1x`).
    pub size: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The size of a process type's dynos until a `ps:scale` says otherwise (Heroku's default).
pub const DEFAULT_SIZE: &str = "standard-1x";

/// A change to one process type's formation; `None` leaves the field as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormationUpdate {
    pub process_type: String,
    pub quantity: Option<u32>,
    pub size: Option<String>,
}

/// The one dyno state, with its words and its transition rule ([`DynoState::may_follow`],
/// which `report_dyno` guards with): the dyno vocabulary's.
pub use manifold_dyno::DynoState;

/// Whether the scheduler wants a dyno to run. A dyno being stopped keeps its row (and its
/// share of the host) until its agent reports it gone, so `ps` and the planner see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

/// One dyno placed on a host: the desired half (what, where) set by the reconciler, the
/// observed half (state, exit status, port) reported by the host's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dyno {
    /// Unique for the life of the cluster: `<app>-<name with . as ->-<8 hex>`.
    pub id: String,
    pub app_id: Uuid,
    /// `web.1`.
    pub name: String,
    pub process_type: String,
    pub release_version: u32,
    pub size: String,
    pub command: String,
    pub host_id: String,
    pub desired: Desired,
    pub state: DynoState,
    #[serde(with = "time::serde::rfc3339")]
    pub state_changed_at: OffsetDateTime,
    pub exit_status: Option<i32>,
    pub reason: String,
    /// The host port the web dyno's `$PORT` is published on.
    pub port: Option<u16>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Config vars of this dyno only, over its release's (a one-off's `run -e K=V`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Set for a one-off dyno a client attaches to (`manifold run`).
    #[serde(default)]
    pub attach: Option<Attach>,
}

impl Dyno {
    /// A dyno just placed on `host_id`: wanted running, not yet reported by its agent
    /// (`created`), under a fresh id. The one way a dyno row begins, so that the
    /// reconciler's dynos and the one-offs start alike. `name` is `<process type>.<index>`
    /// (`web.1`, `run.4821`), which is where its process type comes from.
    pub fn placed(
        app: &App,
        name: String,
        release_version: u32,
        size: String,
        command: String,
        host_id: String,
        now: OffsetDateTime,
    ) -> Dyno {
        let process_type = name
            .rsplit_once('.')
            .map_or(name.as_str(), |(process_type, _)| process_type)
            .to_owned();
        Dyno {
            // Unique for the life of the cluster (an agent tells runs apart by it), readable in
            // `ps --json` and on hosts.
            id: format!(
                "{}-{}-{:08x}",
                app.name,
                name.replace('.', "-"),
                rand::random::<u32>()
            ),
            app_id: app.id,
            name,
            process_type,
            release_version,
            size,
            command,
            host_id,
            desired: Desired::Running,
            state: DynoState::Created,
            state_changed_at: now,
            exit_status: None,
            reason: String::new(),
            port: None,
            created_at: now,
            env: BTreeMap::new(),
            attach: None,
        }
    }

    /// One-off dynos (`run.N`, `release.N`) run once: never restarted, replaced, cycled or
    /// routed to, and not part of any formation ([`manifold_dyno::is_one_off`]).
    pub fn is_one_off(&self) -> bool {
        manifold_dyno::is_one_off(&self.process_type)
    }
}

/// How a client attaches to a one-off dyno: its terminal, and the secret its attach URL
/// carries (so that knowing an app's dyno names is not enough to type into its console).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// A pseudo-terminal rather than pipes.
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
    pub secret: String,
}

/// What an agent reports about one dyno.
#[derive(Debug, Clone, PartialEq)]
pub struct DynoReport {
    pub id: String,
    pub state: DynoState,
    pub changed_at: OffsetDateTime,
    pub exit_status: Option<i32>,
    pub reason: String,
    pub port: Option<u16>,
}

/// A host as its agent described itself in its last `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub address: String,
    pub memory_bytes: u64,
    pub dyno_slots: u32,
    pub stacks: Vec<String>,
    /// Of the last assignment set sent to it; persisted so it only ever increases.
    pub generation: u64,
    /// Drained hosts get no new dynos.
    pub draining: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> App {
        let now = OffsetDateTime::now_utc();
        App {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            stack: "heroku-24".to_owned(),
            config: BTreeMap::new(),
            features: BTreeSet::new(),
            sleeping: false,
            maintenance: false,
            acm: false,
            boot_timeout: None,
            stop_timeout: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_placed_dyno_is_created_running_under_a_fresh_id() {
        let app = app("shop");
        let now = OffsetDateTime::now_utc();
        let placed = |name: &str| {
            Dyno::placed(
                &app,
                name.to_owned(),
                3,
                DEFAULT_SIZE.to_owned(),
                "bin/web".to_owned(),
                "h1".to_owned(),
                now,
            )
        };
        let dyno = placed("web.1");
        assert_eq!(dyno.app_id, app.id);
        assert_eq!(
            (dyno.name.as_str(), dyno.process_type.as_str()),
            ("web.1", manifold_dyno::WEB)
        );
        assert_eq!(dyno.release_version, 3);
        assert_eq!(dyno.host_id, "h1");
        assert_eq!(
            (dyno.desired, dyno.state),
            (Desired::Running, DynoState::Created)
        );
        assert_eq!((dyno.state_changed_at, dyno.created_at), (now, now));
        assert_eq!(
            (dyno.exit_status, dyno.port, dyno.attach),
            (None, None, None)
        );
        assert!(dyno.id.starts_with("shop-web-1-"), "{}", dyno.id);
        assert_ne!(dyno.id, placed("web.1").id, "each placement is a new dyno");
        assert_eq!(placed("run.4821").process_type, manifold_dyno::RUN);
        assert!(placed("release.1").is_one_off());
    }
}
