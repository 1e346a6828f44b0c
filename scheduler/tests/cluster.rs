//! End-to-end: the real scheduler, agents and CLI over sockets, real dynos on this kernel.
//! As root, with the `testing` stack (and `bookworm` for the Python example).

#![allow(clippy::unwrap_used)]

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use harness::{wait_for, Cluster};
use serde_json::Value;

use harness::{assert_clean, deploy_tiny, UP};

fn names(dynos: &[Value]) -> BTreeSet<String> {
    dynos
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

fn by_host(dynos: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in dynos {
        *m.entry(d["host"]["id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

fn ids(dynos: &[Value]) -> BTreeSet<String> {
    dynos
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

/// The acceptance scenario on one host with the Python example: deploy, scale, HTTP,
/// config changes roll the dynos, rollback restores slug and config.
#[test]
fn deploy_python_scale_config_and_rollback() {
    if !harness::ready() {
        return;
    }
    if !Path::new("/var/lib/manifold/stacks/bookworm/.manifold-stack").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the bookworm stack is missing"
        );
        eprintln!("!!! SKIPPING: the bookworm stack is missing: run scripts/setup bookworm");
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("solo", 50);
    c.wait_hosts(1);
    c.ok(&["apps:create", "pyapp"]);
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-web");
    let out = c.ok(&["deploy", examples, "-a", "pyapp"]);
    assert!(out.contains("Released v1"), "{out}");

    c.ok(&["ps:scale", "web=2", "worker=1", "-a", "pyapp"]);
    let dynos = c.wait_dynos("pyapp", &["web.1", "web.2", "worker.1"], "up", UP);
    for d in dynos.iter().filter(|d| d["type"] == "web") {
        let port = d["port"].as_u64().expect("web dynos have a published port");
        let body = Cluster::http(port, "/").expect("the web dyno answers");
        assert!(
            body.starts_with(&format!("Hello from {}", d["name"].as_str().unwrap())),
            "{body}"
        );
    }
    let ps = c.ok(&["ps", "-a", "pyapp"]);
    assert!(
        ps.contains("=== web (standard-1x): `python app.py` (2)"),
        "{ps}"
    );
    // A one-off dyno of the same release, its stdin piped in (issue 7's example).
    let out = c.cli_with_input(
        &["run", "-a", "pyapp", "--", "python3"],
        "import os, sys; print(6 * 7, os.environ['DYNO']); sys.exit(2)\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("42 run."), "{stdout}");
    assert_eq!(out.status.code(), Some(2), "the command's exit status");

    let out = c.ok(&["config:set", "GREETING=Howdy", "-a", "pyapp"]);
    assert!(out.contains("v2"), "{out}");
    let dynos = wait_for("dynos on v2", UP, || {
        let d = c.dynos("pyapp");
        (d.len() == 3
            && d.iter()
                .all(|d| d["release"]["version"] == 2 && d["state"] == "up"))
        .then_some(d)
    });
    let web = dynos.iter().find(|d| d["type"] == "web").unwrap();
    let body = Cluster::http(web["port"].as_u64().unwrap(), "/").unwrap();
    assert!(body.starts_with("Howdy from web."), "{body}");

    let out = c.ok(&["releases:rollback", "v1", "-a", "pyapp"]);
    assert!(out.contains("v3"), "{out}");
    let releases = c.json(&["releases", "-a", "pyapp"]);
    let releases = releases.as_array().unwrap();
    assert_eq!(releases.len(), 3);
    assert_eq!(releases[2]["description"], "Rollback to v1");
    assert_eq!(releases[2]["slug"]["id"], releases[0]["slug"]["id"]);
    let config = c.json(&["config", "-a", "pyapp"]);
    assert!(config.get("GREETING").is_none(), "{config}");
    let dynos = wait_for("dynos on v3", UP, || {
        let d = c.dynos("pyapp");
        (d.len() == 3
            && d.iter()
                .all(|d| d["release"]["version"] == 3 && d["state"] == "up"))
        .then_some(d)
    });
    let web = dynos.iter().find(|d| d["type"] == "web").unwrap();
    let body = Cluster::http(web["port"].as_u64().unwrap(), "/").unwrap();
    assert!(body.starts_with("Hello from web."), "{body}");

    c.ok(&["apps:destroy", "pyapp", "--confirm", "pyapp"]);
    assert_clean(&c, 0);
}

/// Two hosts: a process type is spread over them; when one host's agent stops, its dynos
/// move after the heartbeat deadline; when it returns it stops the dynos now elsewhere.
#[test]
fn two_hosts_spread_and_host_loss_moves_dynos() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(3));
    c.add_agent("host-a", 20);
    c.add_agent("host-b", 20);
    c.wait_hosts(2);
    let out = deploy_tiny(&c, "spread");
    assert!(out.contains("Released v1"), "{out}");
    c.ok(&["ps:scale", "web=4", "-a", "spread"]);
    let dynos = c.wait_dynos("spread", &["web.1", "web.2", "web.3", "web.4"], "up", UP);
    assert_eq!(
        by_host(&dynos),
        BTreeMap::from([("host-a".to_string(), 2), ("host-b".to_string(), 2)]),
        "web=4 is placed two and two"
    );
    for d in &dynos {
        let body = Cluster::http(d["port"].as_u64().unwrap(), "/cgi-bin/greeting").unwrap();
        assert_eq!(
            body,
            format!("hello from {}\n", d["name"].as_str().unwrap())
        );
    }

    // host-b's agent stops: its dynos keep running there, but the scheduler cannot know,
    // so after the deadline it places them on host-a.
    c.kill_agent(1);
    let moved = wait_for("host-b's dynos to move to host-a", UP, || {
        let d = c.dynos("spread");
        (d.len() == 4
            && d.iter()
                .all(|d| d["host"]["id"] == "host-a" && d["state"] == "up"))
        .then_some(d)
    });
    assert_eq!(
        names(&moved),
        names(&dynos),
        "the same dyno names, now all on host-a"
    );
    let hosts = c.json(&["hosts"]);
    let b = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "host-b")
        .unwrap();
    assert_eq!(b["state"], "lost");

    // host-b returns: it is told to stop the dynos that now live elsewhere.
    c.start_agent(1, 20);
    assert_clean(&c, 1);
    let after = c.dynos("spread");
    assert_eq!(ids(&after), ids(&moved), "no more than the formation runs");

    // Draining host-a moves everything to host-b, and host-a takes nothing new.
    let out = c.ok(&["hosts:drain", "host-a"]);
    assert!(out.contains("Draining host-a"), "{out}");
    let drained = wait_for("every dyno to move to host-b", UP, || {
        let d = c.dynos("spread");
        (d.len() == 4
            && d.iter()
                .all(|d| d["host"]["id"] == "host-b" && d["state"] == "up"))
        .then_some(d)
    });
    assert_clean(&c, 0);
    let log = c.logs("spread", &["--source", "heroku"]);
    assert!(
        log.contains("]: Relocating dyno to a new server"),
        "moved dynos are logged as Heroku does:\n{log}"
    );
    for d in &drained {
        let body = Cluster::http(d["port"].as_u64().unwrap(), "/cgi-bin/greeting").unwrap();
        assert_eq!(
            body,
            format!("hello from {}\n", d["name"].as_str().unwrap())
        );
    }
    let hosts = c.json(&["hosts"]);
    let a = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "host-a")
        .unwrap();
    assert_eq!(a["state"], "draining");
    c.ok(&["ps:scale", "web=5", "-a", "spread"]);
    let five = c.wait_dynos(
        "spread",
        &["web.1", "web.2", "web.3", "web.4", "web.5"],
        "up",
        UP,
    );
    assert!(five.iter().all(|d| d["host"]["id"] == "host-b"));
    c.ok(&["hosts:undrain", "host-a"]);
    c.ok(&["ps:scale", "web=6", "-a", "spread"]);
    let six = wait_for("web.6 up", UP, || {
        let d = c.dynos("spread");
        (d.len() == 6 && d.iter().all(|d| d["state"] == "up")).then_some(d)
    });
    let web6 = six.iter().find(|d| d["name"] == "web.6").unwrap();
    assert_eq!(
        web6["host"]["id"], "host-a",
        "an undrained host takes dynos again"
    );

    c.ok(&["apps:destroy", "spread", "--confirm", "spread"]);
    assert_clean(&c, 0);
    assert_clean(&c, 1);
}

/// SIGKILL of the scheduler, then of the agent: no dyno is restarted, and `ps` is the same.
#[test]
fn scheduler_and_agent_sigkill_restart_no_dyno() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(5));
    c.add_agent("steady", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "steady");
    c.ok(&["ps:scale", "web=2", "worker=1", "-a", "steady"]);
    let before = c.wait_dynos("steady", &["web.1", "web.2", "worker.1"], "up", UP);
    let shims = c.agents[0].shims();
    assert_eq!(shims.len(), 3);

    c.kill_scheduler();
    std::thread::sleep(Duration::from_secs(1));
    c.start_scheduler();
    // Past the heartbeat deadline: a scheduler that did not wait for the host to
    // reconnect would have moved its dynos.
    std::thread::sleep(Duration::from_secs(7));
    let after = c.wait_dynos("steady", &["web.1", "web.2", "worker.1"], "up", UP);
    assert_eq!(ids(&after), ids(&before), "no dyno was replaced");
    assert_eq!(c.agents[0].shims(), shims, "no dyno was restarted");

    c.kill_agent(0);
    std::thread::sleep(Duration::from_secs(1));
    c.start_agent(0, 20);
    std::thread::sleep(Duration::from_secs(3));
    let after = c.wait_dynos("steady", &["web.1", "web.2", "worker.1"], "up", UP);
    assert_eq!(ids(&after), ids(&before), "no dyno was replaced");
    assert_eq!(c.agents[0].shims(), shims, "no dyno was restarted");
    for d in after.iter().filter(|d| d["type"] == "web") {
        let body = Cluster::http(d["port"].as_u64().unwrap(), "/cgi-bin/greeting").unwrap();
        assert_eq!(
            body,
            format!("hello from {}\n", d["name"].as_str().unwrap())
        );
    }

    // Restarts replace dynos; stopping one replaces it too (as Heroku does).
    c.ok(&["ps:restart", "web.1", "-a", "steady"]);
    let restarted = wait_for("web.1 to be replaced", UP, || {
        let d = c.dynos("steady");
        let web1: Vec<&Value> = d.iter().filter(|d| d["name"] == "web.1").collect();
        (d.len() == 3
            && web1.len() == 1
            && !ids(&before).contains(web1[0]["id"].as_str().unwrap())
            && d.iter().all(|d| d["state"] == "up"))
        .then_some(d)
    });
    assert_eq!(ids(&restarted).intersection(&ids(&before)).count(), 2);

    c.ok(&["ps:scale", "web=0", "worker=0", "-a", "steady"]);
    wait_for("no dynos", UP, || {
        c.dynos("steady").is_empty().then_some(())
    });
    assert_clean(&c, 0);
}

