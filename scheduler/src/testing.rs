//! An in-process scheduler for tests that need neither root nor containers: a [`Core`] on
//! a `SqlStore` on SQLite in a temp dir, the REST API called in process, and fake agents that talk
//! to it the way the AgentLink hub does, through channels.
//!
//! ```text
//! test ──api()──▶ axum Router ──▶ Core ──reconcile()──▶ Cluster ──link channel──▶ FakeAgent
//!                                  ▲                                                 │
//!                                  └──── hub::connect / hub::agent_message ◀── report(…)
//! ```
//!
//! Nothing runs in the background: a test calls [`Core::reconcile`] where the reconcile
//! loop would run (the loop is level-triggered, so running it by hand changes no outcome),
//! which keeps every test deterministic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use manifold_proto::{
    agent_message, scheduler_message, AgentMessage, Assignment, Assignments, Capacity,
    DynoState as WireState, DynoStatus, Heartbeat, Hello, SchedulerMessage, Service, ServiceState,
    ServiceStatus,
};
use manifold_router::AppRoute;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::blobs::{Blobs, LocalBlobs};
use crate::core::{Core, Settings};
use crate::model::{Build, BuildStatus, Slug};
use crate::reconciler::Cycling;
use crate::store::sql::{Database, SqlStore};
use crate::store::BuildOutcome;

pub(crate) const API_TOKEN: &str = "api-token";
pub(crate) const AGENT_TOKEN: &str = "agent-token";
/// The stack every fake host has and every test slug is built for.
pub(crate) const STACK: &str = "heroku-24";

/// A scheduler in a temp dir.
pub(crate) struct Harness {
    pub(crate) core: Arc<Core>,
    dir: tempfile::TempDir,
}

/// Settings for tests: a heartbeat deadline of `heartbeat` (short where a test loses a
/// host), no sleeping, daily cycling.
pub(crate) fn settings(heartbeat: Duration) -> Settings {
    Settings {
        heartbeat_deadline: heartbeat,
        cycling: Cycling::daily(),
        reconcile_interval: Duration::from_secs(3600),
        upload_limit: 1 << 20,
        slug_limit: 1 << 20,
        api_token: API_TOKEN.into(),
        agent_token: AGENT_TOKEN.into(),
        follower_token: "follower-token".into(),
        agent_certs: false,
        router: Default::default(),
        plex: Default::default(),
        sleep_after: None,
        run: Default::default(),
        api: Default::default(),
        default_cert: Default::default(),
        acme: None,
    }
}

impl Harness {
    pub(crate) async fn new(settings: Settings) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = Arc::new(LocalBlobs::new(dir.path().join("blobs")));
        Harness::in_dir(dir, settings, blobs).await
    }

    /// A scheduler whose blobs are in `blobs`.
    pub(crate) async fn with_blobs(settings: Settings, blobs: Arc<dyn Blobs>) -> Harness {
        Harness::in_dir(tempfile::tempdir().expect("temp dir"), settings, blobs).await
    }

    async fn in_dir(dir: tempfile::TempDir, settings: Settings, blobs: Arc<dyn Blobs>) -> Harness {
        let store = SqlStore::open(&Database::Sqlite(dir.path().join("manifold.db")))
            .await
            .expect("store");
        let core = Core::new(
            Arc::new(store),
            blobs,
            settings,
            Arc::new(crate::leadership::Leadership::sole(1)),
        );
        Harness { core, dir }
    }

    /// Calls the REST API as a user would (with the API token); the status and JSON body.
    pub(crate) async fn api(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, bytes) = self
            .raw(
                method,
                path,
                API_TOKEN,
                "application/json",
                Body::from(body.to_string()),
            )
            .await;
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    /// Calls the API with `token` and any body; the status, headers and body.
    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: Body,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut router = crate::api::router(self.core.clone());
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", content_type)
            .body(body)
            .expect("request");
        let response = tower_service::Service::call(&mut router, request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, parts.headers, bytes)
    }

    /// Creates `app` with a release of a slug whose Procfile has `process_types`, as a
    /// build would have made it (the build itself is not what these tests are about).
    pub(crate) async fn deployed(&self, app: &str, process_types: &[(&str, &str)]) {
        let store = &self.core.store;
        let app = store.create_app(app, STACK).await.expect("app");
        let now = OffsetDateTime::now_utc();
        let build = Build {
            id: Uuid::new_v4(),
            app_id: app.id,
            status: BuildStatus::Pending,
            source_sha256: "cd".repeat(32),
            slug_id: None,
            release_version: None,
            host_id: None,
            user: "ann@example.com".into(),
            created_at: now,
            updated_at: now,
        };
        store.create_build(&build).await.expect("build");
        let process_types: BTreeMap<String, String> = process_types
            .iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect();
        let slug = Slug {
            id: Uuid::new_v4(),
            app_id: app.id,
            sha256: "ab".repeat(32),
            size: 1234,
            process_types,
            stack: STACK.into(),
            buildpacks: vec!["heroku/python".into()],
            created_at: now,
        };
        store
            .finish_build(
                build.id,
                BuildOutcome::Succeeded {
                    slug,
                    description: "Deploy cdcdcdcd".into(),
                },
                "ann@example.com",
            )
            .await
            .expect("release");
        // As a build gone live does: the reconciler looks at everything next.
        self.core.poke();
    }

    /// Connects a fake agent for `host` (reachable at 127.0.0.1) that runs nothing yet.
    pub(crate) async fn agent(&self, host: &str) -> FakeAgent {
        self.agent_with(host, "127.0.0.1", &[STACK], Vec::new())
            .await
    }

    /// Connects a fake agent for `host` at `address` with `stacks`, which says in its
    /// `Hello` that it runs `services`.
    pub(crate) async fn agent_with(
        &self,
        host: &str,
        address: &str,
        stacks: &[&str],
        services: Vec<ServiceStatus>,
    ) -> FakeAgent {
        let hello = Hello {
            host_id: host.into(),
            address: address.into(),
            capacity: Some(Capacity {
                memory_bytes: 16 << 30,
                dyno_slots: 64,
            }),
            stacks: stacks.iter().map(|s| s.to_string()).collect(),
            dynos: Vec::new(),
            generation: 0,
            services,
        };
        self.hello(hello).await
    }

    /// Connects a fake agent for `host` whose `Hello` says it runs `dynos` (ids), all up
    /// (as an agent that kept its dynos through a scheduler restart says).
    pub(crate) async fn agent_running(&self, host: &str, dynos: &[String]) -> FakeAgent {
        let mut hello = Hello {
            host_id: host.into(),
            address: "127.0.0.1".into(),
            capacity: Some(Capacity {
                memory_bytes: 16 << 30,
                dyno_slots: 64,
            }),
            stacks: vec![STACK.to_string()],
            ..Hello::default()
        };
        hello.dynos = dynos
            .iter()
            .map(|id| DynoStatus {
                id: id.clone(),
                state: WireState::Up.into(),
                changed_at_ms: OffsetDateTime::now_utc().unix_timestamp() * 1000,
                exit_status: None,
                reason: String::new(),
                port: 30001,
            })
            .collect();
        self.hello(hello).await
    }

    async fn hello(&self, hello: Hello) -> FakeAgent {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = hello.host_id.clone();
        let serial = crate::hub::connect(&self.core, hello, tx)
            .await
            .expect("hello");
        FakeAgent {
            host,
            core: self.core.clone(),
            rx,
            serial,
            assigned: Vec::new(),
            last: None,
        }
    }

    /// The scheduler restarted: a new process (a new [`Core`]) on the same database and
    /// blobs, which knows nothing of the agents until they say `Hello` again.
    pub(crate) async fn restarted(self) -> Harness {
        let settings = self.core.settings.clone();
        let blobs = self.core.blobs.clone();
        Harness::in_dir(self.dir, settings, blobs).await
    }

    /// The route the router has for `app` now.
    pub(crate) fn route(&self, app: &str) -> Option<AppRoute> {
        self.core.routing.published().routes.remove(app)
    }
}

