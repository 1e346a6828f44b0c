//! The store on SQLite and on PostgreSQL side by side, in one run (the machine is noisy):
//! the REST API's latency for what users do most (a config change, a scale, a release as
//! a deploy ends it) and one reconciler pass over a cluster of 100,000 dynos.
//!
//! `cargo bench -p manifold-scheduler --bench store [-- DYNOS]`, as root (it starts its own
//! PostgreSQL). Prints medians and ratios; BENCHMARKS.md has the figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use manifold_scheduler::blobs::Blobs;
use manifold_scheduler::core::{Core, Settings};
use manifold_scheduler::leadership::Leadership;
use manifold_scheduler::model::{App, Build, BuildStatus, Dyno, FormationUpdate, Slug};
use manifold_scheduler::reconciler::Cycling;
use manifold_scheduler::server::RouterListeners;
use manifold_scheduler::store::sql::{Database, SqlStore};
use manifold_scheduler::store::{BuildOutcome, DynoChanges, HostHello, Store};
use manifold_test_support::postgres::Postgres;
use time::OffsetDateTime;
use uuid::Uuid;

const TOKEN: &str = "bench-token";
const STACK: &str = "heroku-24";
/// Requests of each kind timed per store.
const REQUESTS: usize = 60;
/// Reconciler passes timed per store.
const PASSES: usize = 5;
const DYNOS_PER_APP: usize = 100;
const HOSTS: usize = 1000;

