//! Add-ons on the in-process scheduler (see [`crate::testing`]): fake agents receive the
//! services and report them up, crashed or destroyed, as the agent's code does.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use manifold_proto::ServiceState;
use serde_json::{json, Value};

use super::SERVICES_STACK;
use crate::testing::{settings, FakeAgent, Harness, STACK};

pub(super) const WEB: (&str, &str) = ("web", "python app.py");

/// A host that can run add-ons, at `address`.
pub(super) async fn services_host(h: &Harness, id: &str, address: &str) -> FakeAgent {
    h.agent_with(id, address, &[STACK, SERVICES_STACK], Vec::new())
        .await
}

pub(super) async fn create(h: &Harness, app: &str, body: Value) -> Value {
    let (status, created) = h
        .api(Method::POST, &format!("/apps/{app}/addons"), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

pub(super) async fn config(h: &Harness, app: &str) -> Value {
    let (status, config) = h
        .api(
            Method::GET,
            &format!("/apps/{app}/config-vars"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{config}");
    config
}

async fn last_release(h: &Harness, app: &str) -> String {
    let releases = h.core.store.releases(app).await.expect("releases");
    releases.last().expect("a release").description.clone()
}

pub(super) fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn an_addon_goes_to_the_services_host_with_fewest_and_stays_when_its_host_is_lost() {
    let deadline = Duration::from_millis(200);
    let h = Harness::new(settings(deadline)).await;
    h.deployed("demo", &[WEB]).await;
    let mut plain = h.agent("plain").await;
    let mut s1 = services_host(&h, "s1", "10.0.0.1").await;
    let mut s2 = services_host(&h, "s2", "10.0.0.2").await;

    let first = create(&h, "demo", json!({"plan": "postgresql"})).await;
    assert_eq!(first["host"]["id"], "s1", "{first}");
    assert_eq!(first["state"], "provisioning");
    assert_eq!(first["addon_service"]["name"], "heroku-postgresql");
    assert_eq!(first["config_vars"], json!(["DATABASE_URL"]));
    let name = text(&first["name"]);
    assert!(name.starts_with("postgresql-"), "{name}");
    let second = create(&h, "demo", json!({"plan": "heroku-redis"})).await;
    assert_eq!(second["host"]["id"], "s2", "the host with fewer add-ons");
    assert_eq!(second["config_vars"], json!(["REDIS_URL"]));

    let services = s1.services();
    assert_eq!(services.len(), 1, "{services:?}");
    let service = &services[0];
    assert_eq!(service.id, text(&first["id"]));
    assert_eq!((service.kind.as_str(), service.port), ("postgresql", 0));
    assert_eq!(service.stack, SERVICES_STACK);
    for key in ["ADDON_USER", "ADDON_PASSWORD", "ADDON_DATABASE"] {
        assert!(service.env.get(key).is_some_and(|v| !v.is_empty()), "{key}");
    }
    let mut peers = service.peers.clone();
    peers.sort();
    assert_eq!(peers, ["10.0.0.2", "127.0.0.1"], "the other live hosts");
    assert!(plain.services().is_empty(), "no services stack, no add-ons");
    assert_eq!(s2.services()[0].kind, "redis");

    // The port it reported is sent back from then on.
    s1.report_service(&service.id, ServiceState::ServiceUp, 40001)
        .await;
    assert_eq!(s1.services()[0].port, 40001);

    // Its host is lost: the add-on stays there, crashed, and goes nowhere else.
    s1.disconnect().await;
    tokio::time::sleep(deadline + Duration::from_millis(100)).await;
    s2.heartbeat().await;
    plain.heartbeat().await;
    h.core.reconcile().await.expect("reconcile");
    let (_, info) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(info["state"], "crashed", "{info}");
    assert_eq!(info["host"]["id"], "s1");
    assert!(
        text(&info["reason"]).contains("its host s1 is lost"),
        "{info}"
    );
    let third = create(
        &h,
        "demo",
        json!({"plan": "postgresql", "attachment": {"name": "extra"}}),
    )
    .await;
    assert_eq!(
        third["host"]["id"], "s2",
        "only live hosts take new add-ons"
    );
    assert_eq!(s2.services().len(), 2);
    assert_eq!(third["config_vars"], json!(["EXTRA_URL"]));
}

#[tokio::test]
async fn without_a_services_host_nothing_is_created() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let _plain = h.agent("plain").await;
    let (status, body) = h
        .api(
            Method::POST,
            "/apps/demo/addons",
            json!({"plan": "postgresql"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        text(&body["message"]).contains("none is connected with the `services` stack"),
        "{body}"
    );
    assert!(
        text(&body["message"]).ends_with("nothing was created"),
        "{body}"
    );
    let (_, listed) = h.api(Method::GET, "/addons", json!(null)).await;
    assert_eq!(listed, json!([]));
}

#[tokio::test]
async fn up_sets_the_url_as_a_release_and_the_apps_dynos_may_reach_it() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let mut db_host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let name = text(&addon["name"]);
    let id = text(&addon["id"]);
    assert!(
        config(&h, "demo").await.get("DATABASE_URL").is_none(),
        "not before it is up"
    );

    db_host
        .report_service(&id, ServiceState::ServiceStarting, 0)
        .await;
    assert!(
        config(&h, "demo").await.get("DATABASE_URL").is_none(),
        "starting"
    );
    db_host
        .report_service(&id, ServiceState::ServiceUp, 40001)
        .await;
    let service = db_host.services().remove(0);
    let url = format!(
        "postgres://{}:{}@10.0.0.5:40001/{}",
        service.env["ADDON_USER"], service.env["ADDON_PASSWORD"], service.env["ADDON_DATABASE"]
    );
    assert_eq!(config(&h, "demo").await["DATABASE_URL"], url);
    assert_eq!(
        last_release(&h, "demo").await,
        format!("Attach DATABASE (@ref:{name})")
    );
    let (_, info) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(info["state"], "available", "{info}");

    // Reported up again (a restart): no second release.
    let releases = h.core.store.releases("demo").await.expect("releases").len();
    db_host
        .report_service(&id, ServiceState::ServiceUp, 40001)
        .await;
    assert_eq!(
        h.core.store.releases("demo").await.expect("releases").len(),
        releases
    );

    // The app's dynos, wherever they run, may reach it; other apps' may not.
    h.deployed("other", &[WEB]).await;
    let mut web_host = h.agent("web").await;
    for app in ["demo", "other"] {
        h.api(
            Method::PATCH,
            &format!("/apps/{app}/formation"),
            json!({"updates": [{"type": "web", "quantity": 1}]}),
        )
        .await;
    }
    h.core.reconcile().await.expect("reconcile");
    let mut dynos: Vec<_> = web_host.assigned().to_vec();
    dynos.extend(db_host.assigned().to_vec());
    assert_eq!(dynos.len(), 2, "{dynos:?}");
    for d in dynos {
        let expected: Vec<String> = if d.app == "demo" {
            vec!["10.0.0.5:40001".into()]
        } else {
            vec![]
        };
        assert_eq!(d.egress, expected, "{}", d.app);
        if d.app == "demo" {
            assert_eq!(d.env["DATABASE_URL"], url);
        }
    }
    assert_eq!(db_host.services()[0].peers, ["127.0.0.1"]);

    // A crash is recorded with its reason.
    db_host
        .report_service(&id, ServiceState::ServiceCrashed, 40001)
        .await;
    let (_, info) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(info["state"], "crashed");
    assert_eq!(info["reason"], "crashed");
}

#[tokio::test]
async fn a_redis_url_has_only_the_password() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let mut host = services_host(&h, "r", "10.0.0.7").await;
    let addon = create(&h, "demo", json!({"plan": "redis"})).await;
    host.report_service(&text(&addon["id"]), ServiceState::ServiceUp, 40002)
        .await;
    let password = host.services()[0].env["ADDON_PASSWORD"].clone();
    assert_eq!(
        config(&h, "demo").await["REDIS_URL"],
        format!("redis://:{password}@10.0.0.7:40002")
    );
}

#[tokio::test]
async fn attach_and_detach_set_and_remove_the_var_as_releases() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    h.deployed("other", &[WEB]).await;
    let host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let name = text(&addon["name"]);
    host.report_service(&text(&addon["id"]), ServiceState::ServiceUp, 40001)
        .await;
    let url = config(&h, "demo").await["DATABASE_URL"].clone();

    let attach = json!({"addon": {"name": name}, "app": {"name": "other"}, "name": "shared"});
    let (status, attached) = h
        .api(Method::POST, "/addon-attachments", attach.clone())
        .await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    assert_eq!(attached["name"], "SHARED");
    assert_eq!(attached["config_var"], "SHARED_URL");
    assert_eq!(config(&h, "other").await["SHARED_URL"], url);
    assert_eq!(
        last_release(&h, "other").await,
        format!("Attach SHARED (@ref:{name})")
    );
    let (_, listed) = h.api(Method::GET, "/apps/other/addons", json!(null)).await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "shared add-ons are listed"
    );

    let (status, clash) = h.api(Method::POST, "/addon-attachments", attach).await;
    assert_eq!(status, StatusCode::CONFLICT, "{clash}");
    assert!(text(&clash["message"]).contains("other already has an add-on attached as SHARED"));

    let (status, detached) = h
        .api(
            Method::DELETE,
            &format!("/addon-attachments/{}", text(&attached["id"])),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{detached}");
    assert!(config(&h, "other").await.get("SHARED_URL").is_none());
    assert_eq!(
        last_release(&h, "other").await,
        format!("Detach SHARED (@ref:{name})")
    );

    // The owner's, now the last attachment, is refused: destroy the add-on instead.
    let (_, attachments) = h
        .api(Method::GET, "/apps/demo/addon-attachments", json!(null))
        .await;
    let last = text(&attachments[0]["id"]);
    let (status, refused) = h
        .api(
            Method::DELETE,
            &format!("/addon-attachments/{last}"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        text(&refused["message"]).contains("addons:destroy"),
        "{refused}"
    );
    assert_eq!(config(&h, "demo").await["DATABASE_URL"], url, "kept");
}

#[tokio::test]
async fn destroy_detaches_everywhere_and_the_rows_go_once_the_data_is_gone() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    h.deployed("other", &[WEB]).await;
    let mut host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let (name, id) = (text(&addon["name"]), text(&addon["id"]));
    host.report_service(&id, ServiceState::ServiceUp, 40001)
        .await;
    let attach = json!({"addon": {"name": name}, "app": {"name": "other"}});
    let (status, _) = h.api(Method::POST, "/addon-attachments", attach).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(config(&h, "other").await.get("DATABASE_URL").is_some());

    let (status, refused) = h
        .api(
            Method::DELETE,
            &format!("/apps/other/addons/{name}"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        text(&refused["message"]).contains("belongs to demo"),
        "{refused}"
    );

    let (status, destroyed) = h
        .api(
            Method::DELETE,
            &format!("/apps/demo/addons/{name}"),
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{destroyed}");
    assert_eq!(destroyed["state"], "destroying");
    for app in ["demo", "other"] {
        assert!(config(&h, app).await.get("DATABASE_URL").is_none(), "{app}");
        assert_eq!(
            last_release(&h, app).await,
            format!("Detach DATABASE (@ref:{name})")
        );
    }
    let set = host.last_set().expect("a set").clone();
    assert!(set.services.is_empty(), "stopped");
    assert_eq!(
        set.destroyed_services,
        std::slice::from_ref(&id),
        "its data deleted"
    );

    // Reports before the data is gone change nothing; DESTROYED forgets it.
    host.report_service(&id, ServiceState::ServiceStopped, 40001)
        .await;
    let (status, _) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(status, StatusCode::OK);
    host.report_service(&id, ServiceState::ServiceDestroyed, 0)
        .await;
    let (status, _) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let set = host.last_set().expect("a set").clone();
    assert!(set.destroyed_services.is_empty(), "{set:?}");
}

#[tokio::test]
async fn deleting_the_app_destroys_its_addons() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let mut host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let (status, _) = h.api(Method::DELETE, "/apps/demo", json!(null)).await;
    assert_eq!(status, StatusCode::OK);
    let set = host.last_set().expect("a set").clone();
    assert_eq!(set.destroyed_services, [text(&addon["id"])]);
    let (_, info) = h
        .api(
            Method::GET,
            &format!("/addons/{}", text(&addon["name"])),
            json!(null),
        )
        .await;
    assert_eq!(info["state"], "destroying");
    assert_eq!(info["app"], Value::Null, "its owner is gone");
}

#[tokio::test]
async fn hostile_input_is_refused_saying_what_is_wrong() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let host = services_host(&h, "db", "10.0.0.5").await;
    let cases = [
        (
            "/apps/demo/addons",
            json!({"plan": "mysql"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown add-on plan \"mysql\": use one of postgresql, heroku-postgresql, redis, heroku-redis",
        ),
        (
            "/apps/demo/addons",
            json!({"plan": "postgresql", "attachment": {"name": "1db"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid attachment name \"1db\"",
        ),
        (
            "/apps/demo/addons",
            json!({"plan": "postgresql", "attachment": {"name": "my-db"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid attachment name \"my-db\"",
        ),
        (
            "/apps/nope/addons",
            json!({"plan": "postgresql"}),
            StatusCode::NOT_FOUND,
            "app nope not found",
        ),
        (
            "/apps/demo/addons",
            json!({"plan": "postgresql", "size": "huge"}),
            StatusCode::BAD_REQUEST,
            "unknown field `size`",
        ),
        (
            "/addon-attachments",
            json!({"addon": {"name": "postgresql-none-1"}, "app": {"name": "demo"}}),
            StatusCode::NOT_FOUND,
            "add-on postgresql-none-1 not found",
        ),
    ];
    for (path, body, status, message) in cases {
        let (got, answer) = h.api(Method::POST, path, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            text(&answer["message"]).contains(message),
            "{body}: {answer}"
        );
    }
    let (_, listed) = h.api(Method::GET, "/addons", json!(null)).await;
    assert_eq!(listed, json!([]), "nothing was created");

    let (status, _) = h.api(Method::GET, "/addons/nope", json!(null)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h
        .api(Method::DELETE, "/addon-attachments/not-a-uuid", json!(null))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An agent speaks for its own host's add-ons only.
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    // A second one under the same attachment name is refused whole.
    let (status, clash) = h
        .api(
            Method::POST,
            "/apps/demo/addons",
            json!({"plan": "postgresql"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{clash}");
    assert!(
        text(&clash["message"]).contains(
            "demo already has an add-on attached as DATABASE: choose another name with --as"
        ),
        "{clash}"
    );
    let other = services_host(&h, "intruder", "10.0.0.9").await;
    other
        .report_service(&text(&addon["id"]), ServiceState::ServiceUp, 40009)
        .await;
    let (_, info) = h
        .api(
            Method::GET,
            &format!("/addons/{}", text(&addon["name"])),
            json!(null),
        )
        .await;
    assert_eq!(info["state"], "provisioning", "refused: {info}");
    assert!(config(&h, "demo").await.get("DATABASE_URL").is_none());
    // Reports of unknown services and junk ids change nothing either.
    host.report_service("not-an-addon", ServiceState::ServiceUp, 1)
        .await;
    let (_, listed) = h.api(Method::GET, "/addons", json!(null)).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["state"], "provisioning");
}

#[tokio::test]
async fn a_returning_host_lists_its_services_in_hello_and_they_are_available_again() {
    let deadline = Duration::from_millis(200);
    let h = Harness::new(settings(deadline)).await;
    h.deployed("demo", &[WEB]).await;
    let host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let (id, name) = (text(&addon["id"]), text(&addon["name"]));
    host.report_service(&id, ServiceState::ServiceUp, 40001)
        .await;
    let releases = h.core.store.releases("demo").await.expect("releases").len();
    host.disconnect().await;
    tokio::time::sleep(deadline + Duration::from_millis(100)).await;
    h.core.reconcile().await.expect("reconcile");
    let (_, info) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(info["state"], "crashed", "{info}");

    let up = manifold_proto::ServiceStatus {
        id: id.clone(),
        state: ServiceState::ServiceUp.into(),
        changed_at_ms: 0,
        reason: String::new(),
        port: 40001,
    };
    let mut back = h
        .agent_with("db", "10.0.0.5", &[STACK, SERVICES_STACK], vec![up])
        .await;
    let (_, info) = h
        .api(Method::GET, &format!("/addons/{name}"), json!(null))
        .await;
    assert_eq!(info["state"], "available", "{info}");
    assert_eq!(back.services()[0].port, 40001, "its port, for life");
    assert_eq!(
        h.core.store.releases("demo").await.expect("releases").len(),
        releases,
        "its URL did not change: no release"
    );
}

#[tokio::test]
async fn an_addons_lines_go_to_its_owning_apps_log() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let mut host = services_host(&h, "db", "10.0.0.5").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    assert_eq!(host.services().len(), 1);
    let line = |message: &str| manifold_proto::LogEntry {
        app: "someone-else".into(),
        dyno_id: text(&addon["id"]),
        process: "web.1".into(),
        platform: false,
        time_us: 0,
        message: message.into(),
    };
    h.core.ingest_logs(
        "db",
        manifold_proto::LogBatch {
            lines: vec![line("database system is ready to accept connections")],
        },
    );
    let lines = h.core.logs.plex().recent("demo", &Default::default(), 100);
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| l.message.contains("ready to accept"))
        .collect();
    assert_eq!(ours.len(), 1, "{lines:?}");
    assert_eq!(
        ours[0].process,
        text(&addon["name"]),
        "under the add-on's name"
    );
    // Another host cannot write as the add-on.
    let _other = services_host(&h, "intruder", "10.0.0.9").await;
    let refused = h.core.logs.ingest(
        "intruder",
        manifold_proto::LogBatch {
            lines: vec![line("forged")],
        },
        &h.core.cluster.placed("intruder"),
        |_, _| {},
    );
    assert_eq!(refused, 1);
}
