//! Two scheduler replicas on one PostgreSQL database, each serving its API and AgentLink
//! on a real socket and campaigning for the lease: one leads, the other serves reads and
//! names the leader for everything else; when the leader dies (no resignation) the other
//! takes over, and the dead one's store can no longer write. As root (PostgreSQL).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use manifold_proto::agent_link_client::AgentLinkClient;
use manifold_proto::{agent_message, AgentMessage, Hello};
use manifold_scheduler::core::{Core, Settings};
use manifold_scheduler::leadership::{campaign_forever, Candidate, Leadership, LEADER_HEADER};
use manifold_scheduler::reconciler::Cycling;
use manifold_scheduler::server::RouterListeners;
use manifold_scheduler::store::sql::{Database, SqlStore};
use manifold_scheduler::store::{Store, StoreError};
use manifold_test_support::postgres::Postgres;
use serde_json::{json, Value};

const TOKEN: &str = "api-token";
const AGENT_TOKEN: &str = "agent-token";
/// Short, so the takeover is quick; the campaign interval is a third of it.
const TTL: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        heartbeat_deadline: Duration::from_secs(5),
        cycling: Cycling::daily(),
        reconcile_interval: Duration::from_secs(1),
        upload_limit: 1 << 20,
        slug_limit: 1 << 20,
        api_token: TOKEN.into(),
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

/// One replica: its store, its API's URL, and the tasks that are its process.
struct Replica {
    store: Arc<dyn Store>,
    url: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replica {
    async fn start(database: &Database, dir: &std::path::Path) -> Replica {
        let store: Arc<dyn Store> = Arc::new(SqlStore::open(database).await.unwrap());
        let leadership = Arc::new(Leadership::follower(TTL));
        let blobs = manifold_scheduler::blobs::open(database, dir)
            .await
            .unwrap();
        let core = Core::new(store.clone(), blobs, settings(), leadership.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let candidate = Candidate::new(url.clone(), TTL);
        let campaign = tokio::spawn(campaign_forever(
            store.clone(),
            leadership,
            candidate,
            std::future::pending(),
        ));
        let server = tokio::spawn(async move {
            manifold_scheduler::server::run(
                core,
                listener,
                RouterListeners::default(),
                std::future::pending(),
            )
            .await
            .unwrap();
        });
        Replica {
            store,
            url,
            tasks: vec![campaign, server],
        }
    }

    /// Dies as a SIGKILLed process does: no resignation, no goodbye to anyone.
    fn kill(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn role(&self) -> Value {
        self.call(reqwest::Method::GET, "/leadership", Value::Null)
            .await
            .json()
            .await
            .unwrap()
    }
}

/// Waits until one of `replicas` leads; its index.
async fn leader(replicas: &[&Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, r) in replicas.iter().enumerate() {
            if r.role().await["role"] == "leader" {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no replica leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Links to `replica`'s AgentLink as an agent would; the refusal, if any.
async fn link(replica: &Replica) -> Option<tonic::Status> {
    let mut client = AgentLinkClient::connect(replica.url.clone()).await.unwrap();
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            host_id: "h1".into(),
            address: "127.0.0.1".into(),
            capacity: Some(manifold_proto::Capacity {
                memory_bytes: 0,
                dyno_slots: 0,
            }),
            stacks: Vec::new(),
            dynos: Vec::new(),
            generation: 0,
            services: Vec::new(),
        })),
    };
    let mut request = tonic::Request::new(futures::stream::iter([hello]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
    );
    client.link(request).await.err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_leads_the_other_names_it_and_takes_over_when_it_dies() {
    let Some(postgres) = Postgres::start("one_replica_leads_the_other_names_it") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = Database::Postgres(postgres.url());
    let mut a = Replica::start(&database, dir.path()).await;
    let mut b = Replica::start(&database, dir.path()).await;
    let (leading, following) = match leader(&[&a, &b]).await {
        0 => (&mut a, &mut b),
        _ => (&mut b, &mut a),
    };

    // The leader takes writes; the follower serves reads of what it wrote.
    let created = leading
        .call(reqwest::Method::POST, "/apps", json!({"name": "one"}))
        .await;
    assert_eq!(created.status(), 201, "{:?}", created.text().await);
    let read = following
        .call(reqwest::Method::GET, "/apps/one", Value::Null)
        .await;
    assert_eq!(read.status(), 200);
    let role = following.role().await;
    assert_eq!(role["role"], "follower");
    assert_eq!(role["leader"], leading.url.as_str());

    // A write to the follower is refused, naming the leader; nothing is written.
    let refused = following
        .call(reqwest::Method::POST, "/apps", json!({"name": "two"}))
        .await;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers()[LEADER_HEADER].to_str().unwrap(),
        leading.url
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["id"], "not_leader");
    assert!(body["message"].as_str().unwrap().contains(&leading.url));
    // So are what only the leader holds, although they read: hosts' links, log streams.
    for path in ["/hosts", "/apps/one/log-stream"] {
        let res = following
            .call(reqwest::Method::GET, path, Value::Null)
            .await;
        assert_eq!(res.status(), 503, "{path}");
    }
    assert!(following.store.app("two").await.is_err());

    // An agent is refused by the follower, with the leader's URL, and linked by the leader.
    let status = link(following).await.expect("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get(LEADER_HEADER)
            .unwrap()
            .to_str()
            .unwrap(),
        leading.url
    );
    assert!(link(leading).await.is_none(), "the leader links agents");

    // Blobs are shared: a slug an agent stored through the leader, the follower serves.
    let slug = b"a slug, as an agent uploads it".to_vec();
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&slug)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let blob = |r: &Replica, method| {
        reqwest::Client::new()
            .request(method, format!("{}/agent/v1/blobs/{sha}", r.url))
            .bearer_auth(AGENT_TOKEN)
    };
    let put = blob(leading, reqwest::Method::PUT)
        .body(slug.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let got = blob(following, reqwest::Method::GET).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), slug);

    // The leader dies without a word: the follower leads within the lease and a round.
    let died = Instant::now();
    leading.kill();
    let deadline = died + Duration::from_secs(30);
    loop {
        let res = following
            .call(reqwest::Method::POST, "/apps", json!({"name": "three"}))
            .await;
        if res.status() == 201 {
            break;
        }
        assert_eq!(res.status(), 503, "{:?}", res.text().await);
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = died.elapsed();
    assert!(
        took >= TTL / 2,
        "taken over in {took:?}: before the dead leader's lease could have run out"
    );
    assert_eq!(following.role().await["role"], "leader");

    // The dead leader's store, had the process only paused, can write nothing any more.
    match leading.store.create_app("four", "heroku-24").await {
        Err(StoreError::Fenced { .. }) => {}
        other => panic!("a deposed leader wrote: {other:?}"),
    }
    let names: Vec<String> = following
        .store
        .apps()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["one", "three"]);
    following.kill();
}