/// An agent that runs nothing: it keeps what it was last assigned and reports what a test
/// tells it to, over the same calls the hub makes for a real agent's link.
pub(crate) struct FakeAgent {
    pub(crate) host: String,
    core: Arc<Core>,
    rx: mpsc::UnboundedReceiver<Result<SchedulerMessage, tonic::Status>>,
    serial: u64,
    /// The dynos of the last assignment set received.
    assigned: Vec<Assignment>,
    /// The last assignment set received, whole.
    last: Option<Assignments>,
}

impl FakeAgent {
    /// Reads what the scheduler sent so far; the dynos it is to run now.
    pub(crate) fn assigned(&mut self) -> &[Assignment] {
        while let Ok(message) = self.rx.try_recv() {
            if let Ok(SchedulerMessage {
                kind: Some(scheduler_message::Kind::Assignments(set)),
            }) = message
            {
                self.assigned = set.dynos.clone();
                self.last = Some(set);
            }
        }
        &self.assigned
    }

    /// The last assignment set received, whole (`None`: none yet).
    pub(crate) fn last_set(&mut self) -> Option<&Assignments> {
        self.assigned();
        self.last.as_ref()
    }

    /// The add-on services of the last set received.
    pub(crate) fn services(&mut self) -> Vec<Service> {
        self.last_set()
            .map(|s| s.services.clone())
            .unwrap_or_default()
    }

    /// Reports an add-on service's state (and the port it took).
    pub(crate) async fn report_service(&self, id: &str, state: ServiceState, port: u32) {
        let status = ServiceStatus {
            id: id.into(),
            state: state.into(),
            changed_at_ms: OffsetDateTime::now_utc().unix_timestamp() * 1000,
            reason: String::new(),
            port,
        };
        self.send(agent_message::Kind::Service(status)).await;
    }

    /// The id of the assigned dyno named `name`.
    pub(crate) fn id_of(&mut self, name: &str) -> String {
        self.assigned()
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.id.clone())
            .unwrap_or_else(|| panic!("{name} is not assigned to {}", self.host))
    }

    /// Reports a dyno's state (and, when up, the host port its `$PORT` is published on).
    pub(crate) async fn report(&self, id: &str, state: WireState, port: u32) {
        let status = DynoStatus {
            id: id.into(),
            state: state.into(),
            changed_at_ms: OffsetDateTime::now_utc().unix_timestamp() * 1000,
            exit_status: None,
            reason: String::new(),
            port,
        };
        self.send(agent_message::Kind::Dyno(status)).await;
    }

    /// Says it is alive.
    pub(crate) async fn heartbeat(&self) {
        self.send(agent_message::Kind::Heartbeat(Heartbeat { generation: 0 }))
            .await;
    }

    async fn send(&self, kind: agent_message::Kind) {
        crate::hub::agent_message(&self.core, &self.host, AgentMessage { kind: Some(kind) })
            .await
            .expect("agent message");
    }

    /// The link ends (the agent's host went away).
    pub(crate) async fn disconnect(self) {
        self.core.agent_disconnected(&self.host, self.serial).await;
    }
}
