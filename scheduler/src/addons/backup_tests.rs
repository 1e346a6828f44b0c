//! `pg:backups` against a real PostgreSQL: a throwaway server stands in for the add-on
//! (its role and database made as the agent's first boot makes them), and Debian's
//! `pg_dump`/`pg_restore` do the work.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use manifold_proto::ServiceState;
use manifold_test_support::postgres::Postgres;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, Row};

use super::tests::{config, create, services_host, text, WEB};
use crate::testing::{settings, Harness, API_TOKEN};

async fn rows(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url)
        .await
        .expect("connect as the add-on's user");
    let row = conn
        .fetch_one("SELECT count(*) AS n FROM items")
        .await
        .expect("count");
    row.try_get("n").expect("n")
}

#[tokio::test]
async fn a_backup_is_captured_restored_and_downloaded() {
    const TEST: &str = "a_backup_is_captured_restored_and_downloaded";
    let Some(mut server) = Postgres::start(TEST) else {
        return;
    };
    let port: u32 = server
        .url()
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("the server's port");
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let mut host = services_host(&h, "db", "127.0.0.1").await;
    let addon = create(&h, "demo", json!({"plan": "postgresql"})).await;
    let env = host.services()[0].env.clone();
    let mut admin = PgConnection::connect(&server.url()).await.expect("admin");
    admin
        .execute(&*format!(
            "CREATE ROLE {} LOGIN PASSWORD '{}'",
            env["ADDON_USER"], env["ADDON_PASSWORD"]
        ))
        .await
        .expect("role");
    admin
        .execute(&*format!(
            "CREATE DATABASE {} OWNER {}",
            env["ADDON_DATABASE"], env["ADDON_USER"]
        ))
        .await
        .expect("database");
    admin.close().await.expect("close");
    host.report_service(&text(&addon["id"]), ServiceState::ServiceUp, port)
        .await;
    let url = text(&config(&h, "demo").await["DATABASE_URL"]);
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    conn.execute("CREATE TABLE items (n integer); INSERT INTO items VALUES (1), (2), (3)")
        .await
        .expect("rows");

    let (status, backup) = h
        .api(Method::POST, "/apps/demo/pg-backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    assert_eq!(
        (backup["name"].as_str(), backup["state"].as_str()),
        (Some("b001"), Some("completed"))
    );
    assert!(backup["size"].as_u64().is_some_and(|s| s > 0), "{backup}");

    conn.execute("DROP TABLE items").await.expect("drop");
    conn.close().await.expect("close");
    let (status, restored) = h
        .api(
            Method::POST,
            "/apps/demo/pg-backups/b001/actions/restore",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{restored}");
    assert_eq!(rows(&url).await, 3, "the rows are back");

    let (status, _, dump) = h
        .raw(
            Method::GET,
            "/apps/demo/pg-backups/b001/download",
            API_TOKEN,
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(dump.starts_with(b"PGDMP"), "a pg_dump custom archive");

    let (status, missing) = h
        .api(
            Method::POST,
            "/apps/demo/pg-backups/b009/actions/restore",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    assert!(
        text(&missing["message"]).contains("demo has no backup b009"),
        "{missing}"
    );

    // The add-on unreachable: the capture fails saying why, and is listed as failed.
    server.stop();
    let (status, failed) = h
        .api(Method::POST, "/apps/demo/pg-backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    assert!(
        text(&failed["message"]).starts_with("pg_dump failed"),
        "{failed}"
    );
    let (_, listed) = h
        .api(Method::GET, "/apps/demo/pg-backups", json!(null))
        .await;
    let states: Vec<(String, String)> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| (text(&b["name"]), text(&b["state"])))
        .collect();
    assert_eq!(
        states,
        [
            ("b001".into(), "completed".into()),
            ("b002".into(), "failed".into())
        ]
    );
}

#[tokio::test]
async fn backups_need_a_postgresql_addon() {
    let h = Harness::new(settings(Duration::from_secs(30))).await;
    h.deployed("demo", &[WEB]).await;
    let (status, none) = h
        .api(Method::POST, "/apps/demo/pg-backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");
    assert!(
        text(&none["message"]).contains("addons:create postgresql"),
        "{none}"
    );
    let _host = services_host(&h, "db", "127.0.0.1").await;
    let redis = create(&h, "demo", json!({"plan": "redis"})).await;
    let (status, named) = h
        .api(
            Method::POST,
            "/apps/demo/pg-backups",
            json!({"addon": text(&redis["name"])}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{named}");
    create(&h, "demo", json!({"plan": "postgresql"})).await;
    let (status, early) = h
        .api(Method::POST, "/apps/demo/pg-backups", json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{early}");
    assert!(text(&early["message"]).contains("is not up yet"), "{early}");
}
