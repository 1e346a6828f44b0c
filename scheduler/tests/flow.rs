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

    // Its first release runs one web dyno, as a first deploy does.
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

/// `apps:create --from DIR` sets the app up as DIR/app.json says: config vars (a given
/// one, a default, a generated secret), the formation, and a postdeploy run once, its
/// output shown. A required var not given stops it before anything is created.
#[test]
fn an_app_is_set_up_from_its_app_json_with_its_postdeploy_run_once() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("setup", 20);
    c.wait_hosts(1);
    let src = tempfile::tempdir().unwrap();
    copy_dir(std::path::Path::new(harness::TINY), src.path());
    std::fs::write(
        src.path().join("app.json"),
        r#"{
          "name": "Tiny",
          "stack": "testing",
          "env": {
            "GREETING": {"description": "What web says"},
            "MOOD": {"value": "calm"},
            "SECRET_KEY": {"generator": "secret"}
          },
          "formation": {"web": {"quantity": 1}},
          "scripts": {"postdeploy": "echo \"postdeploy: $GREETING $MOOD ${#SECRET_KEY}\""}
        }"#,
    )
    .unwrap();
    let dir = src.path().to_str().unwrap();

    let refused = c.cli(&["apps:create", "tiny-setup", "--from", dir]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("requires config vars GREETING"), "{said}");
    assert!(
        !c.ok(&["apps"]).contains("tiny-setup"),
        "nothing was created"
    );

    let out = c.ok(&[
        "apps:create",
        "tiny-setup",
        "--from",
        dir,
        "--env",
        "GREETING=howdy",
    ]);
    assert!(out.contains("postdeploy: howdy calm 64"), "{out}");
    let config = c.json(&["config", "-a", "tiny-setup"]);
    assert_eq!(config["MOOD"], "calm");
    assert_eq!(config["SECRET_KEY"].as_str().unwrap().len(), 64);
    c.wait_dynos("tiny-setup", &["web.1"], "up", UP);
    let body = wait_for("the set-up app to answer", UP, || {
        let (code, body) = c.route("tiny-setup", "/cgi-bin/greeting", &[]);
        (code == 200).then_some(body)
    });
    assert!(body.starts_with("howdy from web.1"), "{body}");
    c.ok(&["apps:destroy", "tiny-setup", "--confirm", "tiny-setup"]);
    harness::assert_clean(&c, 0);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A review app of a pipeline from a branch pushed to its staging app's git remote (kept,
/// not deployed): app.json's env, its formation, its postdeploy run once (in the app's
/// log); `reviewapps:destroy` leaves nothing.
#[test]
fn a_review_app_is_made_from_a_branch_and_destroyed_whole() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("review", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "blog-staging");
    c.ok(&[
        "pipelines:create",
        "blog",
        "-a",
        "blog-staging",
        "--stage",
        "staging",
    ]);
    let src = tempfile::tempdir().unwrap();
    copy_dir(std::path::Path::new(harness::TINY), src.path());
    std::fs::write(
        src.path().join("app.json"),
        r#"{
          "env": {"GREETING": {"value": "Review"}},
          "formation": {"web": {"quantity": 1}},
          "scripts": {"postdeploy": "echo seeded by postdeploy"}
        }"#,
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(src.path())
            .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "git {args:?}: {said}");
        said
    };
    git(&["init", "-q", "-b", "feature-x"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "review"]);
    // The API token as the password, as Heroku's git remote takes it.
    let remote = c
        .api()
        .replacen("://", &format!("://user:{}@", harness::API_TOKEN), 1);
    git(&[
        "push",
        "-q",
        &format!("{remote}/blog-staging.git"),
        "feature-x",
    ]);
    let releases = c.json(&["releases", "-a", "blog-staging"]);
    assert_eq!(
        releases.as_array().unwrap().len(),
        1,
        "the branch was not deployed"
    );

    let bad = c.cli(&[
        "reviewapps:create",
        "--pipeline",
        "nope",
        "--branch",
        "feature-x",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("pipeline nope not found"));
    let bad = c.cli(&[
        "reviewapps:create",
        "--pipeline",
        "blog",
        "--branch",
        "no-such",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-such"));

    c.ok(&[
        "reviewapps:create",
        "--pipeline",
        "blog",
        "--branch",
        "feature-x",
        "--ttl",
        "2",
    ]);
    let listed = c.json(&["reviewapps", "--pipeline", "blog"]);
    let review = listed[0]["app"]["name"].as_str().unwrap().to_owned();
    assert!(review.starts_with("blog-pr-feature-x-"), "{review}");
    c.wait_dynos(&review, &["web.1"], "up", UP);
    let body = wait_for("the review app to answer", UP, || {
        let (code, body) = c.route(&review, "/cgi-bin/greeting", &[]);
        (code == 200).then_some(body)
    });
    assert!(body.starts_with("Review from web.1"), "{body}");
    wait_for("postdeploy's output in the log", UP, || {
        c.logs(&review, &[])
            .contains("seeded by postdeploy")
            .then_some(())
    });

    c.ok(&["reviewapps:destroy", &review, "--confirm", &review]);
    assert!(!c.ok(&["apps"]).contains(&review));
    assert!(c
        .json(&["reviewapps", "--pipeline", "blog"])
        .as_array()
        .unwrap()
        .is_empty());
    c.ok(&["apps:destroy", "blog-staging", "--confirm", "blog-staging"]);
    harness::assert_clean(&c, 0);
}