fn settings() -> Settings {
    Settings {
        // The bench's hosts never link: a day keeps them `missing`, not lost, so the
        // reconciler's pass plans nothing and times the reading and planning alone.
        heartbeat_deadline: Duration::from_secs(86_400),
        cycling: Cycling::daily(),
        reconcile_interval: Duration::from_secs(86_400),
        upload_limit: 1 << 20,
        slug_limit: 1 << 20,
        api_token: TOKEN.into(),
        agent_token: "agent".into(),
        follower_token: "follower".into(),
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

/// The median and the 95th percentile of `samples`, in milliseconds.
fn summary(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = (samples.len() * 95).div_ceil(100).saturating_sub(1);
    (ms(samples[samples.len() / 2]), ms(samples[p95]))
}

/// A deployed app (its release v1 of a slug with `web` and `worker`), as a build leaves it.
async fn deploy(store: &dyn Store, name: &str) -> App {
    let app = store.create_app(name, STACK).await.expect("create app");
    let now = OffsetDateTime::now_utc();
    let build = Build {
        id: Uuid::new_v4(),
        app_id: app.id,
        status: BuildStatus::Pending,
        source_sha256: "0".repeat(64),
        slug_id: None,
        release_version: None,
        host_id: None,
        user: "bench".into(),
        created_at: now,
        updated_at: now,
    };
    store.create_build(&build).await.expect("build");
    let slug = Slug {
        id: Uuid::new_v4(),
        app_id: app.id,
        sha256: "1".repeat(64),
        size: 1,
        process_types: BTreeMap::from([
            ("web".to_owned(), "serve".to_owned()),
            ("worker".to_owned(), "work".to_owned()),
        ]),
        stack: STACK.into(),
        buildpacks: Vec::new(),
        created_at: now,
    };
    store
        .finish_build(
            build.id,
            BuildOutcome::Succeeded {
                slug,
                description: "Deploy".into(),
            },
            "bench",
        )
        .await
        .expect("finish build");
    store.app(name).await.expect("app")
}

async fn add_hosts(store: &dyn Store, n: usize) {
    for i in 0..n {
        let (id, address) = (format!("h{i}"), format!("10.0.{}.{}", i / 250, i % 250 + 1));
        let stacks = [STACK.to_owned()];
        let hello = HostHello {
            id: &id,
            address: &address,
            memory_bytes: 1 << 40,
            dyno_slots: 1000,
            stacks: &stacks,
        };
        store
            .upsert_hosts(&[hello], OffsetDateTime::now_utc())
            .await
            .expect("host");
    }
}

/// Times the API's writes on a scheduler serving `store`: (kind, median ms, p95 ms).
async fn api_latency(
    store: Arc<dyn Store>,
    blobs: Arc<dyn Blobs>,
) -> Vec<(&'static str, f64, f64)> {
    add_hosts(&*store, 1).await;
    deploy(&*store, "bench").await;
    let core = Core::new(store, blobs, settings(), Arc::new(Leadership::sole(1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(manifold_scheduler::server::run(
        core,
        listener,
        RouterListeners::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    // A host whose agent is linked, so that a scale has room to place a dyno.
    let agent = tokio::spawn(link_agent(base.clone(), "h0"));
    let client = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        client
            .request(method, format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let mut out = Vec::new();
    let mut timed = |kind, samples: &mut Vec<Duration>| {
        let (median, p95) = summary(samples);
        out.push((kind, median, p95));
    };
    let mut samples = Vec::new();
    for i in 0..REQUESTS {
        let started = Instant::now();
        let res = call(
            reqwest::Method::PATCH,
            "/apps/bench/config-vars",
            serde_json::json!({ format!("KEY_{i}"): "value" }),
        )
        .await
        .expect("config");
        assert!(res.status().is_success(), "config: {}", res.status());
        samples.push(started.elapsed());
    }
    timed("config:set (a release)", &mut samples);
    let mut samples = Vec::new();
    for i in 0..REQUESTS {
        let started = Instant::now();
        let res = call(
            reqwest::Method::PATCH,
            "/apps/bench/formation",
            serde_json::json!({"updates": [{"type": "worker", "quantity": i % 2}]}),
        )
        .await
        .expect("scale");
        assert!(res.status().is_success(), "scale: {}", res.status());
        samples.push(started.elapsed());
    }
    timed("ps:scale", &mut samples);
    let mut samples = Vec::new();
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let res = call(
            reqwest::Method::POST,
            "/apps/bench/releases",
            serde_json::json!({"release": 1}),
        )
        .await
        .expect("rollback");
        assert!(res.status().is_success(), "release: {}", res.status());
        samples.push(started.elapsed());
    }
    timed("releases:rollback (a deploy's release)", &mut samples);
    agent.abort();
    let _ = stop.send(());
    server.await.expect("join").expect("server");
    out
}

/// Links to the scheduler at `base` as `host`'s agent with room for dynos, and keeps the
/// link open (ignoring its assignments) until aborted.
async fn link_agent(base: String, host: &'static str) {
    use manifold_proto::agent_link_client::AgentLinkClient;
    use manifold_proto::{agent_message, AgentMessage, Capacity, Hello};
    let mut client = AgentLinkClient::connect(base).await.expect("connect");
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host_id: host.into(),
            address: "127.0.0.1".into(),
            capacity: Some(Capacity {
                memory_bytes: 1 << 40,
                dyno_slots: 1000,
            }),
            stacks: vec![STACK.into()],
            dynos: Vec::new(),
            generation: 0,
            services: Vec::new(),
        })),
    };
    let outbound = futures::stream::iter([hello]).chain(futures::stream::pending());
    let mut request = tonic::Request::new(outbound);
    request
        .metadata_mut()
        .insert("authorization", "Bearer agent".parse().expect("header"));
    let mut inbound = client.link(request).await.expect("link").into_inner();
    while let Ok(Some(_)) = inbound.message().await {}
}

/// Fills `store` with `dynos` dynos (apps of [`DYNOS_PER_APP`] web dynos on [`HOSTS`]
/// hosts) and times reconciler passes over it: the median in ms.
async fn reconcile_pass(store: Arc<dyn Store>, blobs: Arc<dyn Blobs>, dynos: usize) -> f64 {
    add_hosts(&*store, HOSTS).await;
    let mut changes = DynoChanges::default();
    for a in 0..dynos.div_ceil(DYNOS_PER_APP) {
        let app = deploy(&*store, &format!("app{a}")).await;
        store
            .update_formation(
                &app.name,
                &[FormationUpdate {
                    process_type: "web".into(),
                    quantity: Some(u32::try_from(DYNOS_PER_APP).expect("quantity")),
                    size: None,
                }],
            )
            .await
            .expect("formation");
        for i in 1..=DYNOS_PER_APP {
            changes.create.push(Dyno::placed(
                &app,
                format!("web.{i}"),
                1,
                "standard-1x".into(),
                "serve".into(),
                format!("h{}", (a * DYNOS_PER_APP + i) % HOSTS),
                OffsetDateTime::now_utc(),
            ));
        }
    }
    store.apply_dyno_changes(&changes).await.expect("place");
    let core = Core::new(store, blobs, settings(), Arc::new(Leadership::sole(1)));
    let mut samples = Vec::new();
    for _ in 0..PASSES {
        let started = Instant::now();
        let plan = core.reconcile().await.expect("reconcile");
        samples.push(started.elapsed());
        assert!(
            plan.is_empty(),
            "the bench's cluster is as its formation wants"
        );
    }
    summary(&mut samples).0
}

fn main() {
    let dynos: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let Some(postgres) = Postgres::start("the store bench") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = [
        ("SQLite", Database::Sqlite(dir.path().join("manifold.db"))),
        ("PostgreSQL", Database::Postgres(postgres.url())),
    ];
    let mut latency = Vec::new();
    let mut passes = Vec::new();
    for (name, database) in &stores {
        let (api, pass) = runtime.block_on(async {
            let store: Arc<dyn Store> =
                Arc::new(SqlStore::open(database).await.expect("open the store"));
            let blobs = manifold_scheduler::blobs::open(database, dir.path())
                .await
                .expect("open the blob store");
            let api = api_latency(store.clone(), blobs.clone()).await;
            let pass = reconcile_pass(store, blobs, dynos).await;
            (api, pass)
        });
        latency.push((*name, api));
        passes.push((*name, pass));
    }
    println!("API latency, {REQUESTS} requests each (median / p95, ms):");
    let [(_, sqlite), (_, pg)] = &latency[..] else {
        unreachable!("two stores")
    };
    for ((kind, s_med, s_p95), (_, p_med, p_95)) in sqlite.iter().zip(pg) {
        println!(
            "  {kind:40} SQLite {s_med:7.2} / {s_p95:7.2}   PostgreSQL {p_med:7.2} / {p_95:7.2}   ratio {:.2}",
            p_med / s_med
        );
    }
    println!("one reconciler pass over {dynos} dynos on {HOSTS} hosts (median of {PASSES}, ms):");
    for (name, ms) in &passes {
        println!("  {name:10} {ms:9.1}");
    }
    println!("  ratio      {:9.2}", passes[1].1 / passes[0].1);
}