/// Bad requests get a clear error and change nothing.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start_with(Duration::from_secs(10), &["--upload-limit-mib", "1"]);
    c.add_agent("small", 2);
    c.wait_hosts(1);
    deploy_tiny(&c, "strict");
    let releases = c.json(&["releases", "-a", "strict"]);
    let formation = c.raw(
        "GET",
        "/apps/strict/formation",
        Some(harness::API_TOKEN),
        None,
    );

    let err = |args: &[&str], expect: &str| {
        let out = c.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "manifold {args:?} should fail");
        assert!(
            stderr.contains(expect),
            "manifold {args:?}: expected {expect:?} in: {stderr}"
        );
    };
    err(&["ps", "-a", "nosuch"], "app nosuch not found");
    err(
        &["ps:scale", "cron=1", "-a", "strict"],
        "no process type cron",
    );
    err(
        &["ps:scale", "web=1:huge-9x", "-a", "strict"],
        "unknown dyno size",
    );
    err(&["ps:scale", "web=3", "-a", "strict"], "no host can run");
    err(&["apps:create", "Bad_Name"], "invalid app name");
    err(&["apps:create", "strict"], "already exists");
    err(&["config:set", "PORT=1", "-a", "strict"], "PORT");

    let (code, body) = c.raw("GET", "/apps", None, None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("\"id\":\"unauthorized\""), "{body}");
    let (code, _) = c.raw("GET", "/apps", Some("wrong"), None);
    assert_eq!(code, 401);
    let (code, body) = c.raw(
        "PATCH",
        "/apps/strict/formation",
        Some(harness::API_TOKEN),
        Some("{not json"),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("invalid JSON"), "{body}");
    let big = format!("{{\"X\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let big_file = c.dir.path().join("big.json");
    std::fs::write(&big_file, big).unwrap();
    let (code, body) = c.raw(
        "PATCH",
        "/apps/strict/config-vars",
        Some(harness::API_TOKEN),
        Some(&format!("@{}", big_file.display())),
    );
    assert_eq!(code, 413, "{body}");

    // A source over the upload limit (1 MiB here) is refused.
    let huge = c.dir.path().join("huge-app");
    std::fs::create_dir_all(&huge).unwrap();
    std::fs::write(huge.join("Procfile"), "web: true\n").unwrap();
    let mut noise = vec![0u8; 3 * 1024 * 1024];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut noise,
    )
    .unwrap();
    std::fs::write(huge.join("noise.bin"), noise).unwrap();
    err(
        &["deploy", huge.to_str().unwrap(), "-a", "strict"],
        "larger than",
    );

    assert_eq!(c.json(&["releases", "-a", "strict"]), releases);
    assert_eq!(
        c.raw(
            "GET",
            "/apps/strict/formation",
            Some(harness::API_TOKEN),
            None
        ),
        formation
    );
    assert_eq!(c.json(&["config", "-a", "strict"]), serde_json::json!({}));
}

