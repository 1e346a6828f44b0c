//! The store: everything the scheduler must not forget, behind one interface.
//!
//! [`Store`] is the interface; [`sql::SqlStore`] its implementation, on an SQLite file (the
//! embedded default) or a PostgreSQL database several schedulers share (`--database`).
//! Every method is one transaction, so a crash mid-change leaves the state as before it or
//! after it, never half-written. The interface speaks in whole operations (`finish_build`
//! stores the slug, the release and the build's outcome at once) rather than rows, so both
//! databases give the same guarantees.
//!
//! Several schedulers on one database elect a leader through the store: a lease row with a
//! term that only grows ([`Store::campaign`], [`Store::leader`], [`Store::resign`]). The
//! leader fences its store with its term ([`Store::set_fence`]): from then on each of its
//! writes checks, in its own transaction and under the write lock, that the lease is still
//! its own, so a leader that lost the lease (paused, partitioned, slow) cannot write over its
//! successor: its writes fail with [`StoreError::Fenced`] and change nothing.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{
    App, Build, Cert, Domain, Dyno, DynoReport, DynoState, Formation, FormationUpdate, Host,
    LogDrain, Release, ReleaseStatus, Slug,
};
use crate::pipelines::{Coupling, Pipeline, ReviewApp, Stage};

pub mod addons;
pub mod sql;

pub use addons::AddonStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("app {0} already exists")]
    AppExists(String),
    #[error("app {0} not found")]
    AppNotFound(String),
    #[error("release v{version} of {app} not found")]
    ReleaseNotFound { app: String, version: u32 },
    #[error("{app} has no release yet: deploy it first")]
    NoRelease { app: String },
    #[error("build {0} not found")]
    BuildNotFound(Uuid),
    #[error("slug {0} not found")]
    SlugNotFound(Uuid),
    #[error("host {0} not found")]
    HostNotFound(String),
    #[error("log drain {drain} of {app} not found")]
    DrainNotFound { app: String, drain: String },
    #[error("{hostname} is already a domain of {app}")]
    DomainTaken { hostname: String, app: String },
    #[error("{app} has no domain {hostname}")]
    DomainNotFound { app: String, hostname: String },
    #[error("{app} has no certificate {id}")]
    CertNotFound { app: String, id: Uuid },
    #[error("{app} already has a log drain to {url}")]
    DrainExists { app: String, url: String },
    #[error("pipeline {0} already exists")]
    PipelineExists(String),
    #[error("pipeline {0} not found: see `manifold pipelines`")]
    PipelineNotFound(String),
    #[error("{app} is already in pipeline {pipeline} (stage {stage}): remove it first with `manifold pipelines:remove -a {app}`")]
    AppCoupled {
        app: String,
        pipeline: String,
        stage: crate::pipelines::Stage,
    },
    #[error("pipeline {pipeline} has review apps ({}): destroy them first with `manifold reviewapps:destroy APP`", .apps.join(", "))]
    PipelineHasReviewApps { pipeline: String, apps: Vec<String> },
    #[error("{0} is not in a pipeline")]
    NotCoupled(String),
    #[error(transparent)]
    Promotion(#[from] crate::pipelines::PromotionError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("cannot connect to the database {database}")]
    Connect {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    /// A write of a leader whose lease (of `term`) has passed to another or run out.
    #[error("this scheduler's lease of term {term} is over: another may lead, nothing written")]
    Fenced { term: u64 },
    #[error("add-on {0} not found: see `manifold addons`")]
    AddonNotFound(String),
    #[error("{app} already has an add-on attached as {name}: choose another name with --as")]
    AttachmentExists { app: String, name: String },
    #[error("add-on attachment {0} not found")]
    AttachmentNotFound(String),
    #[error("{attachment} is the last attachment of {addon}: destroy the add-on instead (addons:destroy)")]
    LastAttachment { addon: String, attachment: String },
    /// A `Hello` whose admission ended without an outcome: the scheduler is stopping.
    #[error("the scheduler is stopping: the agent's Hello was not admitted")]
    Stopping,
    #[error("cannot migrate the database")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What an agent's `Hello` says of its host.
#[derive(Debug, Clone, Copy)]
pub struct HostHello<'a> {
    pub id: &'a str,
    pub address: &'a str,
    pub memory_bytes: u64,
    pub dyno_slots: u32,
    pub stacks: &'a [String],
}

/// How a build ended.
#[derive(Debug, Clone)]
pub enum BuildOutcome {
    /// Store the slug and append a release of it with the app's current config.
    Succeeded {
        slug: Slug,
        description: String,
    },
    Failed,
}

/// A promotion done: the source's release whose slug was copied, and each target with
/// the release it got.
#[derive(Debug, Clone)]
pub struct Promoted {
    pub pipeline: Pipeline,
    pub source: Release,
    pub targets: Vec<(App, Release)>,
}

/// A review app to create (see [`Store::create_review_app`]).
#[derive(Debug, Clone, Copy)]
pub struct NewReviewApp<'a> {
    pub pipeline: &'a str,
    pub app: &'a str,
    pub stack: &'a str,
    pub branch: &'a str,
    pub config: &'a BTreeMap<String, String>,
    pub buildpacks: &'a [String],
    pub expires_at: Option<OffsetDateTime>,
}

