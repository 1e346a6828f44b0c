//! End-to-end: Heroku Flow on a real cluster (scheduler, agent, CLI, router): a pipeline
//! promotes what staging runs to production without a rebuild. As root, with the `testing`
//! stack.

#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{deploy_tiny, wait_for, Cluster, UP};
use serde_json::Value;

/// The slug checksum of the app's current release.
fn current_checksum(c: &Cluster, app: &str) -> (Value, String) {
    let releases = c.json(&["releases", "-a", app]);
    let current = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["current"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("{app} has no current release: {releases}"));
    let checksum = current["slug"]["checksum"].as_str().unwrap().to_owned();
    (current, checksum)
}

/// staging is deployed, production only configured; `pipelines:promote` gives production
/// staging's slug (same checksum, no build) with production's config, and it answers
/// through the router with that config.
#[test]
fn promotion_runs_stagings_slug_with_productions_config() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("flow", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "shop-staging");
    c.ok(&["config:set", "GREETING=staging", "-a", "shop-staging"]);
    c.ok(&["apps:create", "shop-prod", "--stack", "testing"]);
    c.ok(&["config:set", "GREETING=production", "-a", "shop-prod"]);
    c.ok(&[
        "pipelines:create",
        "shop",
        "-a",
        "shop-staging",
        "--stage",
        "staging",
    ]);
    c.ok(&[
        "pipelines:add",
        "shop",
        "-a",
        "shop-prod",
        "--stage",
        "production",
    ]);
    let info = c.ok(&["pipelines:info", "shop"]);
    assert!(
        info.contains("shop-staging") && info.contains("shop-prod"),
        "{info}"
    );

    // Refused: wrong direction, unknown stage, a stray app. Nothing changes.
    let wrong = c.cli(&["pipelines:promote", "-a", "shop-prod"]);
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("nothing downstream"), "{said}");
    let bad = c.cli(&["pipelines:add", "shop", "-a", "shop-prod", "--stage", "qa"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown stage"));
    assert!(c
        .json(&["releases", "-a", "shop-prod"])
        .as_array()
        .unwrap()
        .is_empty());

    let builds_before = c
        .json(&["builds", "-a", "shop-prod"])
        .as_array()
        .unwrap()
        .len();
    let out = c.ok(&["pipelines:promote", "-a", "shop-staging"]);
    let (staging, staging_sum) = current_checksum(&c, "shop-staging");
    let version = staging["version"].as_u64().unwrap();
    assert!(
        out.contains(&format!(
            "Promoting shop-staging v{version} to shop-prod... done, v1"
        )),
        "{out}"
    );
    let (prod, prod_sum) = current_checksum(&c, "shop-prod");
    assert_eq!(
        prod["description"],
        format!("Promote shop-staging v{version}")
    );
    assert_eq!(prod_sum, staging_sum, "the very slug staging runs");
    assert_eq!(
        c.json(&["builds", "-a", "shop-prod"])
            .as_array()
            .unwrap()
            .len(),
        builds_before,
        "no build"
    );
    let releases = c.ok(&["releases", "-a", "shop-prod"]);
    assert!(releases.contains("Promote shop-staging"), "{releases}");

    c.ok(&["ps:scale", "web=1", "-a", "shop-prod"]);
    c.wait_dynos("shop-prod", &["web.1"], "up", UP);
    let body = wait_for("production to answer", UP, || {
        let (code, body) = c.route("shop-prod", "/cgi-bin/greeting", &[]);
        (code == 200).then_some(body)
    });
    assert!(body.starts_with("production from web.1"), "{body}");

    c.ok(&["pipelines:destroy", "shop"]);
    for app in ["shop-staging", "shop-prod"] {
        c.ok(&["apps:destroy", app, "--confirm", app]);
    }
    harness::assert_clean(&c, 0);
}