/// A dyno unassigned while it is being launched still stops and leaves nothing (this once
/// left a dyno `starting` forever: its cleanup panicked on the agent's runtime).
#[test]
fn a_dyno_stopped_as_it_launches_ends_and_leaves_nothing() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("quick", 20);
    c.wait_hosts(1);
    for i in 0..3 {
        let app = format!("flick{i}");
        deploy_tiny(&c, &app);
        c.ok(&["ps:scale", "web=0", "-a", &app]);
    }
    for i in 0..3 {
        let app = format!("flick{i}");
        wait_for(&format!("{app} to have no dynos"), UP, || {
            c.dynos(&app).is_empty().then_some(())
        });
    }
    assert_clean(&c, 0);
}

/// Daily cycling with a 5 s interval: every dyno is replaced, one of a type at a time, so the
/// app always has a web dyno up.
#[test]
fn cycling_replaces_every_dyno_and_never_all_at_once() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start_with(Duration::from_secs(10), &["--cycle-interval", "5s"]);
    c.add_agent("cycler", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "cycle");
    c.ok(&["ps:scale", "web=2", "worker=1", "-a", "cycle"]);
    let first = c.wait_dynos("cycle", &["web.1", "web.2", "worker.1"], "up", UP);
    let first = ids(&first);
    let mut seen = BTreeSet::new();
    wait_for("every first dyno to be cycled", UP, || {
        let d = c.dynos("cycle");
        let up_web = d
            .iter()
            .filter(|d| d["type"] == "web" && d["state"] == "up")
            .count();
        assert!(up_web >= 1, "no web dyno up while cycling: {d:?}");
        seen.extend(ids(&d));
        let current = ids(&d);
        (current.is_disjoint(&first) && d.len() == 3 && d.iter().all(|d| d["state"] == "up"))
            .then_some(())
    });
    assert!(seen.len() >= 6, "each of the three was replaced: {seen:?}");
    c.ok(&["apps:destroy", "cycle", "--confirm", "cycle"]);
    assert_clean(&c, 0);
}