/// What became of an agent's report about a dyno.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported {
    /// The dyno as updated.
    Updated(Box<Dyno>),
    /// No such dyno (it ended and was forgotten, or never existed).
    Unknown,
    /// The dyno is placed on this other host: the report was refused.
    OtherHost(String),
    /// The dyno is in this state, which the reported one cannot follow (see
    /// [`DynoState::may_follow`]): a late report, refused.
    Stale(DynoState),
}

/// Placement decisions applied at once: new dynos, dynos to stop, dynos gone for good.
#[derive(Debug, Clone, Default)]
pub struct DynoChanges {
    pub create: Vec<Dyno>,
    /// Set `desired` to `Stopped` (the agent will stop them).
    pub stop: Vec<String>,
    /// Delete the rows (the agent reported them gone, or their app is gone).
    pub delete: Vec<String>,
}

/// Who leads the schedulers now, as the lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// The holder's name (unique per replica).
    pub holder: String,
    /// Where the holder's API answers, for followers to send clients there.
    pub address: String,
    pub term: u64,
}

/// The lease a store's writes must still hold ([`Store::set_fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub term: u64,
}

#[async_trait::async_trait]
pub trait Store: AddonStore + Send + Sync + 'static {
    /// Takes the lease for `holder` (whose API is at `address`) when it is free or
    /// expired — a new term, one more than the last — or renews it when `holder` holds it;
    /// `None` while another holder's lease runs. Expiry is `ttl` from now by the
    /// DATABASE's clock, so the replicas' clocks need not agree. Runs under the write lock
    /// (ordered with every write) and is never fenced.
    async fn campaign(
        &self,
        holder: &str,
        address: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError>;
    /// Who holds an unexpired lease now (for followers to name the leader).
    async fn leader(&self) -> Result<Option<Leadership>, StoreError>;
    /// The cluster's id, made with its database (sent with every assignment set: agents
    /// count terms within one cluster).
    async fn cluster_id(&self) -> Result<String, StoreError>;
    /// Gives the lease up if `holder` holds it in `term` (a clean shutdown: another takes
    /// over at once, in the next term).
    async fn resign(&self, holder: &str, term: u64) -> Result<(), StoreError>;
    /// From now on every write this store makes first checks, inside its transaction
    /// (after the write lock), that `fence`'s holder still holds the lease in its term and
    /// unexpired, and otherwise fails with [`StoreError::Fenced`] and writes nothing.
    /// `None` turns the check off (tests, tools).
    fn set_fence(&self, fence: Option<Fence>);

    async fn create_app(&self, name: &str, stack: &str) -> Result<App, StoreError>;
    async fn app(&self, name: &str) -> Result<App, StoreError>;
    async fn apps(&self) -> Result<Vec<App>, StoreError>;
    /// The apps with these ids (unknown ids skipped), by name.
    async fn apps_of(&self, ids: &[Uuid]) -> Result<Vec<App>, StoreError>;
    /// Deletes the app with its builds, releases, slugs' rows, formation and dyno rows.
    async fn delete_app(&self, name: &str) -> Result<App, StoreError>;

    /// Enables or disables a feature of the app.
    async fn set_feature(&self, app: &str, feature: &str, enabled: bool)
        -> Result<App, StoreError>;

    /// The buildpacks the app is set to build with, in order (empty: none set).
    async fn buildpacks(&self, app: &str) -> Result<Vec<String>, StoreError>;
    /// Replaces the app's buildpacks (empty clears them); returns them as stored.
    async fn set_buildpacks(&self, app: &str, urls: &[String]) -> Result<Vec<String>, StoreError>;

    /// Sets the app's boot and stop timeouts (seconds; `None`: the defaults).
    async fn set_timeouts(
        &self,
        app: &str,
        boot: Option<u32>,
        stop: Option<u32>,
    ) -> Result<App, StoreError>;

    /// Puts the app to sleep or wakes it.
    async fn set_sleeping(&self, app: &str, sleeping: bool) -> Result<App, StoreError>;

    /// Turns the app's maintenance mode on or off.
    async fn set_maintenance(&self, app: &str, on: bool) -> Result<App, StoreError>;

    /// Turns the app's automated certificates (`certs:auto:enable`) on or off.
    async fn set_acm(&self, app: &str, on: bool) -> Result<App, StoreError>;

    /// The credentials of the cluster's ACME account on `directory`, if it has one. Secret.
    async fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError>;
    /// Keeps the credentials of the account just registered on `directory` (replacing any).
    async fn save_acme_account(&self, directory: &str, credentials: &str)
        -> Result<(), StoreError>;

    /// Adds a custom domain (lowercase, already validated) to the app; a name another app
    /// has is refused.
    async fn add_domain(&self, app: &str, hostname: &str) -> Result<Domain, StoreError>;
    async fn remove_domain(&self, app: &str, hostname: &str) -> Result<Domain, StoreError>;
    /// One app's custom domains, or every app's.
    async fn domains(&self, app: Option<&str>) -> Result<Vec<Domain>, StoreError>;

    /// Inserts the certificate, or replaces the one with its id (a renewal, a new default).
    async fn save_cert(&self, cert: &Cert) -> Result<(), StoreError>;
    /// Removes one of the app's certificates.
    async fn remove_cert(&self, app: &str, id: Uuid) -> Result<Cert, StoreError>;
    /// One app's certificates, or every certificate (the default one included), oldest first.
    async fn certs(&self, app: Option<&str>) -> Result<Vec<Cert>, StoreError>;

    /// Adds a drain to the app's.
    async fn add_drain(&self, app: &str, url: &str, token: &str) -> Result<LogDrain, StoreError>;
    /// Removes a drain named by its id or its URL.
    async fn remove_drain(&self, app: &str, id_or_url: &str) -> Result<LogDrain, StoreError>;
    /// One app's drains, or every app's.
    async fn drains(&self, app: Option<&str>) -> Result<Vec<LogDrain>, StoreError>;

    /// Applies `changes` (`None` removes a key) to the app's config; if the app has a current
    /// release, appends a release of the same slug with the new config and `description`.
    async fn update_config(
        &self,
        app: &str,
        changes: &BTreeMap<String, Option<String>>,
        description: &str,
        user: &str,
    ) -> Result<(App, Option<Release>), StoreError>;

    async fn slug(&self, id: Uuid) -> Result<Slug, StoreError>;

    /// Creates a pipeline, with its first app coupled at `first`'s stage if given (both or
    /// neither).
    async fn create_pipeline(
        &self,
        name: &str,
        first: Option<(&str, Stage)>,
    ) -> Result<(Pipeline, Option<Coupling>), StoreError>;
    /// A pipeline by its id or its name.
    async fn pipeline(&self, id_or_name: &str) -> Result<Pipeline, StoreError>;
    async fn pipelines(&self) -> Result<Vec<Pipeline>, StoreError>;
    /// Deletes a pipeline and its couplings; its apps stay.
    async fn delete_pipeline(&self, id_or_name: &str) -> Result<Pipeline, StoreError>;
    /// Puts an app at a stage of a pipeline; an app already in a pipeline is refused.
    async fn couple(&self, pipeline: &str, app: &str, stage: Stage)
        -> Result<Coupling, StoreError>;
    /// Takes an app out of its pipeline.
    async fn uncouple(&self, app: &str) -> Result<Coupling, StoreError>;
    /// One pipeline's couplings (by app name), or every pipeline's.
    async fn couplings(&self, pipeline: Option<&str>) -> Result<Vec<Coupling>, StoreError>;
    /// Applies `changes` (`None` removes a key) to the config review apps start with.
    async fn set_review_config(
        &self,
        pipeline: &str,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Pipeline, StoreError>;
    /// Creates a review app of a pipeline at once: the app (with its config vars and
    /// buildpacks), coupled at stage review, remembered with its branch and expiry.
    async fn create_review_app(
        &self,
        new: &NewReviewApp<'_>,
    ) -> Result<(App, ReviewApp), StoreError>;
    /// One pipeline's review apps, or every pipeline's, oldest first.
    async fn review_apps(&self, pipeline: Option<&str>) -> Result<Vec<ReviewApp>, StoreError>;
    /// Appends to each target's ledger a release of `source`'s current slug with the
    /// target's own config ("Promote SOURCE vN"), at once; the targets are the named ones
    /// or, when none are, the apps of the next stage (see [`crate::pipelines::plan_promotion`]).
    /// `pipeline`, if named, must be the source's.
    async fn promote(
        &self,
        pipeline: Option<&str>,
        source: &str,
        targets: &[String],
        user: &str,
    ) -> Result<Promoted, StoreError>;

    /// Every blob the store refers to and still needs: the slugs of every app's releases
    /// and builds, the sources of builds still pending, the apps' git bundles and the
    /// add-ons' backups. The blob collection keeps these.
    async fn blobs_in_use(&self) -> Result<std::collections::BTreeSet<String>, StoreError>;

    /// The digest of the newest bundle of the app's git repository, if a push made one.
    async fn git_bundle(&self, app: Uuid) -> Result<Option<String>, StoreError>;
    /// Records the newest bundle of the app's git repository.
    async fn set_git_bundle(&self, app: Uuid, sha256: &str) -> Result<(), StoreError>;

    async fn create_build(&self, build: &Build) -> Result<(), StoreError>;
    async fn build(&self, id: Uuid) -> Result<Build, StoreError>;
    async fn builds(&self, app: &str) -> Result<Vec<Build>, StoreError>;
    /// Records where a build runs.
    async fn set_build_host(&self, id: Uuid, host_id: &str) -> Result<(), StoreError>;
    /// Ends a build: on success stores the slug and appends its release, all at once.
    async fn finish_build(
        &self,
        id: Uuid,
        outcome: BuildOutcome,
        user: &str,
    ) -> Result<(Build, Option<Release>), StoreError>;

    /// The ledger, oldest first.
    async fn releases(&self, app: &str) -> Result<Vec<Release>, StoreError>;
    async fn release(&self, app: &str, version: u32) -> Result<Release, StoreError>;
    /// Ends a pending release's release phase: `succeeded` makes it live (the newest
    /// succeeded release is the current one), `failed` leaves the current one serving. The
    /// one update the ledger allows; `None` when the release was not pending.
    async fn finish_release(
        &self,
        app_id: Uuid,
        version: u32,
        status: ReleaseStatus,
    ) -> Result<Option<Release>, StoreError>;
    /// Every app's releases still in their release phase.
    async fn pending_releases(&self) -> Result<Vec<Release>, StoreError>;
    /// The newest succeeded release.
    async fn current_release(&self, app: &str) -> Result<Option<Release>, StoreError>;
    /// Appends a release copying `version`'s slug and config ("Rollback to vN") and makes
    /// that config the app's.
    async fn rollback(&self, app: &str, version: u32, user: &str) -> Result<Release, StoreError>;

    async fn formation(&self, app: &str) -> Result<Vec<Formation>, StoreError>;
    /// What every app wants (`only`: just these apps'), ordered by name: its row, formation,
    /// current release and that release's slug, from one snapshot in a few set queries (the
    /// reconciler's read, whatever the number of apps).
    async fn desired(
        &self,
        only: Option<&[Uuid]>,
    ) -> Result<Vec<crate::reconciler::AppDesired>, StoreError>;
    /// Upserts each update (a new type starts at quantity 0, size `standard-1x`).
    async fn update_formation(
        &self,
        app: &str,
        updates: &[FormationUpdate],
    ) -> Result<Vec<Formation>, StoreError>;

    /// One app's dynos, or every dyno of the cluster.
    async fn dynos(&self, app: Option<&str>) -> Result<Vec<Dyno>, StoreError>;
    /// How many dynos are in each observed state, counted by the store: `/metrics` is
    /// scraped every few seconds and must not read a million dynos to count them.
    async fn dyno_counts(&self) -> Result<Vec<(DynoState, u64)>, StoreError>;
    /// The dynos placed on these hosts, each host's in the order of [`Store::dynos`].
    async fn dynos_on_hosts(&self, hosts: &[String]) -> Result<Vec<Dyno>, StoreError>;
    /// The dynos of these apps, in the order of [`Store::dynos`].
    async fn dynos_of_apps(&self, apps: &[Uuid]) -> Result<Vec<Dyno>, StoreError>;
    /// Applies placement decisions at once and bumps the generation of every host whose set
    /// of running dynos changed; returns those hosts' new generations.
    async fn apply_dyno_changes(
        &self,
        changes: &DynoChanges,
    ) -> Result<BTreeMap<String, u64>, StoreError>;
    /// Records `host`'s agent's report about one of its dynos. A report about a dyno placed
    /// on another host changes nothing: an agent speaks for its own host only. Nor does a
    /// report whose state cannot follow the stored one: it is older than what is stored.
    async fn report_dyno(&self, host: &str, report: &DynoReport) -> Result<Reported, StoreError> {
        let mut reported = self
            .report_dynos(&[(host.to_owned(), report.clone())])
            .await?;
        Ok(reported.pop().unwrap_or(Reported::Unknown))
    }
    /// [`Store::report_dyno`] for several reports (each host's about its own dynos), in
    /// order, in one transaction: what agents report in the same moment costs one commit.
    async fn report_dynos(
        &self,
        reports: &[(String, DynoReport)],
    ) -> Result<Vec<Reported>, StoreError>;

    /// Records agents' `Hello`s, all in one transaction: inserts each host or updates its
    /// address, capacity, stacks and `last_seen`, keeping its generation and draining flag.
    /// Returns the hosts as stored, in the order given (a host named twice: as last said).
    async fn upsert_hosts(
        &self,
        hosts: &[HostHello<'_>],
        seen: OffsetDateTime,
    ) -> Result<Vec<Host>, StoreError>;
    async fn hosts(&self) -> Result<Vec<Host>, StoreError>;
    async fn set_draining(&self, id: &str, draining: bool) -> Result<Host, StoreError>;
}
