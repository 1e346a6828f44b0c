//! An app's buildpacks through the real scheduler (its SQLite store, its API) and the real
//! `manifold` CLI: set, add, list, remove, clear, the checks on every name, and
//! BUILDPACK_URL. Needs no agent: nothing here builds.

#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{bins, Cluster, API_TOKEN};

fn binaries_built() -> bool {
    manifold_test_support::require(
        "buildpacks test",
        &[(
            bins().join("manifold-scheduler").exists() && bins().join("manifold").exists(),
            "the binaries are not built: run `cargo build -p manifold-scheduler -p manifold-cli`",
        )],
    )
}

#[test]
fn buildpacks_set_add_remove_clear_and_refuse_bad_names() {
    if !binaries_built() {
        return;
    }
    let c = Cluster::start(Duration::from_secs(10));
    c.ok(&["apps:create", "bpapp", "--stack", "testing"]);
    let err = |args: &[&str], expect: &str| {
        let out = c.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "manifold {args:?} should fail");
        assert!(
            stderr.contains(expect),
            "manifold {args:?}: expected {expect:?} in: {stderr}"
        );
    };
    let urls = || -> Vec<String> {
        c.json(&["buildpacks", "-a", "bpapp"])
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["buildpack"]["url"].as_str().unwrap().to_owned())
            .collect()
    };

    assert!(c
        .ok(&["buildpacks", "-a", "bpapp"])
        .contains("bpapp has no buildpacks set"));
    let out = c.ok(&["buildpacks:set", "heroku/python", "-a", "bpapp"]);
    assert!(
        out.contains("Next release on bpapp will use:\n  1. heroku/python"),
        "{out}"
    );
    let listed = c.json(&["buildpacks", "-a", "bpapp"]);
    assert_eq!(listed[0]["ordinal"], 0);
    assert_eq!(listed[0]["buildpack"]["name"], "python");
    c.ok(&[
        "buildpacks:add",
        "https://example.test/bp.git#v1",
        "-a",
        "bpapp",
    ]);
    c.ok(&["buildpacks:add", "nodejs", "-i", "1", "-a", "bpapp"]);
    let three = vec![
        "nodejs".to_owned(),
        "heroku/python".to_owned(),
        "https://example.test/bp.git#v1".to_owned(),
    ];
    assert_eq!(urls(), three);
    assert!(c.ok(&["buildpacks", "-a", "bpapp"]).contains(
        "=== bpapp Buildpack URLs\n1. nodejs\n2. heroku/python\n3. https://example.test/bp.git#v1\n"
    ));

    // Which buildpacks a deploy gets, and the line that says so at the top of its output
    // (with no host here, the build then fails at once).
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("Procfile"), "web: true\n").unwrap();
    let dir = src.path().to_str().unwrap().to_owned();
    let deploy = |extra: &[&str]| -> String {
        let mut args = vec!["deploy", dir.as_str(), "-a", "bpapp"];
        args.extend_from_slice(extra);
        let out = c.cli(&args);
        assert!(!out.status.success(), "no host: the build fails");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = deploy(&[]);
    assert!(
        out.contains(
            "-----> Buildpacks set on the app (manifold buildpacks): nodejs, heroku/python, https://example.test/bp.git#v1"
        ),
        "{out}"
    );
    assert!(
        out.contains("no connected host has the testing stack"),
        "{out}"
    );
    let out = deploy(&["--buildpack", "generic"]);
    assert!(
        out.contains("-----> Buildpacks named by this deploy: generic"),
        "{out}"
    );

    // Bad names, refused by the scheduler, change nothing.
    err(
        &["buildpacks:set", "/etc", "-i", "3", "-a", "bpapp"],
        "buildpack \"/etc\" is refused",
    );
    err(
        &["buildpacks:add", "file:///srv/bp", "-a", "bpapp"],
        "is refused",
    );
    err(
        &["buildpacks:add", "heroku/ruby", "-a", "bpapp"],
        "heroku/ruby",
    );
    err(
        &["buildpacks:add", "nodejs", "-a", "bpapp"],
        "already has buildpack nodejs",
    );
    err(
        &["buildpacks:set", "generic", "-i", "5", "-a", "bpapp"],
        "--index 5 is out of range",
    );
    err(
        &["buildpacks:remove", "generic", "-a", "bpapp"],
        "has no buildpack generic",
    );
    err(&["buildpacks", "-a", "nosuch"], "app nosuch not found");
    let put = |body: &str| {
        c.raw(
            "PUT",
            "/apps/bpapp/buildpack-installations",
            Some(API_TOKEN),
            Some(body),
        )
    };
    let many: Vec<String> = (0..17)
        .map(|i| format!(r#"{{"buildpack":"https://example.test/{i}.git"}}"#))
        .collect();
    let (code, body) = put(&format!(r#"{{"updates":[{}]}}"#, many.join(",")));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("at most 16"), "{body}");
    let (code, body) = put(r#"{"updates":[{"buildpack":"python"},{"buildpack":"python"}]}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("named twice"), "{body}");
    let (code, body) = put(r#"{"updates":[{"buildpack":"python","extra":1}]}"#);
    assert!(code == 400 || code == 422, "{code} {body}");
    let (code, body) = put(r#"{"updates":[{"buildpack":"--upload-pack=x"}]}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("buildpack 1: buildpack"), "{body}");
    assert_eq!(urls(), three, "refused changes left the list alone");

    // A deploy's own --buildpack is checked as strictly.
    err(
        &["deploy", &dir, "--buildpack", "/srv/bp", "-a", "bpapp"],
        "--buildpack: buildpack \"/srv/bp\" is refused",
    );

    c.ok(&["buildpacks:remove", "-i", "1", "-a", "bpapp"]);
    c.ok(&[
        "buildpacks:remove",
        "https://example.test/bp.git#v1",
        "-a",
        "bpapp",
    ]);
    assert_eq!(urls(), vec!["heroku/python".to_owned()]);
    assert!(c
        .ok(&["buildpacks", "-a", "bpapp"])
        .contains("=== bpapp Buildpack URL\nheroku/python\n"));

    // BUILDPACK_URL is checked when it is set, not at the next deploy.
    err(
        &["config:set", "BUILDPACK_URL=file:///srv/bp", "-a", "bpapp"],
        "config var BUILDPACK_URL: buildpack \"file:///srv/bp\" is refused",
    );
    assert!(c
        .json(&["config", "-a", "bpapp"])
        .get("BUILDPACK_URL")
        .is_none());
    c.ok(&[
        "config:set",
        "BUILDPACK_URL=https://example.test/custom.git",
        "-a",
        "bpapp",
    ]);

    let out = c.ok(&["buildpacks:clear", "-a", "bpapp"]);
    assert!(out.contains("Buildpacks cleared"), "{out}");
    assert!(urls().is_empty());
    let out = deploy(&[]);
    assert!(
        out.contains(
            "-----> Buildpack from the BUILDPACK_URL config var: https://example.test/custom.git"
        ),
        "{out}"
    );
    c.ok(&["config:unset", "BUILDPACK_URL", "-a", "bpapp"]);
    let out = deploy(&[]);
    assert!(
        out.contains("-----> No buildpack set: the build detects one"),
        "{out}"
    );

    // They go with the app.
    c.ok(&["buildpacks:set", "nodejs", "-a", "bpapp"]);
    c.ok(&["apps:destroy", "bpapp", "--confirm", "bpapp"]);
    c.ok(&["apps:create", "bpapp", "--stack", "testing"]);
    assert!(urls().is_empty());
}