/// With preboot, a release replaces web.1 with the new one up before the old one stops;
/// the old one answers HTTP until then.
#[test]
fn preboot_keeps_a_web_dyno_up_through_a_release() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("preboot", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "warm");
    let out = c.ok(&["features:enable", "preboot", "-a", "warm"]);
    assert!(out.contains("Enabling preboot"), "{out}");
    let features = c.json(&["features", "-a", "warm"]);
    assert_eq!(features[0]["name"], "preboot");
    assert_eq!(features[0]["enabled"], true);
    let before = c.wait_dynos("warm", &["web.1"], "up", UP);
    c.ok(&["config:set", "GREETING=hi", "-a", "warm"]);
    let after = wait_for("web.1 on v2, the v1 dyno gone", UP, || {
        let d = c.dynos("warm");
        let up: Vec<&Value> = d.iter().filter(|d| d["state"] == "up").collect();
        assert!(
            !up.is_empty(),
            "no web dyno up during a preboot release: {d:?}"
        );
        (d.len() == 1 && d[0]["release"]["version"] == 2 && d[0]["state"] == "up").then_some(d)
    });
    assert_ne!(after[0]["id"], before[0]["id"]);
    let body = Cluster::http(after[0]["port"].as_u64().unwrap(), "/cgi-bin/greeting").unwrap();
    assert_eq!(body, "hi from web.1\n");
    let out = c.cli(&["features:enable", "nosuch", "-a", "warm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no feature nosuch"));
    c.ok(&["apps:destroy", "warm", "--confirm", "warm"]);
    assert_clean(&c, 0);
}

