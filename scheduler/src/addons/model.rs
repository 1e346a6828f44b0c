//! What the store keeps of add-ons: the add-on (a service on one host), its attachments to
//! apps, and its backups.
//!
//! An add-on's life, as `state` records it:
//!
//! ```text
//! create ──▶ provisioning ──UP with a port──▶ available ◀──UP── crashed
//!                 │                              │    ──CRASHED/STOPPED, host lost──▶ crashed
//!                 └──────── destroy ─────────────┴──▶ destroying ──DESTROYED──▶ (rows deleted)
//! ```

use time::OffsetDateTime;
use uuid::Uuid;

/// What an add-on runs. Its plan names (`postgresql`, `heroku-postgresql`) map to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddonKind {
    Postgresql,
    Redis,
}

/// The plan names `addons:create` accepts, with their kind.
pub const PLANS: [(&str, AddonKind); 4] = [
    ("postgresql", AddonKind::Postgresql),
    ("heroku-postgresql", AddonKind::Postgresql),
    ("redis", AddonKind::Redis),
    ("heroku-redis", AddonKind::Redis),
];

impl AddonKind {
    /// As the store and the wire (`Service.kind`) name it.
    pub fn as_str(self) -> &'static str {
        match self {
            AddonKind::Postgresql => "postgresql",
            AddonKind::Redis => "redis",
        }
    }

    pub fn parse(text: &str) -> Option<AddonKind> {
        [AddonKind::Postgresql, AddonKind::Redis]
            .into_iter()
            .find(|k| k.as_str() == text)
    }

    /// The kind a plan name asks for.
    pub fn of_plan(plan: &str) -> Option<AddonKind> {
        PLANS.iter().find(|(p, _)| *p == plan).map(|(_, k)| *k)
    }

    /// Heroku's add-on service name (`addon_service.name`).
    pub fn service(self) -> &'static str {
        match self {
            AddonKind::Postgresql => "heroku-postgresql",
            AddonKind::Redis => "heroku-redis",
        }
    }

    /// The attachment name when none is given: its config var is `DATABASE_URL` or
    /// `REDIS_URL`, as on Heroku.
    pub fn default_attachment(self) -> &'static str {
        match self {
            AddonKind::Postgresql => "DATABASE",
            AddonKind::Redis => "REDIS",
        }
    }

    /// The URL an app is given for an add-on at `address:port`.
    pub fn url(
        self,
        user: &str,
        password: &str,
        address: &str,
        port: u16,
        database: &str,
    ) -> String {
        match self {
            AddonKind::Postgresql => {
                format!("postgres://{user}:{password}@{address}:{port}/{database}")
            }
            AddonKind::Redis => format!("redis://:{password}@{address}:{port}"),
        }
    }
}

/// Where an add-on is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddonState {
    Provisioning,
    Available,
    Crashed,
    Destroying,
}

impl AddonState {
    pub fn as_str(self) -> &'static str {
        match self {
            AddonState::Provisioning => "provisioning",
            AddonState::Available => "available",
            AddonState::Crashed => "crashed",
            AddonState::Destroying => "destroying",
        }
    }

    pub fn parse(text: &str) -> Option<AddonState> {
        [
            AddonState::Provisioning,
            AddonState::Available,
            AddonState::Crashed,
            AddonState::Destroying,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One add-on: a service on `host_id`, reachable once its port is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Addon {
    pub id: Uuid,
    /// `postgresql-curved-12345`: unique in the cluster.
    pub name: String,
    pub kind: AddonKind,
    /// The plan name as given (`heroku-postgresql`).
    pub plan: String,
    /// The owning app; `None` once it was deleted while the add-on is destroyed.
    pub app_id: Option<Uuid>,
    pub app: Option<String>,
    /// Where it runs, for life: its volume is there.
    pub host_id: String,
    /// The host port its agent took (and reported); `None` until then.
    pub port: Option<u16>,
    pub user: String,
    /// Secret: only in the apps' config vars and the agent's `Service.env`.
    pub password: String,
    pub database: String,
    pub state: AddonState,
    /// Why it is crashed, when it is.
    pub reason: String,
    pub created_at: OffsetDateTime,
}

impl Addon {
    /// The URL attached apps get, once the add-on's port is known; `address` is its host's.
    pub fn url(&self, address: &str) -> Option<String> {
        let port = self.port?;
        Some(
            self.kind
                .url(&self.user, &self.password, address, port, &self.database),
        )
    }
}

/// An add-on attached to an app as `name`: the app has the config var `{name}_URL`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub id: Uuid,
    pub addon_id: Uuid,
    pub addon: String,
    pub app_id: Uuid,
    pub app: String,
    pub name: String,
    pub created_at: OffsetDateTime,
}

impl Attachment {
    /// The config var it sets on its app.
    pub fn config_var(&self) -> String {
        format!("{}_URL", self.name)
    }
}

/// How a backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupState {
    Completed,
    Failed,
}

impl BackupState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Completed => "completed",
            BackupState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<BackupState> {
        [BackupState::Completed, BackupState::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A `pg_dump -Fc` of a PostgreSQL add-on, in the blob store.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub id: Uuid,
    pub addon_id: Uuid,
    /// `b001` is 1: numbered within its add-on.
    pub number: u32,
    /// The dump's blob; `None` for a failed capture.
    pub blob_sha256: Option<String>,
    pub size: u64,
    pub state: BackupState,
    pub reason: String,
    pub created_at: OffsetDateTime,
}

impl Backup {
    /// `b001`, as Heroku names backups.
    pub fn name(&self) -> String {
        format!("b{:03}", self.number)
    }
}