/// Per-app timeouts: a dyno that ignores SIGTERM is SIGKILLed after the app's grace period
/// (R12, status 137), and a web dyno that never binds `$PORT` gets R10 after the app's boot
/// timeout; both lines carry the app's figures.
#[test]
fn per_app_stop_and_boot_timeouts() {
    if !harness::ready() {
        return;
    }
    let mut c = Cluster::start(Duration::from_secs(10));
    c.add_agent("timeouts", 20);
    c.wait_hosts(1);
    deploy_tiny(&c, "slowpoke");
    let out = c.ok(&[
        "apps:update",
        "--stop-timeout",
        "2",
        "--boot-timeout",
        "3",
        "-a",
        "slowpoke",
    ]);
    assert!(out.contains("boot timeout 3 s, stop timeout 2 s"), "{out}");
    let info = c.json(&["apps:info", "-a", "slowpoke"]);
    assert_eq!(info["boot_timeout"], 3);
    assert_eq!(info["stop_timeout"], 2);
    let out = c.cli(&["apps:update", "--boot-timeout", "100000", "-a", "slowpoke"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the limit"));

    c.ok(&["ps:scale", "stubborn=1", "-a", "slowpoke"]);
    c.wait_dynos("slowpoke", &["web.1", "stubborn.1"], "up", UP);
    c.ok(&["ps:scale", "stubborn=0", "-a", "slowpoke"]);
    wait_for("stubborn.1 SIGKILLed after 2 s", UP, || {
        let log = c.logs("slowpoke", &["--ps", "stubborn.1"]);
        (log.contains("heroku[stubborn.1]: Stopping all processes with SIGTERM")
            && log.contains("app[stubborn.1]: ignoring SIGTERM")
            && log.contains(
                "heroku[stubborn.1]: Error R12 (Exit timeout) -> At least one process failed to exit within 2 seconds of SIGTERM",
            )
            && log.contains("heroku[stubborn.1]: Process exited with status 137"))
        .then_some(())
    });

    c.ok(&["config:set", "NOBIND=1", "-a", "slowpoke"]);
    wait_for("R10 after 3 s", UP, || {
        let log = c.logs("slowpoke", &["--ps", "web.1"]);
        log.contains(
            "heroku[web.1]: Error R10 (Boot timeout) -> Web process failed to bind to $PORT within 3 seconds of launch",
        )
        .then_some(())
    });
    c.ok(&["apps:destroy", "slowpoke", "--confirm", "slowpoke"]);
    assert_clean(&c, 0);
}
